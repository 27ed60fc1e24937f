//! Fan-out and latency: subscribers and senders spread over one or more rooms; senders trigger
//! as fast as a window of unacknowledged triggers allows, or at a fixed rate. Subscribers
//! measure end-to-end latency from a send timestamp carried in each event's data, and count
//! lost and duplicated deliveries. The server's CPU time comes from /proc/PID/stat, its
//! memory (optionally sampled through the run) from /proc/PID/status.

use crate::client::{Client, OnEvent};
use crate::server::{cpu_seconds, RssSampler};
use crate::stats::{Histogram, SeenSeqs, Timeline};
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// When no subscriber has received anything for this long, the rest counts as lost.
const IDLE_END: Duration = Duration::from_secs(5);
/// How often the run looks whether the subscribers hold every delivery.
const POLL: Duration = Duration::from_millis(100);

pub struct Options {
    /// Name in the JSON line (`fanout`, `latency`).
    pub scenario: &'static str,
    pub url: String,
    pub event: String,
    /// Subscriber `i` joins `rooms[i % len]`, sender `j` joins `rooms[j % len]`.
    pub rooms: Vec<String>,
    pub subscribers: usize,
    pub senders: usize,
    /// Messages in all (split evenly over the senders).
    pub messages: u64,
    /// Messages per second in all; 0 = as fast as the window allows.
    pub rate: u64,
    /// Unacknowledged triggers in flight per sender (rate 0).
    pub window: usize,
    /// Connections opened at once while setting up.
    pub connect_concurrency: usize,
    /// The server's processes (a cluster's nodes): their CPU time is summed.
    pub server_pid: Vec<u32>,
    /// With several nodes: read each room's owner from `/api/stats` with this key, and
    /// report latency apart for subscribers on the owner's node and on another node.
    pub api_key: Option<String>,
    /// Sample the server's RSS this often during the run.
    pub rss_every: Option<Duration>,
    /// Keep a [`Timeline`] of the deliveries (fixed-rate runs).
    pub timeline: Option<TimelineOptions>,
}

/// A run's [`Timeline`]: its slots, what counts as slow, and where to write it (if anywhere).
pub struct TimelineOptions {
    pub file: Option<std::path::PathBuf>,
    pub slot_us: u64,
    pub slow_us: u64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Finds the unsigned integer after a key in event frames: a cheap scan instead of parsing
/// every event, with the searcher built once (this is the load generator's hottest loop).
struct NumberAfter {
    key: memchr::memmem::Finder<'static>,
    /// Search from the end: the key is near the end of the frame.
    from_end: memchr::memmem::FinderRev<'static>,
    len: usize,
    reverse: bool,
}

impl NumberAfter {
    fn new(key: &'static str, reverse: bool) -> Self {
        NumberAfter {
            key: memchr::memmem::Finder::new(key),
            from_end: memchr::memmem::FinderRev::new(key),
            len: key.len(),
            reverse,
        }
    }

