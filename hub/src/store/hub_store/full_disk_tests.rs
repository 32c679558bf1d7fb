//! The store on a full disk (a small tmpfs; the tests run as root, as CI does): commits fail and
//! say so in words, reads keep answering (redb, which refuses everything after a failed write,
//! is opened again), nothing half-written counts, and the first commit after space returns
//! succeeds.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::tests::{device, readings};
use super::*;

/// A tmpfs mounted for a test, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(dir: &Path, mib: u64) -> Self {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount tmpfs (root only): {out:?}");
        Self(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the disk is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("filler");
    for chunk in [64 << 10, 4 << 10] {
        let buf = vec![0x5au8; chunk];
        while f.write_all(&buf).and_then(|()| f.sync_data()).is_ok() {}
    }
}

fn kid(n: u8) -> Kid {
    Kid::new(&[n, 0xd1, n, 0x5c]).expect("kid")
}

fn limits() -> StoreLimits {
    StoreLimits {
        max_readings_per_device: 1 << 40,
        segment_bytes: 32 << 20,
        max_log_bytes: 1 << 40,
        min_free_bytes: 0,
    }
}

fn count(store: &HubStore, k: Kid) -> usize {
    store.readings(&k, 100_000).expect("readings").len()
}

#[test]
fn a_full_disk_fails_commits_keeps_reads_and_the_first_commit_after_space_returns_succeeds() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("disk");
    let _mount = Mount::new(&dir, 4);
    let (store, _) = HubStore::open(&dir, limits()).expect("open");
    let k = kid(1);
    store.commit(&[device(k)]).expect("pair");
    store.commit(&[readings(k, 1..=100)]).expect("readings");
    let filler = dir.join("filler");
    fill(&filler);

    // A catalog write (a document) and readings: both refused, said in words.
    let doc = Write::Meta { key: "doc".into(), value: vec![7; 256 << 10] };
    let e = store.commit(&[doc.clone(), readings(k, 101..=200)]).expect_err("full");
    let s = store.status();
    assert!(
        !s.ok && s.problem.as_deref().is_some_and(|p| p.starts_with("the disk is full")),
        "{e}: {s:?}"
    );
    // What is stored still answers: the catalog and the log.
    assert_eq!(store.devices().expect("devices after a failed write").len(), 1);
    assert_eq!(count(&store, k), 100);
    // Readings only (the log; more than the zeros written ahead of its frames, 1 MiB, and the
    // free end of its last page): refused as well, in the same episode.
    store.commit(&[readings(k, 101..=200_000)]).expect_err("still full");
    assert_eq!(store.status().episodes, 1);
    assert_eq!(count(&store, k), 100);
    assert_eq!(store.devices().expect("devices on a full disk").len(), 1);
    assert_eq!(store.meta("doc").expect("meta on a full disk"), None);

    // Space returns: the next commit succeeds (redb, which refuses every write after a failed
    // one, was opened again), and nothing refused before was stored.
    std::fs::remove_file(&filler).expect("free");
    store.commit(&[doc, readings(k, 101..=200)]).expect("commit after space returns");
    let s = store.status();
    assert!(s.ok && s.problem.is_none(), "{s:?}");
    assert_eq!(store.reading_count(&k).expect("count"), 200, "refused readings were stored");
    assert_eq!(store.meta("doc").expect("meta").map(|v| v.len()), Some(256 << 10));
    drop(store);
    let (store, _) = HubStore::open(&dir, limits()).expect("reopen");
    assert_eq!(store.reading_count(&k).expect("count"), 200);
    assert_eq!(count(&store, k), 200);
    assert_eq!(store.devices().expect("devices").len(), 1);
}

#[test]
fn below_the_floor_the_oldest_segments_are_dropped_and_counted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("disk");
    let _mount = Mount::new(&dir, 8);
    let c = StoreLimits { segment_bytes: 16 << 10, min_free_bytes: 6 << 20, ..limits() };
    let (store, _) = HubStore::open(&dir, c).expect("open");
    let k = kid(2);
    store.commit(&[device(k)]).expect("pair");
    // Fill the log past a few segments while free space is above the floor (8 MiB disk).
    for i in 0..40 {
        store.commit(&[readings(k, i * 100..(i + 1) * 100)]).expect("readings");
    }
    assert_eq!(store.status().dropped_for_space, 0);
    // Take the disk below the floor: the next commits (a second later: the floor is measured
    // once a second) make room by dropping the oldest readings.
    let mut f = std::fs::File::create(dir.join("filler")).expect("filler");
    f.write_all(&vec![1u8; 3 << 20]).expect("filler");
    f.sync_all().expect("sync");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 40;
    while store.status().dropped_for_space == 0 {
        assert!(Instant::now() < deadline, "nothing dropped: {:?}", store.status());
        store.commit(&[readings(k, i * 100..(i + 1) * 100)]).expect("readings");
        store.settle();
        i += 1;
    }
    let s = store.status();
    let stored = store.reading_count(&k).expect("count");
    assert_eq!(stored + s.dropped_for_space, (i * 100) as u64, "{s:?}");
    // The oldest went first.
    let first = store.readings(&k, 1).map(|r| r.len()).expect("readings");
    assert_eq!(first, 1);
    let all = store.readings(&k, 100_000).expect("readings");
    assert_eq!(all.first().map(|r| r.time_ms), Some(s.dropped_for_space as i64), "{s:?}");
    assert!(s.ok && s.episodes == 0, "{s:?}");
}
