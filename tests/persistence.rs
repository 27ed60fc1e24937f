//! Persistent history against a real SQLite file and a real PostgreSQL server (started by the
//! harness), driven by the official Node socket.io-client.

mod common;

use common::{lock_sqlite, rt, run_node_tests, Backend, TestServer};
use entity::message::{Column, Entity as Messages};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter};
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

/// [`config`] with `database.durability: accepted` (acks at once; the backlog bound applies).
fn config_accepted(url: &str, limit: u32, max_backlog: usize, sync: u32) -> String {
    config(url, limit, max_backlog, sync).replace(
        &format!("maxBacklog: {max_backlog} }}"),
        &format!("maxBacklog: {max_backlog}, durability: accepted }}"),
    )
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
    // Write-behind: every accepted event reaches the table, not only those out of the window.
    eventually_count(url, "hist", accepted + 1);
}

/// `durability: stored` with the database unavailable: triggers are refused with
/// STORAGE_UNAVAILABLE once the store knows; those accepted before are acknowledged only when
/// `recover` has ended the outage, and every acknowledged one is then in the database with
/// the acknowledged seq, gapless; no refused one is.
fn stored_outage_then_recovery(server: &TestServer, url: &str, recover: impl FnOnce()) {
    let mut script = common::spawn_node_script("outage-stored.mjs", &server.url, &[]);
    let refusal = script.wait_line("REFUSED ", Duration::from_secs(60));
    assert!(refusal.is_some(), "no refusal: {}", script.transcript());
    recover();
    assert_eq!(
        script.wait_exit(Duration::from_secs(120)),
        Some(0),
        "{}",
        script.transcript()
    );
    let result = script.results().pop().expect("RESULT line");
    let acked = result["acked"].as_array().unwrap();
    let refused = result["refused"].as_array().unwrap();
    assert!(!refused.is_empty());
    assert!(
        refused.iter().all(|r| r["code"] == "STORAGE_UNAVAILABLE"),
        "{refused:?}"
    );
    let rows = rt().block_on(async {
        let db = dialogue::store::connect(url).await.unwrap();
        let rows = Messages::find()
            .filter(Column::RoomId.eq("hist"))
            .all(&db)
            .await
            .unwrap();
        db.close().await.ok();
        rows
    });
    let stored: std::collections::BTreeMap<i64, String> = rows
        .iter()
        .map(|r| {
            (
                r.seq,
                r.event_data["text"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (1..=stored.len() as i64).collect::<Vec<_>>(),
        "gapless from 1"
    );
    for a in acked {
        let seq = a["seq"].as_i64().unwrap();
        assert_eq!(
            stored.get(&seq).map(String::as_str),
            a["text"].as_str(),
            "acked seq {seq}"
        );
    }
    for r in refused {
        let text = r["text"].as_str().unwrap();
        assert!(
            !stored.values().any(|t| t == text),
            "refused {text} was stored"
        );
    }
    assert_eq!(
        stored.len(),
        acked.len(),
        "only acknowledged events are stored"
    );
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

fn postgres() -> Option<Backend> {
    Backend::postgres()
}

// ------------------------------------------------------------------ scenarios

fn thousand_messages(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.url(dir.path(), "thousand");
    let server = TestServer::start_in(dir.path(), &config(&url, 100, 100_000, 50), &[]);
    run_node_tests("persistence.test.mjs", &server, &[("PHASE", "thousand")]);
    // Write-behind: all 1000, the 100 still in the window included.
    eventually_count(&url, "hist", 1000);
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

/// Session changes of every kind, batched as the session store batches them, land in order
/// through the general path (PostgreSQL's, and SQLite's when its own connection declines):
/// each disconnected session keeps its own time, the later of two counts.
fn session_changes_apply_in_order(backend: Backend) {
    use dialogue::store::{load_session, write_sessions, SessionWrite};
    let dir = tempfile::tempdir().unwrap();
    let url = backend.url(dir.path(), "sessions");
    let pid = |n: usize| format!("{n:064x}");
    let save = |n: usize, state: &str| SessionWrite::Save {
        pid_hash: pid(n),
        user_id: format!("user-{n}"),
        state: state.into(),
    };
    let gone = |n: usize, at_ms: i64| SessionWrite::Disconnected {
        pid_hash: pid(n),
        at_ms,
    };
    rt().block_on(async {
        let db = dialogue::store::connect(&url).await.unwrap();
        // 450 sessions: more than one statement's worth of each kind.
        let mut batch: Vec<SessionWrite> = (0..450).map(|n| save(n, "{}")).collect();
        batch.extend((0..450).map(|n| gone(n, 10_000 + n as i64)));
        batch.push(gone(7, 20_000));
        batch.extend((0..100).map(|n| SessionWrite::Connected { pid_hash: pid(n) }));
        batch.extend((100..200).map(|n| SessionWrite::Delete { pid_hash: pid(n) }));
        batch.push(save(150, r#"{"rooms":["r"]}"#));
        write_sessions(&db, &batch, 5_000).await.unwrap();
        let load = |n: usize| {
            let db = db.clone();
            async move { load_session(&db, &pid(n)).await.unwrap() }
        };
        let user = |n: usize| format!("user-{n}");
        assert_eq!(load(0).await, Some((user(0), "{}".into(), None)));
        assert_eq!(load(7).await, Some((user(7), "{}".into(), None)));
        assert_eq!(load(120).await, None);
        assert_eq!(
            load(150).await,
            Some((user(150), r#"{"rooms":["r"]}"#.into(), None))
        );
        assert_eq!(
            load(300).await,
            Some((user(300), "{}".into(), Some(10_300)))
        );
        assert_eq!(
            load(449).await,
            Some((user(449), "{}".into(), Some(10_449)))
        );
        // The later of two disconnections, in one batch.
        let again = [gone(300, 30_000), gone(300, 31_000)];
        write_sessions(&db, &again, 6_000).await.unwrap();
        assert_eq!(
            load(300).await,
            Some((user(300), "{}".into(), Some(31_000)))
        );
        db.close().await.ok();
    });
}

/// Re-inserting rows already stored adds only the new ones; what is read back is what was
/// written.
fn idempotent_writes(backend: Backend) {
    use dialogue::actors::messages::StoredEvent;
    use dialogue::history::PageBudget;
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
                let meta = match seq {
                    2 | 4 => Some(serde_json::json!({ "clientMsgId": seq })),
                    3 => Some(serde_json::Value::Null),
                    _ => None,
                };
                Arc::new(StoredEvent::new(
                    "r",
                    "e",
                    seq,
                    0,
                    1_700_000_000_000 + seq as i64,
                    format!("user'{seq}").into(),
                    &data[seq as usize - 1],
                    meta.as_ref(),
                ))
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
        let mut all = PageBudget::new(usize::MAX);
        let back = dialogue::store::load_range(&db, "r", "e", 1, 5, &mut all)
            .await
            .unwrap();
        assert!(!all.was_cut());
        assert_eq!(back.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 4, 3, 2, 1]);
        for (got, want) in back.iter().rev().zip(&events) {
            assert_eq!(got.data_value(), want.data_value(), "seq {}", want.seq);
            assert_eq!(got.meta_value(), want.meta_value(), "seq {}", want.seq);
            assert_eq!(got.from, want.from);
            assert_eq!(got.timestamp, want.timestamp);
        }
        // Reading stops at the page's byte budget: the newest that fit.
        let two = back[0].weight() + back[1].weight();
        let mut budget = PageBudget::new(two);
        let newest = dialogue::store::load_range(&db, "r", "e", 1, 5, &mut budget)
            .await
            .unwrap();
        assert_eq!(newest.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 4]);
        assert!(budget.was_cut());
    });
}

/// Fault injection: a trigger in the database refuses rows whose text is POISON. The rest of
/// the batch is stored, the refused row is in the quarantine table, its seq holds a tombstone,
/// the writer carries on and `/readyz` stays 200.
fn refused_row_is_quarantined(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.url(dir.path(), "quarantine");
    let server = TestServer::start_in(dir.path(), &config(&url, 10, 100_000, 0), &[]);
    server.wait_ready();
    let postgres = matches!(backend, Backend::Postgres(_));
    rt().block_on(async {
        let db = dialogue::store::connect(&url).await.unwrap();
        let sql: &[&str] = if postgres {
            &[
                "CREATE FUNCTION reject_poison() RETURNS trigger AS $$ BEGIN \
                 IF NEW.event_data->>'text' = 'POISON' THEN RAISE EXCEPTION 'poison refused by the test'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER reject_poison BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION reject_poison()",
            ]
        } else {
            &["CREATE TRIGGER reject_poison BEFORE INSERT ON messages \
               WHEN json_extract(NEW.event_data, '$.text') = 'POISON' \
               BEGIN SELECT RAISE(ABORT, 'poison refused by the test'); END"]
        };
        for statement in sql {
            db.execute_unprepared(statement).await.unwrap();
        }
        db.close().await.ok();
    });
    run_node_tests(
        "persistence.test.mjs",
        &server,
        &[("PHASE", "poison-batch")],
    );
    eventually_count(&url, "hist", 25);
    let (status, body) = server.readyz();
    assert_eq!(status, 200, "{body}");
    let quarantined = rt().block_on(async {
        let db = dialogue::store::connect(&url).await.unwrap();
        let rows = db
            .query_all_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT room_id, event_name, seq, event, error FROM quarantine".to_owned(),
            ))
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                (
                    r.try_get::<String>("", "room_id").unwrap(),
                    r.try_get::<i64>("", "seq").unwrap(),
                    r.try_get::<String>("", "event").unwrap(),
                    r.try_get::<String>("", "error").unwrap(),
                )
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    let (room, seq, event, error) = &quarantined[0];
    assert_eq!((room.as_str(), *seq), ("hist", 10));
    assert!(event.contains("POISON"), "{event}");
    assert!(error.contains("poison refused by the test"), "{error}");
    let (_, metrics) = server.http_get("/metrics");
    assert!(
        metrics.contains("dialogue_persist_quarantined_total 1"),
        "{metrics}"
    );
}

/// Another writer put a different row under the next seq (here: by hand): the room's write
/// conflicts, the room stops writing — loudly: its triggers are refused, `/readyz` is 503,
/// the metric and the log say so — and its event is kept in the quarantine, not dropped.
fn conflicting_row_stops_the_writer(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.url(dir.path(), "conflict");
    let server = TestServer::start_in(dir.path(), &config(&url, 10, 100_000, 0), &[]);
    server.wait_ready();
    run_node_tests(
        "persistence.test.mjs",
        &server,
        &[("PHASE", "fill-n"), ("COUNT", "3")],
    );
    rt().block_on(async {
        let db = dialogue::store::connect(&url).await.unwrap();
        db.execute_unprepared(
            "INSERT INTO messages (room_id, event_name, event_data, from_user, timestamp, seq) \
             VALUES ('hist', 'message', '{\"text\":\"rogue\",\"username\":\"x\"}', 'rogue', 0, 4)",
        )
        .await
        .unwrap();
        db.close().await.ok();
    });
    run_node_tests("persistence.test.mjs", &server, &[("PHASE", "refused")]);
    let (status, body) = server.readyz();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["roomsStopped"], 1, "{body}");
    assert!(server.log_contains("stopped writing"));
    let (_, metrics) = server.http_get("/metrics");
    assert!(
        metrics.contains("dialogue_persist_stopped_rooms_total 1"),
        "{metrics}"
    );
    let (rogue, quarantined) = rt().block_on(async {
        let db = dialogue::store::connect(&url).await.unwrap();
        let row = Messages::find()
            .filter(Column::RoomId.eq("hist"))
            .filter(Column::Seq.eq(4))
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        let q = db
            .query_all_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT seq, event FROM quarantine".to_owned(),
            ))
            .await
            .unwrap();
        let q: Vec<(i64, String)> = q
            .iter()
            .map(|r| {
                (
                    r.try_get("", "seq").unwrap(),
                    r.try_get("", "event").unwrap(),
                )
            })
            .collect();
        (row.event_data["text"].clone(), q)
    });
    assert_eq!(rogue, "rogue", "the stored row is left alone");
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(quarantined[0].0, 4);
    assert!(quarantined[0].1.contains("m100"), "{quarantined:?}");
}

/// The database is down when the server stops: what is queued goes to the spill file, and
/// the next start writes it before serving.
#[test]
fn postgres_spill_file_keeps_what_the_database_could_not_take() {
    let Some(Backend::Postgres(pg)) = postgres() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = rt().block_on(pg.create_db("spill"));
    let cfg = config_accepted(&url, 10, 1000, 0)
        .replace("shutdownTimeout: 20000", "shutdownTimeout: 1500");
    let mut server = TestServer::start_in(dir.path(), &cfg, &[]);
    server.wait_ready();
    run_node_tests(
        "persistence.test.mjs",
        &server,
        &[("PHASE", "fill-n"), ("COUNT", "5")],
    );
    eventually_count(&url, "hist", 5);
    pg.stop_server();
    run_node_tests(
        "persistence.test.mjs",
        &server,
        &[("PHASE", "fill-n"), ("FIRST", "6"), ("COUNT", "25")],
    );
    let (code, _) = server.terminate(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "a clean exit once the queue is in the spill file"
    );
    assert!(server.log_contains("spill file"));
    let spill = dir.path().join("dialogue-spill.jsonl");
    assert!(spill.exists(), "the spill file is written");

    pg.start_server();
    let server = TestServer::start_in(dir.path(), &cfg, &[]);
    server.wait_ready();
    assert!(server.log_contains("replayed 25 events from the spill file"));
    assert!(!spill.exists(), "the spill file is removed once replayed");
    eventually_count(&url, "hist", 30);
    run_node_tests(
        "persistence.test.mjs",
        &server,
        &[("PHASE", "check-n"), ("COUNT", "30")],
    );
}

/// Events without history keep their counter in the database: `stored` ones exactly,
/// `accepted` ones reserved ahead in blocks. A crash never makes a seq repeat; a clean stop
/// leaves no gap.
fn counters_survive_crashes(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.url(dir.path(), "counters");
    let cfg = format!(
        r#"
server: {{ host: 127.0.0.1, port: 0 }}
database: {{ url: "{url}" }}
limits: {{ historyRequestsPerMinute: 0, triggersPerSecond: 0 }}
events:
  typing: {{ history: {{ enabled: false }} }}
  ping: {{ history: {{ enabled: false, durability: accepted }} }}
rooms:
  counters: {{ events: [typing, ping] }}
"#
    );
    let seqs = |server: &TestServer| -> (Vec<u64>, Vec<u64>) {
        let r = run_node_tests("persistence.test.mjs", server, &[("PHASE", "counters")]);
        let list = |k: &str| {
            r[0][k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect::<Vec<_>>()
        };
        (list("typing"), list("ping"))
    };
    let run = |from: u64| (from..from + 25).collect::<Vec<u64>>();
    let mut server = TestServer::start_in(dir.path(), &cfg, &[]);
    let (typing, ping) = seqs(&server);
    assert_eq!(typing, run(1));
    assert_eq!(ping, run(1), "every one answered, in order");

    server.kill9();
    let mut server = TestServer::start_in(dir.path(), &cfg, &[]);
    let (typing, ping) = seqs(&server);
    assert_eq!(typing, run(26), "stored: exact, even after a crash");
    assert!(
        ping[0] > 25,
        "accepted: no seq handed out before the crash repeats: {ping:?}"
    );
    assert_eq!(ping, run(ping[0]), "consecutive");
    let last_ping = *ping.last().unwrap();

    let (code, _) = server.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0));
    let server = TestServer::start_in(dir.path(), &cfg, &[]);
    let (typing, ping) = seqs(&server);
    assert_eq!(typing, run(51));
    assert_eq!(
        ping,
        run(last_ping + 1),
        "accepted: a clean stop leaves no gap"
    );
}

/// A room held by a process on another host that vanished (its lease row says so): the
/// server waits until that lease runs out by the database's clock, then takes the room over
/// with the next epoch, which the room's events then carry.
fn lease_of_a_vanished_host_runs_out(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.url(dir.path(), "vanished");
    rt().block_on(async {
        let db = dialogue::store::connect(&url).await.unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        db.execute_unprepared(&format!(
            "INSERT INTO room_leases (room_id, owner, node, lease_until, epoch) \
             VALUES ('hist', 'ghost', 'elsewhere|1|ghost', {}, 4)",
            now + 3000
        ))
        .await
        .unwrap();
        db.close().await.ok();
    });
    let cfg = config(&url, 10, 1000, 0)
        .replace("maxBacklog: 1000", "maxBacklog: 1000, leaseTimeout: 1000");
    let started = Instant::now();
    let server = TestServer::start_in(dir.path(), &cfg, &[]);
    let (status, body) = server.readyz();
    assert_eq!(status, 503, "the room waits for the lease: {body}");
    assert_eq!(body["roomsRestoring"], 1, "{body}");
    server.wait_ready();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2000),
        "took the room after {waited:?}"
    );
    assert!(server.log_contains("taking over from elsewhere|1|ghost"));
    run_node_tests(
        "persistence.test.mjs",
        &server,
        &[("PHASE", "fill-n"), ("COUNT", "1")],
    );
    eventually_count(&url, "hist", 1);
    let epoch = rt().block_on(async {
        let db = dialogue::store::connect(&url).await.unwrap();
        Messages::find()
            .filter(Column::RoomId.eq("hist"))
            .one(&db)
            .await
            .unwrap()
            .unwrap()
            .epoch
    });
    assert_eq!(epoch, 5, "an unclean takeover starts the next epoch");
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
fn sqlite_refused_row_is_quarantined() {
    refused_row_is_quarantined(Backend::Sqlite);
}

