//! `dialogue-load`: load generator and benchmark scenarios for any server speaking Socket.IO
//! v5 over Engine.IO v4 WebSocket and the dialogue events. Each scenario prints one JSON line
//! (machine-readable) and a short human summary on stderr.

mod client;
mod fanout;

use clap::{Parser, Subcommand};
use client::Client;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{json, Value};
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
    /// Latency of history pages at given depths (offsets and cursor forms).
    History {
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        #[arg(long, default_value = "general")]
        room: String,
        #[arg(long, default_value = "message")]
        event: String,
        /// Comma-separated depths (positions from the newest event).
        #[arg(long, default_value = "0,100,1000000")]
        depths: String,
        #[arg(long, default_value_t = 200)]
        samples: usize,
        #[arg(long, default_value_t = 20)]
        page: u64,
    },
    /// Fan-out: C subscribers, S senders, N messages (as fast as a window allows, or at a
    /// fixed rate); deliveries/s, end-to-end latency, lost and duplicated deliveries, and the
    /// server's CPU time per delivery (from /proc/PID/stat when --server-pid is given).
    Fanout {
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        #[arg(long, default_value = "general")]
        room: String,
        #[arg(long, default_value = "message")]
        event: String,
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[arg(long, default_value_t = 4)]
        senders: usize,
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        /// Messages per second in all; 0 = as fast as the window allows.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Unacknowledged triggers in flight per sender (rate 0).
        #[arg(long, default_value_t = 32)]
        window: usize,
        #[arg(long)]
        server_pid: Option<u32>,
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

/// Percentile of sorted values (nearest rank).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
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
    let mut rows = count_rows(&db, &room, &event).await;
    while rows < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        rows = count_rows(&db, &room, &event).await;
    }
    let persisted_in = start.elapsed();
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

async fn history(
    url: String,
    room: String,
    event: String,
    depths: String,
    samples: usize,
    page: u64,
) -> Result<Value, String> {
    let c = joined_client(&url, "history-reader", &room).await?;
    let top = c
        .request(
            "dialogue:getHistory",
            &json!({ "roomId": room, "eventName": event, "start": 0, "end": 1 }),
        )
        .await?;
    let last_seq = top["events"][0]["seq"]
        .as_u64()
        .ok_or(format!("no events in {room}: {top}"))?;
    let mut results = Vec::new();
    for depth in depths
        .split(',')
        .filter_map(|d| d.trim().parse::<u64>().ok())
    {
        if depth >= last_seq {
            eprintln!("skipping depth {depth}: only {last_seq} events");
            continue;
        }
        for form in ["offsets", "cursor"] {
            let request = if form == "offsets" {
                json!({ "roomId": room, "eventName": event, "start": depth, "end": depth + page })
            } else {
                json!({ "roomId": room, "eventName": event, "before": last_seq - depth + 1, "limit": page })
            };
            let mut times = Vec::with_capacity(samples);
            for _ in 0..samples {
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
    c.close();
    Ok(
        json!({ "scenario": "history", "page": page, "samples": samples, "last_seq": last_seq, "results": results }),
    )
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
        Scenario::History {
            url,
            room,
            event,
            depths,
            samples,
            page,
        } => history(url, room, event, depths, samples, page).await,
        Scenario::Bulkload {
            db_url,
            room,
            event,
            rows,
        } => bulkload(db_url, room, event, rows).await,
        Scenario::Fanout {
            url,
            room,
            event,
            subscribers,
            senders,
            messages,
            rate,
            window,
            server_pid,
        } => {
            fanout::run(fanout::Options {
                url,
                room,
                event,
                subscribers,
                senders,
                messages,
                rate,
                window,
                server_pid,
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
