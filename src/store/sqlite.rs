//! SQLite's write path: a connection of its own (rusqlite) for the persistence actor's batches,
//! and another for the session store's saves, each used on its owner's thread with statements
//! prepared once; the two take turns ([`Shared`]). Through sea-orm every statement of a
//! write (`BEGIN`, a lease check or renewal per room, the inserts, `COMMIT`) is a round trip to a
//! sqlx worker thread, and the pool hands each write another connection, whose page cache the
//! last writer invalidated; this path does the same write in one call, with a warm cache.
//!
//! It is a fast path only: the SQL is [`super`]'s, and whatever it does not finish cleanly
//! (a busy database, a row it could not insert, any refusal) it leaves uncommitted and hands
//! back, for [`super::write_jobs`] to do the write again and sort out, as before.

use super::{lease_left_sql, raise_counter_sql, renew_sql, sqlite_insert, sqlite_rows, WriteJob};
use super::{sqlite_statement_sizes, BatchRef};
use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

/// How long a write waits for another writer (the pool, a second process) before it
/// declines. The write blocks its thread (the persistence actor's or the session store's)
/// meanwhile, so this is short; the general path waits the pool's 5 s on a worker thread.
const BUSY_TIMEOUT: Duration = Duration::from_millis(50);

/// Frames (pages) in the write-ahead log from which the writer is asked to start it over
/// ([`SqliteWriter::restart_log_before_next_write`]): 64 MiB. That checkpoint holds the
/// writes back for its disk syncs (a few milliseconds): at 16 MiB, every 2 s at 500 `stored`
/// events/s, it doubled the soak's p99.
pub const RESTART_FRAMES: i64 = 16_384;
/// What a write-ahead log is cut back to when it starts over (it keeps its size otherwise).
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// What a write through [`SqliteWriter`] came to, short of success.
#[derive(Debug)]
pub enum FastWrite {
    /// The room's lease belongs to someone else (nothing was written).
    Fenced { room_id: String },
    /// Not written; the general path is to do it (and say why it fails, if it does).
    Declined(String),
}

/// A SQLite connection of its own for writes (the persistence actor's, the session store's).
pub struct SqliteWriter {
    conn: Connection,
    /// Shared with every writer of the file in this process.
    shared: Arc<Shared>,
}

/// What the writers of one database file in this process share: the request to start its
/// log over (the persistence actor asks its own writer, and whichever writes next does it:
/// the session store's, while connections come and go and no event is written), and their
/// turn to write.
#[derive(Default)]
struct Shared {
    restart: AtomicBool,
    /// Held through each write: the process's writers (the persistence actor's, the session
    /// store's, on threads of their own) wait for each other here, on a futex, instead of in
    /// SQLite's busy handler, which sleeps 1 ms and more between tries.
    turn: Mutex<()>,
}

fn shared(path: &str) -> Arc<Shared> {
    static SHARED: LazyLock<Mutex<HashMap<PathBuf, Weak<Shared>>>> =
        LazyLock::new(Default::default);
    let file = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
    let mut files = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(shared) = files.get(&file).and_then(Weak::upgrade) {
        return shared;
    }
    files.retain(|_, shared| shared.strong_count() > 0);
    let shared = Arc::default();
    files.insert(file, Arc::downgrade(&shared));
    shared
}

/// The database file of an `sqlite:` URL; `None` for other URLs and in-memory databases
/// (another connection would open another, empty database).
pub fn sqlite_file(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite:")?;
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    Some(path.to_owned())
}

impl SqliteWriter {
    /// Opens the database file of `url` (already created and migrated by the pool), set up as
    /// the pool's connections are (WAL, `synchronous = NORMAL`, checkpoints left to the
    /// actor) but for the busy timeout, [`BUSY_TIMEOUT`], and a 1 MiB page cache. `None` when
    /// `url` is not a SQLite file.
    pub fn open(url: &str) -> Option<Result<SqliteWriter, rusqlite::Error>> {
        let path = sqlite_file(url)?;
        let shared = shared(&path);
        let open = || {
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(path, flags)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            // Enough for the pages writes touch (the tables' and indexes' insertion points);
            // SQLite's default is 2 MiB per connection.
            conn.pragma_update(None, "cache_size", -1024)?;
            conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
            conn.set_prepared_statement_cache_capacity(32);
            Ok(SqliteWriter { conn, shared })
        };
        Some(open())
    }

