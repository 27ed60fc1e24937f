//! The room actor: members and their subscriptions, validation, fan-out, and a history
//! window per history-enabled event. Evicted events go to the persistence actor as batches;
//! history pages reaching past the window are completed from it.

use crate::actors::messages::*;
use crate::actors::outbox::{Outbox, SharedFrame};
use crate::auth::Identity;
use crate::error::{DialogueError, ErrorCode};
use crate::events::{EventCatalog, EventDef};
use crate::history::{cursor_to_seqs, offsets_to_seqs, EventHistory, SeqRange};
use crate::hooks::Hooks;
use crate::metrics::{EventCounters, METRICS};
use crate::protocol::dialogue::{to_json, EventMessage, HistoryRange, RoomInfo};
use crate::protocol::socketio::encode_event;
use actix::prelude::*;
use bytestring::ByteString;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Requests a room queues before `send`ers wait (connections send one request at a time).
pub const MAILBOX_CAPACITY: usize = 1 << 16;
/// Most distinct event names a `"*"` room keeps counters for.
const MAX_WILDCARD_EVENTS: usize = 1000;
/// Longest event name accepted (the database column is 100 characters).
const MAX_EVENT_NAME: usize = 100;

/// What a room is, fixed at creation. Shared with the directory for listings.
#[derive(Debug)]
pub struct RoomShared {
    pub id: Arc<str>,
    pub name: String,
    pub description: Option<String>,
    pub max_size: Option<u32>,
    /// `None` = any event (`["*"]`).
    pub events: Option<Vec<String>>,
    /// `None` = all of the room's events.
    pub default_subscriptions: Option<Vec<String>>,
    /// Newest events per event type sent on join; `None` = no sync, `Some(usize::MAX)` = all.
    pub sync_history_on_join: Option<usize>,
    pub auto_join: bool,
    /// Set for rooms created at run time.
    pub created_by: Option<Arc<str>>,
    /// Current member count, kept by the room actor.
    pub size: AtomicUsize,
}

impl RoomShared {
    pub fn info(&self) -> RoomInfo {
        RoomInfo {
            id: self.id.to_string(),
            name: self.name.clone(),
            description: self.description.clone(),
            size: self.size.load(Ordering::Relaxed),
            max_size: self.max_size,
            events: self.events.clone().unwrap_or_else(|| vec!["*".to_owned()]),
            created_by: self.created_by.as_ref().map(|u| u.to_string()),
        }
    }
}

enum Subscriptions {
    All,
    Only(HashSet<String>),
    /// Every event but these (unsubscribing one event of a `"*"` room).
    AllExcept(HashSet<String>),
}

impl Subscriptions {
    fn contains(&self, event: &str) -> bool {
        match self {
            Subscriptions::All => true,
            Subscriptions::Only(set) => set.contains(event),
            Subscriptions::AllExcept(set) => !set.contains(event),
        }
    }
}

struct Member {
    outbox: Outbox,
    subscriptions: Subscriptions,
    identity: Arc<Identity>,
}

/// Per event type: its definition, its counter, and its window when history is enabled.
struct EventState {
    def: Arc<EventDef>,
    name: Arc<str>,
    /// Counter for events without history (their `seq` still grows by one per event).
    last_seq: u64,
    history: Option<EventHistory>,
    counters: EventCounters,
}

impl EventState {
    fn new(room_id: &str, def: Arc<EventDef>) -> Self {
        EventState {
            name: def.name.as_str().into(),
            history: def.history_limit.map(EventHistory::new),
            counters: EventCounters::new(room_id, &def.name),
            def,
            last_seq: 0,
        }
    }

    fn last_seq(&self) -> u64 {
        self.history
            .as_ref()
            .map_or(self.last_seq, EventHistory::last_seq)
    }
}

