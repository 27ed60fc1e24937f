//! Several nodes sharing one database, coordinated through Redis (`cluster.redis`;
//! `docs/cluster.md` is the design).
//!
//! - Membership (this file): each node renews a heartbeat in the sorted set [`NODES`]
//!   (member = node name, score = when it expires, in Redis's own clock) and reads the live
//!   nodes from it. A node whose last heartbeat is older than the lease sees no node at all
//!   (it cannot know who owns what), so it owns nothing.
//! - Placement: the owner of a room is the live node with the highest rendezvous hash
//!   ([`owner_of`]); the room's database lease fences its writes while ownership moves.
//! - [`bus`]: the pub/sub messages between nodes (events to replicas, requests to owners,
//!   directory changes).

pub mod bus;

use crate::metrics::METRICS;
use actix::prelude::*;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The sorted set of node heartbeats.
pub const NODES: &str = "dlg:nodes";

/// This node's view of the cluster, shared by every worker.
#[derive(Clone)]
pub struct Cluster {
    /// This node's name (the one in room leases, [`crate::store::node_name`]).
    pub node: Arc<str>,
    redis: ConnectionManager,
    /// A node whose heartbeat is older than this is gone.
    lease: Duration,
    /// The last heartbeat reached Redis.
    available: Arc<AtomicBool>,
    /// Set by [`Cluster::leave`]: no heartbeat may add the node again.
    left: Arc<AtomicBool>,
    /// The live nodes at the last heartbeat, sorted.
    nodes: Arc<Mutex<Arc<Vec<String>>>>,
    /// When a heartbeat last reached Redis.
    last_ok: Arc<Mutex<Instant>>,
    /// When heartbeats reached Redis again after this node's view went stale: for a lease
    /// after that the node still acts on no view (the other nodes' heartbeats come back too;
    /// the first node back would otherwise take every room for a moment).
    back_since: Arc<Mutex<Option<Instant>>>,
    /// Told when this node's view of the live nodes changes (the directory).
    on_change: Arc<OnceLock<Recipient<NodesChanged>>>,
    /// The view the last [`NodesChanged`] was sent for.
    told: Arc<Mutex<Arc<Vec<String>>>>,
    /// The pub/sub messages between nodes.
    pub bus: bus::Bus,
    /// This node's member count per room, published with each heartbeat.
    local_sizes: Arc<Mutex<std::collections::HashMap<String, Arc<std::sync::atomic::AtomicUsize>>>>,
    /// The other live nodes' members per room, as of the last heartbeat.
    remote_sizes: Arc<Mutex<std::collections::HashMap<String, usize>>>,
}

/// This node's view of the live nodes changed: rooms check who owns them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct NodesChanged;

/// Renews `node`'s heartbeat to expire `lease_ms` from Redis's clock, drops the expired ones
/// and answers the live nodes, in one round trip.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// Leaves the set (a clean stop): the others see it gone at once.
const LEAVE: &str = "return redis.call('ZREM', KEYS[1], ARGV[1])";

