//! The cluster's messages, over Redis pub/sub:
//!
//! - `dlg:room:<room id>`: the owner publishes each event of the room once (its
//!   `EventMessage` JSON); every node with members of the room is subscribed and delivers it
//!   to them ([`RoomFeed`]). The payload `resync` tells the replicas to read the owner's
//!   window again (events may have been lost on the way).
//! - `dlg:to:<node>`: requests to a node for one of the rooms it owns ([`Op`]), answered on
//!   `dlg:re:<requesting node>` with the same id.
//! - `dlg:directory`: rooms created and deleted at run time, and nodes leaving
//!   ([`BusNotice`]).
//!
//! Pub/sub delivers at most once: a lost event shows as a gap in seq and the replica reads
//! the window again; a lost request or answer runs into the requester's timeout.

use crate::error::DialogueError;
use actix::prelude::*;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The channel of room directory changes and node departures.
pub const DIRECTORY: &str = "dlg:directory";

/// The channel a room's owner publishes its events on.
pub fn room_channel(room: &str) -> String {
    format!("dlg:room:{room}")
}

/// What a node sends itself to check its subscription connection, this often.
const PING: &str = "ping";
const PING_EVERY: Duration = Duration::from_secs(2);

/// The payload asking a room's replicas to read the owner's window again.
pub const RESYNC: &str = "resync";

/// What reaches a room replica from its owner.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum RoomFeed {
    /// One event, as the owner's `EventMessage` JSON.
    Event(String),
    /// Events may have been lost: read the owner's window again.
    Resync,
}

/// A request to the owner of a room.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Op {
    /// Trigger an event (the requesting node checked the membership).
    #[serde(rename_all = "camelCase")]
    Trigger {
        /// The same on every attempt: an owner that accepted it already answers its seq again.
        key: String,
        user_id: String,
        claims: Value,
        trusted: bool,
        event: String,
        data: Value,
        meta: Option<Value>,
        echo: bool,
    },
    /// The room's epoch and history windows, for a replica to start from.
    Window,
}

/// A change every node's directory applies (the payloads of [`DIRECTORY`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "camelCase")]
pub enum DirectoryChange {
    /// A node left the cluster (a clean stop): look at the live nodes again now.
    NodeLeft { node: String },
    /// A room was created at run time.
    RoomCreated { room: RoomSpec },
    /// A room created at run time was deleted.
    #[serde(rename_all = "camelCase")]
    RoomDeleted { room_id: String },
}

impl DirectoryChange {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What makes a room created at run time (kept in the hash [`ROOMS`] and announced).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomSpec {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub max_size: Option<u32>,
    pub events: Option<Vec<String>>,
    pub default_subscriptions: Option<Vec<String>>,
    pub sync_history_on_join: Option<u64>,
    /// The room's presence bound (`presence: true`).
    pub presence: Option<usize>,
    pub created_by: Option<String>,
}

/// The hash of the rooms created at run time: room id → [`RoomSpec`] JSON.
pub const ROOMS: &str = "dlg:rooms";

/// Why a request got no answer from the room's owner.
#[derive(Debug)]
pub enum Failure {
    /// The room answered with an error for the client.
    Refused(DialogueError),
    /// The node asked does not own the room (any more, or not yet).
    NotOwner,
    /// No answer in time, or Redis is not reachable.
    NoAnswer,
}

/// A request received for a room this node owns, or a directory change: handled by the
/// directory.
#[derive(Message)]
#[rtype(result = "()")]
#[allow(clippy::large_enum_variant)] // short-lived, one per request
pub enum BusNotice {
    /// A request for room `room`; answer through `respond`.
    Request {
        room: String,
        op: Op,
        respond: Responder,
    },
    /// A payload of [`DIRECTORY`].
    Directory(String),
    /// The subscription connection was lost and is back: messages may have been lost.
    Reconnected,
}

/// Answers one request (once). Dropped unanswered, it answers "not the owner", so the
/// requester looks for the owner again.
pub struct Responder {
    bus: Bus,
    to: String,
    id: u64,
    answered: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<DialogueError>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    not_owner: bool,
}

#[derive(Serialize, Deserialize)]
struct Request {
    id: u64,
    from: String,
    room: String,
    #[serde(flatten)]
    op: Op,
}

impl Responder {
    /// Answers with `result`.
    pub fn answer(mut self, result: Result<String, DialogueError>) {
        self.answered = true;
        let (ok, error) = match result {
            Ok(ok) => (Some(ok), None),
            Err(e) => (None, Some(e)),
        };
        self.send(Answer {
            id: self.id,
            ok,
            error,
            not_owner: false,
        });
    }

