//! HTTP routes: the Socket.IO endpoint (`/socket.io/`, WebSocket and long-polling transports,
//! polling→WebSocket upgrade), health, metrics, the server API and the web pages.

pub mod api;
pub mod pages;
pub mod polling;
pub mod websocket;

use crate::actors::connection::{Connection, Transport};
use crate::actors::directory::Directory;
use crate::actors::messages::{CloseSession, TransportError, UpgradeFrame, UpgradeStart};
use crate::actors::persistence::StoreHealth;
use crate::config::{CorsConfig, Settings};
use crate::hooks::Hooks;
use actix::prelude::*;
use actix_http::ws::CloseCode;
use actix_web::body::BodyStream;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use polling::Sessions;
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use websocket::{WsInbound, WsMessage, WsSink};

/// Shared by every worker.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub directory: Addr<Directory>,
    /// Source of connection ids.
    pub next_conn: Arc<AtomicU64>,
    /// Polling sessions by sid.
    pub sessions: Sessions,
    /// Database health, for `/readyz`.
    pub store: Arc<StoreHealth>,
    /// Authentication and access decisions.
    pub hooks: Arc<dyn Hooks>,
    /// Sessions open per client IP (`server.maxConnectionsPerIp`).
    pub per_ip: PerIp,
    /// Recoverable Socket.IO sessions; `None` when `recovery.enabled` is false.
    pub recovery: Option<crate::recovery::SessionStore>,
    /// This node's view of the cluster; `None` for a single node.
    pub cluster: Option<crate::cluster::Cluster>,
}

/// Counts the Socket.IO sessions open from each IP address, up to a bound.
#[derive(Clone, Default)]
pub struct PerIp {
    /// 0 = unlimited (nothing is counted).
    max: usize,
    open: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
}

/// An address has `server.maxConnectionsPerIp` sessions open already.
#[derive(Debug)]
pub struct TooManyFromIp;

impl TooManyFromIp {
    /// HTTP 429 with an Engine.IO-style JSON error.
    fn response(&self) -> HttpResponse {
        HttpResponse::TooManyRequests().json(serde_json::json!({
            "code": 3,
            "message": "Too many connections from this address (server.maxConnectionsPerIp)",
        }))
    }
}

/// One session's place in [`PerIp`], given back when dropped (with the connection actor).
pub struct IpSlot {
    ip: IpAddr,
    open: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
}

impl PerIp {
    pub fn new(max: usize) -> Self {
        PerIp {
            max,
            open: Default::default(),
        }
    }

    /// A place for one more session from `ip`; `Err` when it has `max` open already.
    pub fn acquire(&self, ip: Option<IpAddr>) -> Result<Option<IpSlot>, TooManyFromIp> {
        let Some(ip) = ip.filter(|_| self.max > 0) else {
            return Ok(None);
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return Err(TooManyFromIp);
        }
        *count += 1;
        Ok(Some(IpSlot {
            ip,
            open: self.open.clone(),
        }))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Why a request body was not read whole.
#[derive(Debug)]
pub enum BodyError {
    /// Over this many bytes (not read further).
    TooLarge(usize),
    /// Not complete within `server.bodyTimeout`.
    TimedOut,
    /// The connection failed.
    Read(String),
}

/// Reads a request body of at most `limit` bytes within `server.bodyTimeout` (0 = no limit).
pub async fn read_body(
    mut payload: web::Payload,
    limit: usize,
    settings: &Settings,
) -> Result<web::BytesMut, BodyError> {
    let timeout = std::time::Duration::from_millis(settings.config.server.body_timeout);
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    if timeout.is_zero() {
        return read.await;
    }
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyError::TimedOut))
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/socket.io/")
            .route(web::get().to(socket_io_get))
            .route(web::post().to(socket_io_post))
            // As the reference server: any other method is a bad handshake (HTTP 400).
            .default_service(web::to(|| async { eio_error(2, "Bad handshake method") })),
    )
    .route("/healthz", web::get().to(healthz))
    .route("/readyz", web::get().to(readyz))
    .route("/metrics", web::get().to(metrics))
    .configure(api::configure);
}

/// Any other route or method: 404 with the JSON error.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({
        "code": "NOT_FOUND",
        "message": format!("no route {} {}", req.method(), req.path()),
    }))
}

/// CORS for browsers, from the configuration.
pub fn cors(config: &CorsConfig) -> actix_cors::Cors {
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "DELETE", "OPTIONS"])
        .allow_any_header()
        .max_age(3600);
    if config.origins.iter().any(|o| o == "*") {
        cors = cors.allow_any_origin();
    } else {
        for origin in &config.origins {
            cors = cors.allowed_origin(origin);
        }
    }
    if config.credentials {
        cors = cors.supports_credentials();
    } else if config.origins.iter().any(|o| o == "*") {
        cors = cors.send_wildcard();
    }
    cors
}

