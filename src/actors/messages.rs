//! Every message exchanged between actors, in one place, with named fields.
//!
//! Rooms and the directory reach connections only through an [`Outbox`] (a WebSocket send
//! queue, or `Recipient<ToConnection>`), so the dependency arrow points from connections to
//! rooms, never back.

use crate::actors::outbox::Outbox;
use crate::auth::Identity;
use crate::error::DialogueError;
use crate::protocol::dialogue::{ack_ok, EventMessage, HistoryRange, RoomInfo};
use crate::protocol::socketio;
use actix::prelude::*;
use bytestring::ByteString;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Text this crate serialised itself, as raw JSON.
fn raw(json: &str) -> &RawValue {
    serde_json::from_str(json).unwrap_or(RawValue::NULL)
}

/// Process-unique id of a connection.
pub type ConnId = u64;

/// One stored event as history keeps it: its `EventMessage` JSON text is the only copy of
/// its `data` and `meta` (parsed again only where a value is needed).
#[derive(Debug)]
pub struct StoredEvent {
    pub seq: u64,
    /// The room's epoch when it was accepted (see [`crate::protocol::dialogue::EventMessage`]).
    pub epoch: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub from: Arc<str>,
    /// The serialised `EventMessage`, built once when the event was triggered and reused by
    /// fan-out, every history page and the database write.
    pub json: Box<str>,
    /// Where `data` is in `json`.
    data: Range<usize>,
    /// Where `meta` is in `json`, if the event has one.
    meta: Option<Range<usize>>,
}

/// What an event weighs in memory besides its JSON text: the struct, its `Arc`, the sender
/// id and the allocator's rounding (used by the byte budgets of windows and the backlog).
pub const EVENT_OVERHEAD_BYTES: usize = 160;

impl StoredEvent {
    /// An event of `event` in `room_id`, with its `EventMessage` JSON; `data` and `meta` are
    /// anything serialisable as JSON (a parsed `Value` or raw JSON text).
    #[allow(clippy::too_many_arguments)]
    pub fn new<D: Serialize + ?Sized, M: Serialize + ?Sized>(
        room_id: &str,
        event: &str,
        seq: u64,
        epoch: u64,
        timestamp: i64,
        from: Arc<str>,
        data: &D,
        meta: Option<&M>,
    ) -> StoredEvent {
        let written = EventMessage {
            event,
            room_id,
            data,
            from: &from,
            timestamp,
            meta,
            seq,
            epoch,
        }
        .to_event_json();
        StoredEvent {
            seq,
            epoch,
            timestamp,
            from,
            json: written.json.into_boxed_str(),
            data: written.data,
            meta: written.meta,
        }
    }

    /// `data` as JSON text.
    pub fn data_json(&self) -> &str {
        &self.json[self.data.clone()]
    }

    /// `meta` as JSON text, if the event has one.
    pub fn meta_json(&self) -> Option<&str> {
        self.meta.clone().map(|range| &self.json[range])
    }

    /// `data` as raw JSON, to embed in another document unparsed.
    pub fn data_raw(&self) -> &RawValue {
        raw(self.data_json())
    }

    /// `meta` as raw JSON.
    pub fn meta_raw(&self) -> Option<&RawValue> {
        self.meta_json().map(raw)
    }

    /// `data` parsed (for a hook or an API answer that needs the value).
    pub fn data_value(&self) -> Value {
        serde_json::from_str(self.data_json()).unwrap_or(Value::Null)
    }

    /// `meta` parsed.
    pub fn meta_value(&self) -> Option<Value> {
        self.meta_json().and_then(|m| serde_json::from_str(m).ok())
    }

    /// Bytes this event holds in memory, for the byte budgets.
    pub fn weight(&self) -> usize {
        self.json.len() + EVENT_OVERHEAD_BYTES
    }

    /// What stands in for an event the database refused (kept in the quarantine table): same
    /// seq, epoch, sender and time, `data: null` and `meta: {"quarantined": true}`, so the
    /// stream stays gapless.
    pub fn tombstone(&self, room_id: &str, event: &str) -> StoredEvent {
        StoredEvent::new(
            room_id,
            event,
            self.seq,
            self.epoch,
            self.timestamp,
            self.from.clone(),
            &Value::Null,
            Some(&serde_json::json!({ "quarantined": true })),
        )
    }
}

