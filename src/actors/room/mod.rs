//! The room actor: members and their subscriptions, validation, numbering, fan-out, and a
//! history window per history-enabled event.
//!
//! Write-behind: what a mailbox drain accepted goes to the persistence actor as one batch
//! (one transaction, shared with other rooms' batches). A `stored` event is acknowledged and
//! fanned out only when the store answers that its batch committed; an `accepted` one at
//! once. The window is a cache of the newest events (for `stored` streams, committed ones
//! only); eviction drops events the store already has. History pages reaching past the window
//! are completed from the store. A room owns its id in the database (a lease): it starts only
//! once it holds it, and every write checks it.

use crate::actors::messages::*;
use crate::actors::outbox::{cork, Outbox, SharedFrame};
use crate::auth::Identity;
use crate::config::Durability;
use crate::error::{DialogueError, ErrorCode};
use crate::events::{EventCatalog, EventDef};
use crate::history::{cursor_to_seqs, offsets_to_seqs, EventHistory, PageBudget, SeqRange};
use crate::hooks::Hooks;
use crate::metrics::{EventCounters, METRICS};
use crate::protocol::dialogue::{to_json, HistoryRange, RoomInfo};
use crate::protocol::socketio::encode_event;
use crate::recovery::SubscriptionSpec;
use actix::prelude::*;
use bytestring::ByteString;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

mod cluster;
use cluster::Role;

/// Requests a room queues before `send`ers wait (connections send one request at a time).
pub const MAILBOX_CAPACITY: usize = 1 << 16;
/// Longest event name accepted (the database column is 100 characters).
const MAX_EVENT_NAME: usize = 100;
/// Seqs an `accepted` event without history reserves ahead in the database (a new block when
/// half of one is used): it is acknowledged at once while its seq is within what the database
/// committed, and after a crash its numbering resumes above that, so a seq a client saw is
/// never handed out again.
const COUNTER_BLOCK: u64 = 1000;

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
    /// `presence: true`: join and leave notices while the room has at most this many members.
    pub presence: Option<usize>,
    /// Set for rooms created at run time.
    pub created_by: Option<Arc<str>>,
    /// Current member count on this node, kept by the room actor.
    pub size: Arc<AtomicUsize>,
    /// The room holds its lease and has restored its state (until then it answers nothing).
    pub ready: std::sync::atomic::AtomicBool,
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
            created_by_id: self.created_by.as_ref().map(|u| u.to_string()),
        }
    }
}

/// Names a connection's subscription lists hold at most when `limits.maxEventTypesPerRoom`
/// is 0.
const MAX_SUBSCRIPTION_NAMES: usize = 1000;

enum Subscriptions {
    All,
    Only(HashSet<String>),
    /// Every event but these (unsubscribing one event of a `"*"` room).
    AllExcept(HashSet<String>),
}

impl Subscriptions {
    /// Names the list holds.
    fn listed(&self) -> usize {
        match self {
            Subscriptions::All => 0,
            Subscriptions::Only(set) | Subscriptions::AllExcept(set) => set.len(),
        }
    }

    fn contains(&self, event: &str) -> bool {
        match self {
            Subscriptions::All => true,
            Subscriptions::Only(set) => set.contains(event),
            Subscriptions::AllExcept(set) => !set.contains(event),
        }
    }

    /// As a recoverable session saves it.
    fn spec(&self) -> SubscriptionSpec {
        let sorted = |set: &HashSet<String>| {
            let mut names: Vec<String> = set.iter().cloned().collect();
            names.sort();
            names
        };
        match self {
            Subscriptions::All => SubscriptionSpec::All,
            Subscriptions::Only(set) => SubscriptionSpec::Only(sorted(set)),
            Subscriptions::AllExcept(set) => SubscriptionSpec::AllExcept(sorted(set)),
        }
    }

    fn from_spec(spec: SubscriptionSpec) -> Self {
        match spec {
            SubscriptionSpec::All => Subscriptions::All,
            SubscriptionSpec::Only(names) => Subscriptions::Only(names.into_iter().collect()),
            SubscriptionSpec::AllExcept(names) => {
                Subscriptions::AllExcept(names.into_iter().collect())
            }
        }
    }
}

struct Member {
    outbox: Outbox,
    subscriptions: Subscriptions,
    identity: Arc<Identity>,
    /// The room's number in the member's recoverable session.
    slot: Option<u32>,
}

/// Per event type: its definition, its counter, and its window when history is enabled.
struct EventState {
    def: Arc<EventDef>,
    name: Arc<str>,
    /// The last seq handed out (committed or not).
    last_assigned: u64,
    /// Events without history: the high-water mark sent to the database.
    reserved: u64,
    /// Events without history: the high-water mark the database has committed. An `accepted`
    /// event numbered above it waits for its commit like a `stored` one, so no seq a crash
    /// could hand out again is ever shown.
    committed: u64,
    /// Events of this stream waiting for their commit: later ones wait too, to keep the
    /// order.
    pending: usize,
    /// The newest events: committed ones for `stored` streams, accepted ones for `accepted`.
    history: Option<EventHistory>,
    counters: EventCounters,
    /// Events with history: the highest seq whose batch the database committed (for `/admin`).
    written: u64,
    /// Events published since the room started, and their deliveries (for `/admin`).
    published: std::cell::Cell<u64>,
    delivered: std::cell::Cell<u64>,
}

impl EventState {
    /// `label`: the room's metric label ([`crate::metrics::room_label`]).
    fn new(label: &str, def: Arc<EventDef>, high_water: u64) -> Self {
        let event_label = if def.declared {
            def.name.as_str()
        } else {
            crate::metrics::OTHER
        };
        EventState {
            name: def.name.as_str().into(),
            history: def
                .history_limit
                .map(|limit| EventHistory::new(limit, def.history_max_bytes)),
            counters: EventCounters::new(label, event_label),
            def,
            last_assigned: high_water,
            reserved: high_water,
            committed: high_water,
            pending: 0,
            written: 0,
            published: Default::default(),
            delivered: Default::default(),
        }
    }

    fn stored(&self) -> bool {
        self.def.durability == Durability::Stored
    }
}

/// A `stored` event accepted and waiting for the commit of its batch.
struct Pending {
    event: Arc<str>,
    stored: Arc<StoredEvent>,
    frame: SharedFrame,
    reply: Reply,
    /// Answer with the `EventMessage` JSON (the HTTP API).
    echo: bool,
    accepted_at: std::time::Instant,
}

/// A batch handed to the store, waiting for its [`Committed`].
struct Awaiting {
    /// Its `stored` events (and `accepted` ones that must wait), in the order accepted.
    pending: Vec<Pending>,
    /// Its counter marks: committed with it.
    marks: Vec<CounterMark>,
    /// The highest seq of each stream it writes.
    written: Vec<(Arc<str>, u64)>,
}

/// How long a room keeps accepted events nobody waits for (`accepted`) before it hands them
/// to the store: at a trickle of events, one message to the store's thread per burst rather
/// than per event. Reads (joins, history pages) and flushes hand over at once.
const HAND_OVER_LINGER: std::time::Duration = std::time::Duration::from_millis(10);

/// What the current mailbox drain accepted, for one [`PersistBatch`].
#[derive(Default)]
struct Unsent {
    streams: Vec<StreamRows>,
    counters: Vec<CounterMark>,
    pending: Vec<Pending>,
}

