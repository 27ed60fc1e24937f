//! Database access with sea-orm: connecting (and migrating), writing evicted batches, reading
//! pages by `seq` range. Plain functions over `&impl ConnectionTrait`, so the same code runs on
//! SQLite and PostgreSQL, inside or outside a transaction.

use crate::actors::messages::StoredEvent;
use crate::protocol::dialogue::{to_json, EventMessage};
use entity::message::{self, Column, Entity as Messages};
use migration::{Migrator, MigratorTrait};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use std::sync::Arc;
use std::time::Duration;

/// Rows per INSERT statement (SQLite allows 32,766 bound parameters; a row binds 7).
const ROWS_PER_STATEMENT: usize = 2000;

/// Connects to `url` (SQLite in WAL mode, or PostgreSQL) and applies pending migrations.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .map_sqlx_sqlite_opts(|opts| {
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
        });
    if url.starts_with("sqlite:") {
        // One writer at a time is all SQLite allows; readers share the rest.
        options.max_connections(4);
    } else {
        options.max_connections(8);
    }
    // Migrate, then open the pool afresh: SQLite connections opened before the migration can
    // keep a schema without the unique index and refuse the first ON CONFLICT insert.
    let db = Database::connect(options.clone()).await?;
    Migrator::up(&db, None).await?;
    db.close().await?;
    Database::connect(options).await
}

/// One (room, event)'s events to store, oldest first.
pub struct BatchRef<'a> {
    pub room_id: &'a str,
    pub event: &'a str,
    pub events: &'a [Arc<StoredEvent>],
}

/// Writes batches in one transaction with multi-row inserts; rows already stored (same room,
/// event and seq) are skipped. Returns the number of rows inserted.
pub async fn insert_batches(
    db: &DatabaseConnection,
    batches: &[BatchRef<'_>],
) -> Result<u64, DbErr> {
    let rows: Vec<message::ActiveModel> = batches
        .iter()
        .flat_map(|b| {
            b.events.iter().map(move |e| message::ActiveModel {
                id: NotSet,
                room_id: Set(b.room_id.to_owned()),
                event_name: Set(b.event.to_owned()),
                event_data: Set(e.data.clone()),
                from_user: Set(e.from.to_string()),
                timestamp: Set(e.timestamp),
                seq: Set(e.seq as i64),
                meta: Set(e.meta.clone()),
            })
        })
        .collect();
    if rows.is_empty() {
        return Ok(0);
    }
    let on_conflict = || {
        OnConflict::columns([Column::RoomId, Column::EventName, Column::Seq])
            .do_nothing()
            .to_owned()
    };
    if rows.len() <= ROWS_PER_STATEMENT {
        // One statement is atomic by itself: no BEGIN/COMMIT round trips.
        return Messages::insert_many(rows)
            .on_conflict(on_conflict())
            .exec_without_returning(db)
            .await;
    }
    let txn = db.begin().await?;
    let mut inserted = 0;
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<_> = rows.by_ref().take(ROWS_PER_STATEMENT).collect();
        inserted += Messages::insert_many(chunk)
            .on_conflict(on_conflict())
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(inserted)
}

fn to_event(room_id: &str, row: message::Model) -> Arc<StoredEvent> {
    let seq = row.seq.max(0) as u64;
    let json = to_json(&EventMessage {
        event: &row.event_name,
        room_id,
        data: &row.event_data,
        from: &row.from_user,
        timestamp: row.timestamp,
        meta: row.meta.as_ref(),
        seq,
    });
    Arc::new(StoredEvent {
        seq,
        timestamp: row.timestamp,
        from: row.from_user.into(),
        data: row.event_data,
        meta: row.meta,
        json: json.into_boxed_str(),
    })
}

/// Events `lo..=hi` of one (room, event), newest first: an index range, never OFFSET.
pub async fn load_range<C: ConnectionTrait>(
    db: &C,
    room_id: &str,
    event: &str,
    lo: u64,
    hi: u64,
) -> Result<Vec<Arc<StoredEvent>>, DbErr> {
    let rows = Messages::find()
        .filter(Column::RoomId.eq(room_id))
        .filter(Column::EventName.eq(event))
        .filter(Column::Seq.between(lo as i64, hi as i64))
        .order_by_desc(Column::Seq)
        .all(db)
        .await?;
    Ok(rows.into_iter().map(|r| to_event(room_id, r)).collect())
}

/// The newest `limit` events of one (room, event), newest first.
pub async fn load_latest<C: ConnectionTrait>(
    db: &C,
    room_id: &str,
    event: &str,
    limit: u64,
) -> Result<Vec<Arc<StoredEvent>>, DbErr> {
    let rows = Messages::find()
        .filter(Column::RoomId.eq(room_id))
        .filter(Column::EventName.eq(event))
        .order_by_desc(Column::Seq)
        .limit(limit.max(1))
        .all(db)
        .await?;
    Ok(rows.into_iter().map(|r| to_event(room_id, r)).collect())
}
