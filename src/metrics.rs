//! Prometheus metrics (the `prometheus` crate), served as text at `/metrics`.
//!
//! Per-(room, event) counters are looked up once when a room first sees the event and kept
//! there, so the trigger and fan-out paths only bump atomics.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// Every metric of the service.
pub struct Metrics {
    pub registry: Registry,
    pub connections: IntGauge,
    pub joins: IntCounterVec,
    pub triggered: IntCounterVec,
    pub delivered: IntCounterVec,
    pub validation_failures: IntCounterVec,
    pub history_reads: IntCounterVec,
    pub persist_batches: IntCounter,
    pub persist_rows: IntCounter,
    pub persist_failures: IntCounter,
    pub persist_backlog: IntGauge,
    /// Events the database refused, moved to the quarantine table.
    pub persist_quarantined: IntCounter,
    /// Rooms whose writer stopped (their lease was taken over, or a conflict).
    pub persist_stopped_rooms: IntCounter,
    pub fanout_seconds: Histogram,
    pub history_read_seconds: HistogramVec,
    /// Cluster: live nodes at the last heartbeat (0 for a single node).
    pub cluster_nodes: IntGauge,
    /// Cluster: 1 while the last heartbeat reached Redis.
    pub cluster_redis_up: IntGauge,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let connections = gauge(
            &registry,
            "dialogue_connections",
            "Connected Socket.IO sessions",
        );
        let persist_batches = IntCounter::new(
            "dialogue_persist_batches_total",
            "Transactions that wrote evicted history",
        )
        .expect("valid");
        let persist_rows =
            IntCounter::new("dialogue_persist_rows_total", "History rows written").expect("valid");
        let persist_failures = IntCounter::new(
            "dialogue_persist_failures_total",
            "Failed database writes or connects (retried)",
        )
        .expect("valid");
        let persist_backlog = gauge(
            &registry,
            "dialogue_persist_backlog",
            "Evicted events waiting to be written",
        );
        let persist_quarantined = IntCounter::new(
            "dialogue_persist_quarantined_total",
            "Events the database refused, moved to the quarantine table",
        )
        .expect("valid");
        let persist_stopped_rooms = IntCounter::new(
            "dialogue_persist_stopped_rooms_total",
            "Rooms that stopped writing (lease taken over, or a conflicting row)",
        )
        .expect("valid");
        let fanout_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "dialogue_fanout_seconds",
                "Time a room spends validating, storing and fanning out one event",
            )
            .buckets(vec![
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025, 0.005,
                0.01, 0.05,
            ]),
        )
        .expect("valid");
        let history_read_seconds = HistogramVec::new(
            HistogramOpts::new(
                "dialogue_history_read_seconds",
                "Time to answer a history page, by where it was read from",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 1.0,
            ]),
            &["source"],
        )
        .expect("valid");
        for m in [
            &persist_batches,
            &persist_rows,
            &persist_failures,
            &persist_quarantined,
            &persist_stopped_rooms,
        ] {
            registry.register(Box::new(m.clone())).expect("unique");
        }
        registry
            .register(Box::new(fanout_seconds.clone()))
            .expect("unique");
        registry
            .register(Box::new(history_read_seconds.clone()))
            .expect("unique");
        let cluster_nodes = gauge(
            &registry,
            "dialogue_cluster_nodes",
            "Live nodes this node saw at its last heartbeat (0: not clustered)",
        );
        let cluster_redis_up = gauge(
            &registry,
            "dialogue_cluster_redis_up",
            "1 while this node's last heartbeat reached Redis",
        );
        Metrics {
            joins: counter_vec(&registry, "dialogue_joins_total", "Room joins", &["room"]),
            triggered: counter_vec(
                &registry,
                "dialogue_events_triggered_total",
                "Events accepted, by room and event",
                &["room", "event"],
            ),
            delivered: counter_vec(
                &registry,
                "dialogue_events_delivered_total",
                "Event deliveries to subscribers, by room and event",
                &["room", "event"],
            ),
            validation_failures: counter_vec(
                &registry,
                "dialogue_validation_failures_total",
                "Events refused by their JSON Schema, by room and event",
                &["room", "event"],
            ),
            history_reads: counter_vec(
                &registry,
                "dialogue_history_reads_total",
                "History pages served, by source (memory or database)",
                &["source"],
            ),
            registry,
            connections,
            persist_batches,
            persist_rows,
            persist_failures,
            persist_backlog,
            persist_quarantined,
            persist_stopped_rooms,
            fanout_seconds,
            history_read_seconds,
            cluster_nodes,
            cluster_redis_up,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The `room` (and `event`) label value of series counted together: rooms beyond
/// `metrics.maxRoomSeries`, and undeclared events of `"*"` rooms.
pub const OTHER: &str = "_other";

/// Rooms whose series carry their own label, and how many may.
struct RoomSeries {
    max: usize,
    /// Room instances using each label: a room deleted and created again with the same id
    /// shares it until the old instance is gone.
    labelled: HashMap<Arc<str>, usize>,
}

static ROOM_SERIES: LazyLock<Mutex<RoomSeries>> = LazyLock::new(|| {
    Mutex::new(RoomSeries {
        max: 0,
        labelled: HashMap::new(),
    })
});

fn room_series() -> std::sync::MutexGuard<'static, RoomSeries> {
    ROOM_SERIES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets `metrics.maxRoomSeries` (0 = every room labelled).
pub fn set_max_room_series(max: usize) {
    room_series().max = max;
}

/// The `room` label of a room's series: its id while fewer than `metrics.maxRoomSeries`
/// rooms have one, else [`OTHER`].
pub fn room_label(room: &Arc<str>) -> Arc<str> {
    let mut series = room_series();
    let known = series.labelled.contains_key(room);
    if &**room != OTHER && (known || series.max == 0 || series.labelled.len() < series.max) {
        *series.labelled.entry(room.clone()).or_insert(0) += 1;
        room.clone()
    } else {
        OTHER.into()
    }
}

/// Counters of one (room, event), cached by the room.
#[derive(Clone)]
pub struct EventCounters {
    pub triggered: IntCounter,
    pub delivered: IntCounter,
    pub validation_failures: IntCounter,
}

impl EventCounters {
    pub fn new(room: &str, event: &str) -> Self {
        let m = &*METRICS;
        EventCounters {
            triggered: m.triggered.with_label_values(&[room, event]),
            delivered: m.delivered.with_label_values(&[room, event]),
            validation_failures: m.validation_failures.with_label_values(&[room, event]),
        }
    }

    /// Drops the series of a deleted room's event, so deleted rooms do not accumulate.
    pub fn remove(room: &str, event: &str) {
        let m = &*METRICS;
        for vec in [&m.triggered, &m.delivered, &m.validation_failures] {
            let _ = vec.remove_label_values(&[room, event]);
        }
    }
}

/// Drops the series of a deleted room (by its label) and frees its label for another room,
/// once no other instance of the room uses it; the aggregated [`OTHER`] series stay.
pub fn remove_room(label: &str, events: impl Iterator<Item = impl AsRef<str>>) {
    if label == OTHER {
        return;
    }
    // Held until the series are gone, so that a room taking the label meanwhile keeps its own.
    let mut series = room_series();
    match series.labelled.get_mut(label) {
        Some(users) if *users > 1 => {
            *users -= 1;
            return;
        }
        _ => {
            series.labelled.remove(label);
        }
    }
    for event in events {
        EventCounters::remove(label, event.as_ref());
    }
    EventCounters::remove(label, OTHER);
    let _ = METRICS.joins.remove_label_values(&[label]);
}
