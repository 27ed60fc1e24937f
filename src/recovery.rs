//! Socket.IO connection-state recovery: a stock client (socket.io-client ≥ 4.6) that loses its
//! connection gets its session back — identity, rooms, subscriptions — and every event it
//! missed, even after the server restarted or crashed.
//!
//! - The CONNECT answer carries a `pid`, the session's secret: the time it was made, then 208
//!   random bits. Only that time and its SHA-256 are stored ([`pid_hash`], `sessions` table),
//!   with the user id it is bound to.
//! - Every `dialogue:event` of an event type with history carries an **offset** as its last
//!   argument: the positions ([`Offsets`]) of every (room, event) stream this session has
//!   been sent, as of that event. The client keeps the last one it processed, so the offset
//!   it sends back with its `pid` says exactly what it has, whatever the server forgot.
//! - The session's rooms ([`SessionState`]) are saved before a join, leave or subscription
//!   change is acknowledged, with each room's positions at the join (`base`): events up to
//!   them came with the join history.
//! - On recovery each room is joined again and replays what follows `max(base, offset)`,
//!   exactly as a native resume (`dialogue:join {since}`) does.

use crate::actors::messages::{ConnId, ToConnection};
use crate::config::RecoveryConfig;
use crate::store::{self, SessionWrite};
use actix::Recipient;
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How often expired sessions are deleted and the session count bounded.
const TIDY_INTERVAL: Duration = Duration::from_secs(60);
/// Longest a join, leave or subscription change waits for its session to be saved; a
/// session not saved by then stops being recoverable (the change itself stands).
const SAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Writes waiting while the database is away beyond which new ones are dropped.
const MAX_WAITING_WRITES: usize = 100_000;
/// Longest offset a client may send back (bytes).
const MAX_OFFSET_LEN: usize = 16 * 1024;
/// A write that comes within [`BURST`] of the last one (connections arriving by the
/// thousand, each join saving its session) first lets the threads waiting for its core run
/// (`sched_yield`), so that the saves they make meanwhile share its transaction. On a busy
/// core that is a slice of the scheduler's, about the time the rooms' thread takes to answer
/// the next handshakes; on an idle core it is nothing, and the save is written at once. A
/// timer (1 ms, the least tokio's sleeps) held every join of a burst back longer than the
/// write itself takes: 64 clients connecting at a time opened 9 % fewer connections a second.
/// A lone save never waits.
const BURST: Duration = Duration::from_millis(5);

/// Which of a room's events a member receives, as saved with its session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SubscriptionSpec {
    All,
    Only(Vec<String>),
    AllExcept(Vec<String>),
}

/// One room of a saved session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRoom {
    /// The room's number within the session (offsets name rooms by it).
    pub slot: u32,
    pub room: String,
    pub subscriptions: SubscriptionSpec,
    /// Per event with history: the seq the member had when it joined (or subscribed);
    /// nothing up to it is owed by a recovery.
    pub base: BTreeMap<String, u64>,
    /// The room's epoch when joined: after an unclean stop, `accepted` positions beyond what
    /// the store kept are not replayed from (the room is joined afresh).
    #[serde(default)]
    pub epoch: u64,
}

/// What a session keeps in the database.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionState {
    /// The Socket.IO socket id (`socket.id`): a recovered session keeps it, as in Socket.IO.
    #[serde(default)]
    pub socket_id: Option<String>,
    pub rooms: Vec<SessionRoom>,
    /// The slot the next joined room gets.
    pub next_slot: u32,
}

impl SessionState {
    pub fn room(&self, room_id: &str) -> Option<&SessionRoom> {
        self.rooms.iter().find(|r| r.room == room_id)
    }

    pub fn room_mut(&mut self, room_id: &str) -> Option<&mut SessionRoom> {
        self.rooms.iter_mut().find(|r| r.room == room_id)
    }

    /// Removes a room; answers its slot.
    pub fn remove(&mut self, room_id: &str) -> Option<u32> {
        let at = self.rooms.iter().position(|r| r.room == room_id)?;
        Some(self.rooms.remove(at).slot)
    }
}

