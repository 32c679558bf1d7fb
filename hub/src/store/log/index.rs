//! Per-segment index files (`.idx`): where each device's blocks are; derived, rebuilt when missing.

use super::*;
use protocol::oscore::Kid;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

impl IndexJob {
    pub(super) fn of(dir: &Path, a: &Active, last_seq: u64) -> Self {
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
    pub(in crate::store) fn write(&self) -> Result<Index, LogError> {
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
    pub(in crate::store) fn new(a: Active, last_seq: u64, index: Index) -> Self {
        let mut s = Sealed {
            first_seq: a.first_seq,
            last_seq,
            len: a.len,
            path: a.path,
            idx_path: index.idx_path,
            file: a.file,
            idx: index.idx,
            devices: index.devices,
            readings: 0,
        };
        s.recount();
        s
    }
}

/// A segment's index, if it is there, intact and of this segment (`seg_len` long).
pub(in crate::store) fn load_index(
    idx_path: &Path,
    first_seq: u64,
    seg_len: u64,
) -> Option<Sealed> {
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
    let mut s = Sealed {
        first_seq,
        last_seq: last,
        len,
        path: PathBuf::new(),
        idx_path: idx_path.to_path_buf(),
        file: Arc::new(idx.try_clone().ok()?),
        idx: Arc::new(idx),
        devices,
        readings: 0,
    };
    s.recount();
    Some(s)
}
