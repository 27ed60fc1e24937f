//! Socket.IO protocol v5 conformance, packet by packet: the real server (SQLite file database,
//! short heartbeat and connect timeout) driven by a raw WebSocket client
//! (`tests/js/socketio.conformance.test.mjs`, no socket.io-client).

mod common;

use common::{run_node_tests, Backend, TestServer};

fn config(url: &str) -> String {
    format!(
        r#"
server: {{ host: 127.0.0.1, port: 0, pingInterval: 300, pingTimeout: 200, connectTimeout: 1000 }}
database: {{ url: "{url}" }}
limits: {{ historyRequestsPerMinute: 0, triggersPerSecond: 0 }}
events:
  message:
    schema:
      type: object
      required: [text, username]
      properties: {{ text: {{ type: string }}, username: {{ type: string }} }}
    history: {{ enabled: true, limit: 100 }}
rooms:
  general: {{ name: General, events: [message], autoJoin: true }}
"#
    )
}

#[test]
fn socketio_v5_conformance_with_a_raw_client() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = Backend::Sqlite.url(dir.path(), "conformance");
    let mut server = TestServer::start_in(dir.path(), &config(&url), &[]);
    server.wait_ready();
    run_node_tests("socketio.conformance.test.mjs", &server, &[]);
    assert!(server.is_running(), "the server survived every test");
    assert!(!server.log_contains("panicked"));
}