/// One room.
pub struct RoomActor {
    shared: Arc<RoomShared>,
    catalog: Arc<EventCatalog>,
    members: HashMap<ConnId, Member>,
    events: HashMap<String, EventState>,
    persistence: PersistenceLink,
    hooks: Arc<dyn Hooks>,
    joins: prometheus::IntCounter,
    /// Evicted events not yet handed to the store, one batch per event: sent once the
    /// mailbox is drained (a burst of triggers costs the store one message and one write), or
    /// before anything reads history.
    evicted: Vec<EvictedBatch>,
}

impl RoomActor {
    pub fn new(
        shared: Arc<RoomShared>,
        catalog: Arc<EventCatalog>,
        persistence: PersistenceLink,
        hooks: Arc<dyn Hooks>,
    ) -> Self {
        let mut events = HashMap::new();
        match &shared.events {
            Some(list) => {
                for name in list {
                    if let Some(def) = catalog.get(name) {
                        events.insert(name.clone(), EventState::new(&shared.id, def.clone()));
                    }
                }
            }
            // A "*" room knows its declared history events from the start, so their stored
            // windows are restored before the first trigger; other events come on first use.
            None => {
                for name in catalog.names() {
                    if let Some(def) = catalog.get(name).filter(|d| d.history_limit.is_some()) {
                        events.insert(name.to_owned(), EventState::new(&shared.id, def.clone()));
                    }
                }
            }
        }
        // Counted from construction (before the server listens) until `restore_windows` ends.
        if events.values().any(|s| s.def.history_limit.is_some()) {
            persistence.restoring.fetch_add(1, Ordering::Relaxed);
        }
        RoomActor {
            joins: METRICS.joins.with_label_values(&[&shared.id]),
            shared,
            catalog,
            members: HashMap::new(),
            events,
            persistence,
            hooks,
            evicted: Vec::new(),
        }
    }

    /// Keeps `events` evicted from `event`'s window for the next hand-over to the store.
    fn evict(&mut self, ctx: &mut Context<Self>, event: &Arc<str>, events: Vec<Arc<StoredEvent>>) {
        if self.evicted.is_empty() {
            // Spawned futures run after the messages already waiting have been handled.
            ctx.spawn(actix::fut::ready(()).map(|_, act: &mut Self, _| act.hand_over_evicted()));
        }
        match self.evicted.iter_mut().find(|b| &b.event == event) {
            Some(batch) => batch.events.extend(events),
            None => self.evicted.push(EvictedBatch {
                room_id: self.shared.id.clone(),
                event: event.clone(),
                events,
            }),
        }
    }

    /// Hands the evicted events to the store (in order: the store sees them before any read
    /// this room sends it afterwards).
    fn hand_over_evicted(&mut self) {
        for batch in self.evicted.drain(..) {
            self.persistence.evicted.do_send(batch);
        }
    }

    fn room_id(&self) -> &str {
        &self.shared.id
    }

    /// The state of `event` if the room carries it; in a `"*"` room, created on first use.
    fn event_state(&mut self, event: &str) -> Result<&mut EventState, DialogueError> {
        let not_allowed = || {
            DialogueError::new(
                ErrorCode::EventNotAllowed,
                format!("room '{}' does not accept event '{event}'", self.shared.id),
            )
        };
        if !self.events.contains_key(event) {
            if self.shared.events.is_some()
                || event.is_empty()
                || event.len() > MAX_EVENT_NAME
                || self.events.len() >= MAX_WILDCARD_EVENTS
            {
                return Err(not_allowed());
            }
            let def = match self.catalog.get(event) {
                Some(def) => def.clone(),
                None => Arc::new(EventDef::untyped(event)),
            };
            let state = EventState::new(&self.shared.id, def);
            self.events.insert(event.to_owned(), state);
        }
        self.events.get_mut(event).ok_or_else(not_allowed)
    }

    fn carries(&self, event: &str) -> bool {
        match &self.shared.events {
            None => true,
            Some(list) => list.iter().any(|e| e == event),
        }
    }

