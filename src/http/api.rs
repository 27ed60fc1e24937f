//! The server HTTP API (the backend's `dialogue.trigger`): trigger events into rooms, manage
//! rooms, read history. Every route needs `Authorization: Bearer <key>`; with no key configured
//! the API is off. Errors are `{code, message}` with the socket error codes.

// Handlers return early with a ready `HttpResponse` as their error; its size does not matter.
#![allow(clippy::result_large_err)]

use super::{AppState, BodyError};
use crate::actors::messages::{
    CreateRoom, DeleteRoom, GetHistory, GetPresence, ListRooms, LookupRoom, Reply, Trigger,
    Triggered,
};
use crate::actors::room::RoomActor;
use crate::auth::Identity;
use crate::error::{DialogueError, ErrorCode};
use crate::protocol::dialogue::{history_range, HistoryRange};
use crate::protocol::storable;
use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

/// The OpenAPI description of these routes.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Registers the `/api` routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/openapi.json", web::get().to(openapi))
        .service(
            web::resource("/api/rooms")
                .route(web::get().to(list_rooms))
                .route(web::post().to(create_room)),
        )
        .route("/api/rooms/{room_id}", web::delete().to(delete_room))
        .route(
            "/api/rooms/{room_id}/events/{event}",
            web::post().to(trigger),
        )
        .route(
            "/api/rooms/{room_id}/history/{event}",
            web::get().to(history),
        )
        .route("/api/rooms/{room_id}/presence", web::get().to(presence))
        .route("/api/stats", web::get().to(stats));
}

fn status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::RoomNotFound | ErrorCode::EventNotAllowed => StatusCode::NOT_FOUND,
        ErrorCode::ValidationFailed | ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RoomExists | ErrorCode::RoomFull => StatusCode::CONFLICT,
        ErrorCode::JoinDenied | ErrorCode::PermissionDenied | ErrorCode::NotInRoom => {
            StatusCode::FORBIDDEN
        }
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// An error answer: the socket error code and message as JSON.
pub fn error(e: &DialogueError) -> HttpResponse {
    let source = crate::stats::ErrorSource::Client;
    crate::stats::record_error(
        source,
        e.code.as_str(),
        &e.message,
        None,
        Some("(HTTP API)"),
    );
    HttpResponse::build(status(e.code)).json(e)
}

fn plain_error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "code": code, "message": message }))
}

/// Checks the bearer key.
fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), HttpResponse> {
    let keys = &state.settings.config.api.keys;
    if keys.is_empty() {
        return Err(plain_error(
            StatusCode::NOT_FOUND,
            "API_DISABLED",
            "the server API is off: configure api.keys or DIALOGUE_API_KEYS",
        ));
    }
    check_bearer(req, keys)
}

/// Checks `Authorization: Bearer <key>` against `keys` (401 with the JSON error otherwise).
pub(super) fn check_bearer(req: &HttpRequest, keys: &[String]) -> Result<(), HttpResponse> {
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        None => Err(plain_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing Authorization: Bearer <key>",
        )),
        Some(key)
            if keys
                .iter()
                .any(|k| constant_time_eq(k.as_bytes(), key.as_bytes())) =>
        {
            Ok(())
        }
        Some(_) => Err(plain_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "the API key is not valid",
        )),
    }
}

/// What a `/api/rooms/{roomId}` route checks first: the key, then the room id.
fn authorized_room_id(
    req: &HttpRequest,
    state: &AppState,
    path: web::Path<String>,
) -> Result<String, HttpResponse> {
    authorize(req, state)?;
    let room_id = path.into_inner();
    storable::check_room_id(&room_id).map_err(|e| error(&e))?;
    Ok(room_id)
}

/// Compares without stopping at the first difference (no timing hint about the key).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn room(state: &AppState, room_id: &str) -> Result<Addr<RoomActor>, HttpResponse> {
    match state
        .directory
        .send(LookupRoom {
            room_id: room_id.to_owned(),
        })
        .await
    {
        Ok(Some(room)) => Ok(room),
        _ => Err(error(&DialogueError::room_not_found(room_id))),
    }
}

fn gone() -> HttpResponse {
    plain_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "the service is shutting down",
    )
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// `POST /api/rooms/{roomId}/events/{event}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    data: Value,
    from: Option<String>,
    meta: Option<Value>,
}

