//! The listener: every room thread accepts connections from the one listening socket and
//! serves them itself with actix-http's HTTP/1 dispatcher. A WebSocket session then stays on
//! the thread that accepted its socket: there is no accept thread handing sockets to workers,
//! and no hand-over from an HTTP worker to a room thread.

use actix_http::Protocol;
use actix_rt::ArbiterHandle;
use actix_service::{Service, ServiceFactory};
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify};

/// HTTP connections one thread serves at once, by default; past it, that thread stops
/// accepting until one ends (as actix-server's `max_connections`). A WebSocket session leaves
/// this count once its handshake is answered.
pub const MAX_HTTP_CONNECTIONS: usize = 25_600;

/// How long a thread waits before accepting again after an error that is not one
/// connection's own (out of file descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(500);

/// The TCP options every accepted socket gets.
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketOptions {
    /// `TCP_NODELAY`: small frames (events, acks, pings) leave at once, not held back by
    /// Nagle's algorithm waiting for the peer's delayed ACK (up to ~40 ms).
    pub nodelay: bool,
    /// `TCP_USER_TIMEOUT`: the kernel ends a connection whose sent bytes stay unacknowledged
    /// this long (a peer that stopped reading or vanished), also after the server closed it.
    pub write_timeout: Option<Duration>,
}

impl SocketOptions {
    fn apply(&self, socket: socket2::SockRef<'_>) -> std::io::Result<()> {
        if self.nodelay {
            socket.set_tcp_nodelay(true)?;
        }
        if let Some(timeout) = self.write_timeout {
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }
}

/// Linux gives an accepted socket the listening socket's TCP options: they are set once, on
/// the listener, instead of with two system calls per connection.
const INHERITED: bool = cfg!(target_os = "linux");

/// What a thread serves a connection with: its socket, the protocol, the peer's address.
pub type Accepted = (TcpStream, Protocol, Option<SocketAddr>);

/// The accepting threads; [`Listening::stop`] ends them.
pub struct Listening {
    stop: watch::Sender<bool>,
    stopped: Vec<oneshot::Receiver<()>>,
}

impl Listening {
    /// Stops accepting, closes the listening socket and drops the HTTP connections being
    /// served (WebSocket sessions, which left them, go on). Returns once every thread did.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for stopped in self.stopped {
            let _ = stopped.await;
        }
    }
}

/// Starts accepting on `listener` in every thread of `threads`; each builds its own service
/// with `make` (actix-web apps are not `Send`) and serves at most `max_connections` at once.
/// Every accepted socket gets `options`.
pub fn serve<F, S>(
    listener: std::net::TcpListener,
    threads: &[ArbiterHandle],
    max_connections: usize,
    options: SocketOptions,
    make: F,
) -> std::io::Result<Listening>
where
    F: Fn() -> S + Clone + Send + 'static,
    S: ServiceFactory<Accepted, Config = (), Response = (), InitError = ()> + 'static,
    S::Error: std::fmt::Debug,
{
    listener.set_nonblocking(true)?;
    if INHERITED {
        options.apply(socket2::SockRef::from(&listener))?;
    }
    let (stop, stopping) = watch::channel(false);
    let mut stopped = Vec::with_capacity(threads.len());
    for thread in threads {
        let listener = listener.try_clone()?;
        let make = make.clone();
        let stopping = stopping.clone();
        let (done, waited) = oneshot::channel();
        stopped.push(waited);
        thread.spawn_fn(move || {
            actix_rt::spawn(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => match make().new_service(()).await {
                        Ok(service) => {
                            let limits = (max_connections, options);
                            accept(listener, Rc::new(service), limits, stopping).await
                        }
                        Err(()) => log::error!("the HTTP service did not start on a room thread"),
                    },
                    Err(e) => log::error!("cannot listen on a room thread: {e}"),
                }
                let _ = done.send(());
            });
        });
    }
    Ok(Listening { stop, stopped })
}

