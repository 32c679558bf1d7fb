//! The readings log: readings and link-state changes as one append-only sequence of frames in
//! segment files (`readings/<first seq>.seg`). A group commit is one frame — length, CRC32,
//! sequence number, payload — made durable by one fdatasync before anything in it is
//! acknowledged (DESIGN, durability contract); a torn tail is cut off at open. Sealed segments
//! get an index file (`.idx`: per device, where its blocks are; derived, rebuilt when missing),
//! so queries never scan; retention drops whole segments, oldest first.

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
const IDX_MAGIC: &[u8; 8] = b"HRTHIDX1";
/// Magic, first and last sequence, segment length, device count, directory length.
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

#[derive(Debug)]
struct SealedDevice {
    span: Span,
    blocks: u32,
    /// Where its block offsets are in the index file.
    offsets_at: u64,
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
    devices: HashMap<Kid, SealedDevice>,
    /// The readings `devices` count, kept with them: every `views` call (the upstream reader
    /// makes one per commit when caught up) would otherwise add up every device of every
    /// sealed segment.
    readings: u64,
}

impl Sealed {
    /// Counts the readings of `devices` again (after devices were dropped from it).
    fn recount(&mut self) {
        self.readings = self.devices.values().map(|d| d.span.count).sum();
    }
}

#[derive(Debug)]
struct Active {
    first_seq: u64,
    len: u64,
    path: PathBuf,
    file: Arc<File>,
    devices: HashMap<Kid, ActiveDevice>,
}

/// A full segment waiting for its index file, which is written off the commit path.
#[derive(Debug)]
struct Sealing {
    active: Active,
    last_seq: u64,
    /// Devices erased meanwhile (their blocks are still in the index being written).
    erased: HashSet<Kid>,
}

/// What writing a sealed segment's index file needs (no access to the log).
#[derive(Debug)]
pub(super) struct IndexJob {
    dir: PathBuf,
    first_seq: u64,
    last_seq: u64,
    len: u64,
    devices: Vec<(Kid, Span, Vec<u32>)>,
}

/// A written index file.
#[derive(Debug)]
pub(super) struct Index {
    first_seq: u64,
    idx_path: PathBuf,
    idx: Arc<File>,
    devices: HashMap<Kid, SealedDevice>,
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
}

/// Where to read one device's readings in one segment.
#[derive(Debug)]
pub(super) struct Source {
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    span: Span,
    blocks: Blocks,
}

