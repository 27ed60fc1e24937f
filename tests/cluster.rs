//! The cluster through Redis (issue 14; `docs/cluster.md` is the plan), so far membership:
//! nodes on one PostgreSQL database and one Redis see each other come and go (a `kill -9`
//! within the lease, a clean stop at once), and a node without Redis is not ready until
//! Redis is back. Real servers: a throwaway PostgreSQL and `redis-server`, three nodes.

mod common;

use common::pg::Postgres;
use common::redis::Redis;
use common::{rt, TestServer};
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
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        })
        .collect();
    let mut children: Vec<std::process::Child> = ports
        .iter()
        .map(|port| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dialogue"));
            cmd.arg("serve")
                .arg("--config")
                .arg(&config)
                .current_dir(dir.path())
                .env("PORT", port.to_string())
                .env_remove("DATABASE_URL")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            common::die_with_parent(&mut cmd);
            cmd.spawn().unwrap()
        })
        .collect();
    let started = Instant::now();
    let mut ready = vec![false; 3];
    while !ready.iter().all(|r| *r) && started.elapsed() < Duration::from_secs(30) {
        for (i, child) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("node {i} stopped at start: {status}");
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
