//! Wire formats: the Engine.IO v4 and Socket.IO v5 packet codecs, and the JSON shapes of the
//! dialogue events that travel inside them.

pub mod dialogue;
pub mod engineio;
pub mod socketio;
