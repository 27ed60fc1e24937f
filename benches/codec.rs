//! Engine.IO / Socket.IO packet codec: what every received frame and every sent event costs.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dialogue::protocol::dialogue::parse_request;
use dialogue::protocol::{engineio, socketio};
use std::hint::black_box;

/// A trigger as a client sends it (Engine.IO message + Socket.IO event with an ack id).
const TRIGGER_FRAME: &str = r#"4212["dialogue:trigger",{"roomId":"general","event":"message","data":{"text":"hello, this is a chat message of ordinary length","username":"alice"}}]"#;
/// An event as the server fans it out.
const EVENT_JSON: &str = r#"{"event":"message","roomId":"general","data":{"text":"hello, this is a chat message of ordinary length","username":"alice"},"from":"alice","timestamp":1700000000000,"seq":123456}"#;

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(TRIGGER_FRAME.len() as u64));
    g.bench_function("engineio", |b| {
        b.iter(|| engineio::decode(black_box(TRIGGER_FRAME)))
    });
    g.bench_function("engineio+socketio trigger", |b| {
        b.iter(|| match engineio::decode(black_box(TRIGGER_FRAME)) {
            Ok(engineio::EioPacket::Message(data)) => socketio::decode(data),
            other => panic!("not a message: {other:?}"),
        })
    });
    g.bench_function("socketio trigger + parse_request", |b| {
        let data = &TRIGGER_FRAME[1..];
        b.iter(|| {
            let packet = socketio::decode(black_box(data)).expect("valid packet");
            let Some(serde_json::Value::Array(items)) = packet.data else {
                panic!("event without arguments")
            };
            let mut items = items.into_iter();
            let Some(serde_json::Value::String(name)) = items.next() else {
                panic!("event without a name")
            };
            parse_request(&name, items.next()).expect("valid trigger")
        })
    });
    g.bench_function("socketio ack", |b| {
        b.iter(|| socketio::decode(black_box(r#"312[{"ok":true,"seq":123456}]"#)))
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Bytes(EVENT_JSON.len() as u64));
    g.bench_function("socketio event", |b| {
        b.iter(|| socketio::encode_event(black_box("dialogue:event"), black_box(EVENT_JSON)))
    });
    g.bench_function("socketio event with ack id", |b| {
        b.iter(|| {
            socketio::encode_event_with_ack(
                black_box(12),
                black_box("dialogue:trigger"),
                black_box(EVENT_JSON),
            )
        })
    });
    g.bench_function("socketio ack", |b| {
        b.iter(|| socketio::encode_ack(black_box(12), black_box(r#"{"ok":true,"seq":123456}"#)))
    });
    g.bench_function("engineio open", |b| {
        let handshake = engineio::Handshake {
            sid: "d2b5c7e0-4f5e-4c39-9c9a-0d7b2f3c1a11",
            upgrades: &[],
            ping_interval: 25_000,
            ping_timeout: 20_000,
            max_payload: 1_000_000,
        };
        b.iter(|| engineio::encode_open(black_box(&handshake)))
    });
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
