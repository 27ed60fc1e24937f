//! Socket.IO connection-state recovery for the stock `socket.io-client` (≥ 4.6): the CONNECT
//! answer carries a pid, history events an offset, and a client whose transport was lost gets
//! its session back on its automatic reconnection — identity, rooms, subscriptions and every
//! event it missed, exactly once, in order — across a chaos proxy, a graceful restart and a
//! `kill -9`. Driven by the official Node client (`tests/js/recovery*.mjs`, `seed-*.mjs`).

mod common;

use common::proxy::ChaosProxy;
use common::{lock_sqlite, run_node_tests, spawn_node_script, NodeProcess, TestServer};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Rooms for the behaviour tests: an autoJoin lobby, r1 with an event that keeps no history,
/// r2 whose `note` keeps a window of 5 (a longer replay reads the database), r3 to leave.
const RECOVERY: &str = r#"
server: { host: 127.0.0.1, port: 0 }
limits: { triggersPerSecond: 0, historyRequestsPerMinute: 0, subscriptionsPerMinute: 0 }
recovery: { enabled: true, maxDisconnectionDuration: 120000 }
events:
  message: { history: { limit: 100 } }
  note: { history: { limit: 5 } }
  typing: { history: { enabled: false } }
rooms:
  lobby: { name: Lobby, events: [message], syncHistoryOnJoin: 10, autoJoin: true }
  r1: { name: R1, events: [message, note, typing], syncHistoryOnJoin: 10 }
  r2: { name: R2, events: [message, note], syncHistoryOnJoin: 10 }
  r3: { name: R3, events: [message], syncHistoryOnJoin: 10 }
  r4: { name: R4, events: [typing] }
  small: { name: Small, events: [message], maxSize: 1 }
"#;

/// The same sessions kept in PostgreSQL (multi-row upserts, `ON CONFLICT`, the tidy queries):
/// recovery works there too, and no session write fails.
#[test]
fn recovery_on_postgres() {
    let Some(pg) = common::pg::Postgres::start() else {
        return;
    };
    let url = common::rt().block_on(pg.create_db("recovery"));
    let config = format!("database: {{ url: \"{url}\" }}\n{RECOVERY}");
    let mut server = TestServer::start(&config);
    run_node_tests("recovery.test.mjs", &server, &[]);
    run_node_tests("recovery-edges.test.mjs", &server, &[]);
    assert!(!server.log_contains("cannot save sessions"));
    assert!(!server.log_contains("not recoverable any more"));
    assert_healthy(&mut server);
}

/// Review findings, each with the test that failed before its fix: a room whose events keep
/// no history is restored; a restored room that refuses the member is left with
/// `dialogue:left` and the error.
#[test]
fn recovery_edges() {
    let mut server = TestServer::start(RECOVERY);
    run_node_tests("recovery-edges.test.mjs", &server, &[]);
    assert_healthy(&mut server);
}

/// A session that receives more streams than `recovery.maxStreams` stops carrying offsets
/// and is deleted: its client gets a new session when it comes back.
#[test]
fn a_session_beyond_max_streams_is_not_recovered() {
    let config = with_recovery(RECOVERY, "recovery: { enabled: true, maxStreams: 2 }");
    let mut server = TestServer::start(&config);
    run_node_tests(
        "recovery-edges.test.mjs",
        &server,
        &[("EDGE_MODE", "streams")],
    );
    assert_healthy(&mut server);
}

const JWT: &str = r#"
server: { host: 127.0.0.1, port: 0 }
auth:
  mode: jwt
  jwt: { algorithm: HS256, secret: "recovery-secret-0123456789abcdef0123456789" }
limits: { triggersPerSecond: 0 }
events:
  message: { history: { limit: 100 } }
rooms:
  r2: { name: R2, events: [message] }
"#;

/// A recovered session takes its old socket id back; its token's expiry still ends it
/// (the expiry timer once followed the socket id it was set for, and never fired).
#[test]
fn a_recovered_jwt_session_still_ends_when_its_token_expires() {
    let mut server = TestServer::start(JWT);
    run_node_tests("recovery-edges.test.mjs", &server, &[("EDGE_MODE", "jwt")]);
    assert_healthy(&mut server);
}

