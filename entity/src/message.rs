//! `messages`: one row per persisted event. The seed's table plus `seq` and `meta`; the
//! unique index on `(room_id, event_name, seq)` makes writes idempotent and pages index
//! ranges. `created_at` exists in the table (filled by the database) but is not mapped.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub room_id: String,
    pub event_name: String,
    /// The event's `data`.
    pub event_data: Json,
    /// The user id that triggered it.
    pub from_user: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Per (room, event) sequence number, from 1 without gaps.
    pub seq: i64,
    pub meta: Option<Json>,
    /// The room's epoch when the event was accepted: it grows after an unclean stop, so
    /// `(epoch, seq)` never names two different events.
    pub epoch: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
