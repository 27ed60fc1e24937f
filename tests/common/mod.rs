//! Test harness: starts the real `dialogue` binary on a free port with a given configuration
//! and a fresh database directory, and runs Node Socket.IO client scripts against it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Once;
use std::time::Duration;

pub mod pg;
pub mod proxy;
pub mod redis;

/// A running server; killed on drop.
pub struct TestServer {
    child: Child,
    pub port: u16,
    pub url: String,
    /// The working directory (and config) when the harness made one.
    pub dir: Option<tempfile::TempDir>,
    /// Everything the server logged so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl TestServer {
    /// Writes `config` to a temp dir and starts the server there with `PORT=0`.
    pub fn start(config: &str) -> TestServer {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> TestServer {
        Self::launch_in_temp_dir(config, env, None)
    }

    /// Starts in `dir` (kept by the caller, so a restart finds the same files).
    pub fn start_in(dir: &Path, config: &str, env: &[(&str, &str)]) -> TestServer {
        Self::launch(dir, config, env, None)
    }

    /// Starts with at most `limit` open files (`RLIMIT_NOFILE`).
    pub fn start_with_open_files(config: &str, limit: u64) -> TestServer {
        Self::launch_in_temp_dir(config, &[], Some(limit))
    }

    /// Starts in a temp dir the server keeps.
    fn launch_in_temp_dir(
        config: &str,
        env: &[(&str, &str)],
        open_files: Option<u64>,
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Self::launch(dir.path(), config, env, open_files);
        server.dir = Some(dir);
        server
    }

    fn launch(
        dir: &Path,
        config: &str,
        env: &[(&str, &str)],
        open_files: Option<u64>,
    ) -> TestServer {
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dialogue"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir)
            .env("PORT", "0")
            .env("RUST_LOG", "info,dialogue=debug")
            .env_remove("DATABASE_URL")
            .env_remove("DIALOGUE_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        die_with_parent(&mut cmd);
        if let Some(limit) = open_files {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: setrlimit is a plain system call; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd.spawn().expect("start dialogue");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let port = rest
                        .split_whitespace()
                        .next()
                        .and_then(|addr| addr.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok());
                    let _ = tx.send(port);
                }
                if std::env::var_os("DIALOGUE_TEST_LOG").is_some() {
                    eprintln!("[server] {line}");
                }
                if let Ok(mut log) = sink.lock() {
                    log.push(line);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "server did not start; log: {:?}",
                    log.lock().map(|l| l.clone())
                )
            });
        TestServer {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
            dir: None,
            log,
        }
    }

    /// Sends SIGTERM and waits up to `limit` for the exit; returns the exit code and time.
    pub fn terminate(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let started = std::time::Instant::now();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        while started.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status.code(), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        (None, started.elapsed())
    }

    /// Sends SIGKILL (an unclean stop: no flush, no goodbye) and waits up to 10 s for the
    /// process to be gone; returns how it ended and how long the wait took.
    pub fn kill9(&mut self) -> (Option<std::process::ExitStatus>, Duration) {
        let started = std::time::Instant::now();
        // `Child::kill` sends SIGKILL on Unix.
        let _ = self.child.kill();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (Some(status), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (None, started.elapsed())
    }

    /// The server's process id.
    /// The loopback address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET path` on the server: the HTTP status (0 when nothing answered) and the body.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        self.http_get_with(path, &[])
    }

