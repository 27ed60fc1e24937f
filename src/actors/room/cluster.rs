//! A room in a cluster (`docs/cluster.md`). Every node runs an actor for every room; the
//! room's owner (the live node with the highest rendezvous hash) numbers, stores and
//! publishes its events, exactly as a single node does, and publishes each once on the
//! room's channel. The others are replicas: they keep their local members, subscriptions,
//! join history and history pages themselves, from a copy of the owner's windows kept current
//! by the published events, and forward triggers to the owner.
//!
//! Ownership moves when the live nodes change ([`Reassess`]): an owner that is not the owner
//! any more writes what it accepted, gives up its database lease and becomes a replica; a
//! replica that becomes the owner claims the lease (the epoch rises after an unclean stop)
//! and restores from the database, then delivers to its members what they had not received.

use super::RoomActor;
use crate::actors::messages::*;
use crate::actors::outbox::{cork, SharedFrame};
use crate::auth::Identity;
use crate::cluster::bus::{Failure, Op, RoomFeed};
use crate::error::{DialogueError, ErrorCode};
use crate::history::EventHistory;
use crate::protocol::dialogue::to_json;
use crate::protocol::socketio::encode_event;
use actix::prelude::*;
use bytestring::ByteString;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The trigger a forwarded [`Op::Trigger`] asks for, with its key (`None` for another op).
fn trigger_of(op: Op, reply: Reply) -> Option<Trigger> {
    let Op::Trigger {
        key,
        user_id,
        claims,
        trusted,
        event,
        data,
        meta,
        echo,
    } = op
    else {
        return None;
    };
    let identity = Arc::new(Identity {
        user_id: user_id.into(),
        claims,
        trusted,
    });
    Some(Trigger {
        conn: None,
        identity,
        event,
        data,
        meta,
        echo,
        reply,
        key: Some(key),
    })
}

/// Forwarded triggers whose seq a room keeps, for retries whose first answer was lost.
const FORWARDED_KEYS: usize = 4096;

/// What this node is for the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Role {
    /// Numbers, stores and publishes (claiming its lease until `shared.ready`).
    Owner,
    /// Was the owner; writes what it accepted, then gives up its lease.
    HandingOver,
    /// Follows `owner`'s events; `synced` once it holds a copy of the owner's windows.
    Replica {
        owner: Option<Arc<str>>,
        synced: bool,
    },
}

impl Role {
    /// For `/api/stats`.
    pub(super) fn name(&self, ready: bool) -> &'static str {
        match self {
            Role::Owner if ready => "owner",
            Role::Owner => "claiming",
            Role::HandingOver => "handing-over",
            Role::Replica { .. } => "replica",
        }
    }
}

/// One event as the owner publishes it (its `EventMessage` JSON).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEvent<'a> {
    event: String,
    #[serde(borrow)]
    data: &'a RawValue,
    from: String,
    timestamp: i64,
    #[serde(borrow, default)]
    meta: Option<&'a RawValue>,
    seq: u64,
    #[serde(default)]
    epoch: u64,
}

/// The owner's answer to [`Op::Window`].
#[derive(Deserialize)]
struct Window<'a> {
    epoch: u64,
    #[serde(default)]
    floors: HashMap<String, u64>,
    #[serde(borrow)]
    streams: Vec<WindowStream<'a>>,
}

#[derive(Deserialize)]
struct WindowStream<'a> {
    event: String,
    last: u64,
    /// Oldest first.
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// How a replica's sync ended.
enum Synced {
    /// The owner's window (its answer to [`Op::Window`]).
    Window(Arc<str>, String),
    /// This node owns the room now.
    Mine,
    /// No owner answered in time.
    Failed,
}

