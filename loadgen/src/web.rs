//! The web pages and the dashboard's data: what the chat page's first load weighs (gzipped, as
//! sent), and how long `GET /` and `GET /api/stats` take with K joined connections spread
//! over the rooms.

use crate::fanout::connect_all;
use crate::server::http_get;
use crate::stats::percentile;
use serde_json::{json, Value};
use std::time::Instant;

pub struct Options {
    pub url: String,
    /// Connection `i` joins `rooms[i % len]`.
    pub rooms: Vec<String>,
    pub connections: usize,
    /// Requests timed per route.
    pub requests: usize,
    /// A key of the server's `api.keys`.
    pub api_key: String,
}

/// Times `requests` sequential GETs of `path`; (p50, p99) in ms.
async fn timed(o: &Options, path: &str, headers: &[(&str, &str)]) -> Result<(f64, f64), String> {
    let mut ms = Vec::with_capacity(o.requests);
    for _ in 0..o.requests {
        let started = Instant::now();
        let answer = http_get(&o.url, path, headers).await?;
        if answer.status != 200 {
            return Err(format!("GET {path}: {}", answer.status));
        }
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok((percentile(&ms, 50.0), percentile(&ms, 99.0)))
}

pub async fn run(o: Options) -> Result<Value, String> {
    let gzip = [("Accept-Encoding", "gzip")];
    // The first load: the page, then every asset it links, as a browser takes them.
    let page = http_get(&o.url, "/", &gzip).await?;
    if page.status != 200 {
        return Err(format!("GET /: {} (is http.webUi off?)", page.status));
    }
    let html = String::from_utf8_lossy(&page.body).into_owned();
    let mut first_load = page.body.len();
    let assets: Vec<&str> = html
        .split('"')
        .filter(|s| s.starts_with("/assets/"))
        .collect();
    for asset in &assets {
        let answer = http_get(&o.url, asset, &gzip).await?;
        if answer.status != 200 || answer.header("content-encoding") != Some("gzip") {
            return Err(format!("GET {asset}: {} without gzip", answer.status));
        }
        first_load += answer.body.len();
    }
    let results = connect_all(&o.url, "web", &o.rooms, o.connections, false, 64).await;
    let clients: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
    let bearer = format!("Bearer {}", o.api_key);
    let (page_p50, page_p99) = timed(&o, "/", &gzip).await?;
    let (stats_p50, stats_p99) = timed(&o, "/api/stats", &[("Authorization", &bearer)]).await?;
    for (_, c) in &clients {
        c.close();
    }
    eprintln!(
        "web: first load {first_load} bytes gzipped ({} assets); GET / p50 {page_p50:.2} ms p99 \
         {page_p99:.2} ms; GET /api/stats with {} rooms and {} connections p50 {stats_p50:.2} ms \
         p99 {stats_p99:.2} ms",
        assets.len(),
        o.rooms.len(),
        clients.len()
    );
    Ok(json!({
        "first_load_gzip_bytes": first_load,
        "first_load_gzip_kib": first_load as f64 / 1024.0,
        "page_p50_ms": page_p50,
        "page_p99_ms": page_p99,
        "stats_p50_ms": stats_p50,
        "stats_p99_ms": stats_p99,
        "rooms": o.rooms.len(),
        "connections": clients.len(),
    }))
}
