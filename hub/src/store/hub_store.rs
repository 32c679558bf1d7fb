//! [`Store`] for the hub: readings and link-state changes (checkpoints, leases) go to the
//! segment log — one frame and one fdatasync per group commit, so a device's checkpoint is
//! durable with the readings it accepted — and everything small and rare to the redb catalog.
//! Link states are snapshotted into the catalog whenever a segment is sealed; recovery is that
//! snapshot plus a replay of the frames after it (RFC 8613 B.1.1/B.1.2 across any crash).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use protocol::oscore::Kid;

use super::catalog::Catalog;
use super::link_state::{Change, LinkState};
use super::log::{self, LogConfig, Retention, SegmentLog};
use super::records::Payload;
use super::{DeviceInfo, OpenOutcome, PeerRecord, Store, StoreError, StoredReading, Write};

/// Storage settings.
#[derive(Debug, Clone, Copy)]
pub struct StoreConfig {
    /// Readings kept per device, approximately: a sealed segment is dropped once every device
    /// in it has at least this many newer readings.
    pub max_readings_per_device: u64,
    /// Bytes after which a log segment is sealed (and link states snapshotted).
    pub segment_bytes: u64,
    /// The log's size bound: the oldest segments are dropped beyond it.
    pub max_log_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { max_readings_per_device: 100_000, segment_bytes: 32 << 20, max_log_bytes: 4 << 30 }
    }
}

/// The hub's store: catalog (redb) and readings log.
#[derive(Clone)]
pub struct HubStore {
    inner: Arc<Inner>,
}

impl core::fmt::Debug for HubStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HubStore").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

struct Inner {
    catalog: Catalog,
    config: StoreConfig,
    live: Mutex<Live>,
}

/// What commits change; queries take it briefly.
struct Live {
    log: SegmentLog,
    /// Every paired device's link state (snapshot + log).
    states: HashMap<Kid, LinkState>,
    /// Devices whose state changed since the last snapshot.
    dirty: HashSet<Kid>,
}

