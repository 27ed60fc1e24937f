//! The room directory: room ids to room actors (rooms from the configuration and rooms
//! created at run time), spread over a pool of arbiter threads; it also knows every connected
//! client so room creation and deletion can be announced to all.

use crate::actors::messages::*;
use crate::actors::outbox::{Outbox, SharedFrame};
use crate::actors::room::{RoomActor, RoomShared, MAILBOX_CAPACITY};
use crate::cluster::bus::{BusNotice, DirectoryChange, RoomSpec};
use crate::cluster::NodesChanged;
use crate::config::{Settings, SyncHistory};
use crate::error::{DialogueError, ErrorCode};
use crate::hooks::Hooks;
use crate::protocol::dialogue::{to_json, RoomInfo};
use crate::protocol::socketio::encode_event;
use actix::prelude::*;
use bytestring::ByteString;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// Longest room id accepted at run time (the database column is 255 characters).
const MAX_ROOM_ID: usize = 255;

struct RoomEntry {
    addr: Addr<RoomActor>,
    shared: Arc<RoomShared>,
}

/// Maps room ids to room actors.
pub struct Directory {
    settings: Arc<Settings>,
    rooms: BTreeMap<String, RoomEntry>,
    /// The same rooms, for connections to read without a message (this actor alone writes).
    index: RoomIndex,
    /// Threads room actors run on, used round-robin.
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    persistence: PersistenceLink,
    hooks: Arc<dyn Hooks>,
    /// Ids of the rooms created at run time (bounded by `limits.maxRuntimeRooms`).
    runtime_rooms: std::collections::HashSet<String>,
    /// Rooms created per user in the current minute (`limits.roomsPerMinute`).
    created_by_user: HashMap<Arc<str>, (std::time::Instant, u32)>,
    /// The cluster (`None`: a single node).
    cluster: Option<crate::cluster::Cluster>,
}

/// Room ids → room actors, read by connections on any thread without asking the directory
/// (a join costs no round trip to the directory's thread; only the directory writes it), and
/// the connections that hear of rooms created and deleted (each adds and removes itself).
#[derive(Clone, Default)]
pub struct RoomIndex {
    rooms: Arc<std::sync::RwLock<BTreeMap<String, IndexedRoom>>>,
    listeners: Arc<std::sync::Mutex<HashMap<ConnId, Outbox>>>,
}

#[derive(Clone)]
struct IndexedRoom {
    addr: Addr<RoomActor>,
    auto_join: bool,
}

impl RoomIndex {
    /// The room's actor, if the room exists.
    pub fn get(&self, room_id: &str) -> Option<Addr<RoomActor>> {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        rooms.get(room_id).map(|r| r.addr.clone())
    }

    /// The rooms every connection joins, by id.
    pub fn auto_join(&self) -> Vec<(String, Addr<RoomActor>)> {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        rooms
            .iter()
            .filter(|(_, r)| r.auto_join)
            .map(|(id, r)| (id.clone(), r.addr.clone()))
            .collect()
    }

    /// A connection (its Socket.IO CONNECT done) hears of rooms created and deleted from now.
    pub fn listen(&self, conn: ConnId, outbox: Outbox) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.insert(conn, outbox);
    }

    /// The connection closed.
    pub fn unlisten(&self, conn: ConnId) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners.remove(&conn);
    }

    fn insert(&self, room_id: &str, addr: Addr<RoomActor>, auto_join: bool) {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        rooms.insert(room_id.to_owned(), IndexedRoom { addr, auto_join });
    }

    fn remove(&self, room_id: &str) {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        rooms.remove(room_id);
    }
}

/// A room's name and description within `limits.maxRoomNameBytes` and
/// `limits.maxRoomDescriptionBytes`: checked at the door and again when the room is made.
pub fn check_room_texts(
    limits: &crate::config::LimitsConfig,
    name: &str,
    description: Option<&str>,
) -> Result<(), DialogueError> {
    if name.len() > limits.max_room_name_bytes {
        return Err(DialogueError::invalid(format!(
            "a room name is at most {} bytes (limits.maxRoomNameBytes)",
            limits.max_room_name_bytes
        )));
    }
    if description.is_some_and(|d| d.len() > limits.max_room_description_bytes) {
        return Err(DialogueError::invalid(format!(
            "a room description is at most {} bytes (limits.maxRoomDescriptionBytes)",
            limits.max_room_description_bytes
        )));
    }
    Ok(())
}