/// A new session secret, 64 hex digits: the time it was made (milliseconds since the epoch,
/// 12 digits), then 208 bits from the thread's generator (seeded by the OS). The time comes
/// first so that [`pid_hash`] does too.
pub fn new_pid() -> String {
    let ms = now_ms() as u64 & 0xffff_ffff_ffff;
    let mut pid = format!("{ms:012x}");
    for byte in rand::random::<[u8; 26]>() {
        let _ = write!(pid, "{byte:02x}");
    }
    pid
}

/// SHA-256 of `text`, hex.
fn sha256_hex(text: &str) -> String {
    let mut out = String::with_capacity(64);
    for byte in Sha256::digest(text.as_bytes()) {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// What the database keys a session by (the pid itself is never stored): the pid's first 12
/// digits, its time, then SHA-256 of the pid, cut to 64 digits in all. Sessions saved over
/// time go to the end of the key's index instead of onto scattered pages: a quarter of the
/// log pages per save.
pub fn pid_hash(pid: &str) -> String {
    let time = pid.get(..12).unwrap_or(pid);
    let mut key = sha256_hex(pid);
    key.replace_range(..time.len(), time);
    key
}

/// The key sessions were saved under before [`pid_hash`] put the time first: SHA-256 of the
/// pid. Looked up when the other key is not found, so that sessions an older version saved
/// still recover (for `maxDisconnectionDuration` after an upgrade).
pub fn legacy_pid_hash(pid: &str) -> String {
    sha256_hex(pid)
}

/// Whether `pid` has the shape [`new_pid`] gives (anything else is not looked up).
pub fn is_pid(pid: &str) -> bool {
    pid.len() == 64 && pid.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Positions per room slot, then per event: what an offset says.
pub type Positions = BTreeMap<u32, BTreeMap<String, u64>>;

/// One (room slot, event) a session is sent events of.
#[derive(Debug)]
struct Stream {
    slot: u32,
    name: String,
    /// `slot.name.` of the text form, built once.
    prefix: String,
    seq: u64,
}

/// A session's positions, per room slot and event: what its offsets say.
///
/// Text form: `slot.event.seq` entries joined by `~`, in (slot, event) order, the event name
/// percent-encoded outside `[A-Za-z0-9_-]` (so the offset is plain ASCII that needs no JSON
/// escaping). It is rebuilt into one buffer at every event: a few streams, a few bytes each.
#[derive(Debug, Default)]
pub struct Offsets {
    /// Sorted by (slot, name); at most `max_streams`.
    streams: Vec<Stream>,
    max_streams: usize,
    /// Too many streams: no more offsets, the session is not recoverable.
    off: bool,
    /// The text form as of the last [`Offsets::advance`].
    text: String,
}

/// What [`Offsets::advance`] says to send.
pub enum Advance<'a> {
    /// Append this offset.
    Offset(&'a str),
    /// No offset: recovery is off for this session (`now`: it just went off).
    Off { now: bool },
}

impl Offsets {
    pub fn new(max_streams: usize) -> Self {
        Offsets {
            max_streams,
            ..Offsets::default()
        }
    }

    /// Starts from the positions a recovering client sent back; `None` if they name more
    /// than `max_streams` streams (no offset the server sent could).
    pub fn seeded(max_streams: usize, positions: Positions) -> Option<Self> {
        let mut offsets = Offsets::new(max_streams);
        for (slot, events) in positions {
            for (name, seq) in events {
                if offsets.streams.len() >= max_streams {
                    return None;
                }
                offsets.streams.push(Stream::new(slot, name, seq));
            }
        }
        Some(offsets)
    }

    /// The positions of room `slot`: (event, seq).
    pub fn of_slot(&self, slot: u32) -> impl Iterator<Item = (&str, u64)> {
        self.streams
            .iter()
            .filter(move |s| s.slot == slot)
            .map(|s| (s.name.as_str(), s.seq))
    }

    /// Records that `event` `seq` of room `slot` is being sent; answers the offset it carries.
    pub fn advance(&mut self, slot: u32, event: &str, seq: u64) -> Advance<'_> {
        if self.off {
            return Advance::Off { now: false };
        }
        let at = self
            .streams
            .binary_search_by(|s| (s.slot, s.name.as_str()).cmp(&(slot, event)));
        match at {
            Ok(i) => self.streams[i].seq = self.streams[i].seq.max(seq),
            Err(i) => {
                if self.streams.len() >= self.max_streams {
                    self.turn_off();
                    return Advance::Off { now: true };
                }
                self.streams
                    .insert(i, Stream::new(slot, event.to_owned(), seq));
            }
        }
        self.text.clear();
        let mut digits = itoa::Buffer::new();
        for (i, stream) in self.streams.iter().enumerate() {
            if i > 0 {
                self.text.push('~');
            }
            self.text.push_str(&stream.prefix);
            self.text.push_str(digits.format(stream.seq));
        }
        Advance::Offset(&self.text)
    }

    /// Forgets a room the session left (or that restarts from its join history).
    pub fn forget(&mut self, slot: u32) {
        self.streams.retain(|s| s.slot != slot);
    }

    pub fn is_off(&self) -> bool {
        self.off
    }

    /// No more offsets (the session stopped being recoverable).
    pub fn turn_off(&mut self) {
        self.off = true;
        self.streams = Vec::new();
        self.text = String::new();
    }

    /// Reads the text form back; `None` if it is not one.
    pub fn parse(text: &str) -> Option<Positions> {
        let mut out = Positions::new();
        if text.len() > MAX_OFFSET_LEN {
            return None;
        }
        if text.is_empty() {
            return Some(out);
        }
        for entry in text.split('~') {
            let mut parts = entry.split('.');
            let (Some(slot), Some(name), Some(seq), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            let slot: u32 = slot.parse().ok()?;
            let seq: u64 = seq.parse().ok()?;
            let mut bytes = Vec::with_capacity(name.len());
            let mut raw = name.bytes();
            while let Some(b) = raw.next() {
                if b == b'%' {
                    let hex = [raw.next()?, raw.next()?];
                    bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
                } else {
                    bytes.push(b);
                }
            }
            let name = String::from_utf8(bytes).ok()?;
            out.entry(slot).or_default().insert(name, seq);
        }
        Some(out)
    }
}

impl Stream {
    fn new(slot: u32, name: String, seq: u64) -> Self {
        let mut prefix = format!("{slot}.");
        for byte in name.bytes() {
            if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
                prefix.push(byte as char);
            } else {
                let _ = write!(prefix, "%{byte:02X}");
            }
        }
        prefix.push('.');
        Stream {
            slot,
            name,
            prefix,
            seq,
        }
    }
}

/// `42["dialogue:event",{…}]` with `,"<offset>"` inserted before the closing bracket.
pub fn with_offset(frame: &str, offset: &str) -> String {
    let body = frame.strip_suffix(']').unwrap_or(frame);
    let mut out = String::with_capacity(body.len() + offset.len() + 4);
    out.push_str(body);
    out.push_str(",\"");
    out.push_str(offset);
    out.push_str("\"]");
    out
}

/// A session found by its pid.
pub struct StoredSession {
    /// The key it is saved under: its pid's [`pid_hash`], or [`legacy_pid_hash`].
    pub pid_hash: String,
    pub user_id: String,
    pub state: SessionState,
    /// When its connection ended (ms since the epoch); `None` while a connection holds it.
    pub disconnected_at: Option<i64>,
}

enum Op {
    Write(SessionWrite, Option<oneshot::Sender<()>>),
}

/// The connection holding each live session, so that a recovering client takes it over.
type Holders = HashMap<String, (ConnId, Recipient<ToConnection>)>;

/// The session store: saves and loads sessions, writing whatever is waiting in one
/// transaction (group commit), and deletes expired ones.
#[derive(Clone)]
pub struct SessionStore {
    tx: mpsc::UnboundedSender<Op>,
    /// The last write succeeded: while it did not, saves fail at once instead of waiting.
    available: Arc<AtomicBool>,
    /// Writes sent and not yet done.
    waiting: Arc<AtomicUsize>,
    db: DatabaseConnection,
    pub config: RecoveryConfig,
    holders: Arc<Mutex<Holders>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl SessionStore {
    /// Opens the store: sessions the previous run left connected count as disconnected from
    /// now (a crash ends no session early); expired ones are deleted. Writes are made on
    /// `writer_thread`, on SQLite through a connection of their own ([`store::SqliteWriter`],
    /// opened from `url`) when they fit one statement.
    pub async fn start(
        db: DatabaseConnection,
        url: &str,
        config: RecoveryConfig,
        writer_thread: &actix_rt::ArbiterHandle,
    ) -> Result<SessionStore, sea_orm::DbErr> {
        let max_age = config.max_disconnection_duration as i64;
        let now = now_ms();
        let kept = store::tidy_sessions(&db, Some(now), now - max_age, config.max_sessions).await?;
        if kept > 0 {
            log::info!("{kept} sessions are recoverable for {max_age} ms");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let available = Arc::new(AtomicBool::new(true));
        let waiting = Arc::new(AtomicUsize::new(0));
        writer_thread.spawn(write_loop(
            db.clone(),
            url.to_owned(),
            rx,
            available.clone(),
            waiting.clone(),
        ));
        let tidy_db = db.clone();
        let max = config.max_sessions;
        actix_rt::spawn(async move {
            loop {
                tokio::time::sleep(TIDY_INTERVAL).await;
                let now = now_ms();
                if let Err(e) = store::tidy_sessions(&tidy_db, None, now - max_age, max).await {
                    log::warn!("cannot delete expired sessions: {e}");
                }
            }
        });
        Ok(SessionStore {
            tx,
            available,
            waiting,
            db,
            config,
            holders: Arc::default(),
        })
    }

    /// Saves a connected session; resolves once it is in the database, or with an error
    /// after [`SAVE_TIMEOUT`] (at once while the database is known to be away). The write
    /// itself stays queued until the database takes it.
    pub fn save(
        &self,
        pid_hash: &str,
        user_id: &str,
        state: &SessionState,
    ) -> impl std::future::Future<Output = Result<(), String>> + 'static {
        let (done, answer) = oneshot::channel();
        let write = SessionWrite::Save {
            pid_hash: pid_hash.to_owned(),
            user_id: user_id.to_owned(),
            state: serde_json::to_string(state).unwrap_or_default(),
        };
        let sent = self.send(write, Some(done));
        let available = self.available.load(Ordering::Relaxed);
        async move {
            match sent {
                Err(e) => Err(e),
                Ok(()) if !available => Err("the database is not available".to_owned()),
                Ok(()) => match tokio::time::timeout(SAVE_TIMEOUT, answer).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err("the session store stopped".to_owned()),
                    Err(_) => Err(format!(
                        "the database did not take it within {} ms",
                        SAVE_TIMEOUT.as_millis()
                    )),
                },
            }
        }
    }

    fn send(&self, write: SessionWrite, done: Option<oneshot::Sender<()>>) -> Result<(), String> {
        // Saves are refused beyond the bound; the small writes that end or expire a session
        // never are (a session must not stay recoverable because its end was dropped).
        let save = matches!(write, SessionWrite::Save { .. });
        if save && self.waiting.load(Ordering::Relaxed) >= MAX_WAITING_WRITES {
            return Err("too many session writes wait for the database".to_owned());
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Op::Write(write, done))
            .map_err(|_| "the session store is not running".to_owned())
    }

    /// The session's connection ended: it stays recoverable for `maxDisconnectionDuration`.
    pub fn disconnected(&self, pid_hash: &str) {
        let write = SessionWrite::Disconnected {
            pid_hash: pid_hash.to_owned(),
            at_ms: now_ms(),
        };
        let _ = self.send(write, None);
    }

    /// A connection holds the session again (a recovery): it does not expire meanwhile.
    pub fn connected(&self, pid_hash: &str) {
        let write = SessionWrite::Connected {
            pid_hash: pid_hash.to_owned(),
        };
        let _ = self.send(write, None);
    }

    /// The session ended for good (the client disconnected on purpose).
    pub fn delete(&self, pid_hash: &str) {
        let write = SessionWrite::Delete {
            pid_hash: pid_hash.to_owned(),
        };
        let _ = self.send(write, None);
    }

    /// The session of `pid` if it is still recoverable, with the key it is saved under; an
    /// error when the database is away or does not answer within [`SAVE_TIMEOUT`].
    pub async fn load(&self, pid: &str) -> Result<Option<StoredSession>, String> {
        if !self.available.load(Ordering::Relaxed) {
            return Err("the database is not available".to_owned());
        }
        let find = async {
            for key in [pid_hash(pid), legacy_pid_hash(pid)] {
                if let Some(found) = store::load_session(&self.db, &key).await? {
                    return Ok::<_, sea_orm::DbErr>(Some((key, found)));
                }
            }
            Ok(None)
        };
        let loaded = tokio::time::timeout(SAVE_TIMEOUT, find)
            .await
            .map_err(|_| "the database did not answer in time".to_owned())?;
        let Some((pid_hash, (user_id, state, disconnected_at))) =
            loaded.map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let max_age = self.config.max_disconnection_duration as i64;
        if disconnected_at.is_some_and(|at| now_ms() - at > max_age) {
            return Ok(None);
        }
        let state = serde_json::from_str(&state).map_err(|e| e.to_string())?;
        Ok(Some(StoredSession {
            pid_hash,
            user_id,
            state,
            disconnected_at,
        }))
    }

    /// `conn` holds the session now; answers the connection that held it before, if any.
    pub fn hold(
        &self,
        pid_hash: &str,
        conn: ConnId,
        to: Recipient<ToConnection>,
    ) -> Option<Recipient<ToConnection>> {
        let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        holders
            .insert(pid_hash.to_owned(), (conn, to))
            .filter(|(old, _)| *old != conn)
            .map(|(_, to)| to)
    }

    /// `conn` lets the session go; false if another connection took it over meanwhile.
    pub fn release(&self, pid_hash: &str, conn: ConnId) -> bool {
        let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        match holders.get(pid_hash) {
            Some((holder, _)) if *holder == conn => {
                holders.remove(pid_hash);
                true
            }
            _ => false,
        }
    }

    /// Whether `conn` still holds the session.
    pub fn holds(&self, pid_hash: &str, conn: ConnId) -> bool {
        let holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        holders.get(pid_hash).is_some_and(|(c, _)| *c == conn)
    }
}

/// Writes what is waiting, in one transaction per round; a round that fails is tried again
/// (with what came meanwhile) until the database takes it, in order.
async fn write_loop(
    db: DatabaseConnection,
    url: String,
    mut rx: mpsc::UnboundedReceiver<Op>,
    available: Arc<AtomicBool>,
    waiting: Arc<AtomicUsize>,
) {
    let mut writer = match store::SqliteWriter::open(&url) {
        Some(Ok(writer)) => Some(writer),
        Some(Err(e)) => {
            log::warn!("the session store's SQLite connection did not open ({e}); using the pool");
            None
        }
        None => None,
    };
    let mut writes = Vec::new();
    let mut waiters = Vec::new();
    let mut delay = Duration::from_millis(50);
    let mut last_write: Option<Instant> = None;
    loop {
        if writes.is_empty() {
            match rx.recv().await {
                Some(Op::Write(write, waiter)) => {
                    writes.push(write);
                    waiters.extend(waiter);
                }
                None => return,
            }
            if last_write.is_some_and(|at| at.elapsed() < BURST) {
                // This thread is the store's own: the yield holds up nothing but its writes.
                std::thread::yield_now();
            }
        }
        while let Ok(Op::Write(write, waiter)) = rx.try_recv() {
            writes.push(write);
            waiters.extend(waiter);
        }
        // While the database is away, only what the last save of a session leaves matters.
        let before = writes.len();
        store::drop_superseded(&mut writes);
        waiting.fetch_sub(before - writes.len(), Ordering::Relaxed);
        let written = store::write_sessions_via(writer.as_mut(), &db, &writes, now_ms()).await;
        last_write = Some(Instant::now());
        match written {
            Ok(()) => {
                if !available.swap(true, Ordering::Relaxed) {
                    log::info!("sessions are saved again");
                }
                waiting.fetch_sub(writes.len(), Ordering::Relaxed);
                writes.clear();
                for waiter in waiters.drain(..) {
                    let _ = waiter.send(());
                }
                delay = Duration::from_millis(50);
            }
            Err(e) => {
                if available.swap(false, Ordering::Relaxed) {
                    log::warn!("cannot save sessions (retrying): {e}");
                }
                // Nobody waits for long: their saves have timed out.
                waiters.retain(|w| !w.is_closed());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_escape() {
        let mut o = Offsets::new(8);
        assert!(matches!(o.advance(0, "message", 41), Advance::Offset(_)));
        assert!(matches!(o.advance(2, "a.b~c%d é", 7), Advance::Offset(_)));
        let Advance::Offset(text) = o.advance(0, "message", 42) else {
            panic!()
        };
        assert_eq!(text, "0.message.42~2.a%2Eb%7Ec%25d%20%C3%A9.7");
        let parsed = Offsets::parse(text).unwrap();
        assert_eq!(parsed[&0]["message"], 42);
        assert_eq!(parsed[&2]["a.b~c%d é"], 7);
        assert_eq!(Offsets::parse("").unwrap().len(), 0);
        for bad in [
            "x", "0.a", "0.a.b", "0.a.1.2", "-1.a.1", "0.%zz.1", "0.%C3.1",
        ] {
            assert!(Offsets::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn offsets_turn_off_beyond_max_streams() {
        let mut o = Offsets::new(2);
        assert!(matches!(o.advance(0, "a", 1), Advance::Offset(_)));
        assert!(matches!(o.advance(1, "a", 1), Advance::Offset(_)));
        assert!(matches!(o.advance(0, "a", 2), Advance::Offset(_)));
        assert!(matches!(o.advance(0, "b", 1), Advance::Off { now: true }));
        assert!(matches!(o.advance(0, "a", 3), Advance::Off { now: false }));
        assert!(o.is_off());
    }

    #[test]
    fn forgetting_a_room_frees_its_streams() {
        let mut o = Offsets::new(2);
        o.advance(0, "a", 1);
        o.advance(0, "b", 1);
        o.forget(0);
        assert!(matches!(o.advance(1, "a", 5), Advance::Offset(t) if t == "1.a.5"));
    }

    /// A pid starts with the time it was made, and so does its key: sessions saved later sort
    /// after those saved earlier. The key sessions had before is the second one looked up.
    #[test]
    fn session_keys_start_with_the_pids_time() {
        let first = new_pid();
        std::thread::sleep(Duration::from_millis(2));
        let second = new_pid();
        assert!(pid_hash(&first) < pid_hash(&second));
        let made = u64::from_str_radix(&first[..12], 16).unwrap();
        assert!(made.abs_diff(now_ms() as u64) < 60_000, "{first}");
        let (key, legacy) = (pid_hash(&first), legacy_pid_hash(&first));
        assert_eq!(key[..12], first[..12]);
        assert_eq!(key[12..], legacy[12..]);
        assert_eq!((key.len(), legacy.len()), (64, 64));
    }

    /// A session an older version saved under its pid's plain SHA-256 still recovers, under
    /// that key; one saved under the new key is found first.
    #[actix_rt::test]
    async fn sessions_saved_under_either_key_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("k.db").display());
        let db = store::connect(&url).await.unwrap();
        let store = SessionStore::start(
            db.clone(),
            &url,
            RecoveryConfig::default(),
            &actix_rt::Arbiter::current(),
        )
        .await
        .unwrap();
        let (old, new) = (new_pid(), new_pid());
        let state = serde_json::to_string(&SessionState::default()).unwrap();
        let save = |key: String, user: &str| SessionWrite::Save {
            pid_hash: key,
            user_id: user.into(),
            state: state.clone(),
        };
        let writes = [
            save(legacy_pid_hash(&old), "old"),
            save(pid_hash(&new), "new"),
        ];
        store::write_sessions(&db, &writes, now_ms()).await.unwrap();
        let found = store.load(&old).await.unwrap().unwrap();
        assert_eq!(
            (found.user_id.as_str(), found.pid_hash),
            ("old", legacy_pid_hash(&old))
        );
        let found = store.load(&new).await.unwrap().unwrap();
        assert_eq!(
            (found.user_id.as_str(), found.pid_hash),
            ("new", pid_hash(&new))
        );
        assert!(store.load(&new_pid()).await.unwrap().is_none());
    }

    #[test]
    fn pids_are_long_hex_and_hashed() {
        let pid = new_pid();
        assert!(is_pid(&pid));
        assert_ne!(pid, new_pid());
        assert_eq!(pid_hash(&pid).len(), 64);
        assert_ne!(pid_hash(&pid), pid);
        assert!(!is_pid("abc"));
    }

    #[test]
    fn offsets_go_before_the_closing_bracket() {
        assert_eq!(
            with_offset(r#"42["dialogue:event",{"a":1}]"#, "0.m.1"),
            r#"42["dialogue:event",{"a":1},"0.m.1"]"#
        );
    }
}
