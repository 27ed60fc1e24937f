//! Property-based fuzzing of everything that decodes client bytes or client-given numbers:
//! the Engine.IO decoder, the Socket.IO decoder, the dialogue request parser with its door
//! checks, the long-polling POST body splitter, the WebSocket inbound framing, the history
//! range parsers (socket and HTTP query) and their offset/cursor arithmetic, and the CONNECT
//! authentication (open mode and JWT, with the token's `exp`).
//!
//! Each property feeds both arbitrary input and structure-aware input (valid packets mutated,
//! ack ids and counts near `u64::MAX`, numbers such as `1e400`, `-0` or
//! `18446744073709551616`, deeply nested JSON, `\x1e`-separated payloads with empty records
//! and bad base64, escaped lone surrogates) and checks: no panic (overflow checks are on in
//! the test profile), errors are values (`Err`, `INVALID_REQUEST` for requests), what the
//! encoders produce decodes back to the same packet, and the memory a decode holds at its peak
//! is bounded by a constant times the input (a counting global allocator measures it).
//!
//! Short run, part of `cargo test`: `cargo test --test fuzz` (about 5 s in a debug build:
//! 1000 cases per property).
//!
//! Long run (`PROPTEST_CASES` sets every property's case count; the profile variable keeps
//! overflow checks on in the optimised build):
//!
//! ```text
//! CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true PROPTEST_CASES=200000 cargo test --release --test fuzz
//! ```
//!
//! A failure is shrunk to a minimal input and its seed saved in
//! `tests/fuzz.proptest-regressions`; commit that file so the case is replayed on every run.
//!
//! Coverage-guided fuzzing of the same entry points, with a nightly toolchain: `fuzz/`
//! (cargo-fuzz; see fuzz/Cargo.toml).

use dialogue::auth::{Authenticator, Identity};
use dialogue::config::{AuthConfig, AuthMode, JwtConfig};
use dialogue::error::{DialogueError, ErrorCode};
use dialogue::history::{cursor_to_seqs, offsets_to_seqs, SeqRange};
use dialogue::http::api::parse_history_query;
use dialogue::http::polling::{records, Record, SEPARATOR};
use dialogue::http::websocket::{WsInbound, WsInboundError, WsMessage};
use dialogue::protocol::dialogue::{
    error_frames, history_range, parse_request, ClientRequest, HistoryRange, DEFAULT_HISTORY_PAGE,
    MAX_HISTORY_PAGE,
};
use dialogue::protocol::engineio::{self, EioPacket, Handshake};
use dialogue::protocol::socketio::{self, SioKind, SioPacket, MAX_ATTACHMENTS, RESERVED_EVENTS};
use dialogue::protocol::{parsed_json_weight, storable};
use futures_core::Stream;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

// ---------------------------------------------------------------------------------------------
// Measuring allocation: a global allocator that keeps, per thread, the bytes live and their peak.

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn grew(n: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().wrapping_add(n as isize);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrank(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().wrapping_sub(n as isize)));
}

// SAFETY: every call is forwarded to `System` unchanged; the counters are plain thread-local
// cells without destructors, and `try_with` never panics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`; returns its result and the most bytes it held allocated at once (its result
/// included, since that is still live when it returns).
fn peak_bytes<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let result = f();
    let peak = PEAK.with(Cell::get);
    (result, peak.saturating_sub(start).max(0) as usize)
}

/// What decoding `len` bytes of client input may hold at its peak: a parsed JSON value costs a
/// constant factor over its text, never an amount the input merely declares. The factor is
/// serde_json's: an object is a B-tree whose first node takes about 630 bytes even for the 7
/// bytes of `{"":0},`, an array element a 32-byte `Value` in a vector grown by doubling; and
/// a trigger's `data` is held twice while its request is parsed (the packet's value and the
/// request's copy). Measured worst case: a trigger whose data is `[{"":0},…]`, about 200 times
/// its frame (see `known_inputs`). Nesting is cut at 128 levels.
fn decode_budget(len: usize) -> usize {
    256 * len + 64 * 1024
}

fn assert_bounded(what: &str, input_len: usize, peak: usize) {
    assert!(
        peak <= decode_budget(input_len),
        "{what}: {peak} bytes held at once for {input_len} bytes of input"
    );
}

/// The proptest configuration: `cases` unless `PROPTEST_CASES` says otherwise.
fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

// ---------------------------------------------------------------------------------------------
// Strategies.

/// Characters that steer the decoders into their interesting branches.
const PROTOCOL_CHARS: &[char] = &[
    '0', '1', '2', '3', '4', '5', '6', '7', '9', '-', '+', '/', ',', '[', ']', '{', '}', '"', '\\',
    ':', '.', 'e', 'E', 'u', 'b', 'd', '8', 'a', ' ', '\x1e', '\0', '\n', '\u{7f}', '\u{85}',
    '\u{feff}', '\u{ffff}', 'é', '😀',
];

fn protocol_char() -> BoxedStrategy<char> {
    prop_oneof![
        4 => prop::sample::select(PROTOCOL_CHARS),
        1 => any::<char>(),
    ]
    .boxed()
}

/// Short strings, mostly of protocol characters.
fn protocol_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::collection::vec(protocol_char(), 0..48).prop_map(|c| c.into_iter().collect()),
        1 => any::<String>(),
    ]
    .boxed()
}

/// Numbers as a client may spell them in JSON, valid or not.
fn number_text() -> BoxedStrategy<String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "-0",
            "1",
            "-1",
            "49",
            "50",
            "999",
            "1000",
            "1001",
            "1.5",
            "1.0",
            "1e2",
            "1e400",
            "-1e400",
            "1E-400",
            "0.0000001",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "18446744073709551615",
            "18446744073709551614",
            "18446744073709551616",
            "99999999999999999999999999999",
            "1.7976931348623157e308",
            "1.7976931348623157e309",
            "-1.7976931348623157e308",
            "NaN",
            "Infinity",
            "-Infinity",
            "+5",
            "0x10",
            "05",
            "5.",
            ".5",
            "\"5\"",
            "null",
            "true",
            "[]",
            "{}",
        ])
        .prop_map(str::to_owned),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (u64::MAX - 2048..=u64::MAX).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        "-?[0-9]{1,25}(\\.[0-9]{0,5})?([eE][+-]?[0-9]{1,4})?",
    ]
    .boxed()
}

