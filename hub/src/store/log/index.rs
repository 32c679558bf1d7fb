//! Per-segment index files (`.idx`): the segment's devices sorted by kid, each with where its
//! blocks are. Derived data, rebuilt from the segment when missing or damaged. Only a fence of
//! the directory (every [`FENCE`]-th kid) stays in memory, so the hub's memory grows with
//! segments × devices / 64, not segments × devices; a lookup reads one stretch of the file.

use super::*;
use protocol::oscore::{Kid, MAX_KID_LEN};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// A directory entry: kid length, kid bytes zero-padded to 7, count, first and last time,
/// number of blocks, where their offsets are.
const ENTRY: usize = 1 + MAX_KID_LEN + 24 + 4 + 8;
const _: () = assert!(ENTRY == 44);
/// One kid in memory per this many directory entries (a lookup reads 64 × 44 bytes).
const FENCE: usize = 64;

/// A device's directory entry in a sealed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) kid: Kid,
    pub(super) span: Span,
    pub(super) blocks: u32,
    /// Where its block offsets are in the index file.
    pub(super) offsets_at: u64,
}

impl Entry {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut kid = [0u8; 1 + MAX_KID_LEN];
        kid[0] = self.kid.as_bytes().len() as u8;
        kid[1..=self.kid.as_bytes().len()].copy_from_slice(self.kid.as_bytes());
        out.extend_from_slice(&kid);
        out.extend_from_slice(&self.span.count.to_le_bytes());
        out.extend_from_slice(&self.span.min_t.to_le_bytes());
        out.extend_from_slice(&self.span.max_t.to_le_bytes());
        out.extend_from_slice(&self.blocks.to_le_bytes());
        out.extend_from_slice(&self.offsets_at.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let kid = Kid::new(b.get(1..1 + usize::from(*b.first()?))?).ok()?;
        let u64_at = |i: usize| Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?));
        let span = Span { count: u64_at(8)?, min_t: u64_at(16)? as i64, max_t: u64_at(24)? as i64 };
        let blocks = u32::from_le_bytes(b.get(32..36)?.try_into().ok()?);
        Some(Entry { kid, span, blocks, offsets_at: u64_at(36)? })
    }
}

/// What of a sealed segment's directory stays in memory: its length and every
/// [`FENCE`]-th kid.
#[derive(Debug, Default, Clone)]
pub(super) struct Fence {
    entries: u32,
    kids: Vec<Kid>,
}

/// A stretch of a directory (file offset, entries) where a kid would be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stretch {
    at: u64,
    entries: u32,
}

impl Fence {
    fn of(sorted: &[Kid]) -> Self {
        Fence {
            entries: sorted.len() as u32,
            kids: sorted.iter().step_by(FENCE).copied().collect(),
        }
    }

    /// Where `kid`'s entry is if the directory has one (no I/O).
    pub(super) fn stretch(&self, kid: &Kid) -> Option<Stretch> {
        let i = self.kids.partition_point(|k| k <= kid).checked_sub(1)?;
        let first = i * FENCE;
        let entries = (self.entries as usize - first).min(FENCE) as u32;
        Some(Stretch { at: (IDX_HEADER + first * ENTRY) as u64, entries })
    }

    /// Kids held in memory (tests check the bound).
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.kids.len()
    }
}

/// `kid`'s entry, if the stretch of the directory in `idx` has it.
pub(super) fn find(idx: &File, s: Stretch, kid: &Kid) -> std::io::Result<Option<Entry>> {
    let mut raw = vec![0u8; s.entries as usize * ENTRY];
    idx.read_exact_at(&mut raw, s.at)?;
    Ok(raw.chunks_exact(ENTRY).filter_map(Entry::decode).find(|e| e.kid == *kid))
}