impl RoomActor {
    /// The room's first step in a cluster: the owner claims it, a replica syncs.
    pub(super) fn start_in_cluster(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = self.cluster.clone() else {
            return self.claim(ctx);
        };
        // Every node follows the room's channel (an owner for the others' presence), and
        // asks the others for their users once subscribed.
        let (room, instance) = (self.shared.id.clone(), self.instance);
        let feed = ctx.address().recipient::<RoomFeed>();
        let bus = cluster.bus.clone();
        ctx.spawn(
            async move { bus.subscribe(room, instance, feed).await }
                .into_actor(self)
                .map(|_, act, _| act.publish_presence(true)),
        );
        if cluster.owns(&self.shared.id) {
            self.role = Role::Owner;
            self.claim(ctx);
        } else {
            self.become_replica(ctx);
        }
    }

    /// A claim given up because another node owns the room now.
    pub(super) fn claim_abandoned(&mut self, ctx: &mut Context<Self>) {
        log::info!("room '{}': another node owns it now", self.shared.id);
        self.become_replica(ctx);
    }

    /// The room answers as a replica from now on (its members stay).
    fn become_replica(&mut self, ctx: &mut Context<Self>) {
        self.catch_up_from = None;
        self.role = Role::Replica {
            owner: None,
            synced: false,
        };
        self.set_restoring(false);
        self.shared.ready.store(true, Ordering::Relaxed);
        // A node that left (a clean stop) follows nobody.
        if !self.cluster.as_ref().is_some_and(|c| c.has_left()) {
            self.sync(ctx);
        }
    }

    /// Checks who owns the room now and moves accordingly.
    pub(super) fn reassess(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        if self.closed {
            return;
        }
        self.forget_gone_nodes();
        let owner = cluster.owner(&self.shared.id);
        let mine = owner.as_deref() == Some(&*cluster.node);
        match (&self.role, mine) {
            (Role::Owner, false) => self.start_hand_over(ctx),
            (Role::Replica { .. }, true) => self.become_owner(ctx),
            (Role::Replica { owner: now, .. }, false) if *now != owner => self.sync(ctx),
            _ => {}
        }
    }

    /// Replica → owner: claims the database lease and restores (as at a start), then
    /// delivers to the local members what the restored windows hold beyond what they had.
    fn become_owner(&mut self, ctx: &mut Context<Self>) {
        log::info!("room '{}' is this node's now: claiming it", self.shared.id);
        self.role = Role::Owner;
        // Not counted as restoring: a take-over must not make `/readyz` fail on the nodes
        // that took a dead node's rooms.
        self.shared.ready.store(false, Ordering::Relaxed);
        self.syncing = false;
        self.sync_generation += 1;
        // A fresh lease token: the one of an earlier ownership was given up.
        self.owner = uuid::Uuid::new_v4().simple().to_string().into();
        self.catch_up_from = Some(self.last_seqs());
        self.claim(ctx);
    }

    /// Owner → replica: stops numbering (triggers go to the new owner), writes what it
    /// accepted, gives up the lease, then syncs from the new owner.
    fn start_hand_over(&mut self, ctx: &mut Context<Self>) {
        log::info!(
            "room '{}' moves to another node: handing it over",
            self.shared.id
        );
        self.role = Role::HandingOver;
        self.flush_exact();
        self.maybe_finish_hand_over(ctx);
    }

    /// Gives up the lease once everything accepted is written.
    pub(super) fn maybe_finish_hand_over(&mut self, ctx: &mut Context<Self>) {
        if self.role != Role::HandingOver || !self.awaiting.is_empty() || !self.unsent.is_empty() {
            return;
        }
        if self.stopped.take().is_some() {
            // It no longer holds `/readyz` down: the room is somebody else's.
            self.persistence.stopped.fetch_sub(1, Ordering::Relaxed);
        }
        let release = self.persistence.release.send(ReleaseRoom {
            room_id: self.shared.id.clone(),
            owner: self.owner.clone(),
        });
        ctx.wait(release.into_actor(self).map(|_, act, ctx| {
            log::info!("room '{}' handed over", act.shared.id);
            for waiter in act.handed_over.drain(..) {
                let _ = waiter.send(());
            }
            act.become_replica(ctx);
        }));
    }