/// Strings as a client may spell them in JSON (the quotes included), valid or not.
fn string_text() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>().prop_map(|s| Value::String(s).to_string()),
        prop::sample::select(vec![
            r#""general""#,
            r#""""#,
            r#"" general""#,
            r#""a\u0000b""#,
            r#""\u0000""#,
            r#""\ud800""#,
            r#""\udc00\ud800""#,
            r#""\ud83d\ude00""#,
            r#""\ud83d""#,
            r#""\u12""#,
            r#""\x41""#,
            "\"tab\there\"",
            r#""unterminated"#,
            r#""connect""#,
            r#""dialogue:join""#,
        ])
        .prop_map(str::to_owned),
        "[a-z:]{1,12}".prop_map(|s| format!("\"{s}\"")),
        "[a-z]{300}".prop_map(|s| format!("\"{s}\"")),
    ]
    .boxed()
}

/// JSON values with the numbers and strings above, nested a little.
fn arb_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-4096i32..4096).prop_map(|n| Value::from(f64::from(n) / 8.0)),
        any::<String>().prop_map(Value::String),
        prop::sample::select(vec!["general", "", " x", "a\0b", "connect", "m"])
            .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Object keys: the request fields, mostly.
fn key() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "roomId", "eventName", "event", "data", "meta", "start", "end", "before", "limit",
            "id", "name", "description", "maxSize", "userId", "token", "exp", "sid", "\0",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
    .boxed()
}

/// JSON text: valid values, weird numbers and strings, deep nesting, or broken fragments.
fn json_text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => arb_value().prop_map(|v| v.to_string()),
        2 => number_text(),
        2 => string_text(),
        1 => (0usize..300).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        1 => (0usize..300).prop_map(|n| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))),
        1 => (0usize..300).prop_map(|n| "[".repeat(n)),
        1 => prop::sample::select(vec![
            "", "{", "[", "]", "[,]", "[1,]", "{\"a\"}", "{\"a\":}", "[\"x\"", "nul", "tru",
            "[\"x\"]garbage", "[\"x\"] ", " [\"x\"]", "[\"x\",1e400]", "\u{feff}[\"x\"]",
        ])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