    fn check_member(&self, conn: Option<ConnId>) -> Result<(), DialogueError> {
        match conn {
            Some(conn) if !self.members.contains_key(&conn) => {
                Err(DialogueError::not_in_room(self.room_id()))
            }
            _ => Ok(()),
        }
    }

    fn send_to(&self, outbox: &Outbox, event: &str, payload_json: &str) {
        outbox.frame(ByteString::from(encode_event(event, payload_json)));
    }

    /// How many of each subscribed history event a new member gets on join.
    fn sync_count(&self) -> Option<u64> {
        self.shared
            .sync_history_on_join
            .map(|n| u64::try_from(n).unwrap_or(u64::MAX))
    }

    /// The parts of the join history older than the in-memory windows (only when
    /// `syncHistoryOnJoin` is larger than a window): (event, seq range) pairs.
    fn deep_join_ranges(&self, subscriptions: &Subscriptions) -> Vec<(Arc<str>, SeqRange)> {
        let Some(n) = self.sync_count() else {
            return Vec::new();
        };
        if self.shared.sync_history_on_join == Some(usize::MAX) {
            return Vec::new(); // `true` means the in-memory window
        }
        self.events
            .iter()
            .filter(|(name, _)| subscriptions.contains(name))
            .filter_map(|(_, state)| {
                let history = state.history.as_ref()?;
                let wanted = offsets_to_seqs(history.last_seq(), 0, n);
                let first = history.first_seq_in_memory();
                (!wanted.is_empty() && wanted.lo < first).then(|| {
                    (
                        state.name.clone(),
                        SeqRange {
                            lo: wanted.lo,
                            hi: first - 1,
                        },
                    )
                })
            })
            .collect()
    }

    /// `dialogue:history {roomId, events}` for a new member: the newest N of each subscribed
    /// history event (from memory, plus `deep` older ones), newest first.
    fn join_history(
        &self,
        subscriptions: &Subscriptions,
        deep: &[Arc<StoredEvent>],
    ) -> Option<String> {
        let n = self.sync_count()?;
        let mut events: Vec<&Arc<StoredEvent>> = deep.iter().collect();
        for (name, state) in &self.events {
            let Some(history) = &state.history else {
                continue;
            };
            if !subscriptions.contains(name) {
                continue;
            }
            let range = offsets_to_seqs(history.last_seq(), 0, n);
            events.extend(history.newest_first(range));
        }
        events.sort_by(|a, b| b.timestamp.cmp(&a.timestamp).then(b.seq.cmp(&a.seq)));
        let mut json = String::from("{\"roomId\":");
        json.push_str(&to_json(&self.room_id()));
        json.push_str(",\"events\":[");
        push_joined(&mut json, events.iter().map(|e| &*e.json));
        json.push_str("]}");
        Some(json)
    }

    /// Adds the member and sends `dialogue:joined` and the join history.
    fn complete_join(&mut self, msg: Join, deep: &[Arc<StoredEvent>]) -> Result<(), DialogueError> {
        if let Some(max) = self.shared.max_size {
            if self.members.len() >= max as usize {
                return Err(DialogueError::new(
                    ErrorCode::RoomFull,
                    format!("room '{}' is full ({max} members)", self.room_id()),
                ));
            }
        }
        let subscriptions = self.default_subscriptions();
        self.send_to(&msg.outbox, "dialogue:joined", &self.joined_json());
        if let Some(history) = self.join_history(&subscriptions, deep) {
            self.send_to(&msg.outbox, "dialogue:history", &history);
        }
        self.hooks.on_joined(&msg.identity, &self.shared.id);
        log::debug!("{} joined room '{}'", msg.identity.user_id, self.shared.id);
        self.members.insert(
            msg.conn,
            Member {
                outbox: msg.outbox,
                subscriptions,
                identity: msg.identity,
            },
        );
        self.set_size();
        self.joins.inc();
        Ok(())
    }

