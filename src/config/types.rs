//! The typed shape of `config.yaml` (keys are camelCase, as in dialogue-ts).
//!
//! Fields wrapped in [`Spanned`] keep their YAML position so that validation errors found
//! after parsing (an undefined event, a bad schema, a zero limit) can still name the line.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub cors: CorsConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub recovery: RecoveryConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Event types, by name.
    #[serde(default)]
    pub events: BTreeMap<String, EventConfig>,
    /// Rooms that exist from start-up, by id.
    #[serde(default)]
    pub rooms: BTreeMap<String, RoomConfig>,
}

impl Config {
    /// `limits.maxPageBytes`, or a quarter of `server.maxOutboundBytes`.
    pub fn max_page_bytes(&self) -> usize {
        self.limits
            .max_page_bytes
            .unwrap_or(self.server.max_outbound_bytes / 4)
    }
}

/// Listening socket, worker threads and Engine.IO transport settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    /// `PORT` overrides it; 0 picks a free port.
    pub port: u16,
    /// No longer used (a warning says so): connections are served on the room threads.
    pub workers: usize,
    /// Threads that accept and serve connections (HTTP, WebSocket sessions) and host the
    /// room actors; 0 = one per core.
    pub room_threads: usize,
    /// Engine.IO heartbeat: milliseconds between server pings.
    pub ping_interval: u64,
    /// Engine.IO heartbeat: milliseconds to wait for the pong before closing.
    pub ping_timeout: u64,
    /// Largest Engine.IO packet accepted, in bytes; a larger frame closes the connection.
    pub max_payload: u64,
    /// Milliseconds a new connection has to send its Socket.IO CONNECT.
    pub connect_timeout: u64,
    /// Bytes queued for a client that is not reading before it is disconnected.
    pub max_outbound_bytes: usize,
    /// Milliseconds a graceful shutdown may spend writing in-memory history.
    pub shutdown_timeout: u64,
    /// Milliseconds a client has to send the headers of the first request on a connection
    /// (slowloris); 408 after. 0 = no limit.
    pub header_timeout: u64,
    /// Milliseconds a client has to send a request body (a polling POST, an API call); 408
    /// after. 0 = no limit.
    pub body_timeout: u64,
    /// Milliseconds a WebSocket may take no bytes while some wait for it before the client
    /// is disconnected (it stopped reading); 0 = no limit.
    pub write_timeout: u64,
    /// Socket.IO sessions (WebSocket or long-polling) open at once from one IP address;
    /// 0 = unlimited.
    pub max_connections_per_ip: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".into(),
            port: 3000,
            workers: 0,
            room_threads: 0,
            ping_interval: 25_000,
            ping_timeout: 20_000,
            max_payload: 1_000_000,
            connect_timeout: 45_000,
            max_outbound_bytes: 4 * 1024 * 1024,
            shutdown_timeout: 10_000,
            header_timeout: 5_000,
            body_timeout: 10_000,
            write_timeout: 30_000,
            max_connections_per_ip: 0,
        }
    }
}

/// Where history is persisted.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// sea-orm URL; `DATABASE_URL` overrides it.
    pub url: String,
    /// Accepted events kept in memory until written (e.g. while the database is
    /// unavailable); when full, new history-enabled triggers get STORAGE_UNAVAILABLE.
    pub max_backlog: usize,
    /// The same bound in bytes of events (their JSON text plus a fixed overhead each).
    pub max_backlog_bytes: usize,
    /// When a trigger is acknowledged and fanned out, unless an event overrides it.
    pub durability: Durability,
    /// Milliseconds a room's ownership lease lasts without renewal: another process may take
    /// a room over only once its owner's lease has run out (or the owner is known dead).
    pub lease_timeout: u64,
    /// Where events still queued at shutdown go when the database cannot take them; replayed
    /// at the next start before serving.
    pub spill_file: String,
}

/// When an event is acknowledged and shown to subscribers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the transaction holding it has committed: a crash takes back nothing a client saw.
    #[default]
    Stored,
    /// At once; a crash may lose the last uncommitted batch (the epoch tells clients).
    Accepted,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://dialogue.db?mode=rwc".into(),
            max_backlog: 100_000,
            max_backlog_bytes: 64 * 1024 * 1024,
            durability: Durability::Stored,
            lease_timeout: 10_000,
            spill_file: "dialogue-spill.jsonl".into(),
        }
    }
}

