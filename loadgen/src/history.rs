//! History scenarios: the latency of one page at given depths (offsets and cursor forms), and
//! a full scroll by cursor that checks every `seq` comes exactly once, newest first, without a
//! gap. Events can first be triggered through the server (`--preload`), so the scan crosses
//! the boundary between the in-memory window and the database.

use crate::client::Client;
use crate::stats::percentile;
use crate::{joined_client, trigger_many};
use serde_json::{json, Value};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Options {
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub url: String,
    #[arg(long, default_value = "general")]
    pub room: String,
    #[arg(long, default_value = "message")]
    pub event: String,
    /// Comma-separated depths (positions from the newest event); "" = none.
    #[arg(long, default_value = "0,100,1000000")]
    pub depths: String,
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    #[arg(long, default_value_t = 20)]
    pub page: u64,
    /// Events to trigger through the server before measuring.
    #[arg(long, default_value_t = 0)]
    pub preload: u64,
    /// Scroll the whole history by cursor pages and check it.
    #[arg(long)]
    pub scan: bool,
    /// Page size of the scan.
    #[arg(long, default_value_t = 100)]
    pub scan_page: u64,
}

/// Errors reported in the JSON line (the count covers all of them).
const ERRORS_SHOWN: usize = 5;

/// The newest `seq` of the event (0 when there is no history).
pub async fn newest_seq(c: &Client, room: &str, event: &str) -> Result<u64, String> {
    let top = c
        .request(
            "dialogue:getHistory",
            &json!({ "roomId": room, "eventName": event, "start": 0, "end": 1 }),
        )
        .await?;
    if top["ok"] == json!(false) {
        return Err(format!("getHistory: {top}"));
    }
    Ok(top["events"][0]["seq"].as_u64().unwrap_or(0))
}

/// The `seq`s of one page, in the order received.
fn seqs_of(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .map(|events| events.iter().filter_map(|e| e["seq"].as_u64()).collect())
        .unwrap_or_default()
}

/// The result of scrolling a whole history by cursor.
pub struct Scan {
    pub pages: u64,
    /// Every `seq` received, in order.
    pub seqs: Vec<u64>,
    /// Deviations from "newest first, each once, no gap, down to 1".
    pub errors: Vec<String>,
    pub seconds: f64,
}

/// Scrolls from the newest event (`last_seq`) down to `seq` 1 in cursor pages of `limit`.
pub async fn scan(
    c: &Client,
    room: &str,
    event: &str,
    last_seq: u64,
    limit: u64,
) -> Result<Scan, String> {
    let started = Instant::now();
    let mut out = Scan {
        pages: 0,
        seqs: Vec::with_capacity(last_seq as usize),
        errors: Vec::new(),
        seconds: 0.0,
    };
    let mut before = last_seq + 1;
    while before > 1 {
        let page = c
            .request(
                "dialogue:getHistory",
                &json!({ "roomId": room, "eventName": event, "before": before, "limit": limit }),
            )
            .await?;
        out.pages += 1;
        if page["ok"] == json!(false) {
            out.errors.push(format!("before {before}: {page}"));
            break;
        }
        let seqs = seqs_of(&page);
        // Expected: before-1, before-2, …, max(before-limit, 1).
        let lo = before.saturating_sub(limit).max(1);
        let want: Vec<u64> = (lo..before).rev().collect();
        if seqs != want {
            let missing = want.iter().filter(|s| !seqs.contains(s)).count();
            out.errors.push(format!(
                "before {before}: got {} events {:?}…, want {lo}..={} newest first ({missing} missing)",
                seqs.len(),
                &seqs[..seqs.len().min(3)],
                before - 1
            ));
        }
        let has_more = page["hasMore"].as_bool();
        if has_more != Some(lo > 1) {
            out.errors.push(format!(
                "before {before}: hasMore {has_more:?}, want {}",
                lo > 1
            ));
        }
        out.seqs.extend_from_slice(&seqs);
        // Continue below the oldest event received, or below the expected page when the page
        // came back short, so a gap does not stop the scan.
        before = seqs.last().copied().unwrap_or(lo).min(lo);
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

pub async fn run(o: Options) -> Result<Value, String> {
    let c = joined_client(&o.url, "history-reader", &o.room).await?;
    let mut result = json!({ "scenario": "history", "page": o.page, "samples": o.samples });
    if o.preload > 0 {
        let started = Instant::now();
        let (acked, refused) =
            trigger_many(&c, &o.room, &o.event, o.preload, 64, "preload").await?;
        let took = started.elapsed().as_secs_f64();
        eprintln!(
            "history: preloaded {} events ({refused} refused) in {took:.2}s",
            acked.len()
        );
        result["preloaded"] = json!(acked.len());
        result["preload_refused"] = json!(refused);
        result["preload_per_s"] = json!((acked.len() as f64 / took).round());
    }
    let last_seq = newest_seq(&c, &o.room, &o.event).await?;
    if last_seq == 0 {
        return Err(format!("no '{}' events in {}", o.event, o.room));
    }
    result["last_seq"] = json!(last_seq);

    let mut results = Vec::new();
    for depth in o
        .depths
        .split(',')
        .filter_map(|d| d.trim().parse::<u64>().ok())
    {
        if depth >= last_seq {
            eprintln!("skipping depth {depth}: only {last_seq} events");
            continue;
        }
        for form in ["offsets", "cursor"] {
            let request = if form == "offsets" {
                json!({ "roomId": o.room, "eventName": o.event, "start": depth, "end": depth + o.page })
            } else {
                json!({ "roomId": o.room, "eventName": o.event, "before": last_seq - depth + 1, "limit": o.page })
            };
            let mut times = Vec::with_capacity(o.samples);
            for _ in 0..o.samples {
                let t = Instant::now();
                let r = c.request("dialogue:getHistory", &request).await?;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                let first = r["events"][0]["seq"].as_u64();
                if first != Some(last_seq - depth) {
                    return Err(format!(
                        "depth {depth}: expected seq {} first, got {r}",
                        last_seq - depth
                    ));
                }
            }
            times.sort_by(f64::total_cmp);
            let (p50, p99, max) = (
                percentile(&times, 50.0),
                percentile(&times, 99.0),
                percentile(&times, 100.0),
            );
            eprintln!("history depth {depth:>9} {form:>7}: p50 {p50:.3} ms  p99 {p99:.3} ms  max {max:.3} ms");
            results.push(json!({ "depth": depth, "form": form, "p50_ms": p50, "p99_ms": p99, "max_ms": max }));
        }
    }
    result["results"] = json!(results);

    if o.scan {
        let s = scan(&c, &o.room, &o.event, last_seq, o.scan_page).await?;
        let ok = s.errors.is_empty() && s.seqs.len() as u64 == last_seq;
        eprintln!(
            "history scan: {} events in {} pages of {} in {:.2}s ({:.0} pages/s), {} errors{}",
            s.seqs.len(),
            s.pages,
            o.scan_page,
            s.seconds,
            s.pages as f64 / s.seconds,
            s.errors.len(),
            s.errors
                .first()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        result["scan"] = json!({
            "ok": ok,
            "events": s.seqs.len(),
            "pages": s.pages,
            "page": o.scan_page,
            "seconds": s.seconds,
            "pages_per_s": (s.pages as f64 / s.seconds).round(),
            "events_per_s": (s.seqs.len() as f64 / s.seconds).round(),
            "error_count": s.errors.len(),
            "errors": &s.errors[..s.errors.len().min(ERRORS_SHOWN)],
        });
    }
    c.close();
    Ok(result)
}