impl Unsent {
    /// Nothing to hand over: no rows, no counter marks, no event waiting for a commit.
    fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.counters.is_empty() && self.pending.is_empty()
    }

    fn row(&mut self, event: &Arc<str>, stored: Arc<StoredEvent>) {
        match self.streams.iter_mut().find(|s| &s.event == event) {
            Some(stream) => stream.events.push(stored),
            None => self.streams.push(StreamRows {
                event: event.clone(),
                events: vec![stored],
            }),
        }
    }

    fn mark(&mut self, event: &Arc<str>, high_water: u64, exact: bool) {
        match self.counters.iter_mut().find(|c| &c.event == event) {
            Some(mark) => {
                mark.high_water = high_water;
                mark.exact = exact;
            }
            None => self.counters.push(CounterMark {
                event: event.clone(),
                high_water,
                exact,
            }),
        }
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
    /// The `room` label of its metric series (its id, or `_other` beyond
    /// `metrics.maxRoomSeries`).
    metric_label: Arc<str>,
    /// This room instance's lease token in the database.
    owner: Arc<str>,
    /// The room's epoch, from the lease (grows after an unclean stop).
    epoch: u64,
    /// After an unclean stop: per event, the last seq the store had, where numbering went on.
    /// An `accepted` position beyond it (from an older epoch) names an event that was lost.
    epoch_floor: HashMap<String, u64>,
    /// High-water marks of events without history not created yet (`"*"` rooms).
    restored_counters: HashMap<String, u64>,
    /// Accepted this drain, not yet handed to the store: sent once the mailbox is drained (a
    /// burst of triggers costs the store one message and one write), or before anything
    /// reads history.
    unsent: Unsent,
    /// A hand-over is scheduled for the end of this drain.
    hand_over_scheduled: bool,
    /// A hand-over of events nobody waits for is due within [`HAND_OVER_LINGER`].
    hand_over_lingering: bool,
    /// Batches handed to the store and not answered yet, oldest first, each with its `stored`
    /// events waiting for the commit.
    awaiting: VecDeque<Awaiting>,
    /// This room's own address, for the store's answers.
    me: Option<Recipient<Committed>>,
    /// Where a batch of presence notices is flushed.
    flush_presence: Option<Recipient<FlushPresence>>,
    /// Connections per member user id.
    presence: HashMap<Arc<str>, usize>,
    /// Users who came (first connection) or went (last connection) since the last notice.
    came: BTreeSet<Arc<str>>,
    went: BTreeSet<Arc<str>>,
    /// A flush of the notices is scheduled.
    presence_due: bool,
    /// Set when the room may no longer write (another owner, a conflict): every trigger is
    /// refused with this reason.
    stopped: Option<String>,
    /// The room is being deleted: answered once everything is written and the lease released.
    closing: Option<tokio::sync::oneshot::Sender<()>>,
    closed: bool,
    /// The cluster this node is part of (`None`: a single node, always the owner).
    cluster: Option<crate::cluster::Cluster>,
    /// Owner or replica of the room ([`cluster`]).
    role: Role,
    /// A replica reading the owner's windows.
    syncing: bool,
    /// A replica becoming the owner: the last seqs its members had, to deliver what the
    /// restored windows hold beyond them.
    catch_up_from: Option<HashMap<String, u64>>,
    /// Waiting for a hand-over to finish (a node's clean stop).
    handed_over: Vec<tokio::sync::oneshot::Sender<()>>,
    /// This room counts in [`PersistenceLink::restoring`].
    restoring_counted: bool,
    /// In a cluster: the users of the room on each other node, with their connections.
    remote_presence: HashMap<Arc<str>, HashMap<Arc<str>, usize>>,
    /// This node's users changed since they were last published.
    presence_dirty: bool,
    /// Supersedes a replica's sync under way when a new one starts.
    sync_generation: u64,
    /// Events published while a replica syncs: followed once it has the window.
    feed_buffer: Vec<String>,
    /// Joins waiting for a replica's sync.
    #[allow(clippy::type_complexity)]
    parked_joins: Vec<(
        Join,
        tokio::sync::oneshot::Sender<Result<JoinOutcome, DialogueError>>,
    )>,
    /// This actor instance, among the room's instances over time (its feed subscription).
    instance: u64,
    /// Forwarded triggers accepted here: their key's seq, for retries ([`cluster`]).
    forwarded: HashMap<String, u64>,
    forwarded_order: VecDeque<String>,
}

impl RoomActor {
    pub fn new(
        shared: Arc<RoomShared>,
        catalog: Arc<EventCatalog>,
        persistence: PersistenceLink,
        hooks: Arc<dyn Hooks>,
        cluster: Option<crate::cluster::Cluster>,
    ) -> Self {
        let metric_label = crate::metrics::room_label(&shared.id);
        let mut events = HashMap::new();
        match &shared.events {
            Some(list) => {
                for name in list {
                    if let Some(def) = catalog.get(name) {
                        events.insert(name.clone(), EventState::new(&metric_label, def.clone(), 0));
                    }
                }
            }
            // A "*" room knows its declared history events from the start, so their stored
            // windows are restored before the first trigger; other events come on first use.
            None => {
                for name in catalog.names() {
                    if let Some(def) = catalog.get(name).filter(|d| d.history_limit.is_some()) {
                        events.insert(
                            name.to_owned(),
                            EventState::new(&metric_label, def.clone(), 0),
                        );
                    }
                }
            }
        }
        // Counted from construction (before the server listens) until `claim` ends.
        persistence.restoring.fetch_add(1, Ordering::Relaxed);
        RoomActor {
            joins: METRICS.joins.with_label_values(&[&metric_label]),
            metric_label,
            shared,
            catalog,
            members: HashMap::new(),
            events,
            persistence,
            hooks,
            owner: uuid::Uuid::new_v4().simple().to_string().into(),
            epoch: 0,
            epoch_floor: HashMap::new(),
            restored_counters: HashMap::new(),
            unsent: Unsent::default(),
            hand_over_scheduled: false,
            hand_over_lingering: false,
            awaiting: VecDeque::new(),
            me: None,
            flush_presence: None,
            presence: HashMap::new(),
            came: BTreeSet::new(),
            went: BTreeSet::new(),
            presence_due: false,
            stopped: None,
            closing: None,
            closed: false,
            cluster,
            role: Role::Owner,
            syncing: false,
            catch_up_from: None,
            handed_over: Vec::new(),
            restoring_counted: true,
            remote_presence: HashMap::new(),
            presence_dirty: false,
            forwarded: HashMap::new(),
            forwarded_order: VecDeque::new(),
            sync_generation: 0,
            feed_buffer: Vec::new(),
            parked_joins: Vec::new(),
            instance: rand_instance(),
        }
    }

