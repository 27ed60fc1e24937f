//! Database access with sea-orm: connecting (and migrating), writing batches fenced by room
//! leases, the quarantine, reading pages by `seq` range. Plain functions over `&impl ConnectionTrait`, so the same code runs on
//! SQLite and PostgreSQL, inside or outside a transaction.

mod sqlite;

use crate::actors::messages::{CounterMark, StoredEvent};
use crate::history::PageBudget;
use crate::protocol::dialogue::to_json;
use entity::message::{self, Column, Entity as Messages};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement, StreamTrait, TransactionTrait,
};
use sqlite::FastWrite;
pub use sqlite::{SqliteWriter, RESTART_FRAMES};
use std::fmt::Write as _;
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
    // Processes starting at once on a fresh database (a cluster's nodes) would race to apply
    // the same migration; they take turns instead.
    let turn = MigrationTurn::take(url, &options).await?;
    let migrated = Migrator::up(&db, None).await;
    turn.release().await;
    migrated?;
    db.close().await?;
    Database::connect(options).await
}

/// This process's turn to apply migrations, held until [`MigrationTurn::release`]: on SQLite
/// an exclusive `flock` of the database file (SQLite's own locks are `fcntl` locks, which it
/// does not disturb), on PostgreSQL a session advisory lock on a connection of its own.
enum MigrationTurn {
    File(#[allow(dead_code)] std::fs::File),
    Postgres(DatabaseConnection),
    None,
}

/// The advisory lock key of migrations (any constant the application uses for nothing else).
const MIGRATION_LOCK: i64 = 0x6469_616c_6f67_7565; // "dialogue"

impl MigrationTurn {
    async fn take(url: &str, options: &ConnectOptions) -> Result<MigrationTurn, DbErr> {
        if url.starts_with("sqlite:") {
            let Some(path) = sqlite::sqlite_file(url) else {
                return Ok(MigrationTurn::None);
            };
            let file = tokio::task::spawn_blocking(move || {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)?;
                file.lock()?;
                Ok::<_, std::io::Error>(file)
            })
            .await
            .map_err(|e| DbErr::Custom(format!("migration lock: {e}")))?
            .map_err(|e| DbErr::Custom(format!("migration lock of the database file: {e}")))?;
            return Ok(MigrationTurn::File(file));
        }
        let mut one = options.clone();
        one.max_connections(1).min_connections(1);
        let conn = Database::connect(one).await?;
        conn.execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .await?;
        Ok(MigrationTurn::Postgres(conn))
    }
}

impl MigrationTurn {
    /// Gives the turn to the next process (the file lock ends with its file; the advisory
    /// lock is released, and its connection closed).
    async fn release(self) {
        if let MigrationTurn::Postgres(conn) = self {
            let unlock = format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})");
            let _ = conn.execute_unprepared(&unlock).await;
            let _ = conn.close().await;
        }
    }
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
        /// What is stored there is this event's own tombstone: it was quarantined before.
        tombstone: bool,
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
                tombstone: false,
            } => write!(
                f,
                "seq {seq} of '{event}' in room '{room_id}' is already stored with different content"
            ),
            WriteError::Conflict {
                room_id,
                event,
                seq,
                tombstone: true,
            } => write!(
                f,
                "seq {seq} of '{event}' in room '{room_id}' was quarantined before"
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
                // BUSY, LOCKED, NOMEM, READONLY, INTERRUPT, IOERR, CORRUPT, FULL, CANTOPEN,
                // PROTOCOL: the database, not the row.
                return matches!(n & 0xff, 5..=11 | 13..=15);
            }
            // PostgreSQL SQLSTATE classes of the database, not the row: connection,
            // invalid transaction state (read-only), transaction rollback (serialization,
            // deadlock), insufficient resources, object not in prerequisite state (lock
            // timeout), operator intervention, system and internal errors; and privileges.
            code == "42501"
                || matches!(
                    &code[..code.len().min(2)],
                    "08" | "25" | "40" | "53" | "55" | "57" | "58" | "XX"
                )
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
    Statement::from_sql_and_values(backend, placeholders(backend, sql), values)
}

/// `sql`, written with PostgreSQL's `$n` placeholders, for `backend` (SQLite takes `?n`).
fn placeholders(backend: DbBackend, sql: &str) -> String {
    match backend {
        DbBackend::Sqlite => sql.replace('$', "?"),
        _ => sql.to_owned(),
    }
}