impl Directory {
    /// Creates the directory and starts every configured room.
    pub fn new(
        settings: Arc<Settings>,
        arbiters: Vec<ArbiterHandle>,
        persistence: PersistenceLink,
        hooks: Arc<dyn Hooks>,
        cluster: Option<crate::cluster::Cluster>,
        index: RoomIndex,
    ) -> Self {
        let mut dir = Directory {
            index,
            cluster,
            hooks,
            settings: settings.clone(),
            rooms: BTreeMap::new(),
            arbiters,
            next_arbiter: 0,
            persistence,
            runtime_rooms: Default::default(),
            created_by_user: HashMap::new(),
        };
        for (id, room) in &settings.config.rooms {
            let shared = RoomShared {
                presence: room
                    .presence
                    .then_some(settings.config.limits.presence_max_members),
                id: id.as_str().into(),
                name: room.name.clone().unwrap_or_else(|| id.clone()),
                description: room.description.clone(),
                max_size: room.max_size,
                events: if room.events.iter().any(|e| e.value == "*") {
                    None
                } else {
                    Some(room.events.iter().map(|e| e.value.clone()).collect())
                },
                default_subscriptions: room
                    .default_subscriptions
                    .as_ref()
                    .map(|subs| subs.iter().map(|s| s.value.clone()).collect()),
                sync_history_on_join: match room.sync_history_on_join {
                    None | Some(SyncHistory::All(false)) => None,
                    Some(SyncHistory::All(true)) => Some(usize::MAX),
                    Some(SyncHistory::Newest(n)) => Some(n as usize),
                },
                auto_join: room.auto_join,
                created_by: None,
                size: Arc::new(AtomicUsize::new(0)),
                ready: Default::default(),
            };
            dir.start_room(shared);
        }
        dir
    }

    fn start_room(&mut self, shared: RoomShared) -> Arc<RoomShared> {
        let shared = Arc::new(shared);
        let room = RoomActor::new(
            shared.clone(),
            self.settings.events.clone(),
            self.persistence.clone(),
            self.hooks.clone(),
            self.cluster.clone(),
        );
        let addr = match self
            .arbiters
            .get(self.next_arbiter % self.arbiters.len().max(1))
        {
            Some(arbiter) => RoomActor::start_in_arbiter(arbiter, |_| room),
            None => room.start(),
        };
        self.next_arbiter += 1;
        if let Some(cluster) = &self.cluster {
            cluster.track_size(&shared.id, shared.size.clone());
        }
        self.index
            .insert(&shared.id, addr.clone(), shared.auto_join);
        self.rooms.insert(
            shared.id.to_string(),
            RoomEntry {
                addr,
                shared: shared.clone(),
            },
        );
        shared
    }

    fn broadcast(&self, event: &str, payload_json: &str) {
        let frame = SharedFrame::new(ByteString::from(encode_event(event, payload_json)));
        let listeners = self
            .index
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for outbox in listeners.values() {
            outbox.shared(&frame);
        }
    }
}

impl Actor for Directory {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        if let Some(cluster) = &self.cluster {
            cluster.set_on_change(ctx.address().recipient());
            cluster.bus.set_handler(ctx.address().recipient());
            self.load_cluster_rooms(ctx);
            ctx.run_interval(std::time::Duration::from_secs(10), |act, ctx| {
                act.load_cluster_rooms(ctx)
            });
        }
    }
}

impl Handler<LookupRoom> for Directory {
    type Result = Option<Addr<RoomActor>>;

    fn handle(&mut self, msg: LookupRoom, _: &mut Context<Self>) -> Self::Result {
        self.rooms.get(&msg.room_id).map(|r| r.addr.clone())
    }
}

impl Handler<ListRooms> for Directory {
    type Result = Vec<RoomInfo>;

    fn handle(&mut self, _: ListRooms, _: &mut Context<Self>) -> Self::Result {
        self.rooms
            .values()
            .map(|r| {
                let mut info = r.shared.info();
                if let Some(cluster) = &self.cluster {
                    info.size += cluster.remote_members(&info.id);
                }
                info
            })
            .collect()
    }
}

impl Handler<RoomAddrs> for Directory {
    type Result = MessageResult<RoomAddrs>;

    fn handle(&mut self, _: RoomAddrs, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.rooms
                .iter()
                .map(|(id, r)| (id.clone(), r.addr.clone()))
                .collect(),
        )
    }
}

impl Handler<CreateRoom> for Directory {
    type Result = ResponseActFuture<Self, Result<RoomInfo, DialogueError>>;

