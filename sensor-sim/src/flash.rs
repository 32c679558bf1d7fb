//! A sensor's persisted state ("flash"): its OSCORE context, its durable sequence lease, its
//! firmware slots, its outage backlog and drop counter (TR 103 621 6.53), and its local log of
//! measurements (what the physical interface shows), so a simulated sensor survives restarts
//! without re-pairing or losing buffered data. One redb file holds a whole fleet; each write is
//! one fsync'd transaction.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::Path;

use protocol::oscore::{ContextParams, Kid};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::model::{Model, Sample};

const SENSORS: TableDefinition<u32, &[u8]> = TableDefinition::new("sensors");
/// The inactive slot's image, block by block: (sensor, block number) → bytes.
const SLOT_BLOCKS: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("slot_blocks");
/// The outage backlog: (sensor, measurement id) → [`Sample`] bytes, until the hub acknowledges.
const BACKLOG: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("backlog");
/// The local log, the last few measurements whatever the hub did: (sensor, id) → [`Sample`].
const LOG: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("log");

/// One durable write: records, slot blocks, slots to erase first, backlog and log changes.
#[derive(Debug, Default)]
pub struct FlashBatch {
    /// Records to write.
    pub records: Vec<(u32, FlashRecord)>,
    /// Sensors whose inactive slot is erased (before `blocks` are written).
    pub erase: Vec<u32>,
    /// Blocks to write: (sensor, block number, bytes).
    pub blocks: Vec<(u32, u32, Vec<u8>)>,
    /// Backlog measurements to keep: (sensor, id, sample).
    pub backlog_put: Vec<(u32, u64, Sample)>,
    /// Backlog measurements acknowledged or dropped: (sensor, id).
    pub backlog_del: Vec<(u32, u64)>,
    /// Measurements for the local log: (sensor, id, sample).
    pub log: Vec<(u32, u64, Sample)>,
    /// Log entries kept per sensor: writing id `n` erases id `n - log_keep`.
    pub log_keep: u64,
}

impl FlashBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.erase.is_empty()
            && self.blocks.is_empty()
            && self.backlog_put.is_empty()
            && self.backlog_del.is_empty()
            && self.log.is_empty()
    }
}

/// A sensor's measurements as flash holds them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Measurements {
    /// The backlog, by id.
    pub backlog: Vec<(u64, Sample)>,
    /// The local log, by id.
    pub log: Vec<(u64, Sample)>,
}

impl Measurements {
    /// The id after every one held (measurement ids keep growing across restarts).
    pub fn next_id(&self) -> u64 {
        let last = self.backlog.last().into_iter().chain(self.log.last()).map(|(id, _)| id + 1);
        last.max().unwrap_or(0)
    }
}

/// Why flash could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The database failed.
    #[error("flash database: {0}")]
    Db(String),
    /// A record did not decode.
    #[error("flash record {0} is corrupt")]
    Corrupt(u32),
}

fn dberr<E: std::fmt::Display>(e: E) -> FlashError {
    FlashError::Db(e.to_string())
}

/// The OSCORE context inputs as stored in flash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredContext {
    /// Master secret, hex.
    pub secret: String,
    /// Master salt, hex.
    pub salt: String,
    /// The sensor's Sender ID, hex.
    pub sender_id: String,
    /// The hub's Sender ID, hex.
    pub recipient_id: String,
    /// ID Context, hex (given by a renewal, RFC 8613 B.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_context: Option<String>,
}

impl StoredContext {
    /// From context inputs.
    pub fn from_params(p: &ContextParams) -> Self {
        Self {
            secret: protocol::hex::encode(&p.master_secret),
            salt: protocol::hex::encode(&p.master_salt),
            sender_id: protocol::hex::encode(p.sender_id.as_bytes()),
            recipient_id: protocol::hex::encode(p.recipient_id.as_bytes()),
            id_context: p.id_context.as_deref().map(protocol::hex::encode),
        }
    }

    /// Back to context inputs.
    pub fn to_params(&self) -> Option<ContextParams> {
        let kid = |h: &str| protocol::hex::decode(h).and_then(|b| Kid::new(&b).ok());
        Some(ContextParams {
            master_secret: protocol::hex::decode(&self.secret)?,
            master_salt: protocol::hex::decode(&self.salt)?,
            sender_id: kid(&self.sender_id)?,
            recipient_id: kid(&self.recipient_id)?,
            id_context: match &self.id_context {
                Some(h) => Some(protocol::hex::decode(h)?),
                None => None,
            },
        })
    }
}

/// Everything one sensor keeps across power cuts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlashRecord {
    /// Serial number.
    pub serial: String,
    /// Model.
    pub model: Model,
    /// Firmware slots (A/B) and the version each holds.
    pub slots: crate::firmware::Slots,
    /// The OSCORE context, once paired.
    pub context: Option<StoredContext>,
    /// The last durable sequence lease (RFC 8613 B.1.1).
    pub lease: u64,
    /// The context was exported to another endpoint (aiocoap) and must not be used here again.
    pub exported: bool,
    /// Measurements dropped from a full outage buffer, in total.
    #[serde(default)]
    pub buffer_dropped: u64,
    /// The value of `buffer_dropped` the hub has acknowledged.
    #[serde(default)]
    pub dropped_reported: u64,
}

/// A fleet's flash.
#[derive(Debug)]
pub struct Flash {
    db: Database,
}

