//! The WebSocket handshake outside the HTTP dispatcher (`src/http/upgrade.rs`), over raw TCP:
//! what a client sends with its handshake is read, browsers' origins follow `cors.origins`,
//! requests that are not a Socket.IO WebSocket get their HTTP answer, and SIGTERM closes the
//! sessions that run on the room threads.

mod common;

use common::TestServer;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
server: { port: 0 }
cors: { origins: ["http://good.example"] }
events:
  message:
    schema: { type: object }
rooms:
  general: { name: General, events: [message] }
"#;

/// A raw client: the request written at once (with `extra` bytes right after it).
fn handshake(server: &TestServer, path: &str, headers: &str, extra: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(server.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut bytes = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n").into_bytes();
    bytes.extend_from_slice(extra);
    s.write_all(&bytes).expect("write");
    s
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
const WS_PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// Reads the HTTP head (up to the blank line); returns it and the bytes read past it.
fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return (head, buf[end + 4..].to_vec());
        }
        let n = s.read(&mut chunk).expect("read the head");
        assert!(
            n > 0,
            "closed before the head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A masked client text frame.
fn text_frame(text: &str) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    assert!(text.len() < 126);
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads server frames (unmasked, short) until `want` of them arrived: (opcode, payload).
fn read_frames(s: &mut TcpStream, mut buf: Vec<u8>, want: usize) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut chunk = [0u8; 4096];
    while frames.len() < want {
        if buf.len() >= 2 {
            let (len, start) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                126 => (usize::MAX, 0),
                n => (n as usize, 2),
            };
            if len != usize::MAX && buf.len() >= start + len {
                frames.push((buf[0] & 0x0f, buf[start..start + len].to_vec()));
                buf.drain(..start + len);
                continue;
            }
        }
        let n = s.read(&mut chunk).expect("read frames");
        assert!(n > 0, "closed after {} frames", frames.len());
        buf.extend_from_slice(&chunk[..n]);
    }
    frames
}

#[test]
fn a_packet_sent_with_the_handshake_is_read() {
    let server = TestServer::start(CONFIG);
    // The Socket.IO CONNECT in the same write as the HTTP request, before any answer.
    let mut s = handshake(
        &server,
        WS_PATH,
        UPGRADE,
        &text_frame(r#"40{"userId":"ann"}"#),
    );
    let (head, rest) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "RFC 6455's example key: {head}"
    );
    let frames = read_frames(&mut s, rest, 2);
    assert_eq!(frames[0].0, 1, "text");
    assert!(frames[0].1.starts_with(b"0{\"sid\""), "the open packet");
    assert!(
        frames[1].1.starts_with(b"40{\"sid\""),
        "CONNECT answered: {frames:?}"
    );
}

#[test]
fn browsers_origins_follow_cors_origins() {
    let server = TestServer::start(CONFIG);
    let mut bad = handshake(
        &server,
        WS_PATH,
        &format!("{UPGRADE}Origin: http://evil.example\r\n"),
        &[],
    );
    let (head, body) = read_head(&mut bad);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let mut body = body;
    let _ = bad.read_to_end(&mut body);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
    assert!(
        json["message"].as_str().unwrap().contains("cors.origins"),
        "{json}"
    );

    for origin in ["Origin: http://good.example\r\n", ""] {
        let mut ok = handshake(&server, WS_PATH, &format!("{UPGRADE}{origin}"), &[]);
        let (head, _) = read_head(&mut ok);
        assert!(head.starts_with("HTTP/1.1 101"), "{origin:?}: {head}");
    }
}

#[test]
fn requests_that_are_not_a_socket_io_websocket_get_their_http_answer() {
    let server = TestServer::start(CONFIG);
    let cases = [
        ("/elsewhere", UPGRADE, "404", "NOT_FOUND"),
        // No Upgrade header: the HTTP route answers as the reference server does.
        (WS_PATH, "", "400", "Bad request"),
        (
            "/socket.io/?EIO=3&transport=websocket",
            UPGRADE,
            "400",
            "Unsupported protocol version",
        ),
        (
            "/socket.io/?EIO=4&transport=websocket&sid=nope",
            UPGRADE,
            "400",
            "Session ID unknown",
        ),
    ];
    for (path, headers, status, words) in cases {
        let mut s = handshake(&server, path, headers, &[]);
        let (head, mut body) = read_head(&mut s);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {head}"
        );
        // The answer has a length: read exactly the body.
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("content-length");
        let mut chunk = [0u8; 1024];
        while body.len() < len {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0);
            body.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains(words), "{path}: {body}");
    }
    let (status, _) = server.http_get("/healthz");
    assert_eq!(status, 200, "the server goes on");
}

#[test]
fn sigterm_closes_websocket_sessions_and_the_server_exits() {
    let mut server = TestServer::start(CONFIG);
    let mut clients: Vec<(TcpStream, Vec<u8>)> = (0..3)
        .map(|i| {
            let connect = text_frame(&format!(r#"40{{"userId":"u{i}"}}"#));
            let mut s = handshake(&server, WS_PATH, UPGRADE, &connect);
            let (head, rest) = read_head(&mut s);
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            let _ = read_frames(&mut s, rest, 2);
            (s, Vec::new())
        })
        .collect();
    let started = Instant::now();
    let (code, _) = server.terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0), "a clean stop");
    for (s, buf) in &mut clients {
        let _ = s.read_to_end(buf);
        // A close frame "going away" (1001), then EOF.
        let close = buf
            .windows(4)
            .position(|w| w[0] == 0x88 && w[2..4] == [0x03, 0xe9]);
        assert!(close.is_some(), "no close frame 1001 in {buf:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}