    /// Counts the room in (or out of) the rooms still restoring, once.
    fn set_restoring(&mut self, restoring: bool) {
        if restoring != self.restoring_counted {
            self.restoring_counted = restoring;
            if restoring {
                self.persistence.restoring.fetch_add(1, Ordering::Relaxed);
            } else {
                self.persistence.restoring.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Counters reserved ahead go back to their exact value and everything accepted goes to
    /// the store: a clean stop leaves no gap.
    fn flush_exact(&mut self) {
        for state in self.events.values_mut() {
            if state.history.is_none() && state.reserved > state.last_assigned {
                state.reserved = state.last_assigned;
                self.unsent.mark(&state.name, state.last_assigned, true);
            }
        }
        self.hand_over();
    }

    /// Schedules the hand-over of what this drain accepted: for when the mailbox is drained
    /// when a client waits for any of it (`waited_for`: `stored`), else up to
    /// [`HAND_OVER_LINGER`] later.
    fn schedule_hand_over(&mut self, ctx: &mut Context<Self>, waited_for: bool) {
        if waited_for {
            if !self.hand_over_scheduled {
                self.hand_over_scheduled = true;
                // Spawned futures run after the messages already waiting have been handled.
                ctx.spawn(actix::fut::ready(()).map(|_, act: &mut Self, _| act.hand_over()));
            }
        } else if !self.hand_over_lingering {
            self.hand_over_lingering = true;
            ctx.run_later(HAND_OVER_LINGER, |act, _| {
                act.hand_over_lingering = false;
                act.hand_over();
            });
        }
    }

    /// Hands what was accepted to the store as one batch (in order: the store sees it before
    /// any read this room sends it afterwards).
    fn hand_over(&mut self) {
        self.hand_over_scheduled = false;
        if self.unsent.is_empty() {
            return;
        }
        let Some(me) = self.me.clone() else { return };
        let unsent = std::mem::take(&mut self.unsent);
        let written = unsent
            .streams
            .iter()
            .filter_map(|s| Some((s.event.clone(), s.events.iter().map(|e| e.seq).max()?)))
            .collect();
        self.persistence.batches.do_send(PersistBatch {
            room_id: self.shared.id.clone(),
            owner: self.owner.clone(),
            reply: me,
            streams: unsent.streams,
            counters: unsent.counters.clone(),
            urgent: !unsent.pending.is_empty(),
        });
        self.awaiting.push_back(Awaiting {
            pending: unsent.pending,
            marks: unsent.counters,
            written,
        });
    }

    /// Delivers an event to the subscribed members, and (the owner in a cluster) publishes
    /// it once for the other nodes' members.
    fn publish(&self, event: &str, frame: &SharedFrame, stored: &StoredEvent) {
        if let Some(cluster) = &self.cluster {
            // Also while handing over: events committed then reach the other nodes too.
            cluster.bus.publish_event(&self.shared.id, &stored.json);
        }
        if let Some(state) = self.events.get(event) {
            state.counters.triggered.inc();
        }
        // Once per event in the cluster: here, where it was accepted.
        self.hooks.after_each(&self.shared.id, event, &stored.json);
        self.deliver(event, frame, stored);
    }

    /// Delivers an event to the subscribed members here.
    fn deliver(&self, event: &str, frame: &SharedFrame, stored: &StoredEvent) {
        let Some(state) = self.events.get(event) else {
            return;
        };
        let mut delivered = 0;
        // Only events with history can be replayed: only they advance a session's offset.
        let replayable = state.history.is_some();
        for member in self.members.values() {
            if member.subscriptions.contains(event) {
                let at = member
                    .slot
                    .filter(|_| replayable)
                    .map(|slot| (slot, event, stored.seq));
                member.outbox.event(frame, at);
                delivered += 1;
            }
        }
        state.counters.delivered.inc_by(delivered);
        state.published.set(state.published.get() + 1);
        state.delivered.set(state.delivered.get() + delivered);
    }

    /// Stops writing for good (another owner took the room, or a conflict): logged, counted
    /// for `/readyz`, and every later trigger is refused.
    fn stop_writing(&mut self, reason: String) {
        if self.stopped.is_none() {
            log::error!(
                "room '{}' stopped writing: {reason}; its triggers are refused until restart",
                self.shared.id
            );
            METRICS.persist_stopped_rooms.inc();
            self.persistence.stopped.fetch_add(1, Ordering::Relaxed);
            self.stopped = Some(reason);
        }
    }

    /// Finishes a deletion once everything is written: releases the lease, answers, stops.
    fn maybe_finish_close(&mut self, ctx: &mut Context<Self>) {
        if self.closing.is_none() || !self.awaiting.is_empty() || !self.unsent.is_empty() {
            return;
        }
        let closer = self.closing.take();
        if self.stopped.is_some() {
            // Deleted: it no longer holds `/readyz` down.
            self.persistence.stopped.fetch_sub(1, Ordering::Relaxed);
        }
        for member in self.members.values() {
            member.outbox.notify(ToConnection::RoomClosed {
                room_id: self.shared.id.to_string(),
            });
        }
        self.members.clear();
        self.set_size();
        crate::metrics::remove_room(&self.metric_label, self.events.keys());
        if let Some(cluster) = &self.cluster {
            cluster.bus.unsubscribe(&self.shared.id, self.instance);
        }
        let release = self.persistence.release.send(ReleaseRoom {
            room_id: self.shared.id.clone(),
            owner: self.owner.clone(),
        });
        ctx.wait(release.into_actor(self).map(move |_, _, ctx| {
            if let Some(closer) = closer {
                let _ = closer.send(());
            }
            ctx.stop();
        }));
    }

    fn room_id(&self) -> &str {
        &self.shared.id
    }

    /// The state of `event` if the room carries it; in a `"*"` room, created on first use.
    /// The definition of `event` if the room accepts it, without keeping any state for it:
    /// a `"*"` room registers a new name only once a trigger of it passed the hooks and
    /// validation ([`Self::event_state`]), so refused junk names take nothing.
    fn event_def(&self, event: &str) -> Result<Arc<EventDef>, DialogueError> {
        if let Some(state) = self.events.get(event) {
            return Ok(state.def.clone());
        }
        if self.shared.events.is_some() || event.is_empty() || event.len() > MAX_EVENT_NAME {
            return Err(DialogueError::new(
                ErrorCode::EventNotAllowed,
                format!("room '{}' does not accept event '{event}'", self.shared.id),
            ));
        }
        let cap = self.catalog.max_event_types_per_room;
        if cap > 0 && self.events.len() >= cap {
            return Err(DialogueError::new(
                ErrorCode::EventNotAllowed,
                format!(
                    "room '{}' has its maximum of {} event types (limits.maxEventTypesPerRoom)",
                    self.shared.id, self.catalog.max_event_types_per_room
                ),
            ));
        }
        Ok(match self.catalog.get(event) {
            Some(def) => def.clone(),
            None => Arc::new(EventDef::untyped(event, self.catalog.default_durability)),
        })
    }

    /// The state of `event` if the room carries it; in a `"*"` room, created on first use.
    fn event_state(&mut self, event: &str) -> Result<&mut EventState, DialogueError> {
        if !self.events.contains_key(event) {
            let def = self.event_def(event)?;
            let high_water = self.restored_counters.get(event).copied().unwrap_or(0);
            let state = EventState::new(&self.metric_label, def, high_water);
            self.events.insert(event.to_owned(), state);
        }
        self.events.get_mut(event).ok_or_else(|| {
            DialogueError::new(
                ErrorCode::EventNotAllowed,
                format!("room '{}' does not accept event '{event}'", self.shared.id),
            )
        })
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
        // The newest that fit in a page (`limits.maxPageBytes`).
        let events = PageBudget::new(self.catalog.max_page_bytes).take(events);
        let mut json = String::from("{\"roomId\":");
        json.push_str(&to_json(&self.room_id()));
        json.push_str(",\"events\":[");
        push_joined(&mut json, events.iter().map(|e| &*e.json));
        json.push_str("]}");
        Some(json)
    }

    /// Adds the member and sends `dialogue:joined` and the join history.
    /// Adds the member and sends `dialogue:joined` (with the resume report of a join with
    /// `since`) and what `history` says; answers the report for the ack.
    fn complete_join(
        &mut self,
        mut msg: Join,
        history: JoinHistory<'_>,
        resume: Option<serde_json::Value>,
    ) -> Result<JoinOutcome, DialogueError> {
        if let Some(max) = self.shared.max_size {
            // In a cluster, with the other nodes' members as of their last heartbeat.
            let elsewhere = self
                .cluster
                .as_ref()
                .map_or(0, |c| c.remote_members(&self.shared.id));
            if self.members.len() + elsewhere >= max as usize {
                return Err(DialogueError::new(
                    ErrorCode::RoomFull,
                    format!("room '{}' is full ({max} members)", self.room_id()),
                ));
            }
        }
        let subscriptions = self.subscriptions_of(&mut msg);
        // A recovered session that gets its replay never left: nothing to announce.
        let replayed = matches!(history, JoinHistory::Replay(_));
        if let (true, false, Some(slot)) = (msg.quiet, replayed, msg.slot) {
            // Joined afresh: what the session had of this room means nothing now.
            msg.outbox.forget_positions(slot);
        }
        if !(msg.quiet && replayed) {
            self.send_to(
                &msg.outbox,
                "dialogue:joined",
                &self.joined_json(resume.as_ref()),
            );
        }
        match history {
            JoinHistory::Sync(deep) => {
                if let Some(history) = self.join_history(&subscriptions, deep) {
                    self.send_to(&msg.outbox, "dialogue:history", &history);
                }
            }
            JoinHistory::Replay(events) => {
                for (name, event) in events {
                    let text = encode_event("dialogue:event", &event.json);
                    let at = msg.slot.map(|slot| (slot, &**name, event.seq));
                    msg.outbox.event_text(&text, at);
                }
            }
            JoinHistory::Nothing => {}
        }
        self.hooks.on_joined(&msg.identity, &self.shared.id);
        log::debug!("{} joined room '{}'", msg.identity.user_id, self.shared.id);
        let positions = self
            .events
            .iter()
            .filter_map(|(name, state)| Some((name.clone(), state.history.as_ref()?.last_seq())))
            .collect();
        let spec = subscriptions.spec();
        self.presence_add(&msg.identity.user_id);
        self.members.insert(
            msg.conn,
            Member {
                outbox: msg.outbox,
                subscriptions,
                identity: msg.identity,
                slot: msg.slot,
            },
        );
        self.set_size();
        self.joins.inc();
        Ok(JoinOutcome {
            resume,
            positions,
            subscriptions: Some(spec),
            added: true,
            epoch: self.epoch,
        })
    }

    /// The subscriptions a joining member starts with: restored ones, or the defaults.
    fn subscriptions_of(&self, msg: &mut Join) -> Subscriptions {
        match msg.subscriptions.take() {
            Some(spec) => Subscriptions::from_spec(spec),
            None => self.default_subscriptions(),
        }
    }

    fn default_subscriptions(&self) -> Subscriptions {
        match &self.shared.default_subscriptions {
            None => Subscriptions::All,
            Some(list) => Subscriptions::Only(list.iter().cloned().collect()),
        }
    }

    /// `dialogue:joined {roomId, roomName, resume?}`.
    fn joined_json(&self, resume: Option<&serde_json::Value>) -> String {
        let mut joined = serde_json::json!({
            "roomId": self.room_id(),
            "roomName": self.shared.name,
        });
        if let Some(resume) = resume {
            joined["resume"] = resume.clone();
        }
        to_json(&joined)
    }

    /// Claims the room in the database and restores each history window and counter before
    /// any message is handled (retrying while the database is unreachable or another owner
    /// holds the room).
    fn claim(&mut self, ctx: &mut Context<Self>) {
        let request = ClaimRoom {
            room_id: self.shared.id.clone(),
            owner: self.owner.clone(),
            windows: self
                .events
                .values()
                .filter_map(|state| {
                    let limit = state.def.history_limit? as u64;
                    Some((state.name.clone(), limit, state.def.history_max_bytes))
                })
                .collect(),
            counters: self
                .events
                .values()
                .filter(|state| state.def.history_limit.is_none())
                .map(|state| state.name.clone())
                .collect(),
        };
        let link = self.persistence.claim.clone();
        let cluster = self.cluster.clone();
        ctx.wait(
            claim_room(link, request, cluster)
                .into_actor(self)
                .map(|restore, act, ctx| match restore {
                    Some(restore) => act.restored(restore),
                    // The live nodes changed meanwhile: another node owns it now.
                    None => act.claim_abandoned(ctx),
                }),
        );
    }

    fn restored(&mut self, restore: RoomRestore) {
        self.set_restoring(false);
        self.shared.ready.store(true, Ordering::Relaxed);
        self.epoch = restore.epoch;
        for (name, window) in restore.windows {
            let Some(state) = self.events.get_mut(&*name) else {
                continue;
            };
            let Some(limit) = state.def.history_limit else {
                continue;
            };
            let mut events = window.events;
            events.reverse();
            // The event had no history before (a configuration change) and counted further:
            // numbering goes on from there, with nothing of that count in memory.
            let counted = restore.counters.get(&*name).copied().unwrap_or(0);
            let last_seq = if counted > window.last_seq {
                events.clear();
                counted
            } else {
                window.last_seq
            };
            if restore.epoch > 0 {
                self.epoch_floor.insert(name.to_string(), last_seq);
            }
            state.history = Some(EventHistory::restore(
                limit,
                state.def.history_max_bytes,
                events,
                last_seq,
            ));
            state.last_assigned = last_seq;
            state.written = window.last_seq;
            if window.last_seq > 0 {
                log::debug!(
                    "room '{}' event '{name}' continues at seq {}",
                    self.shared.id,
                    window.last_seq + 1
                );
            }
        }
        for (name, high_water) in &restore.counters {
            if let Some(state) = self.events.get_mut(name) {
                if state.history.is_none() {
                    state.last_assigned = *high_water;
                    state.reserved = *high_water;
                    state.committed = *high_water;
                }
            }
        }
        self.restored_counters = restore.counters;
        if self.epoch > 0 {
            log::debug!("room '{}' is at epoch {}", self.shared.id, self.epoch);
        }
        if let Some(before) = self.catch_up_from.take() {
            self.deliver_missed(before);
        }
    }

    /// One more connection of `user` is a member: the user came if it is the first (here and,
    /// in a cluster, on every other node).
    fn presence_add(&mut self, user: &Arc<str>) {
        let count = self.presence.entry(user.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.presence_dirty = true;
            if !self.present_elsewhere(user, None) {
                self.user_came(user);
            }
            self.schedule_presence();
        }
    }

    /// `user` is in the room now, and was not: a `memberJoined` unless it went in this batch.
    fn user_came(&mut self, user: &Arc<str>) {
        if self.shared.presence.is_none() {
            return; // no notices in this room
        }
        if !self.went.remove(user) {
            self.came.insert(user.clone());
        }
    }

    /// `user` is not in the room any more: a `memberLeft` unless it came in this batch.
    fn user_went(&mut self, user: &Arc<str>) {
        if self.shared.presence.is_none() {
            return;
        }
        if !self.came.remove(user) {
            self.went.insert(user.clone());
        }
    }

    /// A connection of `user` left: the user went if it was the last.
    fn presence_remove(&mut self, user: &Arc<str>) {
        let Some(count) = self.presence.get_mut(user) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.presence.remove(user);
            self.presence_dirty = true;
            if !self.present_elsewhere(user, None) {
                self.user_went(user);
            }
            self.schedule_presence();
        }
    }

    /// Notices go out in batches, [`PRESENCE_BATCH`] after the first change.
    fn schedule_presence(&mut self) {
        // In a cluster the node's own users are published for the others' `dialogue:presence`
        // even without notices.
        if (self.shared.presence.is_none() && self.cluster.is_none()) || self.presence_due {
            return;
        }
        let Some(flush) = self.flush_presence.clone() else {
            return;
        };
        self.presence_due = true;
        actix_rt::spawn(async move {
            actix_rt::time::sleep(PRESENCE_BATCH).await;
            flush.do_send(FlushPresence);
        });
    }

    /// `{roomId, members: [{userId, connections}], users}`.
    fn presence_json(&self) -> String {
        // This node's users and, in a cluster, the other nodes' ones.
        let mut all: HashMap<&Arc<str>, usize> = HashMap::new();
        for users in std::iter::once(&self.presence).chain(self.remote_presence.values()) {
            for (user, n) in users {
                *all.entry(user).or_insert(0) += n;
            }
        }
        let mut users: Vec<(&Arc<str>, &usize)> = all.iter().map(|(u, n)| (*u, n)).collect();
        users.sort();
        let members: Vec<serde_json::Value> = users
            .iter()
            .map(|(user, n)| serde_json::json!({ "userId": &***user, "connections": n }))
            .collect();
        to_json(&serde_json::json!({
            "roomId": self.room_id(),
            "members": members,
            "users": users.len(),
        }))
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

/// Asks the store for the room, retrying with backoff until it is ours — in a cluster, while
/// this node still owns it (`None` once it does not).
async fn claim_room(
    link: Recipient<ClaimRoom>,
    request: ClaimRoom,
    cluster: Option<crate::cluster::Cluster>,
) -> Option<RoomRestore> {
    let mut delay = std::time::Duration::from_millis(50);
    let mut said = None;
    loop {
        if cluster.as_ref().is_some_and(|c| !c.owns(&request.room_id)) {
            return None;
        }
        let why = match link.send(request.clone()).await {
            Ok(Ok(restore)) => {
                if said.is_some() {
                    log::info!("room '{}' is ours now", request.room_id);
                }
                return Some(restore);
            }
            Ok(Err(e)) => e,
            Err(_) => "the history store is not running".to_owned(),
        };
        // Once per reason (the lease's remaining time in it changes at every try).
        let reason = why.split(" (").next().unwrap_or(&why).to_owned();
        if said.as_ref() != Some(&reason) {
            log::warn!("room '{}' cannot start yet: {why}", request.room_id);
            said = Some(reason);
        }
        actix_rt::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(1));
    }
}

/// A random id for a room actor instance.
fn rand_instance() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
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
        self.me = Some(ctx.address().recipient());
        self.flush_presence = Some(ctx.address().recipient());
        self.start_in_cluster(ctx);
        log::debug!("room '{}' started", self.shared.id);
    }
}

impl Handler<Join> for RoomActor {
    type Result = ResponseFuture<Result<JoinOutcome, DialogueError>>;