// ---------------------------------------------------------------- room/directory → connection

/// Something for a connection to do, sent by rooms and the directory.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum ToConnection {
    /// A complete Engine.IO text frame to send as is (shared, serialised once).
    Frame { frame: ByteString },
    /// The room was deleted: forget the membership.
    RoomClosed { room_id: String },
    /// A room found the WebSocket send queue over its bound: the client is not reading.
    Overflowed,
    /// The session's offsets would track more than `recovery.maxStreams` streams: it is
    /// not recoverable any more.
    RecoveryOff,
    /// A recovering client took this session over: end it here, keep it recoverable.
    TakenOver,
    /// The server stops: close the socket (the session stays recoverable).
    ServerStopping,
}

// ---------------------------------------------------------------- connection → room

/// Adds a member. On success the room itself sends `dialogue:joined` and the join history —
/// or, with `since`, the events the client missed — down `outbox`, so they precede any event
/// fanned out afterwards.
#[derive(Message)]
#[rtype(result = "Result<JoinOutcome, DialogueError>")]
pub struct Join {
    pub conn: ConnId,
    pub identity: Arc<Identity>,
    pub outbox: Outbox,
    /// The last seq the client has of each event (see
    /// [`crate::protocol::dialogue::JoinRequest::since`]).
    pub since: Option<std::collections::BTreeMap<String, u64>>,
    /// The room's number in a recoverable session: its events carry the session's offset.
    pub slot: Option<u32>,
    /// Subscriptions to restore (a recovered session) instead of the room's defaults.
    pub subscriptions: Option<crate::recovery::SubscriptionSpec>,
    /// A recovered session: no `dialogue:joined` when the replay succeeds (the client never
    /// left); a replay that cannot be served joins afresh, with `dialogue:joined` and history
    /// (and the slot's offset positions start again).
    pub quiet: bool,
    /// The room's epoch the positions in `since` belong to.
    pub epoch: Option<u64>,
}

/// What a join did.
#[derive(Debug, Default)]
pub struct JoinOutcome {
    /// The resume report of a join with `since`.
    pub resume: Option<serde_json::Value>,
    /// Per event with history, the last seq when the member was added: what the join
    /// history and the replay covered. Empty when the connection was a member already.
    pub positions: std::collections::BTreeMap<String, u64>,
    /// The member's subscriptions.
    pub subscriptions: Option<crate::recovery::SubscriptionSpec>,
    /// The member was added (false: it was a member already, nothing changed).
    pub added: bool,
    /// The room's epoch.
    pub epoch: u64,
}

/// Removes a member; the room sends `dialogue:left`.
#[derive(Message)]
#[rtype(result = "Result<(), DialogueError>")]
pub struct Leave {
    pub conn: ConnId,
}

/// Removes a member whose connection closed (no reply is possible).
#[derive(Message)]
#[rtype(result = "()")]
pub struct MemberGone {
    pub conn: ConnId,
}

/// Changes a member's subscriptions.
#[derive(Message)]
#[rtype(result = "Result<SubscriptionChange, DialogueError>")]
pub struct SetSubscription {
    pub conn: ConnId,
    /// `None` = every event of the room (`subscribeAll`).
    pub event: Option<String>,
    pub subscribed: bool,
    /// Names the connection's lists in its other rooms hold.
    pub others: usize,
}

/// What a subscription change left.
#[derive(Debug)]
pub struct SubscriptionChange {
    /// Names the member's subscription list holds now.
    pub listed: usize,
    pub spec: crate::recovery::SubscriptionSpec,
    /// Events with history the member was not subscribed to before: their last seq now.
    pub newly: std::collections::BTreeMap<String, u64>,
}

/// Triggers an event into the room: validate, number, keep in history, fan out. The answer
/// goes to [`Trigger::reply`] — at once, or (`durability: stored`) once the event committed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Trigger {
    /// The member triggering it; `None` for server-side triggers (no membership needed).
    pub conn: Option<ConnId>,
    /// Who triggers it (`from` is its user id).
    pub identity: Arc<Identity>,
    pub event: String,
    pub data: Value,
    pub meta: Option<Value>,
    /// Return the stored `EventMessage` JSON (the HTTP API answers with it).
    pub echo: bool,
    /// Where the answer goes.
    pub reply: Reply,
    /// A trigger forwarded in a cluster: its key, the same on every attempt, so an owner that
    /// accepted it already answers the same seq instead of taking it twice.
    pub key: Option<String>,
}

