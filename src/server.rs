//! Starting the service: the actors, the HTTP server on an already-bound listener, and
//! graceful shutdown.

use crate::actors::directory::Directory;
use crate::actors::messages::{FlushAll, WaitWritten};
use crate::actors::persistence::{Persistence, ReleaseAll, Spill};
use crate::config::Settings;
use crate::hooks::{ConfigHooks, Hooks};
use crate::http::{self, AppState};
use crate::store;
use actix::prelude::*;
use actix_http::HttpService;
use actix_service::map_config;
use actix_web::dev::AppConfig;
use actix_web::{web, App};
use std::net::TcpListener;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

fn threads(configured: usize) -> usize {
    if configured == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        configured
    }
}

/// Connections the kernel queues before the server accepts them (capped by
/// `net.core.somaxconn`). std's `TcpListener::bind` asks for 128: a reconnect storm of more
/// than that at once (clients coming back after a restart) would wait for SYN retries, a
/// second or more.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds `host:port` (the first address that binds) with [`LISTEN_BACKLOG`].
pub fn listen(host: &str, port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::ToSocketAddrs;
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        let bound = (|| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(LISTEN_BACKLOG)?;
            Ok::<TcpListener, std::io::Error>(socket.into())
        })();
        match bound {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{host} has no address"))))
}

/// Runs the service on `listener` with the built-in hooks (the configured auth mode and access
/// rules) until SIGINT/SIGTERM. Call inside an actix `System`.
pub async fn run(settings: Settings, listener: TcpListener) -> std::io::Result<()> {
    let hooks = ConfigHooks::new(&settings).map_err(std::io::Error::other)?;
    run_with_hooks(settings, listener, Arc::new(hooks)).await
}

