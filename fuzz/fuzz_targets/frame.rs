//! One WebSocket text frame (or polling record) through everything a connection does with it:
//! Engine.IO, Socket.IO, the dialogue request parser and its door checks.
#![no_main]

use dialogue::error::ErrorCode;
use dialogue::protocol::dialogue::parse_request;
use dialogue::protocol::engineio::{self, EioPacket};
use dialogue::protocol::socketio::{self, SioKind};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = std::str::from_utf8(data) else {
        return;
    };
    // The Socket.IO decoder on its own, whatever the first character.
    let _ = socketio::decode(frame);
    let Ok(EioPacket::Message(text)) = engineio::decode(frame) else {
        return;
    };
    let Ok(packet) = socketio::decode(text) else {
        return;
    };
    if packet.kind != SioKind::Event {
        return;
    }
    let Some(Value::Array(args)) = &packet.data else {
        panic!("an EVENT without an array: {packet:?}");
    };
    let Some(Value::String(name)) = args.first() else {
        panic!("an EVENT without a name: {packet:?}");
    };
    let result = parse_request(name, args.get(1)).and_then(|r| r.check_storable(text));
    if let Err(e) = result {
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{e}");
    }
});
