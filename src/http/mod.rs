//! HTTP routes: the Socket.IO endpoint (`/socket.io/`, WebSocket and long-polling transports,
//! polling→WebSocket upgrade), health, metrics, the server API and the web pages.

pub mod api;
pub mod listener;
pub mod pages;
pub mod polling;
pub mod upgrade;
pub mod websocket;

use crate::actors::connection::{Connection, Transport};
use crate::actors::directory::Directory;
use crate::actors::messages::{CloseSession, TransportError};
use crate::actors::persistence::StoreHealth;
use crate::config::{CorsConfig, Settings};
use crate::hooks::Hooks;
use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use polling::Sessions;
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Shared by every thread serving connections.
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
    /// Room ids → room actors, kept by the directory.
    pub room_index: crate::actors::directory::RoomIndex,
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
    not_found_for(req.method(), req.path())
}

fn not_found_for(method: &actix_web::http::Method, path: &str) -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({
        "code": "NOT_FOUND",
        "message": format!("no route {method} {path}"),
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
    parse_query(req.query_string())
}

fn parse_query(query: &str) -> Result<(Kind, Option<String>), (u8, &'static str)> {
    let query = web::Query::<EioQuery>::from_query(query)
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
        state.room_index.clone(),
    )
}

/// A place for a new session from the request's address.
fn ip_slot(req: &HttpRequest, state: &AppState) -> Result<Option<IpSlot>, TooManyFromIp> {
    state.per_ip.acquire(req.peer_addr().map(|a| a.ip()))
}

fn new_sid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn socket_io_get(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
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
        // A WebSocket handshake goes to `upgrade`: this GET did not ask for one.
        (Kind::WebSocket, _) => eio_error(3, "Bad request"),
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