    fn handle(&mut self, msg: CreateRoom, _: &mut Context<Self>) -> Self::Result {
        let spec = match self.check_new_room(msg) {
            Ok(spec) => spec,
            Err(e) => return Box::pin(actix::fut::ready(Err(e))),
        };
        let Some(cluster) = self.cluster.clone() else {
            return Box::pin(actix::fut::ready(Ok(self.create_room(spec, true))));
        };
        // Cluster-wide: the first node to put the id in the shared hash creates it.
        let id = spec.id.clone();
        Box::pin(
            async move { (cluster.save_room(&spec).await, spec) }
                .into_actor(self)
                .map(move |(saved, spec), act, _| match saved {
                    Ok(true) => {
                        let info = act.create_room(spec.clone(), true);
                        if let Some(cluster) = &act.cluster {
                            cluster.bus.announce(
                                crate::cluster::bus::DirectoryChange::RoomCreated { room: spec }
                                    .to_json(),
                            );
                        }
                        Ok(info)
                    }
                    Ok(false) => Err(DialogueError::new(
                        ErrorCode::RoomExists,
                        format!("room '{id}' already exists"),
                    )),
                    Err(e) => Err(DialogueError::new(
                        ErrorCode::StorageUnavailable,
                        format!("the cluster's room directory (Redis) is unavailable: {e}"),
                    )),
                }),
        )
    }
}

