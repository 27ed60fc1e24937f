//! How rooms and the directory reach a connection: straight into its WebSocket send queue
//! when it has one (no mailbox hop, no wake-up per frame), else through the connection actor.

use crate::actors::messages::ToConnection;
use crate::error::DialogueError;
use crate::http::websocket::{SlowClient, WsQueue};
use crate::protocol::dialogue::error_frames;
use actix::Recipient;
use bytestring::ByteString;
use std::sync::Arc;

/// A connection's delivery handle, as a room member or a directory entry keeps it.
///
/// The route is fixed when the handle is made: a session on WebSocket gets the direct queue;
/// a session still on HTTP long-polling goes through its actor, and keeps that route after an
/// upgrade, so frames of one room never overtake each other.
#[derive(Clone)]
pub struct Outbox {
    actor: Recipient<ToConnection>,
    direct: Option<Arc<WsQueue>>,
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
    pub fn new(actor: Recipient<ToConnection>, direct: Option<Arc<WsQueue>>) -> Self {
        Outbox { actor, direct }
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