    /// Writes the jobs in one transaction, as [`super::write_jobs`] does, and returns the rows
    /// inserted. Rolls back and declines when a row was not inserted (stored already, or a
    /// conflict: the general path tells which) or the database answers anything but success.
    pub fn write(&mut self, jobs: &[&WriteJob<'_>], lease_ms: i64) -> Result<u64, FastWrite> {
        let declined = |e: rusqlite::Error| FastWrite::Declined(e.to_string());
        let shared = Arc::clone(&self.shared);
        let _turn = shared.turn.lock().unwrap_or_else(|e| e.into_inner());
        self.restart_log();
        let txn = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(declined)?;
        let lease_left = lease_left_sql(sea_orm::DbBackend::Sqlite);
        for job in jobs {
            let Some(owner) = job.owner else { continue };
            // The transaction holds the database's write lock: no one can take the room
            // before it commits. A lease with more than half its time left stays as it is
            // (the actor renews every lease a third of the way): an UPDATE here would add a
            // page to the log on every write, a quarter of what a small write logs.
            let left: Option<i64> = txn
                .prepare_cached(&lease_left)
                .and_then(|mut s| s.query_row((job.room_id, owner), |r| r.get(0)).optional())
                .map_err(declined)?;
            match left {
                None => {
                    return Err(FastWrite::Fenced {
                        room_id: job.room_id.to_owned(),
                    })
                }
                Some(left) if left <= lease_ms / 2 => {
                    txn.prepare_cached(&renew_sql(sea_orm::DbBackend::Sqlite))
                        .and_then(|mut s| s.execute((lease_ms, job.room_id, owner)))
                        .map_err(declined)?;
                }
                Some(_) => {}
            }
        }
        let batches: Vec<&BatchRef<'_>> = jobs.iter().flat_map(|j| j.streams.iter()).collect();
        let total: usize = batches.iter().map(|b| b.events.len()).sum();
        let mut rows = sqlite_rows(&batches);
        let mut inserted = 0;
        for size in sqlite_statement_sizes(total) {
            let values = rows.by_ref().take(size).flatten().map(to_sql_value);
            let values = values.collect::<Result<Vec<_>, _>>()?;
            inserted += txn
                .prepare_cached(sqlite_insert(size))
                .and_then(|mut s| s.execute(params_from_iter(values)))
                .map_err(declined)?;
        }
        if inserted < total {
            return Err(FastWrite::Declined(format!(
                "{} of {total} rows were stored already or conflict",
                total - inserted
            )));
        }
        for job in jobs {
            for mark in job.counters {
                txn.prepare_cached(&raise_counter_sql(sea_orm::DbBackend::Sqlite, mark.exact))
                    .and_then(|mut s| {
                        s.execute((job.room_id, &*mark.event, mark.high_water as i64))
                    })
                    .map_err(declined)?;
            }
        }
        txn.commit().map_err(declined)?;
        Ok(inserted as u64)
    }

    /// Checkpoints before the next transaction of any writer of this file, so that the
    /// write-ahead log starts over.
    ///
    /// SQLite starts the log over only in a write transaction that begins once every frame is
    /// checkpointed. The persistence actor's checkpoints run on a pooled connection, in the
    /// background, so that commits never wait for their disk sync; while writes keep coming
    /// one always lands during the checkpoint, and the log (with its index, which every
    /// connection maps) would grow for as long as they do: 8 MB/s at 500 `stored` events/s.
    /// The actor calls this when its checkpoint finds the log past [`RESTART_FRAMES`]: this
    /// checkpoint copies the little the last one left, and the next transaction starts over.
    pub fn restart_log_before_next_write(&mut self) {
        self.shared.restart.store(true, Ordering::Relaxed);
    }

    fn restart_log(&mut self) {
        if !self.shared.restart.swap(false, Ordering::Relaxed) {
            return;
        }
        // Busy while a background checkpoint runs: the actor asks again after it.
        let started = std::time::Instant::now();
        match self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            Ok(()) => log::debug!("checkpoint before a write: {:?}", started.elapsed()),
            Err(e) => log::debug!("checkpoint before a write: {e}"),
        }
    }
}

