//! [`Store`] for the hub: readings and link-state changes (checkpoints, leases) go to the
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
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak, mpsc};
use std::time::Instant;

use protocol::oscore::Kid;

use super::catalog::Catalog;
use super::link_state::{Change, LinkState};
use super::log::{self, IndexJob, LogConfig, Retention, SegmentLog};
use super::records::{Payload, Replayed};
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
    catalog: Arc<Catalog>,
    config: StoreConfig,
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
        let (jobs, rx) = mpsc::channel();
        let thread = {
            let (catalog, live) = (catalog.clone(), live.clone());
            std::thread::Builder::new()
                .name("hub-store-seal".into())
                .spawn(move || maintain(&catalog, &live, config, rx))
                .map_err(|e| StoreError::Io("store maintenance thread".into(), e))?
        };
        let maintenance = Some(Maintenance { jobs, thread });
        let writer = OnceLock::new();
        let store = Self { inner: Arc::new(Inner { catalog, config, live, maintenance, writer }) };
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
    /// thread: the commit that filled the segment is not held up by it.
    fn start_seal(&self, live: &mut Live) {
        let index = match live.log.roll() {
            Ok(Some(index)) => index,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a new readings log segment");
                return;
            }
        };
        let states: Vec<(Kid, LinkState)> = live
            .dirty
            .drain()
            .filter_map(|k| live.states.get(&k).map(|s| (k, s.clone())))
            .collect();
        let metas = live.logged.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (seq, first_seq) = (live.log.last_seq(), live.log.first_seq());
        let job = Job::Seal(Box::new(SealJob { index, states, metas, seq, first_seq }));
        let sent = self.inner.maintenance.as_ref().map(|m| m.jobs.send(job));
        if let Some(Err(mpsc::SendError(Job::Seal(job)))) = sent {
            tracing::error!("store maintenance thread has stopped; snapshot deferred to a restart");
            live.dirty.extend(job.states.into_iter().map(|(k, _)| k));
        }
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
            self.start_seal(live);
        }
        Ok(())
    }

    /// The log's segments as the outbox reads them, and the segments retention dropped that
    /// end at `from_seq` or later. Brief: no I/O under the lock.
    pub(super) fn frames(&self, from_seq: u64) -> (Vec<log::SegmentView>, Vec<log::Dropped>) {
        let live = self.live();
        let retired = live.retired.iter().filter(|d| d.last_seq >= from_seq).copied().collect();
        (live.log.views(), retired)
    }

    /// The devices whose readings a segment still counts (not erased), by its first sequence.
    pub(super) fn segment_kids(&self, first_seq: u64) -> Option<std::collections::HashSet<Kid>> {
        self.live().log.segment_kids(first_seq)
    }

    /// Seals the active segment now and waits for its index and retention (tests).
    #[cfg(test)]
    pub(super) fn seal_now(&self) {
        {
            let mut live = self.live();
            self.start_seal(&mut live);
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
        let (result, group) = if group.len() == 1 {
            let result = store.write_now(&group[0].writes);
            (result, group)
        } else {
            let lens: Vec<usize> = group.iter().map(|j| j.writes.len()).collect();
            let mut all = Vec::with_capacity(lens.iter().sum());
            for job in &mut group {
                all.append(&mut job.writes);
            }
            let result = store.write_now(&all);
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

/// The maintenance thread: for every rolled-over segment, writes its index, snapshots the link
/// states into the catalog, then applies retention (never past the snapshot).
// Outside tests `Job` has one variant.
#[cfg_attr(not(test), allow(clippy::infallible_destructuring_match))]
fn maintain(catalog: &Catalog, live: &Mutex<Live>, config: StoreConfig, jobs: mpsc::Receiver<Job>) {
    for job in jobs {
        let job = match job {
            Job::Seal(job) => job,
            #[cfg(test)]
            Job::Settle(done) => {
                let _ = done.send(());
                continue;
            }
        };
        match job.index.write() {
            Ok(index) => lock(live).log.indexed(index),
            // The segment stays indexed in memory; the next start rebuilds its index file.
            Err(e) => tracing::error!(error = %e, "cannot write a readings log index"),
        }
        kill_point!("seal");
        if let Err(e) = catalog.save_snapshot(&job.states, &job.metas, job.seq, job.first_seq) {
            tracing::error!(error = %e, "cannot snapshot link states; retrying at the next seal");
            let mut live = lock(live);
            let live = &mut *live;
            let known =
                job.states.into_iter().map(|(k, _)| k).filter(|k| live.states.contains_key(k));
            live.dirty.extend(known);
            continue;
        }
        let dropped = {
            let mut live = lock(live);
            let dropped = live.log.retain(Retention {
                max_bytes: config.max_log_bytes,
                max_per_device: config.max_readings_per_device.max(1),
                snapshot_seq: job.seq,
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
                    budget: s.budget,
                }
            })
            .collect())
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            writes.to_vec(),
            Box::new(move |_, result| {
                let _ = tx.send(result);
            }),
        );
        rx.recv().unwrap_or_else(|_| Err(StoreError::Db("the store writer has stopped".into())))
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
        if let Some(v) = self.live().logged.get(key) {
            return Ok(Some(v.clone()));
        }
        self.inner.catalog.meta(key)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::SocketAddr;
    use std::os::unix::fs::PermissionsExt;

    use protocol::link::PeerState;
    use protocol::oscore::{ContextParams, KeyUsage, WindowState};
    use protocol::senml::{Reading, UnixTimeMillis, Value};

    use super::*;

    fn kid(n: u8) -> Kid {
        Kid::new(&[n, 0xaa, n, 0xbb]).expect("kid")
    }

    /// A paired device record for tests (also used by the outbox's tests).
    pub(in crate::store) fn device(k: Kid) -> Write {
        let info = DeviceInfo {
            id: k.into(),
            model: "hearth-temp-1".into(),
            serial: format!("s{k}"),
            firmware_version: 1,
            updatable: true,
            verifies_signatures: false,
            capabilities: vec!["temperature".into()],
            support_end: 2_000_000_000,
            paired_at: 1_700_000_000,
        };
        let params = ContextParams {
            master_secret: vec![7; 16],
            master_salt: vec![1, 2],
            sender_id: Kid::new(&[0]).expect("kid"),
            recipient_id: k,
            id_context: None,
        };
        Write::Device { info, params }
    }

    /// Readings at `times` for tests (also used by the outbox's tests).
    pub(in crate::store) fn readings(k: Kid, times: impl IntoIterator<Item = i64>) -> Write {
        let readings = times
            .into_iter()
            .map(|t| Reading {
                name: format!("urn:dev:{k}:temp"),
                unit: Some("Cel".into()),
                value: Value::Number(t as f64 / 100.0),
                time: UnixTimeMillis(t),
            })
            .collect();
        Write::Readings { kid: k, readings }
    }

    fn checkpoint(k: Kid, highest: u64, port: u16) -> Write {
        let state = PeerState {
            window: Some(WindowState { highest, seen: 1 }),
            usage: KeyUsage { encryptions: highest * 2, failed_decryptions: 1 },
            endpoint: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            budget: None,
        };
        Write::State { kid: k, state }
    }

    fn config(segment_bytes: u64) -> StoreConfig {
        StoreConfig { max_readings_per_device: 1 << 40, segment_bytes, max_log_bytes: 1 << 40 }
    }

    fn times(store: &HubStore, k: Kid, limit: usize) -> Vec<i64> {
        store.readings(&k, limit).expect("readings").iter().map(|r| r.time_ms).collect()
    }

    /// A store in `dir` with devices 1 and 2 paired.
    fn paired(dir: &Path, c: StoreConfig) -> (HubStore, Kid, Kid) {
        let (store, _) = HubStore::open(dir, c).expect("open");
        store.commit(&[device(kid(1)), device(kid(2))]).expect("pair");
        (store, kid(1), kid(2))
    }

    fn peer(store: &HubStore, k: Kid) -> PeerRecord {
        let peers = store.load_peers().expect("peers");
        peers.into_iter().find(|p| p.params.recipient_id == k).expect("peer")
    }

    #[test]
    fn link_states_recover_from_the_snapshot_and_the_frames_after_it() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (a, b) = (kid(1), kid(2));
        {
            let (store, ..) = paired(tmp.path(), config(4096));
            // Enough frames to seal several segments (each seal snapshots), then a few more.
            for i in 1..=300u64 {
                let mut w = vec![readings(a, [i as i64 * 1000]), checkpoint(a, i, 4000)];
                if i % 100 == 0 {
                    w.push(Write::Lease { kid: a, lease: i * 10 });
                }
                if i == 150 {
                    w.push(checkpoint(b, 77, 5000));
                }
                store.commit(&w).expect("commit");
            }
            store.settle();
            assert!(store.live().log.sealed_segments() >= 3);
        }
        let (store, _) = HubStore::open(tmp.path(), config(4096)).expect("reopen");
        let p = peer(&store, a);
        assert_eq!(p.window.map(|w| w.highest), Some(300));
        assert_eq!(p.usage.encryptions, 600);
        assert_eq!(p.lease, 3000);
        assert_eq!(p.endpoint, Some(SocketAddr::from(([127, 0, 0, 1], 4000))));
        assert_eq!(peer(&store, b).window.map(|w| w.highest), Some(77));
        assert_eq!(store.reading_count(&a).expect("count"), 300);
        assert_eq!(times(&store, a, 3), vec![298_000, 299_000, 300_000]);
        assert_eq!(times(&store, a, 1000).len(), 300);
    }

    #[test]
    fn logged_documents_and_budgets_are_durable_with_their_commit_across_seals_and_reopens() {
        use protocol::link::{BucketState, GuardState};
        let tmp = tempfile::tempdir().expect("tmp");
        let a = kid(1);
        let budget = |tokens| GuardState {
            known: BucketState { tokens, at: 1_700_000_000_000 + u64::from(tokens) },
            others: BucketState { tokens: 0, at: 5 },
            routable: vec![("192.0.2.9".parse().expect("ip"), BucketState { tokens: 1, at: 6 })],
        };
        let counters = |n: u32| Write::LogMeta {
            key: "security_counters".into(),
            value: format!("{{\"bad_tag\":{n}}}").into_bytes(),
        };
        {
            let (store, ..) = paired(tmp.path(), config(4096));
            // An old-format value in the catalog is what a store from before logging returns.
            let old = Write::Meta { key: "security_counters".into(), value: b"old".to_vec() };
            store.commit(&[old]).expect("commit");
            assert_eq!(store.meta("security_counters").expect("meta"), Some(b"old".to_vec()));
            for i in 1..=200u32 {
                let Write::State { kid, mut state } = checkpoint(a, u64::from(i), 4000) else {
                    unreachable!()
                };
                state.budget = Some(budget(i % 32));
                let w = [readings(a, [i64::from(i)]), Write::State { kid, state }, counters(i)];
                store.commit(&w).expect("commit");
                let newest = format!("{{\"bad_tag\":{i}}}").into_bytes();
                assert_eq!(store.meta("security_counters").expect("meta"), Some(newest));
            }
            store.settle();
            assert!(store.live().log.sealed_segments() >= 2, "snapshots were taken");
        }
        let (store, _) = HubStore::open(tmp.path(), config(4096)).expect("reopen");
        assert_eq!(
            store.meta("security_counters").expect("meta"),
            Some(br#"{"bad_tag":200}"#.to_vec())
        );
        assert_eq!(peer(&store, a).budget, Some(budget(200 % 32)));
        // The catalog alone (the last snapshot) holds a logged value too.
        let snap = store.inner.catalog.meta("security_counters").expect("meta");
        assert!(snap.is_some_and(|v| v != b"old"), "the snapshot carries the logged value");
    }

    #[test]
    fn newest_readings_come_from_every_segment_in_time_order_without_duplicates() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (store, a, b) = paired(tmp.path(), config(2048));
        for i in 0..200i64 {
            store.commit(&[readings(a, [10_000 + i]), readings(b, [i])]).expect("commit");
        }
        // A buffered batch drained late (old times), and a reading resent after a lost ack.
        store.commit(&[readings(a, [5, 6, 7])]).expect("late");
        store.commit(&[readings(a, [10_199])]).expect("resent");
        assert_eq!(times(&store, a, 2), vec![10_198, 10_199]);
        let all = times(&store, a, 10_000);
        assert_eq!(all.len(), 203);
        assert_eq!(&all[..4], &[5, 6, 7, 10_000]);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        let r = store.readings(&b, 1).expect("readings");
        assert_eq!(r[0].name, format!("urn:dev:{b}:temp"));
        assert_eq!(r[0].unit.as_deref(), Some("Cel"));
        assert_eq!(r[0].value, serde_json::json!(1.99));
        // The duplicate is stored (and counted) but returned once.
        assert_eq!(store.reading_count(&a).expect("count"), 204);
        assert!(store.readings(&kid(9), 10).expect("unknown").is_empty());
    }

    #[test]
    fn erase_hides_readings_at_once_and_after_restart_and_a_reused_id_starts_clean() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (a, b) = (kid(1), kid(2));
        {
            let (store, ..) = paired(tmp.path(), config(2048));
            for i in 0..100 {
                store
                    .commit(&[readings(a, [i]), readings(b, [i]), checkpoint(a, 90, 1)])
                    .expect("c");
            }
            // Removed with its last readings in the same batch: none of them counts.
            store
                .commit(&[readings(a, [500]), Write::Remove { kid: a }, readings(a, [501])])
                .expect("remove");
            assert_eq!(store.reading_count(&a).expect("count"), 0);
            assert!(store.readings(&a, 100).expect("r").is_empty());
            assert!(store.devices().expect("devices").iter().all(|d| d.id.kid() != a));
        }
        let (store, _) = HubStore::open(tmp.path(), config(2048)).expect("reopen");
        assert!(store.readings(&a, 100).expect("r").is_empty());
        assert_eq!(store.reading_count(&b).expect("count"), 100);
        assert!(store.load_peers().expect("peers").iter().all(|p| p.params.recipient_id != a));
        // The same id paired again: no old readings, no old replay window.
        store.commit(&[device(a), readings(a, [1000])]).expect("again");
        drop(store);
        let (store, _) = HubStore::open(tmp.path(), config(2048)).expect("reopen");
        assert_eq!(times(&store, a, 100), vec![1000]);
        assert_eq!(peer(&store, a).window, None);
    }

    #[test]
    fn a_retired_device_loses_its_keys_and_keeps_its_readings() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (a, b) = (kid(1), kid(2));
        {
            let (store, ..) = paired(tmp.path(), config(2048));
            for i in 0..50 {
                store.commit(&[readings(a, [i]), checkpoint(a, 40, 1)]).expect("c");
            }
            store.commit(&[readings(a, [50]), Write::Retire { kid: a }]).expect("retire");
            assert!(store.load_peers().expect("peers").iter().all(|p| p.params.recipient_id != a));
            assert!(store.devices().expect("devices").iter().all(|d| d.id.kid() != a));
            assert_eq!(store.reading_count(&a).expect("count"), 51);
        }
        let (store, _) = HubStore::open(tmp.path(), config(2048)).expect("reopen");
        assert_eq!(times(&store, a, 100), (0..=50).collect::<Vec<_>>());
        let peers = store.load_peers().expect("peers");
        assert_eq!(peers.iter().map(|p| p.params.recipient_id).collect::<Vec<_>>(), [b]);
    }

    #[test]
    fn retention_drops_whole_old_segments_by_size_and_by_per_device_count() {
        let tmp = tempfile::tempdir().expect("tmp");
        let a = kid(1);
        let by_size = StoreConfig { max_log_bytes: 16 << 10, ..config(4096) };
        let (store, _) = HubStore::open(tmp.path(), by_size).expect("open");
        store.commit(&[device(a)]).expect("pair");
        for i in 0..2000 {
            store.commit(&[readings(a, [i]), checkpoint(a, i as u64, 1)]).expect("c");
        }
        store.settle();
        let live = store.live();
        assert!(live.log.bytes() <= (16 << 10) + 4096 + 512, "{}", live.log.bytes());
        drop(live);
        let kept = store.reading_count(&a).expect("count");
        assert!(kept > 100 && kept < 2000, "{kept}");
        let t = times(&store, a, 10_000);
        assert_eq!(t.len() as u64, kept);
        assert_eq!(*t.last().expect("newest"), 1999);
        drop(store);

        let tmp = tempfile::tempdir().expect("tmp");
        let by_count = StoreConfig { max_readings_per_device: 300, ..config(4096) };
        let (store, a, b) = paired(tmp.path(), by_count);
        store.commit(&[readings(b, [1])]).expect("b");
        for i in 0..3000 {
            store.commit(&[readings(a, [i])]).expect("c");
        }
        // `b` has nothing newer: the segment holding its reading stays, and with it every later
        // one (segments go oldest first).
        store.settle();
        assert_eq!(store.reading_count(&a).expect("count"), 3000);
        store.commit(&[Write::Remove { kid: b }]).expect("remove b");
        for i in 3000..3200 {
            store.commit(&[readings(a, [i])]).expect("c");
        }
        store.settle();
        let kept = store.reading_count(&a).expect("count");
        assert!((300..=300 + 400).contains(&kept), "{kept}");
        drop(store);
        let (store, _) = HubStore::open(tmp.path(), by_count).expect("reopen");
        assert_eq!(store.reading_count(&a).expect("count"), kept);
    }

    #[test]
    fn writes_from_many_threads_go_through_the_one_writer_in_order() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (store, a, _) = paired(tmp.path(), config(1 << 20));
        // Submitted back to back: merged into shared commits, each job's writes in order, every
        // job called back once, in submission order.
        let (tx, rx) = mpsc::channel();
        for i in 0..200i64 {
            let tx = tx.clone();
            let writes =
                vec![readings(a, [i]), Write::Meta { key: "k".into(), value: vec![i as u8] }];
            store.submit(
                writes,
                Box::new(move |writes, result| {
                    let _ = tx.send((i, writes.len(), result.is_ok()));
                }),
            );
        }
        let done: Vec<_> = (0..200).map(|_| rx.recv().expect("called back")).collect();
        assert_eq!(done, (0..200).map(|i| (i, 2, true)).collect::<Vec<_>>());
        assert_eq!(store.meta("k").expect("meta"), Some(vec![199]));
        assert_eq!(times(&store, a, 1000), (0..200).collect::<Vec<_>>());
        // Blocking commits from other threads meanwhile.
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..20u8 {
                        let key = format!("t{t}");
                        store.commit(&[Write::Meta { key, value: vec![i] }]).expect("commit");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        for t in 0..4 {
            assert_eq!(store.meta(&format!("t{t}")).expect("meta"), Some(vec![19]));
        }
        // Dropping the last handle closes the store at once: it can be opened again.
        drop(store);
        let (store, _) = HubStore::open(tmp.path(), config(1 << 20)).expect("reopen");
        assert_eq!(store.reading_count(&a).expect("count"), 200);
    }

    #[test]
    fn every_file_is_private() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (store, _) = HubStore::open(tmp.path(), config(2048)).expect("open");
        store.commit(&[device(kid(1))]).expect("pair");
        for i in 0..200 {
            store.commit(&[readings(kid(1), [i])]).expect("c");
        }
        let mut stack = vec![tmp.path().to_path_buf()];
        let mut files = 0;
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("list") {
                let e = e.expect("entry");
                let mode = e.metadata().expect("meta").permissions().mode() & 0o777;
                if e.file_type().expect("type").is_dir() {
                    assert_eq!(mode, 0o700, "{}", e.path().display());
                    stack.push(e.path());
                } else {
                    assert_eq!(mode, 0o600, "{}", e.path().display());
                    files += 1;
                }
            }
        }
        assert!(files > 5, "segments and indexes expected");
    }

    #[test]
    fn readings_of_the_first_store_format_move_to_the_log_once() {
        use redb::{ReadableDatabase, TableDefinition};
        let tmp = tempfile::tempdir().expect("tmp");
        let (store, a, _) = paired(tmp.path(), config(4096));
        drop(store);
        // The first format: key len(kid) ‖ kid ‖ time (sign bit flipped, big-endian) ‖ name.
        let old: TableDefinition<&[u8], &[u8]> = TableDefinition::new("readings");
        let db = redb::Database::open(tmp.path().join("hearth.redb")).expect("db");
        let tx = db.begin_write().expect("tx");
        {
            let mut t = tx.open_table(old).expect("table");
            for (time, v) in
                [(1_000i64, r#"{"u":"Cel","v":20.5}"#), (2_000, r#"{"u":null,"v":true}"#)]
            {
                let mut k = vec![4];
                k.extend_from_slice(a.as_bytes());
                k.extend_from_slice(&((time as u64) ^ (1 << 63)).to_be_bytes());
                k.extend_from_slice(b"urn:dev:x:temp");
                t.insert(k.as_slice(), v.as_bytes()).expect("insert");
            }
        }
        tx.commit().expect("commit");
        drop(db);
        for _ in 0..2 {
            let (store, _) = HubStore::open(tmp.path(), config(4096)).expect("open");
            let r = store.readings(&a, 10).expect("readings");
            assert_eq!(r.len(), 2);
            assert_eq!((r[0].time_ms, r[0].unit.as_deref()), (1_000, Some("Cel")));
            assert_eq!((r[1].time_ms, &r[1].value), (2_000, &serde_json::json!(true)));
            assert_eq!(store.reading_count(&a).expect("count"), 2, "moved once");
        }
        let db = redb::Database::open(tmp.path().join("hearth.redb")).expect("db");
        let tx = db.begin_read().expect("tx");
        assert!(tx.open_table(old).is_err(), "the old table is gone");
    }
}