/// The door checks of a route (see [`storable`]): the database can store what passes.
fn check_path(room_id: &str, event: &str) -> Result<(), DialogueError> {
    storable::check_room_id(room_id)?;
    storable::check_event_name(event)
}

fn check_trigger(room_id: &str, event: &str, body: &TriggerBody) -> Result<(), DialogueError> {
    check_path(room_id, event)?;
    if let Some(from) = &body.from {
        storable::USER_ID.check("from", from)?;
    }
    storable::check_json("data", &body.data)?;
    match &body.meta {
        Some(meta) => storable::check_json("meta", meta),
        None => Ok(()),
    }
}

fn check_create_room(body: &CreateRoomBody) -> Result<(), DialogueError> {
    storable::ROOM_ID.check("id", &body.id)?;
    storable::check_text("name", &body.name)?;
    if let Some(description) = &body.description {
        storable::check_text("description", description)?;
    }
    for (field, list) in [
        ("events", &body.events),
        ("defaultSubscriptions", &body.default_subscriptions),
    ] {
        for name in list.iter().flatten().filter(|name| *name != "*") {
            storable::EVENT_NAME.check(field, name)?;
        }
    }
    Ok(())
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8], shape: &str) -> Result<T, HttpResponse> {
    serde_json::from_slice(body).map_err(|e| {
        error(&DialogueError::invalid(format!(
            "the body must be {shape}: {e}"
        )))
    })
}

/// Reads a request body of at most `limit` bytes; a larger one is answered 413 with the JSON
/// error (and not read further), a slow one 408.
async fn read_body(
    payload: web::Payload,
    limit: usize,
    state: &AppState,
) -> Result<web::BytesMut, HttpResponse> {
    super::read_body(payload, limit, &state.settings)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(limit) => error(&DialogueError::new(
                ErrorCode::PayloadTooLarge,
                format!("the body is over {limit} bytes"),
            )),
            BodyError::TimedOut => plain_error(
                StatusCode::REQUEST_TIMEOUT,
                "INVALID_REQUEST",
                "the body did not arrive within server.bodyTimeout",
            ),
            BodyError::Read(e) => error(&DialogueError::invalid(format!(
                "the body could not be read: {e}"
            ))),
        })
}

/// Room bodies are small: names, descriptions and lists of event names.
const MAX_ROOM_BODY: usize = 64 * 1024;

async fn trigger(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return r;
    }
    let (room_id, event) = path.into_inner();
    let max = state.settings.config.limits.max_payload_bytes;
    // data + meta may be `max` bytes; `from` and the JSON around them get a little more.
    let body = match read_body(payload, max.saturating_add(4096), &state).await {
        Ok(body) => body,
        Err(r) => return r,
    };
    // As on a connection: a body that would take more than 8 × maxPayload once parsed.
    let weight = crate::protocol::parsed_json_weight(&body);
    if weight > 8 * state.settings.config.server.max_payload as usize {
        return error(&DialogueError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body would take about {weight} bytes parsed (too many JSON objects)"),
        ));
    }
    let body: TriggerBody = match parse_json(&body, "{data, from?, meta?}") {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Nothing the database cannot store goes further (ids, `from`, NUL characters).
    if let Err(e) = check_trigger(&room_id, &event, &body) {
        return error(&e);
    }
    let size = body.data.to_string().len() + body.meta.as_ref().map_or(0, |m| m.to_string().len());
    if size > max {
        return error(&DialogueError::new(
            ErrorCode::PayloadTooLarge,
            format!("event data is {size} bytes; the limit is {max}"),
        ));
    }
    let room = match room(&state, &room_id).await {
        Ok(room) => room,
        Err(r) => return r,
    };
    let from = body.from.unwrap_or_else(|| "server".to_owned());
    let (reply, answer) = Reply::channel();
    let msg = Trigger {
        conn: None,
        identity: Arc::new(Identity::server(&from)),
        event,
        data: body.data,
        meta: body.meta,
        echo: true,
        reply,
        key: None,
    };
    room.do_send(msg);
    // Answered once the event is accepted (`accepted`) or committed (`stored`).
    match answer.await {
        Ok(Ok(Triggered {
            json: Some(json), ..
        })) => HttpResponse::Created()
            .content_type("application/json")
            .body(json),
        Ok(Ok(Triggered { seq, json: None })) => {
            HttpResponse::Created().json(serde_json::json!({ "seq": seq }))
        }
        Ok(Err(e)) => error(&e),
        Err(_) => gone(),
    }
}

