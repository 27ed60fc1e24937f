//! Resume: a client that comes back gets exactly what it missed, nothing twice (issue 12).
//! Driven by the official Node `socket.io-client` (`tests/js/resume.test.mjs`).

mod common;

use common::proxy::ChaosProxy;
use common::{run_node_tests, run_python, spawn_node_script, spawn_python, TestServer};
use std::time::Duration;

const CONFIG: &str = r#"
server: { host: 127.0.0.1, port: 0 }
limits: { triggersPerSecond: 0, historyRequestsPerMinute: 0, maxResumeEvents: 40 }
events:
  message: { history: { limit: 100 } }
  note: { history: { limit: 5 } }
rooms:
  chat: { name: Chat, events: [message, note], syncHistoryOnJoin: 10 }
  lobby: { name: Lobby, events: [note], syncHistoryOnJoin: 10, autoJoin: true }
"#;

#[test]
fn native_resume_with_socket_io_client() {
    let mut server = TestServer::start(CONFIG);
    run_node_tests("resume.test.mjs", &server, &[]);
    assert!(server.is_running());
    assert!(!server.log_contains("panicked"));
}

const CHAOS: &str = r#"
server: { host: 127.0.0.1, port: 0 }
limits: { triggersPerSecond: 0, historyRequestsPerMinute: 0 }
events:
  message: { history: { limit: 20 } }
  note: { history: { limit: 5 } }
rooms:
  r1: { name: R1, events: [message, note], syncHistoryOnJoin: 10 }
  r2: { name: R2, events: [message, note], syncHistoryOnJoin: 10 }
"#;

/// Readers behind a proxy that cuts their connections every 0.3–1.5 s resume with `since`
/// and end with every event exactly once, in order.
#[test]
fn native_resume_through_a_chaos_proxy() {
    let mut server = TestServer::start(CHAOS);
    let proxy = ChaosProxy::cutting(server.addr());
    let results = run_node_tests(
        "resume-chaos.test.mjs",
        &server,
        &[("PROXY_URL", proxy.url().as_str())],
    );
    assert!(
        proxy.cuts() >= 6,
        "the proxy cut {} connections",
        proxy.cuts()
    );
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(server.is_running());
    assert!(!server.log_contains("panicked"));
}

/// The same readers and writers across a graceful restart and a `kill -9` of the server
/// (`durability: stored`): every event the server stored reaches every reader exactly once.
#[test]
fn native_resume_across_a_restart_and_a_crash() {
    let mut stage = Stage::start();
    let (chaos, steady) = (&stage.chaos, &stage.steady);
    let mut node = spawn_node_script(
        "resume-restart.mjs",
        &stage.server.url,
        &[
            ("CHAOS_URL", chaos.url().as_str()),
            ("STEADY_URL", steady.url().as_str()),
            ("SECONDS_TO_WRITE", "9"),
        ],
    );
    assert!(
        node.wait_line("READY", Duration::from_secs(30)).is_some(),
        "clients connected: {:?}",
        node.output
    );
    stage.restart_then_crash();
    let result = node.wait_line("RESULT", Duration::from_secs(90));
    let output = node.output.lock().unwrap().join("\n");
    let result = result.unwrap_or_else(|| panic!("no RESULT:\n{output}"));
    let result: serde_json::Value = serde_json::from_str(&result).unwrap();
    eprintln!("restart and crash: {result}");
    assert!(result["acked"].as_u64().unwrap() > 100, "{result}");
    assert!(result["resumed"].as_u64().unwrap() > 0, "{result}");
    assert!(!stage.server.log_contains("panicked"));
}

/// python-socketio readers behind the chaos proxy resume with `since` on every automatic
/// reconnect and end with every event exactly once, in order.
#[test]
fn python_client_resumes_through_a_chaos_proxy() {
    let server = TestServer::start(CHAOS);
    let proxy = ChaosProxy::cutting(server.addr());
    run_python("resume.py", &server, &[proxy.url().as_str()]);
    assert!(
        proxy.cuts() >= 3,
        "the proxy cut {} connections",
        proxy.cuts()
    );
}

/// python-socketio readers behind the chaos proxy across a graceful restart and a `kill -9`
/// (`durability: stored`), each reconnect a join with `since`: every stored event — every
/// acked one among them — reaches every reader exactly once, in order.
#[test]
fn python_client_resumes_across_a_restart_and_a_crash() {
    let mut stage = Stage::start();
    let (chaos, steady) = (&stage.chaos, &stage.steady);
    let mut py = spawn_python(
        "resume_restart.py",
        &[chaos.url().as_str(), steady.url().as_str()],
        &[],
    );
    assert!(
        py.wait_line("READY", Duration::from_secs(60)).is_some(),
        "{}",
        py.transcript()
    );
    stage.restart_then_crash();
    let result = py.wait_line("RESULT", Duration::from_secs(90));
    let code = py.wait_exit(Duration::from_secs(20));
    let result = result.unwrap_or_else(|| panic!("no RESULT:\n{}", py.transcript()));
    assert_eq!(code, Some(0), "{}", py.transcript());
    let result: serde_json::Value = serde_json::from_str(&result).unwrap();
    eprintln!("python restart and crash: {result}");
    assert!(result["acked"].as_u64().unwrap() > 100, "{result}");
    assert!(result["resumed"].as_u64().unwrap() > 0, "{result}");
    assert!(!stage.server.log_contains("panicked"));
}

/// A server in a directory of its own behind two proxies: `chaos` cuts connections every
/// 0.3–1.5 s, `steady` never does.
struct Stage {
    dir: tempfile::TempDir,
    server: TestServer,
    chaos: ChaosProxy,
    steady: ChaosProxy,
}

impl Stage {
    fn start() -> Stage {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start_in(dir.path(), CHAOS, &[]);
        server.wait_ready();
        let chaos = ChaosProxy::cutting(server.addr());
        let steady = ChaosProxy::steady(server.addr());
        Stage {
            dir,
            server,
            chaos,
            steady,
        }
    }

    /// 2.5 s of traffic, SIGTERM and start again; 2.5 s more, `kill -9` and start again (the
    /// proxies follow the server).
    fn restart_then_crash(&mut self) {
        std::thread::sleep(Duration::from_millis(2500));
        let (code, _) = self.server.terminate(Duration::from_secs(20));
        assert_eq!(code, Some(0), "graceful stop");
        self.start_again();
        std::thread::sleep(Duration::from_millis(2500));
        self.server.kill9();
        self.start_again();
    }

    fn start_again(&mut self) {
        self.server = TestServer::start_in(self.dir.path(), CHAOS, &[]);
        self.chaos.retarget(self.server.addr());
        self.steady.retarget(self.server.addr());
    }
}
