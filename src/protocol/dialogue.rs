//! The dialogue events carried in Socket.IO EVENT packets: client requests (parsed from
//! untrusted JSON into typed structs) and the server's message shapes.

use crate::error::DialogueError;
use crate::protocol::storable;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest page a single history request may ask for.
pub const MAX_HISTORY_PAGE: u64 = 1000;
/// Page size when a request gives no `end`/`limit`.
pub const DEFAULT_HISTORY_PAGE: u64 = 50;

/// `{roomId}` payloads: join, leave, subscribeAll, deleteRoom.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomRef {
    pub room_id: String,
}

/// `dialogue:join {roomId, since?, epoch?}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub room_id: String,
    /// Resume: the last seq the client has of each event; the join then sends exactly the
    /// events after them, in seq order, before any live event (instead of
    /// `syncHistoryOnJoin`).
    #[serde(default)]
    pub since: Option<std::collections::BTreeMap<String, u64>>,
    /// The room's epoch the client's positions belong to (`EventMessage.epoch`, 0 when
    /// absent). After an unclean stop the room's numbering of `accepted` events may reuse
    /// seqs the client holds; the join then says UNKNOWN_POSITION instead of skipping them.
    #[serde(default)]
    pub epoch: Option<u64>,
}

/// Event names one `since` may list.
pub const MAX_SINCE_EVENTS: usize = 1000;

/// `{roomId, eventName}` payloads: subscribe, unsubscribe.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRef {
    pub room_id: String,
    pub event_name: String,
}

/// `dialogue:trigger {roomId, event, data, meta?}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerRequest {
    pub room_id: String,
    pub event: String,
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub meta: Option<Value>,
}

/// Which part of an event's history a request wants, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryRange {
    /// Positions `start..end` counted from the newest event (0 = newest).
    Offsets { start: u64, end: u64 },
    /// The `limit` newest events whose `seq` is below `before`.
    Before { before: u64, limit: u64 },
}

/// `dialogue:getHistory {roomId, eventName, start?, end?}` or `{…, before, limit?}`.
#[derive(Debug)]
pub struct HistoryRequest {
    pub room_id: String,
    pub event_name: String,
    pub range: HistoryRange,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHistoryRequest {
    room_id: String,
    event_name: String,
    start: Option<u64>,
    end: Option<u64>,
    before: Option<u64>,
    limit: Option<u64>,
}

/// `dialogue:createRoom {id, name, description?, maxSize?, presence?}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateRoomRequest {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub max_size: Option<u32>,
    /// Join and leave notices, as `presence: true` in the configuration.
    #[serde(default)]
    pub presence: bool,
}

/// A client → server dialogue event, parsed and shape-checked.
#[derive(Debug)]
pub enum ClientRequest {
    Join(JoinRequest),
    Leave(RoomRef),
    Subscribe(EventRef),
    SubscribeAll(RoomRef),
    Unsubscribe(EventRef),
    Trigger(TriggerRequest),
    GetHistory(HistoryRequest),
    ListRooms,
    CreateRoom(CreateRoomRequest),
    DeleteRoom(RoomRef),
    /// `dialogue:presence {roomId}`: who is in a room (a member asks).
    Presence(RoomRef),
}

fn payload<T: for<'de> Deserialize<'de>>(
    name: &str,
    shape: &str,
    arg: Option<Value>,
) -> Result<T, DialogueError> {
    let arg = arg.ok_or_else(|| DialogueError::invalid(format!("{name} expects {shape}")))?;
    // By value: the packet's strings move into the request instead of being copied.
    T::deserialize(arg).map_err(|e| DialogueError::invalid(format!("{name} expects {shape}: {e}")))
}