/// `GET /api/stats`: what the operator dashboard shows.
async fn stats(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return r;
    }
    let url = &state.settings.config.database.url;
    HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(crate::stats::snapshot(&state.directory, &state.store, url).await)
}

async fn list_rooms(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return r;
    }
    match state.directory.send(ListRooms).await {
        Ok(rooms) => HttpResponse::Ok().json(rooms),
        Err(_) => gone(),
    }
}

/// `POST /api/rooms` body: a full room, validated like the configuration.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateRoomBody {
    id: String,
    name: String,
    description: Option<String>,
    max_size: Option<u32>,
    events: Option<Vec<String>>,
    default_subscriptions: Option<Vec<String>>,
    sync_history_on_join: Option<crate::config::SyncHistory>,
    #[serde(default)]
    presence: bool,
}

async fn create_room(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return r;
    }
    let body = match read_body(payload, MAX_ROOM_BODY, &state).await {
        Ok(body) => body,
        Err(r) => return r,
    };
    let body: CreateRoomBody = match parse_json(
        &body,
        "{id, name, description?, maxSize?, events?, defaultSubscriptions?, syncHistoryOnJoin?}",
    ) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(e) = check_create_room(&body) {
        return error(&e);
    }
    use crate::config::SyncHistory;
    let create = CreateRoom {
        id: body.id,
        name: body.name,
        description: body.description,
        max_size: body.max_size,
        events: body.events,
        default_subscriptions: body.default_subscriptions,
        sync_history_on_join: match body.sync_history_on_join {
            None | Some(SyncHistory::All(false)) => None,
            Some(SyncHistory::All(true)) => Some(usize::MAX),
            Some(SyncHistory::Newest(n)) => Some(n as usize),
        },
        presence: body.presence,
        identity: Arc::new(Identity::server("server API")),
    };
    match state.directory.send(create).await {
        Ok(Ok(info)) => HttpResponse::Created().json(info),
        Ok(Err(e)) => error(&e),
        Err(_) => gone(),
    }
}

async fn delete_room(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let room_id = match authorized_room_id(&req, &state, path) {
        Ok(room_id) => room_id,
        Err(r) => return r,
    };
    let delete = DeleteRoom {
        room_id: room_id.clone(),
        identity: Arc::new(Identity::server("server API")),
    };
    match state.directory.send(delete).await {
        Ok(Ok(())) => HttpResponse::Ok().json(serde_json::json!({ "roomId": room_id })),
        Ok(Err(e)) => error(&e),
        Err(_) => gone(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    start: Option<u64>,
    end: Option<u64>,
    before: Option<u64>,
    limit: Option<u64>,
}

/// The history range of a `GET …/history/{event}` query string (`start`/`end` or
/// `before`/`limit`); anything else, a number that is not a `u64` included, is INVALID_REQUEST.
pub fn parse_history_query(query: &str) -> Result<HistoryRange, DialogueError> {
    let query = web::Query::<HistoryQuery>::from_query(query)
        .map_err(|e| {
            DialogueError::invalid(format!(
                "query: start/end or before/limit, non-negative integers: {e}"
            ))
        })?
        .into_inner();
    history_range(query.start, query.end, query.before, query.limit)
}

/// `GET /api/rooms/{roomId}/presence`: who is in the room.
async fn presence(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let room_id = match authorized_room_id(&req, &state, path) {
        Ok(room_id) => room_id,
        Err(r) => return r,
    };
    let room = match room(&state, &room_id).await {
        Ok(room) => room,
        Err(r) => return r,
    };
    match room.send(GetPresence { conn: None }).await {
        Ok(Ok(json)) => HttpResponse::Ok()
            .content_type("application/json")
            .body(json),
        Ok(Err(e)) => error(&e),
        Err(_) => gone(),
    }
}

async fn history(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return r;
    }
    let range = match parse_history_query(req.query_string()) {
        Ok(range) => range,
        Err(e) => return error(&e),
    };
    let (room_id, event) = path.into_inner();
    if let Err(e) = check_path(&room_id, &event) {
        return error(&e);
    }
    let room = match room(&state, &room_id).await {
        Ok(room) => room,
        Err(r) => return r,
    };
    let read = GetHistory {
        conn: None,
        event,
        range,
    };
    match room.send(read).await {
        Ok(Ok(page)) => HttpResponse::Ok()
            .content_type("application/json")
            .body(page.json),
        Ok(Err(e)) => error(&e),
        Err(_) => gone(),
    }
}