    /// `GET path` with extra request headers; (0, "") when no answer came within 5 s.
    pub fn http_get_with(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        use std::io::{Read, Write};
        let mut answer = String::new();
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let extra: String = headers
                .iter()
                .map(|(k, v)| format!("{k}: {v}\r\n"))
                .collect();
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n"
            );
            let _ = s.read_to_string(&mut answer);
        }
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// `GET /readyz`: the status and the JSON body (`Null` when it is not JSON).
    pub fn readyz(&self) -> (u16, serde_json::Value) {
        let (status, body) = self.http_get("/readyz");
        // A chunked body carries its length lines around the JSON.
        let json = body
            .find('{')
            .zip(body.rfind('}'))
            .and_then(|(a, b)| serde_json::from_str(&body[a..=b]).ok())
            .unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    /// Waits until `/readyz` answers 200, up to `limit`; the time it took, or the last answer.
    pub fn wait_ready_within(&self, limit: Duration) -> Result<Duration, String> {
        let started = std::time::Instant::now();
        loop {
            let (status, body) = self.readyz();
            if status == 200 {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= limit {
                return Err(format!(
                    "not ready after {:?}; last /readyz: {status} {body}",
                    started.elapsed()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (up to 30 s) until `GET /readyz` answers 200: every room has restored its
    /// history and the database answers.
    pub fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.http_get("/readyz");
            if status == 200 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server never became ready; last answer: {status} {body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log
            .lock()
            .map(|l| l.iter().any(|line| line.contains(needle)))
            .unwrap_or(false)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

/// Installs the Node test clients from the committed lockfile once, if missing.
pub fn ensure_node_modules() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let dir = js_dir();
        let modules = dir.join("node_modules");
        if ["socket.io-client", "ws", "playwright-core"]
            .iter()
            .all(|m| modules.join(m).exists())
        {
            return;
        }
        npm_ci(&dir);
    });
}

/// `npm ci` in `dir`: its packages from the committed lockfile.
pub fn npm_ci(dir: &Path) {
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("npm must be installed to run the Node tests");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

/// Runs `node --test <script>` against `server`; panics with the output if a test fails.
/// Returns the values the script printed as `RESULT <json>` lines.
pub fn run_node_tests(
    script: &str,
    server: &TestServer,
    extra_env: &[(&str, &str)],
) -> Vec<serde_json::Value> {
    ensure_node_modules();
    let mut cmd = Command::new("node");
    cmd.arg("--test")
        .arg("--test-reporter=spec")
        // A failed test may leave sockets open; don't let them keep node alive.
        .arg("--test-force-exit")
        .arg("--test-timeout=300000")
        .arg(js_dir().join(script))
        .env("DIALOGUE_URL", &server.url)
        .current_dir(js_dir());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    die_with_parent(&mut cmd);
    let output = cmd.output().expect("node must be installed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "node tests in {script} failed:\n{stdout}\n{stderr}"
    );
    stdout
        .lines()
        .filter_map(|l| l.trim_start_matches(['#', ' ']).strip_prefix("RESULT "))
        .filter_map(|json| serde_json::from_str(json).ok())
        .collect()
}

/// Starts `node <script>` (a plain script, not `node --test`) in the background against
/// `url` (as `DIALOGUE_URL`), with stdout piped (read it with [`NodeProcess::wait_line`]).
pub fn spawn_node_script(script: &str, url: &str, env: &[(&str, &str)]) -> NodeProcess {
    ensure_node_modules();
    let mut cmd = Command::new("node");
    cmd.arg(js_dir().join(script))
        .env("DIALOGUE_URL", url)
        .current_dir(js_dir());
    spawn_script(cmd, script, env)
}

/// Starts `python <script> <args…>` (from `tests/py`, in its venv) in the background, like
/// [`spawn_node_script`].
pub fn spawn_python(script: &str, args: &[&str], env: &[(&str, &str)]) -> NodeProcess {
    let mut cmd = Command::new(ensure_python_venv());
    cmd.arg(py_dir().join(script))
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(py_dir());
    spawn_script(cmd, script, env)
}

fn spawn_script(mut cmd: Command, script: &str, env: &[(&str, &str)]) -> NodeProcess {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("start the script");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(mut l) = sink.lock() {
                l.push(line.clone());
            }
            let _ = tx.send(line);
        }
    });
    let err_sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut l) = err_sink.lock() {
                l.push(format!("[stderr] {line}"));
            }
        }
    });
    NodeProcess {
        child,
        script: script.to_owned(),
        rx,
        output: lines,
    }
}

