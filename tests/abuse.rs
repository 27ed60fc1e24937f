//! The abuse suite (issue 11, hardening): the real server, attacked over real sockets on
//! loopback by the official Node `socket.io-client`, raw WebSockets and raw TCP
//! (`tests/js/abuse.test.mjs`). One server per configuration; the Node tests of that
//! configuration are selected by `PHASE`.
//!
//! Every attack checks that the attacker got an error or was disconnected, that a bystander
//! kept receiving live events during and after it, that `GET /readyz` answers 200, and that
//! the server's RSS stays under the bound the README states for the configuration
//! ([`Budget::bound`]), both from Node while the attack runs and from here afterwards.
//!
//! An HS256 secret shorter than 32 bytes refusing to start is tested in
//! `tests/config_errors.rs` (`serve_refuses_a_short_jwt_secret`).

mod common;

use common::{lock_sqlite, rt, run_node_tests, TestServer};
use entity::message::{Column, Entity as Messages};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

/// What the README's memory bound ("Limits and security") depends on, with the defaults of
/// every key:
///
/// RSS ≤ 64 MiB + W + B + C × P, W = Σ history.maxBytes over (room, event with history),
/// B = database.maxBacklogBytes, C = connections open at once, and
/// P = server.maxOutboundBytes + limits.maxPageBytes + limits.maxQueuedRequestBytes
///     + server.maxOutboundBytes / 4 + 16 × server.maxPayload.
struct Budget {
    /// (history.limit, history.maxBytes) of each (room, event with history).
    windows: Vec<(u64, u64)>,
    max_backlog_bytes: u64,
    /// Socket.IO connections open at once, at most.
    connections: u64,
    max_outbound_bytes: u64,
    max_queued_request_bytes: u64,
    max_payload: u64,
}

/// history.maxBytes when not given.
const DEFAULT_WINDOW_BYTES: u64 = MIB;

impl Default for Budget {
    fn default() -> Self {
        Budget {
            windows: Vec::new(),
            max_backlog_bytes: 64 * MIB,
            connections: 8,
            max_outbound_bytes: 4 * MIB,
            max_queued_request_bytes: MIB,
            max_payload: 1_000_000,
        }
    }
}

impl Budget {
    /// `count` (room, event) windows of `limit` events and `max_bytes`.
    fn windows(mut self, count: usize, limit: u64, max_bytes: u64) -> Self {
        self.windows
            .extend(std::iter::repeat_n((limit, max_bytes), count));
        self
    }

    fn bound(&self) -> u64 {
        let windows: u64 = self.windows.iter().map(|&(_, max_bytes)| max_bytes).sum();
        // limits.maxPageBytes is left at its default: a quarter of maxOutboundBytes.
        let page = self.max_outbound_bytes / 4;
        let per_connection = self.max_outbound_bytes
            + page
            + self.max_queued_request_bytes
            + self.max_outbound_bytes / 4
            + 16 * self.max_payload;
        64 * MIB + windows + self.max_backlog_bytes + self.connections * per_connection
    }
}

/// The resident set size of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// Runs the Node tests of `phase` against `server`; checks that `tests` of them ran, and that
/// the server is alive, ready and under the memory bound afterwards. Returns the `RESULT`s.
fn attack(
    server: &mut TestServer,
    phase: &str,
    tests: usize,
    budget: &Budget,
    env: &[(&str, &str)],
) -> Vec<serde_json::Value> {
    let bound = budget.bound();
    let pid = server.pid().to_string();
    let bound_text = bound.to_string();
    let mut all_env = vec![
        ("PHASE", phase),
        ("SERVER_PID", pid.as_str()),
        ("RSS_BOUND", bound_text.as_str()),
    ];
    all_env.extend_from_slice(env);
    let results = run_node_tests("abuse.test.mjs", server, &all_env);
    let ran = results.iter().filter(|r| r.get("ran").is_some()).count();
    assert_eq!(ran, tests, "tests of phase {phase} that ran: {results:?}");
    assert!(server.is_running(), "the server survived phase {phase}");
    server
        .wait_ready_within(Duration::from_secs(20))
        .expect("ready after the attack");
    let now = rss(server.pid());
    assert!(
        now < bound,
        "RSS {} MiB after phase {phase} is over the bound {} MiB",
        now / MIB,
        bound / MIB
    );
    assert!(
        !server.log_contains("panicked"),
        "the server panicked during phase {phase}"
    );
    results
}

// ------------------------------------------------------------------------------------------
// Attacks 1, 2, 4, 5 and the door check of 7: keys main has today.

const LIMITS: &str = r#"
server: { host: 127.0.0.1, port: 0 }
api: { keys: [abuse-key] }
limits: { triggersPerSecond: 0, historyRequestsPerMinute: 0, roomsPerMinute: 5, maxRuntimeRooms: 8,
  maxEventTypesPerRoom: 20 }
