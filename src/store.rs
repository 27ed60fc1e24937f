//! Database access with sea-orm: connecting (and migrating), writing evicted batches, reading
//! pages by `seq` range. Plain functions over `&impl ConnectionTrait`, so the same code runs on
//! SQLite and PostgreSQL, inside or outside a transaction.

use crate::actors::messages::StoredEvent;
use crate::protocol::dialogue::{to_json, EventMessage};
use entity::message::{self, Column, Entity as Messages};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
};
use std::sync::Arc;
use std::time::Duration;

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

/// Rows per SQLite INSERT statement, largest first: a batch is written as the largest that
/// fit, so only these few statement texts exist, each prepared once per connection (the
/// driver's statement cache). SQLite allows 32,766 bound parameters; a row binds 7.
const SQLITE_STATEMENT_SIZES: [usize; 6] = [1024, 256, 64, 16, 4, 1];

const INSERT: &str =
    r#"INSERT INTO messages (room_id, event_name, event_data, from_user, "timestamp", seq, meta)"#;
const SKIP_STORED: &str = "ON CONFLICT (room_id, event_name, seq) DO NOTHING";

/// Writes batches; rows already stored (same room, event and seq) are skipped. Returns the
/// number of rows inserted. Every statement text is fixed, so the database prepares it once
/// per connection whatever the batch size:
/// - PostgreSQL: one statement, the rows as one JSON array parameter unpacked by
///   `jsonb_array_elements`;
/// - SQLite: multi-row `VALUES` statements of fixed sizes in one transaction (SQLite's JSON
///   functions cost more than binding the 7 values of a row).
pub async fn insert_batches(
    db: &DatabaseConnection,
    batches: &[BatchRef<'_>],
) -> Result<u64, DbErr> {
    let events = batches
        .iter()
        .flat_map(|b| b.events.iter().map(move |e| (b, e)));
    let count = batches.iter().map(|b| b.events.len()).sum::<usize>();
    if count == 0 {
        return Ok(0);
    }
    if db.get_database_backend() == DbBackend::Postgres {
        #[derive(serde::Serialize)]
        struct Row<'a> {
            room_id: &'a str,
            event_name: &'a str,
            event_data: &'a serde_json::Value,
            from_user: &'a str,
            timestamp: i64,
            seq: u64,
            /// Absent (SQL NULL) when there is none; a JSON `null` stays one.
            #[serde(skip_serializing_if = "Option::is_none")]
            meta: Option<&'a serde_json::Value>,
        }
        let rows: Vec<Row<'_>> = events
            .map(|(b, e)| Row {
                room_id: b.room_id,
                event_name: b.event,
                event_data: &e.data,
                from_user: &e.from,
                timestamp: e.timestamp,
                seq: e.seq,
                meta: e.meta.as_ref(),
            })
            .collect();
        let sql = format!(
            "{INSERT}
SELECT e ->> 'room_id', e ->> 'event_name', e -> 'event_data', e ->> 'from_user',
  (e ->> 'timestamp')::bigint, (e ->> 'seq')::bigint, e -> 'meta'
FROM jsonb_array_elements($1::jsonb) AS e
{SKIP_STORED}"
        );
        let values = [to_json(&rows).into()];
        let stmt = Statement::from_sql_and_values(DbBackend::Postgres, sql, values);
        return Ok(db.execute_raw(stmt).await?.rows_affected());
    }

    let mut sizes = Vec::new();
    let mut left = count;
    for size in SQLITE_STATEMENT_SIZES {
        while left >= size {
            sizes.push(size);
            left -= size;
        }
    }
    let mut events = events.map(|(b, e)| {
        [
            b.room_id.into(),
            b.event.into(),
            to_json(&e.data).into(),
            e.from.to_string().into(),
            e.timestamp.into(),
            (e.seq as i64).into(),
            e.meta.as_ref().map(to_json).into(),
        ]
    });
    let txn = if sizes.len() > 1 {
        Some(db.begin().await?)
    } else {
        None
    };
    let mut inserted = 0;
    for size in sizes {
        let values: Vec<sea_orm::Value> = events.by_ref().take(size).flatten().collect();
        let stmt = Statement::from_sql_and_values(DbBackend::Sqlite, sqlite_insert(size), values);
        inserted += match &txn {
            Some(txn) => txn.execute_raw(stmt).await?,
            None => db.execute_raw(stmt).await?,
        }
        .rows_affected();
    }
    if let Some(txn) = txn {
        txn.commit().await?;
    }
    Ok(inserted)
}

/// The SQLite INSERT of `rows` rows (one of [`SQLITE_STATEMENT_SIZES`]), built once.
fn sqlite_insert(rows: usize) -> &'static str {
    static TEXTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let texts = TEXTS.get_or_init(|| {
        SQLITE_STATEMENT_SIZES
            .iter()
            .map(|&n| {
                let row = "(?, ?, ?, ?, ?, ?, ?)";
                format!("{INSERT} VALUES {} {SKIP_STORED}", vec![row; n].join(", "))
            })
            .collect()
    });
    let at = SQLITE_STATEMENT_SIZES.iter().position(|&n| n == rows);
    &texts[at.expect("rows is one of SQLITE_STATEMENT_SIZES")]
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
