//! `dialogue-load`: load generator and benchmark scenarios for any server speaking Socket.IO
//! v5 over Engine.IO v4 WebSocket and the dialogue events. Each scenario prints one JSON line
//! (machine-readable) and a short human summary on stderr.
//!
//! Layout: [`client`] (one Socket.IO connection), [`fanout`] (fan-out and latency, also the
//! connection set-up the others share), [`history`] (page latency, full scans), [`idle`],
//! [`jitter`] (delivery with connections cut and resumed), [`restart`], [`server`] (what is observed of the server process), [`stats`] (histogram,
//! percentiles); persistence and bulk loading are here.

mod client;
mod failover;
mod fanout;
mod history;
mod idle;
mod jitter;
mod restart;
mod server;
mod stats;
mod web;

use clap::{Parser, Subcommand};
use client::Client;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Load generator for dialogue (Socket.IO) servers")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Sustained triggers with persistence on: triggers/s and rows/s reaching the database.
    Persist {
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        /// The server's database, to count rows (sea-orm URL).
        #[arg(long)]
        db_url: String,
        #[arg(long, default_value = "general")]
        room: String,
        #[arg(long, default_value = "message")]
        event: String,
        /// The event's in-memory history limit (pre-filled first so every trigger evicts).
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        /// Unacknowledged triggers in flight per client.
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// Latency of history pages at given depths (offsets and cursor forms); optionally
    /// triggers events through the server first and scrolls the whole history by cursor,
    /// checking every seq comes once, newest first, without a gap.
    History(history::Options),
    /// Fan-out: C subscribers, S senders, N messages (as fast as a window allows, or at a
    /// fixed rate); deliveries/s, end-to-end latency, lost and duplicated deliveries, and the
    /// server's CPU time per delivery (from /proc/PID/stat when --server-pid is given).
    Fanout {
        #[command(flatten)]
        setup: Setup,
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        /// Messages per second in all; 0 = as fast as the window allows.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Unacknowledged triggers in flight per sender (rate 0).
        #[arg(long, default_value_t = 32)]
        window: usize,
    },
    /// Latency at a fixed rate for a duration: S senders trigger `rate` messages/s in all
    /// for `seconds` into R rooms with C subscribers; end-to-end p50/p99/p99.9/max, lost and
    /// duplicated deliveries, server CPU per delivery, and the server's RSS sampled through
    /// the run (first/last/max) with --server-pid.
    Latency {
        #[command(flatten)]
        setup: Setup,
        /// Messages per second in all.
        #[arg(long, default_value_t = 500)]
        rate: u64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Seconds between RSS samples (0 = none).
        #[arg(long, default_value_t = 5.0)]
        rss_every: f64,
        /// Deliveries slower than this are counted (`slow_pct`, and per slot in the timeline).
        #[arg(long, default_value_t = 5.0)]
        slow_ms: f64,
        /// The timeline's slots: `slow_slots` counts those with a slow delivery.
        #[arg(long, default_value_t = 100)]
        timeline_slot_ms: u64,
        /// Write the timeline (per slot of send time: deliveries, slow ones, max) to this
        /// file, tab-separated: when the tail happened.
        #[arg(long)]
        timeline: Option<std::path::PathBuf>,
    },
    /// A cluster's failover: a sender on one node triggers at a fixed rate into a room owned
    /// by another node, which is killed (SIGKILL); the time to the first trigger accepted
    /// again, and every acknowledged event checked in the history and on a third node.
    Failover {
        /// The nodes, comma-separated (three or more).
        #[arg(long, value_delimiter = ',')]
        url: Vec<String>,
        /// Their pids, in the same order.
        #[arg(long, value_delimiter = ',')]
        server_pid: Vec<u32>,
        #[arg(long)]
        api_key: String,
        #[arg(long, default_value = "general")]
        room: String,
        #[arg(long, default_value = "message")]
        event: String,
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Seconds of triggers before the kill.
        #[arg(long, default_value_t = 2.0)]
        before: f64,
        /// Seconds of triggers after the first one accepted again.
        #[arg(long, default_value_t = 2.0)]
        after: f64,
    },
    /// Idle connections: opens K connections each joined to a room; the server's RSS per
    /// connection and connections opened (connect + join) per second.
    Idle {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 2000)]
        connections: usize,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long)]
        server_pid: u32,
        /// Milliseconds to wait before each memory reading.
        #[arg(long, default_value_t = 1000)]
        settle_ms: u64,
        /// Spread the connections over source addresses 127.0.0.1 … 127.0.0.N (one address
        /// has about 28,000 ephemeral ports).
        #[arg(long, default_value_t = 1)]
        source_ips: u64,
        /// Seconds to keep the connections open after the memory reading (then `still_open`
        /// counts those the server kept).
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
    },
    /// The web pages: the chat page's first load (gzipped bytes), and the time of `GET /` and
    /// `GET /api/stats` (the dashboard's data) with K connections joined over the rooms.
    Web {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Requests timed per route.
        #[arg(long, default_value_t = 200)]
        requests: usize,
        /// A key of the server's `api.keys`.
        #[arg(long)]
        api_key: String,
    },
    /// Restart: N messages into a room with history, SIGTERM (or, with `--kill`, SIGKILL) to
    /// the server, the restart command (run with `sh -c`; it starts the server again in the
    /// background on the same port), /readyz, then a scroll of the whole history: how many of
    /// the N acknowledged survived with the text they were sent with.
    Restart {
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        #[arg(long, default_value = "general")]
        room: String,
        #[arg(long, default_value = "message")]
        event: String,
        #[arg(long, default_value_t = 150)]
        messages: u64,
        /// Unacknowledged triggers in flight.
        #[arg(long, default_value_t = 16)]
        window: usize,
        #[arg(long)]
        server_pid: u32,
        #[arg(long)]
        restart_cmd: String,
        /// Seconds allowed for the shutdown, and again for the restart.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Crash the server (SIGKILL) instead of stopping it.
        #[arg(long)]
        kill: bool,
    },
    /// Delivery under jitter: receivers in R rooms whose connections are cut every
    /// `cut-min-ms`–`cut-max-ms` come back with a native resume while senders trigger at a
    /// fixed rate: share of deliveries exactly once, duplicates, missing, cut → first replay.
    Jitter {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value = "message")]
        event: String,
        #[arg(long, default_value_t = 1000)]
        receivers: usize,
        #[arg(long, default_value_t = 4)]
        senders: usize,
        /// Messages per second in all.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        #[arg(long, default_value_t = 1000)]
        cut_min_ms: u64,
        #[arg(long, default_value_t = 5000)]
        cut_max_ms: u64,
        /// Milliseconds a cut receiver waits before connecting again.
        #[arg(long, default_value_t = 1000)]
        reconnect_ms: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Come back with Socket.IO connection-state recovery (pid + offset, as
        /// socket.io-client does) instead of a join with `since`.
        #[arg(long)]
        recovery: bool,
    },
    /// Reconnect storm: R receivers connected, senders at a fixed rate, SIGTERM to the server
    /// and the restart command; time until every receiver has resumed (`since`), deliveries
    /// missed or doubled.
    Storm {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value = "message")]
        event: String,
        #[arg(long, default_value_t = 10_000)]
        receivers: usize,
        #[arg(long, default_value_t = 4)]
        senders: usize,
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Seconds of sending before the restart, and again after it.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long)]
        server_pid: u32,
        #[arg(long)]
        restart_cmd: String,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Come back with connection-state recovery instead of a join with `since`.
        #[arg(long)]
        recovery: bool,
    },
    /// Inserts rows straight into the database (seq 1..=rows) to measure deep pages.
    Bulkload {
        #[arg(long)]
        db_url: String,
        #[arg(long, default_value = "general")]
        room: String,
        #[arg(long, default_value = "message")]
        event: String,
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
    },
}