    /// Answers that this node does not own the room.
    pub fn not_owner(mut self) {
        self.answered = true;
        self.send(Answer {
            id: self.id,
            ok: None,
            error: None,
            not_owner: true,
        });
    }

    fn send(&self, answer: Answer) {
        if let Ok(json) = serde_json::to_string(&answer) {
            self.bus.publish(format!("dlg:re:{}", self.to), json, None);
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.answered {
            self.send(Answer {
                id: self.id,
                ok: None,
                error: None,
                not_owner: true,
            });
        }
    }
}

/// Removes a request from the pending ones when its waiter goes.
struct PendingGuard {
    bus: Bus,
    id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.bus.state().pending.remove(&self.id);
    }
}

struct Outgoing {
    channel: String,
    payload: String,
    /// The room whose event this is: told to resync if the publish fails.
    room: Option<Arc<str>>,
}

enum Subscription {
    Add(Arc<str>, oneshot::Sender<bool>),
    Remove(Arc<str>),
}

#[derive(Default)]
struct State {
    /// Rooms replicated here: where their events go (and the room actor instance).
    rooms: HashMap<Arc<str>, (u64, Recipient<RoomFeed>)>,
    /// Requests sent and not answered yet.
    pending: HashMap<u64, oneshot::Sender<Answer>>,
}

struct Inner {
    node: Arc<str>,
    publish: mpsc::UnboundedSender<Outgoing>,
    subscriptions: mpsc::UnboundedSender<Subscription>,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Where requests and directory changes go (the directory, once started).
    handler: OnceLock<Recipient<BusNotice>>,
}

/// This node's end of the cluster's pub/sub (cheap to clone).
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl Bus {
    /// Starts the publisher (on `redis`) and the subscriber (its own connection from
    /// `client`, re-established when lost) of node `node`.
    pub fn start(client: redis::Client, redis: ConnectionManager, node: Arc<str>) -> Bus {
        let (publish, outgoing) = mpsc::unbounded_channel();
        let (subscriptions, changes) = mpsc::unbounded_channel();
        let bus = Bus {
            inner: Arc::new(Inner {
                node,
                publish,
                subscriptions,
                state: Mutex::default(),
                next_id: AtomicU64::new(1),
                handler: OnceLock::new(),
            }),
        };
        actix_rt::spawn(publisher(redis, outgoing));
        actix_rt::spawn(subscriber(client, changes, bus.clone()));
        bus
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets where requests and directory changes go.
    pub fn set_handler(&self, handler: Recipient<BusNotice>) {
        let _ = self.inner.handler.set(handler);
    }

    /// Queues a publish (in order with every other publish of this node).
    pub fn publish(&self, channel: String, payload: String, room: Option<Arc<str>>) {
        let _ = self.inner.publish.send(Outgoing {
            channel,
            payload,
            room,
        });
    }

    /// Publishes one event of `room` (the owner's fan-out to the other nodes).
    pub fn publish_event(&self, room: &Arc<str>, json: &str) {
        self.publish(room_channel(room), json.to_owned(), Some(room.clone()));
    }

    /// Receives `room`'s events from now on, for room actor `instance`; true once Redis
    /// confirmed the subscription.
    pub async fn subscribe(
        &self,
        room: Arc<str>,
        instance: u64,
        feed: Recipient<RoomFeed>,
    ) -> bool {
        self.state().rooms.insert(room.clone(), (instance, feed));
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .subscriptions
            .send(Subscription::Add(room, tx))
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Stops receiving `room`'s events, unless another instance of the room (deleted and
    /// created again) subscribed since.
    pub fn unsubscribe(&self, room: &Arc<str>, instance: u64) {
        let mut state = self.state();
        if state.rooms.get(room).is_some_and(|(i, _)| *i == instance) {
            state.rooms.remove(room);
            drop(state);
            let _ = self
                .inner
                .subscriptions
                .send(Subscription::Remove(room.clone()));
        }
    }

    /// Sends `op` for `room` to `node`, and waits up to `limit` for the answer. The request is
    /// queued before this returns, so requests keep the order they were made in.
    pub fn request(
        &self,
        node: &str,
        room: &str,
        op: &Op,
        limit: Duration,
    ) -> impl std::future::Future<Output = Result<String, Failure>> + 'static {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let request = Request {
            id,
            from: self.inner.node.to_string(),
            room: room.to_owned(),
            op: op.clone(),
        };
        let queued = match serde_json::to_string(&request) {
            Ok(json) => {
                self.state().pending.insert(id, tx);
                self.publish(format!("dlg:to:{node}"), json, None);
                true
            }
            Err(_) => false,
        };
        // Forgets the request however the wait ends (answered, timed out, or dropped).
        let guard = PendingGuard {
            bus: self.clone(),
            id,
        };
        async move {
            if !queued {
                return Err(Failure::NoAnswer);
            }
            let answer = tokio::time::timeout(limit, rx).await;
            drop(guard);
            match answer {
                Ok(Ok(Answer {
                    not_owner: true, ..
                })) => Err(Failure::NotOwner),
                Ok(Ok(Answer { error: Some(e), .. })) => Err(Failure::Refused(e)),
                Ok(Ok(Answer { ok: Some(ok), .. })) => Ok(ok),
                _ => Err(Failure::NoAnswer),
            }
        }
    }

    /// Announces a directory change to every node (this one included).
    pub fn announce(&self, payload: String) {
        self.publish(DIRECTORY.to_owned(), payload, None);
    }

    fn dispatch(&self, channel: &str, payload: String) {
        if let Some(room) = channel.strip_prefix("dlg:room:") {
            let feed = self.state().rooms.get(room).map(|(_, feed)| feed.clone());
            if let Some(feed) = feed {
                feed.do_send(if payload == RESYNC {
                    RoomFeed::Resync
                } else {
                    RoomFeed::Event(payload)
                });
            }
        } else if channel.starts_with("dlg:re:") {
            let Ok(answer) = serde_json::from_str::<Answer>(&payload) else {
                return;
            };
            let waiting = self.state().pending.remove(&answer.id);
            if let Some(waiting) = waiting {
                let _ = waiting.send(answer);
            }
        } else if channel.starts_with("dlg:to:") {
            let Ok(request) = serde_json::from_str::<Request>(&payload) else {
                log::warn!("cluster: unreadable request on {channel}");
                return;
            };
            let respond = Responder {
                bus: self.clone(),
                to: request.from,
                id: request.id,
                answered: false,
            };
            match self.inner.handler.get() {
                Some(handler) => handler.do_send(BusNotice::Request {
                    room: request.room,
                    op: request.op,
                    respond,
                }),
                None => respond.not_owner(),
            }
        } else if channel == DIRECTORY {
            if let Some(handler) = self.inner.handler.get() {
                handler.do_send(BusNotice::Directory(payload));
            }
        }
    }
}

/// Publishes what is queued, a pipeline of up to 512 at a time, in order. Events of a room
/// that could not be published are followed, once Redis takes publishes again, by a
/// [`RESYNC`] on the room's channel.
async fn publisher(mut redis: ConnectionManager, mut queue: mpsc::UnboundedReceiver<Outgoing>) {
    let mut batch = Vec::with_capacity(512);
    let mut lost: HashSet<Arc<str>> = HashSet::new();
    loop {
        batch.clear();
        if queue.recv_many(&mut batch, 512).await == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        for room in lost.iter() {
            pipe.cmd("PUBLISH")
                .arg(room_channel(room))
                .arg(RESYNC)
                .ignore();
        }
        for out in &batch {
            pipe.cmd("PUBLISH")
                .arg(&out.channel)
                .arg(&out.payload)
                .ignore();
        }
        match pipe.query_async::<()>(&mut redis).await {
            Ok(()) => lost.clear(),
            Err(e) => {
                log::debug!("cluster: {} publishes lost: {e}", batch.len());
                lost.extend(batch.iter().filter_map(|o| o.room.clone()));
            }
        }
    }
}

/// Keeps a subscription connection: this node's request and answer channels, the directory,
/// and the channel of every room replicated here. When it was lost and is back, every
/// replica resyncs and the directory reads the room list again.
async fn subscriber(
    client: redis::Client,
    mut changes: mpsc::UnboundedReceiver<Subscription>,
    bus: Bus,
) {
    let node = bus.inner.node.clone();
    let mut lost_once = false;
    loop {
        let connected =
            tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = connected else {
            // Subscriptions asked for meanwhile are made at the next connection.
            while let Ok(change) = changes.try_recv() {
                if let Subscription::Add(_, ack) = change {
                    let _ = ack.send(false);
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut channels = vec![
            format!("dlg:to:{node}"),
            format!("dlg:re:{node}"),
            DIRECTORY.to_owned(),
        ];
        let rooms: Vec<Arc<str>> = bus.state().rooms.keys().cloned().collect();
        channels.extend(rooms.iter().map(|r| room_channel(r)));
        if sink.subscribe(&channels).await.is_err() {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        if lost_once {
            log::info!("cluster: subscriptions restored; replicas read their windows again");
            let feeds: Vec<_> = bus.state().rooms.values().map(|(_, f)| f.clone()).collect();
            for feed in feeds {
                feed.do_send(RoomFeed::Resync);
            }
            if let Some(handler) = bus.inner.handler.get() {
                handler.do_send(BusNotice::Reconnected);
            }
        }
        // A connection that died without closing (a half-open TCP connection) is noticed by a
        // ping to this node's own answer channel that does not come back.
        let answers = format!("dlg:re:{node}");
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut pong = tokio::time::Instant::now();
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { break };
                    let channel = message.get_channel_name().to_owned();
                    if let Ok(payload) = message.get_payload::<String>() {
                        if payload == PING && channel == answers {
                            pong = tokio::time::Instant::now();
                            continue;
                        }
                        bus.dispatch(&channel, payload);
                    }
                }
                _ = ping.tick() => {
                    if pong.elapsed() > PING_EVERY * 3 {
                        log::warn!("cluster: no ping came back on the subscription connection");
                        break;
                    }
                    bus.publish(answers.clone(), PING.to_owned(), None);
                }
                change = changes.recv() => match change {
                    Some(Subscription::Add(room, ack)) => {
                        let ok = sink.subscribe(room_channel(&room)).await.is_ok();
                        let _ = ack.send(ok);
                    }
                    Some(Subscription::Remove(room)) => {
                        let _ = sink.unsubscribe(room_channel(&room)).await;
                    }
                    None => return,
                },
            }
        }
        log::warn!("cluster: the subscription connection to Redis was lost; reconnecting");
        lost_once = true;
        // Requests in flight will not be answered on this connection: they fail now.
        bus.state().pending.clear();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
