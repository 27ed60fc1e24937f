//! The persistence actor (supervised): owns the database connection, writes the batches rooms
//! send as they accept events (write-behind), keeps the rooms' leases, and answers history
//! reads that reach past a room's in-memory window.
//!
//! Batches wait in memory until written and are served to readers meanwhile. Writes coalesce
//! whatever is waiting into one transaction (group commit), on SQLite through a connection of
//! the actor's own first ([`SqliteWriter`]); every batch is answered with
//! [`Committed`] once it is in. Each write checks the lease of every room in it: a room taken
//! over by another owner is refused for good (fencing). A transient failure is retried with
//! backoff; after repeated failures the actor stops and its `Supervisor` restarts it with a
//! fresh connection, keeping every waiting batch. A write the database refuses for any other
//! reason is halved until the rows at fault are found: those go to the quarantine table and
//! the rest is written. Rooms refuse new history-enabled triggers only once the backlog
//! reaches its bound.

use crate::actors::messages::*;
use crate::error::{DialogueError, ErrorCode};
use crate::metrics::METRICS;
use crate::spill;
use crate::store::{self, BatchRef, SqliteWriter, WriteError, WriteJob};
use actix::prelude::*;
use sea_orm::DatabaseConnection;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most events written in one transaction.
const MAX_EVENTS_PER_WRITE: usize = 20_000;
/// Fewer `accepted` events than this wait up to [`LINGER`] for company before they are
/// written: at a low rate every transaction would carry one event, and a transaction costs
/// far more than a row. They stay readable meanwhile, and a graceful shutdown writes them at
/// once. Batches that clients wait for (`stored`) never linger: while one write runs, the
/// next ones gather (group commit).
const LINGER_EVENTS: usize = 256;
const LINGER: Duration = Duration::from_millis(20);
/// Consecutive failures after which the actor restarts with a new connection.
const FAILURES_BEFORE_RESTART: u32 = 6;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often SQLite's write-ahead log is copied into the database file (in the background).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// How often an idle store checks that the database still answers (for `/readyz`).
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// One room's batch waiting to be written.
#[derive(Clone)]
struct Batch {
    /// Position in arrival order; batches are written in this order.
    id: u64,
    room_id: Arc<str>,
    owner: Arc<str>,
    reply: Recipient<Committed>,
    streams: Vec<StreamRows>,
    counters: Vec<CounterMark>,
    rows: usize,
    /// What its events weigh in memory ([`StoredEvent::weight`]).
    bytes: usize,
    /// Clients wait for its commit.
    urgent: bool,
}

impl Batch {
    fn job(&self) -> WriteJob<'_> {
        WriteJob {
            room_id: &self.room_id,
            owner: Some(&self.owner),
            streams: self
                .streams
                .iter()
                .map(|s| BatchRef {
                    room_id: &self.room_id,
                    event: &s.event,
                    events: &s.events,
                })
                .collect(),
            counters: &self.counters,
        }
    }
}

/// A deleted room waiting for its last writes: (its last batch id, room, owner, answer).
type Release = (u64, Arc<str>, Arc<str>, oneshot::Sender<()>);

/// Health of the store, shared with readiness checks.
#[derive(Debug, Default)]
pub struct StoreHealth {
    /// The last write or connection attempt succeeded.
    pub available: Arc<AtomicBool>,
    /// Events waiting to be written.
    pub backlog: Arc<AtomicUsize>,
    /// What they weigh in memory, in bytes.
    pub backlog_bytes: Arc<AtomicUsize>,
    /// Rooms still claiming and restoring their state (they answer nothing until done).
    pub restoring: Arc<AtomicUsize>,
    /// Rooms whose writer stopped for good (fenced, or a conflict).
    pub stopped: Arc<AtomicUsize>,
}

/// The persistence actor.
pub struct Persistence {
    url: String,
    db: Option<DatabaseConnection>,
    /// SQLite: the connection batches are written through first ([`SqliteWriter`]), opened
    /// beside each new `db`.
    writer: Option<Arc<Mutex<SqliteWriter>>>,
    /// This process's name in room leases.
    node: Arc<str>,
    lease_timeout: Duration,
    /// Where [`Spill`] writes what could not be stored at shutdown.
    spill_file: PathBuf,
    /// Waiting batches, oldest first (`in_flight` ones excluded).
    pending: VecDeque<Batch>,
    /// Batches being written right now, oldest first.
    in_flight: Vec<Batch>,
    next_batch_id: u64,
    /// Every batch with an id at or below this is in the database.
    written_upto: u64,
    health: Arc<StoreHealth>,
    /// Consecutive failed attempts (writes or connects).
    failures: u32,
    /// When the current outage began (for the recovery log line).
    failing_since: Option<Instant>,
    /// A retry is scheduled; don't start another attempt before it.
    backing_off: bool,
    connecting: bool,
    /// A write is scheduled for when [`LINGER`] has passed.
    lingering: bool,
    waiters: Vec<(u64, oneshot::Sender<()>)>,
    /// The log's size in frames at the last checkpoint (logged when it changes).
    log_frames: i64,
    checkpointing: bool,
    /// Lease owners of this process's room instances still running: a lease of this process
    /// held by anyone else was left by a room instance that is gone (its writes done).
    live: Arc<std::sync::Mutex<HashSet<Arc<str>>>>,
    /// Deleted rooms waiting for their last writes.
    releases: Vec<Release>,
    /// Leases to give up in the database (retried until it takes it).
    to_release: Vec<(Arc<str>, Arc<str>)>,
    releasing: bool,
}

