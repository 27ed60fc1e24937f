//! A throwaway Redis server for the cluster tests: Debian's `redis-server` (on `PATH`, or
//! `REDIS_SERVER`) on a free loopback port, in a temp dir, without persistence. It can be
//! stopped (SIGKILL) and started again on the same port. With `CI` set, a missing
//! `redis-server` fails the test instead of skipping it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Redis; killed on drop.
pub struct Redis {
    exe: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

fn find_exe() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("REDIS_SERVER") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("redis-server"))
            .find(|p| p.exists())
    })
}

impl Redis {
    /// Starts a fresh server, or returns `None` (skip) when `redis-server` is not installed
    /// and `CI` is not set.
    pub fn start() -> Option<Redis> {
        let Some(exe) = find_exe() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server not found and CI is set (apt-get install redis-server)"
            );
            eprintln!("skipping: redis-server not found");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = tempfile::Builder::new()
            .prefix("dialogue-redis-")
            .tempdir()
            .expect("temp dir");
        let mut redis = Redis {
            exe,
            dir,
            port,
            child: None,
        };
        redis.start_server();
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on its port and waits until it answers.
    pub fn start_server(&mut self) {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        super::die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().expect("start redis-server"));
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    /// Kills the server (SIGKILL: what it held is gone).
    pub fn stop_server(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The live members of the heartbeat set `key`, read with `redis-cli` (beside
    /// `redis-server` in Debian's packages).
    pub fn members(&self, key: &str) -> Vec<String> {
        let cli = self.exe.with_file_name("redis-cli");
        let out = Command::new(cli)
            .args(["-p", &self.port.to_string(), "ZRANGE", key, "0", "-1"])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// True when the server answers PING.
    pub fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop_server();
    }
}