    fn default_subscriptions(&self) -> Subscriptions {
        match &self.shared.default_subscriptions {
            None => Subscriptions::All,
            Some(list) => Subscriptions::Only(list.iter().cloned().collect()),
        }
    }

    fn joined_json(&self) -> String {
        to_json(&serde_json::json!({
            "roomId": self.room_id(),
            "roomName": self.shared.name,
        }))
    }

    /// Every in-memory event, per event, as batches for the persistence actor.
    fn window_batches(&mut self, take: bool) -> Vec<EvictedBatch> {
        let room_id = self.shared.id.clone();
        self.events
            .values_mut()
            .filter_map(|state| {
                let history = state.history.as_mut()?;
                let events = if take {
                    history.take_all()
                } else {
                    history.snapshot()
                };
                (!events.is_empty()).then(|| EvictedBatch {
                    room_id: room_id.clone(),
                    event: state.name.clone(),
                    events,
                })
            })
            .collect()
    }

    /// Restores each history window and counter from the store before any message is
    /// handled (retrying while the database is unreachable).
    fn restore_windows(&mut self, ctx: &mut Context<Self>) {
        let loads: Vec<_> = self
            .events
            .iter()
            .filter_map(|(name, state)| {
                let limit = state.def.history_limit? as u64;
                let link = self.persistence.window.clone();
                let request = LoadWindow {
                    room_id: self.shared.id.clone(),
                    event: state.name.clone(),
                    limit,
                };
                let name = name.clone();
                Some(async move { (name, load_window(link, request).await) })
            })
            .collect();
        if loads.is_empty() {
            return;
        }
        ctx.wait(
            futures_util::future::join_all(loads)
                .into_actor(self)
                .map(|windows, act, _| {
                    act.persistence.restoring.fetch_sub(1, Ordering::Relaxed);
                    for (name, window) in windows {
                        let Some(state) = act.events.get_mut(&name) else {
                            continue;
                        };
                        let Some(limit) = state.def.history_limit else {
                            continue;
                        };
                        let mut events = window.events;
                        events.reverse();
                        state.history = Some(EventHistory::restore(limit, events, window.last_seq));
                        if window.last_seq > 0 {
                            log::debug!(
                                "room '{}' event '{name}' continues at seq {}",
                                act.shared.id,
                                window.last_seq + 1
                            );
                        }
                    }
                }),
        );
    }

    fn set_size(&self) {
        self.shared
            .size
            .store(self.members.len(), Ordering::Relaxed);
    }
}

fn push_joined<'a>(out: &mut String, items: impl Iterator<Item = &'a str>) {
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
}

/// Asks the store for a window, retrying with backoff until it answers.
async fn load_window(link: Recipient<LoadWindow>, request: LoadWindow) -> StoredWindow {
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        let attempt = LoadWindow {
            room_id: request.room_id.clone(),
            event: request.event.clone(),
            limit: request.limit,
        };
        match link.send(attempt).await {
            Ok(Ok(window)) => return window,
            Ok(Err(e)) => log::warn!(
                "room '{}': cannot restore '{}' history yet: {}",
                request.room_id,
                request.event,
                e.message
            ),
            Err(_) => log::warn!(
                "room '{}': the history store is not running",
                request.room_id
            ),
        }
        actix_rt::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        self.restore_windows(ctx);
        log::debug!("room '{}' started", self.shared.id);
    }
}

