//! Database access with sea-orm: connecting (and migrating), writing batches fenced by room
//! leases, the quarantine, reading pages by `seq` range. Plain functions over `&impl ConnectionTrait`, so the same code runs on
//! SQLite and PostgreSQL, inside or outside a transaction.

use crate::actors::messages::{CounterMark, StoredEvent};
use crate::protocol::dialogue::to_json;
use entity::message::{self, Column, Entity as Messages};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
};
use std::path::Path;
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
            // Checkpoints (copying the WAL into the database file, with an fsync) run in the
            // background (`checkpoint`), not inside whichever commit crosses the threshold:
            // a `stored` ack waits for its commit, and that commit should not wait for a disk
            // sync.
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .pragma("wal_autocheckpoint", "0")
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

/// SQLite: copies what the write-ahead log holds into the database file without waiting for
/// readers or writers (`PRAGMA wal_checkpoint(PASSIVE)`), so the log stays small. Returns the
/// log's size in pages. Nothing to do on PostgreSQL.
pub async fn checkpoint(db: &DatabaseConnection) -> Result<i64, DbErr> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Ok(0);
    }
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA wal_checkpoint(PASSIVE)",
        ))
        .await?;
    Ok(row
        .and_then(|r| r.try_get_by_index::<i64>(1).ok())
        .unwrap_or(0))
}

/// One (room, event)'s events to store, oldest first.
pub struct BatchRef<'a> {
    pub room_id: &'a str,
    pub event: &'a str,
    pub events: &'a [Arc<StoredEvent>],
}

/// What one room sends in one write: its rows and counters, fenced by its lease token.
pub struct WriteJob<'a> {
    pub room_id: &'a str,
    /// The room instance's lease token; `None` writes without a lease (spill replay).
    pub owner: Option<&'a str>,
    pub streams: Vec<BatchRef<'a>>,
    pub counters: &'a [CounterMark],
}

impl WriteJob<'_> {
    pub fn rows(&self) -> usize {
        self.streams.iter().map(|s| s.events.len()).sum()
    }
}

/// Why a write did not commit.
#[derive(Debug)]
pub enum WriteError {
    /// The room's lease belongs to someone else: this writer must stop.
    Fenced {
        room_id: String,
    },
    /// A row with this seq is already stored with different content.
    Conflict {
        room_id: String,
        event: String,
        seq: u64,
    },
    Db(DbErr),
}

impl From<DbErr> for WriteError {
    fn from(e: DbErr) -> Self {
        WriteError::Db(e)
    }
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Fenced { room_id } => write!(
                f,
                "room '{room_id}' is owned by another writer (its lease was taken over)"
            ),
            WriteError::Conflict {
                room_id,
                event,
                seq,
            } => write!(
                f,
                "seq {seq} of '{event}' in room '{room_id}' is already stored with different content"
            ),
            WriteError::Db(e) => write!(f, "{e}"),
        }
    }
}

/// True for errors that may pass by themselves (connection lost, database busy or shutting
/// down, out of resources): the write is retried as it is. Anything else is a refusal of the
/// data, which retrying cannot fix.
pub fn is_transient(e: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    let sqlx = match e {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => return true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => e,
        DbErr::Exec(_) | DbErr::Query(_) => return true,
        // Type/Json/... errors come from our own values: not transient.
        DbErr::Type(_) | DbErr::Json(_) | DbErr::TryIntoErr { .. } => return false,
        _ => return true,
    };
    use sea_orm::sqlx::Error;
    match &**sqlx {
        Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if let Ok(n) = code.parse::<i64>() {
                // SQLite result codes (extended codes keep the primary one in the low byte):
                // BUSY, LOCKED, NOMEM, IOERR, FULL, CANTOPEN, PROTOCOL.
                return matches!(n & 0xff, 5 | 6 | 7 | 10 | 13 | 14 | 15);
            }
            // PostgreSQL SQLSTATE classes: connection, transaction rollback (serialization,
            // deadlock), insufficient resources, operator intervention, system error.
            matches!(&code[..code.len().min(2)], "08" | "40" | "53" | "57" | "58")
        }
        Error::Encode(_)
        | Error::Decode(_)
        | Error::InvalidArgument(_)
        | Error::TypeNotFound { .. } => false,
        _ => true,
    }
}

/// The database's clock in milliseconds since the Unix epoch, as SQL: leases are judged by
/// the one clock every process sharing the database sees.
fn db_now(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        _ => "(extract(epoch from clock_timestamp()) * 1000)::bigint",
    }
}