/// [`write_jobs`] through `writer`, SQLite's fast path, when there is one; what it declines
/// goes the general way.
pub async fn write_jobs_via(
    writer: Option<&std::sync::Mutex<SqliteWriter>>,
    db: &DatabaseConnection,
    jobs: &[WriteJob<'_>],
    lease_ms: i64,
) -> Result<u64, WriteError> {
    if let Some(mut writer) = writer.and_then(|w| w.lock().ok()) {
        // In room order, as write_jobs locks them.
        let mut sorted: Vec<&WriteJob<'_>> = jobs.iter().collect();
        sorted.sort_by_key(|job| job.room_id);
        match writer.write(&sorted, lease_ms) {
            Ok(inserted) => return Ok(inserted),
            Err(FastWrite::Fenced { room_id }) => return Err(WriteError::Fenced { room_id }),
            Err(FastWrite::Declined(why)) => log::debug!("writing through sea-orm: {why}"),
        }
    }
    write_jobs(db, jobs, lease_ms).await
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
    let renew = renew_sql(backend);
    // Rows are locked in room order, as the lease renewal locks them: two transactions of
    // one process (or of two cluster nodes) never wait on each other in a cycle.
    let mut jobs: Vec<&WriteJob<'_>> = jobs.iter().collect();
    jobs.sort_by_key(|job| job.room_id);
    let txn = db.begin().await?;
    for job in &jobs {
        let Some(owner) = job.owner else { continue };
        let fenced = txn
            .execute_raw(Statement::from_sql_and_values(
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
    for job in &jobs {
        for mark in job.counters {
            raise_counter(&txn, job.room_id, &mark.event, mark.high_water, mark.exact).await?;
        }
    }
    txn.commit().await?;
    Ok(inserted)
}

/// Renews a room's lease for `$1` ms when `$2` is held by owner `$3` (no row: fenced).
fn renew_sql(backend: DbBackend) -> String {
    let sql = format!(
        "UPDATE room_leases SET lease_until = {} + $1 WHERE room_id = $2 AND owner = $3",
        db_now(backend)
    );
    placeholders(backend, &sql)
}

/// The milliseconds left on room `$1`'s lease when room instance `$2` holds it (no row
/// otherwise).
fn lease_left_sql(backend: DbBackend) -> String {
    let sql = format!(
        "SELECT lease_until - {} FROM room_leases WHERE room_id = $1 AND owner = $2",
        db_now(backend)
    );
    placeholders(backend, &sql)
}

/// Raises the stored high-water mark of an event without history to `high_water` (never
/// lowers it), or sets it to exactly that (`exact`: a clean stop).
pub async fn raise_counter<C: ConnectionTrait>(
    db: &C,
    room_id: &str,
    event: &str,
    high_water: u64,
    exact: bool,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let sql = raise_counter_sql(backend, exact);
    let values = vec![room_id.into(), event.into(), (high_water as i64).into()];
    db.execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    Ok(())
}

/// [`raise_counter`]'s statement: room `$1`, event `$2`, high-water mark `$3`.
fn raise_counter_sql(backend: DbBackend, exact: bool) -> String {
    let new = match (exact, backend) {
        (true, _) => "excluded.high_water",
        (false, DbBackend::Sqlite) => "MAX(event_counters.high_water, excluded.high_water)",
        (false, _) => "GREATEST(event_counters.high_water, excluded.high_water)",
    };
    let sql = format!(
        "INSERT INTO event_counters (room_id, event_name, high_water) VALUES ($1, $2, $3) \
         ON CONFLICT (room_id, event_name) DO UPDATE SET high_water = {new}"
    );
    placeholders(backend, &sql)
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

/// Finds a stored row under one of the batches' seqs that differs from the batch's row, by
/// the database's own comparison of JSON (`jsonb` equality on PostgreSQL; on SQLite the
/// text, which is exactly what was written).
async fn check_conflicts<C: ConnectionTrait>(
    db: &C,
    batches: &[&BatchRef<'_>],
) -> Result<(), WriteError> {
    let conflict = |room_id: &str, event: &str, seq: u64, tombstone: bool| WriteError::Conflict {
        room_id: room_id.to_owned(),
        event: event.to_owned(),
        seq,
        tombstone,
    };
    if db.get_database_backend() == DbBackend::Postgres {
        let sql = r#"SELECT m.room_id, m.event_name, m.seq,
  COALESCE(m.event_data = 'null'::jsonb AND m.meta = '{"quarantined": true}'::jsonb
   AND m.from_user = e ->> 'from_user' AND m."timestamp" = (e ->> 'timestamp')::bigint
   AND m.epoch = (e ->> 'epoch')::bigint, false) AS tombstone
FROM jsonb_array_elements($1::jsonb) AS e
JOIN messages m ON m.room_id = e ->> 'room_id' AND m.event_name = e ->> 'event_name'
  AND m.seq = (e ->> 'seq')::bigint
WHERE m.event_data <> e -> 'event_data' OR m.from_user <> e ->> 'from_user'
  OR m."timestamp" <> (e ->> 'timestamp')::bigint OR m.epoch <> (e ->> 'epoch')::bigint
  OR m.meta IS DISTINCT FROM e -> 'meta'
ORDER BY m.seq LIMIT 1"#;
        let values = [pg_rows_json(batches).into()];
        let found = db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                values,
            ))
            .await?;
        if let Some(row) = found {
            let room_id: String = row.try_get("", "room_id")?;
            let event: String = row.try_get("", "event_name")?;
            let seq: i64 = row.try_get("", "seq")?;
            let tombstone: bool = row.try_get("", "tombstone")?;
            return Err(conflict(&room_id, &event, seq.max(0) as u64, tombstone));
        }
        return Ok(());
    }
    for b in batches {
        for (seq, stored) in sqlite_compare(db, b).await? {
            match stored {
                Stored::Same => {}
                Stored::OwnTombstone => return Err(conflict(b.room_id, b.event, seq, true)),
                Stored::Different => return Err(conflict(b.room_id, b.event, seq, false)),
            }
        }
    }
    Ok(())
}

/// How a stored row compares with the batch's row under the same seq.
#[derive(Debug, PartialEq, Eq)]
enum Stored {
    Same,
    /// This event's own tombstone: it was quarantined before.
    OwnTombstone,
    Different,
}

/// SQLite: the rows stored under `batch`'s seqs, compared with the batch by their exact
/// text (what was written).
async fn sqlite_compare<C: ConnectionTrait>(
    db: &C,
    batch: &BatchRef<'_>,
) -> Result<Vec<(u64, Stored)>, DbErr> {
    let (Some(first), Some(last)) = (batch.events.first(), batch.events.last()) else {
        return Ok(Vec::new());
    };
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            r#"SELECT seq, event_data, from_user, "timestamp", meta, epoch FROM messages
               WHERE room_id = ? AND event_name = ? AND seq BETWEEN ? AND ?"#,
            [
                batch.room_id.into(),
                batch.event.into(),
                (first.seq as i64).into(),
                (last.seq as i64).into(),
            ],
        ))
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: i64 = row.try_get("", "seq")?;
        let Some(e) = (seq as u64)
            .checked_sub(first.seq)
            .and_then(|i| batch.events.get(i as usize))
        else {
            continue;
        };
        let data: String = row.try_get("", "event_data")?;
        let from: String = row.try_get("", "from_user")?;
        let timestamp: i64 = row.try_get("", "timestamp")?;
        let meta: Option<String> = row.try_get("", "meta")?;
        let epoch: i64 = row.try_get("", "epoch")?;
        let same_origin = from == *e.from && timestamp == e.timestamp && epoch == e.epoch as i64;
        let stored = if same_origin && data == e.data_json() && meta.as_deref() == e.meta_json() {
            Stored::Same
        } else if same_origin && data == "null" && meta.as_deref() == Some(TOMBSTONE_META) {
            Stored::OwnTombstone
        } else {
            Stored::Different
        };
        out.push((e.seq, stored));
    }
    Ok(out)
}

/// The seqs of `batch` already stored exactly as the batch has them.
pub async fn stored_identically(
    db: &DatabaseConnection,
    batch: &BatchRef<'_>,
) -> Result<std::collections::HashSet<u64>, DbErr> {
    let mut found = std::collections::HashSet::new();
    if batch.events.is_empty() {
        return Ok(found);
    }
    if db.get_database_backend() == DbBackend::Postgres {
        let sql = r#"SELECT m.seq FROM jsonb_array_elements($1::jsonb) AS e
JOIN messages m ON m.room_id = e ->> 'room_id' AND m.event_name = e ->> 'event_name'
  AND m.seq = (e ->> 'seq')::bigint
WHERE m.event_data = e -> 'event_data' AND m.from_user = e ->> 'from_user'
  AND m."timestamp" = (e ->> 'timestamp')::bigint AND m.epoch = (e ->> 'epoch')::bigint
  AND m.meta IS NOT DISTINCT FROM e -> 'meta'"#;
        let values = [pg_rows_json(&[batch]).into()];
        for row in db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                values,
            ))
            .await?
        {
            found.insert(row.try_get::<i64>("", "seq")?.max(0) as u64);
        }
        return Ok(found);
    }
    for (seq, stored) in sqlite_compare(db, batch).await? {
        if stored == Stored::Same {
            found.insert(seq);
        }
    }
    Ok(found)
}