    fn handle(&mut self, mut msg: Join, ctx: &mut Context<Self>) -> Self::Result {
        let _cork = cork();
        self.hand_over();
        if self.closed {
            let gone = DialogueError::room_not_found(&self.shared.id);
            return Box::pin(async move { Err(gone) });
        }
        if matches!(self.role, Role::Replica { synced: false, .. }) {
            // Without a copy of the owner's windows: wait for the sync under way.
            let room = self.shared.id.clone();
            return match self.park_join(msg) {
                Some(answer) => Box::pin(async move {
                    answer
                        .await
                        .unwrap_or_else(|_| Err(DialogueError::room_not_found(&room)))
                }),
                None => Box::pin(async move {
                    Err(DialogueError::new(
                        ErrorCode::StorageUnavailable,
                        format!("room '{room}' has no reachable owner node right now; try again"),
                    ))
                }),
            };
        }
        if let Some(member) = self.members.get(&msg.conn) {
            // Joining twice is harmless: confirm again, change nothing.
            self.send_to(&member.outbox, "dialogue:joined", &self.joined_json(None));
            let outcome = JoinOutcome {
                epoch: self.epoch,
                ..JoinOutcome::default()
            };
            return Box::pin(async move { Ok(outcome) });
        }
        if let Err(e) = self.hooks.before_join(&msg.identity, &self.shared.info()) {
            return Box::pin(async move { Err(e) });
        }
        if let Some(since) = msg.since.take() {
            return self.resume(msg, since, ctx);
        }
        let deep = match &msg.subscriptions {
            Some(spec) => self.deep_join_ranges(&Subscriptions::from_spec(spec.clone())),
            None => self.deep_join_ranges(&self.default_subscriptions()),
        };
        if deep.is_empty() {
            let result = self.complete_join(msg, JoinHistory::Sync(&[]), None);
            return Box::pin(async move { result });
        }
        // The join history is one page: each event's reading gets its share of the budget.
        let share = self.catalog.max_page_bytes / deep.len().max(1);
        let deep = deep
            .into_iter()
            .map(|(event, range)| (event, range, PageBudget::new(share)))
            .collect();
        self.join_after_loading(deep, ctx, move |act, pages| {
            let deep: Vec<_> = pages?.into_iter().flat_map(|p| p.events).collect();
            act.complete_join(msg, JoinHistory::Sync(&deep), None)
        })
    }
}

/// Merges streams (each in seq order) into one by time, keeping each stream's order; each
/// event comes with its stream's name.
fn merge_streams(
    streams: Vec<(Arc<str>, Vec<Arc<StoredEvent>>)>,
) -> Vec<(Arc<str>, Arc<StoredEvent>)> {
    let total = streams.iter().map(|(_, s)| s.len()).sum();
    let mut heads: Vec<_> = streams
        .into_iter()
        .map(|(name, s)| s.into_iter().map(move |e| (name.clone(), e)).peekable())
        .collect();
    let mut out = Vec::with_capacity(total);
    loop {
        let next = heads
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.peek().map(|(_, e)| (e.timestamp, i)))
            .min();
        let Some((_, i)) = next else {
            return out;
        };
        out.extend(heads[i].next());
    }
}