/// A statement written with PostgreSQL's `$n` placeholders, for either database (SQLite
/// takes `?n`).
fn stmt(backend: DbBackend, sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    let sql = match backend {
        DbBackend::Sqlite => sql.replace('$', "?"),
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// Writes the jobs in one transaction: each room's lease is checked (and renewed for
/// `lease_ms`), the rows inserted, the counters raised. Rows already stored identically
/// are skipped (a retry); a different row under the same seq is a [`WriteError::Conflict`].
/// Returns the rows inserted.
pub async fn write_jobs(
    db: &DatabaseConnection,
    jobs: &[WriteJob<'_>],
    lease_ms: i64,
) -> Result<u64, WriteError> {
    let backend = db.get_database_backend();
    let renew = format!(
        "UPDATE room_leases SET lease_until = {} + $1 WHERE room_id = $2 AND owner = $3",
        db_now(backend)
    );
    let txn = db.begin().await?;
    for job in jobs {
        let Some(owner) = job.owner else { continue };
        let fenced = txn
            .execute_raw(stmt(
                backend,
                &renew,
                vec![lease_ms.into(), job.room_id.into(), owner.into()],
            ))
            .await?
            .rows_affected()
            == 0;
        if fenced {
            return Err(WriteError::Fenced {
                room_id: job.room_id.to_owned(),
            });
        }
    }
    let batches: Vec<&BatchRef<'_>> = jobs.iter().flat_map(|j| j.streams.iter()).collect();
    let inserted = insert_rows(&txn, &batches).await?;
    let total: usize = batches.iter().map(|b| b.events.len()).sum();
    if (inserted as usize) < total {
        check_conflicts(&txn, &batches).await?;
    }
    for job in jobs {
        for mark in job.counters {
            txn.execute_raw(stmt(
                backend,
                "INSERT INTO event_counters (room_id, event_name, high_water) VALUES ($1, $2, $3) \
                 ON CONFLICT (room_id, event_name) DO UPDATE SET high_water = excluded.high_water",
                vec![
                    job.room_id.into(),
                    (&*mark.event).into(),
                    (mark.high_water as i64).into(),
                ],
            ))
            .await?;
        }
    }
    txn.commit().await?;
    Ok(inserted)
}

/// Writes batches without a lease (tests, spill replay): rows already stored identically are
/// skipped, a different row under the same seq is an error. Returns the rows inserted.
pub async fn insert_batches(
    db: &DatabaseConnection,
    batches: &[BatchRef<'_>],
) -> Result<u64, WriteError> {
    let txn = db.begin().await?;
    let refs: Vec<&BatchRef<'_>> = batches.iter().collect();
    let inserted = insert_rows(&txn, &refs).await?;
    let total: usize = batches.iter().map(|b| b.events.len()).sum();
    if (inserted as usize) < total {
        check_conflicts(&txn, &refs).await?;
    }
    txn.commit().await?;
    Ok(inserted)
}

/// Compares the stored rows of the batches' seq ranges with the batches.
async fn check_conflicts<C: ConnectionTrait>(
    db: &C,
    batches: &[&BatchRef<'_>],
) -> Result<(), WriteError> {
    for b in batches {
        let (Some(first), Some(last)) = (b.events.first(), b.events.last()) else {
            continue;
        };
        let stored = Messages::find()
            .filter(Column::RoomId.eq(b.room_id))
            .filter(Column::EventName.eq(b.event))
            .filter(Column::Seq.between(first.seq as i64, last.seq as i64))
            .all(db)
            .await?;
        let by_seq: std::collections::HashMap<i64, &message::Model> =
            stored.iter().map(|r| (r.seq, r)).collect();
        for e in b.events.iter() {
            let Some(row) = by_seq.get(&(e.seq as i64)) else {
                continue;
            };
            let same = row.event_data == e.data
                && row.from_user == *e.from
                && row.timestamp == e.timestamp
                && row.meta == e.meta
                && row.epoch == e.epoch as i64;
            if !same {
                return Err(WriteError::Conflict {
                    room_id: b.room_id.to_owned(),
                    event: b.event.to_owned(),
                    seq: e.seq,
                });
            }
        }
    }
    Ok(())
}

/// Rows per SQLite INSERT statement, largest first: a batch is written as the largest that
/// fit, so only these few statement texts exist, each prepared once per connection (the
/// driver's statement cache). SQLite allows 32,766 bound parameters; a row binds 8.
const SQLITE_STATEMENT_SIZES: [usize; 6] = [1024, 256, 64, 16, 4, 1];

const INSERT: &str = r#"INSERT INTO messages (room_id, event_name, event_data, from_user, "timestamp", seq, meta, epoch)"#;
const SKIP_STORED: &str = "ON CONFLICT (room_id, event_name, seq) DO NOTHING";

/// Inserts rows; rows whose (room, event, seq) is stored already are skipped. Returns the
/// number inserted. Every statement text is fixed, so the database prepares it once per
/// connection whatever the batch size:
/// - PostgreSQL: one statement, the rows as one JSON array parameter unpacked by
///   `jsonb_array_elements`;
/// - SQLite: multi-row `VALUES` statements of fixed sizes (SQLite's JSON functions cost more
///   than binding the values of a row).
async fn insert_rows<C: ConnectionTrait>(db: &C, batches: &[&BatchRef<'_>]) -> Result<u64, DbErr> {
    let events = batches
        .iter()
        .flat_map(|b| b.events.iter().map(move |e| (*b, e)));
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
            epoch: u64,
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
                epoch: e.epoch,
                meta: e.meta.as_ref(),
            })
            .collect();
        let sql = format!(
            "{INSERT}
SELECT e ->> 'room_id', e ->> 'event_name', e -> 'event_data', e ->> 'from_user',
  (e ->> 'timestamp')::bigint, (e ->> 'seq')::bigint, e -> 'meta', (e ->> 'epoch')::bigint
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
            (e.epoch as i64).into(),
        ]
    });
    let mut inserted = 0;
    for size in sizes {
        let values: Vec<sea_orm::Value> = events.by_ref().take(size).flatten().collect();
        let stmt = Statement::from_sql_and_values(DbBackend::Sqlite, sqlite_insert(size), values);
        inserted += db.execute_raw(stmt).await?.rows_affected();
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
                let row = "(?, ?, ?, ?, ?, ?, ?, ?)";
                format!("{INSERT} VALUES {} {SKIP_STORED}", vec![row; n].join(", "))
            })
            .collect()
    });
    let at = SQLITE_STATEMENT_SIZES.iter().position(|&n| n == rows);
    &texts[at.expect("rows is one of SQLITE_STATEMENT_SIZES")]
}

