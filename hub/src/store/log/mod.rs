//! The readings log: readings and link-state changes as one append-only sequence of frames in
//! segment files (`readings/<first seq>.seg`). A group commit is one frame — length, CRC32,
//! sequence number, payload — made durable by one fdatasync before anything in it is
//! acknowledged (DESIGN, durability contract); a torn tail is cut off at open. Sealed segments
//! get an index file (`.idx`: per device, where its blocks are; derived, rebuilt when missing),
//! so queries never scan and memory does not hold every segment's devices (nor, past a bound,
//! every block of the active one: [`runs`]); retention drops whole segments, oldest first.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::oscore::Kid;

use super::StoredReading;
use super::records::{self, MAX_BLOCK_HEADER, Payload, Replayed};

/// The last byte is the log's format: a segment of a newer one is refused, never recovered.
const SEG_MAGIC: &[u8; 8] = b"HRTHLOG1";
/// The log's format (the digit in [`SEG_MAGIC`]).
pub(super) const FORMAT: char = '1';
const _: () = assert!(SEG_MAGIC[7] == FORMAT as u8);
/// Magic, then the segment's first sequence number.
pub(super) const SEG_HEADER: u64 = 16;
/// Payload length (u32), CRC32 of sequence and payload (u32), sequence number (u64).
pub(super) const FRAME_HEADER: u64 = 16;
/// A longer frame is taken for garbage.
const MAX_FRAME: u64 = 256 << 20;
/// Index files of an older format are rebuilt from their segment at start.
const IDX_MAGIC: &[u8; 8] = b"HRTHIDX2";
/// Magic, first and last sequence, segment length, device count, entry size.
const IDX_HEADER: usize = 40;

/// Log failures.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// File system.
    #[error("readings log {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The segment is past what a block offset can address.
    #[error("readings log segment {0} is full")]
    Full(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |e| LogError::Io(path.to_path_buf(), e)
}

/// Settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct LogConfig {
    /// A segment is sealed once it is this long.
    pub(super) segment_bytes: u64,
}

/// How many readings of a device, and their time range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) count: u64,
    pub(super) min_t: i64,
    pub(super) max_t: i64,
}

impl Span {
    const EMPTY: Span = Span { count: 0, min_t: i64::MAX, max_t: i64::MIN };

    fn add(&mut self, count: u64, min_t: i64, max_t: i64) {
        self.count += count;
        self.min_t = self.min_t.min(min_t);
        self.max_t = self.max_t.max(max_t);
    }
}

#[derive(Debug, Default)]
struct ActiveDevice {
    span: Option<Span>,
    blocks: Vec<u32>,
}

#[derive(Debug)]
struct Sealed {
    first_seq: u64,
    last_seq: u64,
    len: u64,
    path: PathBuf,
    idx_path: PathBuf,
    file: Arc<File>,
    idx: Arc<File>,
    /// Its directory of devices is in `idx`; this says where to look.
    fence: Fence,
    /// Its newest reading's time (a query that has enough newer ones skips the segment).
    newest: i64,
    /// Readings of devices not erased.
    readings: u64,
}

#[derive(Debug)]
struct Active {
    first_seq: u64,
    len: u64,
    /// The file's size: the frames (`len`) and the zeros written ahead of them ([`AHEAD`]).
    size: u64,
    path: PathBuf,
    file: Arc<File>,
    devices: HashMap<Kid, ActiveDevice>,
    /// Block offsets written out of memory, oldest first ([`runs`]).
    runs: Vec<runs::Run>,
    /// Block offsets held in `devices` (at most [`LogConfig::spill_at`] after a commit).
    held: usize,
}

/// A full segment waiting for its index file, which is written off the commit path.
#[derive(Debug)]
struct Sealing {
    active: Active,
    last_seq: u64,
}

/// What writing a sealed segment's index file needs (no access to the log).
#[derive(Debug)]
pub(super) struct IndexJob {
    dir: PathBuf,
    first_seq: u64,
    last_seq: u64,
    len: u64,
    devices: Vec<(Kid, Span, Vec<u32>)>,
    /// The segment's runs: their offsets go before those in `devices`.
    runs: Vec<index::Merge>,
}

