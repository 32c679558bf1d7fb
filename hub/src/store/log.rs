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
use super::link_state::Change;
use super::records::{self, Item, MAX_BLOCK_HEADER, Payload};

const SEG_MAGIC: &[u8; 8] = b"HRTHLOG1";
/// Magic, then the segment's first sequence number.
const SEG_HEADER: u64 = 16;
/// Payload length (u32), CRC32 of sequence and payload (u32), sequence number (u64).
const FRAME_HEADER: u64 = 16;
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
        replay: &mut dyn FnMut(u64, Kid, Change),
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
        let written = a.file.write_all_at(&frame, start).and_then(|()| a.file.sync_data());
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
            s.devices.remove(kid);
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

    /// Drops sealed segments, oldest first, while the log is over `max_bytes` or the oldest
    /// holds only readings of devices that have `max_per_device` newer ones.
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
        let mut dropped = Vec::new();
        while let Some(oldest) = self.sealed.first() {
            if oldest.last_seq > r.snapshot_seq {
                break;
            }
            let covered = oldest.devices.iter().all(|(kid, d)| {
                totals.get(kid).copied().unwrap_or(0) - d.span.count >= r.max_per_device
            });
            if bytes <= r.max_bytes && !covered {
                break;
            }
            let s = self.sealed.remove(0);
            for (kid, d) in &s.devices {
                if let Some(t) = totals.get_mut(kid) {
                    *t -= d.span.count;
                }
            }
            bytes -= s.len;
            remove_file(&s.path);
            remove_file(&s.idx_path);
            dropped.push(Dropped { first_seq: s.first_seq, last_seq: s.last_seq });
        }
        if !dropped.is_empty() {
            let _ = crate::private_fs::sync_dir(&self.dir);
        }
        dropped
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

/// How a scan of a segment ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// At the end of the file.
    Clean,
    /// At a frame that is incomplete or fails its check, within one group commit of the end of
    /// the file and with nothing valid after it: the last write was torn by a crash.
    Torn,
    /// At a bad frame with more data after it: damage, not a crash.
    Damaged,
}

/// More than this after the last valid frame is not one torn group commit.
const TORN_MAX: u64 = 8 << 20;

struct Scan {
    /// Where the valid frames end.
    len: u64,
    last_seq: u64,
    devices: HashMap<Kid, ActiveDevice>,
    end: End,
    replayed: u64,
    /// Damaged frames skipped over (a valid frame followed them).
    skipped: u64,
}

/// A frame that passes its checks: its end and payload.
fn frame_at(file: &File, at: u64, size: u64, seq: u64) -> Option<(u64, Vec<u8>)> {
    let mut h = [0u8; FRAME_HEADER as usize];
    file.read_exact_at(&mut h, at).ok()?;
    let len = u64::from(u32::from_le_bytes([h[0], h[1], h[2], h[3]]));
    let end = at + FRAME_HEADER + len;
    if len > MAX_FRAME || end > size || h[8..16] != seq.to_le_bytes() {
        return None;
    }
    let mut frame = vec![0u8; (FRAME_HEADER + len) as usize];
    file.read_exact_at(&mut frame, at).ok()?;
    frame_ok(&frame).then(|| (end, frame.split_off(FRAME_HEADER as usize)))
}

/// Whether `frame` (header and payload, exactly) passes its CRC.
fn frame_ok(frame: &[u8]) -> bool {
    let Some((h, payload)) = frame.split_at_checked(FRAME_HEADER as usize) else { return false };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[8..16]);
    hasher.update(payload);
    payload.len() as u64 == u64::from(u32::from_le_bytes([h[0], h[1], h[2], h[3]]))
        && hasher.finalize() == u32::from_le_bytes([h[4], h[5], h[6], h[7]])
}