impl Handler<Join> for RoomActor {
    type Result = ResponseFuture<Result<(), DialogueError>>;

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) -> Self::Result {
        self.hand_over_evicted();
        if let Some(member) = self.members.get(&msg.conn) {
            // Joining twice is harmless: confirm again, change nothing.
            self.send_to(&member.outbox, "dialogue:joined", &self.joined_json());
            return Box::pin(async { Ok(()) });
        }
        if let Err(e) = self.hooks.before_join(&msg.identity, &self.shared.info()) {
            return Box::pin(async move { Err(e) });
        }
        let deep = self.deep_join_ranges(&self.default_subscriptions());
        if deep.is_empty() {
            let result = self.complete_join(msg, &[]);
            return Box::pin(async move { result });
        }
        // The older part of the join history comes from the store. The room waits for it, so
        // no event can reach the new member before its history.
        let loads: Vec<_> = deep
            .into_iter()
            .map(|(event, range)| {
                self.persistence.load.send(LoadRange {
                    room_id: self.shared.id.clone(),
                    event,
                    lo: range.lo,
                    hi: range.hi,
                })
            })
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        ctx.wait(futures_util::future::join_all(loads).into_actor(self).map(
            move |results, act, _| {
                let mut deep = Vec::new();
                let mut result = Ok(());
                for r in results {
                    match r {
                        Ok(Ok(events)) => deep.extend(events),
                        Ok(Err(e)) => result = Err(e),
                        Err(_) => {
                            result = Err(DialogueError::new(
                                ErrorCode::StorageUnavailable,
                                "the history store is not running",
                            ))
                        }
                    }
                }
                let _ = tx.send(result.and_then(|()| act.complete_join(msg, &deep)));
            },
        ));
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(DialogueError::new(
                    ErrorCode::RoomNotFound,
                    "the room closed",
                ))
            })
        })
    }
}

impl Handler<Leave> for RoomActor {
    type Result = Result<(), DialogueError>;

    fn handle(&mut self, msg: Leave, _: &mut Context<Self>) -> Self::Result {
        let member = self
            .members
            .remove(&msg.conn)
            .ok_or_else(|| DialogueError::not_in_room(self.room_id()))?;
        self.set_size();
        self.hooks.on_left(&member.identity, &self.shared.id);
        let left = to_json(&serde_json::json!({ "roomId": self.room_id() }));
        self.send_to(&member.outbox, "dialogue:left", &left);
        Ok(())
    }
}

impl Handler<MemberGone> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: MemberGone, _: &mut Context<Self>) {
        if let Some(member) = self.members.remove(&msg.conn) {
            self.set_size();
            self.hooks.on_left(&member.identity, &self.shared.id);
        }
    }
}

impl Handler<SetSubscription> for RoomActor {
    type Result = Result<(), DialogueError>;

    fn handle(&mut self, msg: SetSubscription, _: &mut Context<Self>) -> Self::Result {
        self.check_member(Some(msg.conn))?;
        if let Some(event) = &msg.event {
            if !self.carries(event) {
                return Err(DialogueError::new(
                    ErrorCode::EventNotAllowed,
                    format!("room '{}' does not carry event '{event}'", self.room_id()),
                ));
            }
        }
        let all_events: Option<HashSet<String>> = self
            .shared
            .events
            .as_ref()
            .map(|list| list.iter().cloned().collect());
        let Some(member) = self.members.get_mut(&msg.conn) else {
            return Ok(());
        };
        member.subscriptions = match (msg.event, msg.subscribed, &member.subscriptions) {
            (None, true, _) => Subscriptions::All,
            (None, false, _) => Subscriptions::Only(HashSet::new()),
            (Some(_), true, Subscriptions::All) => Subscriptions::All,
            (Some(event), true, Subscriptions::Only(set)) => {
                let mut set = set.clone();
                set.insert(event);
                Subscriptions::Only(set)
            }
            (Some(event), true, Subscriptions::AllExcept(set)) => {
                let mut set = set.clone();
                set.remove(&event);
                Subscriptions::AllExcept(set)
            }
            (Some(event), false, Subscriptions::All) => match all_events {
                Some(mut set) => {
                    set.remove(&event);
                    Subscriptions::Only(set)
                }
                None => Subscriptions::AllExcept(HashSet::from([event])),
            },
            (Some(event), false, Subscriptions::Only(set)) => {
                let mut set = set.clone();
                set.remove(&event);
                Subscriptions::Only(set)
            }
            (Some(event), false, Subscriptions::AllExcept(set)) => {
                let mut set = set.clone();
                set.insert(event);
                Subscriptions::AllExcept(set)
            }
        };
        Ok(())
    }
}