impl HubStore {
    /// Opens the store in `dir`: the catalog `hearth.redb` (with the key-encryption key
    /// `kek`) and the log `readings/`. A corrupt catalog is moved aside with the log (they
    /// describe the same devices) and a fresh store created; the caller reports the outcome.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<(Self, OpenOutcome), StoreError> {
        let (catalog, outcome) = Catalog::open(dir)?;
        let log_dir = dir.join("readings");
        if let OpenOutcome::MovedAside(aside) = &outcome
            && log_dir.exists()
        {
            let to = aside.with_file_name(aside.file_name().map_or_else(Default::default, |n| {
                n.to_string_lossy().replace("hearth.redb", "readings")
            }));
            std::fs::rename(&log_dir, &to)
                .map_err(|e| StoreError::Io(log_dir.display().to_string(), e))?;
        }
        let snapshot = catalog.snapshot()?;
        let floors = snapshot.floors;
        let mut states = snapshot.states;
        let mut dirty = HashSet::new();
        let min_next = floors.values().copied().max().unwrap_or(0).max(snapshot.seq) + 1;
        let log_config = LogConfig { segment_bytes: config.segment_bytes.clamp(4096, 1 << 30) };
        let mut replay = |seq: u64, kid: Kid, change: Change| {
            if floors.get(&kid).is_some_and(|&f| seq < f) {
                return;
            }
            if let Some(s) = states.get_mut(&kid) {
                s.apply(&change);
                dirty.insert(kid);
            }
        };
        let (log, report) =
            SegmentLog::open(&log_dir, log_config, &floors, snapshot.seq, min_next, &mut replay)?;
        tracing::debug!(?report, "readings log opened");
        let store = Self {
            inner: Arc::new(Inner {
                catalog,
                config,
                live: Mutex::new(Live { log, states, dirty }),
            }),
        };
        store.migrate()?;
        Ok((store, outcome))
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        self.inner.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves readings of the first store format (kept in redb) into the log, once.
    fn migrate(&self) -> Result<(), StoreError> {
        let catalog = &self.inner.catalog;
        if !catalog.has_legacy()? {
            return Ok(());
        }
        let mut after: Option<Vec<u8>> = None;
        let mut moved = 0usize;
        loop {
            let (chunk, next) = catalog.legacy_readings(after.as_deref(), 20_000)?;
            let mut live = self.live();
            let mut payload = Payload::default();
            for (kid, readings) in &chunk {
                if live.states.contains_key(kid) {
                    payload.readings(kid, readings);
                    moved += readings.len();
                }
            }
            if !payload.is_empty() {
                live.log.append(&payload)?;
            }
            drop(live);
            match next {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        catalog.drop_legacy()?;
        tracing::info!(readings = moved, "moved readings of the first store format to the log");
        Ok(())
    }

    /// Seals the active segment, snapshots link states, applies retention.
    fn seal(&self, live: &mut Live) -> Result<(), StoreError> {
        live.log.seal()?;
        let seq = live.log.last_seq();
        let changed: Vec<(Kid, LinkState)> =
            live.dirty.iter().filter_map(|k| live.states.get(k).map(|s| (*k, s.clone()))).collect();
        self.inner.catalog.save_snapshot(&changed, seq, live.log.first_seq())?;
        live.dirty.clear();
        let c = &self.inner.config;
        let dropped = live.log.retain(Retention {
            max_bytes: c.max_log_bytes,
            max_per_device: c.max_readings_per_device.max(1),
            snapshot_seq: seq,
        });
        if let (Some(first), Some(last)) = (dropped.first(), dropped.last()) {
            tracing::info!(
                segments = dropped.len(),
                from_seq = first.first_seq,
                to_seq = last.last_seq,
                "retention dropped old readings"
            );
        }
        Ok(())
    }
}

impl Store for HubStore {
    fn load_peers(&self) -> Result<Vec<PeerRecord>, StoreError> {
        let contexts = self.inner.catalog.contexts()?;
        let live = self.live();
        Ok(contexts
            .into_iter()
            .map(|params| {
                let s = live.states.get(&params.recipient_id).cloned().unwrap_or_default();
                PeerRecord {
                    params,
                    lease: s.lease,
                    window: s.window,
                    usage: s.usage,
                    endpoint: s.endpoint,
                }
            })
            .collect())
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut live = self.live();
        let live = &mut *live;
        // What a device removed in this batch wrote earlier in it is moot.
        let removed_at: HashMap<Kid, usize> = writes
            .iter()
            .enumerate()
            .filter_map(|(i, w)| match w {
                Write::Remove { kid } => Some((*kid, i)),
                _ => None,
            })
            .collect();
        let mut exists: HashMap<Kid, bool> = HashMap::new();
        let mut catalog = Vec::new();
        let mut payload = Payload::default();
        for (i, w) in writes.iter().enumerate() {
            let logged = |kid: &Kid, exists: &HashMap<Kid, bool>| {
                removed_at.get(kid).is_none_or(|&r| i > r)
                    && exists.get(kid).copied().unwrap_or_else(|| live.states.contains_key(kid))
            };
            match w {
                Write::Device { params, .. } => {
                    exists.insert(params.recipient_id, true);
                    catalog.push(w);
                }
                Write::Remove { kid } => {
                    exists.insert(*kid, false);
                    catalog.push(w);
                }
                Write::Meta { .. } => catalog.push(w),
                Write::Readings { kid, readings } => {
                    if logged(kid, &exists) {
                        payload.readings(kid, readings);
                    }
                }
                Write::State { kid, state } => {
                    if logged(kid, &exists) {
                        payload.change(kid, Change::Checkpoint(state.clone()));
                    }
                }
                Write::Lease { kid, lease } => {
                    if logged(kid, &exists) {
                        payload.change(kid, Change::Lease(*lease));
                    }
                }
            }
        }
        if !catalog.is_empty() {
            // Readings of a removed device in frames before this one no longer count.
            self.inner.catalog.apply(&catalog, live.log.next_seq())?;
            for w in &catalog {
                match w {
                    Write::Device { params, .. } => {
                        live.states.insert(params.recipient_id, LinkState::default());
                        live.dirty.remove(&params.recipient_id);
                    }
                    Write::Remove { kid } => {
                        live.states.remove(kid);
                        live.dirty.remove(kid);
                        live.log.erase(kid);
                    }
                    _ => {}
                }
            }
        }
        if !payload.is_empty() {
            live.log.append(&payload)?;
            for (kid, change) in &payload.changes {
                if let Some(s) = live.states.get_mut(kid) {
                    s.apply(change);
                    live.dirty.insert(*kid);
                }
            }
        }
        if live.log.wants_seal()
            && let Err(e) = self.seal(live)
        {
            // The commit itself is durable; sealing is retried after the next one.
            tracing::error!(error = %e, "cannot seal the readings log segment");
        }
        Ok(())
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError> {
        self.inner.catalog.devices()
    }

    fn readings(&self, kid: &Kid, limit: usize) -> Result<Vec<StoredReading>, StoreError> {
        let sources = self.live().log.sources(kid);
        Ok(log::read(&sources, kid, limit)?)
    }

    fn reading_count(&self, kid: &Kid) -> Result<u64, StoreError> {
        Ok(self.live().log.count(kid))
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.catalog.meta(key)
    }
}
