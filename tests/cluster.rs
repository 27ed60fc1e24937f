//! The cluster through Redis (issue 14; `docs/cluster.md` is the plan). Membership: nodes
//! on one PostgreSQL database and one Redis see each other come and go (a `kill -9` within
//! the lease, a clean stop at once), and a node without Redis is not ready until Redis is
//! back. Rooms spread over the nodes (below): every event once and in order on every node, a
//! room owner's `kill -9` and SIGTERM under traffic, rooms created at run time, a Redis
//! outage. Real servers: a throwaway PostgreSQL and `redis-server`, three nodes.

mod common;

use common::pg::Postgres;
use common::redis::Redis;
use common::{rt, run_node_tests, spawn_node_script, NodeProcess, TestServer};
use serde_json::Value;
use std::time::{Duration, Instant};

fn config(db: &str, redis: &str) -> String {
    format!(
        r#"
server: {{ host: 127.0.0.1, port: 0 }}
database: {{ url: "{db}" }}
cluster: {{ redis: "{redis}", leaseTimeout: 1000 }}
events:
  message: {{ history: {{ limit: 10 }} }}
"#
    )
}

/// Waits up to `limit` for the node's `/readyz` to satisfy `ok`; the last answer.
fn readyz_until(
    node: &TestServer,
    limit: Duration,
    ok: impl Fn(u16, &Value) -> bool,
) -> (u16, Value) {
    let started = Instant::now();
    loop {
        let (status, body) = node.readyz();
        if ok(status, &body) || started.elapsed() > limit {
            return (status, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A gauge's value in the node's `/metrics`.
fn metric(node: &TestServer, name: &str) -> Option<i64> {
    let (_, text) = node.http_get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn nodes(body: &Value) -> Vec<String> {
    body["nodes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn nodes_see_each_other_come_and_go_and_redis_outages() {
    let Some(pg) = Postgres::start() else { return };
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let url = rt().block_on(pg.create_db("cluster"));
    let config = config(&url, &redis.url());
    let mut servers: Vec<TestServer> = (0..3).map(|_| TestServer::start(&config)).collect();
    let names: Vec<String> = servers
        .iter()
        .map(|s| {
            readyz_until(s, Duration::from_secs(10), |_, b| b["node"].is_string()).1["node"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for s in &servers {
        let (status, body) = readyz_until(s, Duration::from_secs(10), |_, b| nodes(b).len() == 3);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["redis"], "available", "{body}");
        let mut want = names.clone();
        want.sort();
        assert_eq!(nodes(&body), want, "every node sees the three: {body}");
    }
    assert_eq!(metric(&servers[0], "dialogue_cluster_nodes"), Some(3));
    assert_eq!(metric(&servers[0], "dialogue_cluster_redis_up"), Some(1));

    // kill -9: gone from the others' view once its heartbeat runs out (leaseTimeout 1 s).
    servers[2].kill9();
    let (_, body) = readyz_until(&servers[0], Duration::from_secs(10), |_, b| {
        nodes(b).len() == 2
    });
    assert!(
        !nodes(&body).contains(&names[2]),
        "the killed node is gone: {body}"
    );
    // A clean stop leaves the set before the process ends (not when its lease runs out).
    let (code, _) = servers[1].terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0));
    let members = redis.members("dlg:nodes");
    assert!(
        !members.contains(&names[1]),
        "a clean stop left: {members:?}"
    );
    let (_, body) = readyz_until(&servers[0], Duration::from_secs(5), |_, b| {
        nodes(b).len() == 1
    });
    assert_eq!(nodes(&body), vec![names[0].clone()], "{body}");

    // Redis down: the node is not ready (it cannot know the others); back: ready again.
    redis.stop_server();
    let (status, body) = readyz_until(&servers[0], Duration::from_secs(10), |s, _| s == 503);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["redis"], "unavailable", "{body}");
    assert_eq!(metric(&servers[0], "dialogue_cluster_redis_up"), Some(0));
    redis.start_server();
    let (status, body) = readyz_until(&servers[0], Duration::from_secs(15), |s, _| s == 200);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        nodes(&body),
        vec![names[0].clone()],
        "it joined again: {body}"
    );
    assert!(servers[0].is_running());
}

/// A node that cannot reach Redis at start-up stops with an error naming `cluster.redis`.
#[test]
fn unreachable_redis_stops_the_start() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        "sqlite://d.db?mode=rwc",
        &format!("redis://127.0.0.1:{port}"),
    );
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dialogue"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .current_dir(dir.path())
        .env("PORT", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cluster.redis"), "{stderr}");
}

/// Starts three processes at the same moment on one fresh database; all must come up (they
/// race to apply the migrations). Spawned from this thread, not through [`TestServer`], so
/// that none waits for another's start.
fn three_at_once(db: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ host: 127.0.0.1 }}\ndatabase: {{ url: \"{db}\" }}\n\
             events:\n  message: {{ history: {{ limit: 10 }} }}\n"
        ),
    )
    .unwrap();
    let free_port = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let log_of = |port: u16| dir.path().join(format!("node-{port}.log"));
    let spawn = |port: u16| {
        let log = std::fs::File::create(log_of(port)).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dialogue"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .env("PORT", port.to_string())
            .env_remove("DATABASE_URL")
            .stdout(std::process::Stdio::null())
            .stderr(log);
        common::die_with_parent(&mut cmd);
        cmd.spawn().unwrap()
    };
    let mut ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut children: Vec<std::process::Child> = ports.iter().map(|p| spawn(*p)).collect();
    let started = Instant::now();
    let mut ready = vec![false; 3];
    let mut port_taken = 0;
    while !ready.iter().all(|r| *r) && started.elapsed() < Duration::from_secs(30) {
        for (i, child) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(log_of(ports[i])).unwrap_or_default();
                // The free port was taken by another test's process meanwhile: not this
                // test's subject; that node starts again on another port.
                if log.contains("in use") && port_taken < 3 {
                    port_taken += 1;
                    ports[i] = free_port();
                    *child = spawn(ports[i]);
                    continue;
                }
                panic!("node {i} stopped at start: {status}\n{log}");
            }
            ready[i] = ready[i] || ready_at(ports[i]);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(ready, vec![true; 3], "every node became ready");
}

/// True when `GET /readyz` on `port` answers 200.
fn ready_at(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

#[test]
fn nodes_started_at_once_on_a_fresh_sqlite_database_all_start() {
    let dir = tempfile::tempdir().unwrap();
    three_at_once(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fresh.db").display()
    ));
}

#[test]
fn nodes_started_at_once_on_a_fresh_postgres_database_all_start() {
    let Some(pg) = Postgres::start() else { return };
    three_at_once(&rt().block_on(pg.create_db("fresh")));
}

// ---------------------------------------------------------------------------------------
// Rooms spread over the nodes (docs/cluster.md, steps 3–8): each room owned by one node,
// clients of any room on any node. Three nodes on one PostgreSQL database and one Redis; the
// clients are the Node scripts `tests/js/cluster*.mjs` (the stock socket.io-client), given
// every node's URL in `DIALOGUE_NODES`. The scripts find a room's owner in `/api/stats`
// (`role`, `owner`) and `/readyz` (`node`); this side stops nodes and Redis when a script
// asks (a `KILL`/`TERM`/`STOP_REDIS`/`START_REDIS` line) and says it is done by writing a
// phase name to `PHASE_FILE`. A failing script's output is printed with each node's view of
// the rooms and the end of its log. `DIALOGUE_TEST_LOG=1` shows the nodes' logs live.

fn rooms_config(db: &str, redis: &str) -> String {
    format!(
        r#"
server: {{ host: 127.0.0.1, port: 0 }}
database: {{ url: "{db}", leaseTimeout: 1000 }}
cluster: {{ redis: "{redis}", leaseTimeout: 1000 }}
api: {{ keys: ["test-key"] }}
limits: {{ triggersPerSecond: 0, historyRequestsPerMinute: 0 }}
events:
  message: {{ history: {{ limit: 50 }}, schema: {{ type: object }} }}
rooms:
  lobby: {{ name: Lobby, events: [message] }}
  ops: {{ name: Ops, events: [message] }}
  chat: {{ name: Chat, events: [message] }}
"#
    )
}

/// Three nodes of one cluster, with their database and Redis (dropped in this order: the
/// nodes first).
struct Cluster {
    servers: Vec<TestServer>,
    /// Each node's name (`/readyz` `node`), by index.
    names: Vec<String>,
    redis: Redis,
    _pg: Postgres,
    /// Holds `PHASE_FILE`.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts PostgreSQL, Redis and three nodes, and waits until every node is ready and
    /// sees the three; `None` (skip) without PostgreSQL or Redis.
    fn start(db: &str) -> Option<Cluster> {
        let pg = Postgres::start()?;
        let redis = Redis::start()?;
        let url = rt().block_on(pg.create_db(db));
        let config = rooms_config(&url, &redis.url());
        let servers: Vec<TestServer> = (0..3).map(|_| TestServer::start(&config)).collect();
        let mut cluster = Cluster {
            servers,
            names: Vec::new(),
            redis,
            _pg: pg,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        for s in &cluster.servers {
            let (status, body) = readyz_until(s, Duration::from_secs(30), |status, b| {
                status == 200 && nodes(b).len() == 3
            });
            if status != 200 || nodes(&body).len() != 3 {
                panic!(
                    "{} is not ready with three nodes: {status} {body}\n{}",
                    s.url,
                    cluster.diagnostics()
                );
            }
            cluster
                .names
                .push(body["node"].as_str().unwrap_or_default().to_owned());
        }
        println!(
            "nodes: {:?}",
            cluster
                .servers
                .iter()
                .zip(&cluster.names)
                .map(|(s, n)| format!("{n} = {}", s.url))
                .collect::<Vec<_>>()
        );
        Some(cluster)
    }

    fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|s| s.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn phase_file(&self) -> String {
        self.dir.path().join("phase").to_string_lossy().into_owned()
    }

    /// Tells the script that `name` happened.
    fn phase(&self, name: &str) {
        std::fs::write(self.phase_file(), name).expect("write the phase file");
    }

    /// Starts a plain Node script against the three nodes.
    fn script(&self, script: &str, extra: &[(&str, &str)]) -> NodeProcess {
        let (nodes, phase) = (self.urls(), self.phase_file());
        let mut env = vec![
            ("DIALOGUE_NODES", nodes.as_str()),
            ("DIALOGUE_API_KEY", "test-key"),
            ("PHASE_FILE", phase.as_str()),
        ];
        env.extend_from_slice(extra);
        spawn_node_script(script, &self.servers[0].url, &env)
    }

    /// Runs a `node --test` file against the three nodes; on failure, adds the nodes' views.
    fn node_tests(&self, script: &str) -> Vec<Value> {
        let (nodes, phase) = (self.urls(), self.phase_file());
        let env = [
            ("DIALOGUE_NODES", nodes.as_str()),
            ("DIALOGUE_API_KEY", "test-key"),
            ("PHASE_FILE", phase.as_str()),
        ];
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_node_tests(script, &self.servers[0], &env)
        }));
        match run {
            Ok(results) => results,
            Err(e) => {
                eprintln!("{}", self.diagnostics());
                std::panic::resume_unwind(e)
            }
        }
    }

    /// Waits for the script's line starting with `prefix`; its rest. Panics with everything
    /// known when it does not come.
    fn expect_line(&self, script: &mut NodeProcess, prefix: &str, limit: Duration) -> String {
        match script.wait_line(prefix, limit) {
            Some(rest) => rest,
            None => panic!(
                "no `{prefix}` line from the script within {limit:?}\n{}\n{}",
                script.transcript(),
                self.diagnostics()
            ),
        }
    }

    /// Waits for the script's end; panics with its output and the nodes' views unless it
    /// exited 0. Returns its `RESULT` values.
    fn finish(&self, script: &mut NodeProcess, what: &str, limit: Duration) -> Vec<Value> {
        let code = script.wait_exit(limit);
        let transcript = script.transcript();
        println!("{transcript}");
        if code != Some(0) {
            panic!(
                "{what}: the script {} (exit {code:?})\n{transcript}\n{}",
                if code.is_none() {
                    "did not finish"
                } else {
                    "found problems"
                },
                self.diagnostics()
            );
        }
        script.results()
    }

    /// Every node's readiness, its view of each room (role, owner) and the end of its log.
    fn diagnostics(&self) -> String {
        let mut out = String::from("--- the nodes ---\n");
        for (i, s) in self.servers.iter().enumerate() {
            let name = self.names.get(i).map(String::as_str).unwrap_or("?");
            let (status, readyz) = s.readyz();
            out += &format!("node {i} {name} at {}: /readyz {status} {readyz}\n", s.url);
            let (status, stats) =
                s.http_get_with("/api/stats", &[("Authorization", "Bearer test-key")]);
            let stats: Value = stats
                .find('{')
                .zip(stats.rfind('}'))
                .and_then(|(a, b)| serde_json::from_str(&stats[a..=b]).ok())
                .unwrap_or(Value::Null);
            if let Some(rooms) = stats["rooms"].as_array() {
                for room in rooms {
                    let last_seq: Vec<String> = room["history"]
                        .as_array()
                        .map(|h| {
                            h.iter()
                                .map(|e| format!("{}:{}/{}", e["event"], e["lastSeq"], e["stored"]))
                                .collect()
                        })
                        .unwrap_or_default();
                    out += &format!(
                        "  room {} role {} owner {} answering {} members {} seq/stored {:?}\n",
                        room["id"],
                        room["role"],
                        room["owner"],
                        room["answering"],
                        room["members"],
                        last_seq
                    );
                }
            } else {
                out += &format!("  /api/stats: {status}\n");
            }
            let log = s.log.lock().map(|l| l.clone()).unwrap_or_default();
            let notable: Vec<&String> = log
                .iter()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
                .collect();
            out += &format!("  last warnings/errors of {} log lines:\n", log.len());
            for line in notable.iter().rev().take(20).rev() {
                out += &format!("    {line}\n");
            }
            out += "  log tail:\n";
            for line in log.iter().rev().take(30).rev() {
                out += &format!("    {line}\n");
            }
        }
        out
    }

    /// No node panicked, and every node not in `gone` still runs.
    fn assert_healthy(&mut self, gone: &[usize]) {
        for i in 0..self.servers.len() {
            if !gone.contains(&i) && !self.servers[i].is_running() {
                panic!("node {i} stopped\n{}", self.diagnostics());
            }
            if self.servers[i].log_contains("panicked") {
                panic!("node {i} panicked\n{}", self.diagnostics());
            }
        }
    }

    /// The node a `KILL {"index","name"}` / `TERM …` line names, checked against the names.
    fn victim(&self, line: &str) -> usize {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        let index = v["index"].as_u64().map(|i| i as usize);
        match index {
            Some(i) if i < self.servers.len() && v["name"] == self.names[i].as_str() => i,
            _ => panic!(
                "the script named no node of {:?} to stop: {line}\n{}",
                self.names,
                self.diagnostics()
            ),
        }
    }
}