    /// Per event with history: the last seq in the window.
    fn last_seqs(&self) -> HashMap<String, u64> {
        self.events
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), s.history.as_ref()?.last_seq())))
            .collect()
    }

    /// Delivers to the local members the events of the windows above `before` (what they
    /// had), in order per event.
    pub(super) fn deliver_missed(&mut self, before: HashMap<String, u64>) {
        let mut missed = Vec::new();
        for (name, state) in &self.events {
            let Some(history) = &state.history else {
                continue;
            };
            let had = before.get(name).copied().unwrap_or(0);
            if history.last_seq() <= had {
                continue;
            }
            let range = crate::history::SeqRange {
                lo: had + 1,
                hi: history.last_seq(),
            };
            let events: Vec<Arc<StoredEvent>> =
                history.newest_first(range).rev().cloned().collect();
            missed.push((state.name.clone(), events));
        }
        for (name, event) in super::merge_streams(missed) {
            let frame = SharedFrame::new(ByteString::from(encode_event(
                "dialogue:event",
                &event.json,
            )));
            self.deliver(&name, &frame, &event);
        }
    }

    /// Reads the owner's windows (subscribed to the room's channel first, so no event falls
    /// between), while the room waits: joins and pages are answered from a current copy.
    pub(super) fn sync(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        if self.closed {
            return;
        }
        // A sync under way is superseded (its answer is dropped): the owner changed.
        self.sync_generation += 1;
        let generation = self.sync_generation;
        self.syncing = true;
        self.feed_buffer.clear();
        let room = self.shared.id.clone();
        let feed = ctx.address().recipient::<RoomFeed>();
        let instance = self.instance;
        let attempt_limit = cluster.lease().max(Duration::from_secs(1));
        let budget = cluster.lease() * 3 + Duration::from_secs(5);
        // Spawned, not awaited: the room goes on answering (joins wait for the sync, events
        // published meanwhile are kept for after it).
        ctx.spawn(
            async move {
                let deadline = Instant::now() + budget;
                let mut subscribed = false;
                let mut pause = Duration::from_millis(50);
                while Instant::now() < deadline {
                    match cluster.owner(&room) {
                        Some(owner) if owner == cluster.node => return Synced::Mine,
                        Some(owner) => {
                            if !subscribed {
                                subscribed = cluster
                                    .bus
                                    .subscribe(room.clone(), instance, feed.clone())
                                    .await;
                            }
                            if subscribed {
                                let asked =
                                    cluster
                                        .bus
                                        .request(&owner, &room, &Op::Window, attempt_limit);
                                if let Ok(window) = asked.await {
                                    return Synced::Window(owner, window);
                                }
                            }
                        }
                        None => {}
                    }
                    actix_rt::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Synced::Failed
            }
            .into_actor(self)
            .map(move |synced, act, ctx| {
                if act.sync_generation == generation {
                    act.synced(synced, ctx)
                }
            }),
        );
    }

    fn synced(&mut self, synced: Synced, ctx: &mut Context<Self>) {
        self.syncing = false;
        match synced {
            Synced::Mine => {
                self.become_owner(ctx);
                return self.release_parked(ctx);
            }
            Synced::Failed => {
                log::warn!(
                    "room '{}': no owner answered; its joins and triggers are refused until one does",
                    self.shared.id
                );
                self.sync_failed(ctx);
            }
            Synced::Window(owner, json) => match self.apply_window(&json) {
                Ok(()) => {
                    log::debug!("room '{}' follows {owner}", self.shared.id);
                    self.role = Role::Replica {
                        owner: Some(owner),
                        synced: true,
                    };
                    // What was published while the window was read (older ones are in it).
                    for json in std::mem::take(&mut self.feed_buffer) {
                        self.follow(&json, ctx);
                    }
                }
                Err(e) => {
                    log::error!(
                        "room '{}': unreadable window from {owner}: {e}",
                        self.shared.id
                    );
                    self.sync_failed(ctx);
                }
            },
        }
        self.release_parked(ctx);
    }

    /// No copy of the owner's windows: try again in a second.
    fn sync_failed(&mut self, ctx: &mut Context<Self>) {
        self.role = Role::Replica {
            owner: None,
            synced: false,
        };
        self.feed_buffer.clear();
        ctx.run_later(Duration::from_secs(1), |act, ctx| {
            if matches!(act.role, Role::Replica { synced: false, .. }) && !act.syncing {
                act.sync(ctx);
            }
        });
    }

    /// Handles the joins that waited for a sync (after a failed one they are refused).
    fn release_parked(&mut self, ctx: &mut Context<Self>) {
        for (join, answer) in std::mem::take(&mut self.parked_joins) {
            let joined = <Self as Handler<Join>>::handle(self, join, ctx);
            actix_rt::spawn(async move {
                let _ = answer.send(joined.await);
            });
        }
    }

    /// A join on a replica without a copy of the owner's windows waits for the sync (started
    /// if none runs); with the sync failed and none running, it is refused.
    pub(super) fn park_join(
        &mut self,
        msg: Join,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<JoinOutcome, DialogueError>>> {
        if !matches!(self.role, Role::Replica { synced: false, .. }) || !self.syncing {
            return None;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.parked_joins.push((msg, tx));
        Some(rx)
    }

    /// Takes the owner's windows: what the local members had not received is delivered,
    /// then the windows replace this copy.
    fn apply_window(&mut self, json: &str) -> Result<(), serde_json::Error> {
        let window: Window = serde_json::from_str(json)?;
        let before = self.last_seqs();
        let epoch_changed = window.epoch != self.epoch;
        self.epoch = window.epoch;
        self.epoch_floor = window.floors;
        for stream in window.streams {
            let mut events = Vec::with_capacity(stream.events.len());
            for raw in stream.events {
                events.push(Arc::new(self.stored_from_wire(raw.get())?.1));
            }
            let Ok(state) = self.event_state(&stream.event) else {
                continue;
            };
            let Some(limit) = state.def.history_limit else {
                continue;
            };
            state.history = Some(EventHistory::restore(
                limit,
                state.def.history_max_bytes,
                events,
                stream.last,
            ));
            state.last_assigned = stream.last;
            state.written = stream.last;
        }
        // After an unclean stop of the old owner, seqs above its stored ones were lost and
        // are numbered again: members get what follows what the store kept.
        let before = if epoch_changed {
            before
                .into_iter()
                .map(|(name, seq)| {
                    let floor = self.epoch_floor.get(&name).copied().unwrap_or(seq);
                    (name, seq.min(floor))
                })
                .collect()
        } else {
            before
        };
        if !self.members.is_empty() {
            self.deliver_missed(before);
        }
        Ok(())
    }

    /// Parses a published event back into the owner's stored event (the same JSON text).
    fn stored_from_wire(&self, json: &str) -> Result<(String, StoredEvent), serde_json::Error> {
        let wire: WireEvent = serde_json::from_str(json)?;
        let stored = StoredEvent::new(
            &self.shared.id,
            &wire.event,
            wire.seq,
            wire.epoch,
            wire.timestamp,
            wire.from.as_str().into(),
            wire.data,
            wire.meta,
        );
        Ok((wire.event, stored))
    }

    /// The window answer for a replica: epoch, lost-tail floors, and per event with history
    /// its last seq and window (oldest first).
    fn window_json(&self) -> String {
        let mut json = String::from("{\"epoch\":");
        json.push_str(&self.epoch.to_string());
        json.push_str(",\"floors\":");
        json.push_str(&to_json(&self.epoch_floor));
        json.push_str(",\"streams\":[");
        let mut first = true;
        for state in self.events.values() {
            let Some(history) = &state.history else {
                continue;
            };
            if !first {
                json.push(',');
            }
            first = false;
            json.push_str("{\"event\":");
            json.push_str(&to_json(&state.name));
            json.push_str(",\"last\":");
            json.push_str(&history.last_seq().to_string());
            json.push_str(",\"events\":[");
            super::push_joined(&mut json, history.snapshot().iter().map(|e| &*e.json));
            json.push_str("]}");
        }
        json.push_str("]}");
        json
    }

    /// A trigger on a replica: the membership is checked here, the rest by the owner. The
    /// request is sent at once (triggers keep their order); when no answer comes because the
    /// owner went, it goes to the next owner, within a bound.
    pub(super) fn forward(&mut self, msg: Trigger, ctx: &mut Context<Self>) {
        let Trigger {
            conn,
            identity,
            event,
            data,
            meta,
            echo,
            reply,
            key,
        } = msg;
        if self.closed {
            return reply.answer(Err(DialogueError::room_not_found(&self.shared.id)));
        }
        if let Err(e) = self.check_member(conn) {
            return reply.answer(Err(e));
        }
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let op = Op::Trigger {
            // Kept when the trigger comes back to be forwarded again.
            key: key.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
            user_id: identity.user_id.to_string(),
            claims: identity.claims.clone(),
            trusted: identity.trusted,
            event,
            data,
            meta,
            echo,
        };
        let room = self.shared.id.clone();
        let budget = cluster.lease() * 3 + Duration::from_secs(5);
        let per_attempt = cluster.lease().max(Duration::from_secs(1));
        let target = match &self.role {
            Role::Replica {
                owner: Some(owner), ..
            } => Some(owner.clone()),
            _ => cluster.owner(&room).filter(|o| *o != cluster.node),
        };
        let mut attempt = target.map(|owner| {
            let answer = cluster.bus.request(&owner, &room, &op, per_attempt);
            (owner, answer)
        });
        let me = ctx.address();
        actix_rt::spawn(async move {
            let deadline = Instant::now() + budget;
            loop {
                // Each attempt waits for its answer (or `per_attempt`): an owner being replaced
                // still answers what it accepted, and a retry carries the same key, so the same
                // owner does not take it twice.
                if let Some((asked, answer)) = attempt.take() {
                    match answer.await {
                        Ok(json) => {
                            let triggered = serde_json::from_str::<Triggered>(&json)
                                .map_err(|e| DialogueError::invalid(e.to_string()));
                            return reply.answer(triggered);
                        }
                        Err(Failure::Refused(e)) => return reply.answer(Err(e)),
                        Err(Failure::NotOwner) => {}
                        // No answer from an owner still in the view: it may be dead (its
                        // heartbeat has not run out yet) or its answer was lost. Wait for the
                        // view to drop it (then ask the next owner) for up to a lease, rather
                        // than asking a dead node again.
                        Err(Failure::NoAnswer) => {
                            let until = Instant::now() + cluster.lease();
                            while Instant::now() < until.min(deadline)
                                && cluster.owner(&room).as_deref() == Some(&*asked)
                            {
                                actix_rt::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
                if Instant::now() >= deadline {
                    return reply.answer(Err(DialogueError::new(
                        ErrorCode::StorageUnavailable,
                        format!("room '{room}' has no reachable owner node right now; try again"),
                    )));
                }
                actix_rt::time::sleep(Duration::from_millis(100)).await;
                match cluster.owner(&room) {
                    // This node owns the room now: the room takes the trigger itself.
                    Some(owner) if owner == cluster.node => {
                        // With its key: a retry of what the room took as owner is answered.
                        if let Some(trigger) = trigger_of(op, reply) {
                            me.do_send(trigger);
                        }
                        return;
                    }
                    Some(owner) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        let answer = cluster
                            .bus
                            .request(&owner, &room, &op, per_attempt.min(left));
                        attempt = Some((owner, answer));
                    }
                    None => {}
                }
            }
        });
    }

    /// A replica delivers one published event: in seq order per event with history; a gap
    /// (a lost publish) or a new epoch (a new owner after a crash) reads the window again.
    fn follow(&mut self, json: &str, ctx: &mut Context<Self>) {
        match self.role {
            Role::Replica { synced: true, .. } => {}
            Role::Replica { synced: false, .. } if self.syncing => {
                return self.feed_buffer.push(json.to_owned());
            }
            _ => return, // the next sync covers it
        }
        let (name, stored) = match self.stored_from_wire(json) {
            Ok(parsed) => parsed,
            Err(e) => {
                log::warn!(
                    "room '{}': unreadable event from its owner: {e}",
                    self.shared.id
                );
                return;
            }
        };
        if stored.epoch < self.epoch {
            return; // from an owner that lost the room
        }
        if stored.epoch > self.epoch {
            return self.resync(ctx);
        }
        let Ok(state) = self.event_state(&name) else {
            return;
        };
        let stored = Arc::new(stored);
        if let Some(history) = state.history.as_mut() {
            let last = history.last_seq();
            if stored.seq <= last {
                return; // had it
            }
            if stored.seq > last + 1 {
                log::info!(
                    "room '{}': '{name}' seq {} after {last}: reading the owner's window",
                    self.shared.id,
                    stored.seq
                );
                return self.resync(ctx);
            }
            history.push(stored.clone());
            state.last_assigned = stored.seq;
            state.written = stored.seq;
        } else {
            state.last_assigned = state.last_assigned.max(stored.seq);
        }
        let frame = SharedFrame::new(ByteString::from(encode_event(
            "dialogue:event",
            &stored.json,
        )));
        let name: Arc<str> = state.name.clone();
        self.deliver(&name, &frame, &stored);
    }

    fn resync(&mut self, ctx: &mut Context<Self>) {
        if let Role::Replica { synced, .. } = &mut self.role {
            *synced = false;
        }
        self.sync(ctx);
    }

    /// True when this node owns the room; an owner whose view says otherwise (its Reassess
    /// may be queued behind this message) moves first.
    pub(super) fn owner_now(&mut self, ctx: &mut Context<Self>) -> bool {
        if self.role == Role::Owner
            && self
                .cluster
                .as_ref()
                .is_some_and(|c| !c.owns(&self.shared.id))
        {
            self.reassess(ctx);
        }
        self.role == Role::Owner
    }

    /// The owner takes a trigger; a forwarded one whose key it took already is answered
    /// with that seq (its first answer was lost).
    pub(super) fn accept_keyed(&mut self, trigger: Trigger, ctx: &mut Context<Self>) {
        if let Some(&seq) = trigger.key.as_ref().and_then(|k| self.forwarded.get(k)) {
            return trigger.reply.answer(Ok(Triggered { seq, json: None }));
        }
        let (key, name) = (trigger.key.clone(), trigger.event.clone());
        match self.accept(trigger, ctx) {
            Ok(()) => {
                if let Some(key) = key {
                    let seq = self.events.get(&name).map_or(0, |s| s.last_assigned);
                    self.remember_forwarded(key, seq);
                }
            }
            Err(e) => {
                let (error, reply) = *e;
                reply.answer(Err(error));
            }
        }
    }

    /// Keeps the seq of a forwarded trigger's key for its retries (the newest
    /// [`FORWARDED_KEYS`]).
    fn remember_forwarded(&mut self, key: String, seq: u64) {
        if self.forwarded_order.len() >= FORWARDED_KEYS {
            if let Some(oldest) = self.forwarded_order.pop_front() {
                self.forwarded.remove(&oldest);
            }
        }
        self.forwarded_order.push_back(key.clone());
        self.forwarded.insert(key, seq);
    }
}

impl Handler<RoomFeed> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: RoomFeed, ctx: &mut Context<Self>) {
        let _cork = cork();
        match msg {
            RoomFeed::Event(json) if json.starts_with(PRESENCE_PREFIX) => {
                self.follow_presence(&json)
            }
            RoomFeed::Event(json) => self.follow(&json, ctx),
            RoomFeed::Resync => {
                // Presence notices may have been lost too: ask again.
                self.publish_presence(true);
                if matches!(self.role, Role::Replica { .. }) {
                    self.resync(ctx)
                }
            }
        }
    }
}

/// How a node's users of a room start on the room's channel (events start `{"event":`).
const PRESENCE_PREFIX: &str = "{\"presence\":";

/// A node's users of a room, published on the room's channel when they change.
#[derive(serde::Serialize, Deserialize)]
struct NodePresence {
    node: String,
    /// User id → connections on that node.
    users: HashMap<String, usize>,
    /// The sender (just subscribed) asks every node for its users.
    #[serde(default)]
    ask: bool,
}

#[derive(serde::Serialize, Deserialize)]
struct PresenceMessage {
    presence: NodePresence,
}

impl RoomActor {
    /// True when `user` is in the room on another node (but `except`).
    pub(super) fn present_elsewhere(&self, user: &str, except: Option<&str>) -> bool {
        self.remote_presence
            .iter()
            .any(|(node, users)| Some(&**node) != except && users.contains_key(user))
    }

    /// Publishes this node's users of the room (`ask`: and asks the others for theirs).
    pub(super) fn publish_presence(&self, ask: bool) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let message = PresenceMessage {
            presence: NodePresence {
                node: cluster.node.to_string(),
                users: self
                    .presence
                    .iter()
                    .map(|(u, n)| (u.to_string(), *n))
                    .collect(),
                ask,
            },
        };
        if let Ok(json) = serde_json::to_string(&message) {
            let channel = crate::cluster::bus::room_channel(&self.shared.id);
            cluster.bus.publish(channel, json, None);
        }
    }

    /// Another node's users: who came and went cluster-wide is told to the members here.
    fn follow_presence(&mut self, json: &str) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let Ok(PresenceMessage { presence }) = serde_json::from_str::<PresenceMessage>(json) else {
            log::warn!(
                "room '{}': unreadable presence from another node",
                self.shared.id
            );
            return;
        };
        if presence.node == *cluster.node {
            return;
        }
        if presence.ask {
            self.publish_presence(false);
        }
        let node: Arc<str> = presence.node.into();
        let users: HashMap<Arc<str>, usize> = presence
            .users
            .into_iter()
            .map(|(u, n)| (Arc::from(u), n))
            .collect();
        let old = self.remote_presence.remove(&node).unwrap_or_default();
        for user in users.keys().filter(|u| !old.contains_key(*u)) {
            if !self.presence.contains_key(user) && !self.present_elsewhere(user, None) {
                self.user_came(user);
            }
        }
        let gone: Vec<Arc<str>> = old.into_keys().filter(|u| !users.contains_key(u)).collect();
        if !users.is_empty() {
            self.remote_presence.insert(node, users);
        }
        for user in gone {
            if !self.presence.contains_key(&user) && !self.present_elsewhere(&user, None) {
                self.user_went(&user);
            }
        }
        self.schedule_presence();
    }

    /// The users of nodes no longer live are gone (a node's death: `memberLeft` for them).
    fn forget_gone_nodes(&mut self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let live = cluster.view();
        let gone: Vec<Arc<str>> = self
            .remote_presence
            .keys()
            .filter(|node| !live.iter().any(|n| n.as_str() == &***node))
            .cloned()
            .collect();
        if gone.is_empty() || live.is_empty() {
            // Without any view (Redis away) nothing is known to be gone.
            return;
        }
        for node in gone {
            let users = self.remote_presence.remove(&node).unwrap_or_default();
            for user in users.into_keys() {
                if !self.presence.contains_key(&user) && !self.present_elsewhere(&user, None) {
                    self.user_went(&user);
                }
            }
        }
        self.schedule_presence();
    }
}

impl Handler<RemoteOp> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: RemoteOp, ctx: &mut Context<Self>) {
        if self.closed {
            return msg
                .respond
                .answer(Err(DialogueError::room_not_found(&self.shared.id)));
        }
        if !self.owner_now(ctx) {
            return msg.respond.not_owner();
        }
        match msg.op {
            Op::Window => {
                self.hand_over();
                msg.respond.answer(Ok(self.window_json()))
            }
            op @ Op::Trigger { .. } => {
                if let Some(trigger) = trigger_of(op, Reply::Remote(msg.respond)) {
                    self.accept_keyed(trigger, ctx);
                }
            }
        }
    }
}

impl Handler<Reassess> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: Reassess, ctx: &mut Context<Self>) {
        self.reassess(ctx);
    }
}

impl Handler<WaitHandedOver> for RoomActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: WaitHandedOver, ctx: &mut Context<Self>) -> Self::Result {
        self.reassess(ctx);
        if !matches!(self.role, Role::HandingOver) {
            return Box::pin(async {});
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.handed_over.push(tx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
