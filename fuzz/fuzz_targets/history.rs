//! History ranges: the HTTP query string parser, and history_range with the offset/cursor
//! arithmetic on any numbers.
#![no_main]

use dialogue::history::{cursor_to_seqs, offsets_to_seqs};
use dialogue::http::api::parse_history_query;
use dialogue::protocol::dialogue::{history_range, HistoryRange, MAX_HISTORY_PAGE};
use libfuzzer_sys::fuzz_target;

type Input<'a> = (
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    u64,
    &'a str,
);

fuzz_target!(|input: Input<'_>| {
    let (start, end, before, limit, last_seq, query) = input;
    let _ = parse_history_query(query);
    let Ok(range) = history_range(start, end, before, limit) else {
        return;
    };
    let seqs = match range {
        HistoryRange::Offsets { start, end } => {
            assert!(start <= end && end - start <= MAX_HISTORY_PAGE);
            offsets_to_seqs(last_seq, start, end)
        }
        HistoryRange::Before { before, limit } => {
            assert!((1..=MAX_HISTORY_PAGE).contains(&limit));
            cursor_to_seqs(last_seq, before, limit)
        }
    };
    assert!(seqs.is_empty() || (seqs.lo >= 1 && seqs.hi <= last_seq));
    assert!(seqs.len() <= MAX_HISTORY_PAGE);
});