/// Two clients on each node, all members of lobby, ops and chat, each triggering 20 messages
/// into each room without waiting for acks: every client ends with every event of each room
/// exactly once, seq 1..120 in arrival order, the same sequence on all six, and the history
/// on every node (`GET /api/rooms/{room}/history/message`) is that sequence.
#[test]
fn clients_on_every_node_get_every_event_once_in_order() {
    let Some(mut cluster) = Cluster::start("every_event") else {
        return;
    };
    let results = cluster.node_tests("cluster-order.test.mjs");
    println!("{results:?}");
    assert_eq!(results.len(), 1, "{results:?}");
    cluster.assert_healthy(&[]);
}

/// `kill -9` of `lobby`'s owner while clients on the two other nodes send into it every
/// 20 ms (retrying STORAGE_UNAVAILABLE): another node takes the room over within a few
/// seconds (epoch + 1) and continues the seqs; every acked payload is in the history, which
/// is 1..N without gap and the same on both survivors; no seq names two payloads on any
/// client; every surviving client got every event once, in order; the client that was on the
/// killed node resumes on a survivor with `since`/`epoch` and gets exactly what it missed.
#[test]
fn killing_a_busy_rooms_owner_loses_no_acked_event() {
    let Some(mut cluster) = Cluster::start("kill_owner") else {
        return;
    };
    let mut script = cluster.script("cluster-failover.mjs", &[("MODE", "kill")]);
    let line = cluster.expect_line(&mut script, "KILL ", Duration::from_secs(90));
    let victim = cluster.victim(&line);
    let (status, took) = cluster.servers[victim].kill9();
    assert!(
        status.is_some(),
        "node {victim} did not die within {took:?}"
    );
    println!(
        "killed node {victim} ({}) in {took:?}",
        cluster.names[victim]
    );
    cluster.phase("stopped");
    let results = cluster.finish(
        &mut script,
        "kill -9 of a busy room's owner",
        Duration::from_secs(200),
    );
    assert_eq!(results.len(), 1, "{results:?}");
    let result = &results[0];
    assert_eq!(
        result["oldOwner"],
        cluster.names[victim].as_str(),
        "{result}"
    );
    assert_ne!(result["newOwner"], result["oldOwner"], "{result}");
    cluster.assert_healthy(&[victim]);
}