impl Cluster {
    /// Connects to Redis (the connection reconnects by itself afterwards) and joins the
    /// cluster with a first heartbeat.
    pub async fn join(url: &str, node: &str, lease: Duration) -> Result<Cluster, String> {
        let client = redis::Client::open(url).map_err(|e| format!("cluster.redis: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(lease / 2))
            .set_response_timeout(Some(lease / 2));
        let redis = tokio::time::timeout(
            lease,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| format!("cluster.redis: no answer from {url} within {lease:?}"))?
        .map_err(|e| format!("cluster.redis: cannot connect to {url}: {e}"))?;
        let node: Arc<str> = node.into();
        let cluster = Cluster {
            bus: bus::Bus::start(client, redis.clone(), node.clone()),
            node,
            redis,
            lease,
            available: Arc::new(AtomicBool::new(false)),
            left: Arc::default(),
            nodes: Arc::default(),
            last_ok: Arc::new(Mutex::new(Instant::now())),
            back_since: Arc::default(),
            on_change: Arc::default(),
            told: Arc::default(),
            local_sizes: Arc::default(),
            remote_sizes: Arc::default(),
        };
        cluster
            .heartbeat()
            .await
            .map_err(|e| format!("cluster.redis: {e}"))?;
        Ok(cluster)
    }

    /// One heartbeat (none once the node left); tells the directory when the view changed.
    pub async fn refresh(&self) {
        if self.left.load(Ordering::Relaxed) {
            return;
        }
        if self.heartbeat().await.is_ok() {
            let nodes = self.nodes();
            if let Err(e) = self.exchange_sizes(&nodes).await {
                log::debug!("cluster: member counts not exchanged: {e}");
            }
        }
        self.tell_if_changed();
    }

    /// Sends [`NodesChanged`] if the view is not the one last told.
    fn tell_if_changed(&self) {
        let view = self.view();
        let mut told = self.told.lock().unwrap_or_else(|e| e.into_inner());
        if *told != view {
            log::info!("cluster: live nodes now {:?}", view);
            *told = view;
            if let Some(handler) = self.on_change.get() {
                handler.do_send(NodesChanged);
            }
        }
    }

    /// Where [`NodesChanged`] goes (the directory).
    pub fn set_on_change(&self, handler: Recipient<NodesChanged>) {
        let _ = self.on_change.set(handler);
        *self.told.lock().unwrap_or_else(|e| e.into_inner()) = self.view();
    }

    /// The live nodes as this node may act on them: none when its own heartbeat has not
    /// reached Redis within the lease (the others may have taken its rooms), and not itself
    /// once it left.
    pub fn view(&self) -> Arc<Vec<String>> {
        let stale = self
            .last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            >= self.lease;
        let settling = self
            .back_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() < self.lease);
        if stale || settling {
            return Arc::default();
        }
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if self.left.load(Ordering::Relaxed) {
            return Arc::new(
                nodes
                    .iter()
                    .filter(|n| **n != *self.node)
                    .cloned()
                    .collect(),
            );
        }
        nodes
    }

    /// The node that owns `room` in this node's view; `None` when it knows no live node.
    pub fn owner(&self, room: &str) -> Option<Arc<str>> {
        let view = self.view();
        owner_of(room, &view).map(|node| {
            if node == &*self.node {
                self.node.clone()
            } else {
                node.into()
            }
        })
    }

    /// True when this node owns `room` in its view.
    pub fn owns(&self, room: &str) -> bool {
        owner_of(room, &self.view()) == Some(&*self.node)
    }

    /// Counts `room`'s members here (its `size`) in the cluster-wide member counts.
    pub fn track_size(&self, room: &str, size: Arc<std::sync::atomic::AtomicUsize>) {
        let mut sizes = self.local_sizes.lock().unwrap_or_else(|e| e.into_inner());
        sizes.insert(room.to_owned(), size);
    }

    /// Stops counting a deleted room.
    pub fn untrack_size(&self, room: &str) {
        let mut sizes = self.local_sizes.lock().unwrap_or_else(|e| e.into_inner());
        sizes.remove(room);
    }

    /// Members of `room` on the other live nodes (as of the last heartbeat).
    pub fn remote_members(&self, room: &str) -> usize {
        let sizes = self.remote_sizes.lock().unwrap_or_else(|e| e.into_inner());
        sizes.get(room).copied().unwrap_or(0)
    }

    /// Publishes this node's member counts (`dlg:sizes:<node>`, expiring with the lease)
    /// and reads the other live nodes' ones, in one round trip.
    async fn exchange_sizes(&self, nodes: &[String]) -> Result<(), String> {
        let mine: Vec<(String, usize)> = {
            let sizes = self.local_sizes.lock().unwrap_or_else(|e| e.into_inner());
            sizes
                .iter()
                .map(|(room, n)| (room.clone(), n.load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect()
        };
        let key = format!("dlg:sizes:{}", self.node);
        let others: Vec<&String> = nodes.iter().filter(|n| **n != *self.node).collect();
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(&key).ignore();
        if !mine.is_empty() {
            pipe.cmd("HSET").arg(&key).arg(&mine).ignore();
            pipe.cmd("PEXPIRE")
                .arg(&key)
                .arg(self.lease.as_millis() as u64)
                .ignore();
        }
        for node in &others {
            pipe.cmd("HGETALL").arg(format!("dlg:sizes:{node}"));
        }
        let mut redis = self.redis.clone();
        let answers: Vec<std::collections::HashMap<String, usize>> =
            tokio::time::timeout(self.lease / 2, pipe.query_async(&mut redis))
                .await
                .map_err(|_| "no answer".to_owned())?
                .map_err(|e| e.to_string())?;
        let mut total = std::collections::HashMap::new();
        for answer in answers {
            for (room, n) in answer {
                *total.entry(room).or_insert(0) += n;
            }
        }
        *self.remote_sizes.lock().unwrap_or_else(|e| e.into_inner()) = total;
        Ok(())
    }

    /// The lease: how long a node without heartbeat still counts as live.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// One heartbeat: renews this node and refreshes the live nodes.
    async fn heartbeat(&self) -> Result<(), String> {
        let mut redis = self.redis.clone();
        // Live as of when the heartbeat was sent (Redis renewed it no earlier).
        let sent = Instant::now();
        let script = redis::Script::new(HEARTBEAT);
        let mut invocation = script.key(NODES);
        invocation
            .arg(&*self.node)
            .arg(self.lease.as_millis() as u64);
        // A heartbeat that hangs (Redis unreachable) must not hold back the stale check.
        let answer: Result<Vec<String>, String> =
            match tokio::time::timeout(self.lease / 2, invocation.invoke_async(&mut redis)).await {
                Ok(answer) => answer.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", self.lease / 2)),
            };
        match answer {
            Ok(mut nodes) => {
                nodes.sort();
                METRICS.cluster_nodes.set(nodes.len() as i64);
                METRICS.cluster_redis_up.set(1);
                *self.nodes.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(nodes);
                let mut last_ok = self.last_ok.lock().unwrap_or_else(|e| e.into_inner());
                if last_ok.elapsed() >= self.lease {
                    *self.back_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(sent);
                }
                *last_ok = sent;
                if !self.available.swap(true, Ordering::Relaxed) {
                    log::info!("cluster: Redis available; node {}", self.node);
                }
                Ok(())
            }
            Err(e) => {
                METRICS.cluster_redis_up.set(0);
                if self.available.swap(false, Ordering::Relaxed) {
                    log::error!("cluster: Redis unavailable ({e}); retrying");
                }
                Err(e)
            }
        }
    }

    /// Renews the heartbeat every third of the lease, for as long as the server runs.
    pub fn start_heartbeat(&self) {
        let cluster = self.clone();
        actix_rt::spawn(async move {
            let mut tick = actix_rt::time::interval(cluster.lease / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if cluster.left.load(Ordering::Relaxed) {
                    return;
                }
                cluster.refresh().await;
            }
        });
    }

    /// Leaves the cluster at a clean stop.
    pub async fn leave(&self) {
        self.left.store(true, Ordering::Relaxed);
        let mut redis = self.redis.clone();
        let left: Result<i64, _> = redis::Script::new(LEAVE)
            .key(NODES)
            .arg(&*self.node)
            .invoke_async(&mut redis)
            .await;
        if let Err(e) = left {
            log::warn!("cluster: could not leave {NODES}: {e}");
        }
        // The others look again at once rather than at their next heartbeat.
        self.bus.announce(
            bus::DirectoryChange::NodeLeft {
                node: self.node.to_string(),
            }
            .to_json(),
        );
        self.tell_if_changed();
    }

    /// Puts a room created at run time in the shared directory: false when the id is
    /// taken.
    pub async fn save_room(&self, spec: &bus::RoomSpec) -> Result<bool, String> {
        let json = serde_json::to_string(spec).map_err(|e| e.to_string())?;
        let mut redis = self.redis.clone();
        redis::cmd("HSETNX")
            .arg(bus::ROOMS)
            .arg(&spec.id)
            .arg(json)
            .query_async(&mut redis)
            .await
            .map_err(|e| e.to_string())
    }

    /// Takes a deleted room out of the shared directory.
    pub async fn forget_room(&self, room_id: &str) -> Result<(), String> {
        let mut redis = self.redis.clone();
        redis::cmd("HDEL")
            .arg(bus::ROOMS)
            .arg(room_id)
            .query_async::<i64>(&mut redis)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// One room created at run time, if it is in the shared directory.
    pub async fn runtime_room(&self, room_id: &str) -> Result<Option<bus::RoomSpec>, String> {
        let mut redis = self.redis.clone();
        let json: Option<String> = redis::cmd("HGET")
            .arg(bus::ROOMS)
            .arg(room_id)
            .query_async(&mut redis)
            .await
            .map_err(|e| e.to_string())?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// The rooms created at run time on any node.
    pub async fn runtime_rooms(&self) -> Result<Vec<bus::RoomSpec>, String> {
        let mut redis = self.redis.clone();
        let all: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(bus::ROOMS)
            .query_async(&mut redis)
            .await
            .map_err(|e| e.to_string())?;
        Ok(all
            .values()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect())
    }

    /// True once this node left the cluster (a clean stop).
    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::Relaxed)
    }

    /// True when the last heartbeat reached Redis.
    pub fn available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// The live nodes at the last heartbeat, sorted.
    pub fn nodes(&self) -> Vec<String> {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .to_vec()
    }
}

/// The node that should own `room` among `nodes`: the one with the highest hash of
/// (node, room) — rendezvous hashing, so a node coming or going moves only its share of the
/// rooms. `None` when there is no node.
pub fn owner_of<'a>(room: &str, nodes: &'a [String]) -> Option<&'a str> {
    use sha2::{Digest, Sha256};
    nodes
        .iter()
        .max_by_key(|node| {
            let digest = Sha256::new()
                .chain_update(node.as_bytes())
                .chain_update([0])
                .chain_update(room.as_bytes())
                .finalize();
            u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaving_node_moves_only_its_own_rooms() {
        let nodes: Vec<String> = (0..4).map(|i| format!("node{i}")).collect();
        let rooms: Vec<String> = (0..1000).map(|i| format!("room{i}")).collect();
        let before: Vec<&str> = rooms.iter().map(|r| owner_of(r, &nodes).unwrap()).collect();
        for node in &nodes {
            let share = before.iter().filter(|o| **o == node).count();
            assert!((150..350).contains(&share), "{node} owns {share} of 1000");
        }
        let three = &nodes[1..];
        for (room, owner) in rooms.iter().zip(&before) {
            let now = owner_of(room, three).unwrap();
            if *owner != "node0" {
                assert_eq!(now, *owner, "{room} stayed where it was");
            }
        }
        assert_eq!(owner_of("x", &[]), None);
    }
}
