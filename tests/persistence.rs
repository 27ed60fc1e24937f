//! Persistent history against a real SQLite file and a real PostgreSQL server (started by the
//! harness), driven by the official Node socket.io-client.

mod common;

use common::pg::Postgres;
use common::{run_node_tests, TestServer};
use entity::message::{Column, Entity as Messages};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter};
use std::path::Path;
use std::time::{Duration, Instant};

fn config(url: &str, limit: u32, max_backlog: usize, sync: u32) -> String {
    format!(
        r#"
server: {{ host: 127.0.0.1, port: 0, shutdownTimeout: 20000 }}
database: {{ url: "{url}", maxBacklog: {max_backlog} }}
limits: {{ historyRequestsPerMinute: 0, triggersPerSecond: 0 }}
events:
  message:
    schema:
      type: object
      required: [text, username]
      properties: {{ text: {{ type: string }}, username: {{ type: string }} }}
    history: {{ enabled: true, limit: {limit} }}
rooms:
  hist: {{ name: History, events: [message], syncHistoryOnJoin: {sync} }}
"#
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn count(url: &str, room: &str) -> u64 {
    let db = dialogue::store::connect(url).await.expect("connect");
    let n = Messages::find()
        .filter(Column::RoomId.eq(room))
        .count(&db)
        .await
        .expect("count");
    db.close().await.ok();
    n
}

/// Waits until the table holds `expected` rows of `room` (writes are asynchronous).
fn eventually_count(url: &str, room: &str, expected: u64) {
    let rt = rt();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = rt.block_on(count(url, room));
        if n == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {expected} rows in {room}, found {n}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With the database unavailable: triggers until STORAGE_UNAVAILABLE (backlog 50, limit 10);
/// then `recover` ends the outage and every accepted event must come back, in the database.
fn outage_then_recovery(server: &TestServer, url: &str, recover: impl FnOnce()) {
    let results = run_node_tests(
        "persistence.test.mjs",
        server,
        &[("PHASE", "outage-fill"), ("FIRST_SEQ", "1")],
    );
    let accepted = results[0]["accepted"].as_u64().unwrap();
    wait_for_log(server, "database unavailable");
    recover();
    let last = accepted.to_string();
    run_node_tests(
        "persistence.test.mjs",
        server,
        &[("PHASE", "outage-recovered"), ("LAST_SEQ", &last)],
    );
    wait_for_log(server, "database available again");
    eventually_count(url, "hist", accepted + 1 - 10);
}

fn wait_for_log(server: &TestServer, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log_contains(needle) {
        assert!(
            Instant::now() < deadline,
            "the server never logged {needle:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A database for one test: a SQLite file in its own directory, or a PostgreSQL database.
enum Backend {
    Sqlite,
    Postgres(Postgres),
}

impl Backend {
    /// The database URL for a test running in `dir`.
    fn url(&self, dir: &Path, name: &str) -> String {
        match self {
            Backend::Sqlite => format!(
                "sqlite://{}?mode=rwc",
                dir.join(format!("{name}.db")).display()
            ),
            Backend::Postgres(pg) => rt().block_on(pg.create_db(name)),
        }
    }
}

fn postgres() -> Option<Backend> {
    Postgres::start().map(Backend::Postgres)
}

// ------------------------------------------------------------------ scenarios

fn thousand_messages(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.url(dir.path(), "thousand");
    let server = TestServer::start_in(dir.path(), &config(&url, 100, 100_000, 50), &[]);
    run_node_tests("persistence.test.mjs", &server, &[("PHASE", "thousand")]);
    eventually_count(&url, "hist", 900);
}

fn concurrent_cursor(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.url(dir.path(), "concurrent");
    let server = TestServer::start_in(dir.path(), &config(&url, 20, 100_000, 0), &[]);
    let results = run_node_tests("persistence.test.mjs", &server, &[("PHASE", "concurrent")]);
    assert!(results[0]["written"].as_u64().unwrap() > 300);
}

fn graceful_restart(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.url(dir.path(), "restart");
    let cfg = config(&url, 100, 100_000, 50);
    let mut server = TestServer::start_in(dir.path(), &cfg, &[]);
    run_node_tests("persistence.test.mjs", &server, &[("PHASE", "fill150")]);
    let (code, took) = server.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "clean exit on SIGTERM");
    assert!(server.log_contains("history saved"));
    eprintln!("shutdown took {took:?}");
    // Every event is in the database, the 100 in-memory ones included.
    assert_eq!(rt().block_on(count(&url, "hist")), 150);

    let server = TestServer::start_in(dir.path(), &cfg, &[]);
    run_node_tests(
        "persistence.test.mjs",
        &server,
        &[("PHASE", "after-restart")],
    );
    drop(server);
}

fn deep_join_sync(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.url(dir.path(), "deepsync");
    let server = TestServer::start_in(dir.path(), &config(&url, 10, 100_000, 50), &[]);
    run_node_tests("persistence.test.mjs", &server, &[("PHASE", "deep-sync")]);
}

fn room_deletion_persists_first(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.url(dir.path(), "deletion");
    let server = TestServer::start_in(dir.path(), &config(&url, 100, 100_000, 0), &[]);
    run_node_tests("persistence.test.mjs", &server, &[("PHASE", "delete")]);
    // No waiting: the delete was acknowledged only after the rows were written.
    assert_eq!(rt().block_on(count(&url, "temp")), 30);
}

/// Re-inserting rows already stored adds only the new ones; what is read back is what was
/// written.
fn idempotent_writes(backend: Backend) {
    use dialogue::actors::messages::StoredEvent;
    use dialogue::store::{insert_batches, BatchRef};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let url = backend.url(dir.path(), "idempotent");
    rt().block_on(async {
        let db = dialogue::store::connect(&url).await.unwrap();
        // Every kind of JSON value as data, with and without meta, survives the round trip.
        let data = [
            serde_json::json!({ "n": 1, "text": "quote \" backslash \\ é 😀", "nested": { "a": [1, 2.5, null] } }),
            serde_json::json!("a bare string"),
            serde_json::json!(42),
            serde_json::json!([true, "x", { "k": null }]),
            serde_json::json!(null),
        ];
        let events: Vec<Arc<StoredEvent>> = (1..=5)
            .map(|seq| {
                Arc::new(StoredEvent {
                    seq,
                    timestamp: 1_700_000_000_000 + seq as i64,
                    from: format!("user'{seq}").into(),
                    data: data[seq as usize - 1].clone(),
                    meta: match seq {
                        2 | 4 => Some(serde_json::json!({ "clientMsgId": seq })),
                        3 => Some(serde_json::Value::Null),
                        _ => None,
                    },
                    json: "{}".into(),
                })
            })
            .collect();
        let batch = |events| BatchRef {
            room_id: "r",
            event: "e",
            events,
        };
        assert_eq!(
            insert_batches(&db, &[batch(&events[..3])]).await.unwrap(),
            3
        );
        // A re-insert of rows already there (overlapping) adds only the new ones.
        assert_eq!(insert_batches(&db, &[batch(&events[..])]).await.unwrap(), 2);
        assert_eq!(insert_batches(&db, &[batch(&events[..])]).await.unwrap(), 0);
        let rows = Messages::find()
            .filter(Column::RoomId.eq("r"))
            .count(&db)
            .await
            .unwrap();
        assert_eq!(rows, 5);
        let back = dialogue::store::load_range(&db, "r", "e", 1, 5).await.unwrap();
        assert_eq!(back.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 4, 3, 2, 1]);
        for (got, want) in back.iter().rev().zip(&events) {
            assert_eq!(got.data, want.data, "seq {}", want.seq);
            assert_eq!(got.meta, want.meta, "seq {}", want.seq);
            assert_eq!(got.from, want.from);
            assert_eq!(got.timestamp, want.timestamp);
        }
    });
}

// ------------------------------------------------------------------ SQLite

#[test]
fn sqlite_thousand_messages_pages_across_the_seam() {
    thousand_messages(Backend::Sqlite);
}

#[test]
fn sqlite_cursor_paging_while_others_trigger() {
    concurrent_cursor(Backend::Sqlite);
}

#[test]
fn sqlite_graceful_restart_loses_nothing() {
    graceful_restart(Backend::Sqlite);
}

#[test]
fn sqlite_sync_on_join_reads_past_the_window() {
    deep_join_sync(Backend::Sqlite);
}

#[test]
fn sqlite_room_deletion_persists_first() {
    room_deletion_persists_first(Backend::Sqlite);
}

#[test]
fn sqlite_writes_are_idempotent() {
    idempotent_writes(Backend::Sqlite);
}

/// SQLite unavailable: another connection holds the write lock (root ignores file
/// permissions, so a lock is the dependable way to make the file unwritable).
#[test]
fn sqlite_locked_database_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = Backend::Sqlite.url(dir.path(), "outage");
    let server = TestServer::start_in(dir.path(), &config(&url, 10, 50, 0), &[]);
    let rt = rt();
    let locker = rt.block_on(async {
        use sea_orm::TransactionTrait;
        let db = dialogue::store::connect(&url).await.unwrap();
        let txn = db.begin().await.unwrap();
        txn.execute_unprepared(
            "INSERT INTO messages (room_id, event_name, event_data, from_user, timestamp, seq) \
             VALUES ('lock', 'lock', '{}', 'test', 0, 1)",
        )
        .await
        .unwrap();
        (db, txn)
    });
    // Releasing the lock ends the outage.
    outage_then_recovery(&server, &url, || {
        rt.block_on(async move {
            locker.1.rollback().await.unwrap();
            locker.0.close().await.ok();
        })
    });
}

// ------------------------------------------------------------------ PostgreSQL

#[test]
fn postgres_thousand_messages_pages_across_the_seam() {
    if let Some(pg) = postgres() {
        thousand_messages(pg);
    }
}

#[test]
fn postgres_cursor_paging_while_others_trigger() {
    if let Some(pg) = postgres() {
        concurrent_cursor(pg);
    }
}

#[test]
fn postgres_graceful_restart_loses_nothing() {
    if let Some(pg) = postgres() {
        graceful_restart(pg);
    }
}

#[test]
fn postgres_sync_on_join_reads_past_the_window() {
    if let Some(pg) = postgres() {
        deep_join_sync(pg);
    }
}

#[test]
fn postgres_room_deletion_persists_first() {
    if let Some(pg) = postgres() {
        room_deletion_persists_first(pg);
    }
}

#[test]
fn postgres_writes_are_idempotent() {
    if let Some(pg) = postgres() {
        idempotent_writes(pg);
    }
}

/// PostgreSQL stopped mid-test, then started again.
#[test]
fn postgres_outage_loses_nothing() {
    let Some(Backend::Postgres(pg)) = postgres() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = rt().block_on(pg.create_db("outage"));
    let server = TestServer::start_in(dir.path(), &config(&url, 10, 50, 0), &[]);
    // The room restores its window from the database first; the outage begins after that.
    server.wait_ready();
    pg.stop_server();
    outage_then_recovery(&server, &url, || pg.start_server());
}
