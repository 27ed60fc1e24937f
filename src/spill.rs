//! The spill file: where events still queued at shutdown go when the database cannot take
//! them, one JSON record per line; replayed (idempotently) at the next start before the
//! service serves, then removed.

use crate::actors::messages::StoredEvent;
use crate::store::{self, BatchRef};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

/// One line of the spill file: a stream's events, or a counter's high-water mark.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub room_id: String,
    pub event: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SpilledEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_water: Option<u64>,
}

/// An event as the spill file keeps it.
#[derive(Serialize, Deserialize)]
pub struct SpilledEvent {
    pub seq: u64,
    pub epoch: u64,
    pub timestamp: i64,
    pub from: String,
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
}

impl Record {
    pub fn events(room_id: &str, event: &str, events: &[Arc<StoredEvent>]) -> Record {
        Record {
            room_id: room_id.to_owned(),
            event: event.to_owned(),
            events: events
                .iter()
                .map(|e| SpilledEvent {
                    seq: e.seq,
                    epoch: e.epoch,
                    timestamp: e.timestamp,
                    from: e.from.to_string(),
                    data: e.data.clone(),
                    meta: e.meta.clone(),
                })
                .collect(),
            high_water: None,
        }
    }

    pub fn counter(room_id: &str, event: &str, high_water: u64) -> Record {
        Record {
            room_id: room_id.to_owned(),
            event: event.to_owned(),
            events: Vec::new(),
            high_water: Some(high_water),
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

/// Writes a spill file left by an earlier run into the database, then removes it. Rows
/// already stored identically are skipped; returns the events replayed (0 when there is no
/// file).
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
        if let Some(high_water) = record.high_water {
            let backend = db.get_database_backend();
            let sql = "INSERT INTO event_counters (room_id, event_name, high_water) VALUES ($1, $2, $3) \
                       ON CONFLICT (room_id, event_name) DO UPDATE SET high_water = excluded.high_water";
            let sql = if backend == DbBackend::Sqlite {
                sql.replace('$', "?")
            } else {
                sql.to_owned()
            };
            let values = vec![
                record.room_id.clone().into(),
                record.event.clone().into(),
                (high_water as i64).into(),
            ];
            db.execute_raw(Statement::from_sql_and_values(backend, sql, values))
                .await
                .map_err(|e| e.to_string())?;
        }
        let events: Vec<Arc<StoredEvent>> = record
            .events
            .into_iter()
            .map(|e| {
                Arc::new(StoredEvent::new(
                    &record.room_id,
                    &record.event,
                    e.seq,
                    e.epoch,
                    e.timestamp,
                    e.from.into(),
                    e.data,
                    e.meta,
                ))
            })
            .collect();
        let batch = BatchRef {
            room_id: &record.room_id,
            event: &record.event,
            events: &events,
        };
        match store::insert_batches(db, &[batch]).await {
            Ok(_) => replayed += events.len(),
            Err(store::WriteError::Db(e)) if store::is_transient(&e) => return Err(e.to_string()),
            Err(e) => {
                // Refused rows go to the quarantine, never lost.
                for stored in &events {
                    let one = [stored.clone()];
                    let single = BatchRef {
                        room_id: &record.room_id,
                        event: &record.event,
                        events: &one,
                    };
                    if let Err(e) = store::insert_batches(db, &[single]).await {
                        store::quarantine(
                            db,
                            &record.room_id,
                            &record.event,
                            stored,
                            &e.to_string(),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    }
                }
                log::warn!(
                    "spilled events of room '{}' partly refused: {e}",
                    record.room_id
                );
                replayed += events.len();
            }
        }
    }
    std::fs::remove_file(path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    Ok(replayed)
}