/// What a new member gets after `dialogue:joined`.
enum JoinHistory<'a> {
    /// `dialogue:history` (`syncHistoryOnJoin`), with `deep` older events from the store.
    Sync(&'a [Arc<StoredEvent>]),
    /// The events missed since the client's positions, as `dialogue:event`s in order, each
    /// with its event name.
    Replay(&'a [(Arc<str>, Arc<StoredEvent>)]),
    /// Nothing (a resume that cannot be served: the client pages).
    Nothing,
}

impl RoomActor {
    /// Reads `ranges` from the store while the room waits — so no event can reach the new
    /// member before what it is owed — then finishes the join with the pages read.
    fn join_after_loading<F>(
        &mut self,
        ranges: Vec<(Arc<str>, SeqRange, PageBudget)>,
        ctx: &mut Context<Self>,
        finish: F,
    ) -> ResponseFuture<Result<JoinOutcome, DialogueError>>
    where
        F: FnOnce(
                &mut Self,
                Result<Vec<LoadedPage>, DialogueError>,
            ) -> Result<JoinOutcome, DialogueError>
            + 'static,
    {
        let loads: Vec<_> = ranges
            .into_iter()
            .map(|(event, range, budget)| {
                self.persistence.load.send(LoadRange {
                    room_id: self.shared.id.clone(),
                    event,
                    lo: range.lo,
                    hi: range.hi,
                    budget,
                })
            })
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        ctx.wait(futures_util::future::join_all(loads).into_actor(self).map(
            move |results, act, _| {
                let pages = results
                    .into_iter()
                    .map(|r| {
                        r.unwrap_or_else(|_| {
                            Err(DialogueError::new(
                                ErrorCode::StorageUnavailable,
                                "the history store is not running",
                            ))
                        })
                    })
                    .collect();
                let _ = tx.send(finish(act, pages));
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

    /// A join with `since`: exactly the events after the client's positions — from the
    /// window, and from the store when older — in seq order per event, then live events.
    /// Events the member is not subscribed to, or without history, are not replayed. Too far
    /// behind (over `limits.maxResumeEvents` events or `limits.maxPageBytes` bytes), or a
    /// position the room never reached: the join succeeds without replay and the report says
    /// why (the client pages as usual).
    fn resume(
        &mut self,
        msg: Join,
        since: BTreeMap<String, u64>,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<JoinOutcome, DialogueError>> {
        let subscriptions = match &msg.subscriptions {
            Some(spec) => Subscriptions::from_spec(spec.clone()),
            None => self.default_subscriptions(),
        };
        // A recovered session that cannot be replayed joins afresh, with its join history.
        let unserved = if msg.quiet {
            JoinHistory::Sync(&[])
        } else {
            JoinHistory::Nothing
        };
        let mut plan: Vec<(Arc<str>, SeqRange)> = Vec::new();
        let mut missed = 0u64;
        for (name, &seen) in &since {
            let Some(state) = self.events.get(name.as_str()) else {
                continue;
            };
            let Some(history) = state
                .history
                .as_ref()
                .filter(|_| subscriptions.contains(name))
            else {
                continue;
            };
            let lost_tail = msg.epoch.is_some_and(|e| e < self.epoch)
                && !state.stored()
                && self
                    .epoch_floor
                    .get(name.as_str())
                    .is_some_and(|&floor| seen > floor);
            if lost_tail {
                let report = serde_json::json!({
                    "resumed": false,
                    "reason": "UNKNOWN_POSITION",
                    "message": format!(
                        "'{name}' seq {seen} was accepted before an unclean stop and lost; the room is at epoch {} now: read the history instead",
                        self.epoch
                    ),
                });
                let result = self.complete_join(msg, unserved, Some(report));
                return Box::pin(async move { result });
            }
            if seen > history.last_seq() {
                let report = serde_json::json!({
                    "resumed": false,
                    "reason": "UNKNOWN_POSITION",
                    "message": format!(
                        "'{name}' is at seq {} here, not {seen}; read the history instead",
                        history.last_seq()
                    ),
                });
                let result = self.complete_join(msg, unserved, Some(report));
                return Box::pin(async move { result });
            }
            let range = SeqRange {
                lo: seen + 1,
                hi: history.last_seq(),
            };
            missed += range.len();
            plan.push((state.name.clone(), range));
        }
        let max_events = self.catalog.max_resume_events as u64;
        let too_far = move |why: String| {
            serde_json::json!({
                "resumed": false,
                "reason": "TOO_FAR_BEHIND",
                "missed": missed,
                "message": why,
            })
        };
        if missed > max_events {
            let report = too_far(format!(
                "{missed} events were missed; a resume replays at most {max_events} (limits.maxResumeEvents): read the history instead"
            ));
            let result = self.complete_join(msg, unserved, Some(report));
            return Box::pin(async move { result });
        }
        // The older parts come from the store, each with a share of the page budget.
        let deep: Vec<_> = plan
            .iter()
            .filter_map(|(name, range)| {
                let history = self.events.get(&**name)?.history.as_ref()?;
                let first = history.first_seq_in_memory();
                (!range.is_empty() && range.lo < first).then(|| {
                    let older = SeqRange {
                        lo: range.lo,
                        hi: range.hi.min(first - 1),
                    };
                    (name.clone(), older)
                })
            })
            .collect();
        let max_bytes = self.catalog.max_page_bytes;
        let share = max_bytes / deep.len().max(1);
        let deep_names: Vec<Arc<str>> = deep.iter().map(|(name, _)| name.clone()).collect();
        let deep = deep
            .into_iter()
            .map(|(name, range)| (name, range, PageBudget::new(share)))
            .collect();
        self.join_after_loading(deep, ctx, move |act, pages| {
            // Per event: its stored part (oldest first), then its window part.
            let mut stored: HashMap<Arc<str>, Vec<Arc<StoredEvent>>> = HashMap::new();
            let mut cut = false;
            for (name, page) in deep_names.into_iter().zip(pages?) {
                cut |= page.cut;
                stored.insert(name, page.events.into_iter().rev().collect());
            }
            let mut streams = Vec::new();
            let mut counts = serde_json::Map::new();
            for (name, range) in &plan {
                let mut stream = stored.remove(name).unwrap_or_default();
                if let Some(history) = act.events.get(&**name).and_then(|s| s.history.as_ref()) {
                    stream.extend(history.newest_first(*range).rev().cloned());
                }
                counts.insert(name.to_string(), stream.len().into());
                streams.push((name.clone(), stream));
            }
            let events = merge_streams(streams);
            let bytes: usize = events.iter().map(|(_, e)| e.weight()).sum();
            if cut || bytes > max_bytes {
                let report = too_far(format!(
                    "the missed events are over {max_bytes} bytes (limits.maxPageBytes): read the history instead"
                ));
                let unserved = if msg.quiet {
                    JoinHistory::Sync(&[])
                } else {
                    JoinHistory::Nothing
                };
                return act.complete_join(msg, unserved, Some(report));
            }
            let report = serde_json::json!({ "resumed": true, "events": counts });
            act.complete_join(msg, JoinHistory::Replay(&events), Some(report))
        })
    }
}

/// How long presence notices gather before they go out (one frame per batch and kind).
const PRESENCE_BATCH: std::time::Duration = std::time::Duration::from_millis(50);

/// Sends the presence notices gathered since the last batch.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushPresence;

impl Handler<FlushPresence> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: FlushPresence, _: &mut Context<Self>) {
        let _cork = cork();
        self.presence_due = false;
        if std::mem::take(&mut self.presence_dirty) {
            self.publish_presence(false);
        }
        if self.shared.presence.is_none() {
            return;
        }
        let came = std::mem::take(&mut self.came);
        let went = std::mem::take(&mut self.went);
        let max = self.shared.presence.unwrap_or(0);
        if self.members.len() > max {
            return; // too big a room to tell everyone of everyone
        }
        for (event, users) in [
            ("dialogue:memberJoined", came),
            ("dialogue:memberLeft", went),
        ] {
            if users.is_empty() {
                continue;
            }
            let ids: Vec<&str> = users.iter().map(|u| &**u).collect();
            let json = to_json(&serde_json::json!({ "roomId": self.room_id(), "userIds": ids }));
            let frame = SharedFrame::new(ByteString::from(encode_event(event, &json)));
            for member in self.members.values() {
                member.outbox.shared(&frame);
            }
        }
    }
}

impl Handler<GetPresence> for RoomActor {
    type Result = Result<String, DialogueError>;

    fn handle(&mut self, msg: GetPresence, _: &mut Context<Self>) -> Self::Result {
        self.check_member(msg.conn)?;
        Ok(self.presence_json())
    }
}

impl Handler<GetRoomStats> for RoomActor {
    type Result = MessageResult<GetRoomStats>;

    fn handle(&mut self, _: GetRoomStats, _: &mut Context<Self>) -> Self::Result {
        let mut history: Vec<StreamStats> = self
            .events
            .values()
            .filter_map(|state| {
                let window = state.history.as_ref()?;
                Some(StreamStats {
                    event: state.name.to_string(),
                    in_memory: window.len(),
                    stored: state.written,
                    last_seq: state.last_assigned,
                })
            })
            .collect();
        history.sort_by(|a, b| a.event.cmp(&b.event));
        MessageResult(RoomStats {
            id: self.shared.id.to_string(),
            name: self.shared.name.clone(),
            members: self.members.len(),
            users: self.presence.len(),
            published: self.events.values().map(|s| s.published.get()).sum(),
            delivered: self.events.values().map(|s| s.delivered.get()).sum(),
            history,
            role: self
                .cluster
                .as_ref()
                .map(|_| self.role.name(self.shared.ready.load(Ordering::Relaxed))),
            owner: self.cluster.as_ref().and_then(|c| match &self.role {
                Role::Owner => Some(c.node.to_string()),
                Role::HandingOver => None,
                Role::Replica { owner, .. } => owner.as_ref().map(|o| o.to_string()),
            }),
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
        self.presence_remove(&member.identity.user_id);
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
            self.presence_remove(&member.identity.user_id);
            self.set_size();
            self.hooks.on_left(&member.identity, &self.shared.id);
        }
    }
}

impl Handler<SetSubscription> for RoomActor {
    /// The number of names the member's list holds now.
    type Result = Result<SubscriptionChange, DialogueError>;

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
        let with_history: Vec<(String, u64)> = self
            .events
            .iter()
            .filter_map(|(name, state)| Some((name.clone(), state.history.as_ref()?.last_seq())))
            .collect();
        let Some(member) = self.members.get_mut(&msg.conn) else {
            return Err(DialogueError::not_in_room(&self.shared.id));
        };
        let before: Vec<bool> = with_history
            .iter()
            .map(|(name, _)| member.subscriptions.contains(name))
            .collect();
        // The names a connection's subscription lists hold, over all its rooms, are bounded
        // like the names a `"*"` room keeps: `msg.others` are those of its other rooms.
        let cap = match self.catalog.max_event_types_per_room {
            0 => MAX_SUBSCRIPTION_NAMES,
            cap => cap,
        };
        let growth = match (&msg.event, msg.subscribed, &member.subscriptions) {
            (Some(event), true, Subscriptions::Only(set))
            | (Some(event), false, Subscriptions::AllExcept(set)) => {
                usize::from(!set.contains(event))
            }
            (Some(_), false, Subscriptions::All) => all_events
                .as_ref()
                .map_or(1, |all| all.len().saturating_sub(1)),
            _ => 0,
        };
        if growth > 0 && msg.others + member.subscriptions.listed() + growth > cap {
            return Err(DialogueError::new(
                ErrorCode::EventNotAllowed,
                format!(
                    "a connection's subscriptions list at most {cap} event names in all (limits.maxEventTypesPerRoom)"
                ),
            ));
        }
        let current = std::mem::replace(&mut member.subscriptions, Subscriptions::All);
        member.subscriptions = match (msg.event, msg.subscribed, current) {
            (None, true, _) => Subscriptions::All,
            (None, false, _) => Subscriptions::Only(HashSet::new()),
            (Some(_), true, Subscriptions::All) => Subscriptions::All,
            (Some(event), true, Subscriptions::Only(mut set))
            | (Some(event), false, Subscriptions::AllExcept(mut set)) => {
                let only = msg.subscribed;
                set.insert(event);
                if only {
                    Subscriptions::Only(set)
                } else {
                    Subscriptions::AllExcept(set)
                }
            }
            (Some(event), true, Subscriptions::AllExcept(mut set)) => {
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
            (Some(event), false, Subscriptions::Only(mut set)) => {
                set.remove(&event);
                Subscriptions::Only(set)
            }
        };
        let newly = with_history
            .iter()
            .zip(before)
            .filter(|((name, _), was)| !was && member.subscriptions.contains(name))
            .map(|((name, seq), _)| (name.to_string(), *seq))
            .collect();
        Ok(SubscriptionChange {
            listed: member.subscriptions.listed(),
            spec: member.subscriptions.spec(),
            newly,
        })
    }
}

impl Handler<Trigger> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Trigger, ctx: &mut Context<Self>) {
        let _cork = cork();
        if !self.owner_now(ctx) {
            return self.forward(msg, ctx);
        }
        self.accept_keyed(msg, ctx);
    }
}

impl Handler<Committed> for RoomActor {
    type Result = ();

    /// The store's answer to the oldest batch handed over: its `stored` events become
    /// visible — window, fan-out, ack — in the order they were accepted.
    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        // A batch's frames reach each quiet connection in one write.
        let _cork = cork();
        let Some(Awaiting {
            pending,
            marks,
            written,
        }) = self.awaiting.pop_front()
        else {
            return;
        };
        if msg.stop.is_none() {
            for (event, seq) in written {
                if let Some(state) = self.events.get_mut(&*event) {
                    state.written = state.written.max(seq);
                }
            }
        }
        for p in &pending {
            if let Some(state) = self.events.get_mut(&*p.event) {
                state.pending -= 1;
            }
        }
        if let Some(reason) = &msg.stop {
            self.stop_writing(reason.clone());
        }
        if !msg.counters_refused {
            for mark in marks {
                if let Some(state) = self.events.get_mut(&*mark.event) {
                    state.committed = state.committed.max(mark.high_water);
                }
            }
        }
        for p in pending {
            // An event without history is safe to show only under a seq the database's counter
            // covers: otherwise a restart could hand it out again.
            let uncounted = self
                .events
                .get(&*p.event)
                .is_some_and(|s| s.history.is_none() && p.stored.seq > s.committed);
            if uncounted {
                p.reply.answer(Err(DialogueError::new(
                    ErrorCode::StorageUnavailable,
                    "the event was not stored: its counter could not be written",
                )));
                continue;
            }
            let refused = msg
                .quarantined
                .iter()
                .find(|q| q.event == p.event && q.seq == p.stored.seq);
            let (stored, frame, result) = match refused {
                None => {
                    let json = p.echo.then(|| p.stored.json.to_string());
                    let seq = p.stored.seq;
                    (p.stored, p.frame, Ok(Triggered { seq, json }))
                }
                // Not written, and the room stops: nothing to show; the window keeps a
                // stand-in so its seqs stay contiguous.
                Some(q) if msg.stop.is_some() => {
                    if let Some(history) = self
                        .events
                        .get_mut(&*p.event)
                        .and_then(|s| s.history.as_mut())
                    {
                        history.push(Arc::new(p.stored.tombstone(&self.shared.id, &p.event)));
                    }
                    p.reply.answer(Err(DialogueError::new(
                        ErrorCode::StorageUnavailable,
                        format!("the event was not stored (it is quarantined): {}", q.error),
                    )));
                    continue;
                }
                Some(q) => {
                    // What the database holds at that seq now (or, after a conflict, what
                    // stands in for the other event there, in memory only).
                    let tombstone = Arc::new(p.stored.tombstone(&self.shared.id, &p.event));
                    let frame = SharedFrame::new(ByteString::from(encode_event(
                        "dialogue:event",
                        &tombstone.json,
                    )));
                    let error = DialogueError::new(
                        ErrorCode::StorageUnavailable,
                        format!(
                            "the database refused this event (seq {} is quarantined): {}",
                            q.seq, q.error
                        ),
                    );
                    (tombstone, frame, Err(error))
                }
            };
            if let Some(history) = self
                .events
                .get_mut(&*p.event)
                .and_then(|s| s.history.as_mut())
            {
                history.push(stored.clone());
            }
            self.publish(&p.event, &frame, &stored);
            p.reply.answer(result);
            METRICS
                .fanout_seconds
                .observe(p.accepted_at.elapsed().as_secs_f64());
        }
        self.maybe_finish_close(ctx);
        self.maybe_finish_hand_over(ctx);
    }
}

/// A refused trigger: the error, and the reply to answer it on.
type Refusal = Box<(DialogueError, Reply)>;

impl RoomActor {
    /// Validates and numbers one event, hands it to the store, and — `accepted` — keeps and
    /// fans it out and answers at once, or — `stored` — queues it for its commit.
    fn accept(&mut self, msg: Trigger, ctx: &mut Context<Self>) -> Result<(), Refusal> {
        let started = std::time::Instant::now();
        let Trigger {
            conn,
            identity,
            event,
            data,
            meta,
            echo,
            reply,
            key: _,
        } = msg;
        let refuse = |error: DialogueError, reply: Reply| Err(Box::new((error, reply)));
        if self.closed {
            return refuse(DialogueError::room_not_found(&self.shared.id), reply);
        }
        if let Some(reason) = &self.stopped {
            let error = DialogueError::new(
                ErrorCode::StorageUnavailable,
                format!("room '{}' cannot store events: {reason}", self.shared.id),
            );
            return refuse(error, reply);
        }
        if let Err(e) = self.check_member(conn) {
            return refuse(e, reply);
        }
        let room_id = self.shared.id.clone();
        let backlog_full = self.persistence.is_backlog_full();
        let available = self.persistence.available.load(Ordering::Relaxed);
        let def = match self.event_def(&event) {
            Ok(def) => def,
            Err(e) => return refuse(e, reply),
        };
        let data = match self.hooks.before_each(&identity, &room_id, &event, data) {
            Ok(data) => data,
            Err(e) => return refuse(e, reply),
        };
        if let Err(e) = def.validate(&data) {
            if let Some(state) = self.events.get(&event) {
                state.counters.validation_failures.inc();
            }
            return refuse(e, reply);
        }
        let epoch = self.epoch;
        // Accepted: only now does a new name of a `"*"` room take state.
        let state = match self.event_state(&event) {
            Ok(state) => state,
            Err(e) => return refuse(e, reply),
        };
        let stored_mode = state.stored();
        if stored_mode && !available {
            let error = DialogueError::new(
                ErrorCode::StorageUnavailable,
                "the database is unavailable and this event is acknowledged only once stored; try again later",
            );
            return refuse(error, reply);
        }
        if backlog_full && (state.history.is_some() || stored_mode) {
            let error = DialogueError::new(
                ErrorCode::StorageUnavailable,
                "the database is unavailable and the history backlog is full; try again later",
            );
            return refuse(error, reply);
        }

        let seq = state.last_assigned + 1;
        state.last_assigned = seq;
        let event_name = state.name.clone();
        let stored = Arc::new(StoredEvent::new(
            &room_id,
            &event,
            seq,
            epoch,
            now_ms(),
            identity.user_id.clone(),
            &data,
            meta.as_ref(),
        ));
        let frame = SharedFrame::new(ByteString::from(encode_event(
            "dialogue:event",
            &stored.json,
        )));
        let has_history = state.history.is_some();
        // Without history only the counter is stored: exactly (`stored`), or reserved ahead in
        // blocks (`accepted`).
        let mark = if has_history {
            None
        } else if stored_mode {
            Some(seq)
        } else if seq + COUNTER_BLOCK / 2 > state.reserved {
            state.reserved = seq + COUNTER_BLOCK;
            Some(state.reserved)
        } else {
            None
        };
        // An `accepted` counter above what the database committed waits like a `stored` one.
        let wait = stored_mode || (!has_history && (seq > state.committed || state.pending > 0));
        if wait {
            state.pending += 1;
        }
        if has_history {
            self.unsent.row(&event_name, stored.clone());
        }
        if let Some(high_water) = mark {
            self.unsent.mark(&event_name, high_water, false);
        }
        if !self.unsent.is_empty() {
            // A client waits for this one (`stored`): its batch goes at the end of this drain.
            self.schedule_hand_over(ctx, wait);
        }

        if wait {
            self.unsent.pending.push(Pending {
                event: event_name,
                stored,
                frame,
                reply,
                echo,
                accepted_at: started,
            });
            return Ok(());
        }
        if let Some(history) = self
            .events
            .get_mut(&*event_name)
            .and_then(|s| s.history.as_mut())
        {
            // What falls out of the window is in the store's hands already.
            history.push(stored.clone());
        }
        self.publish(&event_name, &frame, &stored);
        let json = echo.then(|| stored.json.to_string());
        reply.answer(Ok(Triggered { seq, json }));
        METRICS
            .fanout_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }
}

impl Handler<GetHistory> for RoomActor {
    type Result = ResponseFuture<Result<HistoryPage, DialogueError>>;

    fn handle(&mut self, msg: GetHistory, _: &mut Context<Self>) -> Self::Result {
        self.hand_over();
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
        // A page holds at most `limits.maxPageBytes` of events: a larger one is refused (the
        // client asks for fewer) rather than built.
        let max_bytes = self.catalog.max_page_bytes;
        let too_large = move || {
            DialogueError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "this page would be over {max_bytes} bytes (limits.maxPageBytes); ask for fewer events"
                ),
            )
        };
        let mut budget = PageBudget::new(max_bytes);
        let from_memory: Vec<Arc<StoredEvent>> = history
            .map(|h| budget.take(h.newest_first(range)))
            .unwrap_or_default();
        if budget.was_cut() {
            return Box::pin(async move { Err(too_large()) });
        }
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
                budget,
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
                if older.cut {
                    return Err(too_large());
                }
                events.extend(older.events);
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
        self.flush_exact();
    }
}

impl Handler<CloseRoom> for RoomActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: CloseRoom, ctx: &mut Context<Self>) -> Self::Result {
        self.hand_over();
        self.closed = true;
        // Members are let go, the lease released, the deletion answered and the actor stopped
        // once everything accepted is in the database (and `stored` events fanned out to the
        // members that were there when they were accepted): a room created again with this
        // id starts after that.
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.closing = Some(tx);
        self.maybe_finish_close(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