/// The first valid frame at or after `from` whose sequence is `min_seq` or later (but not
/// later than that many frames could reach): where it starts, and its sequence.
fn find_frame(file: &File, from: u64, size: u64, min_seq: u64) -> Option<(u64, u64)> {
    let mut rest = vec![0u8; usize::try_from(size.checked_sub(from)?).ok()?];
    file.read_exact_at(&mut rest, from).ok()?;
    let max_seq = min_seq + rest.len() as u64 / FRAME_HEADER;
    (0..rest.len().saturating_sub(FRAME_HEADER as usize - 1)).find_map(|i| {
        let h = &rest[i..i + FRAME_HEADER as usize];
        let seq = u64::from_le_bytes(h[8..16].try_into().ok()?);
        let len = u32::from_le_bytes(h[..4].try_into().ok()?) as usize;
        let frame = rest.get(i..i + FRAME_HEADER as usize + len)?;
        ((min_seq..=max_seq).contains(&seq) && frame_ok(frame)).then_some((from + i as u64, seq))
    })
}

/// Reads a segment's frames in order, indexing blocks (those not hidden by a floor) and
/// replaying link-state changes of frames after `replay_after`. A damaged frame followed by a
/// valid one is skipped; one with nothing valid after it ends the scan.
fn scan(
    file: &File,
    path: &Path,
    first_seq: u64,
    floors: &HashMap<Kid, u64>,
    replay_after: u64,
    replay: &mut dyn FnMut(u64, Kid, Change),
) -> Result<Scan, LogError> {
    let size = file.metadata().map_err(io(path))?.len();
    let mut s = Scan {
        len: 0,
        last_seq: first_seq - 1,
        devices: HashMap::new(),
        end: End::Clean,
        replayed: 0,
        skipped: 0,
    };
    let mut header = [0u8; SEG_HEADER as usize];
    if size < SEG_HEADER || file.read_exact_at(&mut header, 0).is_err() {
        s.end = End::Torn;
        return Ok(s);
    }
    if &header[..8] != SEG_MAGIC || header[8..] != first_seq.to_le_bytes() {
        s.end = End::Damaged;
        return Ok(s);
    }
    s.len = SEG_HEADER;
    while s.len < size {
        let (at, seq) = (s.len, s.last_seq + 1);
        let found = frame_at(file, at, size, seq)
            .and_then(|(end, payload)| Some((end, records::scan(&payload).ok()?)));
        let Some((end, items)) = found else {
            // Damage, if a valid next frame follows; the torn tail of a crash, if none does.
            if let Some((next, next_seq)) = find_frame(file, at + 1, size, seq + 1) {
                s.skipped += next_seq - seq;
                (s.len, s.last_seq) = (next, next_seq - 1);
                continue;
            }
            s.end = if size - at <= TORN_MAX { End::Torn } else { End::Damaged };
            return Ok(s);
        };
        let replaying = seq > replay_after;
        for item in items {
            match item {
                Item::Block(b) => {
                    if floors.get(&b.kid).is_some_and(|&f| seq < f) {
                        continue;
                    }
                    let d = s.devices.entry(b.kid).or_default();
                    d.span.get_or_insert(Span::EMPTY).add(u64::from(b.count), b.min_t, b.max_t);
                    d.blocks.push((at + FRAME_HEADER + b.at as u64) as u32);
                }
                Item::Change(kid, change) if replaying => replay(seq, kid, change),
                Item::Change(..) => {}
            }
        }
        s.replayed += u64::from(replaying);
        (s.len, s.last_seq) = (end, seq);
    }
    Ok(s)
}

/// What opening needs while it reads the segments, and what it found.
struct Recovery<'a> {
    dir: &'a Path,
    floors: &'a HashMap<Kid, u64>,
    replay_after: u64,
    replay: &'a mut dyn FnMut(u64, Kid, Change),
    report: OpenReport,
}

