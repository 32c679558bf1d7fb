//! `hub ctl status` for people: whether the hub's disk can be written (a full or failing disk,
//! issue 20), free space against the floor, what the floor dropped, and the memory in use.

use std::fmt::Write as _;

use web_ui::time::when;

use crate::render::Render;

impl Render for crate::api::StatusAnswer {
    fn render(&self, now_ms: i64) -> String {
        let s = &self.storage;
        let mut out = match (&s.problem, s.since) {
            (Some(problem), Some(since)) => {
                format!("Storage: PROBLEM since {}: {problem}\n", when(since, now_ms.max(0) as u64))
            }
            (Some(problem), None) => format!("Storage: PROBLEM: {problem}\n"),
            _ => "Storage: ok\n".to_string(),
        };
        let free = s.free_mb.map_or_else(|| "not measured yet".into(), |mb| format!("{mb} MiB"));
        let _ = writeln!(out, "Free space: {free} (floor {} MiB)", s.min_free_mb);
        let _ = writeln!(
            out,
            "Readings dropped to keep the floor: {}; episodes of failed writes: {}",
            s.dropped_for_space, s.episodes
        );
        if let Some(m) = &self.memory {
            let _ = writeln!(
                out,
                "Memory: {} MiB of heap in use, {} MiB held by the allocator",
                m.heap_bytes >> 20,
                m.allocator_resident_bytes >> 20
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_says_a_storage_problem_in_words_and_since_when() {
        use crate::store::StorageStatus;
        let storage =
            StorageStatus { ok: true, free_mb: Some(900), min_free_mb: 64, ..Default::default() };
        let text = crate::api::StatusAnswer { storage, memory: None }.render(0);
        assert!(text.starts_with("Storage: ok\nFree space: 900 MiB (floor 64 MiB)\n"), "{text}");
        let storage = StorageStatus {
            ok: false,
            problem: Some("the disk is full: new readings are not acknowledged".into()),
            since: Some(1_700_000_000),
            episodes: 1,
            ..Default::default()
        };
        let text = crate::api::StatusAnswer { storage, memory: None }.render(1_700_000_060_000);
        let first = text.lines().next().unwrap_or_default();
        assert!(first.starts_with("Storage: PROBLEM since "), "{text}");
        assert!(first.ends_with(": the disk is full: new readings are not acknowledged"), "{text}");
        assert!(text.contains("episodes of failed writes: 1"), "{text}");
        let memory = Some(crate::memory::MemoryStatus {
            heap_bytes: 41 << 20,
            allocator_resident_bytes: 60 << 20,
        });
        let text = crate::api::StatusAnswer { storage: StorageStatus::default(), memory }.render(0);
        assert!(
            text.ends_with("Memory: 41 MiB of heap in use, 60 MiB held by the allocator\n"),
            "{text}"
        );
    }
}