impl Persistence {
    /// Starts the supervised actor on its own arbiter with an open connection; `node` is
    /// this process's name in room leases ([`store::node_name`]).
    pub fn start(
        url: String,
        db: DatabaseConnection,
        config: &crate::config::DatabaseConfig,
        node: Arc<str>,
        arbiter: &ArbiterHandle,
    ) -> (Addr<Persistence>, PersistenceLink, Arc<StoreHealth>) {
        let health = Arc::new(StoreHealth::default());
        health.available.store(true, Ordering::Relaxed);
        let actor_health = health.clone();
        let lease_timeout = Duration::from_millis(config.lease_timeout.max(100));
        let spill_file = PathBuf::from(&config.spill_file);
        log::info!("this process is {node} in room leases");
        let addr = Supervisor::start_in_arbiter(arbiter, move |_| Persistence {
            url,
            db: Some(db),
            writer: None,
            node,
            lease_timeout,
            spill_file,
            pending: VecDeque::new(),
            in_flight: Vec::new(),
            next_batch_id: 1,
            written_upto: 0,
            health: actor_health,
            failures: 0,
            failing_since: None,
            backing_off: false,
            connecting: false,
            lingering: false,
            waiters: Vec::new(),
            log_frames: 0,
            checkpointing: false,
            live: Default::default(),
            releases: Vec::new(),
            to_release: Vec::new(),
            releasing: false,
        });
        let link = PersistenceLink {
            batches: addr.clone().recipient(),
            load: addr.clone().recipient(),
            claim: addr.clone().recipient(),
            release: addr.clone().recipient(),
            backlog: health.backlog.clone(),
            max_backlog: config.max_backlog,
            backlog_bytes: health.backlog_bytes.clone(),
            max_backlog_bytes: config.max_backlog_bytes,
            restoring: health.restoring.clone(),
            stopped: health.stopped.clone(),
            available: health.available.clone(),
        };
        (addr, link, health)
    }

    fn backlog(&self) -> usize {
        self.health.backlog.load(Ordering::Relaxed)
    }

    /// Writes what is waiting: at once when there is plenty or someone waits for it, else
    /// after [`LINGER`].
    fn write_next(&mut self, ctx: &mut Context<Self>) {
        if !self.in_flight.is_empty() || self.backing_off || self.pending.is_empty() {
            return;
        }
        let waiting: usize = self.pending.iter().map(|b| b.rows.max(1)).sum();
        let urgent = self.pending.iter().any(|b| b.urgent);
        if waiting < LINGER_EVENTS && self.waiters.is_empty() && !urgent {
            if !self.lingering {
                self.lingering = true;
                ctx.run_later(LINGER, |act, ctx| {
                    act.lingering = false;
                    act.write_now(ctx);
                });
            }
            return;
        }
        self.write_now(ctx);
    }