#[derive(Debug)]
enum Blocks {
    Listed(Vec<u32>),
    Indexed { idx: Arc<File>, at: u64, n: u32 },
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
        let mut log = match active {
            Some((active, next_seq)) => {
                let dir = dir.to_path_buf();
                Self { dir, config, sealed, sealing: Vec::new(), active, next_seq, broken: false }
            }
            None => {
                let first = min_next_seq.max(1);
                let active = new_active(dir, first)?;
                Self {
                    dir: dir.to_path_buf(),
                    config,
                    sealed,
                    sealing: Vec::new(),
                    active,
                    next_seq: first,
                    broken: false,
                }
            }
        };
        if log.next_seq < min_next_seq {
            // The log is behind the catalog (lost or restored from an old copy): continue at
            // a sequence the catalog has not seen, in a segment of its own.
            log.next_seq = min_next_seq;
            log.seal()?;
        }
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
            self.broken = false;
        }
        let seq = self.next_seq;
        let start = a.len;
        let end = start + FRAME_HEADER + payload.bytes.len() as u64;
        if end > u64::from(u32::MAX) {
            return Err(LogError::Full(a.path.clone()));
        }
        let frame = encode_frame(seq, &payload.bytes);
        let written = a.file.write_all_at(&frame, start).and_then(|()| {
            kill_point!("commit");
            a.file.sync_data()
        });
        if let Err(e) = written {
            self.broken = true;
            let _ = a.file.set_len(start);
            return Err(LogError::Io(a.path.clone(), e));
        }
        a.len = end;
        self.next_seq += 1;
        let base = start + FRAME_HEADER;
        for b in &payload.blocks {
            a.index(b.kid, (base + b.at as u64) as u32, u64::from(b.count), b.min_t, b.max_t);
        }
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
        if old.len <= SEG_HEADER {
            // Nothing in it: no need to keep it.
            remove_file(&old.path);
            crate::private_fs::sync_dir(&self.dir).map_err(io(&self.dir))?;
            return Ok(None);
        }
        let job = IndexJob::of(&self.dir, &old, self.next_seq - 1);
        self.sealing.push(Sealing { active: old, last_seq: job.last_seq, erased: HashSet::new() });
        Ok(Some(job))
    }

    /// A full segment's index is written: it becomes a sealed segment.
    pub(super) fn indexed(&mut self, mut index: Index) {
        let Some(i) = self.sealing.iter().position(|s| s.active.first_seq == index.first_seq)
        else {
            return;
        };
        let s = self.sealing.remove(i);
        index.devices.retain(|kid, _| !s.erased.contains(kid));
        self.sealed.push(Sealed::new(s.active, s.last_seq, index));
    }

    /// Seals the active segment (writes its index now) and starts a new one.
    pub(super) fn seal(&mut self) -> Result<(), LogError> {
        if let Some(job) = self.roll()? {
            let index = job.write()?;
            self.indexed(index);
        }
        Ok(())
    }

    /// Hides every reading of `kid` stored so far (the device was erased).
    pub(super) fn erase(&mut self, kid: &Kid) {
        for s in &mut self.sealed {
            if let Some(d) = s.devices.remove(kid) {
                s.readings -= d.span.count;
            }
        }
        for s in &mut self.sealing {
            s.active.devices.remove(kid);
            s.erased.insert(*kid);
        }
        self.active.devices.remove(kid);
    }

    /// How many readings of `kid` are stored.
    pub(super) fn count(&self, kid: &Kid) -> u64 {
        let sealed: u64 =
            self.sealed.iter().filter_map(|s| s.devices.get(kid)).map(|d| d.span.count).sum();
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

    /// Where `kid`'s readings are, newest segment first. Read them with [`read`] after
    /// releasing the log (files stay readable after retention unlinks them).
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
                    span,
                    blocks: Blocks::Listed(d.blocks.clone()),
                });
            }
        }
        for s in self.sealed.iter().rev() {
            if let Some(d) = s.devices.get(kid) {
                out.push(Source {
                    file: s.file.clone(),
                    path: s.path.clone(),
                    len: s.len,
                    span: d.span,
                    blocks: Blocks::Indexed { idx: s.idx.clone(), at: d.offsets_at, n: d.blocks },
                });
            }
        }
        out
    }

    /// Drops sealed segments, oldest first, while the log is over `max_bytes`, the oldest
    /// holds only readings of devices that have `max_per_device` newer ones, or less than
    /// `free_need` bytes were freed.
    pub(super) fn retain(&mut self, r: Retention) -> Vec<Dropped> {
        let mut totals: HashMap<Kid, u64> = HashMap::new();
        for s in &self.sealed {
            for (kid, d) in &s.devices {
                *totals.entry(*kid).or_default() += d.span.count;
            }
        }
        for a in self.unsealed() {
            for (kid, d) in &a.devices {
                *totals.entry(*kid).or_default() += d.span.map_or(0, |s| s.count);
            }
        }
        let mut bytes = self.bytes();
        let mut freed = 0;
        let mut dropped = Vec::new();
        while let Some(oldest) = self.sealed.first() {
            if oldest.last_seq > r.snapshot_seq {
                break;
            }
            let covered = oldest.devices.iter().all(|(kid, d)| {
                totals.get(kid).copied().unwrap_or(0) - d.span.count >= r.max_per_device
            });
            let for_space = bytes <= r.max_bytes && !covered;
            if for_space && freed >= r.free_need {
                break;
            }
            let s = self.sealed.remove(0);
            for (kid, d) in &s.devices {
                if let Some(t) = totals.get_mut(kid) {
                    *t -= d.span.count;
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
        }
        dropped
    }

    /// The devices whose readings the segment starting at `first_seq` still counts.
    pub(super) fn segment_kids(&self, first_seq: u64) -> Option<std::collections::HashSet<Kid>> {
        if let Some(s) = self.sealed.iter().find(|s| s.first_seq == first_seq) {
            return Some(s.devices.keys().copied().collect());
        }
        self.unsealed()
            .find(|a| a.first_seq == first_seq)
            .map(|a| a.devices.iter().filter(|(_, d)| d.span.is_some()).map(|(k, _)| *k).collect())
    }

    /// Every segment, oldest first, as a frame reader sees it (no I/O: handles are shared).
    pub(super) fn views(&self) -> Vec<SegmentView> {
        let mut out = Vec::with_capacity(self.sealed.len() + self.sealing.len() + 1);
        for s in &self.sealed {
            out.push(SegmentView {
                first_seq: s.first_seq,
                last_seq: s.last_seq,
                len: s.len,
                readings: {
                    debug_assert_eq!(
                        s.readings,
                        s.devices.values().map(|d| d.span.count).sum::<u64>()
                    );
                    s.readings
                },
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

impl Active {
    fn index(&mut self, kid: Kid, at: u32, count: u64, min_t: i64, max_t: i64) {
        let d = self.devices.entry(kid).or_default();
        d.span.get_or_insert(Span::EMPTY).add(count, min_t, max_t);
        d.blocks.push(at);
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
        if out.len() >= limit && src.span.max_t < out[0].time_ms {
            continue;
        }
        let offsets = match &src.blocks {
            Blocks::Listed(v) => v.clone(),
            Blocks::Indexed { idx, at, n } => {
                let mut raw = vec![0u8; *n as usize * 4];
                idx.read_exact_at(&mut raw, *at).map_err(io(&src.path))?;
                raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
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

fn encode_frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(payload);
    let mut frame = Vec::with_capacity(FRAME_HEADER as usize + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc.finalize().to_le_bytes());
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), error = %e, "cannot delete a readings log file");
    }
}

fn new_active(dir: &Path, first_seq: u64) -> Result<Active, LogError> {
    let path = dir.join(format!("{first_seq:020}.seg"));
    let file = crate::private_fs::create(&path).map_err(io(&path))?;
    let mut header = SEG_MAGIC.to_vec();
    header.extend_from_slice(&first_seq.to_le_bytes());
    file.write_all_at(&header, 0).map_err(io(&path))?;
    file.sync_all().map_err(io(&path))?;
    crate::private_fs::sync_dir(dir).map_err(io(dir))?;
    Ok(Active { first_seq, len: SEG_HEADER, path, file: Arc::new(file), devices: HashMap::new() })
}

mod index;
mod recovery;
#[cfg(test)]
mod tests;

use index::load_index;
use recovery::*;
pub(super) use recovery::{find_frame, frame_at};