impl Recovery<'_> {
    fn scan(&mut self, file: &File, path: &Path, first_seq: u64) -> Result<Scan, LogError> {
        let s = scan(file, path, first_seq, self.floors, self.replay_after, self.replay)?;
        self.report.replayed_frames += s.replayed;
        self.report.skipped_frames += s.skipped;
        Ok(s)
    }

    /// The last segment: torn tail cut off, damage kept aside; with the next sequence number.
    fn active(
        &mut self,
        path: PathBuf,
        file: File,
        first_seq: u64,
    ) -> Result<(Active, u64), LogError> {
        let s = self.scan(&file, &path, first_seq)?;
        let (dir, report) = (self.dir, &mut self.report);
        if s.skipped > 0 {
            tracing::error!(segment = %path.display(), frames = s.skipped, "readings log: damaged frames skipped");
        }
        let size = file.metadata().map_err(io(&path))?.len();
        if s.end == End::Damaged {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let copy = path.with_extension(format!("seg.damaged-{stamp}"));
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            crate::private_fs::write(&copy, &bytes).map_err(io(&copy))?;
            tracing::error!(segment = %path.display(), copy = %copy.display(), valid_bytes = s.len, "readings log damaged: kept a copy, continuing after the last valid frame");
            report.damaged_copy = Some(copy);
        } else if s.end == End::Torn {
            tracing::warn!(segment = %path.display(), bytes = size - s.len, "cut off a torn last frame (a crash during a group commit that was never acknowledged)");
            report.torn_bytes += size - s.len;
        }
        if s.len < SEG_HEADER {
            // Not even a header: start the segment anew.
            drop(file);
            let active = new_active(dir, first_seq)?;
            return Ok((active, first_seq));
        }
        if size != s.len {
            file.set_len(s.len).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }
        let next = s.last_seq + 1;
        Ok((Active { first_seq, len: s.len, path, file: Arc::new(file), devices: s.devices }, next))
    }

    /// A sealed segment: its index (rebuilt if missing), its frames read only if their changes
    /// are not in the snapshot.
    fn sealed(&mut self, path: PathBuf, file: File, first_seq: u64) -> Result<Sealed, LogError> {
        let (dir, floors, replay_after) = (self.dir, self.floors, self.replay_after);
        let idx_path = dir.join(format!("{first_seq:020}.idx"));
        let size = file.metadata().map_err(io(&path))?.len();
        let mut loaded = load_index(&idx_path, first_seq, size);
        if let Some(mut sealed) = loaded.take_if(|s| s.last_seq <= replay_after) {
            sealed.file = Arc::new(file);
            sealed.path = path;
            apply_floors(&mut sealed, floors);
            return Ok(sealed);
        }
        // Its changes must be replayed, or its index is missing: read it through.
        let s = self.scan(&file, &path, first_seq)?;
        if s.end != End::Clean || s.skipped > 0 {
            tracing::error!(segment = %path.display(), valid_bytes = s.len, skipped = s.skipped, "sealed readings log segment is damaged; using what is valid");
        }
        match loaded {
            // The index was written when the segment was whole: it still locates every block.
            Some(mut sealed) => {
                sealed.file = Arc::new(file);
                sealed.path = path;
                apply_floors(&mut sealed, floors);
                Ok(sealed)
            }
            None => {
                self.report.reindexed += 1;
                let active = Active {
                    first_seq,
                    len: s.len,
                    path,
                    file: Arc::new(file),
                    devices: s.devices,
                };
                let index = IndexJob::of(dir, &active, s.last_seq).write()?;
                Ok(Sealed::new(active, s.last_seq, index))
            }
        }
    }
}

fn apply_floors(sealed: &mut Sealed, floors: &HashMap<Kid, u64>) {
    let last = sealed.last_seq;
    sealed.devices.retain(|kid, _| floors.get(kid).is_none_or(|&f| last >= f));
}

impl IndexJob {
    fn of(dir: &Path, a: &Active, last_seq: u64) -> Self {
        let mut devices: Vec<(Kid, Span, Vec<u32>)> = a
            .devices
            .iter()
            .map(|(kid, d)| (*kid, d.span.unwrap_or(Span::EMPTY), d.blocks.clone()))
            .collect();
        devices.sort_unstable_by_key(|d| d.0);
        Self { dir: dir.to_path_buf(), first_seq: a.first_seq, last_seq, len: a.len, devices }
    }