    /// Starts a write of everything waiting, unless one is running or a retry is due later.
    fn write_now(&mut self, ctx: &mut Context<Self>) {
        if !self.in_flight.is_empty() || self.backing_off || self.pending.is_empty() {
            return;
        }
        let Some(db) = self.db.clone() else {
            self.connect(ctx);
            return;
        };
        let mut events = 0;
        while let Some(batch) = self.pending.front() {
            if events > 0 && events + batch.rows > MAX_EVENTS_PER_WRITE {
                break;
            }
            events += batch.rows;
            if let Some(batch) = self.pending.pop_front() {
                self.in_flight.push(batch);
            }
        }
        // The batches are shared with the write future; readers keep seeing them meanwhile.
        let jobs = self.in_flight.clone();
        let lease_ms = self.lease_timeout.as_millis() as i64;
        let writer = self.writer.clone();
        let write = async move { write_all(writer.as_deref(), &db, &jobs, lease_ms).await };
        ctx.spawn(
            write
                .into_actor(self)
                .map(move |(outcomes, error), act, ctx| {
                    let mut done_rows = 0;
                    let mut done_bytes = 0;
                    let mut inserted = 0;
                    let mut left = Vec::new();
                    for (batch, outcome) in act.in_flight.drain(..).zip(outcomes) {
                        match outcome {
                            Some(outcome) => {
                                done_rows += batch.rows;
                                done_bytes += batch.bytes;
                                inserted += batch.rows - outcome.quarantined.len();
                                batch.reply.do_send(outcome);
                            }
                            None => left.push(batch),
                        }
                    }
                    // What was not written goes back in front, in order.
                    for batch in left.into_iter().rev() {
                        act.pending.push_front(batch);
                    }
                    act.written_upto = act
                        .pending
                        .front()
                        .map_or(act.next_batch_id - 1, |b| b.id - 1);
                    act.health.backlog.fetch_sub(done_rows, Ordering::Relaxed);
                    act.health
                        .backlog_bytes
                        .fetch_sub(done_bytes, Ordering::Relaxed);
                    METRICS.persist_backlog.set(act.backlog() as i64);
                    if done_rows > 0 || error.is_none() {
                        METRICS.persist_batches.inc();
                        METRICS.persist_rows.inc_by(inserted as u64);
                        log::trace!("persisted {inserted} events");
                    }
                    act.wake_waiters();
                    act.finish_releases(ctx);
                    match error {
                        None => act.succeeded(),
                        Some(e) => {
                            act.failed(ctx, &format!("writing history failed: {e}"));
                            return;
                        }
                    }
                    act.write_next(ctx);
                }),
        );
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.health.available.store(true, Ordering::Relaxed);
        if let Some(since) = self.failing_since.take() {
            log::info!(
                "database available again after {:.1}s; writing the {} waiting events",
                since.elapsed().as_secs_f64(),
                self.backlog()
            );
        }
    }

    /// Records a failure, logs the outage once, and schedules a retry with backoff (or a
    /// restart of the actor after repeated failures).
    fn failed(&mut self, ctx: &mut Context<Self>, what: &str) {
        self.failures += 1;
        METRICS.persist_failures.inc();
        self.health.available.store(false, Ordering::Relaxed);
        if self.failing_since.is_none() {
            self.failing_since = Some(Instant::now());
            let source = crate::stats::ErrorSource::Service;
            crate::stats::record_error(source, "DATABASE_UNAVAILABLE", what, None, None);
            log::error!(
                "database unavailable ({what}); keeping {} events in memory and retrying",
                self.backlog()
            );
        } else {
            log::debug!("still failing: {what}");
        }
        if self.failures >= FAILURES_BEFORE_RESTART {
            log::warn!("restarting the persistence actor with a new database connection");
            ctx.stop();
            return;
        }
        let delay = (MIN_BACKOFF * 2u32.saturating_pow(self.failures - 1)).min(MAX_BACKOFF);
        self.backing_off = true;
        ctx.run_later(delay, |act, ctx| {
            act.backing_off = false;
            act.write_next(ctx);
        });
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.connecting || self.backing_off {
            return;
        }
        self.connecting = true;
        let url = self.url.clone();
        ctx.spawn(
            async move { store::connect(&url).await }
                .into_actor(self)
                .map(|result, act, ctx| {
                    act.connecting = false;
                    match result {
                        Ok(db) => {
                            act.db = Some(db);
                            act.open_writer();
                            act.succeeded();
                            act.write_next(ctx);
                        }
                        Err(e) => act.failed(ctx, &format!("connecting failed: {e}")),
                    }
                }),
        );
    }

    /// Opens SQLite's write connection for the current `db` (none for PostgreSQL). Without
    /// it every write goes through sea-orm, as it would anyway.
    fn open_writer(&mut self) {
        self.writer = match SqliteWriter::open(&self.url) {
            Some(Ok(writer)) => Some(Arc::new(Mutex::new(writer))),
            Some(Err(e)) => {
                log::warn!(
                    "SQLite's write connection did not open ({e}); writing through the pool"
                );
                None
            }
            None => None,
        };
    }

    /// Pings the database when no write is running, so readiness follows outages even when
    /// nothing is being written.
    fn check_health(&mut self, ctx: &mut Context<Self>) {
        if !self.in_flight.is_empty() || self.backing_off || self.connecting {
            return;
        }
        let Some(db) = self.db.clone() else { return };
        ctx.spawn(
            async move { db.ping().await }
                .into_actor(self)
                .map(|result, act, _| {
                    let was = act.health.available.load(Ordering::Relaxed);
                    match result {
                        Ok(()) if !was && act.failures == 0 => {
                            act.health.available.store(true, Ordering::Relaxed);
                            log::info!("database answers again");
                        }
                        Err(e) if was => {
                            act.health.available.store(false, Ordering::Relaxed);
                            log::error!("database unavailable (health check: {e})");
                        }
                        _ => {}
                    }
                }),
        );
    }

