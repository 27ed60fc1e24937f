//! Presence (issue 13, item 0): `dialogue:presence`, `dialogue:memberJoined` /
//! `dialogue:memberLeft` once per user, and `GET /api/rooms/{roomId}/presence`, driven by the
//! official Node `socket.io-client` (`tests/js/presence.test.mjs`).

mod common;

use common::{run_node_tests, TestServer};

const CONFIG: &str = r#"
server: { host: 127.0.0.1, port: 0 }
api: { keys: ["presence-key-0123456789"] }
limits: { presenceMaxMembers: 5 }
events:
  message: { history: { limit: 10 } }
rooms:
  chat: { name: Chat, events: [message], presence: true }
  quiet: { name: Quiet, events: [message] }
  big: { name: Big, events: [message], presence: true }
"#;

#[test]
fn presence_with_socket_io_client() {
    let mut server = TestServer::start(CONFIG);
    run_node_tests("presence.test.mjs", &server, &[]);
    assert!(server.is_running());
    assert!(!server.log_contains("panicked"));
}
