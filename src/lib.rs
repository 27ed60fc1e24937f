//! Dialogue: a real-time event and chat service. Clients connect over Socket.IO, join rooms
//! and trigger typed events validated by JSON Schema; rooms keep recent history in memory and
//! persist older events to SQL (SQLite or PostgreSQL).
//!
//! # Layout
//!
//! - [`config`] — `config.yaml` into typed structs, validated with file/line/key errors.
//! - [`events`] — the event catalog: JSON Schemas compiled once, data validation.
//! - [`protocol`] — wire formats: the Engine.IO and Socket.IO packet codecs
//!   ([`protocol::engineio`], [`protocol::socketio`]), the dialogue event shapes
//!   ([`protocol::dialogue`]) and the door checks of ids and JSON the database must be able
//!   to store ([`protocol::storable`]: id lengths and alphabet, no NUL).
//! - [`actors`] — the actor system: [`actors::connection`] (one per client session),
//!   [`actors::room`] (one per room: members, numbering, fan-out, history window; in a
//!   cluster, `room/cluster.rs`: owner or replica of the room),
//!   [`actors::directory`] (room ids → room actors), [`actors::persistence`] (write-behind
//!   of every accepted event, group commit, leases),
//!   [`actors::outbox`] (how a room reaches a member: straight into its WebSocket send queue),
//!   and [`actors::messages`], every message between them. Rooms run on the room threads
//!   (`server.roomThreads`), which also accept and serve the connections ([`http::listener`]):
//!   a WebSocket session stays on the thread that accepted its socket, and a room delivers to
//!   the sessions on its thread without waking another.
//! - [`history`] — a room's in-memory window per event and the offset/cursor arithmetic.
//! - [`http`] — the listener ([`http::listener`]: every room thread accepts and serves its
//!   own connections) and the routes: the Socket.IO endpoint with its WebSocket and long-polling
//!   transports ([`http::websocket`]: framing on the raw socket, [`http::polling`]), the
//!   WebSocket handshake that takes the socket out of the HTTP dispatcher ([`http::upgrade`]),
//!   the server API ([`http::api`]),
//!   `/healthz`, `/readyz`, `/metrics`, and the web pages ([`http::pages`]: the chat page at
//!   `/` and the dashboard at `/admin`, built from `web/` and embedded).
//! - [`cluster`] — several nodes on one database through Redis (`docs/cluster.md`): node
//!   membership and room placement, and [`cluster::bus`], the pub/sub between nodes (each
//!   room's events from its owner, triggers forwarded to it, directory changes).
//! - [`server`] — wiring it all up on a bound listener; `src/main.rs` is the thin CLI.
//! - [`error`] — the client-facing error codes.
//! - [`auth`] / [`hooks`] — identities (open or JWT), access rules, and the [`Hooks`] trait
//!   embedders implement; [`hooks::ConfigHooks`] is the YAML-driven default.
//! - [`recovery`] — Socket.IO connection-state recovery: session pids, the offsets events
//!   carry, and the session store (saved rooms and subscriptions) that survives a crash,
//!   written on a thread of its own.
//! - [`store`] — sea-orm queries (SQLite and PostgreSQL): fenced batch writes, room leases,
//!   the quarantine; `store/sqlite.rs`, the persistence actor's and the session store's own
//!   SQLite connections that their writes go through first; [`spill`] — the file that keeps
//!   what could not be written at shutdown; [`metrics`] — Prometheus metrics; [`stats`] —
//!   what the dashboard shows (room numbers, recent errors, sampled rates).

pub mod actors;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod error;
pub mod events;
pub mod history;
pub mod hooks;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod recovery;
pub mod server;
pub mod spill;
pub mod stats;
pub mod store;

pub use auth::Identity;
pub use config::Settings;
pub use hooks::{ConfigHooks, Hooks};
pub use server::{run, run_with_hooks};