    fn wake_waiters(&mut self) {
        let upto = self.written_upto;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.waiters.drain(..).partition(|(id, _)| *id <= upto);
        self.waiters = waiting;
        for (_, tx) in ready {
            let _ = tx.send(());
        }
    }

    /// Waiting events of one (room, event) with `lo <= seq <= hi`.
    fn unwritten(&self, room_id: &str, event: &str, lo: u64, hi: u64) -> Vec<Arc<StoredEvent>> {
        self.in_flight
            .iter()
            .chain(self.pending.iter())
            .filter(|b| &*b.room_id == room_id)
            .flat_map(|b| b.streams.iter())
            .filter(|s| &*s.event == event)
            .flat_map(|s| s.events.iter())
            .filter(|e| e.seq >= lo && e.seq <= hi)
            .cloned()
            .collect()
    }

    /// Deleted rooms whose writes are all done: no longer live; their leases are given up.
    fn finish_releases(&mut self, ctx: &mut Context<Self>) {
        let upto = self.written_upto;
        let (done, waiting): (Vec<_>, Vec<_>) = self.releases.drain(..).partition(|r| r.0 <= upto);
        self.releases = waiting;
        if done.is_empty() {
            return;
        }
        if let Ok(mut live) = self.live.lock() {
            for (_, _, owner, _) in &done {
                live.remove(owner);
            }
        }
        for (_, room_id, owner, answer) in done {
            self.to_release.push((room_id, owner));
            let _ = answer.send(());
        }
        self.release_leases(ctx);
    }

    /// Gives up the leases of deleted rooms in the database; what fails is retried with the
    /// next lease renewal.
    fn release_leases(&mut self, ctx: &mut Context<Self>) {
        if self.to_release.is_empty() || self.releasing {
            return;
        }
        let Some(db) = self.db.clone() else { return };
        self.releasing = true;
        // The list stays here until the database took them (a restart of this actor drops
        // the future, not the list).
        let batch = self.to_release.clone();
        ctx.spawn(
            async move {
                let mut released = Vec::new();
                for (room_id, owner) in batch {
                    match store::release_room(&db, &room_id, &owner).await {
                        Ok(()) => released.push(owner),
                        Err(e) => {
                            log::warn!(
                                "room '{room_id}': releasing its lease failed ({e}); retrying"
                            )
                        }
                    }
                }
                released
            }
            .into_actor(self)
            .map(|released, act, _| {
                act.releasing = false;
                act.to_release
                    .retain(|(_, owner)| !released.contains(owner));
            }),
        );
    }

    /// Keeps this process's room leases alive.
    fn renew_leases(&mut self, ctx: &mut Context<Self>) {
        self.release_leases(ctx);
        let Some(db) = self.db.clone() else { return };
        let node = self.node.clone();
        let until = self.lease_timeout.as_millis() as i64;
        ctx.spawn(
            async move { store::renew_leases(&db, &node, until).await }
                .into_actor(self)
                .map(|result, _, _| {
                    if let Err(e) = result {
                        log::debug!("renewing room leases failed: {e}");
                    }
                }),
        );
    }

    /// Checkpoints SQLite's write-ahead log. Every time, not only after event batches: the
    /// session store and the leases write to the same log, and a burst of connections (ten
    /// thousand sessions saved, no event yet) grew it to 64 MB that the first event's
    /// checkpoint then copied. One with nothing to copy costs well under a millisecond.
    fn checkpoint(&mut self, ctx: &mut Context<Self>) {
        if self.checkpointing {
            return;
        }
        let Some(db) = self.db.clone() else { return };
        self.checkpointing = true;
        let started = Instant::now();
        ctx.spawn(
            async move { store::checkpoint(&db).await }
                .into_actor(self)
                .map(move |result, act, _| {
                    act.checkpointing = false;
                    match result {
                        Ok(frames) => {
                            if frames > 0
                                && frames != std::mem::replace(&mut act.log_frames, frames)
                            {
                                log::debug!(
                                    "checkpoint: log of {frames} frames, {:?}",
                                    started.elapsed()
                                );
                            }
                            // Writes never paused long enough for the log to start over.
                            if frames >= store::RESTART_FRAMES {
                                if let Some(mut writer) =
                                    act.writer.as_ref().and_then(|w| w.lock().ok())
                                {
                                    writer.restart_log_before_next_write();
                                }
                            }
                        }
                        Err(e) => log::debug!("checkpoint failed: {e}"),
                    }
                }),
        );
    }

