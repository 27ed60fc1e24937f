//! The HTTP long-polling transport: a session's outbound packets wait in a bounded queue until
//! the client's next GET collects them (joined by the record separator `\x1e`); POST bodies
//! carry inbound packets. Requests find their session through the registry, so they may land
//! on any worker.

use crate::actors::connection::Connection;
use crate::actors::messages::{CloseSession, Poll, PostPackets, TransportError};
use actix::Addr;
use bytestring::ByteString;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::oneshot;

/// Separates packets in a polling payload.
pub const SEPARATOR: char = '\x1e';

/// One packet of a POST body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// An Engine.IO text packet, to decode with [`crate::protocol::engineio::decode`].
    Text(&'a str),
    /// `b<base64>`: a binary attachment. Its base64 is never decoded: the server refuses binary
    /// payloads and only counts their attachments.
    Binary(&'a str),
}

/// Splits a POST body into its packets (separated by [`SEPARATOR`]); an empty record is an
/// empty text packet, which the Engine.IO decoder refuses. Allocates nothing.
pub fn records(body: &str) -> impl Iterator<Item = Record<'_>> {
    body.split(SEPARATOR)
        .map(|record| match record.strip_prefix('b') {
            Some(base64) => Record::Binary(base64),
            None => Record::Text(record),
        })
}

/// A polling session's outbound side, kept by its connection actor.
#[derive(Default)]
pub struct PollingQueue {
    frames: VecDeque<ByteString>,
    bytes: usize,
    /// The GET waiting for packets.
    waiting: Option<oneshot::Sender<String>>,
}

impl PollingQueue {
    /// Queues a packet (answering a waiting GET at once); `false` when over `limit` bytes.
    pub fn push(&mut self, frame: ByteString, limit: usize) -> bool {
        self.bytes += frame.len();
        self.frames.push_back(frame);
        if let Some(waiting) = self.waiting.take() {
            let payload = self.drain();
            if let Err(payload) = waiting.send(payload) {
                // The GET went away: keep the packets for the next one.
                self.requeue(payload);
            }
        }
        self.bytes <= limit
    }

    fn requeue(&mut self, payload: String) {
        for frame in payload.split(SEPARATOR).rev() {
            self.bytes += frame.len();
            self.frames.push_front(ByteString::from(frame.to_owned()));
        }
    }

    /// Everything queued as one payload.
    pub fn drain(&mut self) -> String {
        let mut payload = String::with_capacity(self.bytes + self.frames.len());
        for (i, frame) in self.frames.drain(..).enumerate() {
            if i > 0 {
                payload.push(SEPARATOR);
            }
            payload.push_str(&frame);
        }
        self.bytes = 0;
        payload
    }

    /// Registers a GET: answered now if packets wait (or with `idle` if given), else later.
    pub fn poll(&mut self, idle: Option<&str>) -> oneshot::Receiver<String> {
        let (tx, rx) = oneshot::channel();
        if !self.frames.is_empty() {
            let _ = tx.send(self.drain());
        } else if let Some(idle) = idle {
            let _ = tx.send(idle.to_owned());
        } else {
            self.waiting = Some(tx);
        }
        rx
    }

    /// Answers a waiting GET with `payload` (e.g. a noop or close packet).
    pub fn answer_waiting(&mut self, payload: &str) {
        if let Some(waiting) = self.waiting.take() {
            let _ = waiting.send(payload.to_owned());
        }
    }

    /// Takes the queued packets, oldest first (moving them to a WebSocket).
    pub fn take_frames(&mut self) -> Vec<ByteString> {
        self.bytes = 0;
        self.frames.drain(..).collect()
    }
}

/// A polling session as the registry knows it.
#[derive(Clone)]
pub struct SessionEntry {
    pub addr: Addr<Connection>,
    /// A GET is in progress (a second concurrent one closes the session).
    pub get_busy: Arc<AtomicBool>,
    /// A POST is in progress.
    pub post_busy: Arc<AtomicBool>,
}