impl SqliteWriter {
    /// Runs one statement (written for SQLite, with sea-orm's values), a transaction of its
    /// own. `Err` says why not (nothing was written).
    pub fn execute(&mut self, sql: &str, values: Vec<sea_orm::Value>) -> Result<usize, FastWrite> {
        let shared = Arc::clone(&self.shared);
        let _turn = shared.turn.lock().unwrap_or_else(|e| e.into_inner());
        self.restart_log();
        let values = values
            .into_iter()
            .map(to_sql_value)
            .collect::<Result<Vec<_>, _>>()?;
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params_from_iter(values)))
            .map_err(|e| FastWrite::Declined(e.to_string()))
    }
}

/// A row value as rusqlite binds it: the text, integers and NULLs [`sqlite_rows`] builds
/// (anything else is declined, for sea-orm to bind).
fn to_sql_value(value: sea_orm::Value) -> Result<rusqlite::types::Value, FastWrite> {
    use rusqlite::types::Value as V;
    use sea_orm::Value;
    Ok(match value {
        Value::String(Some(s)) => V::Text(s),
        Value::String(None) | Value::BigInt(None) => V::Null,
        Value::BigInt(Some(n)) => V::Integer(n),
        other => return Err(FastWrite::Declined(format!("a value of type {other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::messages::{CounterMark, StoredEvent};
    use crate::history::PageBudget;
    use crate::store::{self, WriteError};
    use sea_orm::DatabaseConnection;
    use std::sync::{Arc, Mutex};

    const LEASE_MS: i64 = 600_000;

    fn event(seq: u64, text: &str) -> Arc<StoredEvent> {
        let data = serde_json::json!({ "text": text, "username": "alice" });
        let meta = seq
            .is_multiple_of(2)
            .then(|| serde_json::json!({ "edited": false }));
        let from: Arc<str> = "alice".into();
        Arc::new(StoredEvent::new(
            "r",
            "message",
            seq,
            3,
            1_700_000_000_000,
            from,
            &data,
            meta.as_ref(),
        ))
    }

    fn job<'a>(
        owner: &'a str,
        events: &'a [Arc<StoredEvent>],
        counters: &'a [CounterMark],
    ) -> WriteJob<'a> {
        WriteJob {
            room_id: "r",
            owner: Some(owner),
            streams: vec![BatchRef {
                room_id: "r",
                event: "message",
                events,
            }],
            counters,
        }
    }

    /// A fresh, migrated database file in a temporary directory: (directory, file, URL, pool).
    async fn fresh(
        name: &str,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        String,
        DatabaseConnection,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(name);
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let db = store::connect(&url).await.unwrap();
        (dir, file, url, db)
    }

    /// [`fresh`], with room `r` held by `owner-a` for [`LEASE_MS`] and a writer open on it:
    /// (directory, file, pool, writer).
    async fn claimed(
        name: &str,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        DatabaseConnection,
        SqliteWriter,
    ) {
        let (dir, file, url, db) = fresh(name).await;
        store::claim_room(&db, "r", "owner-a", "node", LEASE_MS, |_| true)
            .await
            .unwrap()
            .unwrap();
        let writer = SqliteWriter::open(&url).unwrap().unwrap();
        (dir, file, db, writer)
    }

    #[tokio::test]
    async fn writes_under_the_lease_and_leaves_the_rest_to_the_general_path() {
        let (_dir, file, url, db) = fresh("w.db").await;
        store::claim_room(&db, "r", "owner-a", "node", 1, |_| true)
            .await
            .unwrap()
            .unwrap();
        let writer = Mutex::new(SqliteWriter::open(&url).unwrap().unwrap());
        let write = |j: &WriteJob<'_>| writer.lock().unwrap().write(&[j], LEASE_MS);

        // Rows (of every statement size below 20) and a counter, in one transaction, read
        // back through sea-orm as written; the lease is renewed.
        let events: Vec<_> = (1..=23).map(|s| event(s, &format!("m{s}"))).collect();
        let marks = [CounterMark {
            event: "typing".into(),
            high_water: 7,
            exact: false,
        }];
        assert_eq!(write(&job("owner-a", &events, &marks)).unwrap(), 23);
        let mut budget = PageBudget::new(1 << 20);
        let back = store::load_range(&db, "r", "message", 1, 23, &mut budget)
            .await
            .unwrap();
        let back: Vec<&str> = back.iter().rev().map(|e| &*e.json).collect();
        let sent: Vec<&str> = events.iter().map(|e| &*e.json).collect();
        assert_eq!(back, sent);
        let counters = store::load_counters(&db, "r").await.unwrap();
        assert_eq!(counters.get("typing"), Some(&7));
        let renewed: i64 = rusqlite::Connection::open(&file)
            .unwrap()
            .query_row(
                "SELECT lease_until - CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) \
                 FROM room_leases WHERE room_id = 'r'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(renewed > LEASE_MS / 2, "lease left: {renewed} ms");

        // The same rows again (a retry): declined, and the general path finds them stored.
        let again = write(&job("owner-a", &events[..4], &[]));
        assert!(matches!(again, Err(FastWrite::Declined(_))), "{again:?}");
        let retry = [job("owner-a", &events[..4], &[])];
        let inserted = store::write_jobs_via(Some(&writer), &db, &retry, LEASE_MS).await;
        assert_eq!(inserted.unwrap(), 0);

        // A different row under a stored seq: declined; the general path names the conflict.
        let other = [event(3, "not m3")];
        let conflict = [job("owner-a", &other, &[])];
        let refused = store::write_jobs_via(Some(&writer), &db, &conflict, LEASE_MS).await;
        assert!(
            matches!(refused, Err(WriteError::Conflict { seq: 3, .. })),
            "{refused:?}"
        );

        // Another owner's write is fenced, and writes nothing.
        let later = [event(24, "m24")];
        let fenced = write(&job("owner-b", &later, &marks));
        assert!(
            matches!(&fenced, Err(FastWrite::Fenced { room_id }) if room_id == "r"),
            "{fenced:?}"
        );
        assert_eq!(store::max_seq(&db, "r", "message").await.unwrap(), 23);

        // Another connection holds the write lock: declined after the short busy timeout,
        // nothing written; once it lets go, the write goes through.
        let locker = rusqlite::Connection::open(&file).unwrap();
        locker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let busy = write(&job("owner-a", &later, &[]));
        assert!(matches!(busy, Err(FastWrite::Declined(_))), "{busy:?}");
        locker.execute_batch("COMMIT").unwrap();
        assert_eq!(store::max_seq(&db, "r", "message").await.unwrap(), 23);
        assert_eq!(write(&job("owner-a", &later, &[])).unwrap(), 1);
        assert_eq!(store::max_seq(&db, "r", "message").await.unwrap(), 24);
    }

    /// Saves that fit one statement go through the writer: the general path is given another
    /// database, where a batch left to it would land. Other changes go the general way, in
    /// order. While another connection holds the write lock the writer declines (nothing
    /// written) and the general path waits its turn.
    #[tokio::test]
    async fn one_statement_of_saves_goes_through_the_writer_the_rest_the_general_way() {
        use store::SessionWrite;
        let (_dir, file, url, db) = fresh("s.db").await;
        let (_decoy_dir, _, _, decoy) = fresh("decoy.db").await;
        let mut writer = SqliteWriter::open(&url).unwrap().unwrap();
        let save = |pid: &str, state: &str| SessionWrite::Save {
            pid_hash: pid.into(),
            user_id: format!("user-{pid}"),
            state: state.into(),
        };
        let gone = |pid: &str, at_ms: i64| SessionWrite::Disconnected {
            pid_hash: pid.into(),
            at_ms,
        };
        let saves = [save("a", "{}"), save("b", "{}"), save("c", "{}")];
        store::write_sessions_via(Some(&mut writer), &decoy, &saves, 500)
            .await
            .unwrap();
        assert!(store::load_session(&db, "c").await.unwrap().is_some());
        assert_eq!(store::load_session(&decoy, "c").await.unwrap(), None);
        let batch = [
            save("a", r#"{"rooms":["r1"]}"#),
            save("b", "{}"),
            save("c", "{}"),
            save("d", "{}"),
            gone("a", 1_100),
            gone("b", 1_200),
            gone("a", 1_300),
            SessionWrite::Connected {
                pid_hash: "b".into(),
            },
            SessionWrite::Delete {
                pid_hash: "c".into(),
            },
            save("e", "{}"),
            save("c", r#"{"rooms":["r2"]}"#),
            gone("d", 1_400),
        ];
        store::write_sessions_via(Some(&mut writer), &db, &batch, 1_000)
            .await
            .unwrap();
        let load = |pid: &'static str| {
            let db = db.clone();
            async move { store::load_session(&db, pid).await.unwrap() }
        };
        let user = |pid: &str| format!("user-{pid}");
        // The later of two disconnections counts; each session keeps its own time.
        assert_eq!(
            load("a").await,
            Some((user("a"), r#"{"rooms":["r1"]}"#.into(), Some(1_300)))
        );
        assert_eq!(load("b").await, Some((user("b"), "{}".into(), None)));
        assert_eq!(
            load("c").await,
            Some((user("c"), r#"{"rooms":["r2"]}"#.into(), None))
        );
        assert_eq!(load("d").await, Some((user("d"), "{}".into(), Some(1_400))));
        assert_eq!(load("e").await, Some((user("e"), "{}".into(), None)));

        let locker = rusqlite::Connection::open(&file).unwrap();
        locker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let later = [save("a", r#"{"rooms":[]}"#), save("e", "{}")];
        let statements = store::session_statements(sea_orm::DbBackend::Sqlite, &later, 2_000);
        for (sql, values) in statements {
            assert!(writer.execute(&sql, values).is_err());
        }
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            locker.execute_batch("COMMIT").unwrap();
        });
        store::write_sessions_via(Some(&mut writer), &db, &later, 2_000)
            .await
            .unwrap();
        release.join().unwrap();
        assert_eq!(
            load("a").await,
            Some((user("a"), r#"{"rooms":[]}"#.into(), None))
        );
        assert_eq!(load("e").await, Some((user("e"), "{}".into(), None)));
    }

    /// The process's writers of one file (the persistence actor's and the session store's,
    /// each on its own thread) take turns on a lock of their own: however many writes they
    /// make at once, none finds the database busy, where SQLite's busy handler would sleep
    /// 1 ms or more before trying again.
    #[tokio::test]
    async fn writers_of_one_file_take_turns_without_finding_it_busy() {
        use std::sync::atomic::AtomicUsize;
        static BUSY: AtomicUsize = AtomicUsize::new(0);
        fn busy(tries: i32) -> bool {
            BUSY.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_micros(100));
            tries < 100_000
        }
        let (_dir, file, url, _db) = fresh("turns.db").await;
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let mut writer = SqliteWriter::open(&url).unwrap().unwrap();
                    writer.conn.busy_handler(Some(busy)).unwrap();
                    for n in 0..300 {
                        let save = store::SessionWrite::Save {
                            pid_hash: format!("{t}-{n}"),
                            user_id: "u".into(),
                            state: "{}".into(),
                        };
                        let backend = sea_orm::DbBackend::Sqlite;
                        for (sql, values) in store::session_statements(backend, &[save], 1) {
                            writer.execute(&sql, values).unwrap();
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(BUSY.load(Ordering::Relaxed), 0, "a writer found it busy");
        let rows: i64 = rusqlite::Connection::open(&file)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 600);
    }

    /// A write renews its room's lease only once half of it is gone (the actor renews every
    /// lease a third of the way): a fresh lease costs no page of the log. Held by another
    /// instance, the room is fenced, as before.
    #[tokio::test]
    async fn a_write_renews_the_lease_only_once_half_of_it_is_gone() {
        let (_dir, file, db, mut writer) = claimed("lease.db").await;
        let other = rusqlite::Connection::open(&file).unwrap();
        let now = store::db_now(sea_orm::DbBackend::Sqlite);
        let set_left = |ms: i64| {
            let sql = format!("UPDATE room_leases SET lease_until = {now} + ?1");
            other.execute(&sql, [ms]).unwrap();
        };
        let left = || -> i64 {
            let sql = format!("SELECT lease_until - {now} FROM room_leases WHERE room_id = 'r'");
            other.query_row(&sql, [], |r| r.get(0)).unwrap()
        };

        // Three quarters left: the write leaves the lease alone.
        set_left(LEASE_MS * 3 / 4);
        writer
            .write(&[&job("owner-a", &[event(1, "m1")], &[])], LEASE_MS)
            .unwrap();
        assert!(left() <= LEASE_MS * 3 / 4, "renewed: {} ms left", left());

        // A quarter left, or none (expired, nobody took it): renewed to the whole lease.
        for quarter in [LEASE_MS / 4, -1_000] {
            set_left(quarter);
            let seq = if quarter > 0 { 2 } else { 3 };
            writer
                .write(&[&job("owner-a", &[event(seq, "m")], &[])], LEASE_MS)
                .unwrap();
            assert!(left() > LEASE_MS * 3 / 4, "not renewed: {} ms left", left());
        }

        // Another instance's write is fenced, whatever the lease has left.
        let fenced = writer.write(&[&job("owner-b", &[event(4, "m4")], &[])], LEASE_MS);
        assert!(
            matches!(fenced, Err(FastWrite::Fenced { .. })),
            "{fenced:?}"
        );
        assert_eq!(store::max_seq(&db, "r", "message").await.unwrap(), 3);
    }

    /// Writes that never stop, with background checkpoints that never quite catch up (as the
    /// actor's), do not grow the write-ahead log without end: asked, the writer starts it over.
    #[tokio::test]
    async fn the_log_starts_over_while_writes_keep_coming() {
        let (_dir, file, db, mut writer) = claimed("wal.db").await;
        let checkpointer = rusqlite::Connection::open(&file).unwrap();
        let reader = rusqlite::Connection::open(&file).unwrap();
        let commits = 2 * RESTART_FRAMES as u64;
        let mut most = 0;
        for seq in 1..=commits {
            let one = [event(seq, "x")];
            writer
                .write(&[&job("owner-a", &one, &[])], LEASE_MS)
                .unwrap();
            // Now and then a checkpoint that cannot copy the newest commit (a reader holds
            // the snapshot before it), as the actor's background ones while writes go on.
            match seq % 50 {
                0 => {
                    reader.execute_batch("BEGIN").unwrap();
                    let count = "SELECT COUNT(*) FROM room_leases";
                    reader.query_row(count, [], |_| Ok(())).unwrap();
                }
                1 if seq > 1 => {
                    let checkpoint = "PRAGMA wal_checkpoint(PASSIVE)";
                    let frames: i64 = checkpointer
                        .query_row(checkpoint, [], |r| r.get(1))
                        .unwrap();
                    reader.execute_batch("COMMIT").unwrap();
                    most = most.max(frames);
                    if frames >= RESTART_FRAMES {
                        writer.restart_log_before_next_write();
                    }
                }
                _ => {}
            }
        }
        // Without the writer's checkpoint: about 3 frames a commit, some 100,000 at the end.
        assert!(
            most < RESTART_FRAMES + 500,
            "the log reached {most} frames in {commits} commits"
        );
        assert_eq!(store::max_seq(&db, "r", "message").await.unwrap(), commits);
    }

    /// The persistence actor asks its writer to start the log over; when the session store's
    /// writer writes first (connections come and go, no event), that one does it.
    #[tokio::test]
    async fn any_writer_of_the_file_starts_the_log_over() {
        let (_dir, file, url, _db) = fresh("over.db").await;
        let mut events = SqliteWriter::open(&url).unwrap().unwrap();
        let mut sessions = SqliteWriter::open(&url).unwrap().unwrap();
        let checkpointer = rusqlite::Connection::open(&file).unwrap();
        let reader = rusqlite::Connection::open(&file).unwrap();
        let checkpoint = |c: &rusqlite::Connection| -> i64 {
            c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
                .unwrap()
        };
        let mut save = |n: usize| {
            let pid = format!("{n:064x}");
            let save = store::SessionWrite::Save {
                pid_hash: pid,
                user_id: "u".into(),
                state: "{}".into(),
            };
            for (sql, values) in store::session_statements(sea_orm::DbBackend::Sqlite, &[save], 1) {
                sessions.execute(&sql, values).unwrap();
            }
        };
        for n in 0..300 {
            save(n);
        }
        // A background checkpoint that cannot copy the last save: a reader holds the
        // snapshot before it.
        reader.execute_batch("BEGIN").unwrap();
        reader
            .query_row("SELECT COUNT(*) FROM sessions", [], |_| Ok(()))
            .unwrap();
        save(300);
        let before = checkpoint(&checkpointer);
        reader.execute_batch("COMMIT").unwrap();
        events.restart_log_before_next_write();
        save(301);
        let after = checkpoint(&checkpointer);
        assert!(before > 300, "{before} frames before");
        assert!(
            after < 10,
            "the log went on from {before} to {after} frames"
        );
    }

    #[test]
    fn only_sqlite_files_get_a_writer() {
        assert_eq!(
            sqlite_file("sqlite://data/d.db?mode=rwc").as_deref(),
            Some("data/d.db")
        );
        assert_eq!(sqlite_file("sqlite:d.db").as_deref(), Some("d.db"));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://x.db?mode=memory"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
        assert!(SqliteWriter::open("postgres://u@h/db").is_none());
    }
}
