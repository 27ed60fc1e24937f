//! The web pages (issue 13) in a real browser: Debian's headless Chromium driven by
//! playwright-core (`tests/js/web.test.mjs`, `tests/js/web-restart.mjs`), against the chat
//! page at `/` and the dashboard at `/admin` the binary serves. Screenshots go to
//! `target/web-screenshots/`. Also: `web/dist` is what `web/build.mjs` makes of `web/src`,
//! and `http.webUi: false` turns the pages off.

mod common;

use common::proxy::ChaosProxy;
use common::{run_node_tests, spawn_node_script, TestServer};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const KEY: &str = "web-key-0123456789";

const CONFIG: &str = r#"
server: { host: 127.0.0.1, port: 0 }
api: { keys: ["web-key-0123456789"] }
events:
  message:
    description: Chat message sent by a user
    schema:
      type: object
      required: [text, username]
      properties:
        text: { type: string, minLength: 1, maxLength: 2000 }
        username: { type: string }
    history: { enabled: true, limit: 100 }
rooms:
  general: { name: General Chat, events: [message], syncHistoryOnJoin: 50, autoJoin: true, presence: true }
  archive: { name: Archive, events: [message], syncHistoryOnJoin: 50 }
"#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    target.join("web-screenshots")
}

fn browser_env(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("API_KEY", KEY.to_owned()),
        ("SCREENSHOT_DIR", screenshots().display().to_string()),
    ];
    env.extend(extra.iter().cloned());
    env
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Debian's Chromium (or `CHROMIUM`); `None` (the test is skipped) when it is not installed,
/// unless `CI` is set, where that is a failure.
fn chromium() -> Option<PathBuf> {
    let path =
        std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing: install Debian's chromium (apt-get install chromium)",
        path.display()
    );
    eprintln!("skipped: no Chromium at {}", path.display());
    None
}

#[test]
fn chat_page_and_dashboard_in_chromium() {
    if chromium().is_none() {
        return;
    }
    let mut server = TestServer::start(CONFIG);
    let env = browser_env(&[]);
    let results = run_node_tests("web.test.mjs", &server, &refs(&env));
    eprintln!("web: {results:?}");
    assert!(server.is_running());
    assert!(!server.log_contains("panicked"));
}

/// `auth.mode: jwt`: the page signs in with a pasted token (`tests/js/web-jwt.test.mjs`).
#[test]
fn chat_page_signs_in_with_a_token() {
    if chromium().is_none() {
        return;
    }
    const SECRET: &str = "web-secret-0123456789abcdef0123456789";
    let config = format!(
        "{CONFIG}auth:\n  mode: jwt\n  jwt: {{ algorithm: HS256, secret: \"{SECRET}\" }}\n"
    );
    let mut server = TestServer::start(&config);
    let env = browser_env(&[("JWT_SECRET", SECRET.to_owned())]);
    run_node_tests("web-jwt.test.mjs", &server, &refs(&env));
    assert!(server.is_running());
}

/// `kill -9` with the page open: it reconnects by itself and shows what it missed, once —
/// recovered by socket.io-client's connection-state recovery.
#[test]
fn chat_page_shows_what_it_missed_after_a_crash() {
    if let Some(result) = missed_after_a_crash(CONFIG) {
        assert_eq!(result["recovered"], true, "{result}");
    }
}

/// The same without connection-state recovery: the page joins again with `since` (its last
/// seq of each event) and the room replays what it missed.
#[test]
fn chat_page_resumes_with_since_when_not_recovered() {
    let config = format!("{CONFIG}recovery: {{ enabled: false }}\n");
    if let Some(result) = missed_after_a_crash(&config) {
        // No pid, no recovery: `socket.recovered` is not true.
        assert_ne!(result["recovered"], true, "{result}");
    }
}

/// Runs `web-restart.mjs` across a `kill -9`; its result (`None`: no Chromium here).
fn missed_after_a_crash(config: &str) -> Option<serde_json::Value> {
    chromium()?;
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(dir.path(), config, &[]);
    server.wait_ready();
    let steady = ChaosProxy::steady(server.addr());
    let stage = dir.path().join("stage");
    let env = browser_env(&[("STAGE_FILE", stage.display().to_string())]);
    let mut node = spawn_node_script("web-restart.mjs", &steady.url(), &refs(&env));
    assert!(
        node.wait_line("READY", Duration::from_secs(60)).is_some(),
        "the page signed in and chatted:\n{}",
        node.transcript()
    );
    server.kill9();
    // While the missed messages are sent, the page's reconnects find nothing.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    steady.retarget(nowhere.local_addr().unwrap());
    drop(nowhere);
    server = TestServer::start_in(dir.path(), config, &[]);
    server.wait_ready();
    std::fs::write(&stage, &server.url).unwrap();
    assert!(
        node.wait_line("POSTED", Duration::from_secs(60)).is_some(),
        "the missed messages were sent:\n{}",
        node.transcript()
    );
    steady.retarget(server.addr());
    let code = node.wait_exit(Duration::from_secs(90));
    let transcript = node.transcript();
    eprintln!("{transcript}");
    assert_eq!(code, Some(0), "{transcript}");
    assert!(!server.log_contains("panicked"));
    let result = node.results().pop().expect("a RESULT line");
    assert_eq!(result["problems"], serde_json::json!([]), "{result}");
    Some(result)
}

/// `http.webUi: false`: no pages, the API and Socket.IO as before.
#[test]
fn web_ui_can_be_turned_off() {
    let server = TestServer::start(&format!("{CONFIG}http: {{ webUi: false }}\n"));
    assert_eq!(server.http_get("/").0, 404);
    assert_eq!(server.http_get("/admin").0, 404);
    assert_eq!(server.http_get("/healthz").0, 200);
    let on = TestServer::start(CONFIG);
    let (status, body) = on.http_get("/");
    assert_eq!(status, 200);
    assert!(body.contains("<html"), "{body}");
}

/// The committed `web/dist` is what `web/build.mjs` makes of `web/src` (so the binary serves
/// the pages in the repository).
#[test]
fn committed_web_build_is_fresh() {
    let web = repo().join("web");
    if !web.join("node_modules").join("esbuild").exists() {
        common::npm_ci(&web);
    }
    let out = tempfile::tempdir().unwrap();
    let status = Command::new("node")
        .arg(web.join("build.mjs"))
        .arg(out.path())
        .current_dir(&web)
        .status()
        .expect("node must be installed");
    assert!(status.success(), "web/build.mjs failed");
    let dist = web.join("dist");
    let mut names: Vec<_> = std::fs::read_dir(&dist)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut built: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    built.sort();
    assert_eq!(names, built, "web/dist has exactly the built files");
    for name in &names {
        let (committed, fresh) = (read(&dist, name), read(out.path(), name));
        assert!(
            committed == fresh,
            "web/dist/{name} is stale: run `npm run --prefix web build` and commit web/dist"
        );
    }
}

/// A file's bytes; a `.gz` file's decompressed bytes (gzip output may differ between zlib
/// versions, its content may not).
fn read(dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    if name.ends_with(".gz") {
        let out = Command::new("gzip").arg("-dc").arg(&path).output().unwrap();
        assert!(out.status.success(), "{} is not gzip", path.display());
        out.stdout
    } else {
        std::fs::read(path).unwrap()
    }
}