impl Directory {
    /// Checks a room to create (access, limits, ids, events): what makes it.
    fn check_new_room(&mut self, msg: CreateRoom) -> Result<RoomSpec, DialogueError> {
        let id = msg.id.trim();
        if id.is_empty() || id.len() > MAX_ROOM_ID || id != msg.id {
            return Err(DialogueError::invalid(format!(
                "a room id is 1 to {MAX_ROOM_ID} characters without surrounding spaces"
            )));
        }
        if msg.name.is_empty() {
            return Err(DialogueError::invalid("a room needs a non-empty name"));
        }
        let limits = &self.settings.config.limits;
        check_room_texts(limits, &msg.name, msg.description.as_deref())?;
        if msg.max_size == Some(0) {
            return Err(DialogueError::invalid("maxSize must be at least 1"));
        }
        self.hooks.may_create_room(&msg.identity)?;
        if self.rooms.contains_key(id) {
            return Err(DialogueError::new(
                ErrorCode::RoomExists,
                format!("room '{id}' already exists"),
            ));
        }
        if limits.max_runtime_rooms > 0 && self.runtime_rooms.len() >= limits.max_runtime_rooms {
            return Err(DialogueError::new(
                ErrorCode::RateLimited,
                format!(
                    "the server holds its maximum of {} rooms created at run time \
                     (limits.maxRuntimeRooms); delete one first",
                    limits.max_runtime_rooms
                ),
            ));
        }
        if !msg.identity.trusted && limits.rooms_per_minute > 0 {
            let now = std::time::Instant::now();
            let minute = std::time::Duration::from_secs(60);
            if self.created_by_user.len() > 10_000 {
                self.created_by_user
                    .retain(|_, (since, _)| now.duration_since(*since) < minute);
            }
            let entry = self
                .created_by_user
                .entry(msg.identity.user_id.clone())
                .or_insert((now, 0));
            if now.duration_since(entry.0) >= minute {
                *entry = (now, 0);
            }
            if entry.1 >= limits.rooms_per_minute {
                return Err(DialogueError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "at most {} rooms per minute per user (limits.roomsPerMinute)",
                        limits.rooms_per_minute
                    ),
                ));
            }
            entry.1 += 1;
        }
        let catalog = &self.settings.events;
        let events = match msg.events {
            // By default a room created at run time carries every declared event type.
            None => {
                let mut all: Vec<String> = catalog.names().map(str::to_owned).collect();
                all.sort();
                Some(all)
            }
            Some(list) if list.iter().any(|e| e == "*") => {
                if list.len() > 1 {
                    return Err(DialogueError::invalid(
                        "events: \"*\" must be the only entry",
                    ));
                }
                None
            }
            Some(list) => {
                if let Some(unknown) = list.iter().find(|e| catalog.get(e).is_none()) {
                    return Err(DialogueError::invalid(format!(
                        "events: event '{unknown}' is not defined in the configuration"
                    )));
                }
                Some(list)
            }
        };
        if let (Some(subs), Some(carried)) = (&msg.default_subscriptions, &events) {
            if let Some(missing) = subs.iter().find(|s| !carried.contains(s)) {
                return Err(DialogueError::invalid(format!(
                    "defaultSubscriptions: the room does not carry event '{missing}'"
                )));
            }
        }
        Ok(RoomSpec {
            id: id.to_owned(),
            name: msg.name,
            description: msg.description,
            max_size: msg.max_size,
            events,
            default_subscriptions: msg.default_subscriptions,
            sync_history_on_join: msg.sync_history_on_join.map(|n| n as u64),
            presence: msg
                .presence
                .then_some(self.settings.config.limits.presence_max_members),
            created_by: (!msg.identity.trusted).then(|| msg.identity.user_id.to_string()),
        })
    }

    /// Starts a room created at run time (here — `origin`: the hooks hear of it —, or on
    /// another node of the cluster) and announces it to the connected clients.
    fn create_room(&mut self, spec: RoomSpec, origin: bool) -> RoomInfo {
        let id = spec.id.clone();
        let shared = self.start_room(RoomShared {
            id: spec.id.as_str().into(),
            name: spec.name,
            description: spec.description,
            max_size: spec.max_size,
            events: spec.events,
            default_subscriptions: spec.default_subscriptions,
            sync_history_on_join: spec
                .sync_history_on_join
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            auto_join: false,
            presence: spec.presence,
            created_by: spec.created_by.map(|u| u.as_str().into()),
            size: Arc::new(AtomicUsize::new(0)),
            ready: Default::default(),
        });
        self.runtime_rooms.insert(id);
        let info = shared.info();
        log::info!("room '{}' created by {}", info.id, msg_creator(&shared));
        if origin {
            self.hooks.on_room_created(&info);
        }
        self.broadcast("dialogue:roomCreated", &to_json(&info));
        info
    }

    /// Deletes a room here: its history is written first; the answer waits for that.
    fn remove_room(&mut self, room_id: &str) -> Option<Request<RoomActor, CloseRoom>> {
        let entry = self.rooms.remove(room_id)?;
        self.index.remove(room_id);
        self.runtime_rooms.remove(room_id);
        if let Some(cluster) = &self.cluster {
            cluster.untrack_size(room_id);
        }
        Some(entry.addr.send(CloseRoom))
    }

    /// Starts the rooms other nodes created at run time and drops those they deleted (at
    /// start, every 10 s, and when the connection to Redis was lost: announcements may have
    /// been lost). A failed read is tried again a second later.
    fn load_cluster_rooms(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        // Only rooms known before the read can be found gone by it.
        let known_before = self.runtime_rooms.clone();
        ctx.spawn(
            async move { cluster.runtime_rooms().await }
                .into_actor(self)
                .map(move |rooms, act, ctx| {
                    let rooms = match rooms {
                        Ok(rooms) => rooms,
                        Err(e) => {
                            log::warn!("cluster: cannot read the shared room directory: {e}");
                            ctx.run_later(std::time::Duration::from_secs(1), |act, ctx| {
                                act.load_cluster_rooms(ctx)
                            });
                            return;
                        }
                    };
                    let listed: std::collections::HashSet<&str> =
                        rooms.iter().map(|r| r.id.as_str()).collect();
                    let gone: Vec<String> = known_before
                        .iter()
                        .filter(|id| !listed.contains(id.as_str()))
                        .cloned()
                        .collect();
                    for spec in rooms {
                        if !act.rooms.contains_key(&spec.id) {
                            act.create_room(spec, false);
                        }
                    }
                    for id in gone {
                        act.forget_room(&id);
                    }
                }),
        );
    }

    /// A room deleted on another node: deleted here, and the clients told.
    fn forget_room(&mut self, room_id: &str) {
        if let Some(closing) = self.remove_room(room_id) {
            actix_rt::spawn(async move {
                let _ = closing.await;
            });
            self.broadcast(
                "dialogue:roomDeleted",
                &to_json(&serde_json::json!({ "roomId": room_id })),
            );
        }
    }
}

fn msg_creator(shared: &RoomShared) -> &str {
    shared.created_by.as_deref().unwrap_or("the server API")
}

impl Handler<DeleteRoom> for Directory {
    type Result = ResponseActFuture<Self, Result<(), DialogueError>>;

    fn handle(&mut self, msg: DeleteRoom, _: &mut Context<Self>) -> Self::Result {
        let refuse = |e| -> Self::Result { Box::pin(actix::fut::ready(Err(e))) };
        let Some(entry) = self.rooms.get(&msg.room_id) else {
            return refuse(DialogueError::room_not_found(&msg.room_id));
        };
        if let Err(e) = self
            .hooks
            .may_delete_room(&msg.identity, &entry.shared.info())
        {
            return refuse(e);
        }
        let Some(cluster) = self.cluster.clone() else {
            return self.delete_here(msg);
        };
        // Cluster-wide: out of the shared directory first (else it would come back).
        let room_id = msg.room_id.clone();
        Box::pin(
            async move { cluster.forget_room(&room_id).await }
                .into_actor(self)
                .then(move |forgot, act, _| -> Self::Result {
                    if let Err(e) = forgot {
                        return Box::pin(actix::fut::ready(Err(DialogueError::new(
                            ErrorCode::StorageUnavailable,
                            format!("the cluster's room directory (Redis) is unavailable: {e}"),
                        ))));
                    }
                    if let Some(cluster) = &act.cluster {
                        let room_id = msg.room_id.clone();
                        cluster
                            .bus
                            .announce(DirectoryChange::RoomDeleted { room_id }.to_json());
                    }
                    act.delete_here(msg)
                }),
        )
    }
}

