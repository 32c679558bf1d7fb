//! The hub's store ([`HubStore`]): readings and link-state changes (checkpoints, leases) go to the
//! segment log — one frame and one fdatasync per group commit, so a device's checkpoint is
//! durable with the readings it accepted — and everything small and rare to the redb catalog.
//! Link states are snapshotted into the catalog whenever a segment is sealed (by a maintenance
//! thread, off the commit path, with the sealed segment's index and retention); recovery is that
//! snapshot plus a replay of the frames after it (RFC 8613 B.1.1/B.1.2 across any crash).
//!
//! **One writer.** Every write — the link's group commits and anyone else's (MQTT counters and
//! users, ...) — goes through one writer thread, in order, with what is queued together in one
//! commit: nobody outside that thread ever holds the log's lock or redb's write transaction
//! across I/O, so no other subsystem can stall the link's commits (DESIGN.md, "Failure domains").

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak, mpsc};
use std::time::{Duration, Instant};

use protocol::oscore::Kid;

use super::catalog::Catalog;
use super::health::{self, Health, StorageStatus};
use super::link_state::LinkState;
use super::log::{self, IndexJob, LogConfig, Retention, SegmentLog};
use super::records::Change;
use super::records::{Payload, Replayed};
use super::{DeviceInfo, OpenOutcome, PeerRecord, StoreError, StoredReading, Write};

/// Storage settings.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Readings kept per device, approximately: a sealed segment is dropped once every device
    /// in it has at least this many newer readings.
    pub max_readings_per_device: u64,
    /// Bytes after which a log segment is sealed (and link states snapshotted).
    pub segment_bytes: u64,
    /// The log's size bound: the oldest segments are dropped beyond it.
    pub max_log_bytes: u64,
    /// The floor of free space on the store's file system: below it the oldest readings are
    /// dropped (and counted) before the disk is full (0: no floor).
    pub min_free_bytes: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_readings_per_device: 100_000,
            segment_bytes: 32 << 20,
            max_log_bytes: 4 << 30,
            min_free_bytes: 64 << 20,
        }
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
    catalog: Arc<Catalog>,
    config: StoreLimits,
    /// The data directory (its file system's free space is watched).
    dir: PathBuf,
    /// Whether writes work, in words; free space and what the floor dropped.
    health: Arc<Health>,
    /// Free space: when last measured, and whether a drop to make room is under way.
    space: Mutex<Option<Instant>>,
    making_room: Arc<AtomicBool>,
    live: Arc<Mutex<Live>>,
    maintenance: Option<Maintenance>,
    /// The one writer thread (set right after the store is made: it holds a weak reference).
    writer: OnceLock<Writer>,
}

/// What a submitted commit calls when it is durable (or failed), with its writes handed back.
/// It runs on the writer thread: it must not block, and must never commit itself.
pub type Committed = Box<dyn FnOnce(Vec<Write>, Result<(), StoreError>) + Send>;

/// A commit waiting for the writer thread.
struct WriteJob {
    writes: Vec<Write>,
    done: Committed,
}

/// The writer thread and its queue.
struct Writer {
    jobs: mpsc::Sender<WriteJob>,
    thread: std::thread::JoinHandle<()>,
}

/// Jobs merged into one commit at most.
const MAX_GROUP: usize = 64;

/// The thread that finishes seals: index file, link-state snapshot, retention.
struct Maintenance {
    jobs: mpsc::Sender<Job>,
    thread: std::thread::JoinHandle<()>,
}

enum Job {
    Seal(Box<SealJob>),
    /// Free this many bytes by dropping the oldest segments already snapshotted.
    MakeRoom(u64),
    /// Answered once every job before it is done.
    #[cfg(test)]
    Settle(mpsc::Sender<()>),
}

/// A segment that was rolled over, and the link states changed before it ended.
struct SealJob {
    index: IndexJob,
    states: Vec<(Kid, LinkState)>,
    /// The logged documents' newest values.
    metas: Vec<(String, Vec<u8>)>,
    /// The last sequence number those states include.
    seq: u64,
    /// The log's first sequence number then.
    first_seq: u64,
    /// Bytes to free for the floor of free space (0: none).
    free_need: u64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Queued commits finish first (unless this runs on the writer thread itself, which then
        // ends on its own once its queue is closed), then pending seals, then the catalog closes.
        if let Some(w) = self.writer.take() {
            drop(w.jobs);
            if w.thread.thread().id() != std::thread::current().id() {
                let _ = w.thread.join();
            }
        }
        if let Some(m) = self.maintenance.take() {
            drop(m.jobs);
            let _ = m.thread.join();
        }
    }
}