/// The server and the rooms connections join: shared by `fanout`, `latency` and `idle`.
#[derive(clap::Args)]
struct Target {
    /// The server; `fanout` and `latency` take several, comma-separated (a cluster's nodes:
    /// connections are spread over them).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// The room; with --rooms R > 1, the prefix of rooms {room}0 … {room}R-1.
    #[arg(long, default_value = "general")]
    room: String,
    #[arg(long, default_value_t = 1)]
    rooms: usize,
}

impl Target {
    /// `{room}0 … {room}R-1`, or just `room` when R is 1.
    fn room_names(&self) -> Vec<String> {
        if self.rooms <= 1 {
            vec![self.room.clone()]
        } else {
            (0..self.rooms)
                .map(|i| format!("{}{i}", self.room))
                .collect()
        }
    }
}

/// Who connects where: shared by `fanout` and `latency`.
#[derive(clap::Args)]
struct Setup {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value = "message")]
    event: String,
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// The server's pid (several, comma-separated, for a cluster: CPU is summed).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// With several `--url`s (a cluster), the API key to find each room's owner node, and
    /// report latency apart for subscribers on the owner's node and on another node.
    #[arg(long)]
    api_key: Option<String>,
}

impl Setup {
    /// The run's options, before the scenario sets its pace.
    fn options(self, scenario: &'static str) -> fanout::Options {
        fanout::Options {
            scenario,
            rooms: self.target.room_names(),
            url: self.target.url,
            event: self.event,
            subscribers: self.subscribers,
            senders: self.senders,
            messages: 0,
            rate: 0,
            window: usize::MAX,
            connect_concurrency: self.connect_concurrency,
            server_pid: self.server_pid,
            api_key: self.api_key,
            rss_every: None,
            timeline: None,
        }
    }
}

