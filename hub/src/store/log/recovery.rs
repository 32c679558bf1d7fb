//! Opening the log: frame checks, scans of segments, and recovery from torn or damaged frames.

use super::super::records::{self, Item, Replayed};
use super::*;
use protocol::oscore::Kid;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How a scan of a segment ended.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::store) enum End {
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

pub(in crate::store) struct Scan {
    /// Where the valid frames end.
    pub(in crate::store) len: u64,
    pub(in crate::store) last_seq: u64,
    pub(in crate::store) devices: HashMap<Kid, ActiveDevice>,
    pub(in crate::store) end: End,
    pub(in crate::store) replayed: u64,
    /// Damaged frames skipped over (a valid frame followed them).
    pub(in crate::store) skipped: u64,
}

/// A frame that passes its checks: its end and payload.
pub(in crate::store) fn frame_at(
    file: &File,
    at: u64,
    size: u64,
    seq: u64,
) -> Option<(u64, Vec<u8>)> {
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
pub(in crate::store) fn frame_ok(frame: &[u8]) -> bool {
    let Some((h, payload)) = frame.split_at_checked(FRAME_HEADER as usize) else { return false };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[8..16]);
    hasher.update(payload);
    payload.len() as u64 == u64::from(u32::from_le_bytes([h[0], h[1], h[2], h[3]]))
        && hasher.finalize() == u32::from_le_bytes([h[4], h[5], h[6], h[7]])
}

/// The first valid frame at or after `from` whose sequence is `min_seq` or later (but not
/// later than that many frames could reach): where it starts, and its sequence.
pub(in crate::store) fn find_frame(
    file: &File,
    from: u64,
    size: u64,
    min_seq: u64,
) -> Option<(u64, u64)> {
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
pub(in crate::store) fn scan(
    file: &File,
    path: &Path,
    first_seq: u64,
    floors: &HashMap<Kid, u64>,
    replay_after: u64,
    replay: &mut dyn FnMut(u64, Replayed),
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
            if segment_file::zeros(file, at, size) {
                return Ok(s); // the zeros written ahead of the frames ([`AHEAD`])
            }
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
                Item::Change(kid, change) if replaying => {
                    replay(seq, Replayed::Change(kid, change))
                }
                Item::Meta(key, value) if replaying => replay(seq, Replayed::Meta(key, value)),
                Item::Change(..) | Item::Meta(..) => {}
            }
        }
        s.replayed += u64::from(replaying);
        (s.len, s.last_seq) = (end, seq);
    }
    Ok(s)
}

/// What opening needs while it reads the segments, and what it found.
pub(in crate::store) struct Recovery<'a> {
    pub(in crate::store) dir: &'a Path,
    pub(in crate::store) floors: &'a HashMap<Kid, u64>,
    pub(in crate::store) replay_after: u64,
    pub(in crate::store) replay: &'a mut dyn FnMut(u64, Replayed),
    pub(in crate::store) report: OpenReport,
}

impl Recovery<'_> {
    pub(in crate::store) fn scan(
        &mut self,
        file: &File,
        path: &Path,
        first_seq: u64,
    ) -> Result<Scan, LogError> {
        let s = scan(file, path, first_seq, self.floors, self.replay_after, self.replay)?;
        self.report.replayed_frames += s.replayed;
        self.report.skipped_frames += s.skipped;
        Ok(s)
    }

    /// The last segment: torn tail cut off, damage kept aside; with the next sequence number.
    pub(in crate::store) fn active(
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
        Ok((Active::of(first_seq, s.len, path, file, s.devices), next))
    }

    /// A sealed segment with its last sequence and index (rebuilt if missing or damaged), its
    /// frames read only if their changes are not in the snapshot.
    pub(in crate::store) fn sealed(
        &mut self,
        path: PathBuf,
        file: File,
        first_seq: u64,
    ) -> Result<(Active, u64, Index), LogError> {
        let (dir, replay_after) = (self.dir, self.replay_after);
        let idx_path = dir.join(format!("{first_seq:020}.idx"));
        let size = file.metadata().map_err(io(&path))?.len();
        let segment =
            |file: File, len: u64, devices| Active::of(first_seq, len, path.clone(), file, devices);
        let mut loaded = load_index(&idx_path, first_seq, size);
        if let Some((last_seq, index)) = loaded.take_if(|(last, _)| *last <= replay_after) {
            return Ok((segment(file, size, HashMap::new()), last_seq, index));
        }
        // Its changes must be replayed, or its index is missing: read it through.
        let s = self.scan(&file, &path, first_seq)?;
        if s.end != End::Clean || s.skipped > 0 {
            tracing::error!(segment = %path.display(), valid_bytes = s.len, skipped = s.skipped, "sealed readings log segment is damaged; using what is valid");
        }
        match loaded {
            // The index was written when the segment was whole: it still locates every block.
            Some((last_seq, index)) => Ok((segment(file, size, HashMap::new()), last_seq, index)),
            None => {
                self.report.reindexed += 1;
                if s.end == End::Clean && s.len < size {
                    // Zeros written ahead that a crash kept from being cut at the seal.
                    let cut = std::fs::OpenOptions::new().write(true).open(&path);
                    cut.and_then(|f| f.set_len(s.len).and_then(|()| f.sync_all()))
                        .map_err(io(&path))?;
                }
                let mut active = segment(file, s.len, s.devices);
                let index = IndexJob::of(dir, &active, s.last_seq, self.floors).write()?;
                // The index has them now: not held while the other segments are opened.
                active.devices = HashMap::new();
                Ok((active, s.last_seq, index))
            }
        }
    }
}
