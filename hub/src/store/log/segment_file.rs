//! A segment's file: a new one's header, a frame's bytes, and the zeros the active segment is
//! written with ahead of its frames (so that a group commit's `fdatasync` has data to flush but
//! no metadata: no journal commit), with how a scan tells those zeros from a torn frame.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::oscore::Kid;

use super::{Active, ActiveDevice, FRAME_HEADER, LogError, SEG_HEADER, SEG_MAGIC, io};

/// The active segment's file is written in zeros this far ahead of its frames (at most to the
/// segment's size), and synced with the frame that reached the end of the zeros before it. A
/// group commit's `fdatasync` then finds its blocks allocated and the file's size unchanged,
/// so it flushes data only, without a journal commit of the file's metadata. The zeros are
/// cut off at a seal and at open, where a tail of zeros after the last frame is no damage.
pub(super) const AHEAD: u64 = 1 << 20;
/// Writes zeros into `file` from `from` to `to` ([`AHEAD`]); the size the file has after it.
/// A failure (a full disk) is no failure of the frame before them: the file is cut back to
/// `from` and the frames go on without zeros ahead until there is room.
pub(super) fn write_zeros(file: &File, from: u64, to: u64) -> u64 {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64);
        if file.write_all_at(&ZEROS[..n as usize], at).is_err() {
            let _ = file.set_len(from);
            return from;
        }
        at += n;
    }
    to
}

/// Whether `file` holds only zeros from `at` to `size`.
pub(super) fn zeros(file: &File, at: u64, size: u64) -> bool {
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = at;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        if file.read_exact_at(&mut buf[..n], pos).is_err() || buf[..n].iter().any(|b| *b != 0) {
            return false;
        }
        pos += n as u64;
    }
    true
}

pub(super) fn encode_frame(seq: u64, payload: &[u8]) -> Vec<u8> {
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

pub(super) fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), error = %e, "cannot delete a readings log file");
    }
}

pub(super) fn new_active(dir: &Path, first_seq: u64) -> Result<Active, LogError> {
    let path = dir.join(format!("{first_seq:020}.seg"));
    let file = crate::private_fs::create(&path).map_err(io(&path))?;
    let mut header = SEG_MAGIC.to_vec();
    header.extend_from_slice(&first_seq.to_le_bytes());
    file.write_all_at(&header, 0).map_err(io(&path))?;
    file.sync_all().map_err(io(&path))?;
    crate::private_fs::sync_dir(dir).map_err(io(dir))?;
    Ok(Active::of(first_seq, SEG_HEADER, path, file, HashMap::new()))
}

impl Active {
    /// A segment whose file is its frames (`len` bytes, no zeros ahead), with the blocks of
    /// `devices` held in memory and no runs.
    pub(super) fn of(
        first_seq: u64,
        len: u64,
        path: PathBuf,
        file: File,
        devices: HashMap<Kid, ActiveDevice>,
    ) -> Self {
        let held = devices.values().map(|d| d.blocks.len()).sum();
        let file = Arc::new(file);
        Active { first_seq, len, size: len, path, file, devices, runs: Vec::new(), held }
    }
}