/// Where a room sends a trigger's answer.
pub enum Reply {
    /// Straight to the client (a pipelined trigger).
    Ack(AckTo),
    /// To a waiting sender (the HTTP API, an awaited trigger). Dropped unanswered = the room
    /// stopped.
    Channel(tokio::sync::oneshot::Sender<Result<Triggered, DialogueError>>),
    /// To another node, which forwarded the trigger to this room's owner.
    Remote(crate::cluster::bus::Responder),
}

impl Reply {
    /// A reply the caller awaits, and the receiver to await it on.
    pub fn channel() -> (
        Reply,
        tokio::sync::oneshot::Receiver<Result<Triggered, DialogueError>>,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Reply::Channel(tx), rx)
    }

    pub fn answer(self, result: Result<Triggered, DialogueError>) {
        match self {
            Reply::Ack(ack) => ack.answer(&result),
            Reply::Channel(tx) => {
                let _ = tx.send(result);
            }
            Reply::Remote(respond) => respond.answer(result.map(|t| t.to_json())),
        }
    }
}

/// Where a room answers a client's trigger itself: the ack (and, on failure, the
/// `dialogue:error` event) goes straight into the member's outbox, so the connection need not
/// wait for the room between triggers. Dropped unanswered — the room stopped before handling
/// it — it answers ROOM_NOT_FOUND, so every trigger gets exactly one answer.
pub struct AckTo {
    ack: Option<u64>,
    outbox: Outbox,
    room_id: String,
    /// The connection's weight of triggers sent and not yet answered.
    in_flight: Arc<AtomicUsize>,
    /// This trigger's share of `in_flight`.
    weight: usize,
    answered: bool,
}

impl AckTo {
    /// Adds `weight` to `in_flight` until this is answered or dropped.
    pub fn new(
        ack: Option<u64>,
        outbox: Outbox,
        room_id: String,
        in_flight: Arc<AtomicUsize>,
        weight: usize,
    ) -> Self {
        in_flight.fetch_add(weight, Ordering::Relaxed);
        AckTo {
            ack,
            outbox,
            room_id,
            in_flight,
            weight,
            answered: false,
        }
    }

    /// Sends the answer: `{ok:true,seq}`, or the error as `dialogue:error` and ack.
    pub fn answer(mut self, result: &Result<Triggered, DialogueError>) {
        self.answered = true;
        match result {
            Ok(Triggered { seq, .. }) => {
                if let Some(id) = self.ack {
                    let ack = ack_ok(&format!("{{\"seq\":{seq}}}"));
                    self.outbox.frame(socketio::encode_ack(id, &ack).into());
                }
            }
            Err(error) => {
                let (code, room) = (error.code.as_str(), Some(self.room_id.as_str()));
                let source = crate::stats::ErrorSource::Client;
                crate::stats::record_error(source, code, &error.message, room, None);
                self.outbox.error(self.ack, error)
            }
        }
    }
}

impl Drop for AckTo {
    fn drop(&mut self) {
        if !self.answered {
            let error = DialogueError::room_not_found(&self.room_id);
            self.outbox.error(self.ack, &error);
        }
        self.in_flight.fetch_sub(self.weight, Ordering::Relaxed);
    }
}

/// An accepted event.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Triggered {
    pub seq: u64,
    /// The stored `EventMessage`, when [`Trigger::echo`] asked for it.
    pub json: Option<String>,
}

impl Triggered {
    /// As a forwarded trigger's answer carries it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

// ---------------------------------------------------------------- cluster → room

/// A request from another node for this room (it must own the room).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoteOp {
    pub op: crate::cluster::bus::Op,
    pub respond: crate::cluster::bus::Responder,
}

/// The live nodes changed: the room checks whether it should own itself or follow another
/// node, and hands itself over or takes over accordingly.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reassess;

/// Answers once the room is not this node's any more (everything it accepted written and
/// its lease given up) — at once for a replica (a clean stop of a cluster node).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WaitHandedOver;

