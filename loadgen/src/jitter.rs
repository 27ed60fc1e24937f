//! Delivery under jitter: receivers in R rooms have their connections cut at random every
//! `cut_min`–`cut_max` and come back with a native resume (`dialogue:join` with `since` = the
//! last seq they hold), while senders trigger at a fixed rate. Reports the share of
//! (receiver, event) deliveries that arrived exactly once, the duplicates and the missing, and
//! the time from a cut to the first replayed event (p50/p99/max; it includes the
//! `reconnect_delay` a client waits before connecting again). With `recovery`, receivers come
//! back as socket.io-client does with connection-state recovery instead: the CONNECT carries
//! the session's `pid` and the last event's offset, and nothing is joined again.

use crate::client::{Client, OnEvent};
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
    /// Come back with connection-state recovery (pid + offset) instead of `since`.
    pub recovery: bool,
}

/// What one receiver saw.
#[derive(Default)]
struct Seen {
    /// Every seq received, in arrival order.
    seqs: Vec<u64>,
    connects: u64,
    /// Reconnects that did not resume (a refused `since`, or a session not recovered).
    refused_resumes: u64,
    /// When a join with `since` last resumed (or a session was last recovered).
    last_resumed: Option<Instant>,
}

/// The receivers of a run and what they share.
struct Crowd {
    receivers: Vec<(String, Arc<Mutex<Seen>>)>,
    stop: Arc<AtomicBool>,
    replay_us: Arc<Histogram>,
    failed_connects: Arc<AtomicU64>,
}

/// How the receivers behave.
struct CrowdOptions<'a> {
    url: &'a str,
    rooms: &'a [String],
    event: &'a str,
    receivers: usize,
    cut_min: Duration,
    cut_max: Duration,
    reconnect_delay: Duration,
    concurrency: usize,
    recovery: bool,
    /// Newest seq acknowledged per room (jitter), for the replay timing of recovered
    /// receivers.
    acked: Option<&'a HashMap<String, Arc<AtomicU64>>>,
}

