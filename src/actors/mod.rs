//! The actors: one [`connection::Connection`] per client session, one [`room::RoomActor`] per
//! room, the [`directory::Directory`] that maps room ids to rooms, and the
//! [`persistence::Persistence`] actor that stores evicted history. Every message between them
//! is declared in [`messages`].

pub mod connection;
pub mod directory;
pub mod messages;
pub mod persistence;
pub mod room;