    /// Writes the index file (`<first seq>.idx`: a directory with its CRC, then the block
    /// offsets). Derived data: a lost or damaged index is rebuilt from its segment at start.
    pub(super) fn write(&self) -> Result<Index, LogError> {
        let idx_path = self.dir.join(format!("{:020}.idx", self.first_seq));
        let dir_len: usize = self.devices.iter().map(|(k, ..)| 1 + k.as_bytes().len() + 36).sum();
        let mut offsets_at = (IDX_HEADER + dir_len + 4) as u64;
        let mut entries = Vec::with_capacity(dir_len);
        let mut devices = HashMap::with_capacity(self.devices.len());
        let mut offsets = Vec::new();
        for (kid, span, blocks) in &self.devices {
            entries.push(kid.as_bytes().len() as u8);
            entries.extend_from_slice(kid.as_bytes());
            entries.extend_from_slice(&span.count.to_le_bytes());
            entries.extend_from_slice(&span.min_t.to_le_bytes());
            entries.extend_from_slice(&span.max_t.to_le_bytes());
            entries.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
            entries.extend_from_slice(&offsets_at.to_le_bytes());
            let d = SealedDevice { span: *span, blocks: blocks.len() as u32, offsets_at };
            devices.insert(*kid, d);
            offsets_at += blocks.len() as u64 * 4;
            for o in blocks {
                offsets.extend_from_slice(&o.to_le_bytes());
            }
        }
        let mut out = Vec::with_capacity(IDX_HEADER + entries.len() + 4 + offsets.len());
        out.extend_from_slice(IDX_MAGIC);
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.extend_from_slice(&self.last_seq.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&(devices.len() as u32).to_le_bytes());
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&entries);
        out.extend_from_slice(&crc32fast::hash(&out).to_le_bytes());
        out.extend_from_slice(&offsets);
        crate::private_fs::write(&idx_path, &out).map_err(io(&idx_path))?;
        let idx = File::open(&idx_path).map_err(io(&idx_path))?;
        Ok(Index { first_seq: self.first_seq, idx_path, idx: Arc::new(idx), devices })
    }
}

impl Sealed {
    fn new(a: Active, last_seq: u64, index: Index) -> Self {
        Sealed {
            first_seq: a.first_seq,
            last_seq,
            len: a.len,
            path: a.path,
            idx_path: index.idx_path,
            file: a.file,
            idx: index.idx,
            devices: index.devices,
        }
    }
}

/// A segment's index, if it is there, intact and of this segment (`seg_len` long).
fn load_index(idx_path: &Path, first_seq: u64, seg_len: u64) -> Option<Sealed> {
    let idx = File::open(idx_path).ok()?;
    let mut h = [0u8; IDX_HEADER];
    idx.read_exact_at(&mut h, 0).ok()?;
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap_or_default());
    let (first, last, len, n, dir_len) =
        (u64_at(8), u64_at(16), u64_at(24), u32_at(32), u32_at(36));
    if &h[..8] != IDX_MAGIC || first != first_seq || len != seg_len {
        return None;
    }
    let mut rest = vec![0u8; dir_len as usize + 4];
    idx.read_exact_at(&mut rest, IDX_HEADER as u64).ok()?;
    let (entries, crc) = rest.split_at(dir_len as usize);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h);
    hasher.update(entries);
    if hasher.finalize().to_le_bytes() != crc {
        return None;
    }
    let mut devices = HashMap::with_capacity(n as usize);
    let mut e = entries;
    for _ in 0..n {
        let (&kl, r) = e.split_first()?;
        let (kid, r) = r.split_at_checked(usize::from(kl))?;
        let (f, r) = r.split_at_checked(36)?;
        let kid = Kid::new(kid).ok()?;
        let f64_ = |i: usize| f[i..i + 8].try_into().ok();
        let span = Span {
            count: u64::from_le_bytes(f64_(0)?),
            min_t: i64::from_le_bytes(f64_(8)?),
            max_t: i64::from_le_bytes(f64_(16)?),
        };
        let blocks = u32::from_le_bytes(f[24..28].try_into().ok()?);
        let offsets_at = u64::from_le_bytes(f64_(28)?);
        devices.insert(kid, SealedDevice { span, blocks, offsets_at });
        e = r;
    }
    Some(Sealed {
        first_seq,
        last_seq: last,
        len,
        path: PathBuf::new(),
        idx_path: idx_path.to_path_buf(),
        file: Arc::new(idx.try_clone().ok()?),
        idx: Arc::new(idx),
        devices,
    })
}