    fn find(&self, text: &str) -> Option<u64> {
        let bytes = text.as_bytes();
        let at = if self.reverse {
            self.from_end.rfind(bytes)?
        } else {
            self.key.find(bytes)?
        };
        let digits = &bytes[at + self.len..];
        let end = digits
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(digits.len());
        std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
    }
}

/// Opens `n` connections named `{user_prefix}{i}`, connection `i` joined to
/// `rooms[i % rooms.len()]`, `concurrency` at a time. `url` may list several nodes
/// (comma-separated): a room's connections alternate between them. Each result carries the
/// room index.
pub async fn connect_all(
    url: &str,
    user_prefix: &str,
    rooms: &[String],
    n: usize,
    collect_events: bool,
    concurrency: usize,
) -> Vec<Result<(usize, Client), String>> {
    let on_event = |_| {
        if collect_events {
            OnEvent::Collect
        } else {
            OnEvent::Ignore
        }
    };
    connect_indexed(url, user_prefix, rooms, n, &on_event, concurrency)
        .await
        .into_iter()
        .map(|r| r.map(|(_, room, c)| (room, c)))
        .collect()
}

/// [`connect_all`], each result also carrying the connection's number; connection `i` does
/// `on_event(i)` with the events it receives.
async fn connect_indexed(
    url: &str,
    user_prefix: &str,
    rooms: &[String],
    n: usize,
    on_event: &(dyn Fn(usize) -> OnEvent + Sync),
    concurrency: usize,
) -> Vec<Result<(usize, usize, Client), String>> {
    stream::iter(0..n)
        .map(|i| async move {
            let room = i % rooms.len();
            let url = node_url(url, i, rooms.len()).1;
            let user = format!("{user_prefix}{i}");
            let c = Client::connect_handling(url, &user, on_event(i)).await?;
            let r = c
                .request("dialogue:join", &json!({ "roomId": rooms[room] }))
                .await?;
            if r["ok"] != json!(true) {
                return Err(format!("join {}: {r}", rooms[room]));
            }
            Ok((i, room, c))
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

/// The node connection `i` of a run over `rooms` rooms uses: (its index, its URL). Within a
/// room, connections alternate between the nodes; over the rooms, the first ones too.
pub fn node_url(urls: &str, i: usize, rooms: usize) -> (usize, &str) {
    let nodes: Vec<&str> = urls.split(',').collect();
    let node = (i / rooms.max(1) + i) % nodes.len();
    (node, nodes[node])
}

/// Each room's owner node (its index in `urls`), from the nodes' `/api/stats`.
async fn owners(urls: &str, key: &str, rooms: &[String]) -> Result<Vec<Option<usize>>, String> {
    let mut owner = vec![None; rooms.len()];
    let index: std::collections::HashMap<&str, usize> = rooms
        .iter()
        .enumerate()
        .map(|(i, r)| (r.as_str(), i))
        .collect();
    for (node, url) in urls.split(',').enumerate() {
        let auth = format!("Bearer {key}");
        let answer =
            crate::server::http_get(url, "/api/stats", &[("Authorization", &auth)]).await?;
        let stats: Value = serde_json::from_slice(&answer.body).map_err(|e| e.to_string())?;
        for room in stats["rooms"].as_array().into_iter().flatten() {
            if room["role"] == "owner" {
                if let Some(&i) = room["id"].as_str().and_then(|id| index.get(id)) {
                    owner[i] = Some(node);
                }
            }
        }
    }
    Ok(owner)
}

/// Where the subscribers record their deliveries' latencies.
#[derive(Default)]
struct Recorder {
    all: Histogram,
    /// Set when the run starts (before the first send).
    timeline: OnceLock<Timeline>,
    /// In a cluster: subscribers on their room's owner node, and on another node.
    owner_node: Histogram,
    other_node: Histogram,
}

/// One subscriber's deliveries, counted on its connection's task as they are read.
#[derive(Default)]
struct Tally {
    count: AtomicU64,
    duplicates: AtomicU64,
    /// In a cluster: whether the subscriber sits on its room's owner node (set once known).
    on_owner_node: OnceLock<bool>,
}

/// What the subscribers look for in a frame, built once and shared: per-connection state is
/// what misses the cache on the load generator's hottest path.
struct Matcher {
    /// The start of an `event` delivery.
    marker: String,
    /// `sentAt` is in the data, near the start.
    sent_at: NumberAfter,
    /// `seq` is the EventMessage's last field.
    seq: NumberAfter,
}

impl Matcher {
    fn new(event: &str) -> Self {
        Matcher {
            marker: format!("[\"dialogue:event\",{{\"event\":{}", json!(event)),
            sent_at: NumberAfter::new("\"sentAt\":", false),
            seq: NumberAfter::new("\"seq\":", true),
        }
    }

    /// An `event` delivery's send time and seq.
    fn find(&self, frame: &str) -> Option<(u64, u64)> {
        if !frame.starts_with(&self.marker) {
            return None; // e.g. the join's own events
        }
        Some((self.sent_at.find(frame)?, self.seq.find(frame)?))
    }
}

/// The handler of one subscriber's events: counts each delivery once (a repeated `seq` is a
/// duplicate) and records its latency.
fn subscriber(matcher: Arc<Matcher>, tally: Arc<Tally>, rec: Arc<Recorder>) -> OnEvent {
    let mut seen = SeenSeqs::default();
    OnEvent::Handle(Box::new(move |frame| {
        let Some((sent, seq)) = matcher.find(frame.data()) else {
            return;
        };
        if !seen.insert(seq) {
            tally.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tally.count.fetch_add(1, Ordering::Relaxed);
        let latency = now_us().saturating_sub(sent);
        rec.all.record(latency);
        match tally.on_owner_node.get() {
            Some(true) => rec.owner_node.record(latency),
            Some(false) => rec.other_node.record(latency),
            None => {}
        }
        if let Some(t) = rec.timeline.get() {
            t.record(sent, latency);
        }
    }))
}

/// Waits until the subscribers hold the `expected` deliveries (the senders' accepted
/// triggers), or until none has arrived for [`IDLE_END`] (the rest is lost); answers how many
/// they hold.
async fn wait_for_deliveries(tallies: &[Arc<Tally>], expected: u64) -> u64 {
    let received = || -> u64 {
        tallies
            .iter()
            .map(|t| t.count.load(Ordering::Relaxed))
            .sum()
    };
    let (mut last, mut idle) = (received(), Duration::ZERO);
    loop {
        let now = received();
        if now >= expected {
            return now;
        }
        if now == last {
            idle += POLL;
            if idle >= IDLE_END {
                return now;
            }
        } else {
            (last, idle) = (now, Duration::ZERO);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One sender's trigger outcomes.
#[derive(Default)]
struct Sent {
    /// Triggers refused (or never acknowledged).
    refused: u64,
    /// The first refusal's ack, to say why.
    first_refusal: Option<Value>,
}

impl Sent {
    /// Counts an ack; a refusal lowers the deliveries the room's subscribers expect.
    /// `ack` is `None` when the connection closed first.
    fn settle(&mut self, ack: Option<Value>, expected: &AtomicU64) {
        match ack {
            Some(v) if v["ok"] == json!(true) => return,
            Some(v) => {
                self.first_refusal.get_or_insert(v);
            }
            None => {
                self.first_refusal
                    .get_or_insert(json!("connection closed before the ack"));
            }
        }
        self.refused += 1;
        expected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How one sender triggers.
struct SendPlan {
    room: String,
    event: String,
    count: u64,
    /// Unacknowledged triggers in flight (without an interval).
    window: usize,
    /// A fixed pace, from `first_tick`.
    interval: Option<Duration>,
    first_tick: tokio::time::Instant,
}

/// One sender's triggers; `expected` is its room's count of accepted events.
async fn send(
    c: Arc<Client>,
    p: SendPlan,
    expected: Arc<[AtomicU64]>,
    room: usize,
) -> Result<Sent, String> {
    let mut inflight = std::collections::VecDeque::new();
    let mut out = Sent::default();
    let mut ticker = p
        .interval
        .map(|every| tokio::time::interval_at(p.first_tick, every));
    for i in 0..p.count {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
            // Settle the acks that have come.
            while let Some(front) = inflight.front_mut() {
                let front: &mut oneshot::Receiver<Value> = front;
                let ack = match front.try_recv() {
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Ok(v) => Some(v),
                    Err(oneshot::error::TryRecvError::Closed) => None,
                };
                out.settle(ack, &expected[room]);
                inflight.pop_front();
            }
        } else if inflight.len() >= p.window {
            let rx = inflight.pop_front().expect("the window is not empty");
            out.settle(rx.await.ok(), &expected[room]);
        }
        let payload = json!({ "roomId": p.room, "event": p.event, "data": {
            "text": format!("fanout {i}"), "username": "load", "sentAt": now_us() } });
        inflight.push_back(c.send_request("dialogue:trigger", &payload)?);
    }
    for rx in inflight {
        out.settle(rx.await.ok(), &expected[room]);
    }
    Ok(out)
}

pub async fn run(o: Options) -> Result<Value, String> {
    let connect_started = Instant::now();
    let nodes = o.url.split(',').count();
    let rec = Arc::new(Recorder::default());
    let tallies: Vec<Arc<Tally>> = (0..o.subscribers).map(|_| Arc::default()).collect();
    let matcher = Arc::new(Matcher::new(&o.event));
    let on_event = |i: usize| subscriber(matcher.clone(), tallies[i].clone(), rec.clone());
    let mut subs = Vec::with_capacity(o.subscribers);
    for r in connect_indexed(
        &o.url,
        "sub",
        &o.rooms,
        o.subscribers,
        &on_event,
        o.connect_concurrency,
    )
    .await
    {
        subs.push(r?);
    }
    // In a cluster: which subscribers sit on their room's owner node.
    let owner = match (&o.api_key, nodes > 1) {
        (Some(key), true) => Some(owners(&o.url, key, &o.rooms).await?),
        _ => None,
    };
    let mut senders = Vec::with_capacity(o.senders);
    for r in connect_all(
        &o.url,
        "sender",
        &o.rooms,
        o.senders,
        false,
        o.connect_concurrency,
    )
    .await
    {
        let (room, c) = r?;
        senders.push((room, Arc::new(c)));
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();

    let per_sender = o.messages / o.senders.max(1) as u64;
    let total = per_sender * o.senders as u64;
    // Events each room will carry; senders lower a room's count for each refused trigger.
    let per_room: Arc<[AtomicU64]> = (0..o.rooms.len()).map(|_| AtomicU64::new(0)).collect();
    for (room, _) in &senders {
        per_room[*room].fetch_add(per_sender, Ordering::Relaxed);
    }
    let subs_per_room = subs
        .iter()
        .fold(vec![0u64; o.rooms.len()], |mut n, (_, room, _)| {
            n[*room] += 1;
            n
        });

    if let Some(owner) = &owner {
        for (i, room, _) in &subs {
            let node = node_url(&o.url, *i, o.rooms.len()).0;
            let _ = tallies[*i].on_owner_node.set(owner[*room] == Some(node));
        }
    }
    let rss = o
        .server_pid
        .first()
        .copied()
        .zip(o.rss_every)
        .map(|(pid, every)| RssSampler::start(pid, every));
    let cpu_of = |pids: &[u32]| -> Option<f64> { pids.iter().map(|p| cpu_seconds(*p)).sum() };
    let cpu_before = cpu_of(&o.server_pid);
    let own_cpu_before = cpu_seconds(std::process::id());
    let start = Instant::now();
    if let Some(t) = &o.timeline {
        let seconds = o.messages as f64 / o.rate.max(1) as f64;
        let _ = rec
            .timeline
            .set(Timeline::new(now_us(), seconds + 1.0, t.slot_us, t.slow_us));
    }

    // At a fixed rate each sender ticks every `senders / rate` s; their first ticks are spread
    // over one interval so the room does not see the senders' triggers in bursts.
    let interval = (o.rate > 0).then(|| Duration::from_secs_f64(o.senders as f64 / o.rate as f64));
    let t0 = tokio::time::Instant::now();
    let send_tasks: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(j, (room, c))| {
            let first_tick = t0
                + interval
                    .unwrap_or_default()
                    .mul_f64(j as f64 / o.senders as f64);
            let plan = SendPlan {
                room: o.rooms[*room].clone(),
                event: o.event.clone(),
                count: per_sender,
                window: o.window,
                interval,
                first_tick,
            };
            tokio::spawn(send(c.clone(), plan, per_room.clone(), *room))
        })
        .collect();
    let (mut refused, mut first_refusal) = (0, None);
    for t in send_tasks {
        let sent = t.await.map_err(|e| e.to_string())??;
        refused += sent.refused;
        first_refusal = first_refusal.or(sent.first_refusal);
    }
    let expected: u64 = per_room
        .iter()
        .zip(&subs_per_room)
        .map(|(events, subs)| events.load(Ordering::Relaxed) * subs)
        .sum();
    let send_seconds = start.elapsed().as_secs_f64();
    let received = wait_for_deliveries(&tallies, expected).await;
    let duplicates: u64 = tallies
        .iter()
        .map(|t| t.duplicates.load(Ordering::Relaxed))
        .sum();
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_before.zip(cpu_of(&o.server_pid)).map(|(a, b)| b - a);
    // Near 100 % of one core, the load generator may be what limits the figures.
    let own_cpu = own_cpu_before
        .zip(cpu_seconds(std::process::id()))
        .map(|(a, b)| b - a);
    let rss = match rss {
        Some(s) => Some(s.finish().await),
        None => None,
    };
    for (_, _, c) in &subs {
        c.close();
    }
    let timeline = rec.timeline.get();
    if let (Some(path), Some(t)) = (o.timeline.as_ref().and_then(|t| t.file.as_ref()), timeline) {
        std::fs::write(path, t.to_tsv()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    for (_, s) in &senders {
        s.close();
    }

    let ms = |p: f64| rec.all.percentile(p).map(|us| us as f64 / 1000.0);
    let ms_of = |h: &Histogram, p: f64| h.percentile(p).map(|us| us as f64 / 1000.0);
    let mut result = json!({
        "scenario": o.scenario,
        "rooms": o.rooms.len(),
        "subscribers": o.subscribers,
        "senders": o.senders,
        "messages": total,
        "rate": o.rate,
        "refused": refused,
        "first_refusal": first_refusal,
        "expected": expected,
        "deliveries": received,
        "lost": expected.saturating_sub(received),
        "duplicates": duplicates,
        "connect_seconds": connect_seconds,
        "send_seconds": send_seconds,
        "sent_per_s": (total as f64 / send_seconds).round(),
        "seconds": elapsed,
        "deliveries_per_s": (received as f64 / elapsed).round(),
        "p50_ms": ms(50.0),
        "p99_ms": ms(99.0),
        "p999_ms": ms(99.9),
        "max_ms": ms(100.0),
        "server_cpu_s": cpu,
        "server_cpu_us_per_delivery": cpu.map(|c| c * 1e6 / received.max(1) as f64),
        "loadgen_cpu_pct": own_cpu.map(|c| (c * 100.0 / elapsed).round()),
    });
    if owner.is_some() {
        result["nodes"] = json!(nodes);
        result["owner_node_p50_ms"] = json!(ms_of(&rec.owner_node, 50.0));
        result["owner_node_p99_ms"] = json!(ms_of(&rec.owner_node, 99.0));
        result["other_node_p50_ms"] = json!(ms_of(&rec.other_node, 50.0));
        result["other_node_p99_ms"] = json!(ms_of(&rec.other_node, 99.0));
        eprintln!(
            "{}: subscribers on the owner's node p50 {:?} p99 {:?} ms; on another node p50 {:?} p99 {:?} ms",
            o.scenario,
            result["owner_node_p50_ms"],
            result["owner_node_p99_ms"],
            result["other_node_p50_ms"],
            result["other_node_p99_ms"]
        );
    }
    if let (Some(t), Some(opts)) = (timeline, &o.timeline) {
        // How much of the tail is slow deliveries, and how bunched up they are in time.
        let s = t.summary();
        result["slow_ms"] = json!(opts.slow_us as f64 / 1000.0);
        result["slow_pct"] = json!(s.slow as f64 * 100.0 / s.deliveries.max(1) as f64);
        result["timeline_slot_ms"] = json!(opts.slot_us / 1000);
        result["slow_slots"] = json!(s.slow_slots);
        result["slots"] = json!(s.slots);
    }
    if let Some(samples) = rss.filter(|s| !s.is_empty()) {
        let (first, last) = (samples[0], samples[samples.len() - 1]);
        let max = samples.iter().copied().max().unwrap_or(0);
        result["rss_first_kib"] = json!(first);
        result["rss_last_kib"] = json!(last);
        result["rss_max_kib"] = json!(max);
        result["rss_growth_pct"] = json!((last as f64 - first as f64) * 100.0 / first as f64);
        // Over the second half only: what still grows once bounded caches (a room's window
        // of recent events) have filled.
        let mid = samples[samples.len() / 2];
        result["rss_second_half_growth_pct"] =
            json!((last as f64 - mid as f64) * 100.0 / mid as f64);
        result["rss_samples"] = json!(samples.len());
    }
    let f = |k: &str| result[k].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "{}: {received}/{expected} deliveries ({} lost, {duplicates} duplicated, {refused} refused) in {elapsed:.2}s ({}/s; {} msg/s sent), \
         p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms max {:.3} ms, server CPU {:.3} µs/delivery, load generator CPU {} %",
        o.scenario,
        result["lost"],
        result["deliveries_per_s"],
        result["sent_per_s"],
        f("p50_ms"),
        f("p99_ms"),
        f("p999_ms"),
        f("max_ms"),
        f("server_cpu_us_per_delivery"),
        result["loadgen_cpu_pct"],
    );
    if !result["first_refusal"].is_null() {
        eprintln!("{}: first refusal: {}", o.scenario, result["first_refusal"]);
    }
    if result.get("rss_first_kib").is_some() {
        eprintln!(
            "{}: server RSS first {} KiB, last {} KiB, max {} KiB ({:+.1} %; {:+.1} % over the second half)",
            o.scenario,
            result["rss_first_kib"],
            result["rss_last_kib"],
            result["rss_max_kib"],
            f("rss_growth_pct"),
            f("rss_second_half_growth_pct")
        );
    }
    Ok(result)
}