    /// A receiver that resolves once every batch received so far is written.
    fn written(&mut self, ctx: &mut Context<Self>) -> Option<oneshot::Receiver<()>> {
        let target = self.next_batch_id - 1;
        if target <= self.written_upto {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push((target, tx));
        self.write_next(ctx);
        Some(rx)
    }
}

/// Writes batches, oldest first, in one transaction when it can. A room whose lease is gone
/// is left out (its rows are set aside in the quarantine); a write the database refuses for a
/// reason other than a transient one is retried a batch at a time ([`write_one`]). Returns
/// each batch's answer (`None` = not written, to retry) and the transient error that stopped
/// the write, if one did.
async fn write_all(
    writer: Option<&Mutex<SqliteWriter>>,
    db: &DatabaseConnection,
    jobs: &[Batch],
    lease_ms: i64,
) -> (Vec<Option<Committed>>, Option<String>) {
    let mut outcomes: Vec<Option<Committed>> = vec![None; jobs.len()];
    let mut open: Vec<usize> = (0..jobs.len()).collect();
    loop {
        if open.is_empty() {
            return (outcomes, None);
        }
        let refs: Vec<WriteJob<'_>> = open.iter().map(|&i| jobs[i].job()).collect();
        match store::write_jobs_via(writer, db, &refs, lease_ms).await {
            Ok(_) => {
                for i in open {
                    outcomes[i] = Some(Committed::default());
                }
                return (outcomes, None);
            }
            Err(e @ WriteError::Fenced { .. }) => {
                let WriteError::Fenced { room_id } = &e else {
                    unreachable!()
                };
                let fenced: Vec<usize> = open
                    .iter()
                    .copied()
                    .filter(|&i| *jobs[i].room_id == **room_id)
                    .collect();
                for i in fenced {
                    let rows = all_rows(&jobs[i]);
                    match set_aside(db, &jobs[i], &rows, &e.to_string()).await {
                        Ok(committed) => outcomes[i] = Some(committed),
                        Err(transient) => return (outcomes, Some(transient)),
                    }
                }
                open.retain(|&i| *jobs[i].room_id != **room_id);
            }
            Err(WriteError::Db(e)) if store::is_transient(&e) => {
                return (outcomes, Some(e.to_string()));
            }
            Err(_) => break,
        }
    }
    for i in open {
        match write_one(db, &jobs[i], lease_ms).await {
            Ok(outcome) => outcomes[i] = Some(outcome),
            Err(transient) => return (outcomes, Some(transient)),
        }
    }
    (outcomes, None)
}

/// The rows of a batch, oldest first per event.
fn all_rows(batch: &Batch) -> Vec<(&Arc<str>, &Arc<StoredEvent>)> {
    batch
        .streams
        .iter()
        .flat_map(|s| s.events.iter().map(move |e| (&s.event, e)))
        .collect()
}

/// Keeps rows a room may no longer write (its lease is gone) in the quarantine — without a
/// tombstone: their seqs belong to the new owner — and tells the room to stop. Rows an
/// earlier attempt of this write stored are left alone (they are in `messages`). `Err` is a
/// transient error.
async fn set_aside(
    db: &DatabaseConnection,
    batch: &Batch,
    rows: &[(&Arc<str>, &Arc<StoredEvent>)],
    reason: &str,
) -> Result<Committed, String> {
    let mut committed = Committed {
        stop: Some(reason.to_owned()),
        counters_refused: !batch.counters.is_empty(),
        ..Committed::default()
    };
    let mut stored_already = HashSet::new();
    for s in &batch.streams {
        let rows = BatchRef {
            room_id: &batch.room_id,
            event: &s.event,
            events: &s.events,
        };
        match store::stored_identically(db, &rows).await {
            Ok(seqs) => stored_already.extend(seqs.into_iter().map(|seq| (s.event.clone(), seq))),
            Err(e) if store::is_transient(&e) => return Err(e.to_string()),
            Err(e) => log::warn!("room '{}': cannot tell what is stored: {e}", batch.room_id),
        }
    }
    let mut kept = 0;
    for (event, stored) in rows {
        if stored_already.contains(&((*event).clone(), stored.seq)) {
            continue;
        }
        keep_aside(db, &batch.room_id, event, stored, reason).await?;
        committed.quarantined.push(Quarantined {
            event: (*event).clone(),
            seq: stored.seq,
            error: reason.to_owned(),
        });
        kept += 1;
    }
    if kept > 0 {
        log::error!(
            "room '{}': {kept} events kept in the quarantine: {reason}",
            batch.room_id
        );
    }
    Ok(committed)
}

/// Keeps an event in the quarantine table, without a tombstone. When even that is refused for
/// a reason other than a transient one, the log is the last place the event is kept.
/// `Err` is a transient error.
async fn keep_aside(
    db: &DatabaseConnection,
    room_id: &str,
    event: &str,
    stored: &StoredEvent,
    error: &str,
) -> Result<(), String> {
    match store::quarantine(db, room_id, event, stored, error, None, false).await {
        Ok(new) => {
            if new {
                METRICS.persist_quarantined.inc();
                let what = format!(
                    "'{event}' seq {} moved to the quarantine: {error}",
                    stored.seq
                );
                let source = crate::stats::ErrorSource::Service;
                crate::stats::record_error(source, "QUARANTINED", &what, Some(room_id), None);
            }
            Ok(())
        }
        Err(WriteError::Db(e)) if store::is_transient(&e) => Err(e.to_string()),
        Err(e) => {
            METRICS.persist_quarantined.inc();
            log::error!(
                "room '{room_id}': '{event}' seq {} is refused by the database ({error}) and by \
                 its quarantine ({e}); the event is kept only here: {}",
                stored.seq,
                stored.json
            );
            Ok(())
        }
    }
}

/// Writes one batch; when the database refuses it, halves it until the rows at fault are
/// found, writes the others, and quarantines those (a tombstone keeps their seq; after a
/// conflict, where another event holds the seq, none, and the room must stop). `Err` is a
/// transient error (retry the batch later: what was written is skipped as identical).
async fn write_one(
    db: &DatabaseConnection,
    batch: &Batch,
    lease_ms: i64,
) -> Result<Committed, String> {
    let rows = all_rows(batch);
    let refused = match store::write_jobs(db, &[batch.job()], lease_ms).await {
        Ok(_) => return Ok(Committed::default()),
        Err(e @ WriteError::Fenced { .. }) => {
            return set_aside(db, batch, &rows, &e.to_string()).await
        }
        Err(WriteError::Db(e)) if store::is_transient(&e) => return Err(e.to_string()),
        Err(e) => e,
    };
    log::warn!(
        "room '{}': the database refused a batch ({refused}); finding the rows at fault",
        batch.room_id
    );
    let mut out = Committed::default();
    let mut ranges = vec![(0, rows.len())];
    while let Some((lo, hi)) = ranges.pop() {
        if lo >= hi {
            continue;
        }
        let slice = &rows[lo..hi];
        // Rows of one event are contiguous in `rows`: regroup the slice by event.
        let mut streams: Vec<BatchRef<'_>> = Vec::new();
        let mut start = 0;
        while start < slice.len() {
            let event = slice[start].0;
            let mut end = start;
            while end < slice.len() && slice[end].0 == event {
                end += 1;
            }
            if let Some((stream, at)) = rows_index(batch, event, slice[start].1.seq) {
                streams.push(BatchRef {
                    room_id: &batch.room_id,
                    event,
                    events: &stream.events[at..at + (end - start)],
                });
            }
            start = end;
        }
        let job = WriteJob {
            room_id: &batch.room_id,
            owner: Some(&batch.owner),
            streams,
            counters: &[],
        };
        let error = match store::write_jobs(db, &[job], lease_ms).await {
            Ok(_) => continue,
            Err(WriteError::Db(e)) if store::is_transient(&e) => return Err(e.to_string()),
            Err(e @ WriteError::Fenced { .. }) => {
                let reason = e.to_string();
                return fenced_midway(db, batch, &rows, slice, &mut ranges, &reason, out).await;
            }
            Err(e) => e,
        };
        if hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            ranges.push((mid, hi));
            ranges.push((lo, mid));
            continue;
        }
        let (event, stored) = rows[lo];
        let text = error.to_string();
        let conflict = match error {
            // Quarantined by an earlier attempt of this very write: nothing more to do.
            WriteError::Conflict {
                tombstone: true, ..
            } => None,
            WriteError::Conflict { .. } => Some(false),
            _ => Some(true),
        };
        if let Some(tombstone) = conflict {
            match store::quarantine(
                db,
                &batch.room_id,
                event,
                stored,
                &text,
                Some(&batch.owner),
                tombstone,
            )
            .await
            {
                Ok(new) => {
                    if new {
                        METRICS.persist_quarantined.inc();
                    }
                }
                Err(e @ WriteError::Fenced { .. }) => {
                    let reason = e.to_string();
                    let row = &rows[lo..=lo];
                    return fenced_midway(db, batch, &rows, row, &mut ranges, &reason, out).await;
                }
                // The database itself is in trouble: retry the whole batch later.
                Err(WriteError::Db(e)) if store::is_transient(&e) => return Err(e.to_string()),
                // The tombstone is refused too (what refused the event refuses its seq, its
                // sender or its room): keep the event aside; the stream has a gap there, so
                // the room stops.
                Err(e) => {
                    keep_aside(db, &batch.room_id, event, stored, &text).await?;
                    if out.stop.is_none() {
                        out.stop = Some(format!(
                            "seq {} of '{event}' cannot be stored, not even as a tombstone: {e}",
                            stored.seq
                        ));
                    }
                }
            }
            log::error!(
                "room '{}': event '{event}' seq {} refused by the database and quarantined: {text}",
                batch.room_id,
                stored.seq
            );
        }
        // Another event holds that seq: the room must not go on writing.
        if conflict == Some(false) && out.stop.is_none() {
            out.stop = Some(text.clone());
        }
        out.quarantined.push(Quarantined {
            event: event.clone(),
            seq: stored.seq,
            error: text,
        });
    }
    if !batch.counters.is_empty() {
        let job = WriteJob {
            room_id: &batch.room_id,
            owner: Some(&batch.owner),
            streams: Vec::new(),
            counters: &batch.counters,
        };
        match store::write_jobs(db, &[job], lease_ms).await {
            Ok(_) => {}
            Err(WriteError::Db(e)) if store::is_transient(&e) => return Err(e.to_string()),
            Err(e) => {
                out.stop = Some(e.to_string());
                out.counters_refused = true;
            }
        }
    }
    Ok(out)
}

