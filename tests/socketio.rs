//! The real server driven by the official Node `socket.io-client` over WebSocket.

mod common;

use common::{run_node_tests, TestServer};

const CORE_CONFIG: &str = r#"
server: { host: 127.0.0.1, port: 0, maxPayload: 100000, maxOutboundBytes: 65536 }
limits: { maxPayloadBytes: 4000, historyRequestsPerMinute: 0, triggersPerSecond: 0 }
events:
  message:
    schema:
      type: object
      required: [text, username]
      properties:
        text: { type: string, minLength: 1, maxLength: 2000 }
        username: { type: string }
    history: { enabled: true, limit: 100 }
  typing:
    schema: { type: object }
  note:
    history: { limit: 10 }
rooms:
  general:
    name: General Chat
    events: [message, typing]
    syncHistoryOnJoin: 50
    defaultSubscriptions: [message]
    autoJoin: true
  paging: { name: Paging, events: [message] }
  sync: { name: Sync, events: [message, note], syncHistoryOnJoin: 5 }
  lobby: { name: Lobby, events: ["*"] }
  readonly: { name: Read only, events: [] }
  tiny: { name: Tiny, events: [message], maxSize: 2 }
  flood: { name: Flood, events: [message] }
"#;

#[test]
fn core_behaviour_with_socket_io_client() {
    let mut server = TestServer::start(CORE_CONFIG);
    run_node_tests("core.test.mjs", &server, &[]);
    assert!(server.is_running(), "the server survived every test");
    assert!(
        server.log_contains("is not reading"),
        "slow client was logged"
    );
    assert!(!server.log_contains("panicked"));
}

const LIMITS_CONFIG: &str = r#"
server: { host: 127.0.0.1, port: 0 }
limits: { triggersPerSecond: 5, historyRequestsPerMinute: 3, roomsPerMinute: 2, maxRuntimeRooms: 3,
  maxRoomNameBytes: 20, maxRoomDescriptionBytes: 50, maxEventTypesPerRoom: 3 }
events:
  message:
    schema: { type: object, required: [text] }
    history: { limit: 100 }
rooms:
  general: { name: General, events: [message], autoJoin: true }
  open:
    name: Open
    events: ["*"]
    access: { trigger: { secret1: { users: [nobody] }, secret2: { users: [nobody] } } }
"#;

#[test]
fn rate_limits_with_socket_io_client() {
    let mut server = TestServer::start(LIMITS_CONFIG);
    run_node_tests("limits.test.mjs", &server, &[]);
    assert!(server.is_running());
}
