//! The persistence actor: receives the batches rooms evict and answers history reads that
//! reach past a room's in-memory window.
//!
//! This first version keeps nothing: evicted batches are dropped and deep reads return no
//! events. It sits behind the same messages the database-backed store will use.

use crate::actors::messages::{EvictedBatch, LoadRange, PersistenceLink, StoredEvent};
use crate::error::DialogueError;
use actix::prelude::*;
use std::sync::Arc;

/// Stores evicted history.
#[derive(Default)]
pub struct Persistence;

impl Persistence {
    /// Starts the actor and returns the link rooms use.
    pub fn start_link() -> PersistenceLink {
        let addr = Persistence.start();
        PersistenceLink {
            evicted: addr.clone().recipient(),
            load: addr.recipient(),
        }
    }
}

impl Actor for Persistence {
    type Context = Context<Self>;
}

impl Handler<EvictedBatch> for Persistence {
    type Result = ();

    fn handle(&mut self, msg: EvictedBatch, _: &mut Context<Self>) {
        log::trace!(
            "dropping {} evicted '{}' events of room '{}'",
            msg.events.len(),
            msg.event,
            msg.room_id
        );
    }
}

impl Handler<LoadRange> for Persistence {
    type Result = Result<Vec<Arc<StoredEvent>>, DialogueError>;

    fn handle(&mut self, _: LoadRange, _: &mut Context<Self>) -> Self::Result {
        Ok(Vec::new())
    }
}
