//! Several nodes sharing one database, coordinated through Redis (`cluster.redis`; the plan
//! is `docs/cluster.md`). This part keeps the node membership: each node renews a heartbeat
//! in the sorted set [`NODES`] (member = node name, score = when it expires, in Redis's own
//! clock), and reads the live nodes from it; `/readyz` reports Redis. Room placement uses the
//! live nodes ([`owner_of`]).

use crate::metrics::METRICS;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    nodes: Arc<Mutex<Vec<String>>>,
}

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
        let redis = tokio::time::timeout(lease, ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|_| format!("cluster.redis: no answer from {url} within {lease:?}"))?
            .map_err(|e| format!("cluster.redis: cannot connect to {url}: {e}"))?;
        let cluster = Cluster {
            node: node.into(),
            redis,
            lease,
            available: Arc::new(AtomicBool::new(false)),
            left: Arc::default(),
            nodes: Arc::default(),
        };
        cluster
            .heartbeat()
            .await
            .map_err(|e| format!("cluster.redis: {e}"))?;
        Ok(cluster)
    }

    /// One heartbeat: renews this node and refreshes the live nodes.
    async fn heartbeat(&self) -> Result<(), String> {
        let mut redis = self.redis.clone();
        let answer: Result<Vec<String>, _> = redis::Script::new(HEARTBEAT)
            .key(NODES)
            .arg(&*self.node)
            .arg(self.lease.as_millis() as u64)
            .invoke_async(&mut redis)
            .await;
        match answer {
            Ok(mut nodes) => {
                nodes.sort();
                METRICS.cluster_nodes.set(nodes.len() as i64);
                METRICS.cluster_redis_up.set(1);
                *self.nodes.lock().unwrap_or_else(|e| e.into_inner()) = nodes;
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
                Err(e.to_string())
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
                let _ = cluster.heartbeat().await;
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
    }

    /// True when the last heartbeat reached Redis.
    pub fn available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// The live nodes at the last heartbeat, sorted.
    pub fn nodes(&self) -> Vec<String> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
