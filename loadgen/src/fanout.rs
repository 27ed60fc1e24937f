//! The fan-out scenario: subscribers measure end-to-end latency from a send timestamp carried
//! in each event's data; the server's CPU time comes from /proc/PID/stat.

use crate::client::Client;
use crate::{joined_client, percentile};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct Options {
    pub url: String,
    pub room: String,
    pub event: String,
    pub subscribers: usize,
    pub senders: usize,
    pub messages: u64,
    pub rate: u64,
    pub window: usize,
    pub server_pid: Option<u32>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Server CPU seconds (user + system) from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
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

struct Received {
    latencies_us: Vec<u64>,
    count: u64,
    duplicates: u64,
}

pub async fn run(o: Options) -> Result<Value, String> {
    let mut subs = Vec::new();
    for i in 0..o.subscribers {
        let mut c = Client::connect(&o.url, &format!("sub{i}"), true).await?;
        let r = c
            .request("dialogue:join", &json!({ "roomId": o.room }))
            .await?;
        if r["ok"] != json!(true) {
            return Err(format!("join: {r}"));
        }
        // Drop what arrived before the run (joined, history).
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1), c.next_event()).await
        {
        }
        subs.push(c);
    }
    let mut senders = Vec::new();
    for i in 0..o.senders {
        senders.push(Arc::new(
            joined_client(&o.url, &format!("sender{i}"), &o.room).await?,
        ));
    }
    let per_sender = o.messages / o.senders as u64;
    let total = per_sender * o.senders as u64;
    let cpu_before = o.server_pid.and_then(cpu_seconds);
    let start = Instant::now();

    let event = o.event.clone();
    let receivers: Vec<_> = subs
        .into_iter()
        .map(|mut c| {
            let event = event.clone();
            tokio::spawn(async move {
                let mut got = Received {
                    latencies_us: Vec::with_capacity(total as usize),
                    count: 0,
                    duplicates: 0,
                };
                let mut seen = HashSet::with_capacity(total as usize);
                let marker = format!("[\"dialogue:event\",{{\"event\":\"{event}\"");
                while got.count < total {
                    let Ok(Some(frame)) =
                        tokio::time::timeout(Duration::from_secs(5), c.next_event()).await
                    else {
                        break; // nothing for 5 s: the rest is lost
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
                        got.duplicates += 1;
                        continue;
                    }
                    got.count += 1;
                    got.latencies_us.push(now_us().saturating_sub(sent));
                }
                c.close();
                got
            })
        })
        .collect();

    let interval = (o.rate > 0).then(|| Duration::from_secs_f64(o.senders as f64 / o.rate as f64));
    let send_tasks: Vec<_> = senders
        .iter()
        .map(|c| {
            let c = c.clone();
            let (room, event, window) = (o.room.clone(), o.event.clone(), o.window);
            tokio::spawn(async move {
                let mut inflight = std::collections::VecDeque::new();
                let mut ticker = interval.map(tokio::time::interval);
                for i in 0..per_sender {
                    if let Some(t) = ticker.as_mut() {
                        t.tick().await;
                    } else if inflight.len() >= window {
                        let rx: tokio::sync::oneshot::Receiver<Value> =
                            inflight.pop_front().expect("non-empty");
                        let _ = rx.await;
                    }
                    let payload = json!({ "roomId": room, "event": event, "data": {
                        "text": format!("fanout {i}"), "username": "load", "sentAt": now_us() } });
                    inflight.push_back(c.send_request("dialogue:trigger", &payload)?);
                }
                for rx in inflight {
                    let _ = rx.await;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for t in send_tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let mut latencies = Vec::new();
    let (mut received, mut duplicates) = (0u64, 0u64);
    for r in receivers {
        let got = r.await.map_err(|e| e.to_string())?;
        received += got.count;
        duplicates += got.duplicates;
        latencies.extend(got.latencies_us);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_before
        .zip(o.server_pid.and_then(cpu_seconds))
        .map(|(a, b)| b - a);
    let mut ms: Vec<f64> = latencies.iter().map(|&us| us as f64 / 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let expected = total * o.subscribers as u64;
    let result = json!({
        "scenario": "fanout",
        "subscribers": o.subscribers,
        "senders": o.senders,
        "messages": total,
        "rate": o.rate,
        "deliveries": received,
        "lost": expected.saturating_sub(received),
        "duplicates": duplicates,
        "seconds": elapsed,
        "deliveries_per_s": (received as f64 / elapsed).round(),
        "p50_ms": percentile(&ms, 50.0),
        "p99_ms": percentile(&ms, 99.0),
        "p999_ms": percentile(&ms, 99.9),
        "max_ms": percentile(&ms, 100.0),
        "server_cpu_s": cpu,
        "server_cpu_us_per_delivery": cpu.map(|c| c * 1e6 / received.max(1) as f64),
    });
    eprintln!(
        "fanout: {received}/{expected} deliveries in {elapsed:.2}s ({}/s), p50 {:.3} ms p99 {:.3} ms, server CPU {} µs/delivery",
        result["deliveries_per_s"],
        result["p50_ms"].as_f64().unwrap_or(f64::NAN),
        result["p99_ms"].as_f64().unwrap_or(f64::NAN),
        result["server_cpu_us_per_delivery"]
    );
    for s in senders {
        s.close();
    }
    Ok(result)
}