/// What opening found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct OpenReport {
    /// Bytes of a torn last frame that were cut off.
    pub(super) torn_bytes: u64,
    /// A damaged segment was copied here before its damaged end was cut off.
    pub(super) damaged_copy: Option<PathBuf>,
    /// Index files rebuilt.
    pub(super) reindexed: usize,
    /// Frames whose link-state changes were replayed.
    pub(super) replayed_frames: u64,
    /// Damaged frames skipped over.
    pub(super) skipped_frames: u64,
}

/// The log.
#[derive(Debug)]
pub(super) struct SegmentLog {
    dir: PathBuf,
    config: LogConfig,
    sealed: Vec<Sealed>,
    /// Newer than every sealed segment, oldest first.
    sealing: Vec<Sealing>,
    active: Active,
    next_seq: u64,
    /// A write or sync failed: cut the file back before the next append.
    broken: bool,
    /// Erased devices: sequence of the erase. Their entries in sealed segments that end
    /// before it are hidden (index files are not rewritten); dropped once no such segment is left.
    floors: HashMap<Kid, u64>,
    /// Readings per device in sealed segments (not erased).
    totals: HashMap<Kid, u64>,
}

/// Where to read one device's readings in one segment.
#[derive(Debug)]
pub(super) struct Source {
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    blocks: Blocks,
}

#[derive(Debug)]
enum Blocks {
    /// Of an unsealed segment: in its runs, then these.
    Listed(Span, Vec<(Arc<File>, Stretch)>, Vec<u32>),
    /// In a sealed segment's directory, looked up by [`read`] (not under the log's lock);
    /// with the segment's newest time.
    Indexed(Arc<File>, Stretch, i64),
}

/// Whether a segment still counts a device's readings (not erased since), for a frame reader
/// asking about devices it met in the segment.
#[derive(Debug)]
pub(super) enum Counted {
    /// Of an unsealed segment: these devices.
    Only(HashSet<Kid>),
    /// Of a sealed segment: every device but these.
    Except(HashSet<Kid>),
}

impl Counted {
    /// Whether `kid`, met in the segment, still counts there.
    pub(super) fn contains(&self, kid: &Kid) -> bool {
        match self {
            Counted::Only(kids) => kids.contains(kid),
            Counted::Except(kids) => !kids.contains(kid),
        }
    }
}

/// A segment dropped by retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dropped {
    pub(super) first_seq: u64,
    pub(super) last_seq: u64,
    /// Readings it held (of devices not erased).
    pub(super) readings: u64,
    /// Dropped only to keep the floor of free space (no other bound asked for it).
    pub(super) for_space: bool,
}

/// A segment as a reader of frames (the upstream outbox) sees it: its own file handle, which
/// stays readable after retention unlinks the file, and how far its frames are durable.
#[derive(Debug, Clone)]
pub(super) struct SegmentView {
    pub(super) first_seq: u64,
    /// Its last frame's sequence (of the active segment: the last durable frame so far).
    pub(super) last_seq: u64,
    /// Bytes of durable frames (with the header).
    pub(super) len: u64,
    /// Readings in it (of devices not erased).
    pub(super) readings: u64,
    /// Whether frames are still appended to it.
    pub(super) active: bool,
    pub(super) file: Arc<File>,
}

/// Retention bounds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retention {
    /// Total log bytes.
    pub(super) max_bytes: u64,
    /// A sealed segment goes once every device in it has this many newer readings.
    pub(super) max_per_device: u64,
    /// Never drop frames after this sequence (their link-state changes are not snapshotted).
    pub(super) snapshot_seq: u64,
    /// Bytes to free for the floor of free space, oldest segments first (0: none).
    pub(super) free_need: u64,
}

