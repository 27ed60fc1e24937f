//! Wire formats: the Engine.IO v4 and Socket.IO v5 packet codecs, the JSON shapes of the
//! dialogue events that travel inside them, and the door checks of what the database can store.

pub mod dialogue;
pub mod engineio;
pub mod socketio;
pub mod storable;
