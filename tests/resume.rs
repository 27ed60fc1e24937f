//! Resume: a client that comes back gets exactly what it missed, nothing twice (issue 12).
//! Driven by the official Node `socket.io-client` (`tests/js/resume.test.mjs`).

mod common;

use common::proxy::ChaosProxy;
use common::{run_node_tests, TestServer};
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
    let target = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let proxy = ChaosProxy::start(
        target,
        Duration::from_millis(300),
        Duration::from_millis(1500),
    );
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
