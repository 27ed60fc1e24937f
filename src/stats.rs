//! What the operator dashboard (`/admin`, through `GET /api/stats`) shows beyond `/metrics`:
//! every room's numbers, the latest errors, and rates sampled every [`SAMPLE_INTERVAL`] over
//! the last ten minutes.

use crate::actors::directory::Directory;
use crate::actors::messages::{GetRoomStats, RoomAddrs, RoomStats};
use crate::actors::persistence::StoreHealth;
use crate::metrics::METRICS;
use actix::Addr;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often the rates are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: ten minutes.
const SAMPLES: usize = 120;
/// Errors kept.
const MAX_ERRORS: usize = 50;
/// Longest error message kept, in bytes.
const MAX_ERROR_MESSAGE: usize = 300;
/// How long a room may take to answer (one restoring its state answers nothing meanwhile).
const ROOM_ANSWER: Duration = Duration::from_millis(500);

/// An error answered to a client or met by the service.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecentError {
    /// Unix time in ms.
    pub at: u64,
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// Errors answered to clients, and the service's own (the database's): kept apart, so that a
/// client sending bad requests cannot push the service's errors out.
static CLIENT_ERRORS: LazyLock<Mutex<VecDeque<RecentError>>> = LazyLock::new(Default::default);
static SERVICE_ERRORS: LazyLock<Mutex<VecDeque<RecentError>>> = LazyLock::new(Default::default);

/// Whose error it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// A request refused (validation, rate limits, …).
    Client,
    /// The service met it (the database, the quarantine).
    Service,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Keeps an error for the dashboard (the newest [`MAX_ERRORS`] of each source).
pub fn record_error(
    source: ErrorSource,
    code: &str,
    message: &str,
    room_id: Option<&str>,
    user_id: Option<&str>,
) {
    let mut end = message.len().min(MAX_ERROR_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let error = RecentError {
        at: now_ms(),
        code: code.to_owned(),
        message: message[..end].to_owned(),
        room_id: room_id.map(str::to_owned),
        user_id: user_id.map(str::to_owned),
    };
    let mut errors = lock(match source {
        ErrorSource::Client => &CLIENT_ERRORS,
        ErrorSource::Service => &SERVICE_ERRORS,
    });
    if errors.len() == MAX_ERRORS {
        errors.pop_front();
    }
    errors.push_back(error);
}

/// Samples of the whole service, oldest first.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Series {
    interval_ms: u64,
    /// Unix time in ms of each sample.
    at: VecDeque<u64>,
    events_per_second: VecDeque<f64>,
    deliveries_per_second: VecDeque<f64>,
    connections: VecDeque<i64>,
    backlog: VecDeque<usize>,
}

/// The last sample's counts, to turn the next one into rates.
#[derive(Default)]
struct Sampler {
    series: Series,
    /// Per room: when it was sampled, and its published and delivered counts then.
    last: HashMap<String, (Instant, u64, u64)>,
    /// Per room: events per second over the last interval.
    rates: HashMap<String, f64>,
}

static SAMPLER: LazyLock<Mutex<Sampler>> = LazyLock::new(Default::default);
static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Every room's numbers, by room id; `None` for a room that did not answer within
/// [`ROOM_ANSWER`] (restoring its state, or overloaded).
pub async fn room_stats(directory: &Addr<Directory>) -> Vec<(String, Option<RoomStats>)> {
    let Ok(rooms) = directory.send(RoomAddrs).await else {
        return Vec::new();
    };
    let asked = rooms.into_iter().map(|(id, room)| async move {
        let answer = tokio::time::timeout(ROOM_ANSWER, room.send(GetRoomStats)).await;
        (id, answer.ok().and_then(Result::ok))
    });
    futures_util::future::join_all(asked).await
}

