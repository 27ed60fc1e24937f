//! Delivery under jitter: receivers in R rooms have their connections cut at random every
//! `cut_min`–`cut_max` and come back with a native resume (`dialogue:join` with `since` = the
//! last seq they hold), while senders trigger at a fixed rate. Reports the share of
//! (receiver, event) deliveries that arrived exactly once, the duplicates and the missing, and
//! the time from a cut to the first replayed event (p50/p99/max; it includes the
//! `reconnect_delay` a client waits before connecting again).

use crate::client::Client;
use crate::stats::Histogram;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Options {
    pub url: String,
    pub rooms: Vec<String>,
    pub event: String,
    pub receivers: usize,
    pub senders: usize,
    /// Messages per second in all.
    pub rate: u64,
    pub seconds: f64,
    pub cut_min: Duration,
    pub cut_max: Duration,
    /// How long a cut receiver waits before connecting again (socket.io-client's default
    /// `reconnectionDelay` is 1 s).
    pub reconnect_delay: Duration,
    /// Connections being opened at once at the start.
    pub concurrency: usize,
}

/// What one receiver saw.
#[derive(Default)]
struct Seen {
    /// Every seq received, in arrival order.
    seqs: Vec<u64>,
    connects: u64,
    refused_resumes: u64,
}

pub async fn run(o: Options) -> Result<Value, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let replay_us = Arc::new(Histogram::default());
    let failed_connects = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(o.concurrency.max(1)));
    let mut receivers = Vec::new();
    for i in 0..o.receivers {
        let room = o.rooms[i % o.rooms.len()].clone();
        let seen = Arc::new(Mutex::new(Seen::default()));
        receivers.push((room.clone(), seen.clone()));
        let task = Receiver {
            url: o.url.clone(),
            user: format!("jitter-{i}"),
            room,
            event: o.event.clone(),
            seen,
            stop: stop.clone(),
            replay_us: replay_us.clone(),
            failed_connects: failed_connects.clone(),
            cut_min: o.cut_min,
            cut_max: o.cut_max,
            reconnect_delay: o.reconnect_delay,
            seed: 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1),
        };
        let gate = gate.clone();
        tokio::spawn(async move { task.run(gate).await });
    }
    // Everyone connected once before sending.
    let started = Instant::now();
    while receivers
        .iter()
        .any(|(_, s)| s.lock().map_or(true, |s| s.connects == 0))
    {
        if started.elapsed() > Duration::from_secs(120) {
            return Err("receivers did not connect within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Senders, straight to the server: `rate` triggers per second in all, rooms in turn.
    let mut senders = Vec::new();
    for s in 0..o.senders.max(1) {
        let c = Client::connect(&o.url, &format!("jitter-sender-{s}"), false).await?;
        for room in &o.rooms {
            c.request("dialogue:join", &json!({ "roomId": room }))
                .await?;
        }
        senders.push(c);
    }
    let total = (o.rate as f64 * o.seconds).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / o.rate.max(1) as f64);
    let mut ticker = tokio::time::interval(interval);
    let mut acks = Vec::with_capacity(total as usize);
    for n in 0..total {
        ticker.tick().await;
        let c = &senders[n as usize % senders.len()];
        let room = &o.rooms[n as usize % o.rooms.len()];
        let data = json!({ "text": format!("jitter {n}"), "username": "sender" });
        let payload = json!({ "roomId": room, "event": o.event, "data": data });
        acks.push(c.send_request("dialogue:trigger", &payload)?);
    }
    let mut refused = 0u64;
    for ack in acks {
        if !matches!(ack.await, Ok(v) if v["ok"] == json!(true)) {
            refused += 1;
        }
    }
    // The newest seq of each room, then every receiver catches up (reconnecting as needed).
    let mut newest = HashMap::new();
    for room in &o.rooms {
        let page = senders[0]
            .request(
                "dialogue:getHistory",
                &json!({ "roomId": room, "eventName": o.event, "start": 0, "end": 1 }),
            )
            .await?;
        let seq = page["events"][0]["seq"].as_u64().unwrap_or(0);
        newest.insert(room.clone(), seq);
    }
    let caught_up = |receivers: &[(String, Arc<Mutex<Seen>>)]| {
        receivers.iter().all(|(room, s)| {
            s.lock()
                .is_ok_and(|s| s.seqs.iter().copied().max() == Some(newest[room]))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !caught_up(&receivers) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);

    // Exactly once: each receiver holds each seq 1..=newest of its room once.
    let (mut expected, mut once, mut duplicates, mut missing, mut connects, mut refused_resumes) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for (room, seen) in &receivers {
        let s = seen.lock().map_err(|_| "poisoned")?;
        let hi = newest[room];
        let mut count = vec![0u32; hi as usize + 1];
        for &seq in &s.seqs {
            if let Some(c) = count.get_mut(seq as usize) {
                *c += 1;
            }
        }
        expected += hi;
        for c in &count[1..] {
            match c {
                0 => missing += 1,
                1 => once += 1,
                n => {
                    once += 1;
                    duplicates += u64::from(*n - 1);
                }
            }
        }
        connects += s.connects;
        refused_resumes += s.refused_resumes;
    }
    for c in senders {
        c.close();
    }
    let ms = |v: Option<u64>| v.map_or(Value::Null, |us| json!(us as f64 / 1000.0));
    let summary = json!({
        "scenario": "jitter",
        "receivers": o.receivers,
        "rooms": o.rooms.len(),
        "rate": o.rate,
        "seconds": o.seconds,
        "reconnect_delay_ms": o.reconnect_delay.as_millis() as u64,
        "triggered": total,
        "refused": refused,
        "expected_deliveries": expected,
        "exactly_once": once,
        "exactly_once_share": if expected == 0 { 1.0 } else { once as f64 / expected as f64 },
        "duplicates": duplicates,
        "missing": missing,
        "reconnects": connects.saturating_sub(o.receivers as u64),
        "failed_connects": failed_connects.load(Ordering::Relaxed),
        "refused_resumes": refused_resumes,
        "cut_to_replay_ms_p50": ms(replay_us.percentile(50.0)),
        "cut_to_replay_ms_p99": ms(replay_us.percentile(99.0)),
        "cut_to_replay_ms_max": ms(Some(replay_us.max())),
        "replays": replay_us.count(),
    });
    eprintln!(
        "jitter: {} receivers, {} events: {:.4} % exactly once, {duplicates} duplicates, {missing} missing, {} reconnects; cut → first replayed event p99 {} ms",
        o.receivers,
        total,
        summary["exactly_once_share"].as_f64().unwrap_or(0.0) * 100.0,
        summary["reconnects"],
        summary["cut_to_replay_ms_p99"]
    );
    Ok(summary)
}

/// One receiver: connect, join (with `since` after the first time), read until its random
/// cut, again until stopped.
struct Receiver {
    url: String,
    user: String,
    room: String,
    event: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    replay_us: Arc<Histogram>,
    failed_connects: Arc<AtomicU64>,
    cut_min: Duration,
    cut_max: Duration,
    reconnect_delay: Duration,
    seed: u64,
}

impl Receiver {
    async fn run(mut self, gate: Arc<tokio::sync::Semaphore>) {
        let mut first = true;
        let mut cut_at: Option<Instant> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let permit = if first {
                gate.clone().acquire_owned().await.ok()
            } else {
                None
            };
            let mut client = match Client::connect(&self.url, &self.user, true).await {
                Ok(c) => c,
                Err(_) => {
                    self.failed_connects.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let last = self
                .seen
                .lock()
                .map_or(0, |s| s.seqs.last().copied().unwrap_or(0));
            let join = if first {
                json!({ "roomId": self.room })
            } else {
                json!({ "roomId": self.room, "since": { &self.event: last } })
            };
            let Ok(ack) = client.request("dialogue:join", &join).await else {
                continue;
            };
            drop(permit);
            if let Ok(mut s) = self.seen.lock() {
                s.connects += 1;
                if ack["resume"]["resumed"] == json!(false) {
                    s.refused_resumes += 1;
                }
            }
            first = false;
            // Missed events are replayed before the ack: the first event read is one of them.
            let replayed = ack["resume"]["events"][&self.event].as_u64().unwrap_or(0);
            let mut replay_cut = cut_at.take().filter(|_| replayed > 0);
            let lifetime = self.next_lifetime();
            let until = tokio::time::Instant::now() + lifetime;
            loop {
                let next = tokio::time::timeout_at(until, client.next_event()).await;
                let Ok(Some(event)) = next else { break };
                let Some(seq) = seq_of(event.data(), &self.event) else {
                    continue;
                };
                if let Some(at) = replay_cut {
                    self.replay_us.record(at.elapsed().as_micros() as u64);
                    replay_cut = None;
                }
                if let Ok(mut s) = self.seen.lock() {
                    s.seqs.push(seq);
                }
                if self.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                client.close();
                return;
            }
            client.cut();
            cut_at = Some(Instant::now());
            tokio::time::sleep(self.reconnect_delay).await;
        }
    }

    /// A time in [cut_min, cut_max] (xorshift; chaos, not cryptography).
    fn next_lifetime(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let unit = (self.seed >> 11) as f64 / (1u64 << 53) as f64;
        self.cut_min + self.cut_max.saturating_sub(self.cut_min).mul_f64(unit)
    }
}

/// The seq of a `dialogue:event` of `event` (`["dialogue:event", {…}]` text).
fn seq_of(data: &str, event: &str) -> Option<u64> {
    let v: Value = serde_json::from_str(data).ok()?;
    let e = v.get(1)?;
    if v.get(0)? != "dialogue:event" || e.get("event")? != event {
        return None;
    }
    e.get("seq")?.as_u64()
}