async fn count_rows(db: &sea_orm::DatabaseConnection, room: &str, event: &str) -> u64 {
    use entity::message::{Column, Entity};
    Entity::find()
        .filter(Column::RoomId.eq(room))
        .filter(Column::EventName.eq(event))
        .count(db)
        .await
        .unwrap_or(0)
}

/// The newest stored seq of (room, event), 0 if none.
async fn max_seq(db: &sea_orm::DatabaseConnection, room: &str, event: &str) -> u64 {
    use entity::message::{Column, Entity};
    use sea_orm::QuerySelect;
    Entity::find()
        .select_only()
        .column_as(Column::Seq.max(), "max")
        .filter(Column::RoomId.eq(room))
        .filter(Column::EventName.eq(event))
        .into_tuple::<Option<i64>>()
        .one(db)
        .await
        .ok()
        .flatten()
        .flatten()
        .unwrap_or(0) as u64
}

fn trigger_payload(room: &str, event: &str, i: u64) -> Value {
    json!({ "roomId": room, "event": event, "data": { "text": format!("load message {i}"), "username": "load" } })
}

pub(crate) async fn joined_client(url: &str, user: &str, room: &str) -> Result<Client, String> {
    let c = Client::connect(url, user, false).await?;
    let r = c
        .request("dialogue:join", &json!({ "roomId": room }))
        .await?;
    if r["ok"] != json!(true) {
        return Err(format!("join {room}: {r}"));
    }
    Ok(c)
}

/// Triggers `n` events through `c` with up to `window` unacknowledged; returns the `seq`s
/// acknowledged and how many were refused.
pub(crate) async fn trigger_many(
    c: &Client,
    room: &str,
    event: &str,
    n: u64,
    window: usize,
    tag: &str,
) -> Result<(Vec<u64>, u64), String> {
    let mut acked = Vec::with_capacity(n as usize);
    let mut refused = 0u64;
    let mut settle = |ack: Result<Value, tokio::sync::oneshot::error::RecvError>| match ack
        .ok()
        .filter(|v| v["ok"] == json!(true))
    {
        Some(v) => acked.extend(v["seq"].as_u64()),
        None => refused += 1,
    };
    let mut inflight = VecDeque::new();
    for i in 0..n {
        if inflight.len() >= window.max(1) {
            let rx: tokio::sync::oneshot::Receiver<Value> =
                inflight.pop_front().expect("the window is not empty");
            settle(rx.await);
        }
        let payload = json!({ "roomId": room, "event": event,
            "data": { "text": format!("{tag} {i}"), "username": "load" } });
        inflight.push_back(c.send_request("dialogue:trigger", &payload)?);
    }
    for rx in inflight {
        settle(rx.await);
    }
    Ok((acked, refused))
}

