//! The process's memory as its allocator (jemalloc, set in `main.rs`) counts it: the heap in
//! use and the pages the allocator holds — for `hub ctl status`, and for the soak, which
//! watches them for growth (issue 20).

use serde::{Deserialize, Serialize};

/// Heap bytes in use, and bytes the allocator holds resident (its pages, used or kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStatus {
    /// Bytes allocated and not yet freed.
    pub heap_bytes: u64,
    /// Bytes in pages the allocator holds resident (heap, its metadata, freed pages not yet
    /// returned).
    pub allocator_resident_bytes: u64,
}

/// Now; none when jemalloc is not the process's allocator (unit tests) or cannot say.
pub(crate) fn now() -> Option<MemoryStatus> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    let heap = tikv_jemalloc_ctl::stats::allocated::read().ok()?;
    let resident = tikv_jemalloc_ctl::stats::resident::read().ok()?;
    (heap > 0).then_some(MemoryStatus {
        heap_bytes: heap as u64,
        allocator_resident_bytes: resident as u64,
    })
}