/// A session recovered and then connected for longer than `maxDisconnectionDuration` stays
/// recoverable: its row is marked connected again (it kept the time of the first cut, and
/// a start after a crash deleted it as expired).
#[test]
fn a_recovered_session_stays_recoverable_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let config = with_recovery(
        RECOVERY,
        "recovery: { enabled: true, maxDisconnectionDuration: 1500 }",
    );
    let mut server = TestServer::start_in(dir.path(), &config, &[]);
    server.wait_ready();
    let steady = ChaosProxy::steady(server.addr());
    let mut node = spawn_node_script(
        "recovery-idle.mjs",
        &server.url,
        &[("STEADY_URL", steady.url().as_str())],
    );
    assert!(
        node.wait_line("RECOVERED", Duration::from_secs(30))
            .is_some(),
        "{}",
        node.transcript()
    );
    // Connected (recovered) for longer than maxDisconnectionDuration, then a crash.
    std::thread::sleep(Duration::from_millis(3000));
    server.kill9();
    server = start_again(dir.path(), &config, &[&steady]);
    let result = result_of(&mut node, Duration::from_secs(30));
    assert_eq!(result["recovered"], Value::Bool(true), "{result}");
    assert_eq!(result["seqs"], serde_json::json!([1, 2, 3]), "{result}");
    assert_healthy(&mut server);
}

/// Saved sessions reach the database file, not only SQLite's write-ahead log, while no event
/// is written. Before, only event batches led to checkpoints: a burst of connections (every
/// joined room saves its session) grew the log unchecked, ten thousand of them to 64 MB that
/// the first event's checkpoint then had to copy while the room delivered.
#[test]
fn saved_sessions_are_checkpointed_without_events() {
    const HELD: i64 = 200;
    let mut server = TestServer::start(RECOVERY);
    server.wait_ready();
    let dir = server
        .dir
        .as_ref()
        .expect("its directory")
        .path()
        .to_owned();
    let count = HELD.to_string();
    let mut node = spawn_node_script("sessions-hold.mjs", &server.url, &[("COUNT", &count)]);
    let held = node.wait_line("HELD", Duration::from_secs(90));
    assert_eq!(
        held.as_deref(),
        Some(count.as_str()),
        "{}",
        node.transcript()
    );
    // What the database file holds without its log: a copy of the file alone.
    let in_file = || -> Result<i64, String> {
        let copy = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = copy.path().join("copy.db");
        std::fs::copy(dir.join("dialogue.db"), &path).map_err(|e| e.to_string())?;
        let conn = rusqlite::Connection::open(&path).map_err(|e| e.to_string())?;
        conn.query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
            .map_err(|e| e.to_string())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // A copy taken while a checkpoint writes can be torn: it is taken again.
        let found = in_file();
        if found.as_ref().is_ok_and(|n| *n >= HELD) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after 10 s the database file holds {found:?} of the {HELD} saved sessions"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(node);
    assert_healthy(&mut server);
}

/// `accepted` events a crash lost, whose seqs the room then gives to new events: neither a
/// recovered session nor a native join with the old epoch skips the new ones.
#[test]
fn accepted_seqs_lost_in_a_crash_are_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("epoch.db").display()
    );
    let config = format!(
        r#"
server: {{ host: 127.0.0.1, port: 0 }}
database: {{ url: "{url}", durability: accepted }}
limits: {{ triggersPerSecond: 0, historyRequestsPerMinute: 0 }}
events:
  message: {{ history: {{ limit: 100 }} }}
rooms:
  r2: {{ name: R2, events: [message], syncHistoryOnJoin: 50 }}
  auto: {{ name: Auto, events: [message], syncHistoryOnJoin: 50, autoJoin: true }}
"#
    );
    let mut server = TestServer::start_in(dir.path(), &config, &[]);
    server.wait_ready();
    let steady = ChaosProxy::steady(server.addr());
    let phase = dir.path().join("phase");
    let phase_file = phase.to_string_lossy().into_owned();
    let mut node = spawn_node_script(
        "recovery-epoch.mjs",
        &server.url,
        &[
            ("STEADY_URL", steady.url().as_str()),
            ("PHASE_FILE", phase_file.as_str()),
        ],
    );
    assert!(
        node.wait_line("READY", Duration::from_secs(30)).is_some(),
        "{}",
        node.transcript()
    );
    let unlock = lock_sqlite(&url);
    std::fs::write(&phase, "locked").unwrap();
    assert!(
        node.wait_line("SENT", Duration::from_secs(30)).is_some(),
        "{}",
        node.transcript()
    );
    server.kill9();
    unlock();
    server = start_again(dir.path(), &config, &[&steady]);
    std::fs::write(&phase, "restarted").unwrap();
    let result = result_of(&mut node, Duration::from_secs(60));
    eprintln!("epoch: {result}");
    assert_eq!(
        result["fresh"],
        serde_json::json!([1, 2, 3, 4, 5, 6]),
        "{result}"
    );
    assert_eq!(result["recovered"], Value::Bool(true), "{result}");
    assert_eq!(
        result["joinedResume"]["resumed"],
        Value::Bool(false),
        "{result}"
    );
    assert_eq!(
        result["joinedResume"]["reason"], "UNKNOWN_POSITION",
        "{result}"
    );
    // Joined afresh: the new events, newest first, all of epoch 1; nothing replayed.
    let history: Vec<Value> = (1..=6)
        .rev()
        .map(|seq| serde_json::json!([seq, 1, false]))
        .collect();
    assert_eq!(result["historySeqs"], Value::Array(history), "{result}");
    assert_eq!(result["replayed"], serde_json::json!([]), "{result}");
    assert_eq!(
        result["nativeOld"]["reason"], "UNKNOWN_POSITION",
        "{result}"
    );
    assert_eq!(
        result["nativeNow"]["resumed"],
        Value::Bool(true),
        "{result}"
    );
    // The autoJoin room resumed from the CONNECT: `auth.epochs` names the epoch of
    // `auth.since`, as `epoch` does for a join.
    assert_eq!(
        result["autoFresh"],
        serde_json::json!([1, 2, 3, 4, 5, 6]),
        "{result}"
    );
    assert_eq!(result["autoOld"]["reason"], "UNKNOWN_POSITION", "{result}");
    assert_eq!(
        result["autoNow"],
        serde_json::json!({"resumed": true, "events": {"message": 1}}),
        "{result}"
    );
    assert_healthy(&mut server);
}