#[allow(clippy::too_many_arguments)]
async fn persist(
    url: String,
    db_url: String,
    room: String,
    event: String,
    limit: u64,
    clients: usize,
    messages: u64,
    window: usize,
) -> Result<Value, String> {
    let db = dialogue::store::connect(&db_url)
        .await
        .map_err(|e| e.to_string())?;
    let mut conns = Vec::new();
    for i in 0..clients {
        conns.push(Arc::new(
            joined_client(&url, &format!("load{i}"), &room).await?,
        ));
    }
    // Fill the window so every measured trigger evicts one event.
    for i in 0..limit {
        let r = conns[0]
            .request("dialogue:trigger", &trigger_payload(&room, &event, i))
            .await?;
        if r["ok"] != json!(true) {
            return Err(format!("trigger refused: {r}"));
        }
    }
    let mut before = count_rows(&db, &room, &event).await;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = count_rows(&db, &room, &event).await;
        if now == before {
            break;
        }
        before = now;
    }
    let before_seq = max_seq(&db, &room, &event).await;

    let start = Instant::now();
    let per_client = messages / clients as u64;
    let mut tasks = Vec::new();
    for c in &conns {
        let c = c.clone();
        let (room, event) = (room.clone(), event.clone());
        tasks.push(tokio::spawn(async move {
            let mut inflight = std::collections::VecDeque::new();
            let mut refused = 0u64;
            for i in 0..per_client {
                if inflight.len() >= window {
                    let rx: tokio::sync::oneshot::Receiver<Value> = inflight.pop_front().unwrap();
                    if rx.await.map(|v| v["ok"] != json!(true)).unwrap_or(true) {
                        refused += 1;
                    }
                }
                inflight.push_back(
                    c.send_request("dialogue:trigger", &trigger_payload(&room, &event, i))?,
                );
            }
            for rx in inflight {
                if rx.await.map(|v| v["ok"] != json!(true)).unwrap_or(true) {
                    refused += 1;
                }
            }
            Ok::<u64, String>(refused)
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.map_err(|e| e.to_string())??;
    }
    let triggered_in = start.elapsed();
    let sent = per_client * clients as u64;
    let target = before + sent - refused;
    let deadline = Instant::now() + Duration::from_secs(600);
    // Watched through the newest stored seq (an index lookup): a COUNT over 100,000 rows every
    // few milliseconds would compete with the very writes it measures. The store writes each
    // room's events in seq order, so the last one arriving means the run's rows are in; the
    // count then checks it.
    let target_seq = before_seq + sent - refused;
    while max_seq(&db, &room, &event).await < target_seq && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let persisted_in = start.elapsed();
    let mut rows = count_rows(&db, &room, &event).await;
    while rows < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rows = count_rows(&db, &room, &event).await;
    }
    let persisted = rows - before;
    let result = json!({
        "scenario": "persist",
        "backend": db.get_database_backend().as_str(),
        "messages": sent,
        "refused": refused,
        "clients": clients,
        "window": window,
        "triggered_per_s": (sent as f64 / triggered_in.as_secs_f64()).round(),
        "persisted_rows": persisted,
        "persisted_per_s": (persisted as f64 / persisted_in.as_secs_f64()).round(),
        "seconds": persisted_in.as_secs_f64(),
    });
    eprintln!(
        "persist: {sent} triggers in {:.2}s ({}/s accepted), {persisted} rows in {:.2}s ({}/s)",
        triggered_in.as_secs_f64(),
        result["triggered_per_s"],
        persisted_in.as_secs_f64(),
        result["persisted_per_s"]
    );
    Ok(result)
}

async fn bulkload(db_url: String, room: String, event: String, rows: u64) -> Result<Value, String> {
    let db = dialogue::store::connect(&db_url)
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let chunk = 100_000u64;
    let quote = |s: &str| s.replace('\'', "''");
    let (room_q, event_q) = (quote(&room), quote(&event));
    let mut lo = 1;
    while lo <= rows {
        let hi = (lo + chunk - 1).min(rows);
        let sql = match db.get_database_backend() {
            sea_orm::DbBackend::Postgres => format!(
                "INSERT INTO messages (room_id, event_name, event_data, from_user, timestamp, seq) \
                 SELECT '{room_q}', '{event_q}', jsonb_build_object('text', 'bulk ' || g, 'username', 'bulk'), \
                 'bulk', 1700000000000 + g, g FROM generate_series({lo}, {hi}) AS g \
                 ON CONFLICT DO NOTHING"
            ),
            _ => format!(
                "WITH RECURSIVE g(x) AS (SELECT {lo} UNION ALL SELECT x + 1 FROM g WHERE x < {hi}) \
                 INSERT INTO messages (room_id, event_name, event_data, from_user, timestamp, seq) \
                 SELECT '{room_q}', '{event_q}', json_object('text', 'bulk ' || x, 'username', 'bulk'), \
                 'bulk', 1700000000000 + x, x FROM g WHERE true ON CONFLICT DO NOTHING"
            ),
        };
        db.execute_unprepared(&sql)
            .await
            .map_err(|e| e.to_string())?;
        lo = hi + 1;
    }
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        db.execute_unprepared("ANALYZE messages")
            .await
            .map_err(|e| e.to_string())?;
    }
    let took = start.elapsed().as_secs_f64();
    eprintln!("bulkload: {rows} rows into {room}/{event} in {took:.1}s");
    Ok(json!({ "scenario": "bulkload", "rows": rows, "seconds": took }))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    server::raise_open_files_limit();
    let result = match cli.scenario {
        Scenario::Persist {
            url,
            db_url,
            room,
            event,
            limit,
            clients,
            messages,
            window,
        } => persist(url, db_url, room, event, limit, clients, messages, window).await,
        Scenario::History(options) => history::run(options).await,
        Scenario::Bulkload {
            db_url,
            room,
            event,
            rows,
        } => bulkload(db_url, room, event, rows).await,
        Scenario::Fanout {
            setup,
            messages,
            rate,
            window,
        } => {
            fanout::run(fanout::Options {
                messages,
                rate,
                window,
                ..setup.options("fanout")
            })
            .await
        }
        Scenario::Latency {
            setup,
            rate,
            seconds,
            rss_every,
            timeline,
            slow_ms,
            timeline_slot_ms,
        } => {
            fanout::run(fanout::Options {
                messages: (rate as f64 * seconds).round() as u64,
                rate: rate.max(1),
                rss_every: (rss_every > 0.0).then(|| Duration::from_secs_f64(rss_every)),
                timeline: Some(fanout::TimelineOptions {
                    file: timeline,
                    slot_us: timeline_slot_ms.max(1) * 1000,
                    slow_us: (slow_ms * 1000.0) as u64,
                }),
                ..setup.options("latency")
            })
            .await
        }
        Scenario::Idle {
            target,
            connections,
            concurrency,
            server_pid,
            settle_ms,
            source_ips,
            hold,
        } => {
            client::spread_source_ips(source_ips);
            idle::run(idle::Options {
                rooms: target.room_names(),
                url: target.url,
                connections,
                concurrency,
                server_pid,
                settle: Duration::from_millis(settle_ms),
                hold: Duration::from_secs_f64(hold.max(0.0)),
            })
            .await
        }
        Scenario::Failover {
            url,
            server_pid,
            api_key,
            room,
            event,
            rate,
            before,
            after,
        } => {
            failover::run(failover::Options {
                urls: url,
                pids: server_pid,
                api_key,
                room,
                event,
                rate,
                before,
                after,
            })
            .await
        }
        Scenario::Web {
            target,
            connections,
            requests,
            api_key,
        } => {
            web::run(web::Options {
                rooms: target.room_names(),
                url: target.url,
                connections,
                requests,
                api_key,
            })
            .await
        }
        Scenario::Jitter {
            target,
            event,
            receivers,
            senders,
            rate,
            seconds,
            cut_min_ms,
            cut_max_ms,
            reconnect_ms,
            concurrency,
            recovery,
        } => {
            jitter::run(jitter::Options {
                rooms: target.room_names(),
                event,
                url: target.url,
                receivers,
                senders,
                rate,
                seconds,
                cut_min: Duration::from_millis(cut_min_ms),
                cut_max: Duration::from_millis(cut_max_ms),
                reconnect_delay: Duration::from_millis(reconnect_ms),
                concurrency,
                recovery,
            })
            .await
        }
        Scenario::Storm {
            target,
            event,
            receivers,
            senders,
            rate,
            seconds,
            server_pid,
            restart_cmd,
            timeout,
            concurrency,
            recovery,
        } => {
            jitter::storm(jitter::StormOptions {
                rooms: target.room_names(),
                url: target.url,
                event,
                receivers,
                senders,
                rate,
                seconds,
                server_pid,
                restart_cmd,
                timeout: Duration::from_secs(timeout),
                concurrency,
                recovery,
            })
            .await
        }
        Scenario::Restart {
            url,
            room,
            event,
            messages,
            window,
            server_pid,
            restart_cmd,
            timeout,
            kill,
        } => {
            restart::run(restart::Options {
                kill,
                url,
                room,
                event,
                messages,
                window,
                server_pid,
                restart_cmd,
                timeout: Duration::from_secs(timeout),
                page: 100,
            })
            .await
        }
    };
    match result {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