impl Crowd {
    /// Starts the receivers and waits until each has joined once.
    async fn start(o: CrowdOptions<'_>) -> Result<Crowd, String> {
        let crowd = Crowd {
            receivers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            replay_us: Arc::new(Histogram::default()),
            failed_connects: Arc::new(AtomicU64::new(0)),
        };
        let mut crowd = crowd;
        let gate = Arc::new(tokio::sync::Semaphore::new(o.concurrency.max(1)));
        for i in 0..o.receivers {
            let room = o.rooms[i % o.rooms.len()].clone();
            let seen = Arc::new(Mutex::new(Seen::default()));
            crowd.receivers.push((room.clone(), seen.clone()));
            let task = Receiver {
                url: o.url.to_owned(),
                user: format!("jitter-{i}"),
                room,
                event: o.event.to_owned(),
                seen,
                stop: crowd.stop.clone(),
                replay_us: crowd.replay_us.clone(),
                failed_connects: crowd.failed_connects.clone(),
                cut_min: o.cut_min,
                cut_max: o.cut_max,
                reconnect_delay: o.reconnect_delay,
                seed: 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1),
                recovery: o.recovery,
                acked: o
                    .acked
                    .and_then(|a| a.get(&o.rooms[i % o.rooms.len()]).cloned()),
            };
            let gate = gate.clone();
            tokio::spawn(async move { task.run(gate).await });
        }
        let started = Instant::now();
        while !crowd.all(|s| s.connects > 0) {
            if started.elapsed() > Duration::from_secs(180) {
                return Err("receivers did not connect within 180 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(crowd)
    }

    fn all(&self, pred: impl Fn(&Seen) -> bool) -> bool {
        self.receivers
            .iter()
            .all(|(_, s)| s.lock().is_ok_and(|s| pred(&s)))
    }

    /// Waits (up to 60 s) until every receiver holds the newest seq of its room, then stops
    /// them and counts: each seq 1..=newest of its room, once.
    async fn finish(&self, newest: &HashMap<String, u64>) -> Result<Tally, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline
            && !self.receivers.iter().all(|(room, s)| {
                s.lock()
                    .is_ok_and(|s| s.seqs.iter().copied().max() == Some(newest[room]))
            })
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let mut t = Tally::default();
        for (room, seen) in &self.receivers {
            let s = seen.lock().map_err(|_| "poisoned")?;
            let hi = newest[room];
            let mut count = vec![0u32; hi as usize + 1];
            for &seq in &s.seqs {
                if let Some(c) = count.get_mut(seq as usize) {
                    *c += 1;
                }
            }
            t.expected += hi;
            for &c in &count[1..] {
                match c {
                    0 => t.missing += 1,
                    1 => t.once += 1,
                    n => {
                        t.once += 1;
                        t.duplicates += u64::from(n - 1);
                    }
                }
            }
            t.connects += s.connects;
            t.refused_resumes += s.refused_resumes;
        }
        Ok(t)
    }
}

/// Deliveries counted at the end of a run.
#[derive(Default)]
struct Tally {
    expected: u64,
    once: u64,
    duplicates: u64,
    missing: u64,
    connects: u64,
    refused_resumes: u64,
}

impl Tally {
    fn share(&self) -> f64 {
        if self.expected == 0 {
            1.0
        } else {
            self.once as f64 / self.expected as f64
        }
    }
}

/// The newest seq of `event` in each room (joining it first; a second join is harmless).
async fn newest_seqs(
    c: &Client,
    rooms: &[String],
    event: &str,
) -> Result<HashMap<String, u64>, String> {
    let mut newest = HashMap::new();
    for room in rooms {
        c.request("dialogue:join", &json!({ "roomId": room }))
            .await?;
        let page = c
            .request(
                "dialogue:getHistory",
                &json!({ "roomId": room, "eventName": event, "start": 0, "end": 1 }),
            )
            .await?;
        let seq = page["events"][0]["seq"]
            .as_u64()
            .ok_or_else(|| format!("no newest event in {room}: {page}"))?;
        newest.insert(room.clone(), seq);
    }
    Ok(newest)
}

pub async fn run(o: Options) -> Result<Value, String> {
    let acked: HashMap<String, Arc<AtomicU64>> = o
        .rooms
        .iter()
        .map(|room| (room.clone(), Arc::new(AtomicU64::new(0))))
        .collect();
    let crowd = Crowd::start(CrowdOptions {
        url: &o.url,
        rooms: &o.rooms,
        event: &o.event,
        receivers: o.receivers,
        cut_min: o.cut_min,
        cut_max: o.cut_max,
        reconnect_delay: o.reconnect_delay,
        concurrency: o.concurrency,
        recovery: o.recovery,
        acked: Some(&acked),
    })
    .await?;
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
        let ack = c.send_request("dialogue:trigger", &payload)?;
        let newest = acked[room].clone();
        acks.push(tokio::spawn(async move {
            match ack.await {
                Ok(v) if v["ok"] == json!(true) => {
                    newest.fetch_max(v["seq"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    true
                }
                _ => false,
            }
        }));
    }
    let mut refused = 0u64;
    for ack in acks {
        if !matches!(ack.await, Ok(true)) {
            refused += 1;
        }
    }
    let newest = newest_seqs(&senders[0], &o.rooms, &o.event).await?;
    let t = crowd.finish(&newest).await?;
    for c in senders {
        c.close();
    }
    let replay_us = &crowd.replay_us;
    let ms = |v: Option<u64>| v.map_or(Value::Null, |us| json!(us as f64 / 1000.0));
    let summary = json!({
        "scenario": "jitter",
        "recovery": o.recovery,
        "receivers": o.receivers,
        "rooms": o.rooms.len(),
        "rate": o.rate,
        "seconds": o.seconds,
        "reconnect_delay_ms": o.reconnect_delay.as_millis() as u64,
        "triggered": total,
        "refused": refused,
        "expected_deliveries": t.expected,
        "exactly_once": t.once,
        "exactly_once_share": t.share(),
        "duplicates": t.duplicates,
        "missing": t.missing,
        "reconnects": t.connects.saturating_sub(o.receivers as u64),
        "failed_connects": crowd.failed_connects.load(Ordering::Relaxed),
        "refused_resumes": t.refused_resumes,
        "cut_to_replay_ms_p50": ms(replay_us.percentile(50.0)),
        "cut_to_replay_ms_p99": ms(replay_us.percentile(99.0)),
        "cut_to_replay_ms_max": ms(Some(replay_us.max())),
        "replays": replay_us.count(),
    });
    eprintln!(
        "jitter: {} receivers, {} events: {:.4} % exactly once, {} duplicates, {} missing, {} reconnects; cut → first replayed event p99 {} ms",
        o.receivers,
        total,
        t.share() * 100.0,
        t.duplicates,
        t.missing,
        summary["reconnects"],
        summary["cut_to_replay_ms_p99"]
    );
    Ok(summary)
}

/// Options of the reconnect storm.
pub struct StormOptions {
    pub url: String,
    pub rooms: Vec<String>,
    pub event: String,
    pub receivers: usize,
    pub senders: usize,
    /// Messages per second in all, before and after the restart.
    pub rate: u64,
    /// Seconds of sending before the restart, and again after it.
    pub seconds: f64,
    pub server_pid: u32,
    /// Run with `sh -c`; starts the server again in the background on the same port.
    pub restart_cmd: String,
    pub timeout: Duration,
    pub concurrency: usize,
    /// Come back with connection-state recovery (pid + offset) instead of `since`.
    pub recovery: bool,
}

/// Reconnect storm: R receivers connected, senders at a fixed rate, the server stopped with
/// SIGTERM and started again; every receiver reconnects and resumes with `since`. Reports the
/// time from the server being ready again until every receiver has resumed, and the
/// deliveries missed or doubled.
pub async fn storm(o: StormOptions) -> Result<Value, String> {
    use crate::server::{start_again, terminate, wait_exit};
    let crowd = Crowd::start(CrowdOptions {
        url: &o.url,
        rooms: &o.rooms,
        event: &o.event,
        receivers: o.receivers,
        // No cuts of their own: only the restart ends their connections.
        cut_min: Duration::from_secs(86_400),
        cut_max: Duration::from_secs(86_400),
        reconnect_delay: Duration::from_millis(100),
        concurrency: o.concurrency,
        recovery: o.recovery,
        acked: None,
    })
    .await?;
    let sending = Arc::new(AtomicBool::new(true));
    let acked = Arc::new(AtomicU64::new(0));
    let per_sender = (o.rate as f64 / o.senders.max(1) as f64).max(0.1);
    let mut sender_tasks = Vec::new();
    for i in 0..o.senders.max(1) {
        let (url, rooms, event) = (o.url.clone(), o.rooms.clone(), o.event.clone());
        let (sending, acked) = (sending.clone(), acked.clone());
        sender_tasks.push(tokio::spawn(async move {
            send_through_restarts(&url, i, &rooms, &event, per_sender, &sending, &acked).await
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(o.seconds)).await;

    let stopping = Instant::now();
    terminate(o.server_pid)?;
    if !wait_exit(o.server_pid, o.timeout).await {
        return Err(format!("the server did not exit within {:?}", o.timeout));
    }
    start_again(&o.restart_cmd, &o.url, o.timeout).await?;
    let ready = Instant::now();
    let deadline = ready + o.timeout;
    while !crowd.all(|s| s.last_resumed.is_some_and(|at| at > stopping)) {
        if Instant::now() > deadline {
            return Err(format!("not every receiver resumed within {:?}", o.timeout));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_resumed = ready.elapsed();
    tokio::time::sleep(Duration::from_secs_f64(o.seconds)).await;
    sending.store(false, Ordering::Relaxed);
    for t in sender_tasks {
        let _ = t.await;
    }
    let reader = Client::connect(&o.url, "storm-reader", false).await?;
    let newest = newest_seqs(&reader, &o.rooms, &o.event).await?;
    reader.close();
    let t = crowd.finish(&newest).await?;
    let summary = json!({
        "scenario": "storm",
        "recovery": o.recovery,
        "receivers": o.receivers,
        "rooms": o.rooms.len(),
        "rate": o.rate,
        "acked": acked.load(Ordering::Relaxed),
        "down_seconds": (ready - stopping).as_secs_f64(),
        "all_resumed_seconds": all_resumed.as_secs_f64(),
        "expected_deliveries": t.expected,
        "exactly_once_share": t.share(),
        "duplicates": t.duplicates,
        "missing": t.missing,
        "refused_resumes": t.refused_resumes,
        "failed_connects": crowd.failed_connects.load(Ordering::Relaxed),
    });
    eprintln!(
        "storm: {} receivers; server down {:.2} s; all resumed {:.2} s after it was ready; {:.4} % exactly once, {} duplicates, {} missing",
        o.receivers,
        (ready - stopping).as_secs_f64(),
        all_resumed.as_secs_f64(),
        t.share() * 100.0,
        t.duplicates,
        t.missing
    );
    Ok(summary)
}

/// Triggers `rate` events per second into the rooms in turn while `sending`, connecting again
/// whenever the server goes away.
async fn send_through_restarts(
    url: &str,
    id: usize,
    rooms: &[String],
    event: &str,
    rate: f64,
    sending: &AtomicBool,
    acked: &AtomicU64,
) {
    let mut n = 0usize;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    while sending.load(Ordering::Relaxed) {
        let Ok(c) = Client::connect(url, &format!("storm-sender-{id}"), false).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut joined = true;
        for room in rooms {
            joined &= c
                .request("dialogue:join", &json!({ "roomId": room }))
                .await
                .is_ok();
        }
        while joined && sending.load(Ordering::Relaxed) {
            ticker.tick().await;
            let data = json!({ "text": format!("storm {id}/{n}"), "username": "sender" });
            let payload = json!({ "roomId": rooms[n % rooms.len()], "event": event, "data": data });
            n += 1;
            let answer = tokio::time::timeout(
                Duration::from_secs(2),
                c.request("dialogue:trigger", &payload),
            )
            .await;
            match answer {
                Ok(Ok(v)) if v["ok"] == json!(true) => {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(_)) => {}
                _ => break, // the server went away: connect again
            }
        }
        c.cut();
    }
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
    recovery: bool,
    /// The newest seq acknowledged to the senders in this receiver's room (jitter only): a
    /// recovered receiver that is behind it missed events, and times their replay.
    acked: Option<Arc<AtomicU64>>,
}

impl Receiver {
    async fn run(mut self, gate: Arc<tokio::sync::Semaphore>) {
        let mut first = true;
        let mut cut_at: Option<Instant> = None;
        // Connection-state recovery: the session's secret and the last offset received.
        let mut pid: Option<String> = None;
        let mut offset: Option<String> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let permit = if first {
                gate.clone().acquire_owned().await.ok()
            } else {
                None
            };
            let mut auth = json!({ "userId": self.user });
            if let Some(pid) = &pid {
                auth["pid"] = json!(pid);
                if let Some(offset) = &offset {
                    auth["offset"] = json!(offset);
                }
            }
            let (mut client, answer) =
                match Client::connect_with(&self.url, &auth, OnEvent::Collect).await {
                    Ok(c) => c,
                    Err(_) => {
                        self.failed_connects.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
            let recovered = pid.is_some() && answer["pid"].as_str() == pid.as_deref();
            if self.recovery {
                pid = answer["pid"].as_str().map(str::to_owned);
            }
            let mut replay_cut: Option<Instant>;
            if recovered {
                // The session is back with its room; what it missed comes first. Events
                // acknowledged before now that it does not have are what it missed.
                let held = self
                    .seen
                    .lock()
                    .map_or(0, |s| s.seqs.iter().copied().max().unwrap_or(0));
                let behind = self
                    .acked
                    .as_ref()
                    .is_some_and(|a| a.load(Ordering::Relaxed) > held);
                replay_cut = cut_at.take().filter(|_| behind);
                // The rooms are restored before any request is answered: a join (harmless for
                // a member) answers once the replay is queued, as a join with `since` does.
                let Ok(_) = client
                    .request("dialogue:join", &json!({ "roomId": self.room }))
                    .await
                else {
                    continue;
                };
                if let Ok(mut s) = self.seen.lock() {
                    s.connects += 1;
                    s.last_resumed = Some(Instant::now());
                }
            } else {
                if !self.recovery {
                    offset = None;
                }
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
                    // With recovery, a reconnect that was not recovered counts as refused even
                    // when its fallback join with `since` resumed.
                    if ack["resume"]["resumed"] == json!(false) || (self.recovery && !first) {
                        s.refused_resumes += 1;
                    }
                    if ack["resume"]["resumed"] == json!(true) {
                        s.last_resumed = Some(Instant::now());
                    }
                }
                // Missed events are replayed before the ack: the first event read is one.
                let replayed = ack["resume"]["events"][&self.event].as_u64().unwrap_or(0);
                replay_cut = cut_at.take().filter(|_| replayed > 0);
            }
            first = false;
            let lifetime = self.next_lifetime();
            let until = tokio::time::Instant::now() + lifetime;
            loop {
                let next = tokio::time::timeout_at(until, client.next_event()).await;
                let Ok(Some(event)) = next else { break };
                let (seq, at) = seq_of(event.data(), &self.event);
                // socket.io-client keeps the offset of any event that carries one.
                if at.is_some() {
                    offset = at;
                }
                let Some(seq) = seq else { continue };
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

/// The seq of a `dialogue:event` of `event` (`["dialogue:event", {…}, offset?]` text), and
/// the connection-state recovery offset of any event that carries one (its last argument).
fn seq_of(data: &str, event: &str) -> (Option<u64>, Option<String>) {
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return (None, None);
    };
    let items = v.as_array().map_or(&[][..], Vec::as_slice);
    let offset = items
        .last()
        .filter(|_| items.len() > 2)
        .and_then(Value::as_str)
        .map(str::to_owned);
    let seq = items
        .get(1)
        .filter(|e| items.first().is_some_and(|n| n == "dialogue:event") && e["event"] == event)
        .and_then(|e| e["seq"].as_u64());
    (seq, offset)
}