fn lock(live: &Mutex<Live>) -> MutexGuard<'_, Live> {
    live.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What commits change; queries take it briefly.
struct Live {
    log: SegmentLog,
    /// Every paired device's link state (snapshot + log).
    states: HashMap<Kid, LinkState>,
    /// Devices whose state changed since the last snapshot.
    dirty: HashSet<Kid>,
    /// The newest value of every document logged since the snapshot (it holds older ones).
    logged: HashMap<String, Vec<u8>>,
    /// Segments retention dropped since the store opened, oldest first (the newest
    /// [`RETIRED_KEPT`]): what the upstream outbox counts when it finds them gone.
    retired: VecDeque<log::Dropped>,
}

/// Retention records kept in memory for the outbox.
const RETIRED_KEPT: usize = 4096;

impl HubStore {
    /// Opens the store in `dir`: the catalog `hearth.redb` (with the key-encryption key
    /// `kek`) and the log `readings/`. A corrupt catalog is moved aside with the log (they
    /// describe the same devices) and a fresh store created; the caller reports the outcome.
    pub fn open(dir: &Path, config: StoreLimits) -> Result<(Self, OpenOutcome), StoreError> {
        let log_dir = dir.join("readings");
        // A store of a newer hub is refused before anything is written (the catalog checks its
        // own format first thing too).
        if let Some((path, found)) = log::newer_segment(&log_dir) {
            let supported = format!("readings log format {}", log::FORMAT);
            let found = format!("readings log format {found}");
            return Err(StoreError::TooNew { path, found, supported });
        }
        let (catalog, outcome) = Catalog::open(dir)?;
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
        // Frames from each floor on count, and the snapshot covers up to its sequence.
        let min_next = floors.values().copied().max().unwrap_or(0).max(snapshot.seq + 1);
        let log_config = LogConfig { segment_bytes: config.segment_bytes.clamp(4096, 1 << 30) };
        let mut logged = HashMap::new();
        let mut replay = |seq: u64, item: Replayed| match item {
            Replayed::Change(kid, change) => {
                if floors.get(&kid).is_some_and(|&f| seq < f) {
                    return;
                }
                if let Some(s) = states.get_mut(&kid) {
                    s.apply(&change);
                    dirty.insert(kid);
                }
            }
            Replayed::Meta(key, value) => {
                logged.insert(key, value);
            }
        };
        let (log, report) =
            SegmentLog::open(&log_dir, log_config, &floors, snapshot.seq, min_next, &mut replay)?;
        tracing::debug!(?report, "readings log opened");
        let catalog = Arc::new(catalog);
        let live =
            Arc::new(Mutex::new(Live { log, states, dirty, logged, retired: VecDeque::new() }));
        let health = Arc::new(Health::new(config.min_free_bytes >> 20));
        let making_room = Arc::new(AtomicBool::new(false));
        let (jobs, rx) = mpsc::channel();
        let thread = {
            let m = Maintainer {
                catalog: catalog.clone(),
                live: live.clone(),
                config,
                health: health.clone(),
                making_room: making_room.clone(),
                snapshot_seq: snapshot.seq,
            };
            std::thread::Builder::new()
                .name("hub-store-seal".into())
                .spawn(move || m.run(rx))
                .map_err(|e| StoreError::Io("store maintenance thread".into(), e))?
        };
        let maintenance = Some(Maintenance { jobs, thread });
        let writer = OnceLock::new();
        let inner = Inner {
            catalog,
            config,
            dir: dir.to_path_buf(),
            health,
            space: Mutex::new(None),
            making_room,
            live,
            maintenance,
            writer,
        };
        let store = Self { inner: Arc::new(inner) };
        store.migrate()?;
        let (jobs, rx) = mpsc::channel();
        let weak = Arc::downgrade(&store.inner);
        let thread = std::thread::Builder::new()
            .name("hub-store".into())
            .spawn(move || write_loop(&weak, &rx))
            .map_err(|e| StoreError::Io("store writer thread".into(), e))?;
        let _ = store.inner.writer.set(Writer { jobs, thread });
        Ok((store, outcome))
    }

