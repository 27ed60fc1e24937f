//! Engine.IO protocol v4 packets (text encoding, one packet per WebSocket frame).
//!
//! `<type digit><data>`: 0 open, 1 close, 2 ping, 3 pong, 4 message, 5 upgrade, 6 noop.

use serde::Serialize;

/// One decoded Engine.IO packet; `data` borrows from the frame.
#[derive(Debug, PartialEq, Eq)]
pub enum EioPacket<'a> {
    Open(&'a str),
    Close,
    Ping(&'a str),
    Pong(&'a str),
    Message(&'a str),
    Upgrade,
    Noop,
}

/// Why a frame is not an Engine.IO packet.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EioDecodeError {
    #[error("empty Engine.IO packet")]
    Empty,
    #[error("unknown Engine.IO packet type {0:?}")]
    UnknownType(char),
}

/// Decodes one text packet.
pub fn decode(frame: &str) -> Result<EioPacket<'_>, EioDecodeError> {
    let mut chars = frame.chars();
    let kind = chars.next().ok_or(EioDecodeError::Empty)?;
    let data = chars.as_str();
    Ok(match kind {
        '0' => EioPacket::Open(data),
        '1' => EioPacket::Close,
        '2' => EioPacket::Ping(data),
        '3' => EioPacket::Pong(data),
        '4' => EioPacket::Message(data),
        '5' => EioPacket::Upgrade,
        '6' => EioPacket::Noop,
        other => return Err(EioDecodeError::UnknownType(other)),
    })
}

/// The handshake data of the `open` packet.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake<'a> {
    pub sid: &'a str,
    pub upgrades: &'a [&'a str],
    pub ping_interval: u64,
    pub ping_timeout: u64,
    pub max_payload: u64,
}

/// Encodes the `open` packet: `0{"sid":…}`.
pub fn encode_open(handshake: &Handshake<'_>) -> String {
    let mut out = String::from("0");
    // Serialising a struct of plain fields cannot fail.
    out.push_str(&serde_json::to_string(handshake).unwrap_or_default());
    out
}

/// The server's heartbeat probe.
pub const PING: &str = "2";
/// The reply to a client's `2probe` during an upgrade.
pub const PONG_PROBE: &str = "3probe";
/// The close packet.
pub const CLOSE: &str = "1";
/// The noop packet (ends a pending poll during an upgrade).
pub const NOOP: &str = "6";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_packet_type() {
        assert_eq!(decode("0{}"), Ok(EioPacket::Open("{}")));
        assert_eq!(decode("1"), Ok(EioPacket::Close));
        assert_eq!(decode("2"), Ok(EioPacket::Ping("")));
        assert_eq!(decode("2probe"), Ok(EioPacket::Ping("probe")));
        assert_eq!(decode("3"), Ok(EioPacket::Pong("")));
        assert_eq!(decode("40"), Ok(EioPacket::Message("0")));
        assert_eq!(decode("5"), Ok(EioPacket::Upgrade));
        assert_eq!(decode("6"), Ok(EioPacket::Noop));
    }

    #[test]
    fn refuses_malformed_packets() {
        assert_eq!(decode(""), Err(EioDecodeError::Empty));
        assert_eq!(decode("7"), Err(EioDecodeError::UnknownType('7')));
        assert_eq!(decode("x42"), Err(EioDecodeError::UnknownType('x')));
        assert_eq!(decode("é"), Err(EioDecodeError::UnknownType('é')));
    }

    #[test]
    fn encodes_open_packet() {
        let open = encode_open(&Handshake {
            sid: "abc",
            upgrades: &[],
            ping_interval: 25000,
            ping_timeout: 20000,
            max_payload: 1000000,
        });
        assert_eq!(
            open,
            r#"0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
    }
}
