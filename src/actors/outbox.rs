//! How rooms and the directory reach a connection: straight into its WebSocket send queue
//! when it has one (no mailbox hop, no wake-up per frame), else through the connection actor.

use crate::actors::messages::ToConnection;
use crate::error::DialogueError;
use crate::http::websocket::{SlowClient, WsQueue};
use crate::protocol::dialogue::error_frames;
use crate::recovery::{with_offset, Advance, Offsets};
use actix::Recipient;
use bytestring::ByteString;
use std::sync::{Arc, Mutex};

/// A room holds a cork while it hands out a batch of events: each quiet connection then gets
/// the batch in one write.
pub use crate::http::websocket::{cork, Cork};

/// Where an event stands in a recoverable session: (room slot, event name, seq).
pub type Position<'a> = Option<(u32, &'a str, u64)>;

/// A connection's delivery handle, as a room member or a directory entry keeps it.
///
/// The route is fixed when the handle is made: a session on WebSocket gets the direct queue;
/// a session still on HTTP long-polling goes through its actor, and keeps that route after an
/// upgrade, so frames of one room never overtake each other.
#[derive(Clone)]
pub struct Outbox {
    actor: Recipient<ToConnection>,
    direct: Option<Arc<WsQueue>>,
    /// The session's positions when it is recoverable: events carry its offset.
    offsets: Option<Arc<Mutex<Offsets>>>,
}

/// One fan-out frame: the Engine.IO text and, built once for all recipients, its WebSocket
/// encoding.
pub struct SharedFrame {
    pub text: ByteString,
    pub ws: bytes::Bytes,
}

impl SharedFrame {
    pub fn new(text: ByteString) -> Self {
        SharedFrame {
            ws: crate::http::websocket::encode_text(&text),
            text,
        }
    }
}

impl Outbox {
    pub fn new(
        actor: Recipient<ToConnection>,
        direct: Option<Arc<WsQueue>>,
        offsets: Option<Arc<Mutex<Offsets>>>,
    ) -> Self {
        Outbox {
            actor,
            direct,
            offsets,
        }
    }

    /// Sends a `dialogue:event` frame shared by a fan-out. In a recoverable session an event
    /// with a position gets its own copy ending in the session's offset; the positions are
    /// advanced and the frame queued under one lock, so offsets only grow in queue order.
    pub fn event(&self, frame: &SharedFrame, at: Position<'_>) {
        match (&self.offsets, at) {
            (Some(offsets), Some(at)) => self.with_offset(offsets, &frame.text, Some(frame), at),
            _ => self.shared(frame),
        }
    }

    /// Sends one `dialogue:event` frame (a replay), with the offset as [`Outbox::event`].
    pub fn event_text(&self, text: &str, at: Position<'_>) {
        match (&self.offsets, at) {
            (Some(offsets), Some(at)) => self.with_offset(offsets, text, None, at),
            _ => self.frame(text.into()),
        }
    }

    /// Forgets the session's positions in room `slot` (it joins that room afresh), in queue
    /// order with the frames around it.
    pub fn forget_positions(&self, slot: u32) {
        if let Some(offsets) = &self.offsets {
            offsets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .forget(slot);
        }
    }

    fn with_offset(
        &self,
        offsets: &Mutex<Offsets>,
        text: &str,
        shared: Option<&SharedFrame>,
        (slot, event, seq): (u32, &str, u64),
    ) {
        let mut offsets = offsets.lock().unwrap_or_else(|e| e.into_inner());
        match offsets.advance(slot, event, seq) {
            Advance::Offset(offset) => match &self.direct {
                Some(queue) => {
                    let body = text.strip_suffix(']').unwrap_or(text);
                    self.check(queue.text_parts(&[body, ",\"", offset, "\"]"]));
                }
                None => self.frame(with_offset(text, offset).into()),
            },
            Advance::Off { now } => {
                if now {
                    self.actor.do_send(ToConnection::RecoveryOff);
                }
                match shared {
                    Some(frame) => self.shared(frame),
                    None => self.frame(text.into()),
                }
            }
        }
    }

    /// Sends one Engine.IO text frame.
    pub fn frame(&self, frame: ByteString) {
        match &self.direct {
            Some(queue) => self.check(queue.text(&frame)),
            None => self.actor.do_send(ToConnection::Frame { frame }),
        }
    }

    /// Sends a frame shared by a fan-out.
    pub fn shared(&self, frame: &SharedFrame) {
        match &self.direct {
            Some(queue) => self.check(queue.encoded(&frame.ws)),
            None => self.actor.do_send(ToConnection::Frame {
                frame: frame.text.clone(),
            }),
        }
    }

    /// Answers a failed request: the `dialogue:error` event, then the ack if one was asked.
    pub fn error(&self, ack: Option<u64>, error: &DialogueError) {
        for frame in error_frames(ack, error) {
            self.frame(frame.into());
        }
    }

    /// Something else for the connection actor.
    pub fn notify(&self, msg: ToConnection) {
        self.actor.do_send(msg);
    }

    fn check(&self, pushed: Result<(), SlowClient>) {
        if pushed.is_err() {
            // Reported once; the queue drops frames until the actor closes the connection.
            self.actor.do_send(ToConnection::Overflowed);
        }
    }
}