impl SegmentLog {
    /// Opens (or creates) the log in `dir`. Blocks of a device in frames before its floor
    /// (the sequence at which it was erased) are not indexed. `replay` receives every
    /// link-state change in frames after `replay_after`, in order; the log starts at
    /// `min_next_seq` at least.
    pub(super) fn open(
        dir: &Path,
        config: LogConfig,
        floors: &HashMap<Kid, u64>,
        replay_after: u64,
        min_next_seq: u64,
        replay: &mut dyn FnMut(u64, Replayed),
    ) -> Result<(Self, OpenReport), LogError> {
        crate::private_fs::create_dir(dir).map_err(io(dir))?;
        runs::remove_stale(dir);
        let mut r = Recovery { dir, floors, replay_after, replay, report: OpenReport::default() };
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                name.to_str()?.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut sealed = Vec::new();
        let mut active = None;
        for (i, &first) in firsts.iter().enumerate() {
            let path = dir.join(format!("{first:020}.seg"));
            let last = i + 1 == firsts.len();
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(last)
                .open(&path)
                .map_err(io(&path))?;
            if last {
                active = Some(r.active(path, file, first)?);
            } else {
                sealed.push(r.sealed(path, file, first)?);
            }
        }
        let report = r.report;
        let (active, next_seq) = match active {
            Some(found) => found,
            None => {
                let first = min_next_seq.max(1);
                (new_active(dir, first)?, first)
            }
        };
        let mut log = Self {
            dir: dir.to_path_buf(),
            config,
            sealed: Vec::with_capacity(sealed.len()),
            sealing: Vec::new(),
            active,
            next_seq,
            broken: false,
            floors: floors.clone(),
            totals: HashMap::new(),
        };
        for (segment, last_seq, index) in sealed {
            log.admit(segment, last_seq, index);
        }
        log.prune_floors();
        if log.next_seq < min_next_seq {
            // The log is behind the catalog (lost or restored from an old copy): continue at
            // a sequence the catalog has not seen, in a segment of its own.
            log.next_seq = min_next_seq;
            log.seal()?;
        }
        log.spill_if_full(); // the scan listed every block of the active segment
        Ok((log, report))
    }

    /// The sequence number the next frame gets.
    pub(super) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last frame's sequence number (0 if none was ever written).
    pub(super) fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Appends `payload` as one frame and makes it durable (one fdatasync); returns its
    /// sequence number. Nothing of it is visible before it is durable.
    pub(super) fn append(&mut self, payload: &Payload) -> Result<u64, LogError> {
        let a = &mut self.active;
        if self.broken {
            a.file.set_len(a.len).map_err(io(&a.path))?;
            a.file.sync_all().map_err(io(&a.path))?;
            a.size = a.len;
            self.broken = false;
        }
        let seq = self.next_seq;
        let start = a.len;
        let end = start + FRAME_HEADER + payload.bytes.len() as u64;
        if end > u64::from(u32::MAX) {
            return Err(LogError::Full(a.path.clone()));
        }
        let frame = encode_frame(seq, &payload.bytes);
        let ahead = (end + AHEAD).min(self.config.segment_bytes);
        let written = a.file.write_all_at(&frame, start).and_then(|()| {
            if end > a.size {
                // Past the zeros: the next ones go with this frame.
                a.size = end;
                if ahead > end {
                    a.size = write_zeros(&a.file, end, ahead);
                }
            }
            kill_point!("commit");
            a.file.sync_data()
        });
        if let Err(e) = written {
            self.broken = true;
            let _ = a.file.set_len(start);
            a.size = start;
            return Err(LogError::Io(a.path.clone(), e));
        }
        a.len = end;
        self.next_seq += 1;
        let base = start + FRAME_HEADER;
        for b in &payload.blocks {
            a.index(b.kid, (base + b.at as u64) as u32, u64::from(b.count), b.min_t, b.max_t);
        }
        self.spill_if_full();
        Ok(seq)
    }

    /// Whether the active segment is full.
    pub(super) fn wants_seal(&self) -> bool {
        self.active.len >= self.config.segment_bytes
    }