/// SIGTERM of `lobby`'s owner under the same load: it hands its rooms over; not one trigger
/// sent to a surviving node fails (they wait, then are accepted), everything acked is in the
/// history and reached every surviving client, the epoch stays, and the old owner exits 0.
#[test]
fn sigterm_hands_rooms_over_during_traffic() {
    let Some(mut cluster) = Cluster::start("sigterm_owner") else {
        return;
    };
    let mut script = cluster.script("cluster-failover.mjs", &[("MODE", "term")]);
    let line = cluster.expect_line(&mut script, "TERM ", Duration::from_secs(90));
    let victim = cluster.victim(&line);
    let (code, took) = cluster.servers[victim].terminate(Duration::from_secs(30));
    println!(
        "SIGTERM: node {victim} ({}) exited {code:?} after {took:?}",
        cluster.names[victim]
    );
    cluster.phase("stopped");
    let results = cluster.finish(
        &mut script,
        "SIGTERM of a busy room's owner",
        Duration::from_secs(200),
    );
    assert_eq!(
        code,
        Some(0),
        "the old owner exits 0 after SIGTERM (it took {took:?})\n{}",
        cluster.diagnostics()
    );
    assert_eq!(results.len(), 1, "{results:?}");
    let result = &results[0];
    assert_eq!(
        result["oldOwner"],
        cluster.names[victim].as_str(),
        "{result}"
    );
    assert_eq!(result["failed"], 0, "{result}");
    cluster.assert_healthy(&[victim]);
}