/// The room's lease went away in the middle of [`write_one`]: `from` and every range still to
/// do are set aside; what was written stays.
async fn fenced_midway(
    db: &DatabaseConnection,
    batch: &Batch,
    rows: &[(&Arc<str>, &Arc<StoredEvent>)],
    from: &[(&Arc<str>, &Arc<StoredEvent>)],
    ranges: &mut Vec<(usize, usize)>,
    reason: &str,
    mut out: Committed,
) -> Result<Committed, String> {
    let mut left = from.to_vec();
    for (l, h) in ranges.drain(..) {
        left.extend_from_slice(&rows[l..h]);
    }
    let aside = set_aside(db, batch, &left, reason).await?;
    out.quarantined.extend(aside.quarantined);
    out.stop = aside.stop;
    out.counters_refused = aside.counters_refused;
    Ok(out)
}

/// The stream of `event` in `batch` and the index of `seq` in it.
fn rows_index<'a>(batch: &'a Batch, event: &Arc<str>, seq: u64) -> Option<(&'a StreamRows, usize)> {
    let stream = batch.streams.iter().find(|s| &s.event == event)?;
    let first = stream.events.first()?.seq;
    Some((stream, seq.checked_sub(first)? as usize))
}

impl Actor for Persistence {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1 << 16);
        ctx.run_interval(HEALTH_CHECK_INTERVAL, |act, ctx| act.check_health(ctx));
        ctx.run_interval(self.lease_timeout / 3, |act, ctx| act.renew_leases(ctx));
        ctx.run_interval(CHECKPOINT_INTERVAL, |act, ctx| act.checkpoint(ctx));
        if self.db.is_none() {
            self.connect(ctx);
        } else {
            self.open_writer();
            self.write_next(ctx);
        }
    }
}