impl ClientRequest {
    /// Refuses at the door what the database could not store (see [`storable`]): room ids and
    /// event names outside their alphabet and length, and a NUL character in a trigger's
    /// `data`/`meta` or in a new room's name or description. `raw` is the text of the frame
    /// the request came in: `data` and `meta` are walked only when it spells a NUL
    /// (`\u0000`), so the usual trigger costs one substring search of its frame.
    pub fn check_storable(&self, raw: &str) -> Result<(), DialogueError> {
        match self {
            ClientRequest::Join(j) => {
                storable::check_room_id(&j.room_id)?;
                for event in j.since.iter().flat_map(|since| since.keys()) {
                    storable::EVENT_NAME.check("since", event)?;
                }
                Ok(())
            }
            ClientRequest::Leave(r)
            | ClientRequest::SubscribeAll(r)
            | ClientRequest::DeleteRoom(r)
            | ClientRequest::Presence(r) => storable::check_room_id(&r.room_id),
            ClientRequest::Subscribe(e) | ClientRequest::Unsubscribe(e) => {
                storable::check_room_id(&e.room_id)?;
                storable::EVENT_NAME.check("eventName", &e.event_name)
            }
            ClientRequest::Trigger(t) => {
                storable::check_room_id(&t.room_id)?;
                storable::check_event_name(&t.event)?;
                if storable::may_hold_nul(raw) {
                    storable::check_json("data", &t.data)?;
                    if let Some(meta) = &t.meta {
                        storable::check_json("meta", meta)?;
                    }
                }
                Ok(())
            }
            ClientRequest::GetHistory(h) => {
                storable::check_room_id(&h.room_id)?;
                storable::EVENT_NAME.check("eventName", &h.event_name)
            }
            ClientRequest::ListRooms => Ok(()),
            ClientRequest::CreateRoom(c) => {
                storable::ROOM_ID.check("id", &c.id)?;
                storable::check_text("name", &c.name)?;
                match &c.description {
                    Some(description) => storable::check_text("description", description),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Parses the event `name` with its first argument.
pub fn parse_request(name: &str, arg: Option<Value>) -> Result<ClientRequest, DialogueError> {
    const ROOM: &str = "{roomId: string}";
    const EVENT: &str = "{roomId: string, eventName: string}";
    Ok(match name {
        "dialogue:join" => {
            let join: JoinRequest =
                payload(name, "{roomId: string, since?: {eventName: seq}}", arg)?;
            if join
                .since
                .as_ref()
                .is_some_and(|s| s.len() > MAX_SINCE_EVENTS)
            {
                return Err(DialogueError::invalid(format!(
                    "since lists at most {MAX_SINCE_EVENTS} events"
                )));
            }
            ClientRequest::Join(join)
        }
        "dialogue:leave" => ClientRequest::Leave(payload(name, ROOM, arg)?),
        "dialogue:subscribe" => ClientRequest::Subscribe(payload(name, EVENT, arg)?),
        "dialogue:subscribeAll" => ClientRequest::SubscribeAll(payload(name, ROOM, arg)?),
        "dialogue:unsubscribe" => ClientRequest::Unsubscribe(payload(name, EVENT, arg)?),
        "dialogue:trigger" => ClientRequest::Trigger(payload(
            name,
            "{roomId: string, event: string, data, meta?}",
            arg,
        )?),
        "dialogue:getHistory" => {
            let raw: RawHistoryRequest = payload(
                name,
                "{roomId: string, eventName: string, start?: number, end?: number} or {roomId, eventName, before: number, limit?: number}",
                arg,
            )?;
            ClientRequest::GetHistory(HistoryRequest {
                room_id: raw.room_id,
                event_name: raw.event_name,
                range: history_range(raw.start, raw.end, raw.before, raw.limit)?,
            })
        }
        "dialogue:listRooms" => ClientRequest::ListRooms,
        "dialogue:createRoom" => ClientRequest::CreateRoom(payload(
            name,
            "{id: string, name: string, description?: string, maxSize?: number}",
            arg,
        )?),
        "dialogue:deleteRoom" => ClientRequest::DeleteRoom(payload(name, ROOM, arg)?),
        "dialogue:presence" => ClientRequest::Presence(payload(name, ROOM, arg)?),
        other => {
            return Err(DialogueError::invalid(format!(
                "unknown event '{other}'; dialogue events start with 'dialogue:'"
            )))
        }
    })
}

/// Checks and normalises the two forms of a history range.
pub fn history_range(
    start: Option<u64>,
    end: Option<u64>,
    before: Option<u64>,
    limit: Option<u64>,
) -> Result<HistoryRange, DialogueError> {
    match before {
        Some(before) => {
            if start.is_some() || end.is_some() {
                return Err(DialogueError::invalid(
                    "give either start/end or before/limit, not both",
                ));
            }
            let limit = limit.unwrap_or(DEFAULT_HISTORY_PAGE);
            if limit == 0 || limit > MAX_HISTORY_PAGE {
                return Err(DialogueError::invalid(format!(
                    "limit must be between 1 and {MAX_HISTORY_PAGE}"
                )));
            }
            Ok(HistoryRange::Before { before, limit })
        }
        None => {
            if limit.is_some() {
                return Err(DialogueError::invalid("limit goes with before"));
            }
            let start = start.unwrap_or(0);
            let end = match end {
                Some(end) => end,
                None => start
                    .checked_add(DEFAULT_HISTORY_PAGE)
                    .ok_or_else(|| DialogueError::invalid("start is out of range"))?,
            };
            if end < start {
                return Err(DialogueError::invalid("end must not be below start"));
            }
            if end - start > MAX_HISTORY_PAGE {
                return Err(DialogueError::invalid(format!(
                    "a page holds at most {MAX_HISTORY_PAGE} events"
                )));
            }
            Ok(HistoryRange::Offsets { start, end })
        }
    }
}

/// An event as clients receive it and history stores it: the JSON object
/// `{"event","roomId","data","from","timestamp","meta"?,"seq","epoch"?}`.
#[derive(Debug, Clone)]
pub struct EventMessage<'a, D: Serialize + ?Sized, M: Serialize + ?Sized> {
    pub event: &'a str,
    pub room_id: &'a str,
    pub data: &'a D,
    pub from: &'a str,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Omitted when absent.
    pub meta: Option<&'a M>,
    /// Per (room, event) sequence number, from 1, without gaps.
    pub seq: u64,
    /// The room's epoch: it grows after an unclean stop, so `(epoch, seq)` never names two
    /// different events. Omitted while 0.
    pub epoch: u64,
}

/// The serialised [`EventMessage`] and where its `data` and `meta` values sit in the text, so
/// the text is the only copy of them anyone needs to keep.
#[derive(Debug)]
pub struct EventJson {
    pub json: String,
    pub data: std::ops::Range<usize>,
    pub meta: Option<std::ops::Range<usize>>,
}

impl<D: Serialize + ?Sized, M: Serialize + ?Sized> EventMessage<'_, D, M> {
    /// Writes the JSON object, recording where `data` and `meta` are.
    pub fn to_event_json(&self) -> EventJson {
        fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> std::ops::Range<usize> {
            let start = out.len();
            if serde_json::to_writer(&mut *out, value).is_err() {
                out.truncate(start);
                out.extend_from_slice(b"null");
            }
            start..out.len()
        }
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(br#"{"event":"#);
        put(&mut out, self.event);
        out.extend_from_slice(br#","roomId":"#);
        put(&mut out, self.room_id);
        out.extend_from_slice(br#","data":"#);
        let data = put(&mut out, self.data);
        out.extend_from_slice(br#","from":"#);
        put(&mut out, self.from);
        out.extend_from_slice(br#","timestamp":"#);
        put(&mut out, &self.timestamp);
        let meta = self.meta.map(|meta| {
            out.extend_from_slice(br#","meta":"#);
            put(&mut out, meta)
        });
        out.extend_from_slice(br#","seq":"#);
        put(&mut out, &self.seq);
        if self.epoch != 0 {
            out.extend_from_slice(br#","epoch":"#);
            put(&mut out, &self.epoch);
        }
        out.push(b'}');
        EventJson {
            // serde_json writes UTF-8 only.
            json: String::from_utf8(out).unwrap_or_default(),
            data,
            meta,
        }
    }
}

/// A room as `dialogue:rooms` and `dialogue:roomCreated` describe it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomInfo {
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Connections currently joined.
    pub size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u32>,
    /// Event names the room accepts (`["*"]` = any).
    pub events: Vec<String>,
    /// User who created the room at run time; absent for rooms from the configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// The same, under the name the dialogue-ts client reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by_id: Option<String>,
}

/// Serialises a value that cannot fail to serialise (plain structs of strings and JSON values).
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// `{"ok":true,…fields of obj}` for an ack, from an already-serialised JSON object.
pub fn ack_ok(obj_json: &str) -> String {
    match obj_json.strip_prefix('{') {
        Some("}") => r#"{"ok":true}"#.to_owned(),
        Some(rest) => format!(r#"{{"ok":true,{rest}"#),
        None => format!(r#"{{"ok":true,"result":{obj_json}}}"#),
    }
}

/// The Socket.IO frames answering a failed request: `dialogue:error`, then the error ack if
/// the request asked for one.
pub fn error_frames(ack: Option<u64>, err: &DialogueError) -> impl Iterator<Item = String> {
    let event = crate::protocol::socketio::encode_event("dialogue:error", &to_json(err));
    let ack = ack.map(|id| crate::protocol::socketio::encode_ack(id, &ack_err(err)));
    std::iter::once(event).chain(ack)
}

/// `{"ok":false,"code":…,"message":…}` for an ack.
pub fn ack_err(err: &DialogueError) -> String {
    #[derive(Serialize)]
    struct AckError<'a> {
        ok: bool,
        code: crate::error::ErrorCode,
        message: &'a str,
    }
    to_json(&AckError {
        ok: false,
        code: err.code,
        message: &err.message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;

    #[test]
    fn event_json_is_the_wire_object_and_locates_data_and_meta() {
        let data = json!({"text": "\"data\":1 é", "n": [1, 2.5, null]});
        let meta = json!({"k": "v"});
        let full = EventMessage {
            event: "data",
            room_id: "r\"1",
            data: &data,
            from: "u",
            timestamp: -5,
            meta: Some(&meta),
            seq: 7,
            epoch: 2,
        }
        .to_event_json();
        let parsed: Value = serde_json::from_str(&full.json).unwrap();
        assert_eq!(
            parsed,
            json!({"event": "data", "roomId": "r\"1", "data": data, "from": "u",
                   "timestamp": -5, "meta": meta, "seq": 7, "epoch": 2})
        );
        assert_eq!(&full.json[full.data.clone()], data.to_string());
        assert_eq!(&full.json[full.meta.clone().unwrap()], meta.to_string());

        let bare = EventMessage {
            event: "e",
            room_id: "r",
            data: &Value::Null,
            from: "u",
            timestamp: 1,
            meta: None::<&Value>,
            seq: 1,
            epoch: 0,
        }
        .to_event_json();
        assert_eq!(
            bare.json,
            r#"{"event":"e","roomId":"r","data":null,"from":"u","timestamp":1,"seq":1}"#
        );
        assert_eq!(&bare.json[bare.data], "null");
        assert!(bare.meta.is_none());
    }

    #[test]
    fn parses_requests_and_reports_bad_shapes() {
        let r = parse_request("dialogue:join", Some(json!({"roomId": "general"}))).unwrap();
        assert!(
            matches!(r, ClientRequest::Join(JoinRequest { room_id, since: None, .. }) if room_id == "general")
        );
        let r = parse_request(
            "dialogue:join",
            Some(json!({"roomId": "general", "since": {"message": 41}})),
        )
        .unwrap();
        let ClientRequest::Join(JoinRequest {
            since: Some(since), ..
        }) = r
        else {
            panic!("a join with since: {r:?}");
        };
        assert_eq!(since.get("message"), Some(&41));
        let e = parse_request(
            "dialogue:join",
            Some(json!({"roomId": "general", "since": {"message": -1}})),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        let e = parse_request("dialogue:join", Some(json!({"room": "x"}))).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("roomId"), "{}", e.message);
        let e = parse_request("dialogue:join", None).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        let e = parse_request("dialogue:trigger", Some(json!("text"))).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        let e = parse_request("hello", None).unwrap_err();
        assert!(e.message.contains("unknown event"));
        assert!(matches!(
            parse_request("dialogue:listRooms", None),
            Ok(ClientRequest::ListRooms)
        ));
    }

    #[test]
    fn refuses_what_the_database_cannot_store() {
        let check = |name: &str, raw: &str| {
            let value: Value = serde_json::from_str(raw).unwrap();
            parse_request(name, Some(value.clone()))
                .unwrap()
                .check_storable(raw)
        };
        let trigger = "dialogue:trigger";
        assert!(check(
            trigger,
            r#"{"roomId":"r","event":"e","data":{"t":"\\u0000"}}"#
        )
        .is_ok());
        let e = check(
            trigger,
            r#"{"roomId":"r","event":"e","data":{"t":"a\u0000"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(
            e.message.starts_with("data/t contains a NUL"),
            "{}",
            e.message
        );
        let e = check(
            trigger,
            r#"{"roomId":"r","event":"e","data":1,"meta":{"\u0000":1}}"#,
        )
        .unwrap_err();
        assert!(
            e.message.starts_with("meta: the object key"),
            "{}",
            e.message
        );
        let e = check(trigger, r#"{"roomId":"r\u0000","event":"e","data":1}"#).unwrap_err();
        assert!(e.message.starts_with("roomId "), "{}", e.message);
        let e = check(trigger, r#"{"roomId":"r","event":" e","data":1}"#).unwrap_err();
        assert!(e.message.starts_with("event "), "{}", e.message);
        // Without the escape in the frame, the values are not walked.
        let data = json!({"t": "a\u{0}"});
        let r = parse_request(
            trigger,
            Some(json!({"roomId": "r", "event": "e", "data": data})),
        );
        assert!(r.unwrap().check_storable("{}").is_ok());

        for name in [
            "dialogue:join",
            "dialogue:leave",
            "dialogue:subscribeAll",
            "dialogue:deleteRoom",
        ] {
            let e = check(name, r#"{"roomId":"x\u0000"}"#).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{name}");
            assert!(check(name, r#"{"roomId":"x"}"#).is_ok(), "{name}");
        }
        for name in [
            "dialogue:subscribe",
            "dialogue:unsubscribe",
            "dialogue:getHistory",
        ] {
            let e = check(name, r#"{"roomId":"x","eventName":"m\u0000"}"#).unwrap_err();
            assert!(e.message.starts_with("eventName "), "{name}: {}", e.message);
            assert!(
                check(name, r#"{"roomId":"","eventName":"m"}"#).is_err(),
                "{name}"
            );
            assert!(
                check(name, r#"{"roomId":"x","eventName":"m"}"#).is_ok(),
                "{name}"
            );
        }
        let create = "dialogue:createRoom";
        let e = check(create, r#"{"id":"x\u0000","name":"X"}"#).unwrap_err();
        assert!(e.message.starts_with("id \"x\\u0000\""), "{}", e.message);
        let e = check(create, r#"{"id":"x","name":"X\u0000"}"#).unwrap_err();
        assert!(e.message.starts_with("name "), "{}", e.message);
        let e = check(create, r#"{"id":"x","name":"X","description":"\u0000"}"#).unwrap_err();
        assert!(e.message.starts_with("description "), "{}", e.message);
        assert!(check(create, r#"{"id":"x","name":"X","description":"d"}"#).is_ok());
    }

    #[test]
    fn history_ranges() {
        assert_eq!(
            history_range(None, None, None, None),
            Ok(HistoryRange::Offsets { start: 0, end: 50 })
        );
        assert_eq!(
            history_range(Some(20), Some(40), None, None),
            Ok(HistoryRange::Offsets { start: 20, end: 40 })
        );
        assert_eq!(
            history_range(None, None, Some(900), Some(20)),
            Ok(HistoryRange::Before {
                before: 900,
                limit: 20
            })
        );
        assert!(history_range(Some(5), Some(1), None, None).is_err());
        assert!(history_range(Some(0), Some(5000), None, None).is_err());
        assert!(history_range(Some(0), None, Some(3), None).is_err());
        assert!(history_range(None, None, Some(3), Some(0)).is_err());
        assert!(history_range(None, None, None, Some(3)).is_err());
        // Client-given numbers near 2^64 are refused, never overflowed.
        assert!(history_range(Some(u64::MAX - 10), None, None, None).is_err());
        assert!(history_range(Some(u64::MAX - 10), Some(u64::MAX), None, None).is_ok());
        assert!(history_range(None, None, Some(u64::MAX), Some(1000)).is_ok());
    }

    #[test]
    fn ack_payloads() {
        assert_eq!(ack_ok("{}"), r#"{"ok":true}"#);
        assert_eq!(ack_ok(r#"{"seq":3}"#), r#"{"ok":true,"seq":3}"#);
        assert_eq!(ack_ok("[1]"), r#"{"ok":true,"result":[1]}"#);
        let err = DialogueError::new(ErrorCode::RoomFull, "full");
        assert_eq!(
            ack_err(&err),
            r#"{"ok":false,"code":"ROOM_FULL","message":"full"}"#
        );
    }
}