/// The highest seq stored of one (room, event) — an index lookup (0 when none).
pub async fn max_seq(db: &DatabaseConnection, room_id: &str, event: &str) -> Result<u64, DbErr> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT MAX(seq) AS seq FROM messages WHERE room_id = $1 AND event_name = $2",
            vec![room_id.into(), event.into()],
        ))
        .await?;
    Ok(row
        .and_then(|r| r.try_get::<Option<i64>>("", "seq").ok().flatten())
        .unwrap_or(0)
        .max(0) as u64)
}

/// `meta` of a tombstone, as JSON text.
const TOMBSTONE_META: &str = r#"{"quarantined":true}"#;

/// The rows of `batches` as one JSON array (PostgreSQL unpacks it with
/// `jsonb_array_elements`).
fn pg_rows_json(batches: &[&BatchRef<'_>]) -> String {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        room_id: &'a str,
        event_name: &'a str,
        event_data: &'a serde_json::value::RawValue,
        from_user: &'a str,
        timestamp: i64,
        seq: u64,
        epoch: u64,
        /// Absent (SQL NULL) when there is none; a JSON `null` stays one.
        #[serde(skip_serializing_if = "Option::is_none")]
        meta: Option<&'a serde_json::value::RawValue>,
    }
    let rows: Vec<Row<'_>> = batches
        .iter()
        .flat_map(|b| b.events.iter().map(move |e| (*b, e)))
        .map(|(b, e)| Row {
            room_id: b.room_id,
            event_name: b.event,
            event_data: e.data_raw(),
            from_user: &e.from,
            timestamp: e.timestamp,
            seq: e.seq,
            epoch: e.epoch,
            meta: e.meta_raw(),
        })
        .collect();
    to_json(&rows)
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
    let count = batches.iter().map(|b| b.events.len()).sum::<usize>();
    if count == 0 {
        return Ok(0);
    }
    if db.get_database_backend() == DbBackend::Postgres {
        let sql = format!(
            "{INSERT}
SELECT e ->> 'room_id', e ->> 'event_name', e -> 'event_data', e ->> 'from_user',
  (e ->> 'timestamp')::bigint, (e ->> 'seq')::bigint, e -> 'meta', (e ->> 'epoch')::bigint
FROM jsonb_array_elements($1::jsonb) AS e
{SKIP_STORED}"
        );
        let values = [pg_rows_json(batches).into()];
        let stmt = Statement::from_sql_and_values(DbBackend::Postgres, sql, values);
        return Ok(db.execute_raw(stmt).await?.rows_affected());
    }

    let mut events = sqlite_rows(batches);
    let mut inserted = 0;
    for size in sqlite_statement_sizes(count) {
        let values: Vec<sea_orm::Value> = events.by_ref().take(size).flatten().collect();
        let stmt = Statement::from_sql_and_values(DbBackend::Sqlite, sqlite_insert(size), values);
        inserted += db.execute_raw(stmt).await?.rows_affected();
    }
    Ok(inserted)
}

