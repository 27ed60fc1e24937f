//! The WebSocket transport: RFC 6455 framing over the HTTP connection, with the connection
//! actor on the same worker thread.
//!
//! Outbound frames are encoded straight into a shared queue ([`WsQueue`]) that the response body
//! drains whole, so a burst of events costs one wake-up and one `send(2)`; the bytes waiting are
//! bounded and a client that stops reading is disconnected instead of growing them.

use actix_codec::Decoder;
use actix_http::ws::{CloseCode, CloseReason, Codec, Frame, Item, OpCode, Parser, ProtocolError};
use actix_web::web::Payload;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_core::Stream;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A complete inbound message, after reassembling fragments.
#[derive(Debug)]
pub enum WsMessage {
    Text(ByteString),
    Binary(Bytes),
    Ping(Bytes),
    Close,
}

/// Why the inbound side failed: the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum WsInboundError {
    #[error("WebSocket protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("a text message is not valid UTF-8")]
    NotUtf8,
    #[error("message larger than maxPayload ({0} bytes)")]
    TooLarge(usize),
    #[error("unexpected continuation frame")]
    BadContinuation,
    #[error("reading the request body failed: {0}")]
    Read(String),
}

/// Decodes frames from the request body, reassembling fragmented messages up to `max_size`.
pub struct WsInbound {
    payload: Payload,
    buf: BytesMut,
    codec: Codec,
    max_size: usize,
    /// A fragmented message being reassembled: (is text, bytes so far).
    partial: Option<(bool, BytesMut)>,
    done: bool,
}

impl WsInbound {
    pub fn new(payload: Payload, max_size: usize) -> Self {
        WsInbound {
            payload,
            buf: BytesMut::new(),
            codec: Codec::new().max_size(max_size),
            max_size,
            partial: None,
            done: false,
        }
    }

    fn text(bytes: Bytes) -> Result<WsMessage, WsInboundError> {
        ByteString::try_from(bytes)
            .map(WsMessage::Text)
            .map_err(|_| WsInboundError::NotUtf8)
    }

    /// Turns one decoded frame into a complete message, if it completes one.
    fn on_frame(&mut self, frame: Frame) -> Result<Option<WsMessage>, WsInboundError> {
        Ok(match frame {
            Frame::Text(bytes) => Some(Self::text(bytes)?),
            Frame::Binary(bytes) => Some(WsMessage::Binary(bytes)),
            Frame::Ping(bytes) => Some(WsMessage::Ping(bytes)),
            Frame::Pong(_) => None,
            Frame::Close(_) => Some(WsMessage::Close),
            Frame::Continuation(item) => match (item, self.partial.take()) {
                (Item::FirstText(b), None) => {
                    self.partial = Some((true, BytesMut::from(&b[..])));
                    None
                }
                (Item::FirstBinary(b), None) => {
                    self.partial = Some((false, BytesMut::from(&b[..])));
                    None
                }
                (Item::Continue(b), Some((is_text, mut acc))) => {
                    self.append(&mut acc, &b)?;
                    self.partial = Some((is_text, acc));
                    None
                }
                (Item::Last(b), Some((is_text, mut acc))) => {
                    self.append(&mut acc, &b)?;
                    let bytes = acc.freeze();
                    Some(if is_text {
                        Self::text(bytes)?
                    } else {
                        WsMessage::Binary(bytes)
                    })
                }
                _ => return Err(WsInboundError::BadContinuation),
            },
        })
    }

    fn append(&self, acc: &mut BytesMut, more: &[u8]) -> Result<(), WsInboundError> {
        if acc.len() + more.len() > self.max_size {
            return Err(WsInboundError::TooLarge(self.max_size));
        }
        acc.extend_from_slice(more);
        Ok(())
    }
}

