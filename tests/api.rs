//! Server HTTP API, JWT authentication (HS256 and ES256), access rules, metrics, readiness.

mod common;

use common::pg::Postgres;
use common::{run_node_tests, TestServer};

fn config(auth: &str, api_keys: &str, db: &str) -> String {
    format!(
        r#"
server: {{ host: 127.0.0.1, port: 0 }}
database: {{ url: "{db}" }}
api: {{ keys: [{api_keys}] }}
auth:
{auth}
  createRooms: {{ claims: {{ role: [staff] }} }}
  admin: {{ claims: {{ role: [admin] }} }}
limits: {{ historyRequestsPerMinute: 0, triggersPerSecond: 0 }}
events:
  message:
    schema:
      type: object
      required: [text, username]
      properties: {{ text: {{ type: string, minLength: 1 }}, username: {{ type: string }} }}
    history: {{ limit: 100 }}
  announcement:
    schema: {{ type: object, required: [text] }}
    history: {{ limit: 10 }}
rooms:
  general: {{ name: General, events: [message], autoJoin: true, syncHistoryOnJoin: 10 }}
  metered: {{ name: Metered, events: [message] }}
  staff:
    name: Staff
    events: [message, announcement]
    access:
      join: {{ claims: {{ role: [staff, admin] }} }}
      trigger: {{ announcement: {{ claims: {{ role: [admin] }} }} }}
  lounge:
    name: Lounge
    events: [message]
    access: {{ join: {{ users: [friend] }} }}
"#
    )
}

const HS256: &str = r#"  mode: jwt
  jwt: { algorithm: HS256, secret: "test-secret-0123456789abcdef0123456789" }"#;

fn es256() -> String {
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/js/es256-test-public.pem"
    ))
    .unwrap();
    let indented: String = pem.lines().map(|l| format!("      {l}\n")).collect();
    format!("  mode: jwt\n  jwt:\n    algorithm: ES256\n    publicKey: |\n{indented}")
}

const SQLITE: &str = "sqlite://dialogue.db?mode=rwc";

#[test]
fn api_jwt_hs256_access_rules_and_metrics() {
    let mut server = TestServer::start(&config(HS256, "test-key", SQLITE));
    run_node_tests(
        "api.test.mjs",
        &server,
        &[("PHASE", "api"), ("JWT_MODE", "HS256")],
    );
    assert!(server.is_running());
}

#[test]
fn jwt_es256_public_key() {
    let server = TestServer::start(&config(&es256(), "test-key", SQLITE));
    run_node_tests(
        "api.test.mjs",
        &server,
        &[("PHASE", "api"), ("JWT_MODE", "ES256")],
    );
}

#[test]
fn api_off_without_keys() {
    let server = TestServer::start(&config("  mode: open", "", SQLITE));
    run_node_tests("api.test.mjs", &server, &[("PHASE", "off")]);
    assert!(server.log_contains("server API off"));
}

#[test]
fn api_keys_from_the_environment() {
    let server = TestServer::start_with_env(
        &config(HS256, "", SQLITE),
        &[("DIALOGUE_API_KEYS", "other-key, test-key")],
    );
    run_node_tests(
        "api.test.mjs",
        &server,
        &[("PHASE", "api"), ("JWT_MODE", "HS256")],
    );
}

#[test]
fn readyz_follows_the_database() {
    let Some(pg) = Postgres::start() else { return };
    let url = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(pg.create_db("ready"));
    let server = TestServer::start(&config("  mode: open", "test-key", &url));
    server.wait_ready();
    pg.stop_server();
    run_node_tests("api.test.mjs", &server, &[("PHASE", "readyz")]);
    pg.start_server();
    run_node_tests("api.test.mjs", &server, &[("PHASE", "readyz-back")]);
}

/// `GET /api/stats` answers while a room is restoring (here: its lease is held by another
/// process on the same database), showing that room as not answering.
#[test]
fn stats_answer_while_a_room_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = config("  mode: open", "test-key", SQLITE);
    let owner = TestServer::start_in(dir.path(), &config, &[]);
    owner.wait_ready();
    let second = TestServer::start_in(dir.path(), &config, &[]);
    let (status, readyz) = second.readyz();
    assert_eq!(status, 503, "{readyz}");
    assert!(readyz["roomsRestoring"].as_u64() > Some(0), "{readyz}");
    let (status, body) =
        second.http_get_with("/api/stats", &[("Authorization", "Bearer test-key")]);
    assert_eq!(status, 200, "answered: {body}");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    let general = stats["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "general")
        .expect("general is listed");
    assert_eq!(general["answering"], false, "{stats}");
    let (_, body) = owner.http_get_with("/api/stats", &[("Authorization", "Bearer test-key")]);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        stats["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["answering"] == true),
        "{stats}"
    );
}
