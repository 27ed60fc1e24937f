//! The WebSocket transport: RFC 6455 framing over the HTTP connection, with the connection
//! actor on the same worker thread.
//!
//! Outbound frames wait in a channel that the response body drains into one buffer, so a burst
//! of events costs one `send(2)`; the bytes waiting are bounded and a client that stops reading
//! is disconnected instead of growing them.

use actix_codec::{Decoder, Encoder};
use actix_http::ws::{CloseCode, CloseReason, Codec, Frame, Item, Message, ProtocolError};
use actix_web::web::Payload;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_core::Stream;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

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

/// A frame on its way to the socket.
enum Outgoing {
    Text(ByteString),
    Pong(Bytes),
    Close(CloseCode, String),
}

/// The sending half of a WebSocket connection, held by the connection actor. It may live on
/// another thread than the socket (after an upgrade from polling): frames travel through a
/// channel and the response body encodes whatever is waiting into one write.
pub struct WsSink {
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Bytes sent but not yet taken by the socket writer.
    queued: Arc<AtomicUsize>,
    limit: usize,
    closed: bool,
}

impl WsSink {
    /// A sink and the response body that drains it.
    pub fn new(limit: usize) -> (WsSink, WsOutboxBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (
            WsSink {
                tx,
                queued: queued.clone(),
                limit,
                closed: false,
            },
            WsOutboxBody {
                rx,
                queued,
                codec: Codec::new(),
                buf: BytesMut::new(),
                done: false,
            },
        )
    }

    fn push(&mut self, len: usize, msg: Outgoing) -> Result<(), SlowClient> {
        if self.closed {
            return Ok(());
        }
        let queued = self.queued.fetch_add(len, Ordering::Relaxed) + len;
        let _ = self.tx.send(msg);
        if queued > self.limit {
            Err(SlowClient)
        } else {
            Ok(())
        }
    }

    /// Queues a text frame.
    pub fn text(&mut self, frame: ByteString) -> Result<(), SlowClient> {
        self.push(frame.len(), Outgoing::Text(frame))
    }

    /// Answers a WebSocket ping.
    pub fn pong(&mut self, data: Bytes) -> Result<(), SlowClient> {
        self.push(data.len(), Outgoing::Pong(data))
    }

    /// Sends a close frame after what is queued and ends the response.
    pub fn close(&mut self, code: CloseCode, description: &str) {
        if !self.closed {
            let _ = self.tx.send(Outgoing::Close(code, description.to_owned()));
            self.closed = true;
        }
    }
}

/// Most bytes encoded into one write.
const WRITE_CHUNK: usize = 256 * 1024;

/// The response body of a WebSocket connection.
pub struct WsOutboxBody {
    rx: mpsc::UnboundedReceiver<Outgoing>,
    queued: Arc<AtomicUsize>,
    codec: Codec,
    buf: BytesMut,
    done: bool,
}

impl Stream for WsOutboxBody {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut taken = 0;
        while this.buf.len() < WRITE_CHUNK {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(msg)) => {
                    let msg = match msg {
                        Outgoing::Text(text) => {
                            taken += text.len();
                            Message::Text(text)
                        }
                        Outgoing::Pong(data) => {
                            taken += data.len();
                            Message::Pong(data)
                        }
                        Outgoing::Close(code, description) => {
                            this.done = true;
                            Message::Close(Some(CloseReason {
                                code,
                                description: Some(description),
                            }))
                        }
                    };
                    // Encoding into a growable buffer cannot fail.
                    let _ = this.codec.encode(msg, &mut this.buf);
                    if this.done {
                        break;
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        this.queued.fetch_sub(taken, Ordering::Relaxed);
        if !this.buf.is_empty() {
            let bytes = this.buf.split().freeze();
            if this.buf.capacity() > WRITE_CHUNK {
                this.buf = BytesMut::new();
            }
            return Poll::Ready(Some(Ok(bytes)));
        }
        if this.done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}