/// Applies character edits (insert, delete, replace, duplicate a run) to `text`.
fn mutate(text: &str, edits: &[(usize, u8, char)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for &(pos, op, c) in edits {
        let i = pos % (chars.len() + 1);
        match op % 4 {
            0 => chars.insert(i, c),
            1 if i < chars.len() => {
                chars.remove(i);
            }
            2 if i < chars.len() => chars[i] = c,
            3 => {
                let j = (i + c as usize % 8).min(chars.len());
                let run: Vec<char> = chars[i..j].to_vec();
                chars.splice(i..i, run);
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

fn edits() -> BoxedStrategy<Vec<(usize, u8, char)>> {
    prop::collection::vec((any::<usize>(), any::<u8>(), protocol_char()), 0..4).boxed()
}

/// A Socket.IO packet text (without the Engine.IO `4`), assembled from parts that are each
/// valid or subtly not: type, attachment count, namespace, ack id, payload.
fn sio_text() -> BoxedStrategy<String> {
    let kind = prop_oneof![
        8 => prop::sample::select(vec!["0", "1", "2", "3", "4", "5", "6"]),
        1 => prop::sample::select(vec!["7", "9", "", "x", "é", "-", "/"]),
    ];
    let attachments = prop_oneof![
        Just(String::new()),
        prop::sample::select(vec![
            "0-",
            "1-",
            "10-",
            "11-",
            "451234567890-",
            "4294967295-",
            "4294967296-",
            "-1-",
            "+3-",
            "-",
            "1",
            "01-",
            " 1-",
        ])
        .prop_map(str::to_owned),
        any::<u32>().prop_map(|n| format!("{n}-")),
    ];
    let nsp = prop_oneof![
        Just(String::new()),
        prop::sample::select(vec!["/,", "/chat,", "/a,b,", "/", "/admin", "/x/y,", "/0,"])
            .prop_map(str::to_owned),
        "/[^,]{0,8},?",
    ];
    let id = prop_oneof![
        Just(String::new()),
        prop::sample::select(vec![
            "0",
            "7",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
            "00012",
        ])
        .prop_map(str::to_owned),
        any::<u64>().prop_map(|n| n.to_string()),
        (u64::MAX - 16..=u64::MAX).prop_map(|n| n.to_string()),
    ];
    let payload = prop_oneof![
        3 => json_text(),
        3 => (dialogue_name(), request_text())
            .prop_map(|(name, arg)| format!("[{},{arg}]", Value::String(name))),
        1 => dialogue_name().prop_map(|name| format!("[{}]", Value::String(name))),
        1 => Just(String::new()),
    ];
    let assembled = (kind, attachments, nsp, id.clone(), payload, edits()).prop_map(
        |(kind, attachments, nsp, id, payload, edits)| {
            let text = format!("{kind}{attachments}{nsp}{id}{payload}");
            mutate(&text, &edits)
        },
    );
    // A well-formed dialogue request, the common case, now and then with one edit.
    let request = (
        id,
        prop_oneof![
            2 => valid_request(),
            1 => (dialogue_name(), request_text()),
        ],
        prop::collection::vec((any::<usize>(), any::<u8>(), protocol_char()), 0..2),
    )
        .prop_map(|(id, (name, arg), edits)| {
            let text = format!("2{id}[{},{arg}]", Value::String(name));
            mutate(&text, &edits)
        });
    prop_oneof![1 => assembled, 2 => request].boxed()
}

/// An Engine.IO text frame: mostly a message carrying a Socket.IO packet.
fn eio_text() -> BoxedStrategy<String> {
    prop_oneof![
        6 => sio_text().prop_map(|s| format!("4{s}")),
        1 => (prop::sample::select(vec!["0", "1", "2", "3", "5", "6", "7", "", "b"]), protocol_text())
            .prop_map(|(kind, data)| format!("{kind}{data}")),
        1 => protocol_text(),
    ]
    .boxed()
}

const DIALOGUE_EVENTS: &[&str] = &[
    "dialogue:join",
    "dialogue:leave",
    "dialogue:subscribe",
    "dialogue:subscribeAll",
    "dialogue:unsubscribe",
    "dialogue:trigger",
    "dialogue:getHistory",
    "dialogue:listRooms",
    "dialogue:createRoom",
    "dialogue:deleteRoom",
];

fn dialogue_name() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(DIALOGUE_EVENTS).prop_map(str::to_owned),
        1 => protocol_text(),
    ]
    .boxed()
}

/// A request of the right shape for its name, with values that are mostly plausible and
/// sometimes not: `(name, argument as JSON text)`.
fn valid_request() -> BoxedStrategy<(String, String)> {
    let id = || {
        prop_oneof![
            3 => "[a-z][a-z0-9:_-]{0,10}".prop_map(|s| Value::String(s).to_string()),
            1 => string_text(),
        ]
    };
    let optional = |name: &'static str, value: BoxedStrategy<String>| {
        prop::option::of(value).prop_map(move |v| v.map(|v| format!(",\"{name}\":{v}")))
    };
    let room = (
        prop::sample::select(vec![
            "dialogue:join",
            "dialogue:leave",
            "dialogue:subscribeAll",
            "dialogue:deleteRoom",
        ]),
        id(),
    )
        .prop_map(|(name, room)| (name.to_owned(), format!(r#"{{"roomId":{room}}}"#)));
    let event = (
        prop::sample::select(vec!["dialogue:subscribe", "dialogue:unsubscribe"]),
        id(),
        id(),
    )
        .prop_map(|(name, room, event)| {
            (
                name.to_owned(),
                format!(r#"{{"roomId":{room},"eventName":{event}}}"#),
            )
        });
    let history = (
        id(),
        id(),
        optional("start", number_text()),
        optional("end", number_text()),
        optional("before", number_text()),
        optional("limit", number_text()),
    )
        .prop_map(|(room, event, a, b, c, d)| {
            let rest: String = [a, b, c, d].into_iter().flatten().collect();
            (
                "dialogue:getHistory".to_owned(),
                format!(r#"{{"roomId":{room},"eventName":{event}{rest}}}"#),
            )
        });
    let trigger = (id(), id(), json_text(), optional("meta", json_text())).prop_map(
        |(room, event, data, meta)| {
            (
                "dialogue:trigger".to_owned(),
                format!(
                    r#"{{"roomId":{room},"event":{event},"data":{data}{}}}"#,
                    meta.unwrap_or_default()
                ),
            )
        },
    );
    let create = (
        id(),
        string_text(),
        optional("description", string_text()),
        optional("maxSize", number_text()),
    )
        .prop_map(|(room, name, description, max)| {
            (
                "dialogue:createRoom".to_owned(),
                format!(
                    r#"{{"id":{room},"name":{name}{}{}}}"#,
                    description.unwrap_or_default(),
                    max.unwrap_or_default()
                ),
            )
        });
    prop_oneof![
        1 => room,
        1 => event,
        2 => history,
        2 => trigger,
        1 => create,
        1 => Just(("dialogue:listRooms".to_owned(), "null".to_owned())),
    ]
    .boxed()
}

/// A request argument as JSON text: an object of request fields with odd values, or anything.
fn request_text() -> BoxedStrategy<String> {
    let field = prop_oneof![
        (key(), string_text()),
        (key(), number_text()),
        (key(), json_text()),
    ];
    prop_oneof![
        4 => prop::collection::vec(field, 0..6).prop_map(|fields| {
            let body: Vec<String> = fields
                .into_iter()
                .map(|(k, v)| format!("{}:{v}", Value::String(k)))
                .collect();
            format!("{{{}}}", body.join(","))
        }),
        1 => json_text(),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// The decoding path of one text frame, as `Connection::on_text` walks it.

#[derive(Debug)]
enum Outcome {
    /// Not an Engine.IO packet: the connection closes.
    EioError,
    /// An Engine.IO packet other than a message.
    EioOther,
    /// Not a Socket.IO packet: the connection closes.
    SioError,
    /// A Socket.IO packet other than an EVENT.
    Packet,
    /// An EVENT: the parsed request, door checks passed, or the error answered to it.
    Request(Result<ClientRequest, DialogueError>),
}

fn pipeline(frame: &str) -> Outcome {
    let data = match engineio::decode(frame) {
        Ok(EioPacket::Message(data)) => data,
        Ok(_) => return Outcome::EioOther,
        Err(_) => return Outcome::EioError,
    };
    let packet = match socketio::decode(data) {
        Ok(packet) => packet,
        Err(_) => return Outcome::SioError,
    };
    check_packet_invariants(&packet);
    if packet.kind != SioKind::Event {
        return Outcome::Packet;
    }
    let Some(Value::Array(args)) = packet.data else {
        panic!("an EVENT decoded without an array: {packet:?}");
    };
    let mut args = args.into_iter();
    let Some(Value::String(name)) = args.next() else {
        panic!("an EVENT decoded without a name");
    };
    let request = parse_request(&name, args.next())
        .and_then(|request| request.check_storable(data).map(|()| request));
    if let Err(e) = &request {
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{e}");
    }
    if let Ok(ClientRequest::GetHistory(h)) = &request {
        check_range_bounds(h.range);
    }
    Outcome::Request(request)
}

/// What every decoded Socket.IO packet satisfies.
fn check_packet_invariants(p: &SioPacket) {
    assert!(p.attachments <= MAX_ATTACHMENTS, "{p:?}");
    if !matches!(p.kind, SioKind::BinaryEvent | SioKind::BinaryAck) {
        assert_eq!(p.attachments, 0, "{p:?}");
    }
    assert!(p.nsp.starts_with('/') && !p.nsp.contains(','), "{p:?}");
    match (p.kind, &p.data) {
        (SioKind::Connect, None | Some(Value::Object(_))) => {}
        (SioKind::Disconnect, None) => {}
        (SioKind::ConnectError, Some(Value::Object(_) | Value::String(_))) => {}
        (SioKind::Event | SioKind::BinaryEvent, Some(Value::Array(items))) => {
            let Some(Value::String(name)) = items.first() else {
                panic!("{p:?}");
            };
            assert!(!RESERVED_EVENTS.contains(&name.as_str()), "{p:?}");
        }
        (SioKind::Ack | SioKind::BinaryAck, Some(Value::Array(_))) => {
            assert!(p.id.is_some(), "{p:?}")
        }
        _ => panic!("a packet of the wrong shape decoded: {p:?}"),
    }
}

fn check_range_bounds(range: HistoryRange) {
    match range {
        HistoryRange::Offsets { start, end } => {
            assert!(start <= end && end - start <= MAX_HISTORY_PAGE, "{range:?}")
        }
        HistoryRange::Before { limit, .. } => {
            assert!((1..=MAX_HISTORY_PAGE).contains(&limit), "{range:?}")
        }
    }
}

/// A canonical encoder for any packet (the server's encoders cover only what it sends).
fn encode_packet(p: &SioPacket) -> String {
    let kind = match p.kind {
        SioKind::Connect => '0',
        SioKind::Disconnect => '1',
        SioKind::Event => '2',
        SioKind::Ack => '3',
        SioKind::ConnectError => '4',
        SioKind::BinaryEvent => '5',
        SioKind::BinaryAck => '6',
    };
    let mut out = String::from(kind);
    if matches!(p.kind, SioKind::BinaryEvent | SioKind::BinaryAck) {
        out.push_str(&format!("{}-", p.attachments));
    }
    if p.nsp != "/" {
        out.push_str(&p.nsp);
        out.push(',');
    }
    if let Some(id) = p.id {
        out.push_str(&id.to_string());
    }
    if let Some(data) = &p.data {
        out.push_str(&data.to_string());
    }
    out
}

/// JSON equality where floats may differ in their last bit (a float's shortest spelling is
/// parsed back exactly only with serde_json's `float_roundtrip`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || ((x - y) / x.abs().max(y.abs())).abs() < 1e-15,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && json_eq(vx, vy))
        }
        _ => a == b,
    }
}

fn same_packet(a: &SioPacket, b: &SioPacket) -> bool {
    a.kind == b.kind
        && a.nsp == b.nsp
        && a.attachments == b.attachments
        && a.id == b.id
        && match (&a.data, &b.data) {
            (Some(x), Some(y)) => json_eq(x, y),
            (None, None) => true,
            _ => false,
        }
}

/// A packet the decoder accepts, built directly.
fn valid_packet() -> BoxedStrategy<SioPacket> {
    let nsp = prop_oneof![Just("/".to_owned()), "/[^,]{0,10}"];
    let name = prop_oneof![
        prop::sample::select(DIALOGUE_EVENTS).prop_map(str::to_owned),
        any::<String>(),
    ]
    .prop_filter("reserved event name", |n| {
        !RESERVED_EVENTS.contains(&n.as_str())
    });
    let object = prop::collection::vec((key(), arb_value()), 0..4)
        .prop_map(|entries| Value::Object(entries.into_iter().collect()))
        .boxed();
    let array = prop::collection::vec(arb_value(), 0..4)
        .prop_map(Value::Array)
        .boxed();
    let event = (name, prop::collection::vec(arb_value(), 0..3))
        .prop_map(|(name, mut rest)| {
            rest.insert(0, Value::String(name));
            Value::Array(rest)
        })
        .boxed();
    let id = prop_oneof![
        Just(None),
        any::<u64>().prop_map(Some),
        Just(Some(u64::MAX)),
        Just(Some(0))
    ];
    let ack_id = prop_oneof![any::<u64>(), Just(u64::MAX), Just(0)];
    let attachments = 0..=MAX_ATTACHMENTS;
    prop_oneof![
        (nsp.clone(), id.clone(), prop::option::of(object.clone())).prop_map(|(nsp, id, data)| {
            SioPacket {
                kind: SioKind::Connect,
                nsp,
                attachments: 0,
                id,
                data,
            }
        }),
        (nsp.clone(), id.clone()).prop_map(|(nsp, id)| SioPacket {
            kind: SioKind::Disconnect,
            nsp,
            attachments: 0,
            id,
            data: None,
        }),
        (nsp.clone(), id.clone(), event.clone()).prop_map(|(nsp, id, data)| SioPacket {
            kind: SioKind::Event,
            nsp,
            attachments: 0,
            id,
            data: Some(data),
        }),
        (nsp.clone(), ack_id.clone(), array.clone()).prop_map(|(nsp, id, data)| SioPacket {
            kind: SioKind::Ack,
            nsp,
            attachments: 0,
            id: Some(id),
            data: Some(data),
        }),
        (
            nsp.clone(),
            id.clone(),
            prop_oneof![object, any::<String>().prop_map(Value::String)]
        )
            .prop_map(|(nsp, id, data)| SioPacket {
                kind: SioKind::ConnectError,
                nsp,
                attachments: 0,
                id,
                data: Some(data),
            }),
        (nsp.clone(), id, event, attachments.clone()).prop_map(|(nsp, id, data, attachments)| {
            SioPacket {
                kind: SioKind::BinaryEvent,
                nsp,
                attachments,
                id,
                data: Some(data),
            }
        }),
        (nsp, ack_id, array, attachments).prop_map(|(nsp, id, data, attachments)| SioPacket {
            kind: SioKind::BinaryAck,
            nsp,
            attachments,
            id: Some(id),
            data: Some(data),
        }),
    ]
    .boxed()
}

/// History numbers: the edges of every range check, of `u64` and of `i64`, or anything.
fn history_number() -> BoxedStrategy<u64> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            2,
            DEFAULT_HISTORY_PAGE - 1,
            DEFAULT_HISTORY_PAGE,
            DEFAULT_HISTORY_PAGE + 1,
            MAX_HISTORY_PAGE - 1,
            MAX_HISTORY_PAGE,
            MAX_HISTORY_PAGE + 1,
            i64::MAX as u64 - 1,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX - MAX_HISTORY_PAGE - 1,
            u64::MAX - MAX_HISTORY_PAGE,
            u64::MAX - DEFAULT_HISTORY_PAGE,
            u64::MAX - 1,
            u64::MAX,
        ]),
        0u64..3000,
        (u64::MAX - 3000..=u64::MAX),
        any::<u64>(),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// The WebSocket inbound side: client frames (masked, as RFC 6455 requires), possibly
// fragmented, with declared lengths that may lie.

const WS_MAX: usize = 256;

#[derive(Debug, Clone)]
struct WsFrame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    mask: [u8; 4],
    payload: Vec<u8>,
    /// A length to declare instead of the payload's.
    declared: Option<u64>,
}

fn ws_frame() -> BoxedStrategy<WsFrame> {
    let opcode = prop_oneof![
        6 => Just(1u8),
        6 => prop::sample::select(vec![0u8, 1, 2, 8, 9, 10]),
        1 => 0u8..16,
    ];
    let payload = prop_oneof![
        eio_text().prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..64),
        (0usize..WS_MAX * 2).prop_map(|n| vec![b'4'; n]),
    ];
    let declared = prop_oneof![
        6 => Just(None),
        1 => prop::sample::select(vec![
            125u64, 126, 127, 65535, 65536, WS_MAX as u64, WS_MAX as u64 + 1,
            i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX,
        ])
        .prop_map(Some),
        1 => any::<u64>().prop_map(Some),
    ];
    (
        prop::bool::weighted(0.8),
        prop_oneof![8 => Just(0u8), 1 => 0u8..8],
        opcode,
        prop::bool::weighted(0.95),
        any::<[u8; 4]>(),
        payload,
        declared,
    )
        .prop_map(
            |(fin, rsv, opcode, masked, mask, payload, declared)| WsFrame {
                fin,
                rsv,
                opcode,
                masked,
                mask,
                payload,
                declared,
            },
        )
        .boxed()
}

fn encode_ws(frames: &[WsFrame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.push(u8::from(f.fin) << 7 | f.rsv << 4 | f.opcode);
        let len = f.declared.unwrap_or(f.payload.len() as u64);
        let mask_bit = u8::from(f.masked) << 7;
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= u64::from(u16::MAX) {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        if f.masked {
            out.extend_from_slice(&f.mask);
        }
        out.extend(
            f.payload
                .iter()
                .enumerate()
                .map(|(i, b)| if f.masked { b ^ f.mask[i % 4] } else { *b }),
        );
    }
    out
}

/// Everything `WsInbound` yields for a request body of `input`, with `WS_MAX` as maxPayload.
fn ws_messages(input: &[u8]) -> Vec<Result<WsMessage, WsInboundError>> {
    let mut inbound = WsInbound::from_bytes(input, WS_MAX);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    for _ in 0..=input.len() + 1 {
        match Pin::new(&mut inbound).poll_next(&mut cx) {
            Poll::Ready(Some(item)) => out.push(item),
            Poll::Ready(None) | Poll::Pending => break,
        }
    }
    out
}

fn check_ws(input: &[u8]) {
    let (messages, peak) = peak_bytes(|| ws_messages(input));
    // The request and its payload are built inside too: a few copies of the input at most,
    // plus one message of maxPayload being reassembled.
    assert!(
        peak <= 8 * input.len() + 4 * WS_MAX + 64 * 1024,
        "{peak} bytes held for {} bytes of frames",
        input.len()
    );
    let mut total = 0;
    for (i, message) in messages.iter().enumerate() {
        match message {
            Ok(WsMessage::Text(text)) => {
                assert!(text.len() <= WS_MAX);
                total += text.len();
                // What the connection does with a text message.
                let _ = pipeline(text);
            }
            Ok(WsMessage::Binary(bytes) | WsMessage::Ping(bytes)) => {
                assert!(bytes.len() <= WS_MAX);
                total += bytes.len();
            }
            Ok(WsMessage::Close) => {}
            Err(_) => assert_eq!(i + 1, messages.len(), "nothing follows an error"),
        }
    }
    assert!(total <= input.len());
}

// ---------------------------------------------------------------------------------------------
// Authentication.

const JWT_SECRET: &str = "fuzzing-secret-of-at-least-32-bytes!!";

fn jwt_authenticator() -> Authenticator {
    let auth = AuthConfig {
        mode: AuthMode::Jwt,
        jwt: JwtConfig {
            secret: Some(JWT_SECRET.to_owned()),
            ..JwtConfig::default()
        },
        ..AuthConfig::default()
    };
    match Authenticator::from_config(&auth) {
        Ok(authenticator) => authenticator,
        Err((key, message)) => panic!("{key}: {message}"),
    }
}

fn sign(claims: &str) -> String {
    let claims: Value = serde_json::from_str(claims).unwrap_or(Value::Null);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(config(1000))]

    /// Engine.IO: any text decodes or is refused; a decoded packet spells its frame back.
    #[test]
    fn engineio_decode(frame in prop_oneof![eio_text(), any::<String>()]) {
        let (decoded, peak) = peak_bytes(|| engineio::decode(&frame));
        prop_assert_eq!(peak, 0, "the Engine.IO decoder allocates nothing");
        match decoded {
            Ok(EioPacket::Open(d) | EioPacket::Ping(d) | EioPacket::Pong(d)
                | EioPacket::Message(d)) => prop_assert_eq!(&frame[1..], d),
            Ok(EioPacket::Close) => prop_assert!(frame.starts_with('1')),
            Ok(EioPacket::Upgrade) => prop_assert!(frame.starts_with('5')),
            Ok(EioPacket::Noop) => prop_assert!(frame.starts_with('6')),
            Err(_) => prop_assert!(!matches!(frame.chars().next(), Some('0'..='6'))),
        }
    }

    /// Socket.IO: any text decodes to a well-shaped packet or is refused; what decodes
    /// re-encodes to text that decodes to the same packet; memory stays within the input's
    /// bound whatever count or id the text declares.
    #[test]
    fn socketio_decode(text in prop_oneof![3 => sio_text(), 1 => any::<String>()]) {
        let (decoded, peak) = peak_bytes(|| socketio::decode(&text));
        assert_bounded("socketio::decode", text.len(), peak);
        if let Ok(packet) = decoded {
            check_packet_invariants(&packet);
            let again = socketio::decode(&encode_packet(&packet));
            prop_assert!(
                matches!(&again, Ok(p) if same_packet(p, &packet)),
                "{:?} re-decoded as {:?}", packet, again
            );
        }
    }

    /// A packet the encoder writes decodes to the same packet.
    #[test]
    fn socketio_round_trip(packet in valid_packet()) {
        let text = encode_packet(&packet);
        let decoded = socketio::decode(&text);
        prop_assert!(
            matches!(&decoded, Ok(p) if same_packet(p, &packet)),
            "{:?} encoded as {:?} decoded as {:?}", packet, text, decoded
        );
    }

    /// The server's own encoders: every frame they write decodes to what was meant.
    #[test]
    fn server_encoders_round_trip(
        name in any::<String>(),
        payload in arb_value(),
        id in prop_oneof![any::<u64>(), Just(u64::MAX), Just(0)],
        nsp in prop_oneof![Just("/".to_owned()), "/[^,]{0,10}"],
        message in any::<String>(),
    ) {
        let payload_json = payload.to_string();
        let decode = |frame: &str| {
            prop_assert!(frame.starts_with('4'), "{}", frame);
            socketio::decode(&frame[1..]).map_err(|e| TestCaseError::fail(e.to_string()))
        };

        let event = decode(&socketio::encode_event(&name, &payload_json));
        if RESERVED_EVENTS.contains(&name.as_str()) {
            prop_assert!(event.is_err());
        } else {
            let event = event?;
            prop_assert_eq!((event.kind, event.id), (SioKind::Event, None));
            prop_assert!(json_eq(event.data.as_ref().unwrap(), &json!([name, payload])));
            let event = decode(&socketio::encode_event_with_ack(id, &name, &payload_json))?;
            prop_assert_eq!((event.kind, event.id), (SioKind::Event, Some(id)));
            prop_assert!(json_eq(event.data.as_ref().unwrap(), &json!([name, payload])));
        }

        let ack = decode(&socketio::encode_ack(id, &payload_json))?;
        prop_assert_eq!((ack.kind, ack.id), (SioKind::Ack, Some(id)));
        prop_assert!(json_eq(ack.data.as_ref().unwrap(), &json!([payload])));

        let connect = decode(&socketio::encode_connect(&message, None))?;
        prop_assert_eq!(connect.data, Some(json!({ "sid": message })));

        let refused = decode(&socketio::encode_connect_error(&nsp, &message))?;
        prop_assert_eq!(refused.kind, SioKind::ConnectError);
        prop_assert_eq!(&refused.nsp, &nsp);
        prop_assert_eq!(refused.data, Some(json!({ "message": message })));

        let gone = decode(&socketio::encode_disconnect(&nsp))?;
        prop_assert_eq!((gone.kind, gone.nsp.as_str()), (SioKind::Disconnect, nsp.as_str()));

        let error = DialogueError::invalid(message.clone());
        let frames: Vec<String> = error_frames(Some(id), &error).collect();
        prop_assert_eq!(frames.len(), 2);
        let event = decode(&frames[0])?;
        prop_assert_eq!(
            event.data,
            Some(json!(["dialogue:error", {"code": "INVALID_REQUEST", "message": message}]))
        );
        let ack = decode(&frames[1])?;
        prop_assert_eq!(ack.id, Some(id));

        let open = engineio::encode_open(&Handshake {
            sid: &message,
            upgrades: &["websocket"],
            ping_interval: id,
            ping_timeout: u64::MAX,
            max_payload: 0,
        });
        let Ok(EioPacket::Open(json)) = engineio::decode(&open) else {
            return Err(TestCaseError::fail(format!("{open:?} is not an open packet")));
        };
        let handshake: Value = serde_json::from_str(json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            handshake,
            json!({"sid": message, "upgrades": ["websocket"], "pingInterval": id,
                   "pingTimeout": u64::MAX, "maxPayload": 0})
        );
    }

    /// A text frame through everything a connection does with it: Engine.IO, Socket.IO, the
    /// request parser and the door checks. Request errors are INVALID_REQUEST; memory stays
    /// within the input's bound.
    #[test]
    fn frame_pipeline(frame in eio_text()) {
        let (_, peak) = peak_bytes(|| pipeline(&frame));
        assert_bounded("pipeline", frame.len(), peak);
        // The connection weighs a message by this estimate before parsing it (refusing one
        // over 8 × maxPayload, bounding what it keeps waiting): the parse stays under twice it.
        let estimate = parsed_json_weight(&frame);
        prop_assert!(
            peak <= 2 * estimate + 64 * 1024,
            "{} bytes parsed at peak, estimated {}", peak, estimate
        );
    }

    /// The request parser on values (not text): every error is INVALID_REQUEST.
    #[test]
    fn parse_request_values(name in dialogue_name(), arg in prop::option::of(arb_value())) {
        match parse_request(&name, arg.clone()) {
            Err(e) => prop_assert_eq!(e.code, ErrorCode::InvalidRequest),
            Ok(request) => {
                let raw = arg.map(|a| a.to_string()).unwrap_or_default();
                if let Err(e) = request.check_storable(&raw) {
                    prop_assert_eq!(e.code, ErrorCode::InvalidRequest);
                }
                if let ClientRequest::GetHistory(h) = request {
                    check_range_bounds(h.range);
                }
            }
        }
    }

    /// getHistory numbers as the client spells them: a number is taken only when it is a
    /// plain non-negative integer that fits a u64; any other spelling is INVALID_REQUEST (or a
    /// JSON error, which closes the connection); never a panic or a wrapped value.
    #[test]
    fn history_request_numbers(
        start in prop::option::of(number_text()),
        end in prop::option::of(number_text()),
        before in prop::option::of(number_text()),
        limit in prop::option::of(number_text()),
        ack in prop_oneof![Just(String::new()), any::<u64>().prop_map(|n| n.to_string())],
    ) {
        let mut fields = vec![r#""roomId":"r""#.to_owned(), r#""eventName":"e""#.to_owned()];
        for (name, value) in [("start", &start), ("end", &end), ("before", &before), ("limit", &limit)] {
            if let Some(value) = value {
                fields.push(format!("\"{name}\":{value}"));
            }
        }
        let frame = format!(r#"42{ack}["dialogue:getHistory",{{{}}}]"#, fields.join(","));
        let outcome = pipeline(&frame);
        // The oracle: serde_json takes an integer literal that fits in a u64 (`null` is as if
        // absent) and nothing else.
        let as_u64 = |v: &Option<String>| -> Option<Option<u64>> {
            match v.as_deref() {
                None | Some("null") => Some(None),
                Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())
                    && (v == "0" || !v.starts_with('0')) => v.parse::<u64>().ok().map(Some),
                Some(_) => None,
            }
        };
        match (as_u64(&start), as_u64(&end), as_u64(&before), as_u64(&limit)) {
            (Some(s), Some(e), Some(b), Some(l)) => {
                let expected = history_range(s, e, b, l);
                match (&outcome, &expected) {
                    (Outcome::Request(Ok(ClientRequest::GetHistory(h))), Ok(range)) => {
                        prop_assert_eq!(h.range, *range)
                    }
                    (Outcome::Request(Err(got)), Err(want)) => prop_assert_eq!(got, want),
                    _ => prop_assert!(false, "{:?}: {:?}, expected {:?}", frame, outcome, expected),
                }
            }
            _ => prop_assert!(
                matches!(outcome, Outcome::SioError | Outcome::Request(Err(_))),
                "{:?}: {:?}", frame, outcome
            ),
        }
    }

    /// The same numbers in the HTTP API's query string.
    #[test]
    fn history_query_strings(
        params in prop::collection::vec(
            (
                prop_oneof![
                    4 => prop::sample::select(vec!["start", "end", "before", "limit"]),
                    1 => prop::sample::select(vec!["", "x", "start[]", "%73tart", "=", "&"]),
                ],
                prop_oneof![number_text(), protocol_text()],
            ),
            0..5,
        ),
    ) {
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let query = query.join("&");
        let parsed = parse_history_query(&query);
        match &parsed {
            Err(e) => prop_assert_eq!(e.code, ErrorCode::InvalidRequest),
            Ok(range) => check_range_bounds(*range),
        }
        // With distinct known keys and plain values, the oracle is `str::parse::<u64>`.
        let keys: Vec<&str> = params.iter().map(|(k, _)| *k).collect();
        let plain = params.iter().all(|(k, v)| {
            ["start", "end", "before", "limit"].contains(k)
                && v.chars().all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
        }) && (1..keys.len()).all(|i| !keys[..i].contains(&keys[i]));
        if plain {
            let get = |name: &str| -> Result<Option<u64>, ()> {
                match params.iter().find(|(k, _)| *k == name) {
                    None => Ok(None),
                    Some((_, v)) => v.parse::<u64>().map(Some).map_err(|_| ()),
                }
            };
            match (get("start"), get("end"), get("before"), get("limit")) {
                (Ok(s), Ok(e), Ok(b), Ok(l)) => prop_assert_eq!(parsed, history_range(s, e, b, l)),
                _ => prop_assert!(parsed.is_err(), "{:?}: {:?}", query, parsed),
            }
        }
    }

    /// history_range and the offset/cursor arithmetic on any numbers: no overflow, and the
    /// seq interval is exactly the one that 128-bit arithmetic gives.
    #[test]
    fn history_arithmetic(
        start in prop::option::of(history_number()),
        end in prop::option::of(history_number()),
        before in prop::option::of(history_number()),
        limit in prop::option::of(history_number()),
        last_seq in history_number(),
    ) {
        let Ok(range) = history_range(start, end, before, limit) else {
            return Ok(());
        };
        check_range_bounds(range);
        let (seqs, page) = match range {
            HistoryRange::Offsets { start, end } => (offsets_to_seqs(last_seq, start, end), end - start),
            HistoryRange::Before { before, limit } => (cursor_to_seqs(last_seq, before, limit), limit),
        };
        let (lo, hi) = expected_seqs(range, last_seq);
        if lo > hi {
            prop_assert!(seqs.is_empty(), "{:?} at {}: {:?}", range, last_seq, seqs);
            prop_assert_eq!(seqs.len(), 0);
        } else {
            prop_assert_eq!(seqs, SeqRange { lo: lo as u64, hi: hi as u64 });
            prop_assert!(seqs.len() <= page);
            // What the history page says back (`page_json`): positions from the newest.
            prop_assert!(seqs.hi <= last_seq && seqs.lo >= 1);
        }
    }

    /// The arithmetic itself, on numbers history_range would have refused: still no panic.
    #[test]
    fn history_arithmetic_unchecked(
        a in history_number(), b in history_number(), c in history_number(),
    ) {
        let r = offsets_to_seqs(a, b, c);
        prop_assert!(r.is_empty() || (r.lo >= 1 && r.hi <= a && r.len() <= c.saturating_sub(b)));
        let r = cursor_to_seqs(a, b, c);
        prop_assert!(r.is_empty() || (r.lo >= 1 && r.hi <= a && r.hi < b && r.len() <= c));
    }

    /// Long-polling POST bodies: the records put back together are the body; each text record
    /// goes through the frame pipeline; splitting allocates nothing.
    #[test]
    fn polling_payloads(
        parts in prop::collection::vec(
            prop_oneof![
                4 => eio_text(),
                1 => Just(String::new()),
                1 => prop::sample::select(vec![
                    "b", "bAQID", "b!!!=", "b====", "bAQ", "b\u{0}", "b😀", "bb", "b4",
                ]).prop_map(str::to_owned),
                1 => "b[A-Za-z0-9+/=_\\-]{0,12}",
                1 => protocol_text(),
            ],
            0..8,
        ),
        body_edits in edits(),
    ) {
        let body = mutate(&parts.join("\x1e"), &body_edits);
        let (split, peak) = peak_bytes(|| records(&body).count());
        prop_assert_eq!(peak, 0, "splitting a body allocates nothing");
        prop_assert_eq!(split, body.matches(SEPARATOR).count() + 1);
        let mut rebuilt = Vec::new();
        for record in records(&body) {
            match record {
                Record::Binary(base64) => rebuilt.push(format!("b{base64}")),
                Record::Text(text) => {
                    prop_assert!(!text.starts_with('b'));
                    let (_, peak) = peak_bytes(|| pipeline(text));
                    assert_bounded("pipeline", text.len(), peak);
                    rebuilt.push(text.to_owned());
                }
            }
        }
        prop_assert_eq!(rebuilt.join("\x1e"), body);
    }

    /// The door checks on any string or value: they refuse exactly what their rules say.
    #[test]
    fn storable_checks(value in any::<String>(), json in arb_value()) {
        let controls = value.chars().any(char::is_control);
        let len_ok = (1..=storable::MAX_ROOM_ID).contains(&value.len());
        prop_assert_eq!(
            storable::check_room_id(&value).is_ok(),
            len_ok && !controls && value.trim() == value
        );
        prop_assert_eq!(
            storable::check_user_id(&value).is_ok(),
            (1..=storable::MAX_USER_ID).contains(&value.len()) && !controls
        );
        prop_assert_eq!(storable::check_text("name", &value).is_ok(), !value.contains('\0'));
        fn has_nul(v: &Value) -> bool {
            match v {
                Value::String(s) => s.contains('\0'),
                Value::Array(items) => items.iter().any(has_nul),
                Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
                _ => false,
            }
        }
        prop_assert_eq!(storable::check_json("data", &json).is_err(), has_nul(&json));
        prop_assert!(storable::shown(&value).chars().count() <= 2 + 40 * 6 + 1);
    }

    /// CONNECT in open mode with any payload: an identity whose user id can be stored, or a
    /// refusal.
    #[test]
    fn open_mode_authentication(auth in prop::option::of(arb_value())) {
        if let Ok(identity) = Authenticator::Open.authenticate(auth.as_ref(), "conn-1") {
            prop_assert!(storable::check_user_id(&identity.user_id).is_ok());
            prop_assert_eq!(identity.expires_at_ms(), None);
        }
    }

    /// The expiry of a session from a token's `exp`, whatever number it is: no overflow, the
    /// sum saturating at the ends of `i64`.
    #[test]
    fn token_expiry(exp in number_text()) {
        let Ok(claims) = serde_json::from_str::<Value>(&format!(r#"{{"exp":{exp}}}"#)) else {
            return Ok(());
        };
        let identity = Identity {
            claims: claims.clone(),
            ..Identity::user("u")
        };
        let expires = identity.expires_at_ms();
        match claims["exp"].as_f64() {
            None => prop_assert_eq!(expires, None),
            Some(exp) => {
                let expires = expires.unwrap();
                let wanted = (exp * 1000.0 + 5000.0).clamp(i64::MIN as f64, i64::MAX as f64);
                // Within the float's precision of the exact sum.
                let diff = (expires as f64 - wanted).abs();
                prop_assert!(diff <= wanted.abs() * 1e-12 + 1024.0, "{} -> {}", exp, expires);
            }
        }
    }

    /// CONNECT in JWT mode: any token, signed or not, with any `exp`, `nbf` and `sub`.
    #[test]
    fn jwt_authentication(
        exp in prop::option::of(number_text()),
        nbf in prop::option::of(number_text()),
        sub in prop::option::of(string_text()),
        signed in prop::bool::weighted(0.8),
        junk in protocol_text(),
        token_edits in prop::collection::vec((any::<usize>(), any::<u8>(), protocol_char()), 0..2),
    ) {
        let authenticator = jwt_authenticator();
        let mut claims = Vec::new();
        for (name, value) in [("exp", &exp), ("nbf", &nbf), ("sub", &sub)] {
            if let Some(value) = value {
                claims.push(format!("\"{name}\":{value}"));
            }
        }
        let token = if signed {
            mutate(&sign(&format!("{{{}}}", claims.join(","))), &token_edits)
        } else {
            junk
        };
        let result = authenticator.authenticate(Some(&json!({ "token": token })), "conn-1");
        if let Ok(identity) = result {
            prop_assert!(storable::check_user_id(&identity.user_id).is_ok());
            let expires = identity.expires_at_ms();
            prop_assert!(expires.is_some(), "exp is required");
            // exp is checked, so the session ends after now (less the leeway).
            prop_assert!(expires.unwrap() >= (now_seconds() as i64 - 10) * 1000);
        }
    }

    /// WebSocket frames, as a client may send them (fragmented, with declared lengths that
    /// lie): messages within maxPayload, an error ends the stream, memory within bounds.
    #[test]
    fn websocket_frames(frames in prop::collection::vec(ws_frame(), 0..6), cut in any::<usize>()) {
        let mut input = encode_ws(&frames);
        if !input.is_empty() && cut % 4 == 0 {
            input.truncate(cut % input.len());
        }
        check_ws(&input);
    }

    /// WebSocket input of arbitrary bytes.
    #[test]
    fn websocket_bytes(input in prop::collection::vec(any::<u8>(), 0..512)) {
        check_ws(&input);
    }
}

/// The offsets or cursor of `range` as a seq interval, computed in 128 bits.
fn expected_seqs(range: HistoryRange, last_seq: u64) -> (u128, u128) {
    let last = u128::from(last_seq);
    match range {
        // Position p (0 = newest) is seq last - p; positions start..end that exist.
        HistoryRange::Offsets { start, end } => {
            let (start, end) = (u128::from(start), u128::from(end).min(last));
            if start >= end {
                (1, 0)
            } else {
                (last - end + 1, last - start)
            }
        }
        HistoryRange::Before { before, limit } => {
            let hi = (u128::from(before)).saturating_sub(1).min(last);
            let lo = (hi + 1).saturating_sub(u128::from(limit)).max(1);
            (lo, hi)
        }
    }
}

/// Fixed inputs that once were, or could be, trouble.
#[test]
fn known_inputs() {
    for frame in [
        "451234567890-[\"x\"]",
        "5451234567890-[\"x\"]",
        "4518446744073709551616-[\"x\"]",
        "4218446744073709551615[\"x\"]",
        "4218446744073709551616[\"x\"]",
        "43-1[1]",
        "42[\"dialogue:getHistory\",{\"roomId\":\"r\",\"eventName\":\"e\",\"start\":1e400}]",
        "42[\"dialogue:getHistory\",{\"roomId\":\"r\",\"eventName\":\"e\",\"start\":-0}]",
        "42[\"dialogue:getHistory\",{\"roomId\":\"r\",\"eventName\":\"e\",\"start\":18446744073709551615}]",
        "42[\"dialogue:getHistory\",{\"roomId\":\"r\",\"eventName\":\"e\",\"before\":18446744073709551615,\"limit\":1000}]",
        "42[\"dialogue:trigger\",{\"roomId\":\"\\ud800\",\"event\":\"e\"}]",
        "42[\"dialogue:createRoom\",{\"id\":\"r\",\"name\":\"n\",\"maxSize\":4294967296}]",
        "42/,[\"x\"]",
        "4",
        "",
    ] {
        let (_, peak) = peak_bytes(|| pipeline(frame));
        assert_bounded(frame, frame.len(), peak);
    }
    let deep = format!("42[\"x\",{}{}]", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(pipeline(&deep), Outcome::SioError));
    let (_, peak) = peak_bytes(|| pipeline(&deep));
    assert_bounded("deep nesting", deep.len(), peak);
    // The worst amplification known: tiny objects in a trigger's data.
    let items = vec![r#"{"":0}"#; 100_000 / 7].join(",");
    let frame = format!(r#"42["dialogue:trigger",{{"roomId":"r","event":"e","data":[{items}]}}]"#);
    let (outcome, peak) = peak_bytes(|| pipeline(&frame));
    assert!(matches!(outcome, Outcome::Request(Ok(_))), "{outcome:?}");
    assert_bounded("objects in a trigger", frame.len(), peak);
    let estimate = parsed_json_weight(&frame);
    assert!(
        peak <= 2 * estimate && estimate <= 4 * peak,
        "the connection's estimate {estimate} against {peak} bytes measured"
    );
    assert!(
        peak > 100 * frame.len(),
        "measured {peak}: update decode_budget's comment"
    );
    // A polling body of nothing but separators: every record is an empty (refused) packet.
    assert!(records(&"\x1e".repeat(1000)).all(|r| r == Record::Text("")));
    // A WebSocket frame declaring 2^64 - 1 bytes is refused before anything is buffered.
    let huge = encode_ws(&[WsFrame {
        fin: true,
        rsv: 0,
        opcode: 1,
        masked: true,
        mask: [1, 2, 3, 4],
        payload: b"42".to_vec(),
        declared: Some(u64::MAX),
    }]);
    let messages = ws_messages(&huge);
    assert!(matches!(messages.as_slice(), [Err(_)]), "{messages:?}");
}

/// A token whose `exp` is far in the future (a "never expires" token) connects, and its
/// session ends at the end of time rather than overflowing (found by `token_expiry`: a debug
/// build panicked, a release build ended the session at once).
#[test]
fn far_future_exp() {
    let authenticator = jwt_authenticator();
    for exp in ["9223372036854775807", "18446744073709551615", "9.3e15"] {
        let token = sign(&format!(r#"{{"sub":"alice","exp":{exp}}}"#));
        let identity = authenticator
            .authenticate(Some(&json!({ "token": token })), "c")
            .unwrap_or_else(|e| panic!("exp {exp}: {e}"));
        assert_eq!(identity.expires_at_ms(), Some(i64::MAX), "exp {exp}");
    }
    // An `exp` that is not an integer of JSON is no `exp` to the JWT library.
    let token = sign(r#"{"sub":"alice","exp":1e300}"#);
    assert!(authenticator
        .authenticate(Some(&json!({ "token": token })), "c")
        .is_err());
}
