//! Restart: triggers events into a room with history, stops the server with SIGTERM (a
//! graceful shutdown writes what is queued) or crashes it with SIGKILL, starts it again with
//! a command, waits for `/readyz`, and scrolls the whole history to count the acknowledged
//! events that survived.

use crate::history::{newest_seq, scan};
use crate::server::{is_running, kill, start_again, terminate, wait_exit};
use crate::{joined_client, trigger_many};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

pub struct Options {
    pub url: String,
    pub room: String,
    pub event: String,
    pub messages: u64,
    /// Unacknowledged triggers in flight.
    pub window: usize,
    pub server_pid: u32,
    /// Run with `sh -c`; starts the server again in the background on the same port.
    pub restart_cmd: String,
    /// For the shutdown, and again for the server to be ready.
    pub timeout: Duration,
    /// Page size of the final scroll.
    pub page: u64,
    /// SIGKILL instead of SIGTERM.
    pub kill: bool,
}

pub async fn run(o: Options) -> Result<Value, String> {
    if !is_running(o.server_pid) {
        return Err(format!("no server running as pid {}", o.server_pid));
    }
    let c = joined_client(&o.url, "restart-writer", &o.room).await?;
    let (acked, refused) =
        trigger_many(&c, &o.room, &o.event, o.messages, o.window, "restart").await?;
    c.close();

    let stopping = Instant::now();
    let signal = if o.kill { "SIGKILL" } else { "SIGTERM" };
    if o.kill {
        kill(o.server_pid)?;
    } else {
        terminate(o.server_pid)?;
    }
    if !wait_exit(o.server_pid, o.timeout).await {
        return Err(format!(
            "the server (pid {}) did not exit within {:?} of {signal}",
            o.server_pid, o.timeout
        ));
    }
    let shutdown_seconds = stopping.elapsed().as_secs_f64();

    start_again(&o.restart_cmd, &o.url, o.timeout).await?;
    let down_seconds = stopping.elapsed().as_secs_f64();

    let c = joined_client(&o.url, "restart-reader", &o.room).await?;
    let last_seq = newest_seq(&c, &o.room, &o.event).await?;
    let s = scan(&c, &o.room, &o.event, last_seq, o.page).await?;
    c.close();
    let stored: HashSet<u64> = s.seqs.iter().copied().collect();
    let survived = acked.iter().filter(|seq| stored.contains(seq)).count();
    let lost = acked.len() - survived;
    eprintln!(
        "restart ({signal}): {} sent ({} acknowledged, {refused} refused), {survived} survived, {lost} lost; \
         shutdown {shutdown_seconds:.2}s, ready again after {down_seconds:.2}s; history scan {} errors",
        o.messages,
        acked.len(),
        s.errors.len()
    );
    Ok(json!({
        "scenario": "restart",
        "signal": signal,
        "sent": o.messages,
        "acknowledged": acked.len(),
        "refused": refused,
        "survived": survived,
        "lost": lost,
        "last_seq": last_seq,
        "shutdown_seconds": shutdown_seconds,
        "down_seconds": down_seconds,
        "scan_errors": s.errors.len(),
        "scan_first_error": s.errors.first(),
    }))
}
