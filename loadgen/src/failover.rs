//! Failover of a cluster: a sender on one node triggers into a room owned by another node at
//! a fixed rate; the owner is killed (SIGKILL) mid-run. Reports the time from the kill to the
//! first trigger accepted afterwards (by the new owner), and checks that every acknowledged
//! event is in the room's history afterwards (read from a surviving node), with seqs without
//! gap, and that a subscriber on a third node received every one of them.

use crate::client::Client;
use crate::server::{http_get, kill};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub struct Options {
    /// The nodes (at least three).
    pub urls: Vec<String>,
    /// Their pids, in the same order.
    pub pids: Vec<u32>,
    pub api_key: String,
    pub room: String,
    pub event: String,
    /// Triggers per second.
    pub rate: u64,
    /// Seconds before the kill, and after the first trigger accepted again.
    pub before: f64,
    pub after: f64,
}

/// The node (index) owning `room`, from the nodes' `/api/stats`.
async fn owner(o: &Options) -> Result<usize, String> {
    let auth = format!("Bearer {}", o.api_key);
    for (i, url) in o.urls.iter().enumerate() {
        let answer = http_get(url, "/api/stats", &[("Authorization", &auth)]).await?;
        let stats: Value = serde_json::from_slice(&answer.body).map_err(|e| e.to_string())?;
        let owns = stats["rooms"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["id"] == o.room.as_str() && r["role"] == "owner");
        if owns {
            return Ok(i);
        }
    }
    Err(format!("no node owns '{}'", o.room))
}

/// The room's history (seq → data text) on `url`, every page.
async fn history(url: &str, o: &Options) -> Result<BTreeMap<u64, String>, String> {
    let auth = format!("Bearer {}", o.api_key);
    let mut out = BTreeMap::new();
    let mut before = u64::MAX >> 11;
    loop {
        let path = format!(
            "/api/rooms/{}/history/{}?before={before}&limit=1000",
            o.room, o.event
        );
        let answer = http_get(url, &path, &[("Authorization", &auth)]).await?;
        let page: Value = serde_json::from_slice(&answer.body).map_err(|e| e.to_string())?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            let seq = e["seq"].as_u64().unwrap_or(0);
            out.insert(seq, e["data"]["text"].as_str().unwrap_or("").to_owned());
        }
        match events.last().and_then(|e| e["seq"].as_u64()) {
            Some(last) if page["hasMore"] == json!(true) && last < before => before = last,
            _ => return Ok(out),
        }
    }
}

pub async fn run(o: Options) -> Result<Value, String> {
    if o.urls.len() < 3 || o.pids.len() != o.urls.len() {
        return Err("failover needs three nodes or more, with their pids".into());
    }
    let victim = owner(&o).await?;
    let sender_node = (victim + 1) % o.urls.len();
    let reader_node = (victim + 2) % o.urls.len();
    let sender = Client::connect(&o.urls[sender_node], "failover-sender", false).await?;
    let mut reader = Client::connect(&o.urls[reader_node], "failover-reader", true).await?;
    for c in [&sender, &reader] {
        let joined = c
            .request("dialogue:join", &json!({ "roomId": o.room }))
            .await?;
        if joined["ok"] != json!(true) {
            return Err(format!("join: {joined}"));
        }
    }
    let gap = Duration::from_secs_f64(1.0 / o.rate.max(1) as f64);
    let started = Instant::now();
    let mut killed_at: Option<Instant> = None;
    let mut recovered_at: Option<Instant> = None;
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let (mut refused, mut n) = (0u64, 0u64);
    loop {
        let now = Instant::now();
        if killed_at.is_none() && now.duration_since(started).as_secs_f64() >= o.before {
            kill(o.pids[victim])?;
            killed_at = Some(Instant::now());
        }
        if let Some(at) = recovered_at {
            if now.duration_since(at).as_secs_f64() >= o.after {
                break;
            }
        }
        if killed_at.is_some_and(|k| now.duration_since(k) > Duration::from_secs(60)) {
            return Err("no trigger was accepted within 60 s of the kill".into());
        }
        let text = format!("failover {n}");
        n += 1;
        let payload = json!({ "roomId": o.room, "event": o.event,
            "data": { "text": text, "username": "load" } });
        let ack = tokio::time::timeout(
            Duration::from_secs(30),
            sender.request("dialogue:trigger", &payload),
        )
        .await
        .map_err(|_| "no ack within 30 s".to_owned())??;
        match ack["seq"].as_u64().filter(|_| ack["ok"] == json!(true)) {
            Some(seq) => {
                acked.insert(seq, text);
                if let (Some(_), None) = (killed_at, recovered_at) {
                    recovered_at = Some(Instant::now());
                }
            }
            None => refused += 1,
        }
        tokio::time::sleep(gap).await;
    }
    let failover_ms = killed_at
        .zip(recovered_at)
        .map(|(k, r)| r.duration_since(k).as_secs_f64() * 1000.0);
    // What the history (on the sender's node) and the reader (a third node) have.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = history(&o.urls[sender_node], &o).await?;
    let lost = acked
        .iter()
        .filter(|(seq, text)| stored.get(seq) != Some(text))
        .count();
    let first = stored.keys().next().copied().unwrap_or(1);
    let gaps = stored
        .keys()
        .zip(first..)
        .filter(|(seq, want)| **seq != *want)
        .count();
    let mut received = std::collections::HashSet::new();
    while let Ok(Some(frame)) =
        tokio::time::timeout(Duration::from_millis(300), reader.next_event()).await
    {
        let text = frame.data();
        if let Some(at) = text.find("\"seq\":") {
            let digits: String = text[at + 6..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(seq) = digits.parse::<u64>() {
                received.insert(seq);
            }
        }
    }
    let unreceived = acked.keys().filter(|s| !received.contains(s)).count();
    sender.close();
    reader.close();
    let result = json!({
        "scenario": "failover",
        "nodes": o.urls.len(),
        "rate": o.rate,
        "acked": acked.len(),
        "refused": refused,
        "failover_ms": failover_ms,
        "lost": lost,
        "history_gaps": gaps,
        "not_received_on_third_node": unreceived,
    });
    eprintln!(
        "failover: owner killed, first trigger accepted again after {:.0} ms; {} acked, {refused} refused, {lost} lost, {gaps} gaps in history, {unreceived} not received on a third node",
        failover_ms.unwrap_or(f64::NAN),
        acked.len()
    );
    Ok(result)
}