/// One thread's accept loop, until the stop signal.
async fn accept<S>(
    listener: TcpListener,
    service: Rc<S>,
    (max_connections, options): (usize, SocketOptions),
    stopping: watch::Receiver<bool>,
) where
    S: Service<Accepted, Response = ()> + 'static,
    S::Error: std::fmt::Debug,
{
    let open = Rc::new(Cell::new(0usize));
    let room = Rc::new(Notify::new());
    let mut stop = stopping.clone();
    loop {
        while open.get() >= max_connections {
            tokio::select! {
                _ = room.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        let (io, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if one_connections_error(&e) => continue,
            Err(e) => {
                log::error!("accepting a connection: {e}; trying again in {ACCEPT_BACKOFF:?}");
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        };
        if !INHERITED {
            if let Err(e) = options.apply(socket2::SockRef::from(&io)) {
                log::debug!("socket options of an accepted connection: {e}");
            }
        }
        open.set(open.get() + 1);
        let served = service.call((io, Protocol::Http1, Some(peer)));
        let mut stop = stopping.clone();
        let (open, room) = (open.clone(), room.clone());
        actix_rt::spawn(async move {
            tokio::select! {
                result = served => {
                    if let Err(e) = result {
                        log::trace!("HTTP connection ended: {e:?}");
                    }
                }
                _ = stop.wait_for(|s| *s) => {}
            }
            open.set(open.get() - 1);
            room.notify_one();
        });
    }
}

/// Errors `accept` returns for one connection that went away before it was taken: the next
/// one may be ready.
fn one_connections_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_rt::{Arbiter, System};
    use actix_service::fn_service;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Echoes what a connection sends until it closes.
    fn echo(
    ) -> impl ServiceFactory<Accepted, Config = (), Response = (), Error = (), InitError = ()> {
        fn_service(|(mut io, _, _): Accepted| async move {
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = io.read(&mut buf).await {
                if io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            Ok::<_, ()>(())
        })
    }

    async fn ping(io: &mut TcpStream, within: Duration) -> std::io::Result<()> {
        io.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(within, io.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        assert_eq!(&buf, b"ping");
        Ok(())
    }

    /// Connections are served by the threads; once stopped, the port refuses new ones and the
    /// connections being served are closed.
    #[test]
    fn the_threads_serve_until_stopped_then_the_port_is_closed() {
        System::new().block_on(async {
            let threads = [Arbiter::new(), Arbiter::new()];
            let handles: Vec<_> = threads.iter().map(Arbiter::handle).collect();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let listening = serve(listener, &handles, 100, SocketOptions::default(), echo).unwrap();
            let mut open = Vec::new();
            for _ in 0..20 {
                let mut io = TcpStream::connect(addr).await.unwrap();
                ping(&mut io, Duration::from_secs(5)).await.unwrap();
                open.push(io);
            }
            listening.stop().await;
            let refused = TcpStream::connect(addr).await.map(|_| ()).unwrap_err();
            assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
            for mut io in open {
                let mut buf = [0u8; 4];
                let read = tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf)).await;
                assert!(
                    matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                    "a connection outlived the stop: {read:?}"
                );
            }
            for thread in threads {
                thread.stop();
            }
        });
    }

    /// Every accepted socket has the options asked for (on Linux, through the listener).
    #[test]
    fn accepted_sockets_have_the_options() {
        System::new().block_on(async {
            let thread = Arbiter::new();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let options = SocketOptions {
                nodelay: true,
                write_timeout: Some(Duration::from_millis(12_345)),
            };
            // Answers with the options it finds on its socket.
            let report = || {
                fn_service(|(mut io, _, _): Accepted| async move {
                    let socket = socket2::SockRef::from(&io);
                    let found = format!(
                        "{} {:?}",
                        socket.tcp_nodelay().unwrap(),
                        socket.tcp_user_timeout().unwrap()
                    );
                    let _ = io.write_all(found.as_bytes()).await;
                    Ok::<_, ()>(())
                })
            };
            let listening = serve(listener, &[thread.handle()], 10, options, report).unwrap();
            for _ in 0..3 {
                let mut io = TcpStream::connect(addr).await.unwrap();
                let mut found = String::new();
                io.read_to_string(&mut found).await.unwrap();
                assert_eq!(found, "true Some(12.345s)");
            }
            listening.stop().await;
            thread.stop();
        });
    }

    /// A thread serving its bound of connections takes the next one only when one ends.
    #[test]
    fn past_its_bound_a_thread_accepts_when_a_connection_ends() {
        System::new().block_on(async {
            let thread = Arbiter::new();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let options = SocketOptions::default();
            let listening = serve(listener, &[thread.handle()], 2, options, echo).unwrap();
            let mut first = TcpStream::connect(addr).await.unwrap();
            let mut second = TcpStream::connect(addr).await.unwrap();
            ping(&mut first, Duration::from_secs(5)).await.unwrap();
            ping(&mut second, Duration::from_secs(5)).await.unwrap();
            // The kernel completes the third's handshake; the thread does not take it.
            let mut third = TcpStream::connect(addr).await.unwrap();
            let waiting = ping(&mut third, Duration::from_millis(300)).await;
            assert_eq!(
                waiting.map_err(|e| e.kind()),
                Err(std::io::ErrorKind::TimedOut),
                "a third connection was served past the bound of 2"
            );
            drop(first);
            let mut buf = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(5), third.read_exact(&mut buf))
                .await
                .expect("the third connection was not served after the first ended")
                .unwrap();
            assert_eq!(&buf, b"ping");
            ping(&mut second, Duration::from_secs(5)).await.unwrap();
            listening.stop().await;
            thread.stop();
        });
    }
}