    /// Queues `writes` for the writer thread; `done` is called there once they are durable
    /// (or failed: then retry the same writes, applying them twice is harmless). Never blocks.
    pub fn submit(&self, writes: Vec<Write>, done: Committed) {
        let job = WriteJob { writes, done };
        let refused = match self.inner.writer.get() {
            Some(w) => w.jobs.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        if let Some(job) = refused {
            (job.done)(job.writes, Err(StoreError::Db("the store writer has stopped".into())));
        }
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        lock(&self.inner.live)
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

    /// Rolls the log over to a new segment and hands the rest of the seal to the maintenance
    /// thread: the commit that filled the segment is not held up by it. Retention after it
    /// frees `free_need` bytes for the floor of free space. Returns whether a seal was queued.
    fn start_seal(&self, live: &mut Live, free_need: u64) -> bool {
        let index = match live.log.roll() {
            Ok(Some(index)) => index,
            Ok(None) => return false,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a new readings log segment");
                return false;
            }
        };
        let states: Vec<(Kid, LinkState)> = live
            .dirty
            .drain()
            .filter_map(|k| live.states.get(&k).map(|s| (k, s.clone())))
            .collect();
        let metas = live.logged.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (seq, first_seq) = (live.log.last_seq(), live.log.first_seq());
        let job = Job::Seal(Box::new(SealJob { index, states, metas, seq, first_seq, free_need }));
        let sent = self.inner.maintenance.as_ref().map(|m| m.jobs.send(job));
        if let Some(Err(mpsc::SendError(Job::Seal(job)))) = sent {
            tracing::error!("store maintenance thread has stopped; snapshot deferred to a restart");
            live.dirty.extend(job.states.into_iter().map(|(k, _)| k));
            return false;
        }
        sent.is_some()
    }

    /// Makes `writes` durable now. Only the writer thread calls it.
    fn write_now(&self, writes: &[Write]) -> Result<(), StoreError> {
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
                Write::Remove { kid } | Write::Retire { kid } => {
                    exists.insert(*kid, false);
                    catalog.push(w);
                }
                Write::Meta { .. } | Write::Renew { .. } => catalog.push(w),
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
                Write::LogMeta { key, value } => payload.meta(key, value),
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
                    Write::Retire { kid } => {
                        live.states.remove(kid);
                        live.dirty.remove(kid);
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
            for (key, value) in std::mem::take(&mut payload.metas) {
                live.logged.insert(key, value);
            }
        }
        if live.log.wants_seal() {
            self.start_seal(live, 0);
        }
        Ok(())
    }

    /// Measures the free space (at most once a second) and, below the floor, has the oldest
    /// readings dropped to make room (one drop at a time). Only the writer thread calls it.
    fn keep_floor(&self) {
        let inner = &self.inner;
        {
            let mut last = inner.space.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *last = Some(Instant::now());
        }
        let free = match health::free_bytes(&inner.dir) {
            Ok(free) => free,
            Err(e) => {
                tracing::debug!(error = %e, "cannot measure free space");
                return;
            }
        };
        inner.health.free_space(free);
        let floor = inner.config.min_free_bytes;
        if free >= floor || inner.making_room.swap(true, Ordering::AcqRel) {
            return;
        }
        let need = floor - free;
        let mut live = self.live();
        let queued = if live.log.worth_sealing_for_room() {
            self.start_seal(&mut live, need)
        } else {
            drop(live);
            let sent = inner.maintenance.as_ref().map(|m| m.jobs.send(Job::MakeRoom(need)));
            matches!(sent, Some(Ok(())))
        };
        // The maintenance thread lets go of the flag when it is done; nothing queued: now.
        if !queued {
            inner.making_room.store(false, Ordering::Release);
        }
    }

    /// Whether the store can write, in words; free space and what the floor dropped.
    pub fn status(&self) -> StorageStatus {
        self.inner.health.status()
    }

    /// The log's segments as the outbox reads them, and the segments retention dropped that
    /// end at `from_seq` or later. Brief: no I/O under the lock.
    pub(super) fn frames(&self, from_seq: u64) -> (Vec<log::SegmentView>, Vec<log::Dropped>) {
        let live = self.live();
        let retired = live.retired.iter().filter(|d| d.last_seq >= from_seq).copied().collect();
        (live.log.views(), retired)
    }

    /// Which devices' readings a segment still counts (not erased), by its first sequence.
    pub(super) fn counted(&self, first_seq: u64) -> Option<log::Counted> {
        self.live().log.counted(first_seq)
    }

    /// Seals the active segment now and waits for its index and retention (tests).
    #[cfg(test)]
    pub(super) fn seal_now(&self) {
        {
            let mut live = self.live();
            self.start_seal(&mut live, 0);
        }
        self.settle();
    }

    /// Waits until the maintenance thread has finished every seal started so far.
    #[cfg(test)]
    fn settle(&self) {
        let (tx, rx) = mpsc::channel();
        if let Some(m) = &self.inner.maintenance
            && m.jobs.send(Job::Settle(tx)).is_ok()
        {
            let _ = rx.recv();
        }
    }
}

/// The writer thread: takes what is queued (up to [`MAX_GROUP`] jobs), makes it durable in one
/// commit — each job's writes in order, jobs in the order they came — and calls each job back.
fn write_loop(store: &Weak<Inner>, jobs: &mpsc::Receiver<WriteJob>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let Some(inner) = store.upgrade() else {
            for job in group {
                (job.done)(job.writes, Err(StoreError::Db("the store is closed".into())));
            }
            return;
        };
        let store = HubStore { inner };
        let started = Instant::now();
        store.keep_floor();
        // After a failed write redb refuses everything until it is opened again.
        let reopened = store.inner.catalog.recover();
        let write = |writes: &[Write]| match &reopened {
            Ok(()) => store.write_now(writes),
            Err(e) => Err(StoreError::Db(format!("catalog: {e}"))),
        };
        let (result, group) = if group.len() == 1 {
            let result = write(&group[0].writes);
            (result, group)
        } else {
            let lens: Vec<usize> = group.iter().map(|j| j.writes.len()).collect();
            let mut all = Vec::with_capacity(lens.iter().sum());
            for job in &mut group {
                all.append(&mut job.writes);
            }
            let result = write(&all);
            let mut rest = all.into_iter();
            for (job, len) in group.iter_mut().zip(lens) {
                job.writes = rest.by_ref().take(len).collect();
            }
            (result, group)
        };
        let ms = started.elapsed().as_millis();
        if ms > 50 {
            let readings: usize = group
                .iter()
                .flat_map(|j| &j.writes)
                .map(|w| match w {
                    Write::Readings { readings, .. } => readings.len(),
                    _ => 0,
                })
                .sum();
            tracing::warn!(ms, readings, "slow group commit");
        }
        store.inner.health.record(&result);
        // Let go of the store before anyone hears back: whoever drops the last handle after
        // its commit then closes the store on its own thread, at once.
        drop(store);
        // The first job gets the error itself, the others a copy of its text.
        let copy = result.as_ref().err().map(ToString::to_string);
        let mut result = Some(result);
        for job in group {
            let r = result.take().unwrap_or_else(|| match &copy {
                None => Ok(()),
                Some(e) => Err(StoreError::Db(e.clone())),
            });
            (job.done)(job.writes, r);
        }
    }
}

