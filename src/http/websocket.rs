//! The WebSocket transport: RFC 6455 framing straight on the TCP socket, which the HTTP
//! layer gave up after the handshake ([`crate::http::upgrade`]).
//!
//! No buffer lives longer than the bytes it holds: the reader ([`WsInbound`]) takes a buffer
//! only when the socket is readable and gives it back once every frame in it is decoded; the
//! writer ([`write_out`]) sends whatever the connection's queue ([`WsQueue`]) holds with one
//! `send(2)` and leaves the queue without memory. Outbound frames are encoded straight into
//! that queue by the connection actor and by the rooms that fan out to it, so a burst of
//! events costs one wake-up and one `send(2)`; the bytes waiting are bounded and a client that
//! stops reading is disconnected instead of growing them.
//!
//! A frame for a connection that is quiet (nothing queued, nothing being written, no frame in
//! the last [`DIRECT_GAP`]) skips the queue: whoever pushes it writes it to the socket at once,
//! on its own thread, and the writer task is woken only for what the socket did not take. The
//! common case of a chat service, a few events a second per connection, then costs no task
//! wake-up and no turn of the run queue; a connection that receives faster has its frames
//! gathered by the writer, one `send(2)` per burst, as before. A room handling a batch of
//! events holds a [`Cork`] meanwhile, so that each quiet connection gets the batch's frames in
//! one write when the cork goes.

use actix_codec::Decoder;
use actix_http::ws::{CloseCode, CloseReason, Codec, Frame, Item, OpCode, Parser, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_core::Stream;
use std::io::ErrorKind;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

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
    #[error("reading the socket failed: {0}")]
    Read(String),
}

/// Bytes asked of the kernel per read; a larger message takes several.
const READ_CHUNK: usize = 4096;

/// Decodes frames read from the socket, reassembling fragmented messages up to `max_size`.
pub struct WsInbound {
    /// `None`: only the bytes given at the start, then the end.
    socket: Option<Arc<TcpStream>>,
    /// Bytes read and not yet decoded; no memory while the connection is idle.
    buf: BytesMut,
    codec: Codec,
    max_size: usize,
    /// A fragmented message being reassembled: (is text, bytes so far).
    partial: Option<(bool, BytesMut)>,
    done: bool,
}

impl WsInbound {
    /// Reads `socket`; `early` holds what the client sent right after its handshake request.
    pub fn new(socket: Arc<TcpStream>, early: &[u8], max_size: usize) -> Self {
        WsInbound {
            socket: Some(socket),
            ..Self::from_bytes(early, max_size)
        }
    }

    /// Decodes `bytes` as if read from a socket that then closed (tests and fuzzing).
    pub fn from_bytes(bytes: &[u8], max_size: usize) -> Self {
        WsInbound {
            socket: None,
            buf: BytesMut::from(bytes),
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
                    Err(e) => return this.fail(e),
                },
                Ok(None) => {}
                Err(ProtocolError::Overflow) => {
                    return this.fail(WsInboundError::TooLarge(this.max_size))
                }
                Err(e) => return this.fail(e.into()),
            }
            let Some(socket) = &this.socket else {
                this.done = true;
                return Poll::Ready(None);
            };
            match socket.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return this.fail(WsInboundError::Read(e.to_string())),
                Poll::Pending => {
                    if this.buf.is_empty() && this.buf.capacity() > 0 {
                        // Give an idle connection's read buffer back.
                        this.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
            }
            if this.buf.capacity() - this.buf.len() < READ_CHUNK / 4 {
                this.buf.reserve(READ_CHUNK);
            }
            match read_some(socket, &mut this.buf) {
                Ok(0) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Ok(_) => {}
                // A spurious readiness, now cleared: the next poll waits.
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return this.fail(WsInboundError::Read(e.to_string())),
            }
        }
    }
}

