//! The actors: one [`connection::Connection`] per client session, one [`room::RoomActor`] per
//! room, the [`directory::Directory`] that maps room ids to rooms, and the
//! [`persistence::Persistence`] actor that stores evicted history. Every message between them
//! is declared in [`messages`]; rooms send to connections through an [`outbox::Outbox`].

pub mod connection;
pub mod directory;
pub mod messages;
pub mod outbox;
pub mod persistence;
pub mod room;
