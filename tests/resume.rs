//! Resume: a client that comes back gets exactly what it missed, nothing twice (issue 12).
//! Driven by the official Node `socket.io-client` (`tests/js/resume.test.mjs`).

mod common;

use common::{run_node_tests, TestServer};

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