/// Text the database can hold whatever it contains (NUL escaped), for the quarantine.
fn escaped(text: &str) -> String {
    text.replace('\0', "\\u0000")
}

/// Puts an event the database refused into the quarantine table (the whole `EventMessage` as
/// text) and a tombstone under its seq in `messages`, so the stream stays gapless.
pub async fn quarantine(
    db: &DatabaseConnection,
    room_id: &str,
    event: &str,
    stored: &StoredEvent,
    error: &str,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let txn = db.begin().await?;
    txn.execute_raw(stmt(
        backend,
        "INSERT INTO quarantine (room_id, event_name, seq, event, error) VALUES ($1, $2, $3, $4, $5)",
        vec![
            escaped(room_id).into(),
            escaped(event).into(),
            (stored.seq as i64).into(),
            escaped(&stored.json).into(),
            escaped(error).into(),
        ],
    ))
    .await?;
    let tombstone = Arc::new(stored.tombstone(room_id, event));
    let rows = [tombstone];
    insert_rows(
        &txn,
        &[&BatchRef {
            room_id,
            event,
            events: &rows,
        }],
    )
    .await?;
    txn.commit().await
}

// ------------------------------------------------------------------ room leases

/// Takes room `room_id` for the room instance `owner` of process `node` for `lease_ms` (by
/// the database's clock): when nobody holds it, when the holder's lease ran out, or when the
/// holder's process is known dead ([`node_is_dead`]). Taking it over from a holder that did not release it (an
/// unclean stop) raises the room's epoch. Returns the epoch, or `Err` naming the holder.
pub async fn claim_room(
    db: &DatabaseConnection,
    room_id: &str,
    owner: &str,
    node: &str,
    lease_ms: i64,
) -> Result<Result<u64, String>, DbErr> {
    let backend = db.get_database_backend();
    db.execute_raw(stmt(
        backend,
        "INSERT INTO room_leases (room_id, owner, node, lease_until, epoch) VALUES ($1, NULL, NULL, 0, 0) \
         ON CONFLICT (room_id) DO NOTHING",
        vec![room_id.into()],
    ))
    .await?;
    let row = db
        .query_one_raw(stmt(
            backend,
            &format!(
                "SELECT owner, node, lease_until, epoch, {} AS now FROM room_leases WHERE room_id = $1",
                db_now(backend)
            ),
            vec![room_id.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("room_leases row of '{room_id}'")))?;
    let held_by: Option<String> = row.try_get("", "owner")?;
    let held_node: Option<String> = row.try_get("", "node")?;
    let until: i64 = row.try_get("", "lease_until")?;
    let now: i64 = row.try_get("", "now")?;
    let epoch: i64 = row.try_get("", "epoch")?;
    let epoch = epoch.max(0) as u64;
    let new_epoch = match (&held_by, &held_node) {
        (None, _) => epoch,
        (Some(o), _) if o == owner => return Ok(Ok(epoch)),
        (Some(_), held_node) => {
            let dead = held_node.as_deref().is_some_and(|n| node_is_dead(n, node));
            if until >= now && !dead {
                let who = held_node.as_deref().unwrap_or("?");
                let left = until - now;
                return Ok(Err(format!(
                    "it is owned by {who} (lease valid for {left} ms more)"
                )));
            }
            log::warn!(
                "room '{room_id}': taking over from {} (it did not stop cleanly); epoch {} → {}",
                held_node.as_deref().unwrap_or("?"),
                epoch,
                epoch + 1
            );
            epoch + 1
        }
    };
    let (guard, mut values): (&str, Vec<sea_orm::Value>) = match &held_by {
        None => ("owner IS NULL", vec![]),
        Some(o) => ("owner = $6", vec![o.clone().into()]),
    };
    let mut all: Vec<sea_orm::Value> = vec![
        owner.into(),
        node.into(),
        lease_ms.into(),
        (new_epoch as i64).into(),
        room_id.into(),
    ];
    all.append(&mut values);
    all.push(until.into());
    let until_param = if held_by.is_some() { "$7" } else { "$6" };
    let sql = format!(
        "UPDATE room_leases SET owner = $1, node = $2, lease_until = {} + $3, epoch = $4 \
         WHERE room_id = $5 AND {guard} AND lease_until = {until_param}",
        db_now(backend)
    );
    let took = db
        .execute_raw(stmt(backend, &sql, all))
        .await?
        .rows_affected()
        == 1;
    Ok(if took {
        Ok(new_epoch)
    } else {
        Err("another owner claimed it at the same moment".to_owned())
    })
}

/// Renews every lease of process `node` for `lease_ms`. Returns how many rooms it holds.
pub async fn renew_leases(
    db: &DatabaseConnection,
    node: &str,
    lease_ms: i64,
) -> Result<u64, DbErr> {
    let backend = db.get_database_backend();
    let sql = format!(
        "UPDATE room_leases SET lease_until = {} + $1 WHERE node = $2",
        db_now(backend)
    );
    Ok(db
        .execute_raw(stmt(backend, &sql, vec![lease_ms.into(), node.into()]))
        .await?
        .rows_affected())
}

/// Gives up room instance `owner`'s lease on `room_id` (a clean stop: no epoch change).
pub async fn release_room(
    db: &DatabaseConnection,
    room_id: &str,
    owner: &str,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    db.execute_raw(stmt(
        backend,
        "UPDATE room_leases SET owner = NULL, node = NULL, lease_until = 0 WHERE room_id = $1 AND owner = $2",
        vec![room_id.into(), owner.into()],
    ))
    .await?;
    Ok(())
}

/// Gives up every lease of process `node` (a clean shutdown).
pub async fn release_node(db: &DatabaseConnection, node: &str) -> Result<u64, DbErr> {
    let backend = db.get_database_backend();
    Ok(db
        .execute_raw(stmt(
            backend,
            "UPDATE room_leases SET owner = NULL, node = NULL, lease_until = 0 WHERE node = $1",
            vec![node.into()],
        ))
        .await?
        .rows_affected())
}

/// This process's name in leases: `host|pid|random`.
pub fn node_name() -> String {
    format!(
        "{}|{}|{}",
        host_name(),
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".to_owned())
}

/// True when `held` names a process on this host that is gone: its pid no longer runs, or
/// it is this very pid under another name (the pid was reused, e.g. pid 1 in a container).
pub fn node_is_dead(held: &str, me: &str) -> bool {
    let mut parts = held.split('|');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    let mut mine = me.split('|');
    if held == me || Some(host) != mine.next() {
        return false;
    }
    if Some(pid) == mine.next() {
        return true;
    }
    pid.parse::<u32>()
        .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// High-water marks of a room's events without history.
pub async fn load_counters(
    db: &DatabaseConnection,
    room_id: &str,
) -> Result<std::collections::HashMap<String, u64>, DbErr> {
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(stmt(
            backend,
            "SELECT event_name, high_water FROM event_counters WHERE room_id = $1",
            vec![room_id.into()],
        ))
        .await?;
    let mut counters = std::collections::HashMap::new();
    for row in rows {
        let name: String = row.try_get("", "event_name")?;
        let high_water: i64 = row.try_get("", "high_water")?;
        counters.insert(name, high_water.max(0) as u64);
    }
    Ok(counters)
}

fn to_event(room_id: &str, row: message::Model) -> Arc<StoredEvent> {
    Arc::new(StoredEvent::new(
        room_id,
        &row.event_name,
        row.seq.max(0) as u64,
        row.epoch.max(0) as u64,
        row.timestamp,
        row.from_user.into(),
        row.event_data,
        row.meta,
    ))
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