events:
  chat: {}
  note: { history: { limit: 10 } }
  strict: { schema: { type: object, required: [x] } }
rooms:
  watch: { name: Watch, events: [chat, note] }
  star:
    name: Star
    events: ["*"]
    access: { trigger: { forbidden-1: { users: [nobody] }, forbidden-2: { users: [nobody] } } }
"#;

/// Room creation flood, junk event names in a "*" room, huge unsubscribe names, oversized
/// HTTP API bodies, history `start` near 2^64.
#[test]
fn abuse_within_the_current_limits() {
    let mut server = TestServer::start(LIMITS);
    // `note` in watch, star and the 8 rooms created at run time.
    let budget = Budget::default().windows(10, 10, DEFAULT_WINDOW_BYTES);
    attack(&mut server, "limits", 5, &budget, &[]);
}

// ------------------------------------------------------------------------------------------
// Attack 3: JWT.

const JWT: &str = r#"
server: { host: 127.0.0.1, port: 0 }
auth:
  mode: jwt
  jwt: { algorithm: HS256, secret: "abuse-secret-0123456789abcdef0123456789" }
limits: { triggersPerSecond: 0 }
events:
  chat: {}
rooms:
  watch: { name: Watch, events: [chat] }
"#;

/// A token expiring mid-session, nbf in the future, no exp, a forged token; and an exp beyond
/// any clock (`2^63`: the session expiry `exp * 1000 + leeway` overflowed in `src/auth.rs`, a
/// panic in debug builds, until the fix on branch `fuzz`, 0dcd98a).
#[test]
fn abuse_jwt_tokens() {
    let mut server = TestServer::start(JWT);
    attack(&mut server, "jwt", 2, &Budget::default(), &[]);
    assert!(server.log_contains("the token expired"));
}

// ------------------------------------------------------------------------------------------
// Attack 6: history.maxBytes; stored events keep only their JSON text.

const HISTORY_BYTES: &str = r#"
server: { host: 127.0.0.1, port: 0, maxPayload: 2000000 }
limits: { maxPayloadBytes: 1000000, triggersPerSecond: 0, historyRequestsPerMinute: 0 }
events:
  chat: {}
  warm: {}
  big: { history: { limit: 100, maxBytes: 2000000 } }
  keep: { history: { limit: 100, maxBytes: 100000000 } }
rooms:
  watch: { name: Watch, events: [chat] }
  r1: { name: R1, events: [big, warm] }
  r2: { name: R2, events: [big] }
  r3: { name: R3, events: [big] }
  vault: { name: Vault, events: [keep] }
"#;

/// Three rooms × 100 events of 900 KB (plus a vault of 100 kept whole): RSS within the bound,
/// and growth under 1.5 × what the windows hold.
#[test]
fn abuse_big_events_memory() {
    let mut server = TestServer::start(HISTORY_BYTES);
    let budget = Budget {
        connections: 3,
        max_payload: 2_000_000,
        ..Budget::default()
    }
    .windows(3, 100, 2_000_000)
    .windows(1, 100, 100_000_000);
    attack(&mut server, "history-bytes", 1, &budget, &[]);
}

// ------------------------------------------------------------------------------------------
// Attack 7: a connection's subscription set in "*" rooms.

const SUBSCRIPTIONS_BOUND: &str = r#"
server: { host: 127.0.0.1, port: 0 }
limits: { maxEventTypesPerRoom: 50 }
events:
  chat: {}
  known: {}
rooms:
  watch: { name: Watch, events: [chat] }
  star: { name: Star, events: ["*"] }
  picky: { name: Picky, events: ["*"], defaultSubscriptions: [known] }
"#;

/// 5,000 distinct names unsubscribed (or subscribed) in a "*" room
/// are bounded by limits.maxEventTypesPerRoom.
#[test]
fn abuse_subscription_set_is_bounded() {
    let mut server = TestServer::start(SUBSCRIPTIONS_BOUND);
    attack(
        &mut server,
        "subscriptions-bound",
        1,
        &Budget::default(),
        &[],
    );
}

const SUBSCRIPTIONS_RATE: &str = r#"
server: { host: 127.0.0.1, port: 0 }
limits: { subscriptionsPerMinute: 10 }
events:
  chat: {}
rooms:
  watch: { name: Watch, events: [chat] }
"#;

/// limits.subscriptionsPerMinute.
#[test]
fn abuse_subscription_rate() {
    let mut server = TestServer::start(SUBSCRIPTIONS_RATE);
    attack(
        &mut server,
        "subscriptions-rate",
        1,
        &Budget::default(),
        &[],
    );
}