/// Polling sessions by Engine.IO sid, shared by every worker.
#[derive(Clone, Default)]
pub struct Sessions(Arc<RwLock<HashMap<String, SessionEntry>>>);

impl Sessions {
    pub fn insert(&self, sid: String, addr: Addr<Connection>) {
        if let Ok(mut map) = self.0.write() {
            map.insert(
                sid,
                SessionEntry {
                    addr,
                    get_busy: Arc::default(),
                    post_busy: Arc::default(),
                },
            );
        }
    }

    pub fn get(&self, sid: &str) -> Option<SessionEntry> {
        self.0.read().ok()?.get(sid).cloned()
    }

    /// Every session's actor.
    pub fn all(&self) -> Vec<Addr<Connection>> {
        self.0
            .read()
            .map(|map| map.values().map(|e| e.addr.clone()).collect())
            .unwrap_or_default()
    }

    pub fn remove(&self, sid: &str) {
        if let Ok(mut map) = self.0.write() {
            map.remove(sid);
        }
    }
}

/// Marks `flag` busy for the life of the guard; `None` if it already was.
pub struct BusyGuard(Arc<AtomicBool>);

impl BusyGuard {
    pub fn acquire(flag: &Arc<AtomicBool>) -> Option<BusyGuard> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| BusyGuard(flag.clone()))
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Runs a GET for `session`: the packets to send, or why not.
pub async fn get(session: &SessionEntry) -> Result<String, TransportError> {
    let Some(_busy) = BusyGuard::acquire(&session.get_busy) else {
        session.addr.do_send(CloseSession {
            reason: "overlapping GET requests",
        });
        return Err(TransportError::Violation);
    };
    let rx = session
        .addr
        .send(Poll)
        .await
        .map_err(|_| TransportError::Closed)??;
    // The actor answers within a ping interval (the ping itself), or drops the sender on close.
    Ok(rx.await.unwrap_or_else(|_| "1".to_owned()))
}

/// Runs a POST of `body` for `session`.
pub async fn post(session: &SessionEntry, body: String) -> Result<(), TransportError> {
    let Some(_busy) = BusyGuard::acquire(&session.post_busy) else {
        session.addr.do_send(CloseSession {
            reason: "overlapping POST requests",
        });
        return Err(TransportError::Violation);
    };
    session
        .addr
        .send(PostPackets { body })
        .await
        .map_err(|_| TransportError::Closed)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_post_bodies_into_records() {
        let body = "40\x1ebAQID\x1e\x1e42[\"a\"]";
        assert_eq!(
            records(body).collect::<Vec<_>>(),
            vec![
                Record::Text("40"),
                Record::Binary("AQID"),
                Record::Text(""),
                Record::Text("42[\"a\"]"),
            ]
        );
        assert_eq!(records("").collect::<Vec<_>>(), vec![Record::Text("")]);
    }

    #[test]
    fn queue_joins_packets_and_answers_a_waiting_poll() {
        let mut q = PollingQueue::default();
        assert!(q.push("40".into(), 100));
        assert!(q.push("42[\"a\"]".into(), 100));
        let mut rx = q.poll(None);
        assert_eq!(rx.try_recv().unwrap(), "40\x1e42[\"a\"]");
        let mut rx = q.poll(None);
        assert!(rx.try_recv().is_err(), "nothing queued: the GET waits");
        assert!(q.push("2".into(), 100));
        assert_eq!(rx.try_recv().unwrap(), "2");
        let mut rx = q.poll(Some("6"));
        assert_eq!(rx.try_recv().unwrap(), "6");
    }

    #[test]
    fn queue_reports_overflow_and_keeps_packets_of_a_vanished_poll() {
        let mut q = PollingQueue::default();
        drop(q.poll(None));
        assert!(q.push("4abc".into(), 10));
        assert!(!q.push("4defghijk".into(), 10));
        assert_eq!(q.drain(), "4abc\x1e4defghijk");
    }
}