/// A page of one event's history, newest first.
#[derive(Message)]
#[rtype(result = "Result<HistoryPage, DialogueError>")]
pub struct GetHistory {
    /// The member asking; `None` for server-side reads (no membership needed).
    pub conn: Option<ConnId>,
    pub event: String,
    pub range: HistoryRange,
}

/// Who is in the room: `{roomId, members: [{userId, connections}], users}` (users sorted by
/// id), serialised.
#[derive(Message)]
#[rtype(result = "Result<String, DialogueError>")]
pub struct GetPresence {
    /// The member asking; `None` for server-side reads.
    pub conn: Option<ConnId>,
}

/// The numbers the operator dashboard (`/admin`) shows of a room.
#[derive(Message)]
#[rtype(result = "RoomStats")]
pub struct GetRoomStats;

/// The answer to [`GetRoomStats`].
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomStats {
    pub id: String,
    pub name: String,
    /// Connections joined.
    pub members: usize,
    /// Distinct users among them.
    pub users: usize,
    /// Events published since the room started.
    pub published: u64,
    /// Their deliveries to members.
    pub delivered: u64,
    /// Each event type with history.
    pub history: Vec<StreamStats>,
    /// In a cluster: this node's part in the room (`owner`, `claiming`, `handing-over`,
    /// `replica`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// In a cluster: the node that owns the room, as this node knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// One (room, event) stream with history.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamStats {
    pub event: String,
    /// Events in the memory window.
    pub in_memory: usize,
    /// The highest seq the database has committed (events are numbered from 1 without gaps).
    pub stored: u64,
    /// The last seq handed out.
    pub last_seq: u64,
}

/// The answer to [`GetHistory`]: the `dialogue:historyResponse` object, serialised.
#[derive(Debug)]
pub struct HistoryPage {
    pub json: String,
}

/// Deletes the room: its history is persisted (the answer waits for the database), members
/// are told, the actor stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseRoom;

// ---------------------------------------------------------------- connection → directory

/// Finds a room's actor.
#[derive(Message)]
#[rtype(result = "Option<Addr<crate::actors::room::RoomActor>>")]
pub struct LookupRoom {
    pub room_id: String,
}

/// Every room's actor, by id.
#[derive(Message)]
#[rtype(result = "Vec<(String, Addr<crate::actors::room::RoomActor>)>")]
pub struct RoomAddrs;

/// Lists every room.
#[derive(Message)]
#[rtype(result = "Vec<RoomInfo>")]
pub struct ListRooms;

/// Creates a room at run time.
#[derive(Message)]
#[rtype(result = "Result<RoomInfo, DialogueError>")]
pub struct CreateRoom {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub max_size: Option<u32>,
    /// Event names the room carries (`["*"]` = any); `None` = every declared event.
    pub events: Option<Vec<String>>,
    /// `None` = all of the room's events.
    pub default_subscriptions: Option<Vec<String>>,
    /// Newest events per type sent on join (`usize::MAX` = the whole window).
    pub sync_history_on_join: Option<usize>,
    /// Join and leave notices (`dialogue:memberJoined` / `dialogue:memberLeft`).
    pub presence: bool,
    /// Who creates it (a trusted identity for the server API).
    pub identity: Arc<Identity>,
}

/// Deletes a room created at run time.
#[derive(Message)]
#[rtype(result = "Result<(), DialogueError>")]
pub struct DeleteRoom {
    pub room_id: String,
    /// Who asks (the hooks decide; by default the creator or an admin).
    pub identity: Arc<Identity>,
}

// ---------------------------------------------------------------- room → persistence

/// New events of one (room, event) stream, oldest first, contiguous `seq`.
#[derive(Clone)]
pub struct StreamRows {
    pub event: Arc<str>,
    pub events: Vec<Arc<StoredEvent>>,
}

/// The high-water mark of an event without history: its seq never goes below it again.
#[derive(Clone)]
pub struct CounterMark {
    pub event: Arc<str>,
    pub high_water: u64,
    /// Set the mark to exactly this (a clean stop gives back what was reserved ahead);
    /// otherwise it only ever rises.
    pub exact: bool,
}