#[cfg(test)]
mod tests {
    use protocol::link::PeerState;
    use protocol::oscore::{KeyUsage, WindowState};
    use protocol::senml::{Reading, UnixTimeMillis, Value};

    use super::*;

    fn kid() -> Kid {
        Kid::new(&[1, 2, 3]).expect("kid")
    }

    /// A frame with one reading at `t` and a checkpoint whose window is at `t`.
    fn payload(t: i64) -> Payload {
        let mut p = Payload::default();
        let r = Reading {
            name: "urn:dev:x:temp".into(),
            unit: Some("Cel".into()),
            value: Value::Number(20.5),
            time: UnixTimeMillis(t),
        };
        p.readings(&kid(), &[r]);
        let cp = PeerState {
            window: Some(WindowState { highest: t as u64, seen: 1 }),
            usage: KeyUsage::default(),
            endpoint: None,
        };
        p.change(&kid(), Change::Checkpoint(cp));
        p
    }

    struct Opened {
        log: SegmentLog,
        report: OpenReport,
        /// Highest window replayed.
        window: u64,
    }

    fn open(dir: &Path, segment_bytes: u64) -> Opened {
        let mut window = 0;
        let mut replay = |_: u64, _: Kid, c: Change| {
            if let Change::Checkpoint(cp) = c {
                window = cp.window.map_or(0, |w| w.highest);
            }
        };
        let (log, report) =
            SegmentLog::open(dir, LogConfig { segment_bytes }, &HashMap::new(), 0, 1, &mut replay)
                .expect("open");
        Opened { log, report, window }
    }

    fn times(log: &SegmentLog) -> Vec<i64> {
        read(&log.sources(&kid()), &kid(), 1000).expect("read").iter().map(|r| r.time_ms).collect()
    }

    fn segment(dir: &Path) -> PathBuf {
        dir.join(format!("{:020}.seg", 1))
    }