/// The query string of an Engine.IO request.
#[derive(Debug, Deserialize)]
struct EioQuery {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

enum Kind {
    WebSocket,
    Polling,
}

/// An Engine.IO error, as the reference server answers it.
fn eio_error(code: u8, message: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(serde_json::json!({ "code": code, "message": message }))
}

/// Checks the Engine.IO query; the error is an Engine.IO error code and message.
fn check_query(req: &HttpRequest) -> Result<(Kind, Option<String>), (u8, &'static str)> {
    let query = web::Query::<EioQuery>::from_query(req.query_string())
        .map_err(|_| (3, "Bad request"))?
        .into_inner();
    if query.eio.as_deref() != Some("4") {
        return Err((5, "Unsupported protocol version"));
    }
    let kind = match query.transport.as_deref() {
        Some("websocket") => Kind::WebSocket,
        Some("polling") => Kind::Polling,
        _ => return Err((0, "Transport unknown")),
    };
    Ok((kind, query.sid))
}

fn text(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=UTF-8")
        .body(body)
}

fn transport_error(e: TransportError) -> HttpResponse {
    match e {
        // The reference server's words exactly: clients match on them.
        TransportError::WrongTransport | TransportError::Violation => eio_error(3, "Bad request"),
        TransportError::Closed => eio_error(1, "Session ID unknown"),
    }
}

fn new_connection(
    state: &AppState,
    sid: String,
    transport: Transport,
    slot: Option<IpSlot>,
) -> Connection {
    Connection::new(
        state.next_conn.fetch_add(1, Ordering::Relaxed),
        sid,
        state.settings.clone(),
        state.directory.clone(),
        state.hooks.clone(),
        transport,
        state.sessions.clone(),
        slot,
        state.recovery.clone(),
    )
}

/// A place for a new session from the request's address.
fn ip_slot(req: &HttpRequest, state: &AppState) -> Result<Option<IpSlot>, TooManyFromIp> {
    state.per_ip.acquire(req.peer_addr().map(|a| a.ip()))
}

fn new_sid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn socket_io_get(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (kind, sid) = match check_query(&req) {
        Ok(q) => q,
        Err((code, message)) => return eio_error(code, message),
    };
    match (kind, sid) {
        (Kind::Polling, None) => {
            // Handshake: a new session whose first GET collects the open packet.
            let slot = match ip_slot(&req, &state) {
                Ok(slot) => slot,
                Err(refused) => return refused.response(),
            };
            let sid = new_sid();
            let transport = Transport::Polling {
                queue: Default::default(),
                probe: None,
            };
            let conn = new_connection(&state, sid.clone(), transport, slot);
            let addr = conn.start();
            state.sessions.insert(sid.clone(), addr);
            match state.sessions.get(&sid) {
                Some(session) => match polling::get(&session).await {
                    Ok(body) => text(body),
                    Err(e) => transport_error(e),
                },
                None => eio_error(1, "Session ID unknown"),
            }
        }
        (Kind::Polling, Some(sid)) => match state.sessions.get(&sid) {
            Some(session) => match polling::get(&session).await {
                Ok(body) => text(body),
                Err(e) => transport_error(e),
            },
            None => eio_error(1, "Session ID unknown"),
        },
        (Kind::WebSocket, None) => websocket(&req, payload, &state, None).await,
        (Kind::WebSocket, Some(sid)) => match state.sessions.get(&sid) {
            Some(session) => websocket(&req, payload, &state, Some(session.addr)).await,
            None => eio_error(1, "Session ID unknown"),
        },
    }
}

/// Opens a WebSocket: a new session, or the upgrade of the polling session `upgrade`.
async fn websocket(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    upgrade: Option<Addr<Connection>>,
) -> HttpResponse {
    let mut response = match actix_http::ws::handshake(req.head()) {
        Ok(response) => response,
        Err(_) => return eio_error(3, "Bad request"),
    };
    let slot = match upgrade {
        None => match ip_slot(req, state) {
            Ok(slot) => slot,
            Err(refused) => return refused.response(),
        },
        Some(_) => None,
    };
    let server = &state.settings.config.server;
    let (sink, body) = WsSink::new(server.max_outbound_bytes);
    let mut inbound = WsInbound::new(payload, server.max_payload as usize);
    match upgrade {
        None => {
            let sid = new_sid();
            let conn = new_connection(state, sid.clone(), Transport::WebSocket(sink), slot);
            // Registered like a polling session: a polling request with this sid gets 400 Bad
            // request, a further WebSocket is closed at once.
            let sessions = state.sessions.clone();
            Connection::create(move |ctx| {
                sessions.insert(sid, ctx.address());
                ctx.add_stream(inbound);
                conn
            });
        }
        Some(addr) => match addr.send(UpgradeStart { sink }).await {
            Ok(Ok(())) => {
                // The session's actor may live on another worker: forward what the socket
                // says, one message at a time (the socket is not read further until the
                // actor took the last one: backpressure, as on a WebSocket session).
                actix_rt::spawn(async move {
                    while let Some(msg) = inbound.next().await {
                        let closing = matches!(msg, Ok(WsMessage::Close) | Err(_));
                        if addr.send(UpgradeFrame { msg }).await.is_err() || closing {
                            return;
                        }
                    }
                    addr.do_send(UpgradeFrame {
                        msg: Ok(WsMessage::Close),
                    });
                });
            }
            // Upgraded already, or being upgraded: as the reference server, this WebSocket is
            // accepted and closed at once; the session is left alone.
            Ok(Err((TransportError::WrongTransport, mut sink))) => {
                sink.close(CloseCode::Normal, "the session is upgraded already");
            }
            Ok(Err((e, _))) => return transport_error(e),
            Err(_) => return transport_error(TransportError::Closed),
        },
    }
    match response.message_body(BodyStream::new(body)) {
        Ok(response) => HttpResponse::from(response.map_into_boxed_body()),
        Err(e) => HttpResponse::InternalServerError()
            .json(serde_json::json!({ "code": 3, "message": e.to_string() })),
    }
}

async fn socket_io_post(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let sid = match check_query(&req) {
        Ok((Kind::Polling, Some(sid))) => sid,
        Ok((Kind::Polling, None)) => return eio_error(2, "Bad handshake method"),
        Ok((Kind::WebSocket, _)) => return eio_error(3, "Bad request"),
        Err((code, message)) => return eio_error(code, message),
    };
    let Some(session) = state.sessions.get(&sid) else {
        return eio_error(1, "Session ID unknown");
    };
    // Read the body, refusing (not buffering) anything over maxPayload.
    let max = state.settings.config.server.max_payload as usize;
    let body = match read_body(payload, max, &state.settings).await {
        Ok(body) => body,
        Err(BodyError::TooLarge(_)) => {
            session.addr.do_send(CloseSession {
                reason: "POST body over maxPayload",
            });
            return HttpResponse::PayloadTooLarge()
                .json(serde_json::json!({ "code": 3, "message": "Payload too large" }));
        }
        Err(BodyError::TimedOut) => {
            return HttpResponse::RequestTimeout()
                .json(serde_json::json!({ "code": 3, "message": "Request body timeout" }));
        }
        Err(BodyError::Read(_)) => return eio_error(3, "Bad request"),
    };
    let Ok(body) = String::from_utf8(body.to_vec()) else {
        session.addr.do_send(CloseSession {
            reason: "POST body is not UTF-8",
        });
        return eio_error(3, "Bad request");
    };
    match polling::post(&session, body).await {
        Ok(()) => HttpResponse::Ok().content_type("text/html").body("ok"),
        Err(e) => transport_error(e),
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Ready once every room has claimed its lease and restored its history, while the database
/// answers, the persistence backlog has room and no room's writer has stopped.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let available = state.store.available.load(Ordering::Relaxed);
    let backlog = state.store.backlog.load(Ordering::Relaxed);
    let restoring = state.store.restoring.load(Ordering::Relaxed);
    let stopped = state.store.stopped.load(Ordering::Relaxed);
    let backlog_bytes = state.store.backlog_bytes.load(Ordering::Relaxed);
    let database = &state.settings.config.database;
    let redis = state.cluster.as_ref().map(|c| c.available());
    let ready = available
        && backlog < database.max_backlog
        && backlog_bytes < database.max_backlog_bytes
        && restoring == 0
        && stopped == 0
        && redis != Some(false);
    let mut body = serde_json::json!({
        "ready": ready,
        "database": if available { "available" } else { "unavailable" },
        "backlog": backlog,
        "maxBacklog": database.max_backlog,
        "backlogBytes": backlog_bytes,
        "maxBacklogBytes": database.max_backlog_bytes,
        "roomsRestoring": restoring,
        "roomsStopped": stopped,
    });
    if let Some(cluster) = &state.cluster {
        body["redis"] = serde_json::json!(if cluster.available() {
            "available"
        } else {
            "unavailable"
        });
        body["node"] = serde_json::json!(&*cluster.node);
        body["nodes"] = serde_json::json!(cluster.nodes());
    }
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// The Prometheus text; behind a bearer key when `metrics.key` is set.
async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(key) = &state.settings.config.metrics.key {
        if let Err(refused) = api::check_bearer(&req, std::slice::from_ref(key)) {
            return refused;
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::METRICS.render())
}