impl Flash {
    /// Opens (or creates) the flash file.
    pub fn open(path: &Path) -> Result<Self, FlashError> {
        let db = Database::create(path).map_err(dberr)?;
        let tx = db.begin_write().map_err(dberr)?;
        tx.open_table(SENSORS).map_err(dberr)?;
        tx.open_table(SLOT_BLOCKS).map_err(dberr)?;
        tx.open_table(BACKLOG).map_err(dberr)?;
        tx.open_table(LOG).map_err(dberr)?;
        tx.commit().map_err(dberr)?;
        Ok(Self { db })
    }

    /// Opens an existing flash file without creating anything (tables an older file lacks read
    /// as empty).
    pub fn open_existing(path: &Path) -> Result<Self, FlashError> {
        Ok(Self { db: Database::open(path).map_err(dberr)? })
    }

    /// The sensor whose index or serial is `which`.
    pub fn find(&self, which: &str) -> Result<Option<(u32, FlashRecord)>, FlashError> {
        let records = self.load_all()?;
        Ok(records.into_iter().find(|(i, r)| r.serial == which || i.to_string() == which))
    }

    /// Every record, by sensor index.
    pub fn load_all(&self) -> Result<Vec<(u32, FlashRecord)>, FlashError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let table = tx.open_table(SENSORS).map_err(dberr)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            let rec =
                serde_json::from_slice(v.value()).map_err(|_| FlashError::Corrupt(k.value()))?;
            out.push((k.value(), rec));
        }
        Ok(out)
    }

    /// One record.
    pub fn get(&self, index: u32) -> Result<Option<FlashRecord>, FlashError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let table = tx.open_table(SENSORS).map_err(dberr)?;
        let Some(v) = table.get(index).map_err(dberr)? else { return Ok(None) };
        serde_json::from_slice(v.value()).map(Some).map_err(|_| FlashError::Corrupt(index))
    }

    /// Writes records durably (one transaction, one fsync).
    pub fn write(&self, records: &[(u32, FlashRecord)]) -> Result<(), FlashError> {
        self.write_batch(&FlashBatch { records: records.to_vec(), ..FlashBatch::default() })
    }

    /// Writes a batch durably (one transaction, one fsync).
    pub fn write_batch(&self, batch: &FlashBatch) -> Result<(), FlashError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut table = tx.open_table(SENSORS).map_err(dberr)?;
            for (i, rec) in &batch.records {
                let bytes = serde_json::to_vec(rec).map_err(dberr)?;
                table.insert(*i, bytes.as_slice()).map_err(dberr)?;
            }
            let mut blocks = tx.open_table(SLOT_BLOCKS).map_err(dberr)?;
            for &i in &batch.erase {
                blocks.retain_in((i, 0)..=(i, u32::MAX), |_, _| false).map_err(dberr)?;
            }
            for (i, num, data) in &batch.blocks {
                blocks.insert((*i, *num), data.as_slice()).map_err(dberr)?;
            }
            let mut backlog = tx.open_table(BACKLOG).map_err(dberr)?;
            for (i, id, sample) in &batch.backlog_put {
                backlog.insert((*i, *id), sample.to_bytes().as_slice()).map_err(dberr)?;
            }
            for key in &batch.backlog_del {
                backlog.remove(key).map_err(dberr)?;
            }
            let mut log = tx.open_table(LOG).map_err(dberr)?;
            for (i, id, sample) in &batch.log {
                log.insert((*i, *id), sample.to_bytes().as_slice()).map_err(dberr)?;
                if let Some(old) = id.checked_sub(batch.log_keep) {
                    log.remove((*i, old)).map_err(dberr)?;
                }
            }
        }
        tx.commit().map_err(dberr)
    }

    /// Every sensor's backlog and log, by sensor index.
    pub fn load_measurements(&self) -> Result<HashMap<u32, Measurements>, FlashError> {
        self.scan((0, 0)..=(u32::MAX, u64::MAX))
    }

    /// One sensor's backlog and log.
    pub fn measurements(&self, index: u32) -> Result<Measurements, FlashError> {
        let mut all = self.scan((index, 0)..=(index, u64::MAX))?;
        Ok(all.remove(&index).unwrap_or_default())
    }

    fn scan(
        &self,
        range: RangeInclusive<(u32, u64)>,
    ) -> Result<HashMap<u32, Measurements>, FlashError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let mut out: HashMap<u32, Measurements> = HashMap::new();
        for (table, is_log) in [(BACKLOG, false), (LOG, true)] {
            let table = match tx.open_table(table) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(dberr(e)),
            };
            for row in table.range(range.clone()).map_err(dberr)? {
                let (k, v) = row.map_err(dberr)?;
                let (index, id) = k.value();
                let sample = Sample::from_bytes(v.value()).ok_or(FlashError::Corrupt(index))?;
                let m = out.entry(index).or_default();
                if is_log { &mut m.log } else { &mut m.backlog }.push((id, sample));
            }
        }
        Ok(out)
    }

    /// The inactive slot's contents: the contiguous blocks from block 0.
    pub fn read_slot(&self, index: u32) -> Result<Vec<u8>, FlashError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let table = tx.open_table(SLOT_BLOCKS).map_err(dberr)?;
        let mut out = Vec::new();
        for (expected, row) in
            table.range((index, 0)..=(index, u32::MAX)).map_err(dberr)?.enumerate()
        {
            let (k, v) = row.map_err(dberr)?;
            if k.value().1 as usize != expected {
                break;
            }
            out.extend_from_slice(v.value());
        }
        Ok(out)
    }
}
