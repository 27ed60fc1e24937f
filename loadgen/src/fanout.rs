//! Fan-out and latency: subscribers and senders spread over one or more rooms; senders trigger
//! as fast as a window of unacknowledged triggers allows, or at a fixed rate. Subscribers
//! measure end-to-end latency from a send timestamp carried in each event's data, and count
//! lost and duplicated deliveries. The server's CPU time comes from /proc/PID/stat, its
//! memory (optionally sampled through the run) from /proc/PID/status.

use crate::client::Client;
use crate::server::{cpu_seconds, RssSampler};
use crate::stats::{Histogram, SeenSeqs};
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// A subscriber that has received nothing for this long counts the rest as lost.
const IDLE_END: Duration = Duration::from_secs(5);

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
    pub server_pid: Option<u32>,
    /// Sample the server's RSS this often during the run.
    pub rss_every: Option<Duration>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The unsigned integer after `key` in `text` (a cheap scan instead of parsing every event).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits: &str = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Opens `n` connections named `{user_prefix}{i}`, connection `i` joined to
/// `rooms[i % rooms.len()]`, `concurrency` at a time. Each result carries the room index.
pub async fn connect_all(
    url: &str,
    user_prefix: &str,
    rooms: &[String],
    n: usize,
    collect_events: bool,
    concurrency: usize,
) -> Vec<Result<(usize, Client), String>> {
    stream::iter(0..n)
        .map(|i| async move {
            let room = i % rooms.len();
            let c = Client::connect(url, &format!("{user_prefix}{i}"), collect_events).await?;
            let r = c
                .request("dialogue:join", &json!({ "roomId": rooms[room] }))
                .await?;
            if r["ok"] != json!(true) {
                return Err(format!("join {}: {r}", rooms[room]));
            }
            Ok((room, c))
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

/// What one subscriber saw.
struct Received {
    count: u64,
    duplicates: u64,
    client: Client,
}

/// Counts one subscriber's deliveries of `expected` events, recording latencies in `hist`.
async fn receive(mut c: Client, event: &str, expected: u64, hist: &Histogram) -> Received {
    let marker = format!("[\"dialogue:event\",{{\"event\":{}", json!(event));
    let mut seen = SeenSeqs::default();
    let (mut count, mut duplicates) = (0u64, 0u64);
    while count < expected {
        let frame = match c.try_next_event() {
            Some(f) => f,
            None => match tokio::time::timeout(IDLE_END, c.next_event()).await {
                Ok(Some(f)) => f,
                _ => break, // nothing for IDLE_END: the rest is lost
            },
        };
        if !frame.starts_with(&marker) {
            continue;
        }
        let (Some(sent), Some(seq)) = (
            number_after(&frame, "\"sentAt\":"),
            number_after(&frame, "\"seq\":"),
        ) else {
            continue;
        };
        if !seen.insert(seq) {
            duplicates += 1;
            continue;
        }
        count += 1;
        hist.record(now_us().saturating_sub(sent));
    }
    Received {
        count,
        duplicates,
        client: c,
    }
}

/// Whether an ack says the trigger was accepted.
fn accepted(ack: Result<Value, oneshot::error::RecvError>) -> bool {
    ack.is_ok_and(|v| v["ok"] == json!(true))
}

/// One sender's triggers into `room`; returns how many were refused (or never acknowledged).
async fn send(
    c: Arc<Client>,
    room: String,
    event: String,
    count: u64,
    window: usize,
    interval: Option<Duration>,
    first_tick: tokio::time::Instant,
) -> Result<u64, String> {
    let mut inflight = std::collections::VecDeque::new();
    let mut refused = 0u64;
    let mut ticker = interval.map(|every| tokio::time::interval_at(first_tick, every));
    for i in 0..count {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
            // Let go of the acks that have come.
            while let Some(front) = inflight.front_mut() {
                let front: &mut oneshot::Receiver<Value> = front;
                match front.try_recv() {
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Ok(v) if v["ok"] == json!(true) => {}
                    _ => refused += 1,
                }
                inflight.pop_front();
            }
        } else if inflight.len() >= window {
            let rx = inflight.pop_front().expect("the window is not empty");
            if !accepted(rx.await) {
                refused += 1;
            }
        }
        let payload = json!({ "roomId": room, "event": event, "data": {
            "text": format!("fanout {i}"), "username": "load", "sentAt": now_us() } });
        inflight.push_back(c.send_request("dialogue:trigger", &payload)?);
    }
    for rx in inflight {
        if !accepted(rx.await) {
            refused += 1;
        }
    }
    Ok(refused)
}

pub async fn run(o: Options) -> Result<Value, String> {
    let connect_started = Instant::now();
    let mut subs = Vec::with_capacity(o.subscribers);
    for r in connect_all(
        &o.url,
        "sub",
        &o.rooms,
        o.subscribers,
        true,
        o.connect_concurrency,
    )
    .await
    {
        let (room, mut c) = r?;
        while c.try_next_event().is_some() {} // joined confirmations
        subs.push((room, c));
    }
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
    let mut per_room = vec![0u64; o.rooms.len()];
    for (room, _) in &senders {
        per_room[*room] += per_sender;
    }
    let expected: u64 = subs.iter().map(|(room, _)| per_room[*room]).sum();

    let hist = Arc::new(Histogram::default());
    let rss = o
        .server_pid
        .zip(o.rss_every)
        .map(|(pid, every)| RssSampler::start(pid, every));
    let cpu_before = o.server_pid.and_then(cpu_seconds);
    let start = Instant::now();

    let receivers: Vec<_> = subs
        .into_iter()
        .map(|(room, c)| {
            let (event, hist, expected) = (o.event.clone(), hist.clone(), per_room[room]);
            tokio::spawn(async move { receive(c, &event, expected, &hist).await })
        })
        .collect();

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
            tokio::spawn(send(
                c.clone(),
                o.rooms[*room].clone(),
                o.event.clone(),
                per_sender,
                o.window,
                interval,
                first_tick,
            ))
        })
        .collect();
    let mut refused = 0;
    for t in send_tasks {
        refused += t.await.map_err(|e| e.to_string())??;
    }
    let send_seconds = start.elapsed().as_secs_f64();
    let (mut received, mut duplicates) = (0u64, 0u64);
    let mut clients = Vec::with_capacity(receivers.len());
    for r in receivers {
        let got = r.await.map_err(|e| e.to_string())?;
        received += got.count;
        duplicates += got.duplicates;
        clients.push(got.client);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_before
        .zip(o.server_pid.and_then(cpu_seconds))
        .map(|(a, b)| b - a);
    let rss = match rss {
        Some(s) => Some(s.finish().await),
        None => None,
    };
    for c in clients {
        c.close();
    }
    for (_, s) in &senders {
        s.close();
    }

    let ms = |p: f64| hist.percentile(p).map(|us| us as f64 / 1000.0);
    let mut result = json!({
        "scenario": o.scenario,
        "rooms": o.rooms.len(),
        "subscribers": o.subscribers,
        "senders": o.senders,
        "messages": total,
        "rate": o.rate,
        "refused": refused,
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
    });
    if let Some(samples) = rss.filter(|s| !s.is_empty()) {
        let (first, last) = (samples[0], samples[samples.len() - 1]);
        let max = samples.iter().copied().max().unwrap_or(0);
        result["rss_first_kib"] = json!(first);
        result["rss_last_kib"] = json!(last);
        result["rss_max_kib"] = json!(max);
        result["rss_growth_pct"] = json!((last as f64 - first as f64) * 100.0 / first as f64);
        result["rss_samples"] = json!(samples.len());
    }
    let f = |k: &str| result[k].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "{}: {received}/{expected} deliveries ({} lost, {duplicates} duplicated, {refused} refused) in {elapsed:.2}s ({}/s; {} msg/s sent), \
         p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms max {:.3} ms, server CPU {:.3} µs/delivery",
        o.scenario,
        result["lost"],
        result["deliveries_per_s"],
        result["sent_per_s"],
        f("p50_ms"),
        f("p99_ms"),
        f("p999_ms"),
        f("max_ms"),
        f("server_cpu_us_per_delivery"),
    );
    if result.get("rss_first_kib").is_some() {
        eprintln!(
            "{}: server RSS first {} KiB, last {} KiB, max {} KiB ({:+.1} %)",
            o.scenario,
            result["rss_first_kib"],
            result["rss_last_kib"],
            result["rss_max_kib"],
            f("rss_growth_pct")
        );
    }
    Ok(result)
}
