//! The connection actor: one per Socket.IO session. It decodes Engine.IO/Socket.IO packets,
//! holds the user's identity, joined rooms and rate limits, runs the heartbeat, and writes
//! frames to a bounded outbound queue (a client that stops reading is disconnected).
//!
//! Client requests are started in arrival order, so a `join` followed at once by a `trigger`
//! behaves as the client wrote it. A trigger into a room already joined is pipelined: it goes
//! to the room's mailbox at once and the room acks it itself (see [`AckTo`]). Any other
//! request is awaited: the requests after it wait until it is answered. A room's mailbox
//! keeps the order, so requests into one room are handled in the order sent.

use crate::actors::directory::{check_room_texts, Directory, RoomIndex};
use crate::actors::messages::*;
use crate::actors::outbox::{cork, Outbox};
use crate::actors::room::RoomActor;
use crate::auth::Identity;
use crate::config::Settings;
use crate::error::{DialogueError, ErrorCode};
use crate::hooks::Hooks;
use crate::http::polling::{records, PollingQueue, Record, Sessions};
use crate::http::websocket::{WsInboundError, WsMessage, WsSink};
use crate::http::IpSlot;
use crate::protocol::dialogue::{
    ack_ok, error_frames, parse_request, to_json, ClientRequest, MAX_SINCE_EVENTS,
};
use crate::protocol::engineio::{self, EioPacket};
use crate::protocol::socketio::{self, SioKind, SioPacket};
use crate::protocol::{self, storable};
use crate::recovery::{self, Offsets, SessionRoom, SessionState, SessionStore, StoredSession};
use actix::prelude::*;
use actix_http::ws::CloseCode;
use bytestring::ByteString;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A message may take at most this many times `server.maxPayload` once parsed (estimated by
/// [`protocol::parsed_json_weight`]); a larger one closes the connection.
const PARSED_PAYLOAD_FACTOR: usize = 8;

/// Requests a client may have waiting before further ones are refused.
const MAX_QUEUED_REQUESTS: usize = 256;

/// What a pipelined trigger weighs besides its parsed request: the message and its answer.
const TRIGGER_OVERHEAD: usize = 256;

/// A token bucket: `rate` per `per`, bursts up to `rate`. A rate of 0 never limits.
struct RateLimit {
    capacity: f64,
    tokens: f64,
    per_second: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: u32, per: Duration) -> Self {
        RateLimit {
            capacity: f64::from(rate),
            tokens: f64::from(rate),
            per_second: f64::from(rate) / per.as_secs_f64(),
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        if self.capacity == 0.0 {
            return true;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Work waiting in the per-connection queue.
enum Work {
    Client {
        request: ClientRequest,
        ack: Option<u64>,
        /// What it takes in memory ([`protocol::parsed_json_weight`] of its frame).
        weight: usize,
    },
    AutoJoin {
        room_id: String,
        room: Addr<RoomActor>,
        /// The client's positions in this room, from its CONNECT `auth.since`, and the
        /// room's epoch they belong to (`auth.epochs`).
        since: Option<(BTreeMap<String, u64>, Option<u64>)>,
    },
    /// A room of a recovered session: joined again, replaying what the client missed.
    Restore { room: SessionRoom },
}

/// The CONNECT's resume of the autoJoin rooms: per room, the positions (`auth.since`) and the
/// epoch they belong to (`auth.epochs`).
type AutoSince = BTreeMap<String, (BTreeMap<String, u64>, Option<u64>)>;

/// A recoverable session held by this connection (see [`crate::recovery`]).
struct Recoverable {
    pid: String,
    hash: String,
    state: SessionState,
    /// Shared with every room's member entry: what the session's events were sent with.
    offsets: Arc<Mutex<Offsets>>,
    /// The database has a row for it (a session that joined nothing has none).
    saved: bool,
}

type SaveFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>>>>;

/// The ack (if one was asked) that waits for a session save.
type AfterSave = Option<ByteString>;

/// What a finished request changes and answers.
enum Done {
    Joined {
        room_id: String,
        room: Addr<RoomActor>,
        outcome: JoinOutcome,
        ack: Option<u64>,
        spec: JoinSpec,
    },
    /// A recovered session's room could not be joined again: it is gone, or refused the join
    /// (`error`).
    RoomGone {
        room_id: String,
        error: Option<DialogueError>,
    },
    Left {
        room_id: String,
        ack: Option<u64>,
    },
    Reply {
        /// Event to emit: (name, payload JSON).
        emit: Option<(&'static str, String)>,
        ack: Option<u64>,
        /// Ack payload fields, a JSON object.
        ack_json: String,
    },
    Subscribed {
        room_id: String,
        change: SubscriptionChange,
        ack: Option<u64>,
        ack_json: String,
    },
    Failed {
        error: DialogueError,
        ack: Option<u64>,
    },
}

/// How a join was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JoinKind {
    Client,
    Auto,
    /// A room of a recovered session.
    Restore,
}

/// What a join asks of the room.
struct JoinSpec {
    kind: JoinKind,
    since: Option<BTreeMap<String, u64>>,
    /// The room's slot in the recoverable session.
    slot: Option<u32>,
    subscriptions: Option<recovery::SubscriptionSpec>,
    /// The room's epoch the positions in `since` belong to.
    epoch: Option<u64>,
}

enum TransportKind {
    WebSocket,
    Polling,
}

/// How a session talks to its client.
pub enum Transport {
    WebSocket(WsSink),
    Polling {
        queue: PollingQueue,
        /// A WebSocket being probed for the upgrade (`2probe` … `5`).
        probe: Option<WsSink>,
    },
}

/// One client session.
pub struct Connection {
    id: ConnId,
    /// Engine.IO session id.
    sid: String,
    /// Socket.IO socket id (`clientId` in `dialogue:connected`).
    socket_id: String,
    settings: Arc<Settings>,
    directory: Addr<Directory>,
    /// Room ids → room actors, read without asking the directory.
    room_index: RoomIndex,
    transport: Transport,
    /// Where the session is registered by sid (whatever its transport), to leave on close.
    sessions: Sessions,
    /// The session is closing: further input is ignored.
    closing: bool,
    /// Set once the Socket.IO CONNECT was accepted.
    identity: Option<Arc<Identity>>,
    hooks: Arc<dyn Hooks>,
    rooms: HashMap<String, Addr<RoomActor>>,
    /// Names each joined room's subscription list holds (bounded in all, see
    /// [`SetSubscription::others`]).
    listed: HashMap<String, usize>,
    queue: VecDeque<Work>,
    /// Frame bytes of the client requests in `queue`, bounded by
    /// `limits.maxQueuedRequestBytes` (a single request is always accepted).
    queued_bytes: usize,
    /// A request other than a pipelined trigger is being handled.
    busy: bool,
    /// Pipelined triggers not answered yet, weighed as frame bytes + [`TRIGGER_OVERHEAD`].
    /// Bounded by a quarter of `server.maxOutboundBytes`, so that a client's own burst cannot
    /// fill its outbound queue when the events come back to it; beyond that, the next
    /// trigger waits for its answer (and requests queue up to [`MAX_QUEUED_REQUESTS`]).
    in_flight: Arc<AtomicUsize>,
    /// A ping was sent and its pong has not come back.
    awaiting_pong: bool,
    triggers: RateLimit,
    history_reads: RateLimit,
    /// `limits.subscriptionsPerMinute`.
    subscriptions: RateLimit,
    /// Binary attachments still to be skipped, the ack id of their refused packet, and
    /// whether it was an event (answered with an error) rather than an ack (ignored).
    skipping_binary: Option<(u32, Option<u64>, bool)>,
    /// The client closed the session (Engine.IO close packet).
    client_closed: bool,
    /// Closes the connection if no CONNECT comes in time (after the handshake or a `41`).
    connect_timer: Option<SpawnHandle>,
    /// This session's place in the per-IP count, given back when the actor is dropped.
    _ip_slot: Option<IpSlot>,
    /// The session store; `None` when `recovery.enabled` is false.
    recovery: Option<SessionStore>,
    /// The recoverable session of the current Socket.IO connection.
    session: Option<Recoverable>,
    /// A CONNECT is being completed (its session is being looked up).
    connecting: bool,
    /// The connection began on HTTP long-polling (and may have upgraded since).
    began_polling: bool,
    /// Counts Socket.IO sessions on this connection (a `41` and a new CONNECT start another):
    /// work of an ended one must not touch the next.
    generation: u64,
}

impl Connection {
    /// A session over `transport`, identified by the Engine.IO `sid`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: ConnId,
        sid: String,
        settings: Arc<Settings>,
        directory: Addr<Directory>,
        hooks: Arc<dyn Hooks>,
        transport: Transport,
        sessions: Sessions,
        ip_slot: Option<IpSlot>,
        recovery: Option<SessionStore>,
        room_index: RoomIndex,
    ) -> Self {
        let limits = &settings.config.limits;
        let transport_kind = match &transport {
            Transport::WebSocket(_) => TransportKind::WebSocket,
            Transport::Polling { .. } => TransportKind::Polling,
        };
        Connection {
            id,
            sid,
            socket_id: uuid::Uuid::new_v4().simple().to_string(),
            triggers: RateLimit::new(limits.triggers_per_second, Duration::from_secs(1)),
            history_reads: RateLimit::new(
                limits.history_requests_per_minute,
                Duration::from_secs(60),
            ),
            subscriptions: RateLimit::new(limits.subscriptions_per_minute, Duration::from_secs(60)),
            settings,
            directory,
            room_index,
            transport,
            sessions,
            hooks,
            closing: false,
            identity: None,
            rooms: HashMap::new(),
            listed: HashMap::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            busy: false,
            in_flight: Arc::default(),
            awaiting_pong: false,
            skipping_binary: None,
            client_closed: false,
            connect_timer: None,
            _ip_slot: ip_slot,
            began_polling: matches!(transport_kind, TransportKind::Polling),
            recovery,
            session: None,
            connecting: false,
            generation: 0,
        }
    }

    /// Sends one text frame; a client too far behind is disconnected.
    fn send(&mut self, ctx: &mut Context<Self>, frame: ByteString) {
        let limit = self.settings.config.server.max_outbound_bytes;
        let ok = match &mut self.transport {
            Transport::WebSocket(sink) => sink.text(&frame).is_ok(),
            Transport::Polling { queue, .. } => queue.push(frame, limit),
        };
        if !ok {
            self.overflowed(ctx);
        }
    }

    /// The client is too far behind: disconnect it.
    fn overflowed(&mut self, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        log::warn!(
            "connection {} ({}) is not reading: more than {} bytes queued, disconnecting",
            self.id,
            self.identity.as_ref().map_or("-", |i| &*i.user_id),
            self.settings.config.server.max_outbound_bytes
        );
        self.abort(ctx, "outbound queue full");
    }

    /// Who this connection acts as (before CONNECT completes: its socket id as a user).
    fn identity(&self) -> Arc<Identity> {
        self.identity
            .clone()
            .unwrap_or_else(|| Arc::new(Identity::user(&self.socket_id)))
    }

    /// The handle rooms deliver through: the WebSocket queue itself on a WebSocket session.
    fn outbox(&self, ctx: &Context<Self>) -> Outbox {
        let direct = match &self.transport {
            // A recoverable session that began on polling keeps every room on the actor's
            // route: its offsets must follow one order, and rooms joined while polling
            // deliver through the actor for good.
            Transport::WebSocket(_) if self.began_polling && self.session.is_some() => None,
            Transport::WebSocket(sink) => Some(sink.queue()),
            Transport::Polling { .. } => None,
        };
        let offsets = self.session.as_ref().map(|s| s.offsets.clone());
        Outbox::new(ctx.address().recipient(), direct, offsets)
    }

    fn emit(&mut self, ctx: &mut Context<Self>, event: &str, payload_json: &str) {
        self.send(ctx, socketio::encode_event(event, payload_json).into());
    }

    fn reply_error(&mut self, ctx: &mut Context<Self>, ack: Option<u64>, error: &DialogueError) {
        log::debug!("connection {}: {error}", self.id);
        let user = self.identity.as_ref().map(|i| &*i.user_id);
        let source = crate::stats::ErrorSource::Client;
        crate::stats::record_error(source, error.code.as_str(), &error.message, None, user);
        for frame in error_frames(ack, error) {
            self.send(ctx, frame.into());
        }
    }

    fn close(&mut self, ctx: &mut Context<Self>, code: CloseCode, reason: &str) {
        self.end(ctx, code, reason, false);
    }

    /// Closes a client that is not reading: what is queued for it is dropped, not sent.
    fn abort(&mut self, ctx: &mut Context<Self>, reason: &str) {
        self.end(ctx, CloseCode::Policy, reason, true);
    }

    fn end(&mut self, ctx: &mut Context<Self>, code: CloseCode, reason: &str, discard: bool) {
        self.closing = true;
        match &mut self.transport {
            Transport::WebSocket(sink) if discard => sink.abort(code, reason),
            Transport::WebSocket(sink) => sink.close(code, reason),
            Transport::Polling { queue, probe, .. } => {
                queue.answer_waiting(engineio::CLOSE);
                if let Some(probe) = probe {
                    probe.close(code, reason);
                }
            }
        }
        ctx.stop();
    }

    /// A Socket.IO or Engine.IO protocol violation: this connection closes, nothing else.
    fn violation(&mut self, ctx: &mut Context<Self>, reason: &str) {
        log::info!("closing connection {}: {reason}", self.id);
        self.close(ctx, CloseCode::Protocol, reason);
    }

    fn on_text(&mut self, ctx: &mut Context<Self>, text: &str) {
        match engineio::decode(text) {
            Ok(EioPacket::Message(data)) => {
                // What the message will take once parsed, estimated before parsing: a message
                // that would take more than `PARSED_PAYLOAD_FACTOR` × maxPayload closes the
                // connection, as a frame over maxPayload does.
                let weight = protocol::parsed_json_weight(data);
                let max = self.settings.config.server.max_payload as usize;
                if weight > max.saturating_mul(PARSED_PAYLOAD_FACTOR) {
                    log::info!(
                        "closing connection {}: a message of {} bytes would take about {weight} bytes parsed",
                        self.id,
                        text.len()
                    );
                    return self.close(ctx, CloseCode::Size, "message too complex");
                }
                self.on_socketio(ctx, data, text.len(), weight)
            }
            Ok(EioPacket::Pong(_)) => self.awaiting_pong = false,
            Ok(EioPacket::Ping(data)) => {
                let pong = format!("3{data}");
                self.send(ctx, pong.into());
            }
            Ok(EioPacket::Close) => {
                // As the reference server: a GET waiting on the session gets a noop, the POST
                // that carried the close is answered "ok", the session is gone.
                self.client_closed = true;
                if let Transport::Polling { queue, .. } = &mut self.transport {
                    queue.answer_waiting(engineio::NOOP);
                }
                self.close(ctx, CloseCode::Normal, "client closed")
            }
            Ok(EioPacket::Noop | EioPacket::Upgrade) => {}
            Ok(EioPacket::Open(_)) => self.violation(ctx, "a client may not send an open packet"),
            Err(e) => self.violation(ctx, &e.to_string()),
        }
    }

    /// One Socket.IO packet; `frame_len` is its frame's length, `weight` what it takes once
    /// parsed ([`protocol::parsed_json_weight`]).
    fn on_socketio(
        &mut self,
        ctx: &mut Context<Self>,
        data: &str,
        frame_len: usize,
        weight: usize,
    ) {
        if self.skipping_binary.is_some() {
            return self.violation(ctx, "a text packet while binary attachments are due");
        }
        let packet = match socketio::decode(data) {
            Ok(packet) => packet,
            Err(e) => return self.violation(ctx, &e.to_string()),
        };
        // As the reference server: only `/` can be connected, and only a CONNECT may come
        // while it is not; a CONNECT while it is, or any packet for another namespace, is an
        // invalid state.
        let connected = self.identity.is_some();
        match packet.kind {
            SioKind::Connect if (connected || self.connecting) && packet.nsp == "/" => {
                return self.violation(ctx, "CONNECT on a namespace already connected");
            }
            SioKind::Connect => {}
            _ if !connected || packet.nsp != "/" => {
                return self.violation(ctx, "a packet for a namespace that is not connected");
            }
            _ => {}
        }
        match packet.kind {
            SioKind::Connect => self.on_connect(ctx, packet),
            SioKind::Event => {
                if self.identity.is_none() || packet.nsp != "/" {
                    return self.violation(ctx, "event on a namespace that is not connected");
                }
                self.on_event(ctx, packet, data, frame_len, weight);
            }
            SioKind::BinaryEvent | SioKind::BinaryAck => {
                if self.identity.is_none() {
                    return self.violation(ctx, "event before CONNECT");
                }
                // A binary event is refused once its attachments are in (and dropped); a
                // binary ack answers nothing the server asked, so it is ignored, as `43…` is.
                let event = packet.kind == SioKind::BinaryEvent;
                let ack = event.then_some(packet.id).flatten();
                if packet.attachments > 0 {
                    self.skipping_binary = Some((packet.attachments, ack, event));
                } else if event {
                    self.refuse_binary(ctx, ack);
                }
            }
            // The server never asks for acks, so there is nothing to match them with.
            SioKind::Ack => {}
            SioKind::Disconnect => self.leave_namespace(ctx, &packet.nsp),
            SioKind::ConnectError => self.violation(ctx, "CONNECT_ERROR is server-only"),
        }
    }

    /// The client left a namespace (`41`): in Socket.IO v5 the Engine.IO connection and its
    /// heartbeat stay, and the client may connect again (within the connect timeout).
    fn leave_namespace(&mut self, ctx: &mut Context<Self>, nsp: &str) {
        if nsp != "/" || self.identity.is_none() {
            return; // not connected there: nothing to leave
        }
        // The client left on purpose: its session is over.
        self.disconnect_socket(false);
        log::debug!("connection {} left the namespace", self.id);
        self.start_connect_timer(ctx);
    }

    /// Closes the connection unless a CONNECT comes within `server.connectTimeout`.
    fn start_connect_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.connect_timer.take() {
            ctx.cancel_future(timer);
        }
        let connect_timeout = Duration::from_millis(self.settings.config.server.connect_timeout);
        self.connect_timer = Some(ctx.run_later(connect_timeout, |act, ctx| {
            act.connect_timer = None;
            if act.identity.is_none() && !act.closing {
                act.close(ctx, CloseCode::Policy, "no Socket.IO CONNECT in time");
            }
        }));
    }

    /// Ends the Socket.IO session when its token expires: the client gets `dialogue:error`
    /// PERMISSION_DENIED and a server-side `41` (socket.io-client: "io server disconnect"); the
    /// connection stays, so the client may CONNECT again with a fresh token.
    fn expire_at(&mut self, ctx: &mut Context<Self>, expires_ms: i64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let delay = Duration::from_millis(expires_ms.saturating_sub(now).max(0) as u64);
        let socket = self.socket_id.clone();
        ctx.run_later(delay, move |act, ctx| {
            if act.identity.is_none() || act.socket_id != socket || act.closing {
                return; // that session ended already
            }
            log::info!("connection {}: the token expired", act.id);
            let error = DialogueError::new(
                ErrorCode::PermissionDenied,
                "the token expired; connect again with a fresh token",
            );
            act.reply_error(ctx, None, &error);
            act.send(ctx, socketio::encode_disconnect("/").into());
            act.disconnect_socket(false);
            act.start_connect_timer(ctx);
        });
    }

    /// Ends the Socket.IO session on this connection: its rooms, its identity, its requests.
    /// A `recoverable` end (the transport went away) keeps the session recoverable for
    /// `recovery.maxDisconnectionDuration`; otherwise (the client or its token ended it) it
    /// is deleted.
    fn disconnect_socket(&mut self, recoverable: bool) {
        self.generation += 1;
        if let (Some(session), Some(store)) = (self.session.take(), &self.recovery) {
            let off = session
                .offsets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_off();
            if store.release(&session.hash, self.id) && session.saved {
                if recoverable && !off {
                    store.disconnected(&session.hash);
                } else {
                    store.delete(&session.hash);
                }
            }
        }
        for room in self.rooms.values() {
            room.do_send(MemberGone { conn: self.id });
        }
        self.rooms.clear();
        self.listed.clear();
        self.queue.clear();
        self.queued_bytes = 0;
        if let Some(identity) = self.identity.take() {
            self.hooks.on_disconnected(&identity);
            crate::metrics::METRICS.connections.dec();
            self.room_index.unlisten(self.id);
        }
        // A later CONNECT is a new socket.
        self.socket_id = uuid::Uuid::new_v4().simple().to_string();
    }

    fn refuse_binary(&mut self, ctx: &mut Context<Self>, ack: Option<u64>) {
        let error = DialogueError::invalid("binary payloads are not supported; send JSON");
        self.reply_error(ctx, ack, &error);
    }

    fn on_binary(&mut self, ctx: &mut Context<Self>) {
        match self.skipping_binary {
            Some((left, ack, event)) if left > 1 => {
                self.skipping_binary = Some((left - 1, ack, event))
            }
            Some((_, ack, event)) => {
                self.skipping_binary = None;
                if event {
                    self.refuse_binary(ctx, ack);
                }
            }
            None => self.violation(ctx, "unexpected binary frame"),
        }
    }

    fn on_connect(&mut self, ctx: &mut Context<Self>, packet: SioPacket) {
        if packet.nsp != "/" {
            let frame = socketio::encode_connect_error(&packet.nsp, "Invalid namespace");
            return self.send(ctx, frame.into());
        }
        if let Some(timer) = self.connect_timer.take() {
            ctx.cancel_future(timer);
        }
        // Resume of the autoJoin rooms: `auth.since = {roomId: {event: seq}}`, and the epochs
        // those seqs came with, `auth.epochs = {roomId: epoch}`.
        let since = match packet.data.as_ref().and_then(|auth| auth.get("since")) {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(since) => match serde_json::from_value::<BTreeMap<String, BTreeMap<String, u64>>>(
                since.clone(),
            ) {
                Ok(since)
                    if since.values().map(BTreeMap::len).sum::<usize>() <= MAX_SINCE_EVENTS =>
                {
                    since
                }
                _ => {
                    let message = format!(
                        "auth.since must be {{roomId: {{eventName: seq}}}} with at most {MAX_SINCE_EVENTS} positions"
                    );
                    let frame = socketio::encode_connect_error("/", &message);
                    return self.send(ctx, frame.into());
                }
            },
        };
        let mut epochs = match packet.data.as_ref().and_then(|auth| auth.get("epochs")) {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(epochs) => match serde_json::from_value::<BTreeMap<String, u64>>(epochs.clone()) {
                Ok(epochs) if epochs.len() <= MAX_SINCE_EVENTS => epochs,
                _ => {
                    let message = "auth.epochs must be {roomId: epoch}";
                    let frame = socketio::encode_connect_error("/", message);
                    return self.send(ctx, frame.into());
                }
            },
        };
        let since: AutoSince = since
            .into_iter()
            .map(|(room, seqs)| {
                let epoch = epochs.remove(&room);
                (room, (seqs, epoch))
            })
            .collect();
        let identity = match self
            .hooks
            .authenticate(packet.data.as_ref(), &self.socket_id)
        {
            // Whatever the hooks answered, the user id is stored as `from` of its events.
            Ok(identity) => match storable::check_user_id(&identity.user_id) {
                Ok(()) => Arc::new(identity),
                Err(error) => {
                    log::info!("connection {} refused: {}", self.id, error.message);
                    let frame = socketio::encode_connect_error("/", &error.message);
                    return self.send(ctx, frame.into());
                }
            },
            Err(message) => {
                log::info!("connection {} refused: {message}", self.id);
                let frame = socketio::encode_connect_error("/", &message);
                return self.send(ctx, frame.into());
            }
        };
        // Connection-state recovery, unless the client opts out (`auth.recovery: false`: a
        // client whose handlers cannot take the offset argument, e.g. python-socketio).
        let wanted = packet
            .data
            .as_ref()
            .and_then(|auth| auth.get("recovery"))
            .and_then(Value::as_bool)
            != Some(false);
        // A client that had a session sends its pid and offset.
        let claim = match (&self.recovery, packet.data.as_ref().filter(|_| wanted)) {
            (Some(store), Some(auth)) => auth
                .get("pid")
                .and_then(Value::as_str)
                .filter(|pid| recovery::is_pid(pid))
                .map(|pid| {
                    let offset = auth
                        .get("offset")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    (store.clone(), pid.to_owned(), offset)
                }),
            _ => None,
        };
        let Some((store, pid, offset)) = claim else {
            return self.accept_connect(ctx, identity, since, wanted, None);
        };
        self.connecting = true;
        let load = {
            let pid = pid.clone();
            async move { store.load(&pid).await }
        };
        ctx.spawn(load.into_actor(self).map(move |loaded, act, ctx| {
            act.connecting = false;
            if act.closing {
                return;
            }
            // An anonymous client (open mode, no userId) is known by its socket id: its
            // session's pid is all it has to prove who it was.
            let anonymous = *identity.user_id == *act.socket_id;
            let identity = match &loaded {
                Ok(Some(stored))
                    if anonymous && stored.state.socket_id.as_deref() == Some(&*stored.user_id) =>
                {
                    Arc::new(Identity::user(&stored.user_id))
                }
                _ => identity,
            };
            let recovered = match loaded {
                // Bound to its identity: another user's pid recovers nothing.
                Ok(Some(stored)) if stored.user_id == *identity.user_id => {
                    match Offsets::parse(offset.as_deref().unwrap_or("")) {
                        Some(positions) => Some((pid, stored, positions)),
                        None => {
                            log::info!("connection {}: malformed recovery offset", act.id);
                            None
                        }
                    }
                }
                Ok(_) => None,
                Err(e) => {
                    log::warn!("connection {}: cannot look up its session: {e}", act.id);
                    None
                }
            };
            act.accept_connect(ctx, identity, since, true, recovered);
        }));
    }

    /// Completes a CONNECT: the session starts — recovered (its rooms are joined again and
    /// replay what the client missed) or new (the autoJoin rooms are joined).
    fn accept_connect(
        &mut self,
        ctx: &mut Context<Self>,
        identity: Arc<Identity>,
        since: AutoSince,
        recoverable: bool,
        recovered: Option<(String, StoredSession, recovery::Positions)>,
    ) {
        let user_id = identity.user_id.clone();
        let expires = identity.expires_at_ms();
        self.hooks.on_connected(&identity);
        self.identity = Some(identity);
        crate::metrics::METRICS.connections.inc();
        let mut restore = None;
        if let Some(store) = self.recovery.as_ref().filter(|_| recoverable) {
            let max_streams = store.config.max_streams;
            let seeded = recovered.and_then(|(pid, mut stored, mut positions)| {
                // A slot the offset names was given out, saved or not (a crash between a
                // join and its save): never give it out again.
                if let Some(&last) = positions.keys().next_back() {
                    stored.state.next_slot = stored.state.next_slot.max(last.saturating_add(1));
                }
                // Positions of rooms the session left since mean nothing now.
                positions.retain(|slot, _| stored.state.rooms.iter().any(|r| r.slot == *slot));
                let offsets = Offsets::seeded(max_streams, positions)?;
                Some((pid, stored, offsets))
            });
            let session = match seeded {
                Some((pid, stored, offsets)) => {
                    restore = Some(stored.state.rooms.clone());
                    if let Some(id) = &stored.state.socket_id {
                        self.socket_id = id.clone();
                    }
                    log::debug!(
                        "connection {} recovers a session of {user_id} (disconnected at {:?})",
                        self.id,
                        stored.disconnected_at
                    );
                    let hash = stored.pid_hash;
                    store.connected(&hash);
                    Recoverable {
                        hash,
                        pid,
                        state: stored.state,
                        offsets: Arc::new(Mutex::new(offsets)),
                        saved: true,
                    }
                }
                None => {
                    let pid = recovery::new_pid();
                    Recoverable {
                        hash: recovery::pid_hash(&pid),
                        pid,
                        state: SessionState {
                            socket_id: Some(self.socket_id.clone()),
                            ..SessionState::default()
                        },
                        offsets: Arc::new(Mutex::new(Offsets::new(max_streams))),
                        saved: false,
                    }
                }
            };
            // A connection that still holds it (a cut it has not noticed yet) lets it go.
            if let Some(old) = store.hold(&session.hash, self.id, ctx.address().recipient()) {
                old.do_send(ToConnection::TakenOver);
            }
            self.session = Some(session);
        }
        // After the socket id is final (a recovered session takes its old one back).
        if let Some(expires) = expires {
            self.expire_at(ctx, expires);
        }
        let pid = self.session.as_ref().map(|s| s.pid.as_str());
        let connect = socketio::encode_connect(&self.socket_id, pid);
        // The CONNECT answer and `dialogue:connected` leave together, as one write.
        let _cork = cork();
        self.send(ctx, connect.into());
        let mut connected = serde_json::json!({
            "clientId": self.socket_id,
            "userId": &*user_id,
        });
        if restore.is_some() {
            connected["recovered"] = true.into();
        }
        self.emit(ctx, "dialogue:connected", &to_json(&connected));
        log::debug!("connection {} is user {user_id}", self.id);

        // The autoJoin rooms (or the recovered session's rooms) are joined before any request
        // the client sends next. Work of an earlier Socket.IO session on this connection that
        // is still running is not waited for (its answer is dropped: another generation).
        self.busy = false;
        self.room_index.listen(self.id, self.outbox(ctx));
        if let Some(restore) = restore {
            for room in restore.into_iter().rev() {
                self.queue.push_front(Work::Restore { room });
            }
        } else {
            let mut since = since;
            for (room_id, room) in self.room_index.auto_join().into_iter().rev() {
                let since = since.remove(&room_id);
                self.queue.push_front(Work::AutoJoin {
                    room_id,
                    room,
                    since,
                });
            }
        }
        self.process_next(ctx);
    }

    /// An EVENT packet; `raw` is its text (the door checks look for a NUL escape in it).
    fn on_event(
        &mut self,
        ctx: &mut Context<Self>,
        packet: SioPacket,
        raw: &str,
        frame_len: usize,
        weight: usize,
    ) {
        let ack = packet.id;
        let Some(Value::Array(args)) = packet.data else {
            return; // decode() guarantees an array whose first item is the name
        };
        let mut args = args.into_iter();
        let name = match args.next() {
            Some(Value::String(name)) => name,
            _ => return,
        };
        let request = match parse_request(&name, args.next()) {
            Ok(request) => request,
            Err(error) => return self.reply_error(ctx, ack, &error),
        };
        // Nothing the database cannot store goes further (ids, NUL characters).
        if let Err(error) = request.check_storable(raw) {
            return self.reply_error(ctx, ack, &error);
        }
        // Oversized room texts take no place in the queue (and no time of the directory).
        if let ClientRequest::CreateRoom(c) = &request {
            let limits = &self.settings.config.limits;
            let checked = check_room_texts(limits, &c.name, c.description.as_deref());
            if let Err(error) = checked {
                return self.reply_error(ctx, ack, &error);
            }
        }
        let limited = match &request {
            ClientRequest::Trigger(_) => !self.triggers.allow(),
            ClientRequest::GetHistory(_) => !self.history_reads.allow(),
            ClientRequest::Subscribe(_)
            | ClientRequest::Unsubscribe(_)
            | ClientRequest::SubscribeAll(_) => !self.subscriptions.allow(),
            _ => false,
        };
        if limited {
            let error = DialogueError::new(
                ErrorCode::RateLimited,
                format!("too many {name} requests; slow down"),
            );
            return self.reply_error(ctx, ack, &error);
        }
        if let ClientRequest::Trigger(trigger) = &request {
            let max = self.settings.config.limits.max_payload_bytes;
            // The frame bounds the payload: only measure when the frame itself is larger.
            if frame_len > max {
                let size = to_json(&trigger.data).len()
                    + trigger.meta.as_ref().map_or(0, |m| to_json(m).len());
                if size > max {
                    let error = DialogueError::new(
                        ErrorCode::PayloadTooLarge,
                        format!("event data is {size} bytes; the limit is {max}"),
                    );
                    return self.reply_error(ctx, ack, &error);
                }
            }
        }
        let max_bytes = self.settings.config.limits.max_queued_request_bytes;
        let over_bytes = !self.queue.is_empty() && self.queued_bytes + weight > max_bytes;
        if self.queue.len() >= MAX_QUEUED_REQUESTS || over_bytes {
            let error = DialogueError::new(
                ErrorCode::RateLimited,
                "too many requests waiting; wait for answers before sending more",
            );
            return self.reply_error(ctx, ack, &error);
        }
        self.queued_bytes += weight;
        self.queue.push_back(Work::Client {
            request,
            ack,
            weight,
        });
        self.process_next(ctx);
    }

    /// Starts queued requests: pipelined triggers at once, then the next other request once
    /// none is running.
    fn process_next(&mut self, ctx: &mut Context<Self>) {
        while !self.busy {
            let Some(work) = self.queue.pop_front() else {
                return;
            };
            if let Work::Client { weight, .. } = &work {
                self.queued_bytes -= weight;
            }
            let Some(work) = self.pipeline(work, ctx) else {
                continue;
            };
            self.busy = true;
            let fut = self.start(work, ctx);
            ctx.spawn(fut.into_actor(self).map(|done, act, ctx| {
                if let Some((save, after)) = act.finish(ctx, done) {
                    // The answer waits until the session is saved.
                    let generation = act.generation;
                    ctx.spawn(save.into_actor(act).map(move |saved, act, ctx| {
                        if act.generation != generation {
                            return; // that Socket.IO session ended meanwhile
                        }
                        act.after_save(ctx, after, saved);
                        act.busy = false;
                        act.process_next(ctx);
                    }));
                    return;
                }
                act.busy = false;
                act.process_next(ctx);
            }));
        }
    }

    /// Sends a trigger into a joined room without waiting for it (the room acks it), or hands
    /// the work back when it must be awaited.
    fn pipeline(&mut self, work: Work, ctx: &mut Context<Self>) -> Option<Work> {
        let Work::Client {
            request: ClientRequest::Trigger(t),
            ack,
            weight,
        } = work
        else {
            return Some(work);
        };
        let held = weight + TRIGGER_OVERHEAD;
        let bound = self.settings.config.server.max_outbound_bytes / 4;
        let room = match self.rooms.get(&t.room_id) {
            Some(room) if self.in_flight.load(Ordering::Relaxed) + held <= bound => room,
            _ => {
                let request = ClientRequest::Trigger(t);
                return Some(Work::Client {
                    request,
                    ack,
                    weight,
                });
            }
        };
        let identity = self.identity();
        let in_flight = self.in_flight.clone();
        let reply = AckTo::new(ack, self.outbox(ctx), t.room_id, in_flight, held);
        room.do_send(Trigger {
            conn: Some(self.id),
            identity,
            event: t.event,
            data: t.data,
            meta: t.meta,
            echo: false,
            reply: Reply::Ack(reply),
            key: None,
        });
        None
    }

    /// The room actor for `room_id` if this connection joined it, else the reason it may not
    /// use it (unknown room, or not joined).
    fn joined_room(
        &self,
        room_id: String,
    ) -> impl std::future::Future<Output = Result<Addr<RoomActor>, DialogueError>> + 'static {
        let known = match self.rooms.get(&room_id) {
            Some(room) => Ok(room.clone()),
            None if self.room_index.get(&room_id).is_some() => {
                Err(DialogueError::not_in_room(&room_id))
            }
            None => Err(DialogueError::room_not_found(&room_id)),
        };
        async move { known }
    }

    fn start(
        &mut self,
        work: Work,
        ctx: &mut Context<Self>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Done>>> {
        let conn = self.id;
        let identity = self.identity();
        let outbox = self.outbox(ctx);
        let directory = self.directory.clone();
        let (request, ack) = match work {
            Work::AutoJoin {
                room_id,
                room,
                since,
            } => {
                let (since, epoch) = since.map_or((None, None), |(s, e)| (Some(s), e));
                let spec = JoinSpec {
                    kind: JoinKind::Auto,
                    since,
                    slot: self.slot_for(&room_id),
                    subscriptions: None,
                    epoch,
                };
                return Box::pin(join(room, room_id, spec, conn, identity, outbox, None));
            }
            Work::Restore { room: saved } => {
                let spec = JoinSpec {
                    kind: JoinKind::Restore,
                    since: Some(self.restore_since(&saved)),
                    slot: Some(saved.slot),
                    subscriptions: Some(saved.subscriptions),
                    epoch: Some(saved.epoch),
                };
                let room_id = saved.room;
                let found = self.room_index.get(&room_id);
                return Box::pin(async move {
                    match found {
                        Some(room) => join(room, room_id, spec, conn, identity, outbox, None).await,
                        None => Done::RoomGone {
                            room_id,
                            error: None,
                        },
                    }
                });
            }
            Work::Client { request, ack, .. } => (request, ack),
        };
        let gone = |room_id: &str| DialogueError::room_not_found(room_id);
        match request {
            ClientRequest::Join(r) => {
                let known = (self.rooms.get(&r.room_id).cloned())
                    .or_else(|| self.room_index.get(&r.room_id));
                let spec = JoinSpec {
                    kind: JoinKind::Client,
                    since: r.since,
                    slot: self.slot_for(&r.room_id),
                    subscriptions: None,
                    epoch: r.epoch,
                };
                Box::pin(async move {
                    let Some(room) = known else {
                        return Done::Failed {
                            error: gone(&r.room_id),
                            ack,
                        };
                    };
                    join(room, r.room_id, spec, conn, identity, outbox, ack).await
                })
            }
            ClientRequest::Leave(r) => {
                let room = self.joined_room(r.room_id.clone());
                Box::pin(async move {
                    let result = match room.await {
                        Ok(room) => room.send(Leave { conn }).await.unwrap_or(Ok(())),
                        Err(error) => Err(error),
                    };
                    match result {
                        Ok(()) => Done::Left {
                            room_id: r.room_id,
                            ack,
                        },
                        Err(error) => Done::Failed { error, ack },
                    }
                })
            }
            ClientRequest::Subscribe(r) => {
                self.subscription(r.room_id, Some(r.event_name), true, ack)
            }
            ClientRequest::Unsubscribe(r) => {
                self.subscription(r.room_id, Some(r.event_name), false, ack)
            }
            ClientRequest::SubscribeAll(r) => self.subscription(r.room_id, None, true, ack),
            ClientRequest::Trigger(t) => {
                let room = self.joined_room(t.room_id.clone());
                Box::pin(async move {
                    let room = match room.await {
                        Ok(room) => room,
                        Err(error) => return Done::Failed { error, ack },
                    };
                    let (reply, answer) = Reply::channel();
                    room.do_send(Trigger {
                        conn: Some(conn),
                        identity,
                        event: t.event,
                        data: t.data,
                        meta: t.meta,
                        echo: false,
                        reply,
                        key: None,
                    });
                    match answer.await {
                        Ok(Ok(Triggered { seq, .. })) => Done::Reply {
                            emit: None,
                            ack,
                            ack_json: format!("{{\"seq\":{seq}}}"),
                        },
                        Ok(Err(error)) => Done::Failed { error, ack },
                        Err(_) => Done::Failed {
                            error: gone(&t.room_id),
                            ack,
                        },
                    }
                })
            }
            ClientRequest::GetHistory(h) => {
                let room = self.joined_room(h.room_id.clone());
                Box::pin(async move {
                    let room = match room.await {
                        Ok(room) => room,
                        Err(error) => return Done::Failed { error, ack },
                    };
                    let read = GetHistory {
                        conn: Some(conn),
                        event: h.event_name,
                        range: h.range,
                    };
                    match room.send(read).await {
                        Ok(Ok(page)) => Done::Reply {
                            ack_json: page.json.clone(),
                            emit: Some(("dialogue:historyResponse", page.json)),
                            ack,
                        },
                        Ok(Err(error)) => Done::Failed { error, ack },
                        Err(_) => Done::Failed {
                            error: gone(&h.room_id),
                            ack,
                        },
                    }
                })
            }
            ClientRequest::Presence(r) => {
                let room = self.joined_room(r.room_id.clone());
                Box::pin(async move {
                    let room = match room.await {
                        Ok(room) => room,
                        Err(error) => return Done::Failed { error, ack },
                    };
                    match room.send(GetPresence { conn: Some(conn) }).await {
                        Ok(Ok(json)) => Done::Reply {
                            ack_json: json.clone(),
                            emit: Some(("dialogue:presence", json)),
                            ack,
                        },
                        Ok(Err(error)) => Done::Failed { error, ack },
                        Err(_) => Done::Failed {
                            error: gone(&r.room_id),
                            ack,
                        },
                    }
                })
            }
            ClientRequest::ListRooms => Box::pin(async move {
                let rooms = directory.send(ListRooms).await.unwrap_or_default();
                let json = to_json(&rooms);
                Done::Reply {
                    ack_json: format!("{{\"rooms\":{json}}}"),
                    emit: Some(("dialogue:rooms", json)),
                    ack,
                }
            }),
            ClientRequest::CreateRoom(c) => Box::pin(async move {
                let create = CreateRoom {
                    id: c.id,
                    name: c.name,
                    description: c.description,
                    max_size: c.max_size,
                    events: None,
                    default_subscriptions: None,
                    sync_history_on_join: None,
                    presence: c.presence,
                    identity,
                };
                match directory.send(create).await {
                    // The directory announces `dialogue:roomCreated` to every client.
                    Ok(Ok(info)) => Done::Reply {
                        emit: None,
                        ack,
                        ack_json: to_json(&info),
                    },
                    Ok(Err(error)) => Done::Failed { error, ack },
                    Err(_) => Done::Failed {
                        error: DialogueError::invalid("the room directory is not running"),
                        ack,
                    },
                }
            }),
            ClientRequest::DeleteRoom(d) => Box::pin(async move {
                let delete = DeleteRoom {
                    room_id: d.room_id.clone(),
                    identity,
                };
                match directory.send(delete).await {
                    Ok(Ok(())) => Done::Reply {
                        emit: None,
                        ack,
                        ack_json: to_json(&serde_json::json!({ "roomId": d.room_id })),
                    },
                    Ok(Err(error)) => Done::Failed { error, ack },
                    Err(_) => Done::Failed {
                        error: gone(&d.room_id),
                        ack,
                    },
                }
            }),
        }
    }

    fn subscription(
        &self,
        room_id: String,
        event: Option<String>,
        subscribed: bool,
        ack: Option<u64>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Done>>> {
        let room = self.joined_room(room_id.clone());
        let conn = self.id;
        let others = self
            .listed
            .iter()
            .filter(|(id, _)| **id != room_id)
            .map(|(_, n)| n)
            .sum();
        Box::pin(async move {
            let room = match room.await {
                Ok(room) => room,
                Err(error) => return Done::Failed { error, ack },
            };
            let change = SetSubscription {
                conn,
                event: event.clone(),
                subscribed,
                others,
            };
            match room.send(change).await {
                Ok(Ok(change)) => Done::Subscribed {
                    ack_json: to_json(&serde_json::json!({
                        "roomId": room_id,
                        "eventName": event,
                    })),
                    room_id,
                    change,
                    ack,
                },
                Ok(Err(error)) => Done::Failed { error, ack },
                Err(_) => Done::Failed {
                    error: DialogueError::room_not_found(&room_id),
                    ack,
                },
            }
        })
    }

    /// Applies a finished request and answers it — or, when the recoverable session changed,
    /// hands back its save and what follows it (the answer waits for the save).
    fn finish(&mut self, ctx: &mut Context<Self>, done: Done) -> Option<(SaveFuture, AfterSave)> {
        match done {
            Done::Joined {
                room_id,
                room,
                outcome,
                ack,
                spec,
            } => {
                if self.identity.is_none() {
                    // The client left the namespace while this join ran.
                    room.do_send(MemberGone { conn: self.id });
                    return None;
                }
                let ack_frame: Option<ByteString> = ack.map(|id| {
                    let json = match &outcome.resume {
                        Some(resume) => {
                            to_json(&serde_json::json!({ "roomId": room_id, "resume": resume }))
                        }
                        None => to_json(&serde_json::json!({ "roomId": room_id })),
                    };
                    socketio::encode_ack(id, &ack_ok(&json)).into()
                });
                self.rooms.insert(room_id.clone(), room);
                if self.session_joined(&room_id, outcome, &spec) {
                    if let Some(save) = self.save_session() {
                        return Some((save, ack_frame));
                    }
                }
                if let Some(frame) = ack_frame {
                    self.send(ctx, frame);
                }
            }
            Done::RoomGone { room_id, error } => {
                // The client believes it is still in the room: tell it otherwise.
                log::debug!("connection {}: room '{room_id}' not restored", self.id);
                if let Some(error) = &error {
                    self.reply_error(ctx, None, error);
                }
                let left = to_json(&serde_json::json!({ "roomId": room_id }));
                self.emit(ctx, "dialogue:left", &left);
                if self.session_left(&room_id) {
                    return self.save_session().map(|save| (save, None));
                }
            }
            Done::Left { room_id, ack } => {
                let ack_frame: Option<ByteString> = ack.map(|id| {
                    let json = to_json(&serde_json::json!({ "roomId": room_id }));
                    socketio::encode_ack(id, &ack_ok(&json)).into()
                });
                self.rooms.remove(&room_id);
                self.listed.remove(&room_id);
                if self.session_left(&room_id) {
                    if let Some(save) = self.save_session() {
                        return Some((save, ack_frame));
                    }
                }
                if let Some(frame) = ack_frame {
                    self.send(ctx, frame);
                }
            }
            Done::Subscribed {
                room_id,
                change,
                ack,
                ack_json,
            } => {
                self.listed.insert(room_id.clone(), change.listed);
                let ack_frame: Option<ByteString> =
                    ack.map(|id| socketio::encode_ack(id, &ack_ok(&ack_json)).into());
                let changed = match self
                    .session
                    .as_mut()
                    .and_then(|s| s.state.room_mut(&room_id))
                {
                    Some(saved) => {
                        saved.subscriptions = change.spec;
                        // What was sent while unsubscribed is not owed.
                        for (event, seq) in change.newly {
                            let base = saved.base.entry(event).or_insert(0);
                            *base = (*base).max(seq);
                        }
                        true
                    }
                    None => false,
                };
                if changed {
                    if let Some(save) = self.save_session() {
                        return Some((save, ack_frame));
                    }
                }
                if let Some(frame) = ack_frame {
                    self.send(ctx, frame);
                }
            }
            Done::Reply {
                emit,
                ack,
                ack_json,
            } => {
                if let Some((event, json)) = emit {
                    self.emit(ctx, event, &json);
                }
                if let Some(id) = ack {
                    self.send(ctx, socketio::encode_ack(id, &ack_ok(&ack_json)).into());
                }
            }
            Done::Failed { error, ack } => self.reply_error(ctx, ack, &error),
        }
        None
    }

    /// Answers a request whose session save finished. A session the database did not take
    /// in time stops being recoverable; the request stands.
    fn after_save(&mut self, ctx: &mut Context<Self>, ack: AfterSave, saved: Result<(), String>) {
        if let Err(e) = saved {
            self.recovery_off(&e);
        }
        if let Some(frame) = ack {
            self.send(ctx, frame);
        }
    }

    /// The slot a room has (or gets) in the recoverable session.
    fn slot_for(&mut self, room_id: &str) -> Option<u32> {
        let session = self.session.as_mut()?;
        if let Some(saved) = session.state.room(room_id) {
            return Some(saved.slot);
        }
        let slot = session.state.next_slot;
        session.state.next_slot += 1;
        Some(slot)
    }

    /// Where a recovered room resumes: per event, the later of its join position and the
    /// client's offset.
    fn restore_since(&self, saved: &SessionRoom) -> BTreeMap<String, u64> {
        let mut since = saved.base.clone();
        if let Some(session) = &self.session {
            let offsets = session.offsets.lock().unwrap_or_else(|e| e.into_inner());
            for (event, seq) in offsets.of_slot(saved.slot) {
                let at = since.entry(event.to_owned()).or_insert(0);
                *at = (*at).max(seq);
            }
        }
        since
    }

    /// Records a join in the recoverable session; true if it changed what must be saved.
    fn session_joined(&mut self, room_id: &str, outcome: JoinOutcome, spec: &JoinSpec) -> bool {
        let (Some(session), Some(slot)) = (self.session.as_mut(), spec.slot) else {
            return false;
        };
        if !outcome.added {
            return false; // a member already: nothing changed
        }
        let resumed = outcome
            .resume
            .as_ref()
            .and_then(|r| r.get("resumed"))
            .and_then(Value::as_bool)
            == Some(true);
        let mut base = outcome.positions;
        if spec.kind == JoinKind::Restore {
            if resumed {
                // Replayed from where the client was: the saved base holds; the room's epoch
                // is the one its offsets follow now.
                return match session.state.room_mut(room_id) {
                    Some(saved) if saved.epoch != outcome.epoch => {
                        saved.epoch = outcome.epoch;
                        true
                    }
                    _ => false,
                };
            }
            // Joined afresh, with the join history (the room reset the slot's positions).
        } else if resumed {
            // A native resume replays from the client's positions: those are its base.
            for (event, seen) in spec.since.iter().flatten() {
                if let Some(at) = base.get_mut(event) {
                    *at = (*at).min(*seen);
                }
            }
        }
        session.state.rooms.retain(|r| r.room != room_id);
        session.state.rooms.push(SessionRoom {
            slot,
            room: room_id.to_owned(),
            subscriptions: outcome
                .subscriptions
                .unwrap_or(recovery::SubscriptionSpec::All),
            base,
            epoch: outcome.epoch,
        });
        true
    }

    /// Removes a room from the recoverable session; true if it was there.
    fn session_left(&mut self, room_id: &str) -> bool {
        let Some(session) = self.session.as_mut() else {
            return false;
        };
        let Some(slot) = session.state.remove(room_id) else {
            return false;
        };
        session
            .offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(slot);
        true
    }

    /// Saves the recoverable session; `None` when there is none (or it stopped being one).
    fn save_session(&mut self) -> Option<SaveFuture> {
        let store = self.recovery.as_ref()?;
        let identity = self.identity.as_ref()?;
        let session = self.session.as_mut()?;
        if session
            .offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_off()
            || !store.holds(&session.hash, self.id)
        {
            return None;
        }
        session.saved = true;
        Some(Box::pin(store.save(
            &session.hash,
            &identity.user_id,
            &session.state,
        )))
    }

    /// The session cannot be recovered any more: its events carry no offset from now on and
    /// its row is deleted (its client gets a new session when it reconnects).
    fn recovery_off(&mut self, why: &str) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        log::warn!(
            "connection {}: its session is not recoverable any more: {why}",
            self.id
        );
        session
            .offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .turn_off();
        if let (Some(store), true) = (&self.recovery, session.saved) {
            store.delete(&session.hash);
        }
        session.saved = false;
    }

    /// Disconnects a WebSocket client whose socket has taken no bytes for
    /// `server.writeTimeout` while some were waiting (it stopped reading).
    fn check_write_progress(&mut self, ctx: &mut Context<Self>) {
        let Transport::WebSocket(sink) = &self.transport else {
            return;
        };
        let timeout = Duration::from_millis(self.settings.config.server.write_timeout);
        if self.closing || sink.queue().stalled_for().is_none_or(|s| s < timeout) {
            return;
        }
        log::warn!(
            "connection {} ({}): no write progress for {} ms, disconnecting",
            self.id,
            self.identity.as_ref().map_or("-", |i| &*i.user_id),
            timeout.as_millis()
        );
        self.abort(ctx, "not reading");
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let server = &self.settings.config.server;
        let timeout = Duration::from_millis(server.ping_timeout);
        self.awaiting_pong = true;
        self.send(ctx, engineio::PING.into());
        ctx.run_later(timeout, |act, ctx| {
            if act.awaiting_pong {
                log::debug!("connection {}: no pong within pingTimeout", act.id);
                act.close(ctx, CloseCode::Away, "ping timeout");
            }
        });
    }
}

/// Joins `room` and reports the outcome.
async fn join(
    room: Addr<RoomActor>,
    room_id: String,
    spec: JoinSpec,
    conn: ConnId,
    identity: Arc<Identity>,
    outbox: Outbox,
    ack: Option<u64>,
) -> Done {
    let asked = Join {
        conn,
        identity,
        outbox,
        since: spec.since.clone(),
        slot: spec.slot,
        subscriptions: spec.subscriptions.clone(),
        quiet: spec.kind == JoinKind::Restore,
        epoch: spec.epoch,
    };
    match room.send(asked).await {
        Ok(Ok(outcome)) => Done::Joined {
            room_id,
            room,
            outcome,
            ack,
            spec,
        },
        Ok(Err(error)) if spec.kind == JoinKind::Restore => Done::RoomGone {
            room_id,
            error: Some(error),
        },
        Ok(Err(error)) => Done::Failed { error, ack },
        Err(_) if spec.kind == JoinKind::Restore => Done::RoomGone {
            room_id,
            error: None,
        },
        Err(_) => Done::Failed {
            error: DialogueError::room_not_found(&room_id),
            ack,
        },
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Rooms fan out with `do_send`, which ignores this bound; it only throttles `send`.
        ctx.set_mailbox_capacity(1024);
        let server = &self.settings.config.server;
        let upgrades: &[&str] = match self.transport {
            Transport::Polling { .. } => &["websocket"],
            Transport::WebSocket(_) => &[],
        };
        let open = engineio::encode_open(&engineio::Handshake {
            sid: &self.sid,
            upgrades,
            ping_interval: server.ping_interval,
            ping_timeout: server.ping_timeout,
            max_payload: server.max_payload,
        });
        let interval = Duration::from_millis(server.ping_interval);
        self.send(ctx, open.into());
        ctx.run_interval(interval, |act, ctx| act.heartbeat(ctx));
        let write_timeout = self.settings.config.server.write_timeout;
        if write_timeout > 0 {
            // Checked four times per timeout: a stalled reader goes within 1.25 × the timeout.
            let every = Duration::from_millis((write_timeout / 4).max(50));
            ctx.run_interval(every, |act, ctx| act.check_write_progress(ctx));
        }
        self.start_connect_timer(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        match &mut self.transport {
            Transport::WebSocket(sink) => sink.close(CloseCode::Normal, "connection closed"),
            Transport::Polling { queue, probe } => {
                queue.answer_waiting(engineio::CLOSE);
                if let Some(probe) = probe {
                    probe.close(CloseCode::Normal, "connection closed");
                }
            }
        }
        self.sessions.remove(&self.sid);
        self.disconnect_socket(true);
        log::debug!("connection {} closed", self.id);
    }
}

impl Connection {
    /// One message from the session's WebSocket.
    fn on_ws_message(&mut self, ctx: &mut Context<Self>, msg: Result<WsMessage, WsInboundError>) {
        if self.closing {
            return;
        }
        match msg {
            Ok(WsMessage::Text(text)) => self.on_text(ctx, &text),
            Ok(WsMessage::Binary(_)) => self.on_binary(ctx),
            Ok(WsMessage::Ping(data)) => {
                let full = match &mut self.transport {
                    Transport::WebSocket(sink) => sink.pong(data).is_err(),
                    Transport::Polling { .. } => false,
                };
                if full {
                    self.abort(ctx, "outbound queue full");
                }
            }
            Ok(WsMessage::Close) => self.close(ctx, CloseCode::Normal, "bye"),
            Err(WsInboundError::TooLarge(max)) => {
                log::info!("closing connection {}: message over {max} bytes", self.id);
                self.close(ctx, CloseCode::Size, "message too large");
            }
            Err(e) => self.violation(ctx, &e.to_string()),
        }
    }

    /// A message on the WebSocket probed for an upgrade from polling.
    fn on_probe_message(
        &mut self,
        ctx: &mut Context<Self>,
        msg: Result<WsMessage, WsInboundError>,
    ) {
        let Transport::Polling { queue, probe, .. } = &mut self.transport else {
            return self.on_ws_message(ctx, msg);
        };
        match msg {
            Ok(WsMessage::Text(text)) if &*text == "2probe" => {
                if let Some(probe) = probe {
                    let _ = probe.text(engineio::PONG_PROBE);
                }
                // End the pending GET so the client can pause polling and send `5`.
                queue.answer_waiting(engineio::NOOP);
            }
            Ok(WsMessage::Text(text)) if &*text == "5" => {
                let Some(mut sink) = probe.take() else {
                    return self.violation(ctx, "upgrade without a probe");
                };
                // Packets still queued for polling go first, over the WebSocket, in order.
                for frame in queue.take_frames() {
                    let _ = sink.text(&frame);
                }
                queue.answer_waiting(engineio::NOOP);
                // The sid stays registered: later polling requests get 400 Bad request, a
                // second WebSocket is closed at once.
                self.transport = Transport::WebSocket(sink);
                log::debug!("connection {} upgraded to websocket", self.id);
            }
            Ok(WsMessage::Close) | Err(_) => {
                // The probe failed; the session carries on polling.
                *probe = None;
            }
            other => self.on_ws_message(ctx, other),
        }
    }
}

impl StreamHandler<Result<WsMessage, WsInboundError>> for Connection {
    fn handle(&mut self, msg: Result<WsMessage, WsInboundError>, ctx: &mut Self::Context) {
        // The frames one request answers with leave together.
        let _cork = cork();
        self.on_ws_message(ctx, msg);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<UpgradeFrame> for Connection {
    type Result = ();

    fn handle(&mut self, msg: UpgradeFrame, ctx: &mut Self::Context) {
        match msg.msg {
            // The upgraded socket ended: so does the session.
            Ok(WsMessage::Close) if matches!(self.transport, Transport::WebSocket(_)) => {
                self.close(ctx, CloseCode::Normal, "bye")
            }
            msg => self.on_probe_message(ctx, msg),
        }
    }
}

impl Handler<UpgradeStart> for Connection {
    type Result = Result<(), (TransportError, crate::http::websocket::WsSink)>;

    fn handle(&mut self, msg: UpgradeStart, _: &mut Self::Context) -> Self::Result {
        match &mut self.transport {
            _ if self.closing => Err((TransportError::Closed, msg.sink)),
            Transport::Polling { probe, .. } if probe.is_none() => {
                *probe = Some(msg.sink);
                Ok(())
            }
            _ => Err((TransportError::WrongTransport, msg.sink)),
        }
    }
}

impl Handler<Poll> for Connection {
    type Result = Result<tokio::sync::oneshot::Receiver<String>, TransportError>;

    fn handle(&mut self, _: Poll, _: &mut Self::Context) -> Self::Result {
        match &mut self.transport {
            Transport::Polling { queue, probe, .. } => {
                // While an upgrade is probed, a GET never waits (the client wants to pause).
                let idle = probe.as_ref().map(|_| engineio::NOOP);
                Ok(queue.poll(idle))
            }
            Transport::WebSocket(_) => Err(TransportError::WrongTransport),
        }
    }
}

impl Handler<PostPackets> for Connection {
    type Result = Result<(), TransportError>;

    fn handle(&mut self, msg: PostPackets, ctx: &mut Self::Context) -> Self::Result {
        if !matches!(self.transport, Transport::Polling { .. }) {
            return Err(TransportError::WrongTransport);
        }
        for record in records(&msg.body) {
            if self.closing {
                break;
            }
            match record {
                Record::Binary(_) => self.on_binary(ctx),
                Record::Text(packet) => self.on_text(ctx, packet),
            }
        }
        if self.closing && !self.client_closed {
            Err(TransportError::Violation)
        } else {
            Ok(())
        }
    }
}

impl Handler<CloseSession> for Connection {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        self.violation(ctx, msg.reason);
    }
}

impl Handler<ToConnection> for Connection {
    type Result = ();

    fn handle(&mut self, msg: ToConnection, ctx: &mut Self::Context) {
        match msg {
            ToConnection::Frame { frame } => self.send(ctx, frame),
            ToConnection::RoomClosed { room_id } => {
                self.rooms.remove(&room_id);
                self.listed.remove(&room_id);
                if self.session_left(&room_id) {
                    if let Some(save) = self.save_session() {
                        ctx.spawn(save.into_actor(self).map(|saved, act, _| {
                            if let Err(e) = saved {
                                act.recovery_off(&e);
                            }
                        }));
                    }
                }
            }
            ToConnection::Overflowed => self.overflowed(ctx),
            ToConnection::RecoveryOff => self.recovery_off(&format!(
                "it would track more than {} streams (recovery.maxStreams)",
                self.recovery.as_ref().map_or(0, |r| r.config.max_streams)
            )),
            ToConnection::ServerStopping => self.close(ctx, CloseCode::Away, "server stopping"),
            ToConnection::TakenOver => {
                log::debug!(
                    "connection {}: its session was recovered elsewhere",
                    self.id
                );
                // The new holder has it: this end changes nothing in the database.
                self.session = None;
                self.close(
                    ctx,
                    CloseCode::Normal,
                    "session recovered on another connection",
                );
            }
        }
    }
}
