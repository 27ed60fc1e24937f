//! Poison cannot stop persistence: what the database cannot store (a NUL character in `data`,
//! `meta`, a key, an id; an over-long `from` or user id) is refused at the door with
//! INVALID_REQUEST, over the socket (the official Node socket.io-client), at CONNECT and over
//! the HTTP API, while the good events sent between the poison ones are acked and all end up
//! in the `messages` table, and `/readyz` stays 200 throughout. Against a real PostgreSQL
//! server (whose `jsonb` cannot hold `\u0000`) and, for the socket part, SQLite.

mod common;

use common::pg::Postgres;
use common::{run_node_tests, TestServer};
use entity::message::{Column, Entity as Messages};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use std::path::Path;
use std::time::{Duration, Instant};

/// Events per (room, event) kept in memory: small, so that events are written while the
/// test runs, between and after the poison ones.
const LIMIT: usize = 2;

fn config(url: &str) -> String {
    format!(
        r#"
server: {{ host: 127.0.0.1, port: 0, shutdownTimeout: 20000 }}
database: {{ url: "{url}" }}
api: {{ keys: [poison-key] }}
limits: {{ historyRequestsPerMinute: 0, triggersPerSecond: 0 }}
events:
  message:
    schema:
      type: object
      required: [text, username]
      properties: {{ text: {{ type: string }}, username: {{ type: string }} }}
    history: {{ enabled: true, limit: {LIMIT} }}
rooms:
  poison: {{ name: Poison, events: [message] }}
  anything: {{ name: Anything, events: ["*"] }}
"#
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The `data.text` of every row stored for room `poison`, sorted.
fn stored_texts(url: &str) -> Vec<String> {
    rt().block_on(async {
        let db = dialogue::store::connect(url).await.expect("connect");
        let rows = Messages::find()
            .filter(Column::RoomId.eq("poison"))
            .all(&db)
            .await
            .expect("query messages");
        db.close().await.ok();
        let mut texts: Vec<String> = rows
            .iter()
            .map(|row| {
                assert!(!row.from_user.contains('\0'), "{row:?}");
                row.event_data["text"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a row without data.text: {row:?}"))
                    .to_owned()
            })
            .collect();
        texts.sort();
        texts
    })
}

/// Runs `tests/js/poison.test.mjs` (`phase`: `socket` or `all`, which adds the HTTP API)
/// against a server on `url`, then checks that every good event it reports is stored.
fn poison_cannot_stop_persistence(dir: &Path, url: &str, phase: &str) {
    let mut server = TestServer::start_in(dir, &config(url), &[]);
    server.wait_ready();
    let results = run_node_tests("poison.test.mjs", &server, &[("PHASE", phase)]);
    let mut good: Vec<String> = results
        .last()
        .and_then(|r| r["good"].as_array())
        .expect("the script reports the good events")
        .iter()
        .map(|t| t.as_str().expect("a text").to_owned())
        .collect();
    good.sort();
    assert!(good.len() > 20, "{good:?}");

    // Written behind while the server runs: every good event but at most the in-memory
    // window of the newest ones reaches the table without any help.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = stored_texts(url);
        for text in &stored {
            assert!(good.contains(text), "stored but never acked: {text:?}");
        }
        if stored.len() + LIMIT >= good.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} good events reached the database: {stored:?}",
            stored.len(),
            good.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server.wait_ready();
    for needle in ["database unavailable", " ERROR "] {
        assert!(
            !server.log_contains(needle),
            "the server logged {needle:?}: {:?}",
            server.log.lock().map(|l| l.clone())
        );
    }

    // A clean stop writes the window too: then every good event is there, nothing else.
    let (code, _) = server.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "clean exit on SIGTERM");
    assert_eq!(stored_texts(url), good);
}

#[test]
fn postgres_poison_is_refused_and_good_events_are_stored() {
    let Some(pg) = Postgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = rt().block_on(pg.create_db("poison"));
    poison_cannot_stop_persistence(dir.path(), &url, "all");
}

#[test]
fn sqlite_poison_over_the_socket_is_refused_and_good_events_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("poison.db").display()
    );
    poison_cannot_stop_persistence(dir.path(), &url, "socket");
}