impl Handler<Trigger> for RoomActor {
    type Result = Result<Triggered, DialogueError>;

    fn handle(&mut self, mut msg: Trigger, ctx: &mut Context<Self>) -> Self::Result {
        let reply = msg.reply.take();
        let result = self.trigger(msg, ctx);
        if let Some(reply) = reply {
            reply.answer(&result);
        }
        result
    }
}

impl RoomActor {
    /// Validates, numbers, keeps and fans out one event.
    fn trigger(
        &mut self,
        msg: Trigger,
        ctx: &mut Context<Self>,
    ) -> Result<Triggered, DialogueError> {
        let started = std::time::Instant::now();
        self.check_member(msg.conn)?;
        let room_id = self.shared.id.clone();
        let backlog_full =
            self.persistence.backlog.load(Ordering::Relaxed) >= self.persistence.max_backlog;
        self.event_state(&msg.event)?;
        let data = self
            .hooks
            .before_each(&msg.identity, &room_id, &msg.event, msg.data)?;
        let state = self.event_state(&msg.event)?;
        if let Err(e) = state.def.validate(&data) {
            state.counters.validation_failures.inc();
            return Err(e);
        }
        if backlog_full && state.history.is_some() {
            return Err(DialogueError::new(
                ErrorCode::StorageUnavailable,
                "the database is unavailable and the history backlog is full; try again later",
            ));
        }

        let seq = state.last_seq() + 1;
        let timestamp = now_ms();
        let json = to_json(&EventMessage {
            event: &msg.event,
            room_id: &room_id,
            data: &data,
            from: &msg.identity.user_id,
            timestamp,
            meta: msg.meta.as_ref(),
            seq,
        });
        let frame = SharedFrame::new(ByteString::from(encode_event("dialogue:event", &json)));
        let echo = msg.echo.then(|| json.clone());
        let after = json.clone();

        let evicted = match &mut state.history {
            Some(history) => history.push(Arc::new(StoredEvent {
                seq,
                timestamp,
                from: msg.identity.user_id.clone(),
                data,
                meta: msg.meta,
                json: json.into_boxed_str(),
            })),
            None => {
                state.last_seq = seq;
                Vec::new()
            }
        };
        let event_name = state.name.clone();
        let counters = state.counters.clone();
        if !evicted.is_empty() {
            self.evict(ctx, &event_name, evicted);
        }

        let mut delivered = 0;
        for member in self.members.values() {
            if member.subscriptions.contains(&event_name) {
                member.outbox.shared(&frame);
                delivered += 1;
            }
        }
        counters.triggered.inc();
        counters.delivered.inc_by(delivered);
        self.hooks.after_each(&self.shared.id, &event_name, &after);
        METRICS
            .fanout_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(Triggered { seq, json: echo })
    }
}

impl Handler<GetHistory> for RoomActor {
    type Result = ResponseFuture<Result<HistoryPage, DialogueError>>;

