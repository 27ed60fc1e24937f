//! Socket.IO protocol v5 packets, carried in Engine.IO `message` packets.
//!
//! `<type>[<attachments>-][<namespace>,][<ack id>][<JSON payload>]`, types 0 CONNECT,
//! 1 DISCONNECT, 2 EVENT, 3 ACK, 4 CONNECT_ERROR, 5 BINARY_EVENT, 6 BINARY_ACK.
//! Encoders return complete Engine.IO text frames (with the leading `4`).

use serde_json::Value;

/// Socket.IO packet type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioKind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

/// One decoded Socket.IO packet.
#[derive(Debug, Clone, PartialEq)]
pub struct SioPacket {
    pub kind: SioKind,
    /// Namespace, `/` when the packet names none.
    pub nsp: String,
    /// Number of binary attachments that follow (binary packet types only).
    pub attachments: u32,
    /// Ack id: the sender wants an ACK packet with this id.
    pub id: Option<u64>,
    /// The JSON payload, already checked to have the shape its type requires.
    pub data: Option<Value>,
}

/// Most binary attachments one packet may announce (the reference parser's `maxAttachments`).
pub const MAX_ATTACHMENTS: u32 = 10;

/// Event names reserved by Socket.IO: an EVENT packet may not carry them.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Why a string is not a valid Socket.IO packet.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SioDecodeError {
    #[error("empty Socket.IO packet")]
    Empty,
    #[error("unknown Socket.IO packet type {0:?}")]
    UnknownType(char),
    #[error("bad attachment count")]
    BadAttachments,
    #[error("more than {MAX_ATTACHMENTS} binary attachments")]
    TooManyAttachments,
    #[error("ack id out of range")]
    BadAckId,
    #[error("payload is not valid JSON: {0}")]
    BadJson(String),
    #[error("invalid payload for a {0:?} packet")]
    InvalidPayload(SioKind),
}

/// Decodes the data of one Engine.IO message packet.
pub fn decode(input: &str) -> Result<SioPacket, SioDecodeError> {
    let bytes = input.as_bytes();
    let first = *bytes.first().ok_or(SioDecodeError::Empty)?;
    let kind = match first {
        b'0' => SioKind::Connect,
        b'1' => SioKind::Disconnect,
        b'2' => SioKind::Event,
        b'3' => SioKind::Ack,
        b'4' => SioKind::ConnectError,
        b'5' => SioKind::BinaryEvent,
        b'6' => SioKind::BinaryAck,
        _ => {
            let c = input.chars().next().unwrap_or('\0');
            return Err(SioDecodeError::UnknownType(c));
        }
    };
    // Every delimiter below is ASCII, so slicing at their positions stays on char boundaries.
    let mut rest = &input[1..];

    let mut attachments = 0;
    if matches!(kind, SioKind::BinaryEvent | SioKind::BinaryAck) {
        let dash = rest.find('-').ok_or(SioDecodeError::BadAttachments)?;
        attachments = rest[..dash]
            .parse::<u32>()
            .map_err(|_| SioDecodeError::BadAttachments)?;
        if attachments > MAX_ATTACHMENTS {
            return Err(SioDecodeError::TooManyAttachments);
        }
        rest = &rest[dash + 1..];
    }

    let mut nsp = "/";
    if rest.starts_with('/') {
        match rest.find(',') {
            Some(comma) => {
                nsp = &rest[..comma];
                rest = &rest[comma + 1..];
            }
            None => {
                nsp = rest;
                rest = "";
            }
        }
    }

    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = if digits > 0 {
        let id = rest[..digits]
            .parse::<u64>()
            .map_err(|_| SioDecodeError::BadAckId)?;
        rest = &rest[digits..];
        Some(id)
    } else {
        None
    };

    let data = if rest.is_empty() {
        None
    } else {
        Some(
            serde_json::from_str::<Value>(rest)
                .map_err(|e| SioDecodeError::BadJson(e.to_string()))?,
        )
    };

    let valid = match (kind, &data) {
        (SioKind::Connect, None | Some(Value::Object(_))) => true,
        (SioKind::Disconnect, None) => true,
        (SioKind::ConnectError, Some(Value::Object(_) | Value::String(_))) => true,
        (SioKind::Event | SioKind::BinaryEvent, Some(Value::Array(items))) => {
            matches!(items.first(), Some(Value::String(name)) if !RESERVED_EVENTS.contains(&name.as_str()))
        }
        (SioKind::Ack | SioKind::BinaryAck, Some(Value::Array(_))) => id.is_some(),
        _ => false,
    };
    if !valid {
        return Err(SioDecodeError::InvalidPayload(kind));
    }

    Ok(SioPacket {
        kind,
        nsp: nsp.to_owned(),
        attachments,
        id,
        data,
    })
}