/// A room created at run time on node A (`dialogue:createRoom`) is listed on node C
/// (`dialogue:listRooms`, `GET /api/rooms`) within a second, joined and used there and from
/// every node; deleted on A, it is gone from C within a second. The same for a room created
/// with `POST /api/rooms` on B.
#[test]
fn a_room_created_on_one_node_is_used_on_another() {
    let Some(mut cluster) = Cluster::start("runtime_rooms") else {
        return;
    };
    let results = cluster.node_tests("cluster-rooms.test.mjs");
    println!("{results:?}");
    cluster.assert_healthy(&[]);
}

/// Redis stopped under traffic on every node: within about `leaseTimeout` every node's
/// `/readyz` is 503 and no node accepts a trigger (STORAGE_UNAVAILABLE, or held) until Redis
/// is back; nothing acked is lost; after Redis starts again, within about 10 s every node
/// takes triggers into every room and events reach the clients on every node, each exactly
/// once, in order.
#[test]
fn redis_outage_stops_writes_and_recovers() {
    let Some(mut cluster) = Cluster::start("redis_outage") else {
        return;
    };
    let mut script = cluster.script("cluster-redis.mjs", &[]);
    let mut failures = Vec::new();

    cluster.expect_line(&mut script, "STOP_REDIS", Duration::from_secs(90));
    cluster.redis.stop_server();
    let stopped = Instant::now();
    cluster.phase("redis-down");
    for (i, s) in cluster.servers.iter().enumerate() {
        let left = Duration::from_secs(5).saturating_sub(stopped.elapsed());
        let (status, body) = readyz_until(s, left, |status, _| status == 503);
        println!(
            "node {i}: /readyz {status} {:?} after Redis stopped",
            stopped.elapsed()
        );
        if status != 503 || body["redis"] != "unavailable" {
            failures.push(format!(
                "node {i} ({}): /readyz {status} {body} {:?} after Redis stopped (expected 503, redis unavailable)",
                cluster.names[i],
                stopped.elapsed()
            ));
        }
    }

    cluster.expect_line(&mut script, "START_REDIS", Duration::from_secs(60));
    cluster.redis.start_server();
    let started = Instant::now();
    cluster.phase("redis-up");
    for (i, s) in cluster.servers.iter().enumerate() {
        let left = Duration::from_secs(15).saturating_sub(started.elapsed());
        let (status, body) =
            readyz_until(s, left, |status, b| status == 200 && nodes(b).len() == 3);
        println!(
            "node {i}: /readyz {status} {:?} after Redis started",
            started.elapsed()
        );
        if status != 200 || nodes(&body).len() != 3 {
            failures.push(format!(
                "node {i} ({}): /readyz {status} {body} {:?} after Redis started again (expected 200 with three nodes)",
                cluster.names[i],
                started.elapsed()
            ));
        }
    }

    let results = cluster.finish(&mut script, "Redis outage", Duration::from_secs(200));
    println!("{results:?}");
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        cluster.diagnostics()
    );
    assert_eq!(results.len(), 1, "{results:?}");
    cluster.assert_healthy(&[]);
}