/// Reads what the socket holds into `buf`'s spare room; `Ok(0)` is the end of the stream.
///
/// A read that leaves room in the buffer emptied the socket's receive queue, so it also clears
/// the socket's read readiness (as tokio's own `poll_read` does): the next poll waits for more
/// data instead of making a `recv` that finds none. Data that arrives meanwhile is a new
/// readiness event, which the clearing leaves alone.
fn read_some(socket: &TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let room = spare.len();
    let mut got = 0;
    let read = socket.try_io(tokio::io::Interest::READABLE, || {
        got = socket2::SockRef::from(socket).recv(spare)?;
        if got > 0 && got < room {
            // Reported as "would block" only for tokio to clear the readiness.
            Err(ErrorKind::WouldBlock.into())
        } else {
            Ok(got)
        }
    });
    // SAFETY: `recv` initialized the first `got` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + got) };
    match read {
        Err(e) if e.kind() == ErrorKind::WouldBlock && got > 0 => Ok(got),
        read => read,
    }
}

impl WsInbound {
    fn fail(&mut self, e: WsInboundError) -> Poll<Option<Result<WsMessage, WsInboundError>>> {
        self.done = true;
        Poll::Ready(Some(Err(e)))
    }
}

/// The client does not read fast enough: its queue passed the bound.
#[derive(Debug)]
pub struct SlowClient;

/// The bytes waiting to be written to one WebSocket, already framed. Shared by the connection
/// actor (through [`WsSink`]), by rooms that fan out straight into it (through
/// [`crate::actors::outbox::Outbox`]) and by the writer task that drains it, whichever
/// threads they run on: a burst of events becomes one buffer, one wake-up and one `send(2)`;
/// a frame for a quiet connection is written at once by whoever pushes it.
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
    /// The socket, while its writer runs: a frame for a quiet connection is written to it
    /// directly.
    socket: Option<Arc<TcpStream>>,
    /// The writer holds a chunk it has not finished writing: frames must queue behind it.
    writing: bool,
    /// When the last frame was pushed.
    last_push: Option<Instant>,
    /// Frames for a quiet connection gather in `buf` until the thread's [`Cork`] goes.
    corked: bool,
}

impl QueueState {
    /// Writes `buf` to the socket now, unless the writer holds a chunk or a close is pending;
    /// true when the socket took all of it. The rest (all of it when the socket would block,
    /// or failed: the writer then finds out and ends) stays for the writer, waiting from now.
    fn write_now(&mut self) -> bool {
        let Some(socket) = self
            .socket
            .as_ref()
            .filter(|_| !self.writing && self.close.is_none())
        else {
            return false;
        };
        let n = socket.try_write(&self.buf).unwrap_or(0);
        if n == self.buf.len() {
            self.buf = BytesMut::new();
            return true;
        }
        let _ = self.buf.split_to(n);
        self.waiting_since = Some(Instant::now());
        false
    }
}

/// A frame is written directly only if the connection's previous one was pushed at least this
/// long before: faster traffic is gathered by the writer, one `send(2)` per burst.
pub const DIRECT_GAP: Duration = Duration::from_millis(1);

thread_local! {
    /// While this thread holds a [`Cork`]: the queues whose frames wait for it to go.
    static CORKED: std::cell::RefCell<Option<Vec<Arc<WsQueue>>>> =
        const { std::cell::RefCell::new(None) };
}

/// While held, frames this thread pushes for quiet connections gather in their queues; when
/// the outermost cork goes, each such connection gets them in one write. Held by a room while
/// it hands out a batch of events.
#[must_use]
pub struct Cork {
    outermost: bool,
}

/// Corks this thread's direct writes until the guard is dropped.
pub fn cork() -> Cork {
    CORKED.with_borrow_mut(|corked| {
        let outermost = corked.is_none();
        if outermost {
            *corked = Some(Vec::new());
        }
        Cork { outermost }
    })
}

impl Drop for Cork {
    fn drop(&mut self) {
        if self.outermost {
            for queue in CORKED.with_borrow_mut(Option::take).unwrap_or_default() {
                queue.uncork();
            }
        }
    }
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

