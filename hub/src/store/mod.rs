//! The hub's durable state behind one narrow trait: devices and descriptors, OSCORE contexts
//! (secrets sealed under a key-encryption key kept outside the database, EN 303 645 5.4-1),
//! sequence leases, replay windows, key-usage counters, and readings (bounded by retention).
//! [`HubStore::commit`] is the group commit: everything in it is durable when it returns.

mod catalog;
mod health;
mod hub_store;
mod link_state;
mod log;
pub mod outbox;
mod records;
mod seal;

pub use catalog::OpenOutcome;
pub use health::StorageStatus;
pub use hub_store::{Committed, HubStore, StoreLimits};
pub use log::LogError;
pub use seal::{Kek, SealError};

use std::net::{IpAddr, SocketAddr};

use protocol::link::{GuardState, PeerState};
use protocol::oscore::{ContextParams, KeyUsage, Kid, WindowState};
use protocol::pairing::Descriptor;
use protocol::senml::Reading;
use serde::{Deserialize, Serialize};

/// What the hub knows about a paired device: its id, what it said about itself at pairing
/// (model designation 5.3-16, firmware, updatable, capabilities 5.8-3, support period 5.3-13),
/// and when it paired. Stored as one flat JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Device id: the sensor's OSCORE kid in hex.
    pub id: crate::device_id::DeviceId,
    /// The pairing descriptor, as the sensor sent it.
    #[serde(flatten)]
    pub about: Descriptor,
    /// When it paired, Unix seconds.
    pub paired_at: u64,
}

impl DeviceInfo {
    /// From a pairing's descriptor.
    pub fn new(kid: &Kid, d: &Descriptor, paired_at: u64) -> Self {
        Self { id: (*kid).into(), about: d.clone(), paired_at }
    }
}

/// What a backup copies (see [`HubStore::backup_point`]).
#[derive(Debug)]
pub struct BackupPoint {
    /// The catalog's rows.
    pub catalog: Vec<u8>,
    /// Log segments: first sequence number (the file name), open file, durable length.
    pub segments: Vec<(u64, std::sync::Arc<std::fs::File>, u64)>,
}

pub(crate) use catalog::{dump_meta, restore_dump};

/// A stored reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredReading {
    /// Unix milliseconds.
    pub time_ms: i64,
    /// SenML name.
    pub name: String,
    /// Unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Number or boolean.
    pub value: serde_json::Value,
}

impl From<&Reading> for StoredReading {
    fn from(r: &Reading) -> Self {
        Self { time_ms: r.time.0, name: r.name.clone(), unit: r.unit.clone(), value: value(r) }
    }
}

impl From<Reading> for StoredReading {
    /// Takes `r`'s strings (the link's readings, after their commit).
    fn from(r: Reading) -> Self {
        let value = value(&r);
        Self { time_ms: r.time.0, name: r.name, unit: r.unit, value }
    }
}

impl StoredReading {
    /// Becomes `r`, reusing its strings' buffers (the directory's current state takes every
    /// reading, on the link's thread).
    pub fn assign(&mut self, r: &Reading) {
        self.time_ms = r.time.0;
        self.name.clone_from(&r.name);
        self.unit.clone_from(&r.unit);
        self.value = value(r);
    }
}

fn value(r: &Reading) -> serde_json::Value {
    match r.value {
        protocol::senml::Value::Number(v) => serde_json::json!(v),
        protocol::senml::Value::Bool(b) => serde_json::json!(b),
    }
}

/// A paired device's link state, as loaded at start.
#[derive(Debug, Clone)]
pub struct PeerRecord {
    /// Context inputs (hub's view), unsealed.
    pub params: ContextParams,
    /// Last durable lease of the hub's sender sequence.
    pub lease: u64,
    /// Replay window as of the last durable reading.
    pub window: Option<WindowState>,
    /// Key usage of the last durable checkpoint (encryptions resume at its ceiling).
    pub usage: KeyUsage,
    /// The endpoint of the sensor's last authenticated request.
    pub endpoint: Option<SocketAddr>,
    /// The failure budgets of the last durable checkpoint (`None`: never persisted).
    pub budget: Option<GuardState<IpAddr>>,
}

/// One change in a group commit.
#[derive(Debug, Clone)]
pub enum Write {
    /// A newly paired device.
    Device {
        /// Device info.
        info: DeviceInfo,
        /// Its context (sealed before it is written).
        params: ContextParams,
    },
    /// A sequence lease (RFC 8613 B.1.1).
    Lease {
        /// Device.
        kid: Kid,
        /// Value.
        lease: u64,
    },
    /// Readings (their device's checkpoint goes in the same commit).
    Readings {
        /// Device.
        kid: Kid,
        /// Validated readings.
        readings: Vec<Reading>,
    },
    /// A device's link checkpoint: replay window, usage ceilings, endpoint. Written with (or
    /// before) every answer to what that window accepted.
    State {
        /// Device.
        kid: Kid,
        /// The checkpoint.
        state: PeerState<SocketAddr>,
    },
    /// A small named document written in the readings log with the rest of the commit (one
    /// fsync, durable with the checkpoints beside it; e.g. the security counters), replaced
    /// whole; [`HubStore::meta`] returns the newest value.
    LogMeta {
        /// Name.
        key: String,
        /// Contents.
        value: Vec<u8>,
    },
    /// A named document (e.g. the update manager's state), replaced whole.
    Meta {
        /// Name.
        key: String,
        /// Contents.
        value: Vec<u8>,
    },
    /// A device removed: its context, state and readings are erased.
    Remove {
        /// Device.
        kid: Kid,
    },
    /// A device's context renewed (RFC 8613 B.2 after a restore): its new inputs replace the
    /// sealed ones and its mark "renew before use" goes, in one catalog transaction.
    Renew {
        /// Device.
        kid: Kid,
        /// The renewed context (sealed before it is written).
        params: ContextParams,
    },
    /// A device replaced by another (TR 103 621 6.23 example 1): its keys and link state are
    /// erased, its readings stay as the replacement's history.
    Retire {
        /// Device.
        kid: Kid,
    },
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("store: {0}")]
    Db(String),
    /// A sealed secret could not be opened (wrong or missing key-encryption key).
    #[error(transparent)]
    Seal(#[from] SealError),
    /// A record did not decode.
    #[error("store record is corrupt: {0}")]
    Corrupt(&'static str),
    /// File system.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The readings log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The store was written by a newer hub: refused, and left as it was.
    #[error(
        "{path}: written by a newer Hearth ({found}; this hub reads up to {supported}). Nothing \
         was changed: run the newer hub again (README, \"Upgrades\", says how to go back)"
    )]
    TooNew {
        /// The file.
        path: std::path::PathBuf,
        /// Its format.
        found: String,
        /// The newest this hub reads.
        supported: String,
    },
}