#[test]
fn sqlite_conflicting_row_stops_the_writer() {
    conflicting_row_stops_the_writer(Backend::Sqlite);
}

/// History switched on for an event that had only a counter: the seqs before it were never
/// stored, and pages over them answer what exists (a hole is not a page over its byte bound).
#[test]
fn sqlite_history_enabled_later_pages_over_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let url = Backend::Sqlite.url(dir.path(), "gap");
    let cfg = |history: &str| {
        format!(
            r#"
server: {{ host: 127.0.0.1, port: 0 }}
database: {{ url: "{url}" }}
limits: {{ historyRequestsPerMinute: 0, triggersPerSecond: 0 }}
events:
  typing: {{ history: {history} }}
  ping: {{ history: {{ enabled: false }} }}
rooms:
  counters: {{ events: [typing, ping] }}
"#
        )
    };
    let mut server = TestServer::start_in(dir.path(), &cfg("{ enabled: false }"), &[]);
    run_node_tests("persistence.test.mjs", &server, &[("PHASE", "counters")]);
    server.terminate(std::time::Duration::from_secs(20));
    let server = TestServer::start_in(dir.path(), &cfg("{ limit: 10 }"), &[]);
    let r = run_node_tests("persistence.test.mjs", &server, &[("PHASE", "gap")]);
    assert_eq!(r[0]["sent"], serde_json::json!([26, 27]), "{r:?}");
}

