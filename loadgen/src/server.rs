//! What the load generator observes of the server from outside: its CPU time and resident
//! memory (from /proc), whether it is still running, its readiness over HTTP, and a signal.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fields of /proc/PID/stat after the parenthesised command name (field 3 onwards).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Server CPU seconds (user + system, fields 14 and 15 of /proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Resident set size in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Running: the process exists and is not a zombie waiting for its parent.
pub fn is_running(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().map(String::as_str) != Some("Z"))
}

/// Sends SIGTERM.
pub fn terminate(pid: u32) -> Result<(), String> {
    signal(pid, libc::SIGTERM)
}

/// Sends SIGKILL (a crash: nothing is flushed).
pub fn kill(pid: u32) -> Result<(), String> {
    signal(pid, libc::SIGKILL)
}

fn signal(pid: u32, signal: libc::c_int) -> Result<(), String> {
    let pid = libc::pid_t::try_from(pid).map_err(|e| e.to_string())?;
    // SAFETY: kill has no memory effects; the pid comes from the caller.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(format!("kill {pid}: {}", std::io::Error::last_os_error()))
    }
}

/// Waits until `pid` has exited; `false` on timeout.
pub async fn wait_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_running(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// An HTTP answer: status, headers (names lowercase) and the body as sent.
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET {url}{path}` with extra `headers`, as a bare HTTP/1.0 request read to its end (the
/// server closes it): enough for /readyz, the web pages and /api/stats.
pub async fn http_get(
    url: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpAnswer, String> {
    let host = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut s = tokio::net::TcpStream::connect(&host)
        .await
        .map_err(|e| format!("connect {host}: {e}"))?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    request += "\r\n";
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let split = memchr::memmem::find(&answer, b"\r\n\r\n")
        .ok_or_else(|| format!("bad HTTP response: {:?}", String::from_utf8_lossy(&answer)))?;
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad HTTP status line: {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(HttpAnswer {
        status,
        headers,
        body: answer[split + 4..].to_vec(),
    })
}

/// The HTTP status of `GET {url}{path}`.
pub async fn http_status(url: &str, path: &str) -> Result<u16, String> {
    Ok(http_get(url, path, &[]).await?.status)
}

/// Waits for `GET /readyz` to answer 200.
/// Runs `restart_cmd` with `sh -c` (it starts the server again in the background) and waits
/// for `/readyz`. The command's output goes nowhere (stderr excepted), so a server it leaves
/// running does not hold our stdout open.
pub async fn start_again(restart_cmd: &str, url: &str, timeout: Duration) -> Result<(), String> {
    let cmd = restart_cmd.to_owned();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("restart command: {e}"))?;
    if !status.success() {
        return Err(format!("restart command failed: {status}"));
    }
    wait_ready(url, timeout).await
}

pub async fn wait_ready(url: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match http_status(url, "/readyz").await {
            Ok(200) => return Ok(()),
            other if Instant::now() > deadline => {
                return Err(format!("{url}/readyz not 200 after {timeout:?}: {other:?}"))
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Raises the soft open-files limit to the hard one (thousands of connections need it).
pub fn raise_open_files_limit() -> Option<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return None;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// Samples the server's RSS every `every` until stopped; the samples are in KiB.
pub struct RssSampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<u64>>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                if let Some(kib) = rss_kib(pid) {
                    samples.push(kib);
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => break,
                }
            }
            if let Some(kib) = rss_kib(pid) {
                samples.push(kib);
            }
            samples
        });
        RssSampler { stop, task }
    }

    /// Stops sampling (taking a last sample) and returns the samples.
    pub async fn finish(self) -> Vec<u64> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}