/// Two rooms with two history event types and an autoJoin room; small windows, so that
/// replays after longer gaps come from the database.
const CHAOS: &str = r#"
server: { host: 127.0.0.1, port: 0 }
database: { durability: stored }
limits: { triggersPerSecond: 0, historyRequestsPerMinute: 0 }
recovery: { enabled: true, maxDisconnectionDuration: 120000 }
events:
  message: { history: { limit: 20 } }
  note: { history: { limit: 5 } }
rooms:
  r1: { name: R1, events: [message, note], syncHistoryOnJoin: 10 }
  r2: { name: R2, events: [message, note], syncHistoryOnJoin: 10 }
  lobby: { name: Lobby, events: [message], syncHistoryOnJoin: 10, autoJoin: true }
"#;

/// The seed document's chat room ("Client-Side Infinite Scroll"), with a window of 20 so
/// that scrolling back reaches the database.
const SEED: &str = r#"
server: { host: 127.0.0.1, port: 0 }
database: { durability: stored }
limits: { triggersPerSecond: 0, historyRequestsPerMinute: 0 }
recovery: { enabled: true }
events:
  message:
    description: Chat message sent by a user
    schema:
      type: object
      required: [text, username]
      properties:
        text: { type: string, minLength: 1, maxLength: 2000 }
        username: { type: string }
    history: { enabled: true, limit: 20 }
rooms:
  general: { name: General Chat, events: [message], syncHistoryOnJoin: 10 }
"#;

fn with_recovery(config: &str, recovery: &str) -> String {
    config.replace(
        "recovery: { enabled: true, maxDisconnectionDuration: 120000 }",
        recovery,
    )
}

fn assert_healthy(server: &mut TestServer) {
    assert!(server.is_running(), "the server stopped");
    assert!(!server.log_contains("panicked"), "the server panicked");
}