#[test]
fn sqlite_counters_survive_crashes() {
    counters_survive_crashes(Backend::Sqlite);
}

#[test]
fn sqlite_lease_of_a_vanished_host_runs_out() {
    lease_of_a_vanished_host_runs_out(Backend::Sqlite);
}

#[test]
fn sqlite_session_changes_apply_in_order() {
    session_changes_apply_in_order(Backend::Sqlite);
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
    let server = TestServer::start_in(dir.path(), &config_accepted(&url, 10, 50, 0), &[]);
    // Releasing the lock ends the outage.
    let unlock = lock_sqlite(&url);
    outage_then_recovery(&server, &url, unlock);
}

/// The SQLite file locked by another writer under `durability: stored`.
#[test]
fn sqlite_locked_database_stored_acks_only_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let url = Backend::Sqlite.url(dir.path(), "outage_stored");
    let server = TestServer::start_in(dir.path(), &config(&url, 10, 50, 0), &[]);
    server.wait_ready();
    let unlock = lock_sqlite(&url);
    stored_outage_then_recovery(&server, &url, unlock);
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
fn postgres_refused_row_is_quarantined() {
    if let Some(pg) = postgres() {
        refused_row_is_quarantined(pg);
    }
}

#[test]
fn postgres_conflicting_row_stops_the_writer() {
    if let Some(pg) = postgres() {
        conflicting_row_stops_the_writer(pg);
    }
}

#[test]
fn postgres_counters_survive_crashes() {
    if let Some(pg) = postgres() {
        counters_survive_crashes(pg);
    }
}

#[test]
fn postgres_lease_of_a_vanished_host_runs_out() {
    if let Some(pg) = postgres() {
        lease_of_a_vanished_host_runs_out(pg);
    }
}

#[test]
fn postgres_session_changes_apply_in_order() {
    if let Some(pg) = postgres() {
        session_changes_apply_in_order(pg);
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
    let server = TestServer::start_in(dir.path(), &config_accepted(&url, 10, 50, 0), &[]);
    // The room restores its window from the database first; the outage begins after that.
    server.wait_ready();
    pg.stop_server();
    outage_then_recovery(&server, &url, || pg.start_server());
}

/// PostgreSQL stopped and started again under `durability: stored`.
#[test]
fn postgres_outage_stored_acks_only_what_is_stored() {
    let Some(Backend::Postgres(pg)) = postgres() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = rt().block_on(pg.create_db("outage_stored"));
    let server = TestServer::start_in(dir.path(), &config(&url, 10, 50, 0), &[]);
    server.wait_ready();
    pg.stop_server();
    stored_outage_then_recovery(&server, &url, || pg.start_server());
}
