//! Whether the store can write: the episodes of a full or failing disk (said once in plain
//! words when one starts and once when it ends), the free space against the configured floor,
//! and what the floor made retention drop. Read by `hub ctl status`, the web UI and MQTT.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::StoreError;

/// What the owner is told about the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageStatus {
    /// Whether the last write succeeded.
    pub ok: bool,
    /// What is wrong, in words a person understands (none: nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Since when writes fail, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Free space where the store is, MiB (none: not known yet).
    pub free_mb: Option<u64>,
    /// The configured floor of free space, MiB: below it the oldest readings are dropped.
    pub min_free_mb: u64,
    /// Readings dropped to keep the floor, since the hub started.
    pub dropped_for_space: u64,
    /// Episodes of failed writes since the hub started.
    pub episodes: u64,
}

/// The store's write health; one per store, updated by its writer thread.
#[derive(Debug)]
pub(super) struct Health {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    status: StorageStatus,
    /// When the failing episode started (for the duration in the log line that ends it).
    failing_since: Option<Instant>,
}

/// Words for a failed write.
fn plain_words(e: &StoreError) -> String {
    let io = match e {
        StoreError::Io(_, e) => Some(e.kind()),
        StoreError::Log(super::LogError::Io(_, e)) => Some(e.kind()),
        _ => None,
    };
    let text = e.to_string();
    let full = io == Some(std::io::ErrorKind::StorageFull)
        || io == Some(std::io::ErrorKind::QuotaExceeded)
        || text.contains("No space left")
        || text.contains("quota exceeded");
    if full {
        "the disk is full: new readings are not acknowledged (the sensors keep them) until space is freed".into()
    } else {
        format!(
            "the disk cannot be written ({text}): new readings are not acknowledged (the sensors keep them) until it works again"
        )
    }
}

impl Health {
    pub(super) fn new(min_free_mb: u64) -> Self {
        let status = StorageStatus { ok: true, min_free_mb, ..StorageStatus::default() };
        Self { state: Mutex::new(State { status, failing_since: None }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a commit's outcome; logs once when an episode starts and once when it ends.
    pub(super) fn record(&self, result: &Result<(), StoreError>) {
        let mut s = self.lock();
        match result {
            Ok(()) => {
                if !s.status.ok {
                    let secs = s.failing_since.map_or(0, |t| t.elapsed().as_secs());
                    s.status.ok = true;
                    s.status.problem = None;
                    s.status.since = None;
                    s.failing_since = None;
                    drop(s);
                    tracing::warn!(
                        seconds = secs,
                        "storage works again: readings are stored and acknowledged again"
                    );
                }
            }
            Err(e) => {
                if s.status.ok {
                    let words = plain_words(e);
                    s.status.ok = false;
                    s.status.problem = Some(words.clone());
                    s.status.since = Some(crate::clock::unix_now().0);
                    s.status.episodes += 1;
                    s.failing_since = Some(Instant::now());
                    drop(s);
                    tracing::error!(error = %e, "storage problem: {words}; retrying by itself");
                } else {
                    tracing::debug!(error = %e, "storage still failing");
                }
            }
        }
    }

    pub(super) fn free_space(&self, bytes: u64) {
        self.lock().status.free_mb = Some(bytes >> 20);
    }

    pub(super) fn dropped_for_space(&self, readings: u64) {
        self.lock().status.dropped_for_space += readings;
    }

    pub(super) fn status(&self) -> StorageStatus {
        self.lock().status.clone()
    }
}

/// Bytes available to the hub where `dir` is (statvfs: blocks available to unprivileged users).
pub(super) fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_is_said_once_in_plain_words_and_ends_on_the_first_good_write() {
        let h = Health::new(64);
        assert!(h.status().ok);
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        h.record(&Err(StoreError::Io("x".into(), full)));
        let s = h.status();
        assert!(!s.ok);
        assert!(s.problem.as_deref().is_some_and(|p| p.starts_with("the disk is full")), "{s:?}");
        assert_eq!(s.episodes, 1);
        let since = s.since;
        h.record(&Err(StoreError::Db("store: I/O error".into())));
        // Still the same episode: its words and start stay.
        assert_eq!(h.status().since, since);
        assert_eq!(h.status().episodes, 1);
        assert!(!h.status().ok);
        h.record(&Ok(()));
        let s = h.status();
        assert!(s.ok && s.problem.is_none() && s.since.is_none(), "{s:?}");
        let eio = std::io::Error::from_raw_os_error(5);
        h.record(&Err(StoreError::Io("x".into(), eio)));
        let s = h.status();
        assert_eq!(s.episodes, 2);
        assert!(s.problem.as_deref().is_some_and(|p| p.starts_with("the disk cannot be written")));
    }

    #[test]
    fn free_space_is_measured() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(free_bytes(dir.path()).expect("statvfs") > 0);
    }
}
