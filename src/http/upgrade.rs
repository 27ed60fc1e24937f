//! The WebSocket handshake, outside the HTTP dispatcher. actix-http hands every request that
//! asks for a protocol upgrade here, with its socket; a Socket.IO WebSocket is answered `101`
//! and leaves the HTTP layer (and the dispatcher's two 8 KiB buffers) for good.
//!
//! A new session's socket stays on the room thread that accepted it ([`super::listener`]),
//! where its [`Connection`] actor reads it ([`WsInbound`]) and a writer task sends its queue
//! ([`write_out`]): rooms on that thread deliver to it with no cross-thread wake-up, and a
//! frame for a quiet connection is written to the socket by the room itself. The
//! WebSocket of a polling session being upgraded stays on the thread that accepted it and
//! talks to the session's actor (which may live on another) by messages, as before the
//! upgrade.

use super::{
    eio_error, new_connection, new_sid, not_found_for, parse_query, transport_error, AppState, Kind,
};
use crate::actors::connection::{Connection, Transport};
use crate::actors::messages::{TransportError, UpgradeFrame, UpgradeStart};
use crate::http::websocket::{write_out, WsInbound, WsMessage, WsSink};
use actix::prelude::*;
use actix_codec::Framed;
use actix_http::ws::CloseCode;
use actix_http::{h1, header, HttpMessage, Request};
use actix_service::{fn_service, ServiceFactory};
use actix_web::HttpResponse;
use futures_util::StreamExt;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What actix-http hands over: the request head and the connection with what was read past it.
pub type Upgraded = (Request, Framed<TcpStream, h1::Codec>);

/// The upgrade service of one room thread.
pub fn service(
    state: AppState,
) -> impl ServiceFactory<Upgraded, Config = (), Response = (), Error = Infallible, InitError = ()> {
    fn_service(move |(req, framed): Upgraded| {
        let state = state.clone();
        async move {
            let parts = framed.into_parts();
            // Responses to earlier requests on this connection not written yet go first.
            let mut io = parts.io;
            if !parts.write_buf.is_empty() && io.write_all(&parts.write_buf).await.is_err() {
                return Ok(());
            }
            if let Err(refused) = open(&req, io, &parts.read_buf, &state).await {
                refused.send().await;
            }
            Ok(())
        }
    })
}

/// A request that is not a WebSocket we serve: its HTTP answer, then the connection closes.
struct Refused(TcpStream, HttpResponse);

impl Refused {
    async fn send(self) {
        let Refused(mut io, response) = self;
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let body = actix_web::body::to_bytes(response.into_body())
            .await
            .unwrap_or_default();
        let head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        let _ = io.write_all(&bytes).await;
        let _ = io.shutdown().await;
    }
}

/// Checks the request, answers `101` and starts the WebSocket; or says why not.
async fn open(
    req: &Request,
    mut io: TcpStream,
    early: &[u8],
    state: &AppState,
) -> Result<(), Refused> {
    macro_rules! refuse {
        ($response:expr) => {
            return Err(Refused(io, $response))
        };
    }
    if req.path() != "/socket.io/" {
        refuse!(not_found_for(req.method(), req.path()));
    }
    if req.method() != actix_http::Method::GET {
        refuse!(eio_error(2, "Bad handshake method"));
    }
    if !origin_allowed(&state.settings.config.cors.origins, req) {
        refuse!(HttpResponse::Forbidden().json(serde_json::json!({
            "code": 3,
            "message": "Origin not allowed (cors.origins)",
        })));
    }
    let sid = match parse_query(req.uri().query().unwrap_or("")) {
        Ok((Kind::WebSocket, sid)) => sid,
        Ok((Kind::Polling, _)) => refuse!(eio_error(3, "Bad request")),
        Err((code, message)) => refuse!(eio_error(code, message)),
    };
    if actix_http::ws::verify_handshake(req.head()).is_err() {
        refuse!(eio_error(3, "Bad request"));
    }
    let server = &state.settings.config.server;
    let Some(sid) = sid else {
        let slot = match state.per_ip.acquire(req.peer_addr().map(|a| a.ip())) {
            Ok(slot) => slot,
            Err(refused) => refuse!(refused.response()),
        };
        if switch(req, &mut io).await.is_err() {
            return Ok(());
        }
        // The socket stays on this thread, in its reactor, with the session's actor.
        let socket = Arc::new(io);
        Connection::create(|ctx| {
            let sid = new_sid();
            let sink = WsSink::new(server.max_outbound_bytes);
            actix_rt::spawn(write_out(sink.queue(), socket.clone()));
            ctx.add_stream(WsInbound::new(socket, early, server.max_payload as usize));
            // Registered like a polling session: a polling request with this sid gets 400 Bad
            // request, a further WebSocket is closed at once.
            state.sessions.insert(sid.clone(), ctx.address());
            new_connection(state, sid, Transport::WebSocket(sink), slot)
        });
        return Ok(());
    };
    // The upgrade of a polling session.
    let Some(session) = state.sessions.get(&sid) else {
        refuse!(eio_error(1, "Session ID unknown"));
    };
    let addr = session.addr;
    let mut sink = WsSink::new(server.max_outbound_bytes);
    let queue = sink.queue();
    let probing = match addr.send(UpgradeStart { sink }).await {
        Ok(Ok(())) => true,
        // Upgraded already, or being upgraded: as the reference server, this WebSocket is
        // accepted and closed at once; the session is left alone.
        Ok(Err((TransportError::WrongTransport, returned))) => {
            sink = returned;
            sink.close(CloseCode::Normal, "the session is upgraded already");
            false
        }
        Ok(Err((e, _))) => refuse!(transport_error(e)),
        Err(_) => refuse!(transport_error(TransportError::Closed)),
    };
    if switch(req, &mut io).await.is_err() {
        // The actor sees the probe end as a closed socket.
        if probing {
            addr.do_send(UpgradeFrame {
                msg: Ok(WsMessage::Close),
            });
        }
        return Ok(());
    }
    let socket = Arc::new(io);
    actix_rt::spawn(write_out(queue, socket.clone()));
    if probing {
        let mut inbound = WsInbound::new(socket, early, server.max_payload as usize);
        // The session's actor may live on another worker: forward what the socket says, one
        // message at a time (the socket is not read further until the actor took the last
        // one: backpressure, as on a WebSocket session).
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
    Ok(())
}

/// Answers `101 Switching Protocols`.
async fn switch(req: &Request, io: &mut TcpStream) -> std::io::Result<()> {
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| actix_http::ws::hash_key(k.as_bytes()))
        .ok_or(std::io::ErrorKind::InvalidInput)?;
    let mut head = Vec::with_capacity(160);
    head.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: ",
    );
    head.extend_from_slice(&key);
    head.extend_from_slice(b"\r\n\r\n");
    io.write_all(&head).await
}

/// Browsers send `Origin` with a WebSocket; only the configured origins may open one (as
/// `cors.origins` allows them on the HTTP routes). Clients that send none are not browsers.
fn origin_allowed(origins: &[String], req: &Request) -> bool {
    if origins.iter().any(|o| o == "*") {
        return true;
    }
    match req.headers().get(header::ORIGIN) {
        None => true,
        Some(origin) => origins.iter().any(|o| o.as_bytes() == origin.as_bytes()),
    }
}