    /// Whether sealing the active segment now would leave something retention can drop to
    /// make room: no sealed segment is left, and the active one is at least a quarter full.
    pub(super) fn worth_sealing_for_room(&self) -> bool {
        self.sealed.is_empty()
            && self.sealing.is_empty()
            && self.active.len >= (self.config.segment_bytes / 4).max(SEG_HEADER + 1)
    }

    /// Starts a new segment; the full one waits for its index: write it with
    /// [`IndexJob::write`] (no lock needed) and hand it back with [`SegmentLog::indexed`].
    pub(super) fn roll(&mut self) -> Result<Option<IndexJob>, LogError> {
        if self.active.len <= SEG_HEADER && self.active.first_seq == self.next_seq {
            return Ok(None); // empty, and the next frame belongs at its start
        }
        let next = new_active(&self.dir, self.next_seq)?;
        let old = std::mem::replace(&mut self.active, next);
        if old.size > old.len {
            // The zeros ahead go: a sealed segment's file is its frames (its index says how
            // long it is; one that is longer is indexed again at open, and its zeros cut).
            old.file.set_len(old.len).and_then(|()| old.file.sync_all()).map_err(io(&old.path))?;
        }
        if old.len <= SEG_HEADER {
            // Nothing in it: no need to keep it.
            remove_file(&old.path);
            crate::private_fs::sync_dir(&self.dir).map_err(io(&self.dir))?;
            return Ok(None);
        }
        let job = IndexJob::of(&self.dir, &old, self.next_seq - 1, &self.floors);
        self.sealing.push(Sealing { active: old, last_seq: job.last_seq });
        Ok(Some(job))
    }

    /// A full segment's index is written: it becomes a sealed segment.
    pub(super) fn indexed(&mut self, index: Index) {
        let Some(i) = self.sealing.iter().position(|s| s.active.first_seq == index.first_seq)
        else {
            return;
        };
        let mut s = self.sealing.remove(i);
        s.active.remove_runs();
        self.admit(s.active, s.last_seq, index);
    }

    /// Takes in a sealed segment (newer than every other) with its index: counts the readings
    /// of its devices that were not erased after it.
    fn admit(&mut self, a: Active, last_seq: u64, index: Index) {
        let mut readings = 0;
        for (kid, count) in index.counts {
            if !self.hidden(&kid, last_seq) {
                readings += count;
                *self.totals.entry(kid).or_default() += count;
            }
        }
        self.sealed.push(Sealed {
            first_seq: a.first_seq,
            last_seq,
            len: a.len,
            path: a.path,
            idx_path: index.idx_path,
            file: a.file,
            idx: index.idx,
            fence: index.fence,
            newest: index.newest,
            readings,
        });
    }

    /// Whether `kid`'s entry in a sealed segment that ends at `last_seq` is hidden.
    fn hidden(&self, kid: &Kid, last_seq: u64) -> bool {
        erased_after(&self.floors, kid, last_seq)
    }

    /// Forgets the floors that no sealed segment or run ends before.
    fn prune_floors(&mut self) {
        let oldest =
            [self.sealed.first().map(|s| s.last_seq), self.sealing.first().map(|s| s.last_seq)];
        let runs = self.unsealed().filter_map(|a| a.runs_ended());
        match oldest.into_iter().flatten().chain(runs).min() {
            Some(last) => self.floors.retain(|_, f| *f > last),
            None => self.floors.clear(),
        }
    }

    /// Seals the active segment (writes its index now) and starts a new one.
    pub(super) fn seal(&mut self) -> Result<(), LogError> {
        if let Some(job) = self.roll()? {
            let index = job.write()?;
            self.indexed(index);
        }
        Ok(())
    }

