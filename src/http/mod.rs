//! HTTP routes: the Socket.IO endpoint (`/socket.io/`) and health.

pub mod websocket;

use crate::actors::connection::Connection;
use crate::actors::directory::Directory;
use crate::config::Settings;
use actix::prelude::*;
use actix_web::body::BodyStream;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use websocket::{WsInbound, WsOutbox, WsOutboxBody};

/// Shared by every worker.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub directory: Addr<Directory>,
    /// Source of connection ids.
    pub next_conn: Arc<AtomicU64>,
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/socket.io/", web::get().to(socket_io))
        .route("/socket.io/", web::post().to(socket_io_post))
        .route("/healthz", web::get().to(healthz));
}

/// The query string of an Engine.IO request.
#[derive(Debug, Deserialize)]
struct EioQuery {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

/// An Engine.IO handshake error, as the reference server answers it.
fn eio_error(code: u8, message: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(serde_json::json!({ "code": code, "message": message }))
}

/// Checks the Engine.IO query; the error is an Engine.IO error code and message.
fn check_query(req: &HttpRequest) -> Result<EioQuery, (u8, &'static str)> {
    let query = web::Query::<EioQuery>::from_query(req.query_string())
        .map_err(|_| (3, "Bad request"))?
        .into_inner();
    if query.eio.as_deref() != Some("4") {
        return Err((5, "Unsupported protocol version"));
    }
    match query.transport.as_deref() {
        Some("websocket") => {}
        Some("polling") => return Err((0, "Transport unknown: only websocket is served")),
        _ => return Err((0, "Transport unknown")),
    }
    if query.sid.is_some() {
        return Err((1, "Session ID unknown"));
    }
    Ok(query)
}

async fn socket_io(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err((code, message)) = check_query(&req) {
        return eio_error(code, message);
    }
    let mut response = match actix_http::ws::handshake(req.head()) {
        Ok(response) => response,
        Err(e) => return eio_error(3, &format!("Bad request: {e}")),
    };
    let server = &state.settings.config.server;
    let out = WsOutbox::new(server.max_outbound_bytes);
    let inbound = WsInbound::new(payload, server.max_payload as usize);
    let id = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let settings = state.settings.clone();
    let directory = state.directory.clone();
    let conn_out = out.clone();
    Connection::create(move |ctx| {
        ctx.add_stream(inbound);
        Connection::new(id, settings, directory, conn_out)
    });
    match response.message_body(BodyStream::new(WsOutboxBody(out))) {
        Ok(response) => HttpResponse::from(response.map_into_boxed_body()),
        Err(e) => HttpResponse::InternalServerError()
            .json(serde_json::json!({ "code": 3, "message": e.to_string() })),
    }
}

async fn socket_io_post(req: HttpRequest) -> HttpResponse {
    match check_query(&req) {
        Err((code, message)) => eio_error(code, message),
        Ok(_) => eio_error(2, "Bad handshake method"),
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}