impl Supervised for Persistence {
    fn restarting(&mut self, _: &mut Self::Context) {
        // Keep every waiting batch; only the connection is replaced.
        for batch in self.in_flight.drain(..).rev() {
            self.pending.push_front(batch);
        }
        self.db = None;
        self.writer = None;
        self.failures = 0;
        // The old context's timers and futures are gone with it.
        self.backing_off = false;
        self.connecting = false;
        self.lingering = false;
        self.checkpointing = false;
        self.releasing = false;
    }
}

impl Handler<PersistBatch> for Persistence {
    type Result = ();

    fn handle(&mut self, msg: PersistBatch, ctx: &mut Context<Self>) {
        let rows: usize = msg.streams.iter().map(|s| s.events.len()).sum();
        let bytes: usize = msg
            .streams
            .iter()
            .flat_map(|s| s.events.iter().map(|e| e.weight()))
            .sum();
        self.health.backlog.fetch_add(rows, Ordering::Relaxed);
        self.health
            .backlog_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        METRICS.persist_backlog.set(self.backlog() as i64);
        let id = self.next_batch_id;
        self.next_batch_id += 1;
        self.pending.push_back(Batch {
            id,
            room_id: msg.room_id,
            owner: msg.owner,
            reply: msg.reply,
            streams: msg.streams,
            counters: msg.counters,
            rows,
            bytes,
            urgent: msg.urgent,
        });
        self.write_next(ctx);
    }
}

fn unavailable(e: impl std::fmt::Display) -> DialogueError {
    DialogueError::new(
        ErrorCode::StorageUnavailable,
        format!("older history cannot be read right now: {e}"),
    )
}

impl Handler<LoadRange> for Persistence {
    type Result = ResponseFuture<Result<LoadedPage, DialogueError>>;