    /// Hides every reading of `kid` stored so far (the device was erased). Reads the sealed
    /// segments' directories where it has readings (to count what is left in each).
    pub(super) fn erase(&mut self, kid: &Kid) {
        if self.totals.remove(kid).is_some() {
            for s in &mut self.sealed {
                if erased_after(&self.floors, kid, s.last_seq) {
                    continue; // hidden by an earlier erase: not counted
                }
                let Some(stretch) = s.fence.stretch(kid) else { continue };
                match index::find(&s.idx, stretch, kid) {
                    Ok(Some(e)) => s.readings = s.readings.saturating_sub(e.span.count),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(index = %s.idx_path.display(), error = %e, "cannot read a readings index: its reading count stays")
                    }
                }
            }
        }
        for s in &mut self.sealing {
            s.active.devices.remove(kid);
        }
        if let Some(d) = self.active.devices.remove(kid) {
            self.active.held -= d.blocks.len();
        }
        self.floors.insert(*kid, self.next_seq);
    }

    /// How many readings of `kid` are stored.
    pub(super) fn count(&self, kid: &Kid) -> u64 {
        let sealed = self.totals.get(kid).copied().unwrap_or(0);
        let active: u64 = self
            .unsealed()
            .filter_map(|a| a.devices.get(kid).and_then(|d| d.span))
            .map(|span| span.count)
            .sum();
        sealed + active
    }

    /// Bytes in all segments.
    pub(super) fn bytes(&self) -> u64 {
        self.sealed.iter().map(|s| s.len).sum::<u64>() + self.unsealed().map(|a| a.len).sum::<u64>()
    }

    /// The active segment, then the full ones waiting for their index, newest first.
    fn unsealed(&self) -> impl Iterator<Item = &Active> {
        std::iter::once(&self.active).chain(self.sealing.iter().rev().map(|s| &s.active))
    }

    /// Sealed segments.
    #[cfg(test)]
    pub(super) fn sealed_segments(&self) -> usize {
        self.sealed.len() + self.sealing.len()
    }

    /// Where `kid`'s readings are, newest segment first (no I/O). Read them with [`read`]
    /// after releasing the log (files stay readable after retention unlinks them).
    pub(super) fn sources(&self, kid: &Kid) -> Vec<Source> {
        let mut out = Vec::new();
        for a in self.unsealed() {
            if let Some(d) = a.devices.get(kid)
                && let Some(span) = d.span
            {
                out.push(Source {
                    file: a.file.clone(),
                    path: a.path.clone(),
                    len: a.len,
                    blocks: Blocks::Listed(span, a.runs_of(kid, &self.floors), d.blocks.clone()),
                });
            }
        }
        for s in self.sealed.iter().rev() {
            if self.hidden(kid, s.last_seq) {
                continue;
            }
            if let Some(stretch) = s.fence.stretch(kid) {
                out.push(Source {
                    file: s.file.clone(),
                    path: s.path.clone(),
                    len: s.len,
                    blocks: Blocks::Indexed(s.idx.clone(), stretch, s.newest),
                });
            }
        }
        out
    }

    /// Drops sealed segments, oldest first, while the log is over `max_bytes`, the oldest
    /// holds only readings of devices that have `max_per_device` newer ones, or less than
    /// `free_need` bytes were freed. Reads the oldest segment's directory.
    pub(super) fn retain(&mut self, r: Retention) -> Vec<Dropped> {
        let mut unsealed: HashMap<Kid, u64> = HashMap::new();
        for a in self.unsealed() {
            for (kid, d) in &a.devices {
                *unsealed.entry(*kid).or_default() += d.span.map_or(0, |s| s.count);
            }
        }
        let mut bytes = self.bytes();
        let mut freed = 0;
        let mut dropped = Vec::new();
        while let Some(oldest) = self.sealed.first() {
            if oldest.last_seq > r.snapshot_seq {
                break;
            }
            let counts = match index::entries(&oldest.idx, &oldest.fence) {
                Ok(entries) => Some(
                    entries
                        .into_iter()
                        .filter(|e| !self.hidden(&e.kid, oldest.last_seq))
                        .map(|e| (e.kid, e.span.count))
                        .collect::<Vec<_>>(),
                ),
                Err(e) => {
                    tracing::warn!(index = %oldest.idx_path.display(), error = %e, "cannot read a readings index: its segment is dropped only for bytes");
                    None
                }
            };
            let covered = counts.as_ref().is_some_and(|counts| {
                counts.iter().all(|(kid, count)| {
                    let total = self.totals.get(kid).copied().unwrap_or(0)
                        + unsealed.get(kid).copied().unwrap_or(0);
                    total.saturating_sub(*count) >= r.max_per_device
                })
            });
            let for_space = bytes <= r.max_bytes && !covered;
            if for_space && freed >= r.free_need {
                break;
            }
            let s = self.sealed.remove(0);
            for (kid, count) in counts.into_iter().flatten() {
                if let Some(t) = self.totals.get_mut(&kid) {
                    *t = t.saturating_sub(count);
                    if *t == 0 {
                        self.totals.remove(&kid);
                    }
                }
            }
            bytes -= s.len;
            freed += s.len;
            remove_file(&s.path);
            kill_point!("retention");
            remove_file(&s.idx_path);
            let readings = s.readings;
            let (first_seq, last_seq) = (s.first_seq, s.last_seq);
            dropped.push(Dropped { first_seq, last_seq, readings, for_space });
        }
        if !dropped.is_empty() {
            let _ = crate::private_fs::sync_dir(&self.dir);
            self.prune_floors();
        }
        dropped
    }

    /// Which devices' readings the segment starting at `first_seq` still counts (no I/O).
    pub(super) fn counted(&self, first_seq: u64) -> Option<Counted> {
        if let Some(s) = self.sealed.iter().find(|s| s.first_seq == first_seq) {
            let erased = self.floors.keys().filter(|k| erased_after(&self.floors, k, s.last_seq));
            return Some(Counted::Except(erased.copied().collect()));
        }
        self.unsealed().find(|a| a.first_seq == first_seq).map(|a| {
            let kids = a.devices.iter().filter(|(_, d)| d.span.is_some()).map(|(k, _)| *k);
            Counted::Only(kids.collect())
        })
    }

    /// Every segment, oldest first, as a frame reader sees it (no I/O: handles are shared).
    pub(super) fn views(&self) -> Vec<SegmentView> {
        let mut out = Vec::with_capacity(self.sealed.len() + self.sealing.len() + 1);
        for s in &self.sealed {
            out.push(SegmentView {
                first_seq: s.first_seq,
                last_seq: s.last_seq,
                len: s.len,
                readings: s.readings,
                active: false,
                file: s.file.clone(),
            });
        }
        let unsealed = self.sealing.iter().map(|s| (&s.active, s.last_seq, false));
        for (a, last_seq, active) in
            unsealed.chain(std::iter::once((&self.active, self.next_seq - 1, true)))
        {
            out.push(SegmentView {
                first_seq: a.first_seq,
                last_seq,
                len: a.len,
                readings: a.devices.values().filter_map(|d| d.span).map(|s| s.count).sum(),
                active,
                file: a.file.clone(),
            });
        }
        out
    }

    /// The first sequence number still stored.
    pub(super) fn first_seq(&self) -> u64 {
        self.sealed.first().map_or(self.active.first_seq, |s| s.first_seq)
    }
}