    #[test]
    fn a_torn_last_frame_is_cut_off_and_the_log_goes_on() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut o = open(tmp.path(), 1 << 20);
        for t in 1..=3 {
            o.log.append(&payload(t)).expect("append");
        }
        let good = std::fs::metadata(segment(tmp.path())).expect("meta").len();
        drop(o);
        // A crash in the middle of writing frame 4.
        let frame = encode_frame(4, &payload(4).bytes);
        for cut in [3, FRAME_HEADER as usize, frame.len() - 1] {
            let f = std::fs::OpenOptions::new().write(true).open(segment(tmp.path())).expect("f");
            f.write_all_at(&frame[..cut], good).expect("write");
            drop(f);
            let mut o = open(tmp.path(), 1 << 20);
            assert_eq!(o.report.torn_bytes, cut as u64);
            assert_eq!(o.report.damaged_copy, None);
            assert_eq!((o.log.next_seq(), o.window), (4, 3));
            assert_eq!(times(&o.log), vec![1, 2, 3]);
            assert_eq!(std::fs::metadata(segment(tmp.path())).expect("meta").len(), good);
            drop(o.log);
            o = open(tmp.path(), 1 << 20);
            assert_eq!(o.report, OpenReport { replayed_frames: 3, ..Default::default() });
        }
        let mut o = open(tmp.path(), 1 << 20);
        o.log.append(&payload(4)).expect("append after recovery");
        drop(o);
        let o = open(tmp.path(), 1 << 20);
        assert_eq!((times(&o.log), o.window), (vec![1, 2, 3, 4], 4));
    }

    #[test]
    fn a_crc_mismatch_at_the_end_is_a_torn_write_and_before_it_damage_that_is_skipped() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut o = open(tmp.path(), 1 << 20);
        let mut ends = vec![SEG_HEADER];
        for t in 1..=4 {
            o.log.append(&payload(t)).expect("append");
            ends.push(o.log.active.len);
        }
        drop(o);
        let spoil = |at: u64, bytes: &[u8]| {
            let f = std::fs::OpenOptions::new().write(true).open(segment(tmp.path())).expect("f");
            f.write_all_at(bytes, at).expect("write");
        };
        // A byte changed in the last frame's payload: it never verified, like a torn write.
        spoil(ends[4] - 2, &[0x55]);
        let o = open(tmp.path(), 1 << 20);
        assert_eq!(o.report.torn_bytes, ends[4] - ends[3]);
        assert_eq!((times(&o.log), o.window), (vec![1, 2, 3], 3));
        drop(o);
        // Damage before the end, in a payload and in a length: those frames are skipped, the
        // frames after them are kept.
        spoil(ends[0] + FRAME_HEADER + 3, &[0x55]);
        spoil(ends[1], &[0xff, 0xff, 0, 0]);
        let o = open(tmp.path(), 1 << 20);
        assert_eq!((o.report.skipped_frames, o.report.torn_bytes), (2, 0));
        assert_eq!((times(&o.log), o.window), (vec![3], 3));
        assert_eq!(o.log.next_seq(), 4);
    }

    #[test]
    fn sealed_segments_are_indexed_and_a_lost_index_is_rebuilt() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut o = open(tmp.path(), 1024);
        for t in 1..=100 {
            o.log.append(&payload(t)).expect("append");
            if o.log.wants_seal() {
                o.log.seal().expect("seal");
            }
        }
        let sealed = o.log.sealed_segments();
        assert!(sealed >= 3, "{sealed}");
        assert_eq!(times(&o.log), (1..=100).collect::<Vec<_>>());
        assert_eq!(o.log.count(&kid()), 100);
        drop(o);
        let o = open(tmp.path(), 1024);
        assert_eq!(o.report.reindexed, 0);
        assert_eq!(o.window, 100, "replays every frame after the snapshot (none here)");
        drop(o);
        for e in std::fs::read_dir(tmp.path()).expect("list") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "idx") {
                std::fs::write(&p, b"garbage").expect("spoil");
            }
        }
        let o = open(tmp.path(), 1024);
        assert_eq!(o.report.reindexed, sealed);
        assert_eq!(times(&o.log), (1..=100).collect::<Vec<_>>());
        assert_eq!(o.log.count(&kid()), 100);
    }

    #[test]
    fn a_damaged_block_costs_its_readings_not_the_query_and_a_damaged_header_a_segment() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut o = open(tmp.path(), 1024);
        for t in 1..=20 {
            o.log.append(&payload(t)).expect("append");
            if o.log.wants_seal() {
                o.log.seal().expect("seal");
            }
        }
        drop(o);
        // The first frame's block starts right after the segment and frame headers.
        let f = std::fs::OpenOptions::new().write(true).open(segment(tmp.path())).expect("f");
        f.write_all_at(&[0xee], SEG_HEADER + FRAME_HEADER).expect("write");
        drop(f);
        let o = open(tmp.path(), 1024);
        assert_eq!(times(&o.log), (2..=20).collect::<Vec<_>>());
        let active = o.log.active.path.clone();
        drop(o);
        std::fs::write(&active, b"not a segment at all").expect("spoil");
        let mut o = open(tmp.path(), 1024);
        assert!(o.report.damaged_copy.is_some());
        let lost = o.log.next_seq();
        o.log.append(&payload(21)).expect("append");
        drop(o);
        let o = open(tmp.path(), 1024);
        assert_eq!(o.log.next_seq(), lost + 1);
        assert_eq!(*times(&o.log).last().expect("newest"), 21);
    }
}