/// Waits for the script's RESULT line and its exit; panics with the transcript otherwise.
fn result_of(node: &mut NodeProcess, limit: Duration) -> Value {
    let line = node.wait_line("RESULT", limit);
    let code = node.wait_exit(Duration::from_secs(10));
    let line = line.unwrap_or_else(|| panic!("no RESULT:\n{}", node.transcript()));
    assert_eq!(code, Some(0), "{}", node.transcript());
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("RESULT {line}: {e}"))
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// The CONNECT answer carries a pid and history events an offset; a session recovered after
/// a lost transport keeps its identity, its rooms (the autoJoin one too), its subscriptions
/// (an unsubscribed event stays so) and its left rooms left, and gets every event it missed
/// once, in order, before live events, with no `dialogue:joined`/`dialogue:history` again;
/// joining a restored room again is answered but replays nothing.
#[test]
fn recovered_session_keeps_rooms_subscriptions_and_leaves() {
    let mut server = TestServer::start(RECOVERY);
    server.wait_ready();
    let results = run_node_tests("recovery.test.mjs", &server, &[]);
    eprintln!("recovery.test.mjs: {results:?}");
    assert_healthy(&mut server);
}

/// A pid only recovers for the identity it was given to: another user presenting it (with the
/// offset) gets a new session in none of the victim's rooms; a made-up pid is a new session
/// that works normally; a session expires `maxDisconnectionDuration` after its connection
/// ended (1 s here; the client comes back after 3 s).
#[test]
fn pid_is_bound_to_identity_and_expires() {
    let mut server = TestServer::start(RECOVERY);
    let mut expiry = TestServer::start(&with_recovery(
        RECOVERY,
        "recovery: { enabled: true, maxDisconnectionDuration: 1000 }",
    ));
    server.wait_ready();
    expiry.wait_ready();
    let results = run_node_tests(
        "recovery-identity.test.mjs",
        &server,
        &[("EXPIRY_URL", expiry.url.as_str())],
    );
    eprintln!("recovery-identity.test.mjs: {results:?}");
    assert_healthy(&mut server);
    assert_healthy(&mut expiry);
}

/// `recovery: {enabled: false}`: no pid in the CONNECT answer, no offset on events, a
/// reconnection is a new session; without a `recovery` section it is on.
#[test]
fn recovery_can_be_turned_off() {
    let mut off = TestServer::start(&with_recovery(RECOVERY, "recovery: { enabled: false }"));
    let mut default = TestServer::start(&with_recovery(RECOVERY, ""));
    off.wait_ready();
    default.wait_ready();
    run_node_tests(
        "recovery-off.test.mjs",
        &off,
        &[("DEFAULT_URL", default.url.as_str())],
    );
    assert_healthy(&mut off);
    assert_healthy(&mut default);
}

/// Stock-client readers behind a proxy that cuts their connections every 0.3–1.5 s, relying
/// on the server's recovery alone, end with every event exactly once, in order; nearly every
/// reconnection is recovered.
#[test]
fn stock_client_recovers_through_a_chaos_proxy() {
    let mut server = TestServer::start(CHAOS);
    server.wait_ready();
    let proxy = ChaosProxy::cutting(server.addr());
    let results = run_node_tests(
        "recovery-chaos.test.mjs",
        &server,
        &[("PROXY_URL", proxy.url().as_str())],
    );
    eprintln!("chaos: {results:?}");
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(
        proxy.cuts() >= 6,
        "the proxy cut {} connections",
        proxy.cuts()
    );
    assert_healthy(&mut server);
}