/// Whether `kid` was erased after the segment that ends at `last_seq` (by its floor, the
/// sequence of the erase): its entry in that segment's index no longer counts.
fn erased_after(floors: &HashMap<Kid, u64>, kid: &Kid, last_seq: u64) -> bool {
    floors.get(kid).is_some_and(|&f| last_seq < f)
}

impl Active {
    fn index(&mut self, kid: Kid, at: u32, count: u64, min_t: i64, max_t: i64) {
        let d = self.devices.entry(kid).or_default();
        d.span.get_or_insert(Span::EMPTY).add(count, min_t, max_t);
        d.blocks.push(at);
        self.held += 1;
    }
}

/// Reads up to the newest `limit` readings of `kid` from `sources` (newest segment first):
/// sorted oldest first, a reading stored twice (resent after a lost acknowledgement: same
/// time and name) returned once.
pub(super) fn read(
    sources: &[Source],
    kid: &Kid,
    limit: usize,
) -> Result<Vec<StoredReading>, LogError> {
    let mut out: Vec<StoredReading> = Vec::new();
    let mut skipped = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    for src in sources {
        // Older segments cannot hold anything newer than what is already enough.
        let enough = |newest: i64| out.len() >= limit && newest < out[0].time_ms;
        let (span, entry) = match &src.blocks {
            Blocks::Listed(span, ..) => (*span, None),
            // Without reading its directory if the whole segment is older.
            Blocks::Indexed(_, _, newest) if enough(*newest) => continue,
            Blocks::Indexed(idx, stretch, _) => {
                match index::find(idx, *stretch, kid).map_err(io(&src.path))? {
                    Some(e) => (e.span, Some((idx, e))),
                    None => continue,
                }
            }
        };
        if enough(span.max_t) {
            continue;
        }
        let offsets = match (entry, &src.blocks) {
            (Some((idx, e)), _) => index::offsets(idx, &e).map_err(io(&src.path))?,
            (None, Blocks::Listed(_, runs, held)) => {
                runs::offsets(runs, kid, held).map_err(io(&src.path))?
            }
            (None, Blocks::Indexed(..)) => continue,
        };
        // One read covers a block header, and usually the whole block.
        const HEAD: usize = 512;
        const _: () = assert!(HEAD >= MAX_BLOCK_HEADER);
        let (mut head, mut big) = ([0u8; HEAD], Vec::new());
        for at in offsets {
            let at = u64::from(at);
            let avail = src.len.saturating_sub(at);
            let want = avail.min(head.len() as u64) as usize;
            if want == 0 {
                skipped.push((at, "block offset"));
                continue;
            }
            src.file.read_exact_at(&mut head[..want], at).map_err(io(&src.path))?;
            let len = match records::block_len(&head[..want]) {
                Ok(len) if len as u64 <= avail => len,
                Ok(_) => {
                    skipped.push((at, "block length"));
                    continue;
                }
                Err(e) => {
                    skipped.push((at, e.0));
                    continue;
                }
            };
            let block = if len <= want {
                &head[..len]
            } else {
                big.resize(len, 0);
                src.file.read_exact_at(&mut big, at).map_err(io(&src.path))?;
                &big[..]
            };
            match records::decode_block(block, kid) {
                Ok(readings) => out.extend(readings),
                // Damage in one block (bit rot) costs its readings, not the whole query.
                Err(e) => skipped.push((at, e.0)),
            }
        }
        if let Some((at, why)) = skipped.first() {
            tracing::warn!(segment = %src.path.display(), blocks = skipped.len(), first_at = at, reason = why, "skipped damaged blocks of readings");
            skipped.clear();
        }
        out.sort_by(|a, b| a.time_ms.cmp(&b.time_ms).then_with(|| a.name.cmp(&b.name)));
        out.dedup_by(|a, b| a.time_ms == b.time_ms && a.name == b.name);
        let excess = out.len().saturating_sub(limit);
        out.drain(..excess);
    }
    Ok(out)
}

/// A segment in `dir` written by a newer hub (its magic names a later log format), with that
/// format: the store is refused before anything is written (recovery would cut it).
pub(super) fn newer_segment(dir: &Path) -> Option<(PathBuf, char)> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries.flatten().map(|e| e.path()).find_map(|path| {
        if path.extension().is_none_or(|x| x != "seg") {
            return None;
        }
        let mut magic = [0u8; 8];
        File::open(&path).ok()?.read_exact_at(&mut magic, 0).ok()?;
        (magic[..7] == SEG_MAGIC[..7] && magic[7] > SEG_MAGIC[7])
            .then(|| (path, char::from(magic[7])))
    })
}

mod index;
mod recovery;
mod runs;
mod segment_file;
#[cfg(test)]
mod tests;

use index::{Fence, Index, Stretch, load_index};
use recovery::*;
pub(super) use recovery::{find_frame, frame_at};
use segment_file::{AHEAD, encode_frame, new_active, remove_file, write_zeros};