/// `40{"sid":…,"pid":…}`: the namespace `/` accepted the CONNECT; `pid` is the session's
/// recovery secret (connection-state recovery), when it has one.
pub fn encode_connect(sid: &str, pid: Option<&str>) -> String {
    match pid {
        Some(pid) => format!(
            "40{{\"sid\":{},\"pid\":{}}}",
            serde_json::Value::from(sid),
            serde_json::Value::from(pid)
        ),
        None => format!("40{}", serde_json::json!({ "sid": sid })),
    }
}

/// `41`: the server ends the client's session on the namespace; socket.io-client does not
/// reconnect by itself ("io server disconnect").
pub fn encode_disconnect(nsp: &str) -> String {
    if nsp == "/" {
        "41".to_owned()
    } else {
        format!("41{nsp},")
    }
}

/// `44<nsp>,{"message":…}`: a CONNECT refused.
pub fn encode_connect_error(nsp: &str, message: &str) -> String {
    let body = serde_json::json!({ "message": message });
    if nsp == "/" {
        format!("44{body}")
    } else {
        format!("44{nsp},{body}")
    }
}

/// `41`: the server closes the namespace `/`.
pub const DISCONNECT: &str = "41";

/// `42["<name>",<payload>]` where `payload` is already-serialised JSON.
pub fn encode_event(name: &str, payload_json: &str) -> String {
    let mut out = String::with_capacity(name.len() + payload_json.len() + 8);
    out.push_str("42[");
    // A string always serialises.
    out.push_str(&serde_json::to_string(name).unwrap_or_default());
    out.push(',');
    out.push_str(payload_json);
    out.push(']');
    out
}

/// `42<id>["<name>",<payload>]`: an event that asks for an ack (client side).
pub fn encode_event_with_ack(id: u64, name: &str, payload_json: &str) -> String {
    let mut out = encode_event(name, payload_json);
    out.insert_str(2, &id.to_string());
    out
}