    fn handle(&mut self, msg: LoadRange, _: &mut Context<Self>) -> Self::Result {
        // Everything evicted before this request is either waiting here or already written.
        let unwritten = self.unwritten(&msg.room_id, &msg.event, msg.lo, msg.hi);
        let wanted = (msg.hi + 1).saturating_sub(msg.lo) as usize;
        let db = self.db.clone();
        Box::pin(async move {
            let mut by_seq: BTreeMap<u64, Arc<StoredEvent>> =
                unwritten.into_iter().map(|e| (e.seq, e)).collect();
            let mut loaded_cut = false;
            if by_seq.len() < wanted {
                let db = db.ok_or_else(|| unavailable("no database connection"))?;
                let (room, event) = (&msg.room_id, &msg.event);
                // The same budget bounds what the reading holds; the cut is made below.
                let mut reading = msg.budget;
                let stored = store::load_range(&db, room, event, msg.lo, msg.hi, &mut reading)
                    .await
                    .map_err(unavailable)?;
                loaded_cut = reading.was_cut();
                for e in stored {
                    by_seq.entry(e.seq).or_insert(e);
                }
            }
            let mut budget = msg.budget;
            let events = budget.take(by_seq.values().rev());
            Ok(LoadedPage {
                events,
                cut: budget.was_cut() || loaded_cut,
            })
        })
    }
}

impl Handler<ClaimRoom> for Persistence {
    type Result = ResponseFuture<Result<RoomRestore, String>>;

    fn handle(&mut self, msg: ClaimRoom, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        let node = self.node.clone();
        let ttl = self.lease_timeout.as_millis() as i64;
        let live = self.live.clone();
        if let Ok(mut live) = live.lock() {
            live.insert(msg.owner.clone());
        }
        Box::pin(async move {
            let db = db.ok_or("no database connection")?;
            let live_here = |owner: &str| live.lock().map_or(true, |l| l.contains(owner));
            let epoch = store::claim_room(&db, &msg.room_id, &msg.owner, &node, ttl, live_here)
                .await
                .map_err(|e| format!("the database is unavailable: {e}"))??;
            let mut windows = Vec::new();
            for (event, limit, max_bytes) in msg.windows {
                let events = store::load_latest(&db, &msg.room_id, &event, limit, max_bytes)
                    .await
                    .map_err(|e| format!("cannot read '{event}' history: {e}"))?;
                let last_seq = events.first().map_or(0, |e| e.seq);
                windows.push((event, StoredWindow { events, last_seq }));
            }
            let mut counters = store::load_counters(&db, &msg.room_id)
                .await
                .map_err(|e| format!("cannot read counters: {e}"))?;
            // An event that had history before (a configuration change) counts on from its
            // stored rows.
            for event in &msg.counters {
                let stored = store::max_seq(&db, &msg.room_id, event)
                    .await
                    .map_err(|e| format!("cannot read counters: {e}"))?;
                let counter = counters.entry(event.to_string()).or_insert(0);
                *counter = (*counter).max(stored);
            }
            Ok(RoomRestore {
                epoch,
                windows,
                counters,
            })
        })
    }
}

impl Handler<ReleaseRoom> for Persistence {
    type Result = ResponseFuture<()>;

    /// Answered once everything the room sent is written (whatever restarts this actor goes
    /// through meanwhile); the lease itself is given up in the database right after.
    fn handle(&mut self, msg: ReleaseRoom, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.releases
            .push((self.next_batch_id - 1, msg.room_id, msg.owner, tx));
        self.finish_releases(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<WaitWritten> for Persistence {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: WaitWritten, ctx: &mut Context<Self>) -> Self::Result {
        let written = self.written(ctx);
        Box::pin(async move {
            if let Some(rx) = written {
                let _ = rx.await;
            }
        })
    }
}

/// Gives up every room lease of this process (a clean shutdown, after the last write).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReleaseAll;

impl Handler<ReleaseAll> for Persistence {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: ReleaseAll, _: &mut Context<Self>) -> Self::Result {
        let db = self.db.clone();
        let node = self.node.clone();
        Box::pin(async move {
            if let Some(db) = db {
                match store::release_node(&db, &node).await {
                    Ok(n) => log::debug!("released {n} room leases"),
                    Err(e) => log::warn!("releasing room leases failed: {e}"),
                }
            }
        })
    }
}

/// Writes every batch still waiting to the spill file (the database could not take them at
/// shutdown); answers how many events it holds.
#[derive(Message)]
#[rtype(result = "std::io::Result<usize>")]
pub struct Spill;

impl Handler<Spill> for Persistence {
    type Result = std::io::Result<usize>;

    fn handle(&mut self, _: Spill, _: &mut Context<Self>) -> Self::Result {
        let batches: Vec<&Batch> = self.in_flight.iter().chain(self.pending.iter()).collect();
        let mut records = Vec::new();
        for b in &batches {
            for s in &b.streams {
                records.push(spill::Record::events(
                    &b.room_id, &b.owner, &s.event, &s.events,
                ));
            }
            for c in &b.counters {
                records.push(spill::Record::counter(&b.room_id, &b.owner, c));
            }
        }
        let events = batches.iter().map(|b| b.rows).sum();
        spill::append(&self.spill_file, &records)?;
        Ok(events)
    }
}
