//! The active segment's block offsets written out of memory: once a segment holds
//! [`LogConfig::spill_at`] of them, they go to a run (`<first seq>-<n>.run`, an index file of
//! the blocks indexed since the run before, not synced) and memory holds none. So what the log
//! holds in memory does not grow with the blocks stored between seals. A query of an unsealed
//! segment reads its runs' entries for its device; the seal merges them into the segment's
//! index and removes them. Runs are derived: removed at open, where the scan of the active
//! segment lists its blocks again.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::oscore::Kid;

use super::index::{self, Fence, Merge, Stretch};
use super::{Active, IndexJob, LogConfig, LogError, SegmentLog, Span, erased_after, remove_file};

/// Block offsets an active segment holds in memory at most (4 bytes each).
const SPILL: u64 = 1 << 16;

impl LogConfig {
    /// Block offsets held in memory before they go to a run: [`SPILL`], or fewer for small
    /// segments (a few runs per segment, so that tests and the crash campaign make runs).
    pub(super) fn spill_at(&self) -> usize {
        (self.segment_bytes / 256).clamp(16, SPILL) as usize
    }
}

/// One run of an unsealed segment.
#[derive(Debug)]
pub(super) struct Run {
    path: PathBuf,
    idx: Arc<File>,
    fence: Fence,
    /// The last frame whose blocks it lists (a device erased after it is hidden in it).
    last_seq: u64,
}

impl SegmentLog {
    /// Spills if the active segment holds [`LogConfig::spill_at`] offsets or more. A failure
    /// leaves them held (the commit that asked is durable all the same) until the next try.
    pub(super) fn spill_if_full(&mut self) {
        if self.active.held >= self.config.spill_at()
            && let Err(e) = self.spill()
        {
            tracing::warn!(error = %e, "readings log: block offsets stay in memory");
        }
    }

    /// Writes the active segment's block offsets held in memory to a new run. On failure they
    /// stay held (and the commit that asked is still durable).
    fn spill(&mut self) -> Result<(), LogError> {
        let a = &mut self.active;
        let path = self.dir.join(format!("{:020}-{}.run", a.first_seq, a.runs.len()));
        let mut devices: Vec<(Kid, Span, Vec<u32>)> = a
            .devices
            .iter()
            .filter(|(_, d)| !d.blocks.is_empty())
            .map(|(kid, d)| (*kid, d.span.unwrap_or(Span::EMPTY), d.blocks.clone()))
            .collect();
        devices.sort_unstable_by_key(|d| d.0);
        let last_seq = self.next_seq - 1;
        let job = IndexJob {
            dir: self.dir.clone(),
            first_seq: a.first_seq,
            last_seq,
            len: a.len,
            devices,
            runs: Vec::new(),
        };
        let written = job.write_to(path.clone(), false)?;
        for d in a.devices.values_mut() {
            d.blocks = Vec::new();
        }
        a.held = 0;
        a.runs.push(Run { path, idx: written.idx, fence: written.fence, last_seq });
        Ok(())
    }
}

impl Active {
    /// Where `kid`'s blocks are in this segment's runs (not erased since each).
    pub(super) fn runs_of(
        &self,
        kid: &Kid,
        floors: &HashMap<Kid, u64>,
    ) -> Vec<(Arc<File>, Stretch)> {
        self.runs
            .iter()
            .filter(|r| !erased_after(floors, kid, r.last_seq))
            .filter_map(|r| Some((r.idx.clone(), r.fence.stretch(kid)?)))
            .collect()
    }

    /// The last frame of its oldest run (a floor after it still hides something there).
    pub(super) fn runs_ended(&self) -> Option<u64> {
        self.runs.first().map(|r| r.last_seq)
    }

    /// The runs as the seal merges them.
    pub(super) fn merges(&self, floors: &HashMap<Kid, u64>) -> Vec<Merge> {
        self.runs
            .iter()
            .map(|r| Merge {
                idx: r.idx.clone(),
                fence: r.fence.clone(),
                hidden: floors.iter().filter(|(_, f)| r.last_seq < **f).map(|(k, _)| *k).collect(),
            })
            .collect()
    }

    /// Removes the runs' files (their segment's index holds their blocks now).
    pub(super) fn remove_runs(&mut self) {
        for r in self.runs.drain(..) {
            remove_file(&r.path);
        }
    }
}

/// `kid`'s block offsets: those in `runs`, oldest first, then `held`.
pub(super) fn offsets(
    runs: &[(Arc<File>, Stretch)],
    kid: &Kid,
    held: &[u32],
) -> std::io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for (idx, stretch) in runs {
        if let Some(e) = index::find(idx, *stretch, kid)? {
            out.extend(index::offsets(idx, &e)?);
        }
    }
    out.extend_from_slice(held);
    Ok(out)
}

/// Removes the runs left in `dir` by an earlier process.
pub(super) fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.path().extension().is_some_and(|x| x == "run") {
            remove_file(&e.path());
        }
    }
}