/// The maintenance thread's part: for every rolled-over segment, writes its index, snapshots
/// the link states into the catalog, then applies retention (never past the snapshot); and
/// drops the oldest readings when free space is below the floor.
struct Maintainer {
    catalog: Arc<Catalog>,
    live: Arc<Mutex<Live>>,
    config: StoreLimits,
    health: Arc<Health>,
    making_room: Arc<AtomicBool>,
    /// The last sequence the catalog's snapshot covers.
    snapshot_seq: u64,
}

impl Maintainer {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        for job in jobs {
            let job = match job {
                Job::Seal(job) => job,
                Job::MakeRoom(need) => {
                    self.retain(need);
                    self.making_room.store(false, Ordering::Release);
                    continue;
                }
                #[cfg(test)]
                Job::Settle(done) => {
                    let _ = done.send(());
                    continue;
                }
            };
            match job.index.write() {
                Ok(index) => lock(&self.live).log.indexed(index),
                // The segment stays indexed in memory; the next start rebuilds its index file.
                Err(e) => tracing::error!(error = %e, "cannot write a readings log index"),
            }
            kill_point!("seal");
            // After a failed write the catalog is opened again first (the writer thread
            // reports the storage problem; a snapshot that still fails waits for the next seal).
            let _ = self.catalog.recover();
            if let Err(e) =
                self.catalog.save_snapshot(&job.states, &job.metas, job.seq, job.first_seq)
            {
                tracing::error!(error = %e, "cannot snapshot link states; retrying at the next seal");
                let mut live = lock(&self.live);
                let live = &mut *live;
                let known =
                    job.states.into_iter().map(|(k, _)| k).filter(|k| live.states.contains_key(k));
                live.dirty.extend(known);
                if job.free_need > 0 {
                    self.making_room.store(false, Ordering::Release);
                }
                continue;
            }
            self.snapshot_seq = job.seq;
            self.retain(job.free_need);
            if job.free_need > 0 {
                self.making_room.store(false, Ordering::Release);
            }
        }
    }

    /// Retention up to the snapshot, freeing at least `free_need` bytes if it can.
    fn retain(&self, free_need: u64) {
        let dropped = {
            let mut live = lock(&self.live);
            let dropped = live.log.retain(Retention {
                max_bytes: self.config.max_log_bytes,
                max_per_device: self.config.max_readings_per_device.max(1),
                snapshot_seq: self.snapshot_seq,
                free_need,
            });
            live.retired.extend(dropped.iter().copied());
            let excess = live.retired.len().saturating_sub(RETIRED_KEPT);
            live.retired.drain(..excess);
            dropped
        };
        if let (Some(first), Some(last)) = (dropped.first(), dropped.last()) {
            tracing::info!(
                segments = dropped.len(),
                from_seq = first.first_seq,
                to_seq = last.last_seq,
                "retention dropped old readings"
            );
        }
        let for_space: u64 = dropped.iter().filter(|d| d.for_space).map(|d| d.readings).sum();
        if for_space > 0 {
            self.health.dropped_for_space(for_space);
            tracing::warn!(
                readings = for_space,
                floor_mb = self.config.min_free_bytes >> 20,
                "free space below the floor: dropped the oldest readings to make room"
            );
        } else if free_need > 0 && dropped.is_empty() {
            tracing::debug!(free_need, "free space below the floor and no old readings to drop");
        }
    }
}

