//! A chaos TCP proxy for the tests: forwards every connection to the server and cuts it (both
//! directions, at once) after a random time in `[min, max]`, as a flaky network would.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A running proxy; stops accepting when dropped (open connections end with their cut).
pub struct ChaosProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
    /// Where new connections go (a restarted server listens elsewhere).
    target: Arc<Mutex<SocketAddr>>,
}

impl ChaosProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub fn start(target: SocketAddr, min: Duration, max: Duration) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let target = Arc::new(Mutex::new(target));
        let (stopping, counted, to) = (stop.clone(), cuts.clone(), target.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let addr = *to.lock().unwrap_or_else(|e| e.into_inner());
                let Ok(server) = TcpStream::connect(addr) else {
                    continue; // the server is down: the client sees a refused connection
                };
                let lifetime = min + (max.saturating_sub(min)).mul_f64(random_unit());
                forward(client, server, lifetime, counted.clone());
            }
        });
        ChaosProxy {
            port,
            stop,
            cuts,
            target,
        }
    }

    /// A proxy that cuts each connection after 0.3–1.5 s (the chaos the resume tests use).
    pub fn cutting(target: SocketAddr) -> ChaosProxy {
        ChaosProxy::start(
            target,
            Duration::from_millis(300),
            Duration::from_millis(1500),
        )
    }

    /// A proxy that never cuts: only restarts behind it end connections.
    pub fn steady(target: SocketAddr) -> ChaosProxy {
        let hour = Duration::from_secs(3600);
        ChaosProxy::start(target, hour, hour)
    }

    /// Sends new connections to `target` from now on.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::Relaxed)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies both ways until either side closes or `lifetime` passes, then cuts both.
fn forward(client: TcpStream, server: TcpStream, lifetime: Duration, cuts: Arc<AtomicUsize>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let pairs = [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ];
    let finished = Arc::new(AtomicUsize::new(0));
    for (from, to) in pairs {
        let (Ok(mut from), Ok(mut to)) = (from, to) else {
            return;
        };
        let finished = finished.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
            finished.fetch_add(1, Ordering::Relaxed);
        });
    }
    thread::spawn(move || {
        let until = Instant::now() + lifetime;
        while Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
            if finished.load(Ordering::Relaxed) == 2 {
                return; // both sides closed on their own
            }
        }
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        cuts.fetch_add(1, Ordering::Relaxed);
    });
}

/// A number in [0, 1): xorshift over the clock and a counter (chaos, not cryptography).
fn random_unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x >> 11) as f64 / (1u64 << 53) as f64
}
