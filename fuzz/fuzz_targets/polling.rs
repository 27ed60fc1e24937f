//! A long-polling POST body: split into records, each text record decoded.
#![no_main]

use dialogue::http::polling::{records, Record};
use dialogue::protocol::{engineio, socketio};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let mut joined = Vec::new();
    for record in records(body) {
        match record {
            Record::Binary(base64) => joined.push(format!("b{base64}")),
            Record::Text(text) => {
                if let Ok(engineio::EioPacket::Message(m)) = engineio::decode(text) {
                    let _ = socketio::decode(m);
                }
                joined.push(text.to_owned());
            }
        }
    }
    assert_eq!(joined.join("\x1e"), body);
});