/// Runs the service with custom [`Hooks`] (see `examples/`).
pub async fn run_with_hooks(
    settings: Settings,
    listener: TcpListener,
    hooks: Arc<dyn Hooks>,
) -> std::io::Result<()> {
    let settings = Arc::new(settings);
    let server_cfg = &settings.config.server;
    if settings.config.auth.mode == crate::config::AuthMode::Open {
        log::warn!(
            "auth.mode is open: user ids are self-asserted by clients (auth.userId); use auth.mode: jwt to verify them"
        );
    }
    for warning in settings.warnings() {
        log::warn!("{warning}");
    }
    crate::metrics::set_max_room_series(settings.config.metrics.max_room_series);

    let db_url = settings.config.database.url.clone();
    let db = store::connect(&db_url).await.map_err(|e| {
        std::io::Error::other(format!("cannot open the database {}: {e}", redact(&db_url)))
    })?;
    log::info!("database {} ready (migrations applied)", redact(&db_url));
    let spill_file = std::path::Path::new(&settings.config.database.spill_file);
    match crate::spill::replay(&db, spill_file).await {
        Ok(0) => {}
        Ok(n) => log::info!(
            "replayed {n} events from the spill file {} (left by a shutdown while the database was down)",
            spill_file.display()
        ),
        Err(e) => {
            return Err(std::io::Error::other(format!(
                "cannot replay the spill file {}: {e}",
                spill_file.display()
            )))
        }
    }

    let room_threads: Vec<Arbiter> = (0..threads(server_cfg.room_threads))
        .map(|_| Arbiter::new())
        .collect();
    let persistence_thread = Arbiter::new();
    let node: Arc<str> = crate::store::node_name().into();
    let (persistence_addr, persistence, store_health) = Persistence::start(
        db_url.clone(),
        db.clone(),
        &settings.config.database,
        node.clone(),
        &persistence_thread.handle(),
    );
    let cluster = match &settings.config.cluster.redis {
        Some(url) => {
            let lease = Duration::from_millis(settings.config.cluster.lease_timeout);
            let cluster = crate::cluster::Cluster::join(&url.value, &node, lease)
                .await
                .map_err(std::io::Error::other)?;
            cluster.start_heartbeat();
            log::info!(
                "cluster: joined through Redis with {} live nodes",
                cluster.nodes().len()
            );
            Some(cluster)
        }
        None => None,
    };
    let room_index = crate::actors::directory::RoomIndex::default();
    let directory = Directory::new(
        settings.clone(),
        room_threads.iter().map(Arbiter::handle).collect(),
        persistence.clone(),
        hooks.clone(),
        cluster.clone(),
        room_index.clone(),
    )
    .start();

    // The session store writes on a thread of its own: its bursts (thousands of clients
    // connecting) neither hold up the rooms' threads nor the history's writes and reads.
    let session_thread = settings.config.recovery.enabled.then(Arbiter::new);
    let recovery = if let Some(session_thread) = &session_thread {
        let store = crate::recovery::SessionStore::start(
            db.clone(),
            &db_url,
            settings.config.recovery.clone(),
            &session_thread.handle(),
        )
        .await
        .map_err(|e| std::io::Error::other(format!("cannot open the session store: {e}")))?;
        Some(store)
    } else {
        None
    };
    crate::stats::start_sampler(directory.clone(), store_health.clone());
    let state = AppState {
        settings: settings.clone(),
        directory: directory.clone(),
        next_conn: Arc::new(AtomicU64::new(1)),
        sessions: Default::default(),
        store: store_health,
        hooks,
        per_ip: http::PerIp::new(settings.config.server.max_connections_per_ip),
        recovery,
        cluster: cluster.clone(),
        room_index,
    };
    let sessions = state.sessions.clone();
    if settings.config.api.keys.is_empty() {
        log::info!("server API off: no api.keys or DIALOGUE_API_KEYS configured");
    } else {
        log::info!(
            "server API on at /api ({} keys)",
            settings.config.api.keys.len()
        );
    }
    let web_ui = if settings.config.http.web_ui {
        let auth = &settings.config.auth.mode;
        let ui = match std::env::var_os("DIALOGUE_WEB_DIR") {
            Some(dir) => http::pages::WebUi::from_dir(dir.as_ref(), auth)
                .map_err(|e| std::io::Error::other(format!("DIALOGUE_WEB_DIR: {e}")))?,
            None => http::pages::WebUi::embedded(auth),
        };
        Some(Arc::new(ui))
    } else {
        None
    };
    let addr = listener.local_addr()?;
    let cors = settings.config.cors.clone();
    let write_timeout =
        (server_cfg.write_timeout > 0).then(|| Duration::from_millis(server_cfg.write_timeout));
    let client_request_timeout = Duration::from_millis(server_cfg.header_timeout);
    let room_handles: Vec<_> = room_threads.iter().map(Arbiter::handle).collect();
    let max = http::listener::MAX_HTTP_CONNECTIONS;
    let options = http::listener::SocketOptions {
        nodelay: true,
        write_timeout,
    };
    let listening = http::listener::serve(listener, &room_handles, max, options, move || {
        let app = App::new()
            .wrap(http::cors(&cors))
            .app_data(web::Data::new(state.clone()))
            .configure(http::configure)
            .configure(|cfg| {
                if let Some(ui) = &web_ui {
                    http::pages::configure(cfg, ui.clone());
                }
            })
            .default_service(web::to(http::not_found));
        HttpService::build()
            // Slowloris: a request whose headers take longer is answered 408 and closed.
            .client_request_timeout(client_request_timeout)
            .local_addr(addr)
            // WebSocket handshakes: the socket leaves the dispatcher (http::upgrade).
            .upgrade(http::upgrade::service(state.clone()))
            .finish(map_config(app, move |_| AppConfig::default()))
    })?;
    log::info!(
        "dialogue listening on http://{addr} ({} rooms, {} room threads)",
        settings.config.rooms.len(),
        room_threads.len()
    );
    let signal = shutdown_signal().await;
    log::info!("{signal}: closing connections and saving history");
    // Stop accepting and drop open HTTP connections; their rooms keep what they accepted.
    listening.stop().await;
    // WebSocket sessions run on the room threads, which go on: close them before the rooms
    // write what they accepted, so nothing is accepted after that.
    close_sessions(&sessions, Duration::from_secs(2)).await;

    let timeout = Duration::from_millis(settings.config.server.shutdown_timeout);
    // A cluster node leaves the live nodes first: the others take its rooms over, each once
    // this node wrote what the room accepted and gave up its lease.
    if let Some(cluster) = &cluster {
        let _ = tokio::time::timeout(Duration::from_secs(2), cluster.leave()).await;
        let handed = directory.send(crate::actors::directory::HandOverAll);
        if tokio::time::timeout(timeout, handed).await.is_err() {
            log::warn!(
                "not every room was handed over within {}ms",
                timeout.as_millis()
            );
        }
    }
    // Every room hands over what it accepted and not yet sent; the store writes what is
    // queued, then gives up the rooms' leases (a clean stop: no epoch change).
    let flushed = async {
        let _ = directory.send(FlushAll).await;
        let _ = persistence_addr.send(WaitWritten).await;
    };
    let saved = tokio::time::timeout(timeout, flushed).await.is_ok();
    let result = if saved {
        let _ =
            tokio::time::timeout(Duration::from_secs(5), persistence_addr.send(ReleaseAll)).await;
        log::info!("history saved; dialogue stopped");
        Ok(())
    } else {
        // The database cannot take it: keep it in the spill file for the next start.
        match persistence_addr.send(Spill).await {
            Ok(Ok(n)) => {
                log::warn!(
                    "the database did not take the last {n} events within {}ms; they are in the spill file {} and are written at the next start",
                    timeout.as_millis(),
                    spill_file.display()
                );
                Ok(())
            }
            Ok(Err(e)) => Err(std::io::Error::other(format!(
                "history not fully written within {}ms and the spill file {} failed: {e}",
                timeout.as_millis(),
                spill_file.display()
            ))),
            Err(_) => Err(std::io::Error::other(format!(
                "history not fully written within {}ms: {} events were not saved",
                timeout.as_millis(),
                persistence
                    .backlog
                    .load(std::sync::atomic::Ordering::Relaxed)
            ))),
        }
    };
    for arbiter in room_threads {
        arbiter.stop();
    }
    persistence_thread.stop();
    if let Some(session_thread) = session_thread {
        session_thread.stop();
    }
    result
}

/// Closes every open session (its socket is closed, its recoverable state kept) and waits
/// up to `timeout` for them to end.
async fn close_sessions(sessions: &http::polling::Sessions, timeout: Duration) {
    let closing = sessions
        .all()
        .into_iter()
        .map(|addr| addr.send(crate::actors::messages::ToConnection::ServerStopping));
    let _ = tokio::time::timeout(timeout, futures_util::future::join_all(closing)).await;
}

/// Resolves on SIGINT or SIGTERM, naming it.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    /// A burst of connections beyond std's backlog of 128 completes its handshakes before
    /// the server accepts any of them (with 128, the rest wait for SYN retries).
    #[test]
    fn the_listener_queues_a_burst_of_connections() {
        let listener = listen("127.0.0.1", 0).unwrap();
        let addr = listener.local_addr().unwrap();
        let burst: Vec<TcpStream> = (0..600)
            .map(|i| {
                TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                    .unwrap_or_else(|e| panic!("connection {i} of the burst: {e}"))
            })
            .collect();
        assert_eq!(burst.len(), 600);
        // And they are all there to accept.
        listener.set_nonblocking(true).unwrap();
        let accepted = std::iter::from_fn(|| listener.accept().ok()).count();
        assert_eq!(accepted, 600);
    }
}
