//! Raw bytes as a WebSocket request body: frames decoded and reassembled by WsInbound with a
//! 256-byte maxPayload.
#![no_main]

use actix_web::FromRequest;
use bytes::Bytes;
use dialogue::http::websocket::{WsInbound, WsMessage};
use futures_core::Stream;
use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

const MAX: usize = 256;

fuzz_target!(|data: &[u8]| {
    let mut cx = Context::from_waker(Waker::noop());
    let (req, mut payload) = actix_web::test::TestRequest::default()
        .set_payload(Bytes::copy_from_slice(data))
        .to_http_parts();
    let Poll::Ready(Ok(payload)) =
        pin!(actix_web::web::Payload::from_request(&req, &mut payload)).poll(&mut cx)
    else {
        panic!("a payload is extracted at once");
    };
    let mut inbound = WsInbound::new(payload, MAX);
    for _ in 0..=data.len() + 1 {
        match Pin::new(&mut inbound).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(WsMessage::Text(text)))) => assert!(text.len() <= MAX),
            Poll::Ready(Some(Ok(WsMessage::Binary(b) | WsMessage::Ping(b)))) => {
                assert!(b.len() <= MAX)
            }
            Poll::Ready(Some(Ok(WsMessage::Close))) => {}
            Poll::Ready(Some(Err(_)) | None) | Poll::Pending => break,
        }
    }
});