/// `43<id>[<payload>]` where `payload` is already-serialised JSON.
pub fn encode_ack(id: u64, payload_json: &str) -> String {
    format!("43{id}[{payload_json}]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn packet(kind: SioKind, nsp: &str, id: Option<u64>, data: Option<Value>) -> SioPacket {
        SioPacket {
            kind,
            nsp: nsp.into(),
            attachments: 0,
            id,
            data,
        }
    }

    #[test]
    fn decodes_connect() {
        assert_eq!(decode("0"), Ok(packet(SioKind::Connect, "/", None, None)));
        assert_eq!(
            decode(r#"0{"userId":"alice"}"#),
            Ok(packet(
                SioKind::Connect,
                "/",
                None,
                Some(json!({"userId":"alice"}))
            ))
        );
        assert_eq!(
            decode("0/admin,"),
            Ok(packet(SioKind::Connect, "/admin", None, None))
        );
        assert_eq!(
            decode("0/admin"),
            Ok(packet(SioKind::Connect, "/admin", None, None))
        );
    }

    #[test]
    fn decodes_disconnect() {
        assert_eq!(
            decode("1"),
            Ok(packet(SioKind::Disconnect, "/", None, None))
        );
    }

    #[test]
    fn decodes_event_with_and_without_ack_id() {
        assert_eq!(
            decode(r#"2["dialogue:join",{"roomId":"general"}]"#),
            Ok(packet(
                SioKind::Event,
                "/",
                None,
                Some(json!(["dialogue:join", {"roomId": "general"}]))
            ))
        );
        assert_eq!(
            decode(r#"212["x"]"#),
            Ok(packet(SioKind::Event, "/", Some(12), Some(json!(["x"]))))
        );
        assert_eq!(
            decode(r#"2/chat,7["x",1]"#),
            Ok(packet(
                SioKind::Event,
                "/chat",
                Some(7),
                Some(json!(["x", 1]))
            ))
        );
    }

    #[test]
    fn decodes_ack_and_connect_error() {
        assert_eq!(
            decode(r#"35[{"ok":true}]"#),
            Ok(packet(
                SioKind::Ack,
                "/",
                Some(5),
                Some(json!([{"ok": true}]))
            ))
        );
        assert_eq!(
            decode(r#"4{"message":"no"}"#),
            Ok(packet(
                SioKind::ConnectError,
                "/",
                None,
                Some(json!({"message":"no"}))
            ))
        );
    }

    #[test]
    fn decodes_binary_packets() {
        let p = decode(r#"51-["upload",{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!(p.kind, SioKind::BinaryEvent);
        assert_eq!(p.attachments, 1);
        let p = decode(r#"62-/x,9[{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!(
            (p.kind, p.attachments, p.nsp.as_str(), p.id),
            (SioKind::BinaryAck, 2, "/x", Some(9))
        );
    }

    #[test]
    fn refuses_malformed_input() {
        assert_eq!(decode(""), Err(SioDecodeError::Empty));
        assert_eq!(decode("9"), Err(SioDecodeError::UnknownType('9')));
        assert_eq!(decode("ü"), Err(SioDecodeError::UnknownType('ü')));
        assert!(matches!(decode("2[\"x\""), Err(SioDecodeError::BadJson(_))));
        assert_eq!(
            decode(r#"2{"not":"array"}"#),
            Err(SioDecodeError::InvalidPayload(SioKind::Event))
        );
        assert_eq!(
            decode("2[]"),
            Err(SioDecodeError::InvalidPayload(SioKind::Event))
        );
        assert_eq!(
            decode("2[1,2]"),
            Err(SioDecodeError::InvalidPayload(SioKind::Event))
        );
        assert_eq!(
            decode("2"),
            Err(SioDecodeError::InvalidPayload(SioKind::Event))
        );
        assert_eq!(
            decode("0[1]"),
            Err(SioDecodeError::InvalidPayload(SioKind::Connect))
        );
        assert_eq!(
            decode("1{}"),
            Err(SioDecodeError::InvalidPayload(SioKind::Disconnect))
        );
        assert_eq!(
            decode(r#"3["no id"]"#),
            Err(SioDecodeError::InvalidPayload(SioKind::Ack))
        );
        assert_eq!(
            decode(r#"2["connect"]"#),
            Err(SioDecodeError::InvalidPayload(SioKind::Event))
        );
        assert_eq!(
            decode(r#"511-["x"]"#),
            Err(SioDecodeError::TooManyAttachments)
        );
        assert_eq!(decode(r#"510-["x"]"#).map(|p| p.attachments), Ok(10));
        assert_eq!(decode("5[\"x\"]"), Err(SioDecodeError::BadAttachments));
        assert_eq!(decode("5a-[\"x\"]"), Err(SioDecodeError::BadAttachments));
        assert_eq!(
            decode("299999999999999999999999[\"x\"]"),
            Err(SioDecodeError::BadAckId)
        );
    }

    #[test]
    fn encodes_server_packets() {
        assert_eq!(encode_connect("s1", None), r#"40{"sid":"s1"}"#);
        assert_eq!(
            encode_connect("s1", Some("p")),
            r#"40{"sid":"s1","pid":"p"}"#
        );
        assert_eq!(
            encode_connect_error("/admin", "Invalid namespace"),
            r#"44/admin,{"message":"Invalid namespace"}"#
        );
        assert_eq!(
            encode_event("dialogue:left", r#"{"roomId":"a"}"#),
            r#"42["dialogue:left",{"roomId":"a"}]"#
        );
        assert_eq!(encode_ack(3, r#"{"ok":true}"#), r#"433[{"ok":true}]"#);
        assert_eq!(encode_event_with_ack(12, "e", "1"), r#"4212["e",1]"#);
    }

    #[test]
    fn round_trips_through_encoders() {
        let frame = encode_event("n\"ame", "[1,{\"a\":null}]");
        let p = decode(&frame[1..]).unwrap();
        assert_eq!(p.data, Some(json!(["n\"ame", [1, {"a": null}]])));
    }
}