    fn handle(&mut self, msg: GetHistory, _: &mut Context<Self>) -> Self::Result {
        self.hand_over_evicted();
        let page = (|| {
            self.check_member(msg.conn)?;
            if !self.carries(&msg.event) {
                return Err(DialogueError::new(
                    ErrorCode::EventNotAllowed,
                    format!(
                        "room '{}' does not carry event '{}'",
                        self.room_id(),
                        msg.event
                    ),
                ));
            }
            Ok(())
        })();
        if let Err(e) = page {
            return Box::pin(async move { Err(e) });
        }

        let room_id = self.shared.id.clone();
        let state = self.events.get(&msg.event);
        let history = state.and_then(|s| s.history.as_ref());
        let last_seq = history.map_or(0, EventHistory::last_seq);
        let range = match msg.range {
            HistoryRange::Offsets { start, end } => offsets_to_seqs(last_seq, start, end),
            HistoryRange::Before { before, limit } => cursor_to_seqs(last_seq, before, limit),
        };
        let from_memory: Vec<Arc<StoredEvent>> = history
            .map(|h| h.newest_first(range).cloned().collect())
            .unwrap_or_default();
        let first_in_memory = history.map_or(1, EventHistory::first_seq_in_memory);
        let deep = (!range.is_empty() && range.lo < first_in_memory).then(|| SeqRange {
            lo: range.lo,
            hi: range.hi.min(first_in_memory - 1),
        });
        let load = deep.zip(state).map(|(deep, state)| {
            self.persistence.load.send(LoadRange {
                room_id: room_id.clone(),
                event: state.name.clone(),
                lo: deep.lo,
                hi: deep.hi,
            })
        });
        let event = msg.event;
        let request = msg.range;
        let started = std::time::Instant::now();
        Box::pin(async move {
            let source = if load.is_some() { "database" } else { "memory" };
            let mut events = from_memory;
            if let Some(load) = load {
                let older = load.await.map_err(|_| {
                    DialogueError::new(
                        ErrorCode::StorageUnavailable,
                        "the history store is not running",
                    )
                })??;
                events.extend(older);
            }
            let json = page_json(&room_id, &event, request, last_seq, range, &events);
            METRICS.history_reads.with_label_values(&[source]).inc();
            METRICS
                .history_read_seconds
                .with_label_values(&[source])
                .observe(started.elapsed().as_secs_f64());
            Ok(HistoryPage { json })
        })
    }
}

/// The `dialogue:historyResponse` object.
fn page_json(
    room_id: &str,
    event: &str,
    request: HistoryRange,
    last_seq: u64,
    range: SeqRange,
    events: &[Arc<StoredEvent>],
) -> String {
    let (start, end) = match request {
        HistoryRange::Offsets { start, end } => (start, end),
        HistoryRange::Before { .. } if range.is_empty() => (last_seq, last_seq),
        HistoryRange::Before { .. } => (last_seq - range.hi, last_seq - range.lo + 1),
    };
    // Older events exist exactly when the page stops above seq 1.
    let has_more = !range.is_empty() && range.lo > 1;
    let mut json =
        String::with_capacity(128 + events.iter().map(|e| e.json.len() + 1).sum::<usize>());
    json.push_str("{\"roomId\":");
    json.push_str(&to_json(&room_id));
    json.push_str(",\"eventName\":");
    json.push_str(&to_json(&event));
    json.push_str(",\"events\":[");
    push_joined(&mut json, events.iter().map(|e| &*e.json));
    json.push_str(&format!(
        "],\"start\":{start},\"end\":{end},\"hasMore\":{has_more}"
    ));
    if let HistoryRange::Before { before, limit } = request {
        json.push_str(&format!(",\"before\":{before},\"limit\":{limit}"));
    }
    json.push('}');
    json
}

impl Handler<FlushHistory> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: FlushHistory, _: &mut Context<Self>) {
        self.hand_over_evicted();
        for batch in self.window_batches(false) {
            self.persistence.evicted.do_send(batch);
        }
    }
}

impl Handler<CloseRoom> for RoomActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: CloseRoom, ctx: &mut Context<Self>) -> Self::Result {
        self.hand_over_evicted();
        for batch in self.window_batches(true) {
            self.persistence.evicted.do_send(batch);
        }
        for member in self.members.values() {
            member.outbox.notify(ToConnection::RoomClosed {
                room_id: self.shared.id.to_string(),
            });
        }
        self.members.clear();
        self.set_size();
        // Answer (and stop) once the history is in the database.
        let written = self.persistence.written.send(WaitWritten);
        ctx.wait(written.into_actor(self).map(|_, _, ctx| ctx.stop()));
        Box::pin(actix::fut::ready(()))
    }
}
