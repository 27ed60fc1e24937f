//! sea-orm entities of the Dialogue database (one table: `messages`).

pub mod message;

pub use message::Entity as Message;