impl Directory {
    /// Deletes a room on this node; answers once its history is in the database.
    fn delete_here(
        &mut self,
        msg: DeleteRoom,
    ) -> ResponseActFuture<Self, Result<(), DialogueError>> {
        let Some(closing) = self.remove_room(&msg.room_id) else {
            return Box::pin(actix::fut::ready(Err(DialogueError::room_not_found(
                &msg.room_id,
            ))));
        };
        Box::pin(closing.into_actor(self).map(move |_, act, _| {
            log::info!("room '{}' deleted by {}", msg.room_id, msg.identity.user_id);
            act.hooks.on_room_deleted(&msg.room_id);
            act.broadcast(
                "dialogue:roomDeleted",
                &to_json(&serde_json::json!({ "roomId": msg.room_id })),
            );
            Ok(())
        }))
    }
}

impl Handler<FlushAll> for Directory {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: FlushAll, _: &mut Context<Self>) -> Self::Result {
        // A room still waiting for its lease has accepted nothing: no need to wait for it.
        let flushes: Vec<_> = self
            .rooms
            .values()
            .filter(|r| r.shared.ready.load(std::sync::atomic::Ordering::Relaxed))
            .map(|r| r.addr.send(FlushHistory))
            .collect();
        Box::pin(async move {
            futures_util::future::join_all(flushes).await;
        })
    }
}

impl Handler<NodesChanged> for Directory {
    type Result = ();

    fn handle(&mut self, _: NodesChanged, _: &mut Context<Self>) {
        for room in self.rooms.values() {
            room.addr.do_send(Reassess);
        }
    }
}

impl Handler<BusNotice> for Directory {
    type Result = ();

    fn handle(&mut self, msg: BusNotice, ctx: &mut Context<Self>) {
        match msg {
            BusNotice::Request { room, op, respond } => match self.rooms.get(&room) {
                Some(entry) => entry.addr.do_send(RemoteOp { op, respond }),
                // Created on another node, and its announcement not here (yet): look it up.
                None => {
                    let Some(cluster) = self.cluster.clone() else {
                        return respond.answer(Err(DialogueError::room_not_found(&room)));
                    };
                    let id = room.clone();
                    ctx.spawn(
                        async move { cluster.runtime_room(&id).await }
                            .into_actor(self)
                            .map(move |found, act, _| {
                                if let Ok(Some(spec)) = found {
                                    if !act.rooms.contains_key(&spec.id) {
                                        act.create_room(spec, false);
                                    }
                                }
                                match act.rooms.get(&room) {
                                    Some(entry) => entry.addr.do_send(RemoteOp { op, respond }),
                                    None => {
                                        respond.answer(Err(DialogueError::room_not_found(&room)))
                                    }
                                }
                            }),
                    );
                }
            },
            BusNotice::Reconnected => self.load_cluster_rooms(ctx),
            BusNotice::Directory(json) => match serde_json::from_str(&json) {
                Ok(DirectoryChange::NodeLeft { .. }) => {
                    if let Some(cluster) = self.cluster.clone() {
                        actix_rt::spawn(async move { cluster.refresh().await });
                    }
                }
                Ok(DirectoryChange::RoomCreated { room }) => {
                    if !self.rooms.contains_key(&room.id) {
                        self.create_room(room, false);
                    }
                }
                Ok(DirectoryChange::RoomDeleted { room_id }) => self.forget_room(&room_id),
                Err(e) => log::warn!("cluster: unreadable directory change: {e}"),
            },
        }
    }
}

/// Answers once every room this node owned is handed over (a clean stop of a cluster node,
/// after it left the live nodes).
#[derive(Message)]
#[rtype(result = "()")]
pub struct HandOverAll;

impl Handler<HandOverAll> for Directory {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: HandOverAll, _: &mut Context<Self>) -> Self::Result {
        let waits: Vec<_> = self
            .rooms
            .values()
            .map(|r| r.addr.send(WaitHandedOver))
            .collect();
        Box::pin(async move {
            futures_util::future::join_all(waits).await;
        })
    }
}
