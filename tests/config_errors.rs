//! Configuration errors stop the service with a message naming the file, line and key.

mod common;

use std::process::Command;

/// `dialogue check-config` on `yaml`, written to a file.
fn run_check(yaml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, yaml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_dialogue"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap()
}

fn check(yaml: &str) -> (bool, String) {
    let out = run_check(yaml);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.success(), stderr)
}

const GOOD: &str = "\
events:
  message:
    schema:
      type: object
    history: { enabled: true, limit: 100 }
rooms:
  general:
    name: General
    events: [message]
    defaultSubscriptions: [message]
";

#[test]
fn the_shipped_config_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_dialogue"))
        .arg("check-config")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 rooms"));
}

#[test]
fn good_config_passes() {
    let (ok, err) = check(GOOD);
    assert!(ok, "{err}");
}

#[test]
fn unknown_key() {
    let (ok, err) = check(&GOOD.replace(
        "    name: General\n",
        "    name: General\n    colour: red\n",
    ));
    assert!(!ok);
    assert!(
        err.contains("bad.yaml:9:5: colour: unknown field `colour`"),
        "{err}"
    );
}

#[test]
fn wrong_type() {
    let (ok, err) = check(&GOOD.replace("limit: 100", "limit: many"));
    assert!(!ok);
    assert!(err.contains("bad.yaml:5:"), "{err}");
    assert!(err.contains(": limit: "), "{err}");
}

#[test]
fn invalid_json_schema() {
    let (ok, err) = check(&GOOD.replace("type: object", "type: objekt"));
    assert!(!ok);
    assert!(
        err.contains("bad.yaml:4:") && err.contains("events.message.schema"),
        "{err}"
    );
}

#[test]
fn undefined_event_and_bad_subscription() {
    let yaml = GOOD
        .replace("events: [message]", "events: [message, typing]")
        .replace(
            "defaultSubscriptions: [message]",
            "defaultSubscriptions: [reaction]",
        );
    let (ok, err) = check(&yaml);
    assert!(!ok);
    assert!(
        err.contains("bad.yaml:9:") && err.contains("rooms.general.events[1]"),
        "{err}"
    );
    assert!(err.contains("'typing' is not defined"), "{err}");
    assert!(
        err.contains("bad.yaml:10:") && err.contains("rooms.general.defaultSubscriptions[0]"),
        "{err}"
    );
}

#[test]
fn zero_history_limit() {
    let (ok, err) = check(&GOOD.replace("limit: 100", "limit: 0"));
    assert!(!ok);
    assert!(
        err.contains("bad.yaml:5:") && err.contains("events.message.history.limit"),
        "{err}"
    );
}

#[test]
fn ids_the_database_cannot_store() {
    // A NUL in a room id (YAML's "\0" escape) and a room id over 255 bytes.
    let yaml = GOOD.replace("  general:\n", "  \"gen\\0eral\":\n")
        + &format!("  {}:\n    events: [message]\n", "r".repeat(256));
    let (ok, err) = check(&yaml);
    assert!(!ok);
    assert!(
        err.contains(
            "bad.yaml:7:3: rooms.\"gen\\u0000eral\": room id \"gen\\u0000eral\" contains the \
             control character U+0000 (NUL); a room id may not contain control characters"
        ),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "bad.yaml:11:3: rooms.\"{}\"…: room id is 256 bytes",
            "r".repeat(40)
        )),
        "{err}"
    );
    // An event name with trailing whitespace.
    let yaml = GOOD
        .replace("  message:\n", "  \"message \":\n")
        .replace("[message]", "[\"message \"]");
    let (ok, err) = check(&yaml);
    assert!(!ok);
    assert!(
        err.contains(
            "bad.yaml:2:3: events.\"message \": event name \"message \" has leading or trailing \
             whitespace"
        ),
        "{err}"
    );
}

#[test]
fn serve_refuses_a_bad_config_with_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, GOOD.replace("limit: 100", "limit: 0")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dialogue"))
        .arg("serve")
        .env("DIALOGUE_CONFIG", &path)
        .env("PORT", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.yaml:5:"));
}

#[test]
fn config_schema_is_printed() {
    let out = Command::new(env!("CARGO_BIN_EXE_dialogue"))
        .arg("config-schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(schema["properties"]["rooms"].is_object(), "{schema}");
}

/// An HS256 secret shorter than 256 bits (or empty) is refused at start-up, naming the key.
#[test]
fn serve_refuses_a_short_jwt_secret() {
    for secret in ["", "change-me"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let config = format!(
            "database: {{ url: \"sqlite://{}?mode=rwc\" }}\nauth: {{ mode: jwt, jwt: {{ algorithm: HS256, secret: \"{secret}\" }} }}\n{GOOD}",
            dir.path().join("d.db").display()
        );
        std::fs::write(&path, config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_dialogue"))
            .arg("serve")
            .env("DIALOGUE_CONFIG", &path)
            .env("PORT", "0")
            .env_remove("DIALOGUE_JWT_SECRET")
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "secret {secret:?} was accepted: {stderr}"
        );
        assert!(stderr.contains("auth.jwt.secret"), "{stderr}");
    }
}

/// `server.workers` from an older config is accepted, with a warning that it does nothing now.
#[test]
fn check_config_warns_that_workers_is_no_longer_used() {
    let out = run_check(&format!("server: {{ workers: 4 }}\n{GOOD}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: server.workers is no longer used"),
        "{stdout}"
    );
}

/// Open mode with access rules: valid, but check-config warns that ids are self-asserted.
#[test]
fn check_config_warns_about_rules_in_open_mode() {
    let yaml = GOOD.replace(
        "    defaultSubscriptions: [message]\n",
        "    defaultSubscriptions: [message]\n    access: { join: { users: [alice] } }\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open.yaml");
    std::fs::write(
        &path,
        format!("auth: {{ mode: open, admin: {{ users: [root] }} }}\n{yaml}"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dialogue"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("warning: auth.admin"), "{stdout}");
    assert!(stdout.contains("warning: rooms.general.access"), "{stdout}");
    // Without rules, no warning.
    let plain = dir.path().join("plain.yaml");
    std::fs::write(&plain, GOOD).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dialogue"))
        .arg("check-config")
        .arg(&plain)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("warning"));
}

#[test]
fn cluster_redis_must_be_a_redis_url() {
    let (ok, err) = check(&format!("{GOOD}cluster:\n  redis: http://cache:6379\n"));
    assert!(!ok);
    assert!(
        err.contains("bad.yaml:12:10: cluster.redis: 'http://cache:6379' is not a Redis URL"),
        "{err}"
    );
    let (ok, err) = check(&format!("{GOOD}cluster:\n  redis: redis://cache:6379\n"));
    assert!(ok, "{err}");
}