/// The block offsets an entry lists.
pub(super) fn offsets(idx: &File, e: &Entry) -> std::io::Result<Vec<u32>> {
    let mut raw = vec![0u8; e.blocks as usize * 4];
    idx.read_exact_at(&mut raw, e.offsets_at)?;
    Ok(raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Every entry of the directory in `idx` (retention and frame readers; read, not kept).
pub(super) fn entries(idx: &File, fence: &Fence) -> std::io::Result<Vec<Entry>> {
    let mut raw = vec![0u8; fence.entries as usize * ENTRY];
    idx.read_exact_at(&mut raw, IDX_HEADER as u64)?;
    Ok(raw.chunks_exact(ENTRY).filter_map(Entry::decode).collect())
}

/// A written or loaded index file: its fence, and each device's count (for the log's totals,
/// dropped once taken in).
#[derive(Debug)]
pub(in crate::store) struct Index {
    pub(super) first_seq: u64,
    pub(super) idx_path: PathBuf,
    pub(super) idx: Arc<File>,
    pub(super) fence: Fence,
    pub(super) counts: Vec<(Kid, u64)>,
    /// The newest reading's time in the segment (of any device).
    pub(super) newest: i64,
}

impl IndexJob {
    /// The index of `a` (its runs' offsets are read when it is written).
    pub(super) fn of(dir: &Path, a: &Active, last_seq: u64, floors: &HashMap<Kid, u64>) -> Self {
        let mut devices: Vec<(Kid, Span, Vec<u32>)> = a
            .devices
            .iter()
            .map(|(kid, d)| (*kid, d.span.unwrap_or(Span::EMPTY), d.blocks.clone()))
            .collect();
        devices.sort_unstable_by_key(|d| d.0);
        let runs = a.merges(floors);
        Self { dir: dir.to_path_buf(), first_seq: a.first_seq, last_seq, len: a.len, devices, runs }
    }

    /// Writes the index file (`<first seq>.idx`): a header, the directory sorted by kid and
    /// their CRC, then the block offsets.
    pub(in crate::store) fn write(&self) -> Result<Index, LogError> {
        self.write_to(self.dir.join(format!("{:020}.idx", self.first_seq)), true)
    }

    /// Writes it to `idx_path`: atomically and synced if `durable` (an index), else as it
    /// comes (a run of an unsealed segment).
    pub(super) fn write_to(&self, idx_path: PathBuf, durable: bool) -> Result<Index, LogError> {
        let with_runs;
        let devices = if self.runs.is_empty() {
            &self.devices
        } else {
            with_runs = merged(&self.devices, &self.runs).map_err(io(&idx_path))?;
            &with_runs
        };
        let n = devices.len();
        let mut offsets_at = (IDX_HEADER + n * ENTRY + 4) as u64;
        let blocks: usize = devices.iter().map(|d| d.2.len()).sum();
        let mut out = Vec::with_capacity(offsets_at as usize + blocks * 4);
        out.extend_from_slice(IDX_MAGIC);
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.extend_from_slice(&self.last_seq.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&(n as u32).to_le_bytes());
        out.extend_from_slice(&(ENTRY as u32).to_le_bytes());
        for (kid, span, blocks) in devices {
            let blocks_n = blocks.len() as u32;
            Entry { kid: *kid, span: *span, blocks: blocks_n, offsets_at }.encode(&mut out);
            offsets_at += u64::from(blocks_n) * 4;
        }
        out.extend_from_slice(&crc32fast::hash(&out).to_le_bytes());
        for o in devices.iter().flat_map(|d| &d.2) {
            out.extend_from_slice(&o.to_le_bytes());
        }
        if durable {
            crate::private_fs::write(&idx_path, &out).map_err(io(&idx_path))?;
        } else {
            let f = crate::private_fs::create(&idx_path).map_err(io(&idx_path))?;
            f.write_all_at(&out, 0).map_err(io(&idx_path))?;
        }
        let idx = File::open(&idx_path).map_err(io(&idx_path))?;
        let kids: Vec<Kid> = devices.iter().map(|d| d.0).collect();
        Ok(Index {
            first_seq: self.first_seq,
            idx_path,
            idx: Arc::new(idx),
            fence: Fence::of(&kids),
            counts: devices.iter().map(|d| (d.0, d.1.count)).collect(),
            newest: devices.iter().map(|d| d.1.max_t).max().unwrap_or(i64::MIN),
        })
    }
}

/// A segment's index with its last sequence, if the file is there, intact, of this format and
/// of this segment (`seg_len` long).
pub(in crate::store) fn load_index(
    idx_path: &Path,
    first_seq: u64,
    seg_len: u64,
) -> Option<(u64, Index)> {
    let idx = File::open(idx_path).ok()?;
    let size = idx.metadata().ok()?.len();
    let mut h = [0u8; IDX_HEADER];
    idx.read_exact_at(&mut h, 0).ok()?;
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap_or_default());
    let (first, last, len, n, entry) = (u64_at(8), u64_at(16), u64_at(24), u32_at(32), u32_at(36));
    if &h[..8] != IDX_MAGIC || first != first_seq || len != seg_len || entry as usize != ENTRY {
        return None;
    }
    let dir_len = n as usize * ENTRY;
    if (IDX_HEADER + dir_len + 4) as u64 > size {
        return None;
    }
    let mut rest = vec![0u8; dir_len + 4];
    idx.read_exact_at(&mut rest, IDX_HEADER as u64).ok()?;
    let (dir, crc) = rest.split_at(dir_len);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h);
    hasher.update(dir);
    if hasher.finalize().to_le_bytes() != crc {
        return None;
    }
    let mut kids = Vec::with_capacity(n as usize);
    let mut counts = Vec::with_capacity(n as usize);
    let mut newest = i64::MIN;
    for raw in dir.chunks_exact(ENTRY) {
        let e = Entry::decode(raw)?;
        // Lookups rely on the order; offsets must be in the file.
        let in_file =
            e.offsets_at.checked_add(u64::from(e.blocks) * 4).is_some_and(|end| end <= size);
        if kids.last().is_some_and(|k| *k >= e.kid) || !in_file {
            return None;
        }
        kids.push(e.kid);
        counts.push((e.kid, e.span.count));
        newest = newest.max(e.span.max_t);
    }
    let index = Index {
        first_seq,
        idx_path: idx_path.to_path_buf(),
        idx: Arc::new(idx),
        fence: Fence::of(&kids),
        counts,
        newest,
    };
    Some((last, index))
}

/// A run of an unsealed segment as its seal merges it: its file and directory, and the devices
/// erased since it was written.
#[derive(Debug)]
pub(super) struct Merge {
    pub(super) idx: Arc<File>,
    pub(super) fence: Fence,
    pub(super) hidden: Vec<Kid>,
}

/// `devices` (sorted by kid, with the offsets held in memory) with the offsets of `runs` put
/// before their own.
pub(super) fn merged(
    devices: &[(Kid, Span, Vec<u32>)],
    runs: &[Merge],
) -> std::io::Result<Vec<(Kid, Span, Vec<u32>)>> {
    let mut from_runs: HashMap<Kid, Vec<u32>> = HashMap::new();
    for r in runs {
        for e in index::entries(&r.idx, &r.fence)? {
            if !r.hidden.contains(&e.kid) {
                from_runs.entry(e.kid).or_default().extend(index::offsets(&r.idx, &e)?);
            }
        }
    }
    Ok(devices
        .iter()
        .map(|(kid, span, held)| {
            let mut all = from_runs.remove(kid).unwrap_or_default();
            all.extend_from_slice(held);
            (*kid, *span, all)
        })
        .collect())
}
