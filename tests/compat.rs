//! Socket.IO compatibility: the official Node client with default options (long-polling then
//! upgrade), WebSocket only and polling only; python-socketio as a second-language client;
//! the polling transport's HTTP rules and CORS. The server runs four room threads, each
//! accepting connections, so polling requests of one session land on different threads.

mod common;

use common::{run_node_tests, run_python, TestServer};

const CONFIG: &str = r#"
server: { host: 127.0.0.1, port: 0, roomThreads: 4, pingInterval: 300, pingTimeout: 1000, maxPayload: 100000 }
limits: { historyRequestsPerMinute: 0, triggersPerSecond: 0 }
events:
  message:
    schema:
      type: object
      required: [text, username]
      properties:
        text: { type: string, minLength: 1 }
        username: { type: string }
    history: { enabled: true, limit: 100 }
rooms:
  general: { name: General Chat, events: [message], syncHistoryOnJoin: 50, autoJoin: true }
"#;

#[test]
fn node_socket_io_client_conformance() {
    let mut server = TestServer::start(CONFIG);
    run_node_tests("compat.test.mjs", &server, &[]);
    assert!(server.is_running());
}

#[test]
fn python_socketio_client_over_polling_with_upgrade() {
    let mut server = TestServer::start(CONFIG);
    run_python("flow.py", &server, &["polling"]);
    assert!(server.is_running());
}

#[test]
fn python_socketio_client_over_websocket() {
    let mut server = TestServer::start(CONFIG);
    run_python("flow.py", &server, &["websocket"]);
    assert!(server.is_running());
}
