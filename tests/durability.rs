//! "An acknowledged event survives kill -9; no seq is ever reused."
//!
//! The real `dialogue` binary is killed with SIGKILL at random moments while Node clients
//! (the official socket.io-client, `tests/js/crashload.mjs`) trigger events and record every
//! ack; the `messages` table is then read directly and compared with the acks. Each scenario
//! runs on a SQLite file and on a throwaway PostgreSQL server.
//!
//! Configuration keys this needs (`database.durability`, `database.leaseTimeout`,
//! `events.*.history.durability`) are refused by servers that predate them; set
//! `DIALOGUE_TEST_NO_DURABILITY_KEYS=1` to leave them out (to try the harness against such a
//! server: `stored` is then whatever the server does by default).
//! `CRASH_SEED=<n>` replays the kill moments of an earlier run (the seed is printed);
//! `CRASH_STOP=term` stops the server with SIGTERM instead of SIGKILL in the crash loops (a
//! self-check of the harness: a graceful stop loses nothing, so those loops must pass);
//! `DURABILITY_VERBOSE=1` prints the Node clients' whole output.

mod common;

use common::{rt, spawn_node_script, Backend, TestServer};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `database.leaseTimeout` (ms) in every configuration here.
const LEASE_MS: u64 = 2000;
/// Losses allowed under `durability: accepted`: only acks received this shortly before a kill.
const ACCEPTED_LOSS_WINDOW_MS: i64 = 500;

fn durability_keys() -> bool {
    std::env::var_os("DIALOGUE_TEST_NO_DURABILITY_KEYS").is_none()
}

/// A configuration with one history-enabled event (`message`, window 20) and one room `dur`.
/// `global` is `database.durability`, `per_event` the `message` event's override.
fn config(url: &str, global: &str, per_event: &str) -> String {
    let (db_keys, event_key) = if durability_keys() {
        (
            format!(", durability: {global}, leaseTimeout: {LEASE_MS}"),
            format!(", durability: {per_event}"),
        )
    } else {
        (String::new(), String::new())
    };
    format!(
        r#"
server: {{ host: 127.0.0.1, port: 0, shutdownTimeout: 20000 }}
database: {{ url: "{url}"{db_keys} }}
limits: {{ historyRequestsPerMinute: 0, triggersPerSecond: 0 }}
events:
  message:
    schema:
      type: object
      required: [text, username]
      properties: {{ text: {{ type: string }}, username: {{ type: string }} }}
    history: {{ enabled: true, limit: 20{event_key} }}
rooms:
  dur: {{ name: Durability, events: [message] }}
"#
    )
}

/// The repository's own `config.yaml`, on loopback, port 0 and the test's database.
fn repo_config(url: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml"))
        .expect("read config.yaml");
    let mut out = String::new();
    let (mut port, mut host, mut db) = (false, false, false);
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("port:") && !port {
            port = true;
            out.push_str(&format!("{indent}port: 0\n"));
        } else if trimmed.starts_with("host:") && !host {
            host = true;
            out.push_str(&format!("{indent}host: 127.0.0.1\n"));
        } else if trimmed.starts_with("url:") && !db {
            db = true;
            out.push_str(&format!("{indent}url: \"{url}\"\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        port && host && db,
        "config.yaml no longer has server.port/server.host/database.url lines to replace"
    );
    out
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// xorshift64*: enough randomness for kill moments, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn from_env_or_time() -> Rng {
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    ^ u64::from(std::process::id()) << 32
            });
        eprintln!("CRASH_SEED={seed}");
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

// ------------------------------------------------------------------ backends

fn postgres() -> Option<Backend> {
    Backend::postgres()
}

// ------------------------------------------------------------------ the table, read directly

/// One `messages` row as the tests see it.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    seq: i64,
    text: Option<String>,
    epoch: i64,
}

