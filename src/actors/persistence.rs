//! The persistence actor (supervised): owns the database connection, writes the batches rooms
//! evict, and answers history reads that reach past a room's in-memory window.
//!
//! Batches wait in memory until written and are served to readers meanwhile. Writes coalesce
//! whatever is waiting into one transaction. A failed write is retried with backoff; after
//! repeated failures the actor stops and its `Supervisor` restarts it with a fresh connection,
//! keeping every waiting batch. Rooms refuse new history-enabled triggers only once the
//! backlog reaches its bound.

use crate::actors::messages::*;
use crate::error::{DialogueError, ErrorCode};
use crate::metrics::METRICS;
use crate::store::{self, BatchRef};
use actix::prelude::*;
use sea_orm::DatabaseConnection;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most events written in one transaction.
const MAX_EVENTS_PER_WRITE: usize = 20_000;
/// Fewer events than this wait up to [`LINGER`] for company before they are written: at a
/// low rate every transaction would carry one event, and a transaction costs far more than
/// a row. They stay readable meanwhile, and a graceful shutdown writes them at once.
const LINGER_EVENTS: usize = 256;
const LINGER: Duration = Duration::from_millis(20);
/// Consecutive failures after which the actor restarts with a new connection.
const FAILURES_BEFORE_RESTART: u32 = 6;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often an idle store checks that the database still answers (for `/readyz`).
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// One evicted batch waiting to be written.
#[derive(Clone)]
struct Batch {
    /// Position in arrival order; batches are written in this order.
    id: u64,
    room_id: Arc<str>,
    event: Arc<str>,
    events: Vec<Arc<StoredEvent>>,
}

/// Health of the store, shared with readiness checks.
#[derive(Debug, Default)]
pub struct StoreHealth {
    /// The last write or connection attempt succeeded.
    pub available: AtomicBool,
    /// Events waiting to be written.
    pub backlog: Arc<AtomicUsize>,
    /// Rooms still restoring their history windows (they answer nothing until done).
    pub restoring: Arc<AtomicUsize>,
}

/// The persistence actor.
pub struct Persistence {
    url: String,
    db: Option<DatabaseConnection>,
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
}

impl Persistence {
    /// Starts the supervised actor on its own arbiter with an open connection.
    pub fn start(
        url: String,
        db: DatabaseConnection,
        max_backlog: usize,
        arbiter: &ArbiterHandle,
    ) -> (Addr<Persistence>, PersistenceLink, Arc<StoreHealth>) {
        let health = Arc::new(StoreHealth::default());
        health.available.store(true, Ordering::Relaxed);
        let actor_health = health.clone();
        let addr = Supervisor::start_in_arbiter(arbiter, move |_| Persistence {
            url,
            db: Some(db),
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
        });
        let link = PersistenceLink {
            evicted: addr.clone().recipient(),
            load: addr.clone().recipient(),
            window: addr.clone().recipient(),
            written: addr.clone().recipient(),
            backlog: health.backlog.clone(),
            max_backlog,
            restoring: health.restoring.clone(),
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
        let waiting: usize = self.pending.iter().map(|b| b.events.len()).sum();
        if waiting < LINGER_EVENTS && self.waiters.is_empty() {
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
            if events > 0 && events + batch.events.len() > MAX_EVENTS_PER_WRITE {
                break;
            }
            events += batch.events.len();
            if let Some(batch) = self.pending.pop_front() {
                self.in_flight.push(batch);
            }
        }
        // The batches are shared with the write future; readers keep seeing them meanwhile.
        let jobs = self.in_flight.clone();
        let write = async move {
            let refs: Vec<BatchRef<'_>> = jobs
                .iter()
                .map(|b| BatchRef {
                    room_id: &b.room_id,
                    event: &b.event,
                    events: &b.events,
                })
                .collect();
            store::insert_batches(&db, &refs).await
        };
        ctx.spawn(write.into_actor(self).map(move |result, act, ctx| {
            match result {
                Ok(inserted) => {
                    let done: usize = act.in_flight.iter().map(|b| b.events.len()).sum();
                    if let Some(last) = act.in_flight.last() {
                        act.written_upto = last.id;
                    }
                    act.in_flight.clear();
                    act.health.backlog.fetch_sub(done, Ordering::Relaxed);
                    METRICS.persist_batches.inc();
                    METRICS.persist_rows.inc_by(inserted);
                    METRICS.persist_backlog.set(act.backlog() as i64);
                    log::debug!("persisted {inserted} of {done} evicted events");
                    act.succeeded();
                    act.wake_waiters();
                }
                Err(e) => {
                    // Put the batches back in front, in order, and retry later.
                    for batch in act.in_flight.drain(..).rev() {
                        act.pending.push_front(batch);
                    }
                    act.failed(ctx, &format!("writing history failed: {e}"));
                    return;
                }
            }
            act.write_next(ctx);
        }));
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
                            act.succeeded();
                            act.write_next(ctx);
                        }
                        Err(e) => act.failed(ctx, &format!("connecting failed: {e}")),
                    }
                }),
        );
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
            .filter(|b| &*b.room_id == room_id && &*b.event == event)
            .flat_map(|b| b.events.iter())
            .filter(|e| e.seq >= lo && e.seq <= hi)
            .cloned()
            .collect()
    }
}