impl Stream for WsInbound {
    type Item = Result<WsMessage, WsInboundError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            // Decode everything already buffered before reading more.
            match this.codec.decode(&mut this.buf) {
                Ok(Some(frame)) => match this.on_frame(frame) {
                    Ok(Some(msg)) => return Poll::Ready(Some(Ok(msg))),
                    Ok(None) => continue,
                    Err(e) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                Ok(None) => {}
                Err(ProtocolError::Overflow) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(WsInboundError::TooLarge(this.max_size))));
                }
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            match Pin::new(&mut this.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.buf.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(WsInboundError::Read(e.to_string()))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if this.buf.is_empty() && this.buf.capacity() > 0 {
                        // Give an idle connection's read buffer back.
                        this.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The client does not read fast enough: its queue passed the bound.
#[derive(Debug)]
pub struct SlowClient;

/// The bytes waiting to be written to one WebSocket, already framed. Shared by the connection
/// actor (through [`WsSink`]), by rooms that fan out straight into it (through
/// [`crate::actors::outbox::Outbox`]) and by the response body that drains it, whichever
/// threads they run on: a burst of events becomes one buffer, one wake-up and one `send(2)`.
pub struct WsQueue {
    state: Mutex<QueueState>,
    /// Most bytes waiting before the client counts as not reading.
    limit: usize,
}

#[derive(Default)]
struct QueueState {
    /// Encoded frames not yet taken by the writer.
    buf: BytesMut,
    /// The writer waits for bytes.
    waker: Option<Waker>,
    /// No more frames are accepted (closing, over the bound, or the socket is gone).
    refusing: bool,
    /// A close frame to send after `buf`, then the body ends.
    close: Option<CloseReason>,
    /// The close frame went out, or the socket is gone.
    ended: bool,
    /// Since when bytes have been waiting without the writer taking any (the socket does
    /// not accept more); `None` while the writer keeps up.
    waiting_since: Option<Instant>,
}

impl WsQueue {
    fn new(limit: usize) -> Self {
        WsQueue {
            state: Mutex::new(QueueState::default()),
            limit,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the buffer half-written in a way that
        // matters more than losing the connection, so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `len` bytes written by `encode`; the first push over the bound fails (and
    /// every later one is dropped: the connection is being closed).
    fn push(&self, len: usize, encode: impl FnOnce(&mut BytesMut)) -> Result<(), SlowClient> {
        let waker = {
            let mut s = self.state();
            if s.refusing {
                return Ok(());
            }
            if s.buf.len() + len > self.limit {
                s.refusing = true;
                return Err(SlowClient);
            }
            if s.buf.is_empty() {
                s.waiting_since = Some(Instant::now());
            }
            encode(&mut s.buf);
            s.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Queues a text message (a complete Engine.IO packet).
    pub fn text(&self, text: &str) -> Result<(), SlowClient> {
        self.push(text.len() + 10, |buf| {
            Parser::write_message(buf, text, OpCode::Text, true, false)
        })
    }

    /// Queues a text message given in parts (one copy, no joined string in between).
    pub fn text_parts(&self, parts: &[&str]) -> Result<(), SlowClient> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.push(len + 10, |buf| {
            // A server frame: FIN + text opcode, no mask, then the payload length.
            buf.extend_from_slice(&[0x81]);
            match len {
                0..=125 => buf.extend_from_slice(&[len as u8]),
                126..=0xFFFF => {
                    buf.extend_from_slice(&[126]);
                    buf.extend_from_slice(&(len as u16).to_be_bytes());
                }
                _ => {
                    buf.extend_from_slice(&[127]);
                    buf.extend_from_slice(&(len as u64).to_be_bytes());
                }
            }
            for part in parts {
                buf.extend_from_slice(part.as_bytes());
            }
        })
    }

    /// Queues a frame encoded by [`encode_text`] (shared by every member of a fan-out).
    pub fn encoded(&self, frame: &[u8]) -> Result<(), SlowClient> {
        self.push(frame.len(), |buf| buf.extend_from_slice(frame))
    }

    fn pong(&self, data: &[u8]) -> Result<(), SlowClient> {
        self.push(data.len() + 10, |buf| {
            Parser::write_message(buf, data, OpCode::Pong, true, false)
        })
    }

    /// How long bytes have been waiting with none taken by the socket (a reader that
    /// stalled); `None` when nothing waits.
    pub fn stalled_for(&self) -> Option<Duration> {
        let s = self.state();
        s.waiting_since
            .filter(|_| !s.buf.is_empty() && !s.ended)
            .map(|since| since.elapsed())
    }

    /// Sends a close frame after what is queued, then ends the response.
    fn close(&self, code: CloseCode, description: &str) {
        self.close_frame(code, description, false);
    }

    /// Drops what is queued and sends the close frame: for a client that is not reading,
    /// whose bytes would only be held on its behalf.
    fn abort(&self, code: CloseCode, description: &str) {
        self.close_frame(code, description, true);
    }

    fn close_frame(&self, code: CloseCode, description: &str, discard: bool) {
        let waker = {
            let mut s = self.state();
            if s.close.is_some() || s.ended {
                return;
            }
            if discard {
                s.buf = BytesMut::new();
            }
            s.refusing = true;
            s.close = Some(CloseReason {
                code,
                description: Some(description.to_owned()),
            });
            s.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Largest chunk handed to the HTTP writer at once.
const MAX_CHUNK: usize = 64 * 1024;

/// A server-to-client text frame (unmasked), encoded once for any number of recipients.
pub fn encode_text(text: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(text.len() + 10);
    Parser::write_message(&mut buf, text, OpCode::Text, true, false);
    buf.freeze()
}

/// The sending half of a WebSocket connection, held by the connection actor.
pub struct WsSink {
    queue: Arc<WsQueue>,
}

impl WsSink {
    /// A sink and the response body that drains it; `limit` bounds the bytes waiting.
    pub fn new(limit: usize) -> (WsSink, WsOutboxBody) {
        let queue = Arc::new(WsQueue::new(limit));
        (
            WsSink {
                queue: queue.clone(),
            },
            WsOutboxBody { queue, done: false },
        )
    }

    /// The shared queue, for rooms to fan out into directly.
    pub fn queue(&self) -> Arc<WsQueue> {
        self.queue.clone()
    }

    /// Queues a text frame.
    pub fn text(&mut self, frame: &str) -> Result<(), SlowClient> {
        self.queue.text(frame)
    }

    /// Answers a WebSocket ping.
    pub fn pong(&mut self, data: Bytes) -> Result<(), SlowClient> {
        self.queue.pong(&data)
    }

    /// Sends a close frame after what is queued and ends the response.
    pub fn close(&mut self, code: CloseCode, description: &str) {
        self.queue.close(code, description);
    }

    /// Drops what is queued, sends a close frame and ends the response.
    pub fn abort(&mut self, code: CloseCode, description: &str) {
        self.queue.abort(code, description);
    }
}

/// The response body of a WebSocket connection: whatever is queued, as one chunk per poll.
pub struct WsOutboxBody {
    queue: Arc<WsQueue>,
    done: bool,
}

impl Stream for WsOutboxBody {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut s = this.queue.state();
        if let Some(reason) = s.close.take() {
            Parser::write_close(&mut s.buf, Some(reason), false);
            s.ended = true;
        }
        if !s.buf.is_empty() {
            // Bounded chunks: the HTTP writer asks for the next only once the socket took
            // most of the last, so bytes left here are bytes the socket has not taken yet.
            let n = s.buf.len().min(MAX_CHUNK);
            let chunk = s.buf.split_to(n).freeze();
            s.waiting_since = (!s.buf.is_empty()).then(Instant::now);
            return Poll::Ready(Some(Ok(chunk)));
        }
        if s.ended {
            this.done = true;
            return Poll::Ready(None);
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for WsOutboxBody {
    fn drop(&mut self) {
        // The socket is gone: frames pushed from now on are dropped, and their memory freed.
        let mut s = self.queue.state();
        s.refusing = true;
        s.ended = true;
        s.buf = BytesMut::new();
        s.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls the body once, as the HTTP dispatcher would.
    fn poll(body: &mut WsOutboxBody) -> Poll<Option<Bytes>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(body)
            .poll_next(&mut cx)
            .map(|item| item.map(|r| r.expect("body chunk")))
    }

    #[test]
    fn frames_pushed_meanwhile_leave_in_one_chunk() {
        let (mut sink, mut body) = WsSink::new(1 << 20);
        assert!(poll(&mut body).is_pending());
        sink.text("42[\"a\"]").unwrap();
        let shared = encode_text("42[\"b\"]");
        sink.queue().encoded(&shared).unwrap();
        let mut expected = BytesMut::new();
        expected.extend_from_slice(&encode_text("42[\"a\"]"));
        expected.extend_from_slice(&shared);
        assert_eq!(poll(&mut body), Poll::Ready(Some(expected.freeze())));
        assert!(poll(&mut body).is_pending());
    }

    #[test]
    fn a_message_in_parts_is_the_same_frame_at_every_length_class() {
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let (sink, mut body) = WsSink::new(1 << 20);
            let text = "x".repeat(len);
            let (a, b) = text.split_at(len / 3);
            sink.queue().text_parts(&[a, b, "!"]).unwrap();
            let whole = format!("{text}!");
            let mut sent = BytesMut::new();
            while let Poll::Ready(Some(chunk)) = poll(&mut body) {
                sent.extend_from_slice(&chunk);
            }
            assert_eq!(sent.freeze(), encode_text(&whole), "{len}");
        }
    }

    #[test]
    fn a_client_over_the_bound_is_reported_once_and_not_buffered_further() {
        let (mut sink, mut body) = WsSink::new(100);
        sink.text(&"x".repeat(50)).unwrap();
        assert!(sink.text(&"y".repeat(60)).is_err(), "over the bound");
        assert!(
            sink.text("z").is_ok(),
            "reported once; later frames dropped"
        );
        let Poll::Ready(Some(chunk)) = poll(&mut body) else {
            panic!("the frame before the bound is still sent");
        };
        assert_eq!(chunk, encode_text(&"x".repeat(50)));
        sink.close(CloseCode::Policy, "outbound queue full");
        let Poll::Ready(Some(close)) = poll(&mut body) else {
            panic!("a close frame");
        };
        assert_eq!(close[0], 0x88, "FIN + close opcode");
        assert_eq!(poll(&mut body), Poll::Ready(None));
    }

    #[test]
    fn close_follows_what_is_queued_and_ends_the_body() {
        let (mut sink, mut body) = WsSink::new(1 << 20);
        sink.text("42[\"last\"]").unwrap();
        sink.close(CloseCode::Normal, "bye");
        sink.text("42[\"too late\"]").unwrap();
        let Poll::Ready(Some(chunk)) = poll(&mut body) else {
            panic!("data and close");
        };
        let data = encode_text("42[\"last\"]");
        assert_eq!(&chunk[..data.len()], &data[..]);
        assert_eq!(chunk[data.len()], 0x88);
        assert_eq!(poll(&mut body), Poll::Ready(None));
    }

    #[test]
    fn a_queue_the_writer_does_not_take_counts_as_stalled() {
        let (mut sink, mut body) = WsSink::new(1 << 20);
        let queue = sink.queue();
        assert_eq!(queue.stalled_for(), None, "nothing waits");
        sink.text("42[\"a\"]").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        sink.text("42[\"b\"]").unwrap();
        let stalled = queue.stalled_for().expect("bytes wait");
        assert!(
            stalled >= Duration::from_millis(20),
            "since the first byte: {stalled:?}"
        );
        assert!(poll(&mut body).is_ready());
        assert_eq!(queue.stalled_for(), None, "the writer took everything");
    }

    #[test]
    fn output_leaves_in_bounded_chunks_and_bytes_left_behind_count_as_waiting() {
        let (mut sink, mut body) = WsSink::new(1 << 20);
        let queue = sink.queue();
        let big = "x".repeat(MAX_CHUNK + 100);
        sink.text(&big).unwrap();
        let Poll::Ready(Some(first)) = poll(&mut body) else {
            panic!("a chunk");
        };
        assert_eq!(first.len(), MAX_CHUNK);
        assert!(
            queue.stalled_for().is_some(),
            "the rest waits for the socket"
        );
        let Poll::Ready(Some(rest)) = poll(&mut body) else {
            panic!("the rest");
        };
        assert_eq!(first.len() + rest.len(), encode_text(&big).len());
        assert_eq!(queue.stalled_for(), None);
    }

    #[test]
    fn an_abort_drops_what_is_queued_and_closes() {
        let (mut sink, mut body) = WsSink::new(1 << 20);
        sink.text(&"x".repeat(100_000)).unwrap();
        sink.abort(CloseCode::Policy, "not reading");
        let Poll::Ready(Some(close)) = poll(&mut body) else {
            panic!("the close frame");
        };
        assert_eq!(close[0], 0x88, "only the close frame is left");
        assert!(close.len() < 64);
        assert_eq!(poll(&mut body), Poll::Ready(None));
    }

    #[test]
    fn once_the_socket_is_gone_pushes_are_dropped() {
        let (mut sink, body) = WsSink::new(1 << 20);
        let queue = sink.queue();
        drop(body);
        for _ in 0..1000 {
            sink.text("42[\"nobody\"]").unwrap();
        }
        assert!(queue.state().buf.is_empty());
    }
}
