//! Paging a room's in-memory history window: the offset and cursor arithmetic and the
//! newest-first walk over the window, and appending with eviction.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use dialogue::actors::messages::StoredEvent;
use dialogue::history::{cursor_to_seqs, offsets_to_seqs, EventHistory, SeqRange};
use serde_json::json;
use std::hint::black_box;
use std::sync::Arc;

const PAGE: u64 = 20;

fn event(seq: u64) -> Arc<StoredEvent> {
    let data = json!({ "text": format!("message {seq}"), "username": "alice" });
    Arc::new(StoredEvent::new(
        "general",
        "message",
        seq,
        0,
        1_700_000_000_000 + seq as i64,
        "alice".into(),
        &data,
        None::<&serde_json::Value>,
    ))
}

/// A full window of `limit` events after `total` were pushed.
fn window(limit: usize, total: u64) -> EventHistory {
    let mut h = EventHistory::new(limit, usize::MAX);
    for seq in 1..=total {
        h.push(event(seq));
    }
    h
}

/// Takes a page the way the room does for a history request: the events, newest first.
fn page(h: &EventHistory, range: SeqRange) -> Vec<Arc<StoredEvent>> {
    h.newest_first(range).cloned().collect()
}

fn paging(c: &mut Criterion) {
    for limit in [100usize, 10_000] {
        let total = limit as u64 * 3;
        let h = window(limit, total);
        let last = h.last_seq();
        let mut g = c.benchmark_group(format!("page of {PAGE}, window {limit}"));
        for depth in [0, limit as u64 / 2, limit as u64 - PAGE] {
            g.bench_with_input(BenchmarkId::new("offsets", depth), &depth, |b, &depth| {
                b.iter(|| {
                    let range = offsets_to_seqs(black_box(last), black_box(depth), depth + PAGE);
                    page(&h, range)
                })
            });
            g.bench_with_input(BenchmarkId::new("cursor", depth), &depth, |b, &depth| {
                b.iter(|| {
                    let range = cursor_to_seqs(black_box(last), black_box(last - depth + 1), PAGE);
                    page(&h, range)
                })
            });
        }
        g.finish();
    }
}

fn push(c: &mut Criterion) {
    let mut g = c.benchmark_group("push");
    for limit in [100usize, 10_000] {
        g.bench_function(BenchmarkId::new("evicting, window", limit), |b| {
            let mut h = window(limit, limit as u64);
            let mut seq = h.last_seq();
            b.iter_batched(
                || {
                    seq += 1;
                    event(seq)
                },
                |e| h.push(e),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, paging, push);
criterion_main!(benches);