impl Actor for Persistence {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1 << 16);
        ctx.run_interval(HEALTH_CHECK_INTERVAL, |act, ctx| act.check_health(ctx));
        if self.db.is_none() {
            self.connect(ctx);
        } else {
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
        self.failures = 0;
        self.backing_off = false;
        self.connecting = false;
    }
}

impl Handler<EvictedBatch> for Persistence {
    type Result = ();

    fn handle(&mut self, msg: EvictedBatch, ctx: &mut Context<Self>) {
        if msg.events.is_empty() {
            return;
        }
        self.health
            .backlog
            .fetch_add(msg.events.len(), Ordering::Relaxed);
        METRICS.persist_backlog.set(self.backlog() as i64);
        let id = self.next_batch_id;
        self.next_batch_id += 1;
        self.pending.push_back(Batch {
            id,
            room_id: msg.room_id,
            event: msg.event,
            events: msg.events,
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
    type Result = ResponseFuture<Result<Vec<Arc<StoredEvent>>, DialogueError>>;

    fn handle(&mut self, msg: LoadRange, _: &mut Context<Self>) -> Self::Result {
        // Everything evicted before this request is either waiting here or already written.
        let unwritten = self.unwritten(&msg.room_id, &msg.event, msg.lo, msg.hi);
        let wanted = (msg.hi + 1).saturating_sub(msg.lo) as usize;
        let db = self.db.clone();
        Box::pin(async move {
            let mut by_seq: BTreeMap<u64, Arc<StoredEvent>> =
                unwritten.into_iter().map(|e| (e.seq, e)).collect();
            if by_seq.len() < wanted {
                let db = db.ok_or_else(|| unavailable("no database connection"))?;
                let stored = store::load_range(&db, &msg.room_id, &msg.event, msg.lo, msg.hi)
                    .await
                    .map_err(unavailable)?;
                for e in stored {
                    by_seq.entry(e.seq).or_insert(e);
                }
            }
            Ok(by_seq.into_values().rev().collect())
        })
    }
}

impl Handler<LoadWindow> for Persistence {
    type Result = ResponseFuture<Result<StoredWindow, DialogueError>>;

    fn handle(&mut self, msg: LoadWindow, _: &mut Context<Self>) -> Self::Result {
        let unwritten = self.unwritten(&msg.room_id, &msg.event, 1, u64::MAX);
        let db = self.db.clone();
        Box::pin(async move {
            let db = db.ok_or_else(|| unavailable("no database connection"))?;
            let stored = store::load_latest(&db, &msg.room_id, &msg.event, msg.limit)
                .await
                .map_err(unavailable)?;
            let mut by_seq: BTreeMap<u64, Arc<StoredEvent>> =
                stored.into_iter().map(|e| (e.seq, e)).collect();
            for e in unwritten {
                by_seq.insert(e.seq, e);
            }
            let last_seq = by_seq.keys().next_back().copied().unwrap_or(0);
            let events = by_seq
                .into_values()
                .rev()
                .take(msg.limit as usize)
                .collect();
            Ok(StoredWindow { events, last_seq })
        })
    }
}

impl Handler<WaitWritten> for Persistence {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: WaitWritten, ctx: &mut Context<Self>) -> Self::Result {
        let target = self.next_batch_id - 1;
        if target <= self.written_upto {
            return Box::pin(async {});
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push((target, tx));
        self.write_next(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