/// Folds one sample into the series.
fn sample(rooms: &[(String, Option<RoomStats>)], backlog: usize) {
    let now = Instant::now();
    let mut sampler = lock(&SAMPLER);
    let (mut events, mut deliveries) = (0.0, 0.0);
    let mut last = HashMap::with_capacity(rooms.len());
    let mut rates = HashMap::with_capacity(rooms.len());
    for (id, room) in rooms {
        let Some(room) = room else {
            // Not answering: its counts wait for the next sample.
            if let Some(then) = sampler.last.get(id) {
                last.insert(id.clone(), *then);
            }
            continue;
        };
        if let Some((then, published, delivered)) = sampler.last.get(&room.id) {
            let secs = now.duration_since(*then).as_secs_f64().max(0.001);
            // A room deleted and made again starts from 0: no negative rate.
            let rate = room.published.saturating_sub(*published) as f64 / secs;
            events += rate;
            deliveries += room.delivered.saturating_sub(*delivered) as f64 / secs;
            rates.insert(room.id.clone(), rate);
        }
        last.insert(room.id.clone(), (now, room.published, room.delivered));
    }
    sampler.last = last;
    sampler.rates = rates;
    let series = &mut sampler.series;
    series.interval_ms = SAMPLE_INTERVAL.as_millis() as u64;
    if series.at.len() == SAMPLES {
        series.at.pop_front();
        series.events_per_second.pop_front();
        series.deliveries_per_second.pop_front();
        series.connections.pop_front();
        series.backlog.pop_front();
    }
    series.at.push_back(now_ms());
    series.events_per_second.push_back(events);
    series.deliveries_per_second.push_back(deliveries);
    series.connections.push_back(METRICS.connections.get());
    series.backlog.push_back(backlog);
}

/// Samples the rates every [`SAMPLE_INTERVAL`], for as long as the server runs.
pub fn start_sampler(directory: Addr<Directory>, store: Arc<StoreHealth>) {
    LazyLock::force(&STARTED);
    actix_rt::spawn(async move {
        let mut tick = actix_rt::time::interval(SAMPLE_INTERVAL);
        // A late sample is not followed by catch-up ones milliseconds apart.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let rooms = room_stats(&directory).await;
            sample(&rooms, store.backlog.load(Ordering::Relaxed));
        }
    });
}

/// The `GET /api/stats` answer.
pub async fn snapshot(
    directory: &Addr<Directory>,
    store: &StoreHealth,
    database_url: &str,
) -> Value {
    let rooms = room_stats(directory).await;
    let (rates, series) = {
        let sampler = lock(&SAMPLER);
        (sampler.rates.clone(), sampler.series.clone())
    };
    let rooms: Vec<Value> = rooms
        .into_iter()
        .map(|(id, room)| match room {
            Some(room) => {
                let rate = rates.get(&room.id).copied().unwrap_or(0.0);
                let mut room = serde_json::to_value(room).unwrap_or_default();
                room["eventsPerSecond"] = json!(rate);
                room["answering"] = json!(true);
                room
            }
            None => json!({ "id": id, "answering": false }),
        })
        .collect();
    let mut errors: Vec<RecentError> = lock(&CLIENT_ERRORS).iter().cloned().collect();
    errors.extend(lock(&SERVICE_ERRORS).iter().cloned());
    errors.sort_by_key(|e| std::cmp::Reverse(e.at));
    let backend = if database_url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    let available = store.available.load(Ordering::Relaxed);
    json!({
        "uptimeSeconds": STARTED.elapsed().as_secs_f64(),
        "connections": METRICS.connections.get(),
        "database": {
            "backend": backend,
            "state": if available { "ok" } else { "down" },
            "backlog": store.backlog.load(Ordering::Relaxed),
            "backlogBytes": store.backlog_bytes.load(Ordering::Relaxed),
            "failures": METRICS.persist_failures.get(),
            "quarantined": METRICS.persist_quarantined.get(),
            "stoppedRooms": store.stopped.load(Ordering::Relaxed),
            "restoringRooms": store.restoring.load(Ordering::Relaxed),
        },
        "rooms": rooms,
        "errors": errors,
        "series": series,
    })
}