/// The same readers (two behind the chaos proxy, two behind a steady one) and writers across a
/// graceful restart and a `kill -9` (`durability: stored`): every event the server stored —
/// every acked one among them — reaches every reader exactly once, in order; each reader's
/// first connection to a restarted server is a recovered one.
#[test]
fn stock_client_recovers_across_a_restart_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let phase = dir.path().join("phase");
    let mut server = TestServer::start_in(dir.path(), CHAOS, &[]);
    server.wait_ready();
    let chaos = ChaosProxy::cutting(server.addr());
    let steady = ChaosProxy::steady(server.addr());
    let phase_file = phase.to_string_lossy().into_owned();
    let mut node = spawn_node_script(
        "recovery-restart.mjs",
        &server.url,
        &[
            ("CHAOS_URL", chaos.url().as_str()),
            ("STEADY_URL", steady.url().as_str()),
            ("PHASE_FILE", phase_file.as_str()),
            ("SECONDS_TO_WRITE", "9"),
        ],
    );
    assert!(
        node.wait_line("READY", Duration::from_secs(30)).is_some(),
        "clients joined:\n{}",
        node.transcript()
    );
    std::thread::sleep(Duration::from_millis(2500));
    let (code, took) = server.terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0), "graceful stop after {took:?}");
    // Written while no server runs: a reader's first connection after it is to the new one.
    std::fs::write(&phase, "1").unwrap();
    server = start_again(dir.path(), CHAOS, &[&chaos, &steady]);
    std::thread::sleep(Duration::from_millis(2500));
    server.kill9();
    std::fs::write(&phase, "2").unwrap();
    server = start_again(dir.path(), CHAOS, &[&chaos, &steady]);

    let result = result_of(&mut node, Duration::from_secs(100));
    eprintln!("restart and crash: {result}");
    assert_eq!(result["problems"], serde_json::json!([]), "{result}");
    assert!(count(&result, "acked") > 100, "{result}");
    assert_eq!(count(&result, "noOffset"), 0, "{result}");
    assert_eq!(result["resent"], serde_json::json!([]), "{result}");
    let comebacks = result["comebacks"].as_object().unwrap();
    for (reader, list) in comebacks {
        let list = list.as_array().unwrap();
        assert!(!list.is_empty(), "{reader} never came back: {result}");
        if reader.starts_with("rs-steady") {
            // Only the stops cut these connections: nothing excuses a new session.
            let phases: Vec<u64> = list.iter().map(|c| c["phase"].as_u64().unwrap()).collect();
            assert_eq!(phases, [1, 2], "{reader}: {result}");
            for c in list {
                assert_eq!(
                    c["recovered"],
                    Value::Bool(true),
                    "{reader} after restart {}: {result}",
                    c["phase"]
                );
            }
        }
    }
    let (recovered, reconnects) = (count(&result, "recovered"), count(&result, "reconnects"));
    assert!(
        recovered * 5 >= reconnects * 4,
        "most reconnections recovered: {result}"
    );
    assert_healthy(&mut server);
}

/// Starts the server again in `dir` and points the proxies at it.
fn start_again(dir: &Path, config: &str, proxies: &[&ChaosProxy]) -> TestServer {
    let server = TestServer::start_in(dir, config, &[]);
    for p in proxies {
        p.retarget(server.addr());
    }
    server
}

/// The seed document's client flow ("Client-Side Infinite Scroll", `seed-flow.mjs` on the
/// dialogue-ts client model `seed-client.mjs`, which joins its rooms again after every
/// reconnection): chat, `kill -9` mid-chat, start again, chat more, scroll back to the first
/// message. The list holds every stored message exactly once, newest first (every acked one
/// with its text), and the reconnection was recovered.
#[test]
fn seed_client_flow_has_no_duplicates_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(dir.path(), SEED, &[]);
    server.wait_ready();
    let steady = ChaosProxy::steady(server.addr());
    let mut node = spawn_node_script(
        "seed-flow.mjs",
        &server.url,
        &[
            ("STEADY_URL", steady.url().as_str()),
            ("SECONDS_TO_WRITE", "6"),
            ("PRE", "60"),
        ],
    );
    assert!(
        node.wait_line("READY", Duration::from_secs(30)).is_some(),
        "the seed client joined:\n{}",
        node.transcript()
    );
    std::thread::sleep(Duration::from_millis(2500));
    server.kill9();
    server = start_again(dir.path(), SEED, &[&steady]);

    let result = result_of(&mut node, Duration::from_secs(90));
    eprintln!("seed flow: {result}");
    assert_eq!(result["problems"], serde_json::json!([]), "{result}");
    assert_eq!(
        count(&result, "historyAtJoin"),
        10,
        "join history: {result}"
    );
    assert_eq!(
        count(&result, "histories"),
        1,
        "one dialogue:history, at the first join: {result}"
    );
    assert!(count(&result, "acked") > 90, "{result}");
    assert_eq!(count(&result, "held"), count(&result, "newest"), "{result}");
    let connects = result["connects"].as_array().unwrap();
    assert!(connects.len() >= 2, "the client reconnected: {result}");
    for c in &connects[1..] {
        assert_eq!(c["recovered"], Value::Bool(true), "recovered: {result}");
    }
    for r in result["rejoins"].as_array().unwrap() {
        assert_eq!(
            r["ok"],
            Value::Bool(true),
            "a join again is answered ok: {result}"
        );
    }
    assert_healthy(&mut server);
}