// ------------------------------------------------------------------------------------------
// Attack 8: server.headerTimeout, server.bodyTimeout.

const SLOWLORIS: &str = r#"
server: { host: 127.0.0.1, port: 0, headerTimeout: 1000, bodyTimeout: 1500 }
api: { keys: [abuse-key] }
events:
  chat: {}
rooms:
  watch: { name: Watch, events: [chat] }
"#;

/// Headers or bodies sent a byte at a time, or never finished; 200 of them at once.
#[test]
fn abuse_slowloris() {
    let mut server = TestServer::start(SLOWLORIS);
    // Socket.IO connections: the bystanders and the 50 polling sessions of the slow POSTs.
    let budget = Budget {
        connections: 60,
        ..Budget::default()
    };
    attack(&mut server, "slowloris", 1, &budget, &[]);
}

// ------------------------------------------------------------------------------------------
// Attack 9: server.writeTimeout.

const STALLED: &str = r#"
server: { host: 127.0.0.1, port: 0, writeTimeout: 2000, maxOutboundBytes: 67108864 }
database: { durability: accepted }
limits: { triggersPerSecond: 0, historyRequestsPerMinute: 0 }
events:
  chat: {}
  blob: {}
rooms:
  watch: { name: Watch, events: [chat] }
  busy: { name: Busy, events: [blob] }
"#;

/// A WebSocket client that joins a busy room and stops reading.
#[test]
fn abuse_stalled_reader() {
    let mut server = TestServer::start(STALLED);
    let budget = Budget {
        connections: 4,
        max_outbound_bytes: 64 * MIB,
        ..Budget::default()
    };
    attack(&mut server, "stalled", 1, &budget, &[]);
    assert!(
        server.log_contains("no write progress"),
        "the disconnection is logged"
    );
}

// ------------------------------------------------------------------------------------------
// Attack 10: server.maxConnectionsPerIp.

const PER_IP: &str = r#"
server: { host: 127.0.0.1, port: 0, maxConnectionsPerIp: 20 }
events:
  chat: {}
rooms:
  watch: { name: Watch, events: [chat] }
"#;

/// The 21st concurrent connection from 127.0.0.1.
#[test]
fn abuse_connections_per_ip() {
    let mut server = TestServer::start(PER_IP);
    let budget = Budget {
        connections: 21,
        ..Budget::default()
    };
    attack(&mut server, "per-ip", 1, &budget, &[]);
}

// ------------------------------------------------------------------------------------------
// Attack 11: metrics.key, metrics.maxRoomSeries.

const METRICS: &str = r#"
server: { host: 127.0.0.1, port: 0 }
metrics: { key: "metrics-key-0123456789", maxRoomSeries: 5 }
limits: { roomsPerMinute: 0, maxRuntimeRooms: 0, triggersPerSecond: 0 }
events:
  chat: {}
rooms:
  watch: { name: Watch, events: [chat] }
"#;

/// Ten rooms with events: at most five room series plus `_other`; the key is required.
#[test]
fn abuse_metrics_series() {
    let mut server = TestServer::start(METRICS);
    attack(&mut server, "metrics", 1, &Budget::default(), &[]);
    assert_eq!(server.http_get("/metrics").0, 401);
}

// ------------------------------------------------------------------------------------------
// Attack 12: limits.maxQueuedRequestBytes.

const QUEUED_BYTES: &str = r#"
server: { host: 127.0.0.1, port: 0, maxOutboundBytes: 2097152 }
limits: { maxPayloadBytes: 1000000, triggersPerSecond: 0, maxQueuedRequestBytes: 4194304 }
events:
  chat: {}
  big: { history: { limit: 10 } }
rooms:
  watch: { name: Watch, events: [chat] }
  dump: { name: Dump, events: [big] }
"#;

/// One connection pipelines 100 triggers of 900 KB.
#[test]
fn abuse_queued_request_bytes() {
    let mut server = TestServer::start(QUEUED_BYTES);
    let budget = Budget {
        connections: 3,
        max_outbound_bytes: 2 * MIB,
        ..Budget::default()
    }
    .windows(1, 10, DEFAULT_WINDOW_BYTES);
    attack(&mut server, "queued-bytes", 1, &budget, &[]);
}

// ------------------------------------------------------------------------------------------
// Attack 13: database.maxBacklogBytes.

fn backlog_config(url: &str) -> String {
    format!(
        r#"
server: {{ host: 127.0.0.1, port: 0 }}
database: {{ url: "{url}", durability: accepted, maxBacklog: 100000, maxBacklogBytes: 8388608 }}
limits: {{ triggersPerSecond: 0, historyRequestsPerMinute: 0 }}
events:
  chat: {{}}
  big: {{ history: {{ limit: 5 }} }}
rooms:
  watch: {{ name: Watch, events: [chat] }}
  vault: {{ name: Vault, events: [big] }}
"#
    )
}