/// How connections are identified, and who may manage rooms.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub jwt: JwtConfig,
    /// Who may create rooms at run time; absent = anyone.
    pub create_rooms: Option<AccessRule>,
    /// Admins may delete any room created at run time (creators may delete their own).
    pub admin: Option<AccessRule>,
}

/// Client authentication mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// `userId` from the CONNECT payload, else the connection id (as dialogue-ts).
    #[default]
    Open,
    /// The CONNECT payload's `token` must be a valid JWT; `sub` is the user id.
    Jwt,
}

/// JWT verification settings (`auth.mode: jwt`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret; `DIALOGUE_JWT_SECRET` overrides.
    pub secret: Option<String>,
    /// RS256/ES256 public key (PEM); `DIALOGUE_JWT_PUBLIC_KEY` overrides.
    pub public_key: Option<String>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
}

/// Accepted JWT signature algorithms (`none` never is).
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum JwtAlgorithm {
    #[default]
    HS256,
    RS256,
    ES256,
}

/// Who passes: listed users (if `users` is given) carrying the required claim values (if
/// `claims` is given, e.g. `{role: [admin, staff]}`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessRule {
    #[serde(default)]
    pub users: Option<Vec<String>>,
    #[serde(default)]
    pub claims: BTreeMap<String, Vec<Value>>,
}

/// Access rules of one room.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RoomAccess {
    /// Who may join (JOIN_DENIED otherwise); absent = anyone.
    pub join: Option<AccessRule>,
    /// Who may trigger each event (PERMISSION_DENIED otherwise); unlisted events: any member.
    pub trigger: BTreeMap<String, AccessRule>,
}

/// Per-connection limits; 0 turns a rate limit off.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest `data` + `meta` of one triggered event, in bytes of JSON.
    pub max_payload_bytes: usize,
    pub history_requests_per_minute: u32,
    pub triggers_per_second: u32,
    /// Rooms that may exist besides the configured ones (created at run time); 0 = unlimited.
    pub max_runtime_rooms: usize,
    /// Rooms one user may create per minute (the server API is not counted); 0 = unlimited.
    pub rooms_per_minute: u32,
    /// Longest room name accepted at run time, in bytes.
    pub max_room_name_bytes: usize,
    /// Longest room description accepted at run time, in bytes.
    pub max_room_description_bytes: usize,
    /// Distinct event names a `"*"` room keeps state for (EVENT_NOT_ALLOWED beyond); 0 =
    /// unlimited.
    pub max_event_types_per_room: usize,
    /// Bytes of requests one connection may have waiting for earlier ones to finish
    /// (RATE_LIMITED beyond; one request is always accepted).
    pub max_queued_request_bytes: usize,
    /// `dialogue:subscribe` / `dialogue:unsubscribe` calls per connection per minute.
    pub subscriptions_per_minute: u32,
    /// Bytes of events one history page (or a join's history) may hold; absent = a quarter of
    /// `server.maxOutboundBytes`, so that a page — sent as the event and in the ack — always
    /// fits the client's queue.
    pub max_page_bytes: Option<usize>,
    /// Events a join with `since` replays at most; further behind, the join says so and the
    /// client reads the history instead.
    pub max_resume_events: usize,
    /// Members of a `presence` room above which join and leave notices stop (each would go
    /// to every member); `dialogue:presence` still answers.
    pub presence_max_members: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_payload_bytes: 1_000_000,
            history_requests_per_minute: 20,
            triggers_per_second: 50,
            max_runtime_rooms: 1000,
            rooms_per_minute: 10,
            max_room_name_bytes: 100,
            max_room_description_bytes: 1000,
            max_event_types_per_room: 1000,
            max_queued_request_bytes: 1024 * 1024,
            subscriptions_per_minute: 120,
            max_page_bytes: None,
            max_resume_events: 10_000,
            presence_max_members: 1000,
        }
    }
}

/// The server HTTP API (`/api/…`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer keys; `DIALOGUE_API_KEYS` (comma-separated) adds more. None = API off.
    pub keys: Vec<String>,
}

/// The Prometheus endpoint (`/metrics`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Bearer key `/metrics` requires; `DIALOGUE_METRICS_KEY` overrides. None = open.
    pub key: Option<String>,
    /// Rooms whose series carry their own `room` label; the others are counted together
    /// under `room="_other"` (as are undeclared events of `"*"` rooms). 0 = no bound.
    pub max_room_series: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            key: None,
            max_room_series: 1000,
        }
    }
}