/// A background client script (Node or Python); killed on drop.
pub struct NodeProcess {
    child: Child,
    script: String,
    rx: mpsc::Receiver<String>,
    /// Everything it printed so far (stderr lines prefixed with `[stderr] `).
    pub output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl NodeProcess {
    /// Waits up to `limit` for a stdout line starting with `prefix`; returns the rest of it.
    pub fn wait_line(&mut self, prefix: &str, limit: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Some(rest.trim().to_owned());
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits up to `limit` for the exit (killing it after that); the exit code, if it exited.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(20));
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// True while the script runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything printed so far, as one string (for failure messages).
    pub fn transcript(&self) -> String {
        format!(
            "--- {} output ---\n{}",
            self.script,
            self.output.lock().map(|l| l.join("\n")).unwrap_or_default()
        )
    }

    /// The `RESULT <json>` lines printed so far.
    pub fn results(&self) -> Vec<serde_json::Value> {
        self.output
            .lock()
            .map(|l| {
                l.iter()
                    .filter_map(|line| line.strip_prefix("RESULT "))
                    .filter_map(|json| serde_json::from_str(json).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("py")
}

/// Creates `tests/py/.venv` with the pinned python-socketio client once, if missing.
pub fn ensure_python_venv() -> PathBuf {
    static INSTALL: Once = Once::new();
    let dir = py_dir();
    let python = dir.join(".venv").join("bin").join("python");
    INSTALL.call_once(|| {
        if python.exists() {
            return;
        }
        let ok = Command::new("python3")
            .args(["-m", "venv", ".venv"])
            .current_dir(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "python3 -m venv failed (is python3-venv installed?)");
        let ok = Command::new(dir.join(".venv/bin/pip"))
            .args(["install", "-q", "-r", "requirements.txt"])
            .current_dir(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "pip install -r tests/py/requirements.txt failed");
    });
    python
}

/// Runs a Python client script against `server`; panics with its output on failure.
pub fn run_python(script: &str, server: &TestServer, args: &[&str]) {
    let python = ensure_python_venv();
    let output = Command::new(python)
        .arg(py_dir().join(script))
        .arg(&server.url)
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "python {script} {args:?} failed:\n{stdout}\n{stderr}"
    );
}

/// A current-thread tokio runtime for the tests' own database work.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A database for one test: a SQLite file in the test's directory, or a PostgreSQL database.
pub enum Backend {
    Sqlite,
    Postgres(pg::Postgres),
}

impl Backend {
    /// PostgreSQL when its server binaries are installed (see [`pg::Postgres::start`]).
    pub fn postgres() -> Option<Backend> {
        pg::Postgres::start().map(Backend::Postgres)
    }

    /// The URL of database `name` for a test running in `dir` (created on PostgreSQL).
    pub fn url(&self, dir: &Path, name: &str) -> String {
        match self {
            Backend::Sqlite => format!(
                "sqlite://{}?mode=rwc",
                dir.join(format!("{name}.db")).display()
            ),
            Backend::Postgres(pg) => rt().block_on(pg.create_db(name)),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }
}

/// Makes the SQLite database at `url` unwritable for the server (another connection holds
/// its write lock: root ignores file permissions, a lock is dependable); the returned
/// closure releases it.
pub fn lock_sqlite(url: &str) -> impl FnOnce() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let rt = rt();
    let (db, txn) = rt.block_on(async {
        let db = dialogue::store::connect(url).await.unwrap();
        let txn = db.begin().await.unwrap();
        txn.execute_unprepared(
            "INSERT INTO messages (room_id, event_name, event_data, from_user, timestamp, seq) \
             VALUES ('lock', 'lock', '{}', 'test', 0, 1)",
        )
        .await
        .unwrap();
        (db, txn)
    });
    move || {
        rt.block_on(async move {
            txn.rollback().await.unwrap();
            db.close().await.ok();
        })
    }
}

/// The child is killed when the test that started it goes away — also when the test binary
/// is killed or aborts, which runs no `Drop` — so no server outlives its test run. (Linux
/// sends the signal when the spawning thread ends: servers are started by the test's own
/// thread and live no longer than it.)
pub fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
}