/// The SQLite file locked by another writer: 200 KB history events until the backlog holds
/// 8 MiB, then STORAGE_UNAVAILABLE; after the lock, every acknowledged event is stored.
#[test]
fn abuse_persistence_backlog_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("backlog.db").display()
    );
    let mut server = TestServer::start_in(dir.path(), &backlog_config(&url), &[]);
    server.wait_ready();
    let budget = Budget {
        max_backlog_bytes: 8 * MIB,
        connections: 4,
        ..Budget::default()
    }
    .windows(1, 5, DEFAULT_WINDOW_BYTES);
    attack(&mut server, "backlog-warm", 1, &budget, &[]);

    let unlock = lock_sqlite(&url);
    let bound = budget.bound().to_string();
    let pid = server.pid().to_string();
    // Not `attack`: /readyz is 503 while the database is locked.
    let results = run_node_tests(
        "abuse.test.mjs",
        &server,
        &[
            ("PHASE", "backlog-fill"),
            ("SERVER_PID", &pid),
            ("RSS_BOUND", &bound),
        ],
    );
    unlock();
    let acked = results
        .iter()
        .find_map(|r| r.get("acked"))
        .expect("RESULT {acked}")
        .clone();
    assert!(rss(server.pid()) < budget.bound());
    let acked_text = acked.to_string();
    attack(
        &mut server,
        "backlog-recovered",
        1,
        &budget,
        &[("ACKED", &acked_text)],
    );

    // Written: the warm-up event, every acknowledged one and the one after the lock.
    let expected = acked.as_array().unwrap().len() as u64 + 2;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = rt().block_on(async {
            let db = dialogue::store::connect(&url).await.unwrap();
            let n = Messages::find()
                .filter(Column::RoomId.eq("vault"))
                .count(&db)
                .await
                .unwrap();
            db.close().await.ok();
            n
        });
        if stored >= expected {
            assert_eq!(stored, expected, "nothing refused was stored");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} of {expected} events stored"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ------------------------------------------------------------------------------------------
// Out of file descriptors.

const OPEN_FILES: &str = r#"
server: { host: 127.0.0.1, port: 0, pingInterval: 1000 }
events:
  chat: {}
rooms:
  watch: { name: Watch, events: [chat] }
"#;

/// Opens a Socket.IO WebSocket by hand: `101`, then Engine.IO's open packet.
fn raw_websocket(server: &TestServer) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut io = std::net::TcpStream::connect(server.addr()).expect("connect");
    io.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    io.write_all(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: localhost\r\n\
          Upgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("\"sid\"") {
        let n = io.read(&mut buf).expect("the handshake's answer");
        assert!(n > 0, "closed during the handshake: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 101"),
        "not switched: {:?}",
        String::from_utf8_lossy(&seen)
    );
    io
}

/// Waits for an Engine.IO ping (a WebSocket text frame `2`) on `io`.
fn read_ping(io: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while started.elapsed() < Duration::from_secs(5) {
        match io.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        if seen.windows(3).any(|w| w == [0x81, 0x01, b'2']) {
            return true;
        }
    }
    false
}

/// CPU time (user + system) of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // After the command: state is field 3, utime 14 and stime 15.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Connections past the process's open-files limit: the server stops accepting while it has
/// no descriptor to spare, without spinning; the sessions it has go on; once the flood is
/// gone it accepts again.
#[test]
fn abuse_open_files_exhausted() {
    let mut server = TestServer::start_with_open_files(OPEN_FILES, 256);
    let mut before_flood = raw_websocket(&server);
    let flood: Vec<std::net::TcpStream> = (0..400)
        .map(|i| {
            std::net::TcpStream::connect(server.addr())
                .unwrap_or_else(|e| panic!("connection {i} of the flood: {e}"))
        })
        .collect();
    let started = Instant::now();
    while !server.log_contains("Too many open files") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the server did not run out of descriptors"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Out of descriptors for 2 s: a server retrying at once would take a whole core.
    let ticks = cpu_ticks(server.pid());
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(server.pid()) - ticks;
    assert!(
        spent < 50,
        "{spent} ticks of CPU in 2 s while out of descriptors: the accept loop spins"
    );
    assert!(
        read_ping(&mut before_flood),
        "the session opened before the flood was not pinged during it"
    );
    drop(flood);
    let started = Instant::now();
    while server.http_get("/healthz").0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the server did not accept again after the flood"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut after_flood = raw_websocket(&server);
    assert!(read_ping(&mut after_flood), "a new session was not pinged");
    assert!(read_ping(&mut before_flood), "the first session ended");
    assert!(server.is_running());
    assert!(!server.log_contains("panicked"));
}