/// What a room accepted during one mailbox drain, written in one transaction (with whatever
/// other rooms sent meanwhile: group commit). The store answers every batch with
/// [`Committed`], in the order the room sent them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PersistBatch {
    pub room_id: Arc<str>,
    /// The room instance's lease token: the write is refused (fenced) unless it still owns
    /// the room in the database.
    pub owner: Arc<str>,
    pub reply: Recipient<Committed>,
    pub streams: Vec<StreamRows>,
    pub counters: Vec<CounterMark>,
    /// Clients wait for this commit (`stored` events): write it without lingering.
    pub urgent: bool,
}

/// The store's answer to a room's oldest unanswered [`PersistBatch`].
#[derive(Message, Debug, Clone, Default)]
#[rtype(result = "()")]
pub struct Committed {
    /// Rows not written but kept in the quarantine table (the database refused them, or the
    /// room may no longer write them); every other row of the batch is in `messages`.
    pub quarantined: Vec<Quarantined>,
    /// Set when the room must stop writing (its lease is gone, or a seq it used holds another
    /// event): the reason.
    pub stop: Option<String>,
    /// The batch's counter marks were not written: no seq above what the database held before
    /// may be shown.
    pub counters_refused: bool,
}

/// An event the database refused: it is in the quarantine table, and — unless another event
/// holds its seq (a conflict) — a tombstone holds its seq in `messages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub event: Arc<str>,
    pub seq: u64,
    pub error: String,
}

/// Reads stored events `lo..=hi` of one (room, event), newest first: those still waiting to
/// be written as well as those in the database.
#[derive(Message)]
#[rtype(result = "Result<LoadedPage, DialogueError>")]
pub struct LoadRange {
    pub room_id: Arc<str>,
    pub event: Arc<str>,
    pub lo: u64,
    pub hi: u64,
    /// The answer holds the newest events of the range that fit (all of them when they do).
    pub budget: crate::history::PageBudget,
}

/// The answer to [`LoadRange`]: the events found, newest first.
#[derive(Debug, Default)]
pub struct LoadedPage {
    pub events: Vec<Arc<StoredEvent>>,
    /// The byte budget left some out (else every stored event of the range is here).
    pub cut: bool,
}

/// Takes ownership of a room in the database (its lease) and loads what the room starts
/// from. Refused while another room instance — in this process or another — holds a live
/// lease on it.
#[derive(Message, Clone)]
#[rtype(result = "Result<RoomRestore, String>")]
pub struct ClaimRoom {
    pub room_id: Arc<str>,
    pub owner: Arc<str>,
    /// History-enabled events with their window bounds (events, bytes).
    pub windows: Vec<(Arc<str>, u64, usize)>,
    /// Events without history (their counters are restored).
    pub counters: Vec<Arc<str>>,
}

/// The answer to [`ClaimRoom`].
#[derive(Debug, Default)]
pub struct RoomRestore {
    /// Grows by one each time the room is taken over after an unclean stop.
    pub epoch: u64,
    /// Per history-enabled event: the newest stored events (newest first) and the last seq.
    pub windows: Vec<(Arc<str>, StoredWindow)>,
    /// High-water marks of the room's events without history.
    pub counters: std::collections::HashMap<String, u64>,
}

/// One event's stored window.
#[derive(Debug, Default)]
pub struct StoredWindow {
    /// Newest first.
    pub events: Vec<Arc<StoredEvent>>,
    pub last_seq: u64,
}

/// Gives up a room's lease once everything it sent is written (the room was deleted).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReleaseRoom {
    pub room_id: Arc<str>,
    pub owner: Arc<str>,
}

/// Answers once every batch received before it is in the database.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WaitWritten;

/// The persistence actor as rooms see it.
#[derive(Clone)]
pub struct PersistenceLink {
    pub batches: Recipient<PersistBatch>,
    pub load: Recipient<LoadRange>,
    pub claim: Recipient<ClaimRoom>,
    pub release: Recipient<ReleaseRoom>,
    /// Events accepted but not yet written (shared with the persistence actor).
    pub backlog: Arc<std::sync::atomic::AtomicUsize>,
    /// Above this backlog, history-enabled triggers are refused with STORAGE_UNAVAILABLE.
    pub max_backlog: usize,
    /// What the backlog weighs in memory, in bytes (shared with the persistence actor).
    pub backlog_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// Above this many bytes the backlog refuses the same way.
    pub max_backlog_bytes: usize,
    /// Rooms still claiming and restoring their state from the store (for `/readyz`).
    pub restoring: Arc<std::sync::atomic::AtomicUsize>,
    /// Rooms whose writer stopped (fenced by another owner, or a conflict): `/readyz` fails.
    pub stopped: Arc<std::sync::atomic::AtomicUsize>,
    /// The database took the last write: `stored` triggers are refused while it does not.
    pub available: Arc<std::sync::atomic::AtomicBool>,
}