    /// Appends `len` bytes written by `encode`, or writes them to the socket at once when the
    /// connection is quiet (see the module's doc); the first push over the bound fails (and
    /// every later one is dropped: the connection is being closed).
    fn push(
        self: &Arc<Self>,
        len: usize,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<(), SlowClient> {
        let waker = {
            let mut s = self.state();
            if s.refusing {
                return Ok(());
            }
            if s.buf.len() + len > self.limit {
                s.refusing = true;
                return Err(SlowClient);
            }
            let now = Instant::now();
            let quiet = s.last_push.is_none_or(|last| now - last >= DIRECT_GAP);
            s.last_push = Some(now);
            let direct =
                quiet && s.buf.is_empty() && !s.writing && s.close.is_none() && s.socket.is_some();
            if s.buf.is_empty() {
                s.waiting_since = Some(now);
            }
            if s.buf.capacity() == 0 {
                // The writer left the queue without memory; most bursts are small.
                s.buf.reserve(len.max(256));
            }
            encode(&mut s.buf);
            if s.corked {
                return Ok(()); // written when the cork goes
            }
            if direct {
                let corked = CORKED.with_borrow_mut(|corked| match corked {
                    Some(queues) => {
                        queues.push(self.clone());
                        true
                    }
                    None => false,
                });
                if corked {
                    s.corked = true;
                    return Ok(());
                }
                if s.write_now() {
                    return Ok(());
                }
            }
            s.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Writes what gathered under a [`Cork`]: at once when nothing is being written, else
    /// (or what the socket did not take) by the writer.
    fn uncork(&self) {
        let waker = {
            let mut s = self.state();
            s.corked = false;
            if s.buf.is_empty() || s.ended || s.write_now() {
                return;
            }
            s.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Queues a text message (a complete Engine.IO packet).
    pub fn text(self: &Arc<Self>, text: &str) -> Result<(), SlowClient> {
        self.push(text.len() + 10, |buf| {
            Parser::write_message(buf, text, OpCode::Text, true, false)
        })
    }

    /// Queues a text message given in parts (one copy, no joined string in between).
    pub fn text_parts(self: &Arc<Self>, parts: &[&str]) -> Result<(), SlowClient> {
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
    pub fn encoded(self: &Arc<Self>, frame: &[u8]) -> Result<(), SlowClient> {
        self.push(frame.len(), |buf| buf.extend_from_slice(frame))
    }

    fn pong(self: &Arc<Self>, data: &[u8]) -> Result<(), SlowClient> {
        self.push(data.len() + 10, |buf| {
            Parser::write_message(buf, data, OpCode::Pong, true, false)
        })
    }

    /// Everything queued (tests look at what would be sent).
    #[cfg(test)]
    pub(crate) fn take_all(&self) -> Bytes {
        std::mem::take(&mut self.state().buf).freeze()
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
    /// A sink whose queue holds at most `limit` bytes; [`write_out`] sends them.
    pub fn new(limit: usize) -> WsSink {
        WsSink {
            queue: Arc::new(WsQueue::new(limit)),
        }
    }

    /// The shared queue, for rooms to fan out into directly and for the writer.
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

    /// Sends a close frame after what is queued, then the writer ends.
    pub fn close(&mut self, code: CloseCode, description: &str) {
        self.queue.close(code, description);
    }

    /// Drops what is queued, sends a close frame, then the writer ends.
    pub fn abort(&mut self, code: CloseCode, description: &str) {
        self.queue.abort(code, description);
    }
}

/// Sends what `queue` holds to `socket` until the close frame went out or the socket fails,
/// then half-closes the socket. Each wake-up takes everything queued (up to [`MAX_CHUNK`])
/// and writes it with one `send(2)` when the socket takes it whole. Meanwhile frames for a
/// quiet connection are written to `socket` by whoever pushes them.
pub async fn write_out(queue: Arc<WsQueue>, socket: Arc<TcpStream>) {
    let mut writer = WsWriter::attached(queue, socket.clone());
    while let Some(chunk) = std::future::poll_fn(|cx| writer.poll_chunk(cx)).await {
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            match socket.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if socket.writable().await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
    let _ = socket2::SockRef::from(&*socket).shutdown(std::net::Shutdown::Write);
}

/// The writer's side of a [`WsQueue`]: whatever is queued, as one chunk per wake-up.
struct WsWriter {
    queue: Arc<WsQueue>,
    done: bool,
}

impl WsWriter {
    /// The writer of `queue` to `socket`, which pushes may write to directly from now on.
    fn attached(queue: Arc<WsQueue>, socket: Arc<TcpStream>) -> Self {
        queue.state().socket = Some(socket);
        WsWriter { queue, done: false }
    }

    /// The next chunk to write; asking for it says the last one was written whole.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut s = self.queue.state();
        s.writing = false;
        if let Some(reason) = s.close.take() {
            Parser::write_close(&mut s.buf, Some(reason), false);
            s.ended = true;
        }
        if !s.buf.is_empty() {
            // Bounded chunks: the next is taken only once the socket took the last, so bytes
            // left in the queue are bytes the socket has not taken yet.
            let chunk = if s.buf.len() <= MAX_CHUNK {
                // The whole buffer: the queue keeps no memory between bursts.
                std::mem::take(&mut s.buf).freeze()
            } else {
                s.buf.split_to(MAX_CHUNK).freeze()
            };
            s.waiting_since = (!s.buf.is_empty()).then(Instant::now);
            s.writing = true;
            return Poll::Ready(Some(chunk));
        }
        if s.ended {
            self.done = true;
            return Poll::Ready(None);
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for WsWriter {
    fn drop(&mut self) {
        // The socket is gone: frames pushed from now on are dropped, and their memory freed.
        let mut s = self.queue.state();
        s.refusing = true;
        s.ended = true;
        s.buf = BytesMut::new();
        s.waker = None;
        s.socket = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls the writer's side once, as [`write_out`] does.
    fn poll(body: &mut WsWriter) -> Poll<Option<Bytes>> {
        let mut cx = Context::from_waker(Waker::noop());
        body.poll_chunk(&mut cx)
    }

    /// A sink and the writer's side of its queue.
    fn pair(limit: usize) -> (WsSink, WsWriter) {
        let sink = WsSink::new(limit);
        let body = WsWriter {
            queue: sink.queue(),
            done: false,
        };
        (sink, body)
    }

    #[test]
    fn frames_pushed_meanwhile_leave_in_one_chunk() {
        let (mut sink, mut body) = pair(1 << 20);
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
            let (sink, mut body) = pair(1 << 20);
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
        let (mut sink, mut body) = pair(100);
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
        let (mut sink, mut body) = pair(1 << 20);
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
        let (mut sink, mut body) = pair(1 << 20);
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
        let (mut sink, mut body) = pair(1 << 20);
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
        let (mut sink, mut body) = pair(1 << 20);
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
        let (mut sink, body) = pair(1 << 20);
        let queue = sink.queue();
        drop(body);
        for _ in 0..1000 {
            sink.text("42[\"nobody\"]").unwrap();
        }
        assert!(queue.state().buf.is_empty());
    }

    /// A connected loopback pair: (the server's side, the client's side).
    async fn sockets() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    /// A masked frame, as a client sends it.
    fn client_frame(op: OpCode, fin: bool, payload: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        Parser::write_message(&mut buf, payload, op, fin, true);
        buf
    }

    async fn next_text(inbound: &mut WsInbound) -> String {
        use futures_util::StreamExt;
        match inbound.next().await {
            Some(Ok(WsMessage::Text(text))) => text.to_string(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_reader_takes_early_bytes_split_frames_and_fragments_and_holds_no_buffer_idle() {
        use tokio::io::AsyncWriteExt;
        let (server, mut client) = sockets().await;
        let early = client_frame(OpCode::Text, true, b"40");
        let mut inbound = WsInbound::new(Arc::new(server), &early, 1 << 20);
        assert_eq!(
            next_text(&mut inbound).await,
            "40",
            "sent with the handshake"
        );

        let big = "x".repeat(10_000);
        let frame = client_frame(OpCode::Text, true, big.as_bytes());
        client.write_all(&frame[..3]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(&frame[3..]).await.unwrap();
        assert_eq!(
            next_text(&mut inbound).await,
            big,
            "one message over several reads"
        );

        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut inbound).poll_next(&mut cx).is_pending());
        assert_eq!(inbound.buf.capacity(), 0, "an idle reader holds no buffer");

        let mut parts = client_frame(OpCode::Text, false, b"42[\"a");
        parts.extend_from_slice(&client_frame(OpCode::Continue, true, b"\"]"));
        client.write_all(&parts).await.unwrap();
        assert_eq!(next_text(&mut inbound).await, "42[\"a\"]", "reassembled");

        drop(client);
        use futures_util::StreamExt;
        assert!(
            inbound.next().await.is_none(),
            "the client's FIN ends the stream"
        );
    }

    /// A read that took all the socket held leaves it waiting for more: the next poll makes
    /// no `recv` that would find nothing, and the next frame still wakes the reader.
    #[tokio::test]
    async fn a_short_read_leaves_the_socket_waiting_for_more() {
        use tokio::io::AsyncWriteExt;
        let (server, mut client) = sockets().await;
        let server = Arc::new(server);
        let mut inbound = WsInbound::new(server.clone(), &[], 1 << 20);
        for text in ["42[\"one\"]", "42[\"two\"]"] {
            let frame = client_frame(OpCode::Text, true, text.as_bytes());
            client.write_all(&frame).await.unwrap();
            assert_eq!(next_text(&mut inbound).await, text);
            let mut cx = Context::from_waker(Waker::noop());
            assert!(
                server.poll_read_ready(&mut cx).is_pending(),
                "the socket still counts as readable after a read that emptied it"
            );
        }
    }

    #[tokio::test]
    async fn a_message_over_max_payload_ends_the_reader() {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let (server, mut client) = sockets().await;
        let mut inbound = WsInbound::new(Arc::new(server), &[], 100);
        let frame = client_frame(OpCode::Text, true, &[b'x'; 101]);
        client.write_all(&frame).await.unwrap();
        assert!(matches!(
            inbound.next().await,
            Some(Err(WsInboundError::TooLarge(100)))
        ));
        assert!(inbound.next().await.is_none());
    }

    #[tokio::test]
    async fn the_writer_sends_the_queue_then_the_close_frame_and_half_closes() {
        use tokio::io::AsyncReadExt;
        let (server, mut client) = sockets().await;
        let mut sink = WsSink::new(1 << 20);
        sink.text("42[\"a\"]").unwrap();
        sink.queue().encoded(&encode_text("42[\"b\"]")).unwrap();
        sink.close(CloseCode::Normal, "bye");
        write_out(sink.queue(), Arc::new(server)).await;
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let mut data = encode_text("42[\"a\"]").to_vec();
        data.extend_from_slice(&encode_text("42[\"b\"]"));
        assert_eq!(&got[..data.len()], &data[..]);
        assert_eq!(got[data.len()], 0x88, "then the close frame, then EOF");
        assert_eq!(sink.queue().state().buf.capacity(), 0, "no memory kept");
        assert!(sink.text("42[\"late\"]").is_ok(), "dropped, not an error");
    }

    /// A writer attached to the server's side of a loopback pair (not run: tests poll it),
    /// once the socket is known to be writable.
    async fn attached(limit: usize) -> (WsSink, WsWriter, TcpStream) {
        let (server, client) = sockets().await;
        server.writable().await.unwrap();
        let sink = WsSink::new(limit);
        let writer = WsWriter::attached(sink.queue(), Arc::new(server));
        (sink, writer, client)
    }

    /// Reads exactly `n` bytes, or fails after a few seconds.
    async fn read_n(client: &mut TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut got = vec![0; n];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
            .await
            .expect("the bytes arrive")
            .unwrap();
        got
    }

    #[tokio::test]
    async fn a_frame_for_a_quiet_connection_is_written_at_once_and_a_quick_second_one_queues() {
        let (mut sink, mut writer, mut client) = attached(1 << 20).await;
        sink.text("42[\"a\"]").unwrap();
        let a = encode_text("42[\"a\"]");
        assert_eq!(
            read_n(&mut client, a.len()).await,
            a,
            "sent without the writer running"
        );
        assert_eq!(sink.queue().state().buf.capacity(), 0, "nothing kept");

        sink.text("42[\"b\"]").unwrap();
        assert!(
            !sink.queue().state().buf.is_empty(),
            "within {DIRECT_GAP:?} of the last frame: gathered by the writer"
        );
        assert_eq!(
            poll(&mut writer),
            Poll::Ready(Some(encode_text("42[\"b\"]")))
        );
    }

    #[tokio::test]
    async fn a_quiet_frame_does_not_overtake_a_chunk_being_written() {
        let (mut sink, mut writer, mut client) = attached(1 << 20).await;
        sink.text("42[\"a\"]").unwrap();
        sink.text("42[\"b\"]").unwrap();
        let Poll::Ready(Some(b)) = poll(&mut writer) else {
            panic!("b waits for the writer");
        };
        // The writer holds b, not written yet; c comes after a quiet spell.
        std::thread::sleep(DIRECT_GAP * 2);
        sink.text("42[\"c\"]").unwrap();
        assert!(
            !sink.queue().state().buf.is_empty(),
            "c queues behind the chunk in flight"
        );
        client_side_write(&writer, &b).await;
        let Poll::Ready(Some(c)) = poll(&mut writer) else {
            panic!("c");
        };
        client_side_write(&writer, &c).await;
        let mut expected = encode_text("42[\"a\"]").to_vec();
        for frame in ["42[\"b\"]", "42[\"c\"]"] {
            expected.extend_from_slice(&encode_text(frame));
        }
        assert_eq!(read_n(&mut client, expected.len()).await, expected);
    }

    #[tokio::test]
    async fn under_a_cork_a_quiet_connection_gets_its_frames_in_one_write_when_it_goes() {
        let (mut sink, _writer, mut client) = attached(1 << 20).await;
        let frames = ["42[\"a\"]", "42[\"b\"]", "42[\"c\"]"];
        {
            let _cork = cork();
            let _inner = cork();
            for frame in frames {
                sink.text(frame).unwrap();
            }
            drop(_inner);
            let mut byte = [0u8; 1];
            assert_eq!(
                client.try_read(&mut byte).map_err(|e| e.kind()),
                Err(ErrorKind::WouldBlock),
                "nothing is written while the outermost cork holds"
            );
        }
        let mut expected = Vec::new();
        for frame in frames {
            expected.extend_from_slice(&encode_text(frame));
        }
        assert_eq!(
            read_n(&mut client, expected.len()).await,
            expected,
            "all three, without the writer running"
        );
        assert_eq!(sink.queue().state().buf.capacity(), 0, "nothing kept");
    }

    /// Writes a chunk the writer took, as [`write_out`] does.
    async fn client_side_write(writer: &WsWriter, chunk: &[u8]) {
        let socket = writer.queue.state().socket.clone().unwrap();
        let mut rest = chunk;
        while !rest.is_empty() {
            match socket.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => socket.writable().await.unwrap(),
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_gets_the_rest_queued_in_order_then_the_bound() {
        let limit = 1 << 20;
        let (mut sink, writer, mut client) = attached(limit).await;
        let queue = sink.queue();
        // Quiet frames, written directly, until the socket's buffers are full and one is
        // written in part (bounded: loopback buffers hold a few MiB at most).
        let mut sent = Vec::new();
        for i in 0..4000 {
            let frame = format!("42[\"{i:05}{}\"]", "x".repeat(16_000));
            sent.extend_from_slice(&encode_text(&frame));
            std::thread::sleep(DIRECT_GAP);
            sink.text(&frame).unwrap();
            if !queue.state().buf.is_empty() {
                break;
            }
        }
        assert!(!queue.state().buf.is_empty(), "the socket's buffers filled");
        assert!(queue.stalled_for().is_some(), "the rest waits");
        // From now on frames queue, up to the bound.
        let mut over = false;
        for i in 0..100 {
            let frame = format!("42[\"q{i:05}{}\"]", "y".repeat(16_000));
            if sink.text(&frame).is_err() {
                over = true;
                break;
            }
            sent.extend_from_slice(&encode_text(&frame));
        }
        assert!(over, "a client that does not read meets the bound");
        // Once it reads again, it gets every frame before the bound, whole and in order.
        tokio::spawn(async move {
            let mut writer = writer;
            while let Some(chunk) = std::future::poll_fn(|cx| writer.poll_chunk(cx)).await {
                client_side_write(&writer, &chunk).await;
            }
        });
        sink.close(CloseCode::Policy, "outbound queue full");
        assert_eq!(read_n(&mut client, sent.len()).await, sent);
    }

    #[test]
    fn the_writer_leaves_the_queue_without_memory_after_a_burst() {
        let (mut sink, mut body) = pair(1 << 20);
        for _ in 0..100 {
            sink.text("42[\"a\"]").unwrap();
        }
        assert!(poll(&mut body).is_ready());
        assert_eq!(sink.queue().state().buf.capacity(), 0);
    }
}
