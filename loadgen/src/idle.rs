//! Idle connections: opens K connections, each joined to a room, and reports the server's
//! resident memory per connection (from /proc/PID/status) and the rate they were opened at.

use crate::fanout::connect_all;
use crate::server::rss_kib;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub struct Options {
    pub url: String,
    /// Connection `i` joins `rooms[i % len]`.
    pub rooms: Vec<String>,
    pub connections: usize,
    /// Connections being opened (connect + join) at once.
    pub concurrency: usize,
    pub server_pid: u32,
    /// Pause before each memory reading.
    pub settle: Duration,
    /// Keep the connections open this long after the reading (several load generators, one
    /// per server process, hold theirs at the same time), then count those still open.
    pub hold: Duration,
}

pub async fn run(o: Options) -> Result<Value, String> {
    let pid = o.server_pid;
    let rss = move || rss_kib(pid).ok_or(format!("cannot read /proc/{pid}/status"));
    tokio::time::sleep(o.settle).await;
    let before = rss()?;
    let started = Instant::now();
    let results = connect_all(
        &o.url,
        "idle",
        &o.rooms,
        o.connections,
        false,
        o.concurrency,
    )
    .await;
    let open_seconds = started.elapsed().as_secs_f64();
    let mut clients = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok((_, c)) => clients.push(c),
            Err(e) => errors.push(e),
        }
    }
    let opened = clients.len();
    tokio::time::sleep(o.settle).await;
    let after = rss()?;
    tokio::time::sleep(o.hold).await;
    let still_open = clients.iter().filter(|c| c.is_open()).count();
    for c in &clients {
        c.close();
    }
    let bytes = (after as f64 - before as f64) * 1024.0 / opened.max(1) as f64;
    let per_s = (opened as f64 / open_seconds).round();
    eprintln!(
        "idle: {opened} connections joined in {open_seconds:.2}s ({per_s}/s, {} at once), {} failed{}; \
         server RSS {before} → {after} KiB = {:.0} bytes ({:.2} KiB) per connection",
        o.concurrency,
        errors.len(),
        errors.first().map(|e| format!(" ({e})")).unwrap_or_default(),
        bytes,
        bytes / 1024.0
    );
    if opened == 0 {
        return Err("no connection could be opened".into());
    }
    Ok(json!({
        "scenario": "idle",
        "connections": o.connections,
        "opened": opened,
        "failed": errors.len(),
        "concurrency": o.concurrency,
        "open_seconds": open_seconds,
        "connections_per_s": per_s,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_connection": bytes.round(),
        "kib_per_connection": bytes / 1024.0,
        "held_seconds": o.hold.as_secs_f64(),
        "still_open": still_open,
    }))
}