/// How `rows` rows split into SQLite INSERTs: the largest of [`SQLITE_STATEMENT_SIZES`]
/// first, so every statement text is one of a few.
fn sqlite_statement_sizes(rows: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut left = rows;
    for size in SQLITE_STATEMENT_SIZES {
        while left >= size {
            sizes.push(size);
            left -= size;
        }
    }
    sizes
}

/// The values of the batches' rows for [`sqlite_insert`], eight per row, oldest first.
fn sqlite_rows<'a>(batches: &'a [&BatchRef<'a>]) -> impl Iterator<Item = [sea_orm::Value; 8]> + 'a {
    let events = batches
        .iter()
        .flat_map(|b| b.events.iter().map(move |e| (*b, e)));
    events.map(|(b, e)| {
        [
            b.room_id.into(),
            b.event.into(),
            e.data_json().to_owned().into(),
            e.from.to_string().into(),
            e.timestamp.into(),
            (e.seq as i64).into(),
            e.meta_json().map(str::to_owned).into(),
            (e.epoch as i64).into(),
        ]
    })
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

/// Puts an event into the quarantine table (the whole `EventMessage` as text, with the
/// error) and, with `tombstone`, a tombstone under its seq in `messages` so the stream stays
/// gapless. With `owner`, only while that room instance holds the room's lease. Returns
/// whether it was new there (a retry finds it quarantined already).
pub async fn quarantine(
    db: &DatabaseConnection,
    room_id: &str,
    event: &str,
    stored: &StoredEvent,
    error: &str,
    owner: Option<&str>,
    tombstone: bool,
) -> Result<bool, WriteError> {
    let backend = db.get_database_backend();
    let txn = db.begin().await?;
    if let Some(owner) = owner {
        let held = txn
            .execute_raw(stmt(
                backend,
                "UPDATE room_leases SET lease_until = lease_until WHERE room_id = $1 AND owner = $2",
                vec![room_id.into(), owner.into()],
            ))
            .await?
            .rows_affected();
        if held == 0 {
            return Err(WriteError::Fenced {
                room_id: room_id.to_owned(),
            });
        }
    }
    let inserted = txn
        .execute_raw(stmt(
            backend,
            "INSERT INTO quarantine (room_id, event_name, seq, epoch, event, error) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (room_id, event_name, seq, epoch) DO NOTHING",
            vec![
                escaped(room_id).into(),
                escaped(event).into(),
                (stored.seq as i64).into(),
                (stored.epoch as i64).into(),
                escaped(&stored.json).into(),
                escaped(error).into(),
            ],
        ))
        .await?
        .rows_affected();
    if tombstone {
        let rows = [Arc::new(stored.tombstone(room_id, event))];
        let batch = BatchRef {
            room_id,
            event,
            events: &rows,
        };
        insert_rows(&txn, &[&batch]).await?;
    }
    txn.commit().await?;
    Ok(inserted > 0)
}

// ------------------------------------------------------------------ room leases

/// Takes room `room_id` for the room instance `owner` of process `node` for `lease_ms` (by
/// the database's clock): when nobody holds it, when the holder's lease ran out, or when the
/// holder's process is known dead ([`node_is_dead`]), or when the holder is a room instance of
/// this process that is gone (`live_here` says which are not). Taking it over from another
/// process that did not release it (an unclean stop) raises the room's epoch. Returns the
/// epoch, or `Err` naming the holder.
pub async fn claim_room(
    db: &DatabaseConnection,
    room_id: &str,
    owner: &str,
    node: &str,
    lease_ms: i64,
    live_here: impl Fn(&str) -> bool,
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
        // Left by a room instance of this process that is gone: it wrote everything before
        // it went (a deleted room whose release did not reach the database).
        (Some(o), Some(n)) if n == node && !live_here(o) => epoch,
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
    // PostgreSQL locks the rows in room order, as batch writes do (no deadlock between them).
    let rows = match backend {
        DbBackend::Postgres => {
            "room_id IN (SELECT room_id FROM room_leases WHERE node = $2 ORDER BY room_id FOR UPDATE)"
        }
        _ => "node = $2",
    };
    let sql = format!(
        "UPDATE room_leases SET lease_until = {} + $1 WHERE {rows}",
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

/// This process's name in leases: `host|boot id|pid namespace|pid|start time|random`. The
/// parts let another process on the same machine tell for sure whether it still runs
/// ([`node_is_dead`]).
pub fn node_name() -> String {
    let pid = std::process::id();
    format!(
        "{}|{}|{}|{pid}|{}|{}",
        host_name(),
        boot_id(),
        pid_namespace(),
        start_time(pid).unwrap_or_default(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn host_name() -> String {
    read_trimmed("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown-host".to_owned())
}

/// Changes at every boot of the kernel.
fn boot_id() -> String {
    read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default()
}

/// The pid namespace: processes in the same one see each other's pids in `/proc`.
fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// When process `pid` started, in clock ticks since boot (`/proc/PID/stat` field 22): with the
/// pid, it names one process even when pids are reused. `None` when no such process runs (a
/// zombie — killed, not yet reaped by its parent — does not run).
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it do not.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18).map(str::to_owned)
}

/// True when `held` (a [`node_name`]) is a process that certainly no longer runs: it ran on
/// this kernel (same host, boot and pid namespace, so `/proc` shows it if it runs) and its pid
/// is gone or belongs to a process started at another time. Anything else — another machine,
/// another container, an unreadable name — is not known dead: its lease must run out.
pub fn node_is_dead(held: &str, me: &str) -> bool {
    let held: Vec<&str> = held.split('|').collect();
    let mine: Vec<&str> = me.split('|').collect();
    if held.len() != 6 || mine.len() != 6 || held == mine {
        return false;
    }
    if held[..3] != mine[..3] || held[1].is_empty() || held[2].is_empty() || held[4].is_empty() {
        return false;
    }
    let Ok(pid) = held[3].parse::<u32>() else {
        return false;
    };
    match start_time(pid) {
        None => true,
        Some(start) => start != held[4],
    }
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
        &row.event_data,
        row.meta.as_ref(),
    ))
}

/// Events `lo..=hi` of one (room, event), newest first: an index range, never OFFSET. Rows
/// are streamed and the reading stops at the first that `budget` does not admit (then
/// [`PageBudget::was_cut`] says so), so a page of large events never sits in memory whole.
pub async fn load_range<C: ConnectionTrait + StreamTrait + Send>(
    db: &C,
    room_id: &str,
    event: &str,
    lo: u64,
    hi: u64,
    budget: &mut PageBudget,
) -> Result<Vec<Arc<StoredEvent>>, DbErr> {
    let rows = Messages::find()
        .filter(Column::RoomId.eq(room_id))
        .filter(Column::EventName.eq(event))
        .filter(Column::Seq.between(lo as i64, hi as i64))
        .order_by_desc(Column::Seq);
    newest_within(db, room_id, rows, budget).await
}

/// The newest `limit` events of one (room, event) that fit in `max_bytes`, newest first (a
/// window to restore).
pub async fn load_latest<C: ConnectionTrait + StreamTrait + Send>(
    db: &C,
    room_id: &str,
    event: &str,
    limit: u64,
    max_bytes: usize,
) -> Result<Vec<Arc<StoredEvent>>, DbErr> {
    let rows = Messages::find()
        .filter(Column::RoomId.eq(room_id))
        .filter(Column::EventName.eq(event))
        .order_by_desc(Column::Seq)
        .limit(limit.max(1));
    newest_within(db, room_id, rows, &mut PageBudget::new(max_bytes)).await
}

/// Streams `rows` into events until `budget` refuses one.
async fn newest_within<C: ConnectionTrait + StreamTrait + Send>(
    db: &C,
    room_id: &str,
    rows: sea_orm::Select<Messages>,
    budget: &mut PageBudget,
) -> Result<Vec<Arc<StoredEvent>>, DbErr> {
    use futures_util::StreamExt;
    let mut stream = std::pin::pin!(rows.stream(db).await?);
    let mut events = Vec::new();
    while let Some(row) = stream.next().await {
        let event = to_event(room_id, row?);
        if !budget.admit(event.weight()) {
            break;
        }
        events.push(event);
    }
    Ok(events)
}

// ---------------------------------------------------------------- recoverable sessions

/// A change to the `sessions` table (see [`crate::recovery`]).
pub enum SessionWrite {
    /// Insert or replace a connected session.
    Save {
        pid_hash: String,
        user_id: String,
        state: String,
    },
    /// Its connection ended at `at_ms`.
    Disconnected { pid_hash: String, at_ms: i64 },
    /// Gone for good (expired, not recoverable any more).
    Delete { pid_hash: String },
    /// A connection holds it again (a recovery).
    Connected { pid_hash: String },
}

/// Sessions one statement changes at most (up to 4 parameters each).
const SESSIONS_PER_STATEMENT: usize = 200;

/// Which of `writes` still matter: a write followed by a save or a delete of the same
/// session is not (a save sets every column, a delete removes the row).
fn not_superseded(writes: &[SessionWrite]) -> Vec<bool> {
    let mut ended = std::collections::HashSet::new();
    let mut keep = vec![true; writes.len()];
    for (i, write) in writes.iter().enumerate().rev() {
        keep[i] = !ended.contains(write.pid_hash());
        if matches!(
            write,
            SessionWrite::Save { .. } | SessionWrite::Delete { .. }
        ) {
            ended.insert(write.pid_hash());
        }
    }
    keep
}

/// Drops the writes a later save or delete of the same session makes pointless, keeping the
/// order of the rest (the session store's queue while the database is away).
pub fn drop_superseded(writes: &mut Vec<SessionWrite>) {
    let mut keep = not_superseded(writes).into_iter();
    writes.retain(|_| keep.next().unwrap_or(true));
}

/// The statements that apply `writes` with `backend`'s placeholders. Writes to different
/// sessions commute, so only each session's own writes keep their order: the n-th write of
/// every session goes in round n, and a round's writes of one kind share statements (up to
/// [`SESSIONS_PER_STATEMENT`]; a statement costs far more than a row). Ten thousand clients
/// that go away at once are 50 statements; a reconnection's two writes (back, then saved)
/// are one, the save.
pub fn session_statements(
    backend: DbBackend,
    writes: &[SessionWrite],
    now_ms: i64,
) -> Vec<(String, Vec<sea_orm::Value>)> {
    let keep = not_superseded(writes);
    let mut rounds: Vec<[Vec<&SessionWrite>; 4]> = Vec::new();
    let mut seen: std::collections::HashMap<&str, usize> = Default::default();
    for (write, _) in writes.iter().zip(keep).filter(|(_, keep)| *keep) {
        let round = seen.entry(write.pid_hash()).or_insert(0);
        if rounds.len() <= *round {
            rounds.push(Default::default());
        }
        let kind = match write {
            SessionWrite::Save { .. } => 0,
            SessionWrite::Delete { .. } => 1,
            SessionWrite::Connected { .. } => 2,
            SessionWrite::Disconnected { .. } => 3,
        };
        rounds[*round][kind].push(write);
        *round += 1;
    }
    rounds
        .iter()
        .flatten()
        .flat_map(|kind| kind.chunks(SESSIONS_PER_STATEMENT))
        .map(|group| group_statement(backend, group, now_ms))
        .collect()
}

impl SessionWrite {
    fn pid_hash(&self) -> &str {
        match self {
            SessionWrite::Save { pid_hash, .. }
            | SessionWrite::Disconnected { pid_hash, .. }
            | SessionWrite::Delete { pid_hash }
            | SessionWrite::Connected { pid_hash } => pid_hash,
        }
    }
}

/// One statement for changes of one kind to distinct sessions (`group` is not empty).
fn group_statement(
    backend: DbBackend,
    group: &[&SessionWrite],
    now_ms: i64,
) -> (String, Vec<sea_orm::Value>) {
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(group.len() * 4);
    // `$first, $(first + step), …`: the sessions' pid hashes, where they sit among the values.
    let list = |first: usize, step: usize| {
        (0..group.len())
            .map(|i| format!("${}", first + i * step))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sql = match group[0] {
        SessionWrite::Save { .. } => {
            let mut sql = String::from(
                "INSERT INTO sessions (pid_hash, user_id, state, updated_at, disconnected_at) \
                 VALUES ",
            );
            for (i, write) in group.iter().enumerate() {
                if let SessionWrite::Save {
                    pid_hash,
                    user_id,
                    state,
                } = write
                {
                    let n = i * 4;
                    let comma = if i > 0 { ", " } else { "" };
                    let _ = write!(
                        sql,
                        "{comma}(${}, ${}, ${}, ${}, NULL)",
                        n + 1,
                        n + 2,
                        n + 3,
                        n + 4
                    );
                    values.push(pid_hash.as_str().into());
                    values.push(user_id.as_str().into());
                    values.push(state.as_str().into());
                    values.push(now_ms.into());
                }
            }
            sql.push_str(
                " ON CONFLICT (pid_hash) DO UPDATE SET user_id = excluded.user_id, \
                 state = excluded.state, updated_at = excluded.updated_at, \
                 disconnected_at = NULL",
            );
            sql
        }
        SessionWrite::Disconnected { .. } => {
            // Each session keeps its own time: it sets when the session expires.
            let mut sql = String::from("UPDATE sessions SET disconnected_at = CASE pid_hash");
            for (i, write) in group.iter().enumerate() {
                if let SessionWrite::Disconnected { pid_hash, at_ms } = write {
                    let _ = write!(sql, " WHEN ${} THEN ${}", 2 * i + 1, 2 * i + 2);
                    values.push(pid_hash.as_str().into());
                    values.push((*at_ms).into());
                }
            }
            let _ = write!(sql, " END WHERE pid_hash IN ({})", list(1, 2));
            sql
        }
        SessionWrite::Delete { .. } => {
            values.extend(group.iter().map(|w| w.pid_hash().into()));
            format!("DELETE FROM sessions WHERE pid_hash IN ({})", list(1, 1))
        }
        SessionWrite::Connected { .. } => {
            values.push(now_ms.into());
            values.extend(group.iter().map(|w| w.pid_hash().into()));
            format!(
                "UPDATE sessions SET disconnected_at = NULL, updated_at = $1 \
                 WHERE pid_hash IN ({})",
                list(2, 1)
            )
        }
    };
    (placeholders(backend, &sql), values)
}

/// Applies the changes in order, in one transaction when they take more than one statement
/// ([`session_statements`]).
pub async fn write_sessions(
    db: &DatabaseConnection,
    writes: &[SessionWrite],
    now_ms: i64,
) -> Result<(), DbErr> {
    let statements = session_statements(db.get_database_backend(), writes, now_ms);
    apply_statements(db, statements).await
}

/// Runs `statements` in order: one by itself, more in one transaction.
async fn apply_statements(
    db: &DatabaseConnection,
    statements: Vec<(String, Vec<sea_orm::Value>)>,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let mut statements: Vec<Statement> = statements
        .into_iter()
        .map(|(sql, values)| Statement::from_sql_and_values(backend, sql, values))
        .collect();
    if statements.len() <= 1 {
        if let Some(statement) = statements.pop() {
            db.execute_raw(statement).await?;
        }
        return Ok(());
    }
    let txn = db.begin().await?;
    for statement in statements {
        txn.execute_raw(statement).await?;
    }
    txn.commit().await
}

/// [`write_sessions`] through `writer`, SQLite's own connection, when there is one and the
/// batch is saves that fit one statement (the common batch: connections joining rooms); the
/// rest, and what the writer declines, goes the general way. The writer ran on the
/// persistence actor's thread when the rest went through it too, and a reconnection storm of
/// 10,000 sessions took 0.3 s longer (the thread also reads the history resuming clients
/// missed); the pool's threads leave the writer free for the saves that answers wait for.
pub async fn write_sessions_via(
    writer: Option<&mut SqliteWriter>,
    db: &DatabaseConnection,
    writes: &[SessionWrite],
    now_ms: i64,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let mut statements = session_statements(backend, writes, now_ms);
    let saves = writes
        .iter()
        .all(|w| matches!(w, SessionWrite::Save { .. }));
    if let Some(writer) = writer.filter(|_| saves && statements.len() == 1) {
        let Some((sql, values)) = statements.pop() else {
            return Ok(());
        };
        match writer.execute(&sql, values) {
            Ok(_) => return Ok(()),
            Err(why) => log::debug!("saving sessions through sea-orm: {why:?}"),
        }
        // Declined (rare): the statement went to the writer, so it is made again.
        statements = session_statements(backend, writes, now_ms);
    }
    apply_statements(db, statements).await
}

/// A stored session: its user, its state (JSON text) and when its connection ended
/// (`None`: connected, as far as the database knows).
pub async fn load_session(
    db: &DatabaseConnection,
    pid_hash: &str,
) -> Result<Option<(String, String, Option<i64>)>, DbErr> {
    let backend = db.get_database_backend();
    let row = db
        .query_one_raw(stmt(
            backend,
            "SELECT user_id, state, disconnected_at FROM sessions WHERE pid_hash = $1",
            vec![pid_hash.into()],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some((
        row.try_get_by_index::<String>(0)?,
        row.try_get_by_index::<String>(1)?,
        row.try_get_by_index::<Option<i64>>(2)?,
    )))
}

/// At start-up: sessions left connected by the previous run (stopped or crashed) count as
/// disconnected from now; those disconnected before `expired_before_ms` are deleted, then
/// the longest-disconnected ones beyond `max` sessions. Returns the sessions kept.
pub async fn tidy_sessions(
    db: &DatabaseConnection,
    now_ms: Option<i64>,
    expired_before_ms: i64,
    max: usize,
) -> Result<u64, DbErr> {
    let backend = db.get_database_backend();
    if let Some(now) = now_ms {
        db.execute_raw(stmt(
            backend,
            "UPDATE sessions SET disconnected_at = $1 WHERE disconnected_at IS NULL",
            vec![now.into()],
        ))
        .await?;
    }
    db.execute_raw(stmt(
        backend,
        "DELETE FROM sessions WHERE disconnected_at < $1",
        vec![expired_before_ms.into()],
    ))
    .await?;
    let total = count_sessions(db).await?;
    if total as usize > max {
        let excess = total - max as u64;
        db.execute_raw(stmt(
            backend,
            "DELETE FROM sessions WHERE pid_hash IN (SELECT pid_hash FROM sessions \
             WHERE disconnected_at IS NOT NULL ORDER BY disconnected_at LIMIT $1)",
            vec![(excess as i64).into()],
        ))
        .await?;
        return count_sessions(db).await;
    }
    Ok(total)
}

async fn count_sessions(db: &DatabaseConnection) -> Result<u64, DbErr> {
    let backend = db.get_database_backend();
    let row = db
        .query_one_raw(stmt(backend, "SELECT COUNT(*) FROM sessions", vec![]))
        .await?;
    Ok(row
        .and_then(|r| r.try_get_by_index::<i64>(0).ok())
        .unwrap_or(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs of one kind of change to distinct sessions share a statement, up to
    /// [`SESSIONS_PER_STATEMENT`]; a second change to a session in a run starts the next.
    #[test]
    fn session_changes_of_a_kind_share_statements() {
        let gone = |n: usize| SessionWrite::Disconnected {
            pid_hash: format!("{n:064x}"),
            at_ms: n as i64,
        };
        let closes: Vec<SessionWrite> = (0..10_000).map(gone).collect();
        let statements = session_statements(DbBackend::Postgres, &closes, 0);
        assert_eq!(statements.len(), 50);
        assert!(statements.iter().all(|(_, v)| v.len() == 400));
        let (sql, _) = &statements[0];
        assert!(sql.starts_with("UPDATE sessions SET disconnected_at = CASE pid_hash WHEN $1 THEN $2 WHEN $3 THEN $4"), "{sql}");
        assert!(sql.ends_with("$397, $399)"), "{sql}");
        // Writes to different sessions commute; each session's own keep their order.
        let mixed = [
            gone(1),
            gone(2),
            gone(1),
            SessionWrite::Delete {
                pid_hash: "x".into(),
            },
            gone(3),
        ];
        let statements = session_statements(DbBackend::Sqlite, &mixed, 0);
        let sqls: Vec<&str> = statements.iter().map(|(sql, _)| sql.as_str()).collect();
        assert_eq!(sqls.len(), 3, "{sqls:?}");
        assert_eq!(sqls[0], "DELETE FROM sessions WHERE pid_hash IN (?1)");
        assert!(
            sqls[1].ends_with("WHERE pid_hash IN (?1, ?3, ?5)"),
            "{sqls:?}"
        );
        assert!(
            sqls[2].ends_with("WHEN ?1 THEN ?2 END WHERE pid_hash IN (?1)"),
            "{sqls:?}"
        );
        assert_eq!(statements[2].1[1], sea_orm::Value::from(1i64));
        // A reconnection (back, then saved) is its save.
        let back = |n: usize| SessionWrite::Connected {
            pid_hash: format!("{n:064x}"),
        };
        let save = |n: usize| SessionWrite::Save {
            pid_hash: format!("{n:064x}"),
            user_id: "u".into(),
            state: "{}".into(),
        };
        let resumes: Vec<SessionWrite> = (0..100).flat_map(|n| [back(n), save(n)]).collect();
        let statements = session_statements(DbBackend::Sqlite, &resumes, 0);
        assert_eq!(statements.len(), 1);
        assert!(statements[0].0.starts_with("INSERT INTO sessions"));
    }

    /// A save or a delete makes every earlier write of its session pointless.
    #[test]
    fn later_saves_and_deletes_supersede() {
        let save = |pid: &str, state: &str| SessionWrite::Save {
            pid_hash: pid.into(),
            user_id: "u".into(),
            state: state.into(),
        };
        let mut writes = vec![
            save("a", "1"),
            save("b", "1"),
            SessionWrite::Disconnected {
                pid_hash: "a".into(),
                at_ms: 5,
            },
            save("a", "2"),
            SessionWrite::Delete {
                pid_hash: "b".into(),
            },
            save("a", "3"),
            SessionWrite::Disconnected {
                pid_hash: "a".into(),
                at_ms: 6,
            },
            SessionWrite::Connected {
                pid_hash: "c".into(),
            },
        ];
        drop_superseded(&mut writes);
        let shape: Vec<String> = writes
            .iter()
            .map(|w| match w {
                SessionWrite::Save {
                    pid_hash, state, ..
                } => format!("save {pid_hash} {state}"),
                SessionWrite::Delete { pid_hash } => format!("delete {pid_hash}"),
                SessionWrite::Disconnected { pid_hash, .. } => format!("gone {pid_hash}"),
                SessionWrite::Connected { pid_hash } => format!("back {pid_hash}"),
            })
            .collect();
        assert_eq!(shape, ["delete b", "save a 3", "gone a", "back c"]);
    }

    #[test]
    fn a_process_is_dead_only_when_this_kernel_says_so() {
        let me = node_name();
        let parts: Vec<&str> = me.split('|').collect();
        let with = |changes: &[(usize, &str)]| {
            let mut p = parts.clone();
            for &(i, value) in changes {
                p[i] = value;
            }
            p.join("|")
        };
        let gone = "4194304"; // above the kernel's largest pid
                              // This very process under another token: it runs.
        assert!(!node_is_dead(&with(&[(5, "othertoken")]), &me));
        // Its pid, started at another time: the pid was reused.
        assert!(node_is_dead(&with(&[(4, "1")]), &me));
        // A pid no process has.
        assert!(node_is_dead(&with(&[(3, gone)]), &me));
        // pid 1 runs (with its own start time).
        let init = start_time(1).unwrap();
        assert!(!node_is_dead(&with(&[(3, "1"), (4, &init)]), &me));
        // Another machine, boot or container: not known.
        assert!(!node_is_dead(&with(&[(0, "elsewhere"), (3, gone)]), &me));
        assert!(!node_is_dead(&with(&[(1, "other-boot"), (3, gone)]), &me));
        assert!(!node_is_dead(&with(&[(2, "pid:[1]"), (3, gone)]), &me));
        assert!(!node_is_dead("old-style|123|abc", &me));
    }
}