async fn open(url: &str) -> DatabaseConnection {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .max_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .map_sqlx_sqlite_opts(|o| o.busy_timeout(Duration::from_secs(10)));
    Database::connect(options)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// Every row of (room, event), by seq (duplicates kept: the caller checks for them). The
/// `epoch` column is read when it exists (else 0), so this runs against the schema before and
/// after it gains one.
fn read_rows(url: &str, room: &str, event: &str) -> Vec<Row> {
    rt().block_on(async {
        let db = open(url).await;
        let backend = db.get_database_backend();
        let has_epoch = db
            .query_all_raw(Statement::from_string(
                backend,
                "SELECT epoch FROM messages WHERE 1 = 0",
            ))
            .await
            .is_ok();
        let epoch = if has_epoch {
            "CAST(epoch AS BIGINT)"
        } else {
            "CAST(0 AS BIGINT)"
        };
        let sql = format!(
            "SELECT CAST(seq AS BIGINT) AS seq, CAST(event_data AS TEXT) AS data, {epoch} AS epoch \
             FROM messages WHERE room_id = '{room}' AND event_name = '{event}' ORDER BY seq, epoch"
        );
        let rows = db
            .query_all_raw(Statement::from_string(backend, sql))
            .await
            .unwrap_or_else(|e| panic!("read messages of {room}/{event}: {e}"));
        let out = rows
            .iter()
            .map(|r| {
                let data: String = r.try_get("", "data").expect("event_data as text");
                let data: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                Row {
                    seq: r.try_get("", "seq").expect("seq"),
                    text: data["text"].as_str().map(str::to_owned),
                    epoch: r.try_get("", "epoch").expect("epoch"),
                }
            })
            .collect();
        db.close().await.ok();
        out
    })
}

/// Structural checks of a stream: no seq twice, gapless from 1, no text stored twice.
fn check_stream(rows: &[Row], what: &str, violations: &mut Vec<String>) -> BTreeMap<i64, Row> {
    let mut by_seq: BTreeMap<i64, Row> = BTreeMap::new();
    for r in rows {
        if let Some(old) = by_seq.insert(r.seq, r.clone()) {
            violations.push(format!(
                "{what}: seq {} is in the table twice: {old:?} and {r:?}",
                r.seq
            ));
        }
    }
    let max = by_seq.keys().next_back().copied().unwrap_or(0);
    let missing: Vec<i64> = (1..=max).filter(|s| !by_seq.contains_key(s)).collect();
    if !missing.is_empty() {
        violations.push(format!(
            "{what}: the stream is not gapless from 1 to {max}: {} seqs missing, first ones {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        ));
    }
    let mut prev: Option<&Row> = None;
    for r in by_seq.values() {
        if let Some(p) = prev.filter(|p| p.epoch > r.epoch) {
            violations.push(format!(
                "{what}: the epoch goes down along the stream: seq {} has epoch {}, seq {} epoch {}",
                p.seq, p.epoch, r.seq, r.epoch
            ));
            break;
        }
        prev = Some(r);
    }
    if by_seq.keys().next().is_some_and(|&s| s < 1) {
        violations.push(format!("{what}: a seq below 1 is stored"));
    }
    let mut texts: HashMap<&str, Vec<i64>> = HashMap::new();
    for r in rows {
        if let Some(t) = &r.text {
            texts.entry(t).or_default().push(r.seq);
        }
    }
    let mut twice: Vec<_> = texts.iter().filter(|(_, s)| s.len() > 1).collect();
    twice.sort();
    if !twice.is_empty() {
        violations.push(format!(
            "{what}: {} events are stored under more than one seq, e.g. {:?}",
            twice.len(),
            &twice[..twice.len().min(10)]
        ));
    }
    by_seq
}

fn finish(test: &str, violations: Vec<String>) {
    if !violations.is_empty() {
        panic!(
            "{test}: {} violation(s):\n  - {}",
            violations.len(),
            violations.join("\n  - ")
        );
    }
}

// ------------------------------------------------------------------ node clients

/// Runs one phase of `durability.test.mjs`; (passed, RESULT values, output). Unlike
/// `run_node_tests` it does not panic, so the database can still be inspected.
fn node_phase(
    server: &TestServer,
    phase: &str,
    env: &[(&str, &str)],
) -> (bool, Vec<Value>, String) {
    common::ensure_node_modules();
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", "240", "node", "--test", "--test-reporter=spec"])
        .arg("--test-force-exit")
        .arg("--test-timeout=200000")
        .arg(common::js_dir().join("durability.test.mjs"))
        .env("DIALOGUE_URL", &server.url)
        .env("PHASE", phase)
        .current_dir(common::js_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = cmd.output().expect("node must be installed");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let results = stdout
        .lines()
        .filter_map(|l| l.trim_start_matches(['#', ' ']).strip_prefix("RESULT "))
        .filter_map(|json| serde_json::from_str(json).ok())
        .collect();
    // The spec reporter prints failures with their assertion messages; keep them short.
    let text = format!("{stdout}\n{stderr}");
    if std::env::var_os("DURABILITY_VERBOSE").is_some() {
        eprintln!("--- node phase {phase} ---\n{text}");
    }
    (output.status.success(), results, text)
}

/// One background probe trigger (`crashload.mjs MODE=probe`).
fn start_probe(server: &TestServer, text: &str, timeout_ms: u64) -> common::NodeProcess {
    spawn_node_script(
        "crashload.mjs",
        &server.url,
        &[
            ("MODE", "probe"),
            ("ROOM", "dur"),
            ("PROBE_TEXT", text),
            ("PROBE_TIMEOUT_MS", &timeout_ms.to_string()),
        ],
    )
}

fn probe_result(probe: &mut common::NodeProcess, limit: Duration) -> Option<Value> {
    probe
        .wait_line("RESULT ", limit)
        .and_then(|json| serde_json::from_str(&json).ok())
}

// ------------------------------------------------------------------ 1 + 2: crash loops

#[derive(Debug, Clone)]
struct Ack {
    cycle: i64,
    seq: i64,
    text: String,
    /// The ack's own epoch field, else the epoch of the event's fan-out, else the cycle's.
    epoch: Option<i64>,
    /// Whether `epoch` came from the ack or the event itself (not from the cycle).
    epoch_known: bool,
    t: i64,
}

struct Cycle {
    number: i64,
    delay_ms: u64,
    kill_at: i64,
    load_summary: String,
}

fn read_acks(path: &Path) -> Vec<Ack> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut acks = Vec::new();
    let mut event_epochs: HashMap<(i64, String), i64> = HashMap::new();
    for line in text.lines() {
        // A line cut by the script's own death would not parse; nothing relies on it.
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let cycle = v["cycle"].as_i64().unwrap_or(-1);
        let text = v["text"].as_str().unwrap_or_default().to_owned();
        match v["kind"].as_str() {
            Some("ack") => acks.push(Ack {
                cycle,
                seq: v["seq"].as_i64().expect("ack seq"),
                text,
                epoch: v["epoch"].as_i64(),
                epoch_known: false,
                t: v["t"].as_i64().unwrap_or(0),
            }),
            Some("ev") => {
                event_epochs.insert((cycle, text), v["epoch"].as_i64().unwrap_or(0));
            }
            _ => {}
        }
    }
    // Within one server run a room's epoch does not change: fill unknown ones from the run.
    let mut cycle_epoch: HashMap<i64, i64> = HashMap::new();
    for a in &mut acks {
        if a.epoch.is_none() {
            a.epoch = event_epochs.get(&(a.cycle, a.text.clone())).copied();
        }
        a.epoch_known = a.epoch.is_some();
        if let Some(e) = a.epoch {
            let slot = cycle_epoch.entry(a.cycle).or_insert(e);
            *slot = (*slot).max(e);
        }
    }
    for a in &mut acks {
        if a.epoch.is_none() {
            a.epoch = Some(cycle_epoch.get(&a.cycle).copied().unwrap_or(0));
        }
    }
    acks
}

fn crash_loop(backend: Backend, durability: &str, cycles: i64) {
    let test = format!("crash loop ({durability}, {})", backend.name());
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let url = backend.url(dir.path(), &format!("crash_{durability}"));
    let cfg = config(&url, durability, durability);
    let ack_file = dir.path().join("acks.jsonl");
    let mut rng = Rng::from_env_or_time();
    let mut runs: Vec<Cycle> = Vec::new();
    let mut violations = Vec::new();

    for number in 1..=cycles {
        let mut server = TestServer::start_in(dir.path(), &cfg, &[]);
        if let Err(e) = server.wait_ready_within(Duration::from_secs(30)) {
            panic!("{test}, cycle {number}: the restarted server {e}");
        }
        let mut load = spawn_node_script(
            "crashload.mjs",
            &server.url,
            &[
                ("MODE", "load"),
                ("ROOM", "dur"),
                ("CLIENTS", "4"),
                ("INFLIGHT", "2"),
                ("CYCLE", &number.to_string()),
                ("ACK_FILE", &ack_file.display().to_string()),
                ("MAX_MS", "20000"),
            ],
        );
        if load.wait_line("STARTED", Duration::from_secs(20)).is_none() {
            panic!(
                "{test}, cycle {number}: the load script never started\n{}",
                load.transcript()
            );
        }
        let delay_ms = rng.between(300, 1500);
        std::thread::sleep(Duration::from_millis(delay_ms));
        if !load.is_running() {
            violations.push(format!(
                "cycle {number}: the load stopped before the kill (server died by itself?)\n{}",
                load.transcript()
            ));
        }
        let kill_at = now_ms();
        if std::env::var("CRASH_STOP").as_deref() == Ok("term") {
            // Harness self-check only: a graceful stop must pass every assertion below.
            let (code, took) = server.terminate(Duration::from_secs(30));
            assert_eq!(
                code,
                Some(0),
                "{test}, cycle {number}: SIGTERM exit after {took:?}"
            );
        } else {
            let (status, took) = server.kill9();
            assert!(
                status.is_some(),
                "{test}, cycle {number}: SIGKILL did not end the server within {took:?}"
            );
        }
        let code = load.wait_exit(Duration::from_secs(20));
        let load_summary = load
            .output
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.starts_with("DONE "))
            .cloned()
            .unwrap_or_else(|| format!("(no summary; exit {code:?})"));
        if code != Some(0) {
            violations.push(format!(
                "cycle {number}: the load script failed (exit {code:?})\n{}",
                load.transcript()
            ));
        }
        eprintln!("cycle {number}: killed {delay_ms} ms after the load started; {load_summary}");
        runs.push(Cycle {
            number,
            delay_ms,
            kill_at,
            load_summary,
        });
    }

    // A fresh server after the last crash: one probe trigger, then the whole history.
    let mut server = TestServer::start_in(dir.path(), &cfg, &[]);
    if let Err(e) = server.wait_ready_within(Duration::from_secs(30)) {
        panic!("{test}: the final server {e}");
    }
    let before_probe = read_rows(&url, "dur", "message");
    let mut probe = start_probe(&server, "final-probe", 15000);
    let probe_ack = probe_result(&mut probe, Duration::from_secs(20));
    let dump_file = dir.path().join("dump.json");
    let mut dump = spawn_node_script(
        "crashload.mjs",
        &server.url,
        &[
            ("MODE", "dump"),
            ("ROOM", "dur"),
            ("DUMP_FILE", &dump_file.display().to_string()),
        ],
    );
    let dump_code = dump.wait_exit(Duration::from_secs(60));
    assert_eq!(
        dump_code,
        Some(0),
        "{test}: history dump failed\n{}",
        dump.transcript()
    );
    let (code, _) = server.terminate(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "{test}: the final server did not exit cleanly on SIGTERM"
    );

    let rows = read_rows(&url, "dur", "message");
    let acks = read_acks(&ack_file);
    let table = check_stream(&rows, "table", &mut violations);
    let max_seq = table.keys().next_back().copied().unwrap_or(0);
    let max_epoch = rows.iter().map(|r| r.epoch).max().unwrap_or(0);

    // Every cycle produced acks (else the test proves nothing).
    for run in &runs {
        let n = acks.iter().filter(|a| a.cycle == run.number).count();
        if n == 0 {
            violations.push(format!(
                "cycle {}: no ack at all in {} ms of load ({})",
                run.number, run.delay_ms, run.load_summary
            ));
        }
    }

    // The probe: numbering continues right after the last stored seq.
    let before_max = before_probe.iter().map(|r| r.seq).max().unwrap_or(0);
    let before_epoch = before_probe.iter().map(|r| r.epoch).max().unwrap_or(0);
    match probe_ack.as_ref().map(|p| (&p["ack"], p)) {
        Some((ack, p)) if ack["ok"] == true => {
            let seq = ack["seq"].as_i64().unwrap_or(-1);
            if seq != before_max + 1 {
                violations.push(format!(
                    "after the last crash the first trigger got seq {seq}, expected {} (the last stored seq was {before_max})",
                    before_max + 1
                ));
            }
            // (A graceful stop, CRASH_STOP=term, need not start a new epoch.)
            if durability == "accepted" && std::env::var("CRASH_STOP").as_deref() != Ok("term") {
                let epoch = ack["epoch"].as_i64().or(p["epoch"].as_i64()).unwrap_or(0);
                if epoch <= before_epoch {
                    violations.push(format!(
                        "after a kill -9 the epoch must grow: the probe carries epoch {epoch}, the table already held epoch {before_epoch}"
                    ));
                }
            }
        }
        other => violations.push(format!(
            "the probe trigger after the last crash failed: {other:?}"
        )),
    }

    // The history the server serves is the table.
    let dumped: Value =
        serde_json::from_str(&std::fs::read_to_string(&dump_file).unwrap()).unwrap();
    let want: Vec<(i64, Option<String>, i64)> = table
        .values()
        .rev()
        .map(|r| (r.seq, r.text.clone(), r.epoch))
        .collect();
    for form in ["cursor", "offsets"] {
        let got: Vec<(i64, Option<String>, i64)> = dumped[form]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e[0].as_i64().unwrap(),
                    e[1].as_str().map(str::to_owned),
                    e[2].as_i64().unwrap_or(0),
                )
            })
            .collect();
        if got != want {
            let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
            violations.push(format!(
                "getHistory by {form} ({} events) differs from the table ({} rows); first difference at position {first_diff:?}: got {:?}, table {:?}",
                got.len(),
                want.len(),
                first_diff.and_then(|i| got.get(i)),
                first_diff.and_then(|i| want.get(i)),
            ));
        }
    }

    // Acks against the table.
    let mut by_key: HashMap<(i64, i64), Vec<&Ack>> = HashMap::new();
    let mut by_seq: HashMap<i64, Vec<&Ack>> = HashMap::new();
    for a in &acks {
        by_key
            .entry((a.epoch.unwrap_or(0), a.seq))
            .or_default()
            .push(a);
        by_seq.entry(a.seq).or_default().push(a);
    }
    let reused: Vec<_> = by_seq.iter().filter(|(_, v)| v.len() > 1).collect();
    let reused_same_epoch: Vec<_> = by_key.iter().filter(|(_, v)| v.len() > 1).collect();
    if durability == "stored" && !reused.is_empty() {
        let mut sample: Vec<_> = reused
            .iter()
            .map(|(s, v)| {
                (
                    **s,
                    v.iter()
                        .map(|a| format!("{} (cycle {})", a.text, a.cycle))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        sample.sort();
        violations.push(format!(
            "{} seqs were acked for two different events, e.g. {:?}",
            sample.len(),
            &sample[..sample.len().min(10)]
        ));
    }
    if !reused_same_epoch.is_empty() && (durability != "stored" || reused.is_empty()) {
        let mut sample: Vec<_> = reused_same_epoch
            .iter()
            .map(|(k, v)| (**k, v.iter().map(|a| a.text.clone()).collect::<Vec<_>>()))
            .collect();
        sample.sort();
        violations.push(format!(
            "{} (epoch, seq) pairs were acked for two different events, e.g. {:?}",
            sample.len(),
            &sample[..sample.len().min(10)]
        ));
    }

    // A stored event carries the epoch it was acked (and fanned out) with.
    let epoch_mismatch: Vec<String> = acks
        .iter()
        .filter(|a| a.epoch_known)
        .filter_map(|a| {
            let row = table.get(&a.seq)?;
            (row.text.as_deref() == Some(a.text.as_str()) && Some(row.epoch) != a.epoch).then(
                || {
                    format!(
                        "seq {} {:?} acked/fanned out with epoch {:?}, stored with epoch {}",
                        a.seq, a.text, a.epoch, row.epoch
                    )
                },
            )
        })
        .collect();
    if !epoch_mismatch.is_empty() {
        violations.push(format!(
            "{} stored events have another epoch than their ack/fan-out, e.g. {}",
            epoch_mismatch.len(),
            epoch_mismatch
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }

    let mut lost_per_cycle: BTreeMap<i64, Vec<&Ack>> = BTreeMap::new();
    let mut invisible: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for a in &acks {
        let row = table.get(&a.seq);
        if row.and_then(|r| r.text.as_deref()) == Some(a.text.as_str()) {
            continue;
        }
        lost_per_cycle.entry(a.cycle).or_default().push(a);
        let ack_epoch = a.epoch.unwrap_or(0);
        if durability == "accepted" {
            // A lost ack is only allowed when the crash is visible: the seq now belongs to a
            // higher epoch, or it is not stored at all and the epoch grew since.
            let visible = match row {
                Some(r) => r.epoch > ack_epoch,
                None => max_epoch > ack_epoch,
            };
            if !visible {
                invisible.entry(a.cycle).or_default().push(format!(
                    "(epoch {ack_epoch}, seq {}) {:?} → table {:?}",
                    a.seq,
                    a.text,
                    row.map(|r| (r.text.clone(), r.epoch))
                ));
            }
        }
    }
    for (cycle, list) in &invisible {
        violations.push(format!(
            "cycle {cycle}: {} acked events were lost without a higher epoch taking their seq (max epoch in the table {max_epoch}), e.g. {}",
            list.len(),
            list.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    let total_lost: usize = lost_per_cycle.values().map(Vec::len).sum();
    eprintln!(
        "{test}: {} cycles, {} acks, {} rows (max seq {max_seq}, max epoch {max_epoch}), {total_lost} acked events not in the table; {:?}",
        runs.len(),
        acks.len(),
        rows.len(),
        started.elapsed()
    );
    for run in &runs {
        let lost = lost_per_cycle
            .get(&run.number)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let in_cycle: Vec<&Ack> = acks.iter().filter(|a| a.cycle == run.number).collect();
        let recent = in_cycle
            .iter()
            .filter(|a| a.t >= run.kill_at - ACCEPTED_LOSS_WINDOW_MS)
            .count();
        eprintln!(
            "  cycle {}: {} acks, {} in the last {ACCEPTED_LOSS_WINDOW_MS} ms before the kill, {} lost",
            run.number,
            in_cycle.len(),
            recent,
            lost.len()
        );
        if lost.is_empty() {
            continue;
        }
        let describe = |a: &&Ack| {
            format!(
                "seq {} {:?} epoch {} acked {} ms before the kill, table has {:?}",
                a.seq,
                a.text,
                a.epoch.unwrap_or(0),
                run.kill_at - a.t,
                table.get(&a.seq).map(|r| (r.text.clone(), r.epoch))
            )
        };
        for a in lost.iter().take(5) {
            eprintln!("    lost: {}", describe(a));
        }
        if durability == "stored" {
            violations.push(format!(
                "cycle {} (killed {} ms into the load): {} acknowledged events are not in the table with their acked text, e.g. {}",
                run.number,
                run.delay_ms,
                lost.len(),
                lost.iter().take(5).map(describe).collect::<Vec<_>>().join("; ")
            ));
        } else {
            let old: Vec<_> = lost
                .iter()
                .filter(|a| a.t < run.kill_at - ACCEPTED_LOSS_WINDOW_MS)
                .collect();
            if lost.len() > recent || !old.is_empty() {
                violations.push(format!(
                    "cycle {}: {} acked events lost, more than the {recent} acked in the last {ACCEPTED_LOSS_WINDOW_MS} ms before the kill, or older ones ({} older, e.g. {})",
                    run.number,
                    lost.len(),
                    old.len(),
                    old.iter().take(5).map(|a| describe(a)).collect::<Vec<_>>().join("; ")
                ));
            }
        }
    }
    finish(&test, violations);
}

// ------------------------------------------------------------------ 3: the user story

fn user_story(backend: Backend) {
    let test = format!("user story ({})", backend.name());
    let dir = tempfile::tempdir().unwrap();
    let url = backend.url(dir.path(), "story");
    let cfg = repo_config(&url);
    let mut server = TestServer::start_in(dir.path(), &cfg, &[]);
    server.wait_ready();
    let (ok, _, out) = node_phase(&server, "story-fill", &[]);
    assert!(ok, "{test}: sending 250 messages failed:\n{out}");
    let (status, _) = server.kill9();
    assert!(status.is_some(), "{test}: kill -9 did not end the server");
    let stored_at_kill = read_rows(&url, "general", "message").len();
    eprintln!("{test}: {stored_at_kill} of the 250 acked messages were in the table at the kill");

    let mut server = TestServer::start_in(dir.path(), &cfg, &[]);
    if let Err(e) = server.wait_ready_within(Duration::from_secs(30)) {
        panic!("{test}: the server restarted after kill -9 {e}");
    }
    let (ok, _, out) = node_phase(&server, "story-after", &[]);
    let mut violations = Vec::new();
    if !ok {
        violations.push(format!(
            "after kill -9 ({stored_at_kill} of 250 rows were in the table at the kill):\n{}",
            failure_excerpt(&out)
        ));
    }
    let (code, _) = server.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{test}: no clean exit on SIGTERM");
    let rows = read_rows(&url, "general", "message");
    let table = check_stream(&rows, "table", &mut violations);
    let wrong: Vec<i64> = (1..=255i64)
        .filter(|seq| table.get(seq).and_then(|r| r.text.clone()) != Some(format!("m{seq}")))
        .collect();
    if !wrong.is_empty() {
        violations.push(format!(
            "after the run the table should hold m1..m255 at seqs 1..255; {} seqs do not (from {} to {}); e.g. seq {} holds {:?}",
            wrong.len(),
            wrong[0],
            wrong[wrong.len() - 1],
            wrong[0],
            table.get(&wrong[0]).map(|r| r.text.clone())
        ));
    }
    finish(&test, violations);
}

/// The failing tests and their assertion messages from a node --test run, not the whole
/// transcript (deepEqual diffs are long: only their first lines are kept).
fn failure_excerpt(out: &str) -> String {
    let lines: Vec<&str> = out.lines().collect();
    if let Some(at) = lines.iter().position(|l| l.contains("failing tests:")) {
        let mut kept = Vec::new();
        let mut diff_lines = 0;
        for l in &lines[at + 1..] {
            let t = l.trim_start();
            if (t.starts_with("+ ") || t.starts_with("- ")) && !t.starts_with("+ actual") {
                diff_lines += 1;
                if diff_lines > 12 {
                    continue;
                }
            } else if t.starts_with('✖') {
                diff_lines = 0;
            } else if !(t.contains("Error") || t.starts_with("test at")) {
                continue;
            }
            kept.push(*l);
            if kept.len() > 80 {
                break;
            }
        }
        return kept.join("\n");
    }
    let tail: Vec<&str> = lines.iter().rev().take(60).rev().copied().collect();
    tail.join("\n")
}

// ------------------------------------------------------------------ 4: delete → create race

fn delete_create_race(backend: Backend) {
    let test = format!("delete/create race ({})", backend.name());
    let dir = tempfile::tempdir().unwrap();
    let url = backend.url(dir.path(), "race");
    let cfg = config(&url, "stored", "stored");
    let mut server = TestServer::start_in(dir.path(), &cfg, &[]);
    server.wait_ready();
    let mut violations = Vec::new();
    // (room, variant): the re-create from the same connection, pipelined; and from another
    // connection, as soon as the delete lets it.
    let variants = [("race", "same"), ("race2", "other")];
    let mut outcomes = Vec::new();
    for (room, variant) in variants {
        let (ok, results, out) = node_phase(
            &server,
            "race",
            &[
                ("ROOM", room),
                ("VARIANT", variant),
                ("OLD", "200"),
                ("NEW", "50"),
            ],
        );
        if !ok {
            violations.push(format!(
                "room {room} (re-created by the {variant} connection), through the socket:\n{}",
                failure_excerpt(&out)
            ));
        }
        let r = results
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("{test}: no RESULT from the race phase ({room}):\n{out}"));
        outcomes.push((room, variant, r));
    }
    // Graceful stop: whatever the durability mode, every acked event is then in the table.
    let (code, _) = server.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{test}: no clean exit on SIGTERM");
    for (room, variant, r) in &outcomes {
        let acks = |k: &str| -> Vec<Value> { r[k].as_array().cloned().unwrap_or_default() };
        let acked: Vec<(i64, String)> = acks("old")
            .iter()
            .chain(acks("fresh").iter())
            .filter(|a| a["ok"] == true)
            .map(|a| {
                (
                    a["seq"].as_i64().unwrap(),
                    a["text"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let old_ok = acks("old").iter().filter(|a| a["ok"] == true).count();
        let failed: Vec<Value> = acks("old")
            .iter()
            .chain(acks("fresh").iter())
            .filter(|a| a["ok"] != true)
            .take(3)
            .cloned()
            .collect();
        eprintln!(
            "{test}, {room} ({variant}): the old room acked {old_ok}/200, the re-created one {}/50 (createRoom attempts {}); failures e.g. {failed:?}",
            acked.len() - old_ok,
            r["attempts"]
        );
        let rows = read_rows(&url, room, "message");
        let what = format!("table (room {room}, re-created by the {variant} connection)");
        let table = check_stream(&rows, &what, &mut violations);
        if rows.len() != acked.len() {
            violations.push(format!(
                "{what}: {} rows, but {} triggers were acked ({old_ok} in the old room)",
                rows.len(),
                acked.len()
            ));
        }
        let wrong: Vec<String> = acked
            .iter()
            .filter_map(|(seq, text)| {
                let got = table.get(seq).and_then(|r| r.text.clone());
                (got.as_deref() != Some(text.as_str()))
                    .then(|| format!("seq {seq} acked for {text:?}, table holds {got:?}"))
            })
            .collect();
        if !wrong.is_empty() {
            violations.push(format!(
                "{what}: {} acked events are not in the table as acked, e.g. {}",
                wrong.len(),
                wrong.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            ));
        }
    }
    finish(&test, violations);
}

// ------------------------------------------------------------------ 5: two processes, one database

/// The standby must not serve `dur` while the owner holds it: for the whole of `watch`,
/// /readyz answers 503 with roomsRestoring > 0, and a trigger sent to it at the start gets an
/// error or no answer yet. Returns the probe (still waiting, or done with an error).
fn assert_not_serving(
    standby: &TestServer,
    name: &str,
    watch: Duration,
    violations: &mut Vec<String>,
) -> common::NodeProcess {
    let probe = start_probe(standby, &format!("{name}-probe"), 60_000);
    let started = Instant::now();
    let mut bad: Option<(Duration, u16, Value)> = None;
    let (mut polls, mut bad_polls) = (0, 0);
    while started.elapsed() < watch {
        let (status, body) = standby.readyz();
        polls += 1;
        let restoring = body["roomsRestoring"].as_u64().unwrap_or(0);
        if status != 503 || restoring == 0 {
            bad_polls += 1;
            bad.get_or_insert((started.elapsed(), status, body));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some((at, status, body)) = bad {
        violations.push(format!(
            "{name} must not be ready while the owner holds room dur, but {bad_polls} of {polls} /readyz polls over {watch:?} said otherwise, the first after {at:?}: {status} {body}"
        ));
    }
    // Early answers: an error is fine, a success is a second writer.
    let early = probe
        .output
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| l.strip_prefix("RESULT ").map(str::to_owned));
    match early {
        Some(line) => {
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["ack"]["ok"] == true {
                violations.push(format!(
                    "a trigger sent to {name} while the owner held the room was acked: {v}"
                ));
            } else {
                eprintln!(
                    "{name} answered a trigger with an error while the owner held the room: {v}"
                );
            }
        }
        None => eprintln!("{name} holds a trigger while the owner holds the room"),
    }
    probe
}

/// The probe sent to the standby: after the takeover it must be an error or the next seq.
fn check_probe(
    probe: &mut common::NodeProcess,
    name: &str,
    released_at: i64,
    next_seq: i64,
    violations: &mut Vec<String>,
) -> Option<(i64, String)> {
    let result = probe_result(probe, Duration::from_secs(30));
    probe.wait_exit(Duration::from_secs(5));
    let Some(v) = result else {
        violations.push(format!(
            "the trigger sent to {name} during the takeover never got an answer\n{}",
            probe.transcript()
        ));
        return None;
    };
    if v["ack"]["ok"] != true {
        eprintln!("{name}'s early trigger was answered with {v}");
        return None;
    }
    let seq = v["ack"]["seq"].as_i64().unwrap_or(-1);
    let t = v["t"].as_i64().unwrap_or(0);
    if t < released_at {
        violations.push(format!(
            "{name} acked the early trigger (seq {seq}) {} ms before the owner was stopped",
            released_at - t
        ));
    }
    if seq != next_seq {
        violations.push(format!(
            "{name} acked the early trigger with seq {seq}, the next seq was {next_seq}"
        ));
    }
    Some((seq, format!("{name}-probe")))
}

fn fill(
    server: &TestServer,
    prefix: &str,
    count: usize,
    first: i64,
    what: &str,
    violations: &mut Vec<String>,
) -> Vec<(i64, String)> {
    let (ok, results, out) = node_phase(
        server,
        "fill",
        &[
            ("ROOM", "dur"),
            ("PREFIX", prefix),
            ("COUNT", &count.to_string()),
        ],
    );
    let Some(r) = results.first().filter(|_| ok) else {
        violations.push(format!(
            "{what}: the fill script failed:\n{}",
            failure_excerpt(&out)
        ));
        return Vec::new();
    };
    let acks = r["acks"].as_array().unwrap();
    let mut out_acks = Vec::new();
    let mut wrong = Vec::new();
    for (i, a) in acks.iter().enumerate() {
        let want = first + i as i64;
        if a["ok"] != true || a["seq"].as_i64() != Some(want) {
            wrong.push(format!("{} → {a} (expected seq {want})", a["text"]));
        }
        if a["ok"] == true {
            out_acks.push((
                a["seq"].as_i64().unwrap(),
                a["text"].as_str().unwrap().to_owned(),
            ));
        }
    }
    if !wrong.is_empty() || acks.len() != count {
        violations.push(format!(
            "{what}: {count} triggers should get seqs {first}..{}; {} did not (join {}), e.g. {}",
            first + count as i64 - 1,
            wrong.len() + count - acks.len(),
            r["join"],
            wrong.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    out_acks
}

fn check_table(url: &str, acked: &[(i64, String)], what: &str, violations: &mut Vec<String>) {
    let rows = read_rows(url, "dur", "message");
    let table = check_stream(&rows, what, violations);
    let mut wrong = Vec::new();
    for (seq, text) in acked {
        let got = table.get(seq).and_then(|r| r.text.clone());
        if got.as_deref() != Some(text.as_str()) {
            wrong.push(format!("seq {seq} acked for {text:?}, table holds {got:?}"));
        }
    }
    if !wrong.is_empty() {
        violations.push(format!(
            "{what}: {} acked events are not in the table as acked, e.g. {}",
            wrong.len(),
            wrong.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
}

#[test]
fn postgres_two_processes_one_database() {
    let Some(Backend::Postgres(pg)) = postgres() else {
        return;
    };
    let test = "two processes on one database";
    let url = rt().block_on(pg.create_db("rolling"));
    let cfg = config(&url, "stored", "stored");
    let (dir_a, dir_b, dir_c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut violations = Vec::new();
    let mut acked: Vec<(i64, String)> = Vec::new();

    // A owns the room and takes 100 triggers.
    let mut a = TestServer::start_in(dir_a.path(), &cfg, &[]);
    a.wait_ready();
    acked.extend(fill(
        &a,
        "a",
        100,
        1,
        "A (the first owner)",
        &mut violations,
    ));

    // B starts on the same database: it must wait while A holds the room (lease renewed
    // past its timeout: watch longer than LEASE_MS).
    let mut b = TestServer::start_in(dir_b.path(), &cfg, &[]);
    let mut probe_b = assert_not_serving(
        &b,
        "B",
        Duration::from_millis(LEASE_MS * 2 + 1000),
        &mut violations,
    );
    // A, still the owner, goes on serving writes.
    acked.extend(fill(&a, "a2", 10, 101, "A while B waits", &mut violations));

    // Graceful hand-over: SIGTERM A, then B becomes ready within a few seconds.
    let released_at = now_ms();
    let (code, took) = a.terminate(Duration::from_secs(30));
    if code != Some(0) {
        violations.push(format!(
            "A did not exit cleanly on SIGTERM ({code:?} after {took:?})"
        ));
    }
    match b.wait_ready_within(Duration::from_secs(10)) {
        Ok(t) => eprintln!("{test}: B ready {t:?} after A exited (A's shutdown took {took:?})"),
        Err(e) => violations.push(format!("B after A's graceful exit: {e}")),
    }
    let mut next = 111;
    if let Some(p) = check_probe(&mut probe_b, "B", released_at, next, &mut violations) {
        acked.push(p);
        next += 1;
    }
    acked.extend(fill(
        &b,
        "b",
        100,
        next,
        "B after the graceful hand-over",
        &mut violations,
    ));
    next += 100;
    check_table(
        &url,
        &acked,
        "after the graceful hand-over",
        &mut violations,
    );

    // Crash hand-over: C waits while B holds the room; kill -9 B; C takes over after about
    // the lease timeout.
    let c = TestServer::start_in(dir_c.path(), &cfg, &[]);
    let mut probe_c = assert_not_serving(
        &c,
        "C",
        Duration::from_millis(LEASE_MS * 2 + 1000),
        &mut violations,
    );
    let killed_at = now_ms();
    let kill_instant = Instant::now();
    let (status, _) = b.kill9();
    assert!(status.is_some(), "{test}: kill -9 did not end B");
    match c.wait_ready_within(Duration::from_millis(LEASE_MS + 10_000)) {
        Ok(_) => eprintln!(
            "{test}: C ready {:?} after kill -9 of B (lease timeout {LEASE_MS} ms)",
            kill_instant.elapsed()
        ),
        Err(e) => violations.push(format!(
            "C after kill -9 of B (lease timeout {LEASE_MS} ms): {e}"
        )),
    }
    if let Some(p) = check_probe(&mut probe_c, "C", killed_at, next, &mut violations) {
        acked.push(p);
        next += 1;
    }
    acked.extend(fill(
        &c,
        "c",
        100,
        next,
        "C after kill -9 of B",
        &mut violations,
    ));
    check_table(&url, &acked, "after the crash hand-over", &mut violations);
    drop(c);
    finish(test, violations);
}

// ------------------------------------------------------------------ SQLite

#[test]
fn sqlite_crash_loop_stored_loses_no_ack() {
    crash_loop(Backend::Sqlite, "stored", 10);
}

#[test]
fn sqlite_crash_loop_accepted_reuses_no_epoch_seq() {
    crash_loop(Backend::Sqlite, "accepted", 5);
}

#[test]
fn sqlite_kill9_user_story() {
    user_story(Backend::Sqlite);
}

#[test]
fn sqlite_delete_create_race_continues_numbering() {
    delete_create_race(Backend::Sqlite);
}

// ------------------------------------------------------------------ PostgreSQL

#[test]
fn postgres_crash_loop_stored_loses_no_ack() {
    if let Some(pg) = postgres() {
        crash_loop(pg, "stored", 10);
    }
}

#[test]
fn postgres_crash_loop_accepted_reuses_no_epoch_seq() {
    if let Some(pg) = postgres() {
        crash_loop(pg, "accepted", 5);
    }
}

#[test]
fn postgres_kill9_user_story() {
    if let Some(pg) = postgres() {
        user_story(pg);
    }
}

#[test]
fn postgres_delete_create_race_continues_numbering() {
    if let Some(pg) = postgres() {
        delete_create_race(pg);
    }
}