/// Several nodes sharing one database (see `docs/cluster.md`); off without `redis`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://host:port[/db]` (or `rediss://`); `DIALOGUE_REDIS_URL` overrides. None = a
    /// single node.
    #[schemars(with = "Option<String>")]
    pub redis: Option<Spanned<String>>,
    /// A node that has not renewed its heartbeat for this long is gone (ms).
    pub lease_timeout: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: None,
            lease_timeout: 5000,
        }
    }
}

/// The pages the binary serves.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The chat page at `/` and the operator dashboard at `/admin` (its data needs an API key).
    pub web_ui: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { web_ui: true }
    }
}

/// Socket.IO connection-state recovery: sessions a stock client (socket.io-client ≥ 4.6)
/// gets back after a reconnect, with its rooms, subscriptions and missed events.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// Off: the CONNECT answer carries no `pid` and events no offset.
    pub enabled: bool,
    /// Milliseconds a session stays recoverable after its connection ended (after a crash:
    /// from the next start).
    pub max_disconnection_duration: u64,
    /// Sessions kept in the database; beyond it the longest-disconnected ones are dropped.
    pub max_sessions: usize,
    /// (room, event) streams one session's offset may track; a session that receives more
    /// stops being recoverable (its offset would grow with every stream).
    pub max_streams: usize,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            enabled: true,
            max_disconnection_duration: 120_000,
            max_sessions: 100_000,
            max_streams: 32,
        }
    }
}

/// Cross-origin access for browsers (long-polling and the HTTP API).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Allowed origins; `["*"]` (the default, as dialogue-ts) allows any.
    pub origins: Vec<String>,
    /// Allow cookies and credentials (the request's origin is echoed, never `*`).
    pub credentials: bool,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            origins: vec!["*".into()],
            credentials: true,
        }
    }
}

/// One event type.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventConfig {
    #[serde(default)]
    pub description: Option<String>,
    /// JSON Schema (draft 2020-12) the event's `data` must satisfy; absent = any data.
    #[serde(default)]
    #[schemars(with = "Option<Value>")]
    pub schema: Option<Spanned<Value>>,
    #[serde(default)]
    pub history: Option<HistoryConfig>,
}

/// In-memory history of one event type.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistoryConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Newest events kept in memory per room; older ones go to the database.
    #[serde(default = "default_history_limit")]
    #[schemars(with = "u32")]
    pub limit: Spanned<u32>,
    /// Most bytes of events kept in memory per room (their JSON text plus a fixed overhead
    /// each); the oldest leave memory first, and stay in the database.
    #[serde(default = "default_window_bytes")]
    pub max_bytes: usize,
    /// Overrides `database.durability` for this event type.
    #[serde(default)]
    pub durability: Option<Durability>,
}

fn yes() -> bool {
    true
}

fn default_window_bytes() -> usize {
    crate::events::DEFAULT_WINDOW_BYTES
}

fn default_history_limit() -> Spanned<u32> {
    Spanned::new(
        100,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

/// One room.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoomConfig {
    /// Display name; defaults to the room id.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Event names clients may trigger: `["*"]` = any event, unvalidated; `[]` = none.
    #[schemars(with = "Vec<String>")]
    pub events: Vec<Spanned<String>>,
    /// `true` = the whole in-memory window; N = the newest N per event type; absent = none.
    #[serde(default)]
    pub sync_history_on_join: Option<SyncHistory>,
    /// Events a member receives after joining; absent = all of the room's events.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub default_subscriptions: Option<Vec<Spanned<String>>>,
    /// Most connections joined at once.
    #[serde(default)]
    pub max_size: Option<u32>,
    /// Every connection joins this room when it connects.
    #[serde(default)]
    pub auto_join: bool,
    /// Members get `dialogue:memberJoined` / `dialogue:memberLeft` (once per user, not per
    /// connection) while the room has at most `limits.presenceMaxMembers` members.
    #[serde(default)]
    pub presence: bool,
    /// Who may join and trigger.
    #[serde(default)]
    pub access: RoomAccess,
}

/// `syncHistoryOnJoin: true | N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SyncHistory {
    All(bool),
    Newest(u32),
}