/// nginx (Debian's package) in front of the three nodes, with `docs/nginx.conf` — the file
/// users copy — given this run's ports. A long-polling client (its session's requests must
/// stick to one node) and a WebSocket client go through nginx, a third client straight to
/// another node; they chat; the node nginx sends them to is killed (-9); both reconnect
/// through nginx to another node and recover, while the direct client goes on; every client
/// ends with every acknowledged message once, in order, as the history has them
/// (`tests/js/cluster-nginx.mjs`). With `CI` set, a missing nginx fails the test.
#[test]
fn nginx_in_front_of_the_cluster() {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists());
    let Some(nginx) = nginx else {
        assert!(
            std::env::var_os("CI").is_none(),
            "nginx not found and CI is set (apt-get install nginx-light)"
        );
        eprintln!("skipping: nginx not found");
        return;
    };
    let Some(mut cluster) = Cluster::start("nginx") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let documented =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/nginx.conf"))
            .expect("docs/nginx.conf");
    // The documented file, with this run's ports and paths (nothing else changes).
    let mut upstreams = cluster.servers.iter().map(|s| s.addr().port());
    let conf: Vec<String> = documented
        .lines()
        .map(|line| {
            let t = line.trim_start();
            if t.starts_with("server 127.0.0.1:") {
                let port = upstreams
                    .next()
                    .expect("three upstream lines for three nodes");
                format!("    server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;")
            } else if t.starts_with("listen ") {
                format!("    listen 127.0.0.1:{port};")
            } else if t.starts_with("http {") {
                let d = dir.path().display();
                format!(
                    "http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
                     proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
                     uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;"
                )
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert!(
        upstreams.next().is_none(),
        "docs/nginx.conf lists three nodes"
    );
    let d = dir.path().display();
    let conf = format!(
        "daemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n{}\n",
        conf.join("\n")
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let mut cmd = std::process::Command::new(nginx);
    cmd.arg("-c").arg(&conf_path).arg("-p").arg(dir.path());
    common::die_with_parent(&mut cmd);
    let mut proxy = cmd.spawn().expect("start nginx");
    /// Stops nginx with SIGTERM (its master then stops its workers; SIGKILL would leave them).
    struct StopOnDrop(std::process::Child);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            let pid = self.0.id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status();
            let _ = self.0.wait();
        }
    }
    // Through nginx, with a Host header as clients send it.
    let ready = || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        let _ = s.write_all(request.as_bytes());
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    };
    let started = Instant::now();
    while !ready() {
        if let Ok(Some(status)) = proxy.try_wait() {
            panic!(
                "nginx stopped: {status}\n{}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nginx did not answer /readyz"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _proxy = StopOnDrop(proxy);
    let nginx_url = format!("http://127.0.0.1:{port}");
    let mut script = cluster.script("cluster-nginx.mjs", &[("NGINX_URL", &nginx_url)]);
    let line = cluster.expect_line(&mut script, "KILL ", Duration::from_secs(60));
    let victim = cluster.victim(&line);
    cluster.servers[victim].kill9();
    cluster.phase("killed");
    let results = cluster.finish(&mut script, "chat through nginx", Duration::from_secs(150));
    assert_eq!(results.len(), 1, "{results:?}");
    println!("{}", results[0]);
    cluster.assert_healthy(&[victim]);
}

/// Presence across the nodes (`tests/js/cluster-presence.mjs`): in a presence room created on
/// node 0, members on three nodes are told of each other, `dialogue:presence` and
/// `GET /api/rooms/{id}/presence` list every node's users on any node, a user's second
/// connection on another node is no news, a leave is told everywhere, and the users of a
/// node killed (-9) are told gone once its heartbeat runs out.
#[test]
fn cluster_presence_spans_the_nodes() {
    let Some(mut cluster) = Cluster::start("presence") else {
        return;
    };
    let mut script = cluster.script("cluster-presence.mjs", &[]);
    let line = cluster.expect_line(&mut script, "KILL ", Duration::from_secs(60));
    let victim = cluster.victim(&line);
    cluster.servers[victim].kill9();
    cluster.phase("stopped");
    let results = cluster.finish(&mut script, "presence", Duration::from_secs(100));
    assert_eq!(results.len(), 1, "{results:?}");
    cluster.assert_healthy(&[victim]);
}
