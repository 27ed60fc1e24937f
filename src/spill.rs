//! The spill file: where events still queued at shutdown go when the database cannot take
//! them, one JSON record per line; replayed at the next start before the service serves,
//! then removed.
//!
//! Replay is fenced like any write: a record is written only while the room instance that
//! spilled it still holds the room's lease (nobody took the room over meanwhile); otherwise
//! its events go to the quarantine table, never over another owner's seqs. Rows already
//! stored identically are skipped, so a replay cut short is simply replayed again.

use crate::actors::messages::{CounterMark, StoredEvent};
use crate::store::{self, BatchRef, WriteError, WriteJob};
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

/// One line of the spill file: a stream's events, or a counter's high-water mark.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub room_id: String,
    /// The room instance (lease owner) that accepted them.
    pub owner: String,
    pub event: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SpilledEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_water: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exact: bool,
}

/// An event as the spill file keeps it.
#[derive(Serialize, Deserialize)]
pub struct SpilledEvent {
    pub seq: u64,
    pub epoch: u64,
    pub timestamp: i64,
    pub from: String,
    pub data: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Box<RawValue>>,
}

impl Record {
    pub fn events(room_id: &str, owner: &str, event: &str, events: &[Arc<StoredEvent>]) -> Record {
        Record {
            room_id: room_id.to_owned(),
            owner: owner.to_owned(),
            event: event.to_owned(),
            events: events
                .iter()
                .map(|e| SpilledEvent {
                    seq: e.seq,
                    epoch: e.epoch,
                    timestamp: e.timestamp,
                    from: e.from.to_string(),
                    data: e.data_raw().to_owned(),
                    meta: e.meta_raw().map(ToOwned::to_owned),
                })
                .collect(),
            high_water: None,
            exact: false,
        }
    }

    pub fn counter(room_id: &str, owner: &str, mark: &CounterMark) -> Record {
        Record {
            room_id: room_id.to_owned(),
            owner: owner.to_owned(),
            event: mark.event.to_string(),
            events: Vec::new(),
            high_water: Some(mark.high_water),
            exact: mark.exact,
        }
    }
}

/// Appends records to the file (created if missing) and syncs it to disk.
pub fn append(path: &Path, records: &[Record]) -> std::io::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut out = Vec::new();
    for r in records {
        serde_json::to_writer(&mut out, r).map_err(std::io::Error::other)?;
        out.push(b'\n');
    }
    file.write_all(&out)?;
    file.sync_all()
}

/// Writes a spill file left by an earlier run into the database, then removes it. Returns
/// the events replayed (0 when there is no file). `Err` leaves the file for the next start.
pub async fn replay(db: &DatabaseConnection, path: &Path) -> Result<usize, String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut replayed = 0;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = match serde_json::from_str(&line) {
            Ok(record) => record,
            // A line cut short by a crash while writing: nothing after it is complete.
            Err(e) => {
                log::warn!(
                    "{}:{}: unreadable record ({e}); stopping there",
                    path.display(),
                    n + 1
                );
                break;
            }
        };
        replayed += replay_record(db, record).await?;
    }
    std::fs::remove_file(path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    Ok(replayed)
}

/// Writes one record under its owner's lease; `Err` is a transient database error.
async fn replay_record(db: &DatabaseConnection, mut record: Record) -> Result<usize, String> {
    let events: Vec<Arc<StoredEvent>> = std::mem::take(&mut record.events)
        .into_iter()
        .map(|e| {
            Arc::new(StoredEvent::new(
                &record.room_id,
                &record.event,
                e.seq,
                e.epoch,
                e.timestamp,
                e.from.into(),
                &*e.data,
                e.meta.as_deref(),
            ))
        })
        .collect();
    let marks: Vec<CounterMark> = record
        .high_water
        .map(|high_water| CounterMark {
            event: record.event.as_str().into(),
            high_water,
            exact: record.exact,
        })
        .into_iter()
        .collect();
    // A lease of 0 ms: the replay must not keep a gone owner's rooms held.
    match store::write_jobs(db, &[job(&record, &marks, &events)], 0).await {
        Ok(_) => return Ok(events.len()),
        Err(WriteError::Db(e)) if store::is_transient(&e) => return Err(e.to_string()),
        Err(e @ WriteError::Fenced { .. }) => {
            log::error!(
                "spilled events of room '{}' cannot be replayed: {e}; they go to the quarantine",
                record.room_id
            );
            for stored in &events {
                quarantine(db, &record, stored, &e.to_string(), false).await?;
            }
            return Ok(0);
        }
        Err(e) => log::warn!(
            "spilled events of room '{}' partly refused ({e}); writing them one by one",
            record.room_id
        ),
    }
    let mut written = 0;
    for stored in &events {
        let one = [stored.clone()];
        match store::write_jobs(db, &[job(&record, &marks, &one)], 0).await {
            Ok(_) => written += 1,
            Err(WriteError::Db(e)) if store::is_transient(&e) => return Err(e.to_string()),
            Err(e @ WriteError::Fenced { .. }) => {
                quarantine(db, &record, stored, &e.to_string(), false).await?
            }
            Err(e) => quarantine(db, &record, stored, &e.to_string(), true).await?,
        }
    }
    Ok(written)
}

/// The write of `events` of `record`, fenced by the owner that spilled them.
fn job<'a>(
    record: &'a Record,
    marks: &'a [CounterMark],
    events: &'a [Arc<StoredEvent>],
) -> WriteJob<'a> {
    WriteJob {
        room_id: &record.room_id,
        owner: Some(&record.owner),
        streams: vec![BatchRef {
            room_id: &record.room_id,
            event: &record.event,
            events,
        }],
        counters: marks,
    }
}

/// Quarantines a spilled event (with a tombstone under its seq when asked, falling back to
/// none); when the database refuses even that, the log is the last place it is kept. `Err`
/// is a transient error.
async fn quarantine(
    db: &DatabaseConnection,
    record: &Record,
    stored: &StoredEvent,
    error: &str,
    tombstone: bool,
) -> Result<(), String> {
    let attempts: &[bool] = if tombstone { &[true, false] } else { &[false] };
    let mut last = String::new();
    for &with_tombstone in attempts {
        let owner = with_tombstone.then_some(record.owner.as_str());
        let result = store::quarantine(
            db,
            &record.room_id,
            &record.event,
            stored,
            error,
            owner,
            with_tombstone,
        )
        .await;
        match result {
            Ok(_) => return Ok(()),
            Err(WriteError::Db(e)) if store::is_transient(&e) => return Err(e.to_string()),
            Err(e) => last = e.to_string(),
        }
    }
    log::error!(
        "spilled event of room '{}' refused by the database ({error}) and by its quarantine \
         ({last}); it is kept only here: {}",
        record.room_id,
        stored.json
    );
    Ok(())
}