/// What the rest of the hub reads and writes.
impl HubStore {
    /// Every paired device's link state.
    pub fn load_peers(&self) -> Result<Vec<PeerRecord>, StoreError> {
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
                    budget: s.budget,
                }
            })
            .collect())
    }

    /// Makes `writes` durable, a device's readings together with its checkpoint. After an
    /// error the caller retries the same writes (applying them twice is harmless). Blocking:
    /// [`HubStore`] queues them for its one writer thread and waits (never call it from a
    /// [`HubStore::submit`] callback, which runs on that thread).
    pub fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            writes.to_vec(),
            Box::new(move |_, result| {
                let _ = tx.send(result);
            }),
        );
        rx.recv().unwrap_or_else(|_| Err(StoreError::Db("the store writer has stopped".into())))
    }

    /// A consistent point for a backup (`crate::backup`), taken between two commits: the
    /// catalog as one read transaction sees it, and every log segment's file with its durable
    /// length then (open handles: retention may delete the files, the copy still reads them).
    /// A backup of these is a state the hub was really in.
    pub fn backup_point(&self) -> Result<crate::store::BackupPoint, StoreError> {
        let live = self.live();
        let segments = live.log.views().into_iter().map(|v| (v.first_seq, v.file, v.len)).collect();
        let tx = self.inner.catalog.begin_read();
        drop(live);
        let catalog = super::catalog::dump(&tx?)?;
        Ok(crate::store::BackupPoint { catalog, segments })
    }

    /// Devices whose context must be renewed before it is used (after a restore).
    pub fn renewals(&self) -> Result<Vec<Kid>, StoreError> {
        self.inner.catalog.renewals()
    }

    /// All devices.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError> {
        self.inner.catalog.devices()
    }

    /// The newest `limit` readings of a device, oldest first; a reading stored twice (the same
    /// time and name, resent after a lost acknowledgement) is returned once.
    pub fn readings(&self, kid: &Kid, limit: usize) -> Result<Vec<StoredReading>, StoreError> {
        let sources = self.live().log.sources(kid);
        Ok(log::read(&sources, kid, limit)?)
    }

    /// How many readings of a device are stored (a resent duplicate counts twice).
    pub fn reading_count(&self, kid: &Kid) -> Result<u64, StoreError> {
        Ok(self.live().log.count(kid))
    }

    /// A named document written with [`Write::Meta`] or [`Write::LogMeta`] (the newest).
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.live().logged.get(key) {
            return Ok(Some(v.clone()));
        }
        self.inner.catalog.meta(key)
    }
}

#[cfg(test)]
mod format_tests;
#[cfg(test)]
mod full_disk_tests;
#[cfg(test)]
pub(super) mod tests;