impl PersistenceLink {
    /// The backlog is at one of its bounds (events or bytes): refuse what would add to it.
    pub fn is_backlog_full(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.backlog.load(Relaxed) >= self.max_backlog
            || self.backlog_bytes.load(Relaxed) >= self.max_backlog_bytes
    }
}

// ---------------------------------------------------------------- shutdown

/// Hands everything the room accepted to the persistence actor, with exact counters
/// (graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushHistory;

/// Asks every room to flush its history; answers once all have.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushAll;

// ---------------------------------------------------------------- transports → connection

/// Why a transport request was refused (answered with HTTP 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    /// The session does not (or no longer) use this transport.
    WrongTransport,
    /// A Socket.IO/Engine.IO violation in the posted packets: the session closed.
    Violation,
    /// The session is closed.
    Closed,
}

/// A long-polling GET: the reply resolves with the packets to send (joined by `\x1e`).
#[derive(Message)]
#[rtype(result = "Result<tokio::sync::oneshot::Receiver<String>, TransportError>")]
pub struct Poll;

/// A long-polling POST body: packets separated by `\x1e`.
#[derive(Message)]
#[rtype(result = "Result<(), TransportError>")]
pub struct PostPackets {
    pub body: String,
}

/// A WebSocket opened for an existing polling session (the upgrade probe). Refused, the
/// sink comes back (the caller closes that WebSocket).
#[derive(Message)]
#[rtype(result = "Result<(), (TransportError, crate::http::websocket::WsSink)>")]
pub struct UpgradeStart {
    pub sink: crate::http::websocket::WsSink,
}

/// A message received on the upgrade WebSocket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UpgradeFrame {
    pub msg: Result<crate::http::websocket::WsMessage, crate::http::websocket::WsInboundError>,
}

/// Closes the session (a transport-level violation seen by an HTTP handler).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseSession {
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::websocket::{encode_text, WsSink};

    /// Stands in for a connection actor: the outbox needs one for what is not a frame.
    struct NoActor;
    impl Actor for NoActor {
        type Context = Context<Self>;
    }
    impl Handler<ToConnection> for NoActor {
        type Result = ();
        fn handle(&mut self, _: ToConnection, _: &mut Context<Self>) {}
    }

    #[actix_rt::test]
    async fn a_trigger_answers_once_even_when_its_room_drops_it() {
        let sink = WsSink::new(1 << 20);
        let outbox = Outbox::new(NoActor.start().recipient(), Some(sink.queue()), None);
        let in_flight = Arc::new(AtomicUsize::new(0));

        let answered = AckTo::new(Some(7), outbox.clone(), "r".into(), in_flight.clone(), 300);
        let dropped = AckTo::new(Some(8), outbox.clone(), "r".into(), in_flight.clone(), 200);
        assert_eq!(in_flight.load(Ordering::Relaxed), 500);
        answered.answer(&Ok(Triggered {
            seq: 41,
            json: None,
        }));
        assert_eq!(in_flight.load(Ordering::Relaxed), 200);
        drop(dropped);
        assert_eq!(in_flight.load(Ordering::Relaxed), 0);

        let gone = DialogueError::room_not_found("r");
        let mut expected = Vec::new();
        for text in [
            socketio::encode_ack(7, r#"{"ok":true,"seq":41}"#),
            socketio::encode_event("dialogue:error", &crate::protocol::dialogue::to_json(&gone)),
            socketio::encode_ack(8, &crate::protocol::dialogue::ack_err(&gone)),
        ] {
            expected.extend_from_slice(&encode_text(&text));
        }
        // Everything queued leaves in one chunk.
        assert_eq!(&sink.queue().take_all()[..], &expected[..]);
    }
}
