//! Idle connections: opens K connections, each joined to a room, and reports the server's
//! resident memory per connection (from /proc/PID/status), the rate they were opened at, and
//! the server's CPU per connection opened and per connection closed (/proc/PID/stat).

use crate::fanout::connect_all;
use crate::server::{cpu_seconds, rss_kib};
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

/// The longest the server is watched while the connections close.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

pub async fn run(o: Options) -> Result<Value, String> {
    let pid = o.server_pid;
    let rss = move || rss_kib(pid).ok_or(format!("cannot read /proc/{pid}/status"));
    tokio::time::sleep(o.settle).await;
    let before = rss()?;
    let cpu = move || cpu_seconds(pid).ok_or(format!("cannot read /proc/{pid}/stat"));
    let cpu_before = cpu()?;
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
    let open_cpu = cpu()? - cpu_before;
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
    // Closing: the server's CPU from the first close until it stays still for 300 ms (what
    // a connection's end costs it: the socket, its rooms, its recoverable session).
    let cpu_before = cpu()?;
    let closing = Instant::now();
    for c in &clients {
        c.close();
    }
    let (mut last, mut still_since) = (cpu_before, Instant::now());
    while still_since.elapsed() < Duration::from_millis(300) && closing.elapsed() < CLOSE_WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = cpu()?;
        if now != last {
            (last, still_since) = (now, Instant::now());
        }
    }
    let close_cpu = last - cpu_before;
    let bytes = (after as f64 - before as f64) * 1024.0 / opened.max(1) as f64;
    let per_s = (opened as f64 / open_seconds).round();
    eprintln!(
        "idle: {opened} connections joined in {open_seconds:.2}s ({per_s}/s, {} at once), {} failed{}; \
         server RSS {before} → {after} KiB = {:.0} bytes ({:.2} KiB) per connection; \
         server CPU {:.1} µs per connection opened, {:.1} µs per connection closed",
        o.concurrency,
        errors.len(),
        errors.first().map(|e| format!(" ({e})")).unwrap_or_default(),
        bytes,
        bytes / 1024.0,
        open_cpu * 1e6 / opened.max(1) as f64,
        close_cpu * 1e6 / opened.max(1) as f64,
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
        "server_cpu_us_per_connection": open_cpu * 1e6 / opened.max(1) as f64,
        "close_cpu_us_per_connection": close_cpu * 1e6 / opened.max(1) as f64,
        "still_open": still_open,
    }))
}
