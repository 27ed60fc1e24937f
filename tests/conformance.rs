//! Engine.IO v4 conformance of the real server, packet by packet, with a raw client (plain
//! HTTP requests and a bare WebSocket, no Socket.IO client): see
//! `tests/js/engineio.conformance.test.mjs`.

mod common;

use common::{run_node_tests, Backend, TestServer};

/// Short heartbeat settings, so ping timeouts can be observed within a test.
fn config(url: &str) -> String {
    format!(
        r#"
server: {{ host: 127.0.0.1, port: 0, pingInterval: 300, pingTimeout: 200, connectTimeout: 1000 }}
database: {{ url: "{url}" }}
events:
  message: {{}}
rooms:
  general: {{ name: General, events: [message] }}
"#
    )
}

#[test]
fn engine_io_v4_conformance_with_a_raw_client() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = Backend::Sqlite.url(dir.path(), "conformance");
    let mut server = TestServer::start_in(dir.path(), &config(&url), &[]);
    server.wait_ready();
    run_node_tests("engineio.conformance.test.mjs", &server, &[]);
    assert!(server.is_running(), "the server survived every test");
    assert!(!server.log_contains("panicked"));
}
