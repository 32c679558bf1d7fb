//! Store formats (issue 20 item 3): a store is stamped with the format it was written in; one
//! of a newer format — in the catalog or in the readings log — is refused with a clear message
//! and left exactly as it was.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use redb::{ReadableDatabase, TableDefinition};

use super::tests::{device, readings};
use super::*;

const LOG: TableDefinition<&str, u64> = TableDefinition::new("log");

fn kid() -> Kid {
    Kid::new(&[0x0f, 0x0a, 0x77]).expect("kid")
}

/// A store with a device and its readings, closed.
fn written(dir: &Path) {
    let (store, _) = HubStore::open(dir, StoreLimits::default()).expect("open");
    store.commit(&[device(kid())]).expect("pair");
    store.commit(&[readings(kid(), 1..=50)]).expect("readings");
}

/// Every file under `dir` and its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.display().to_string(), std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

fn format(dir: &Path) -> Option<u64> {
    let db = redb::Database::open(dir.join("hearth.redb")).expect("redb");
    let tx = db.begin_read().expect("read");
    tx.open_table(LOG).expect("log table").get("format").expect("get").map(|v| v.value())
}

#[test]
fn a_store_is_stamped_with_its_format_and_an_unstamped_one_gets_the_stamp() {
    let tmp = tempfile::tempdir().expect("tmp");
    written(tmp.path());
    assert_eq!(format(tmp.path()), Some(crate::store::catalog::STORE_FORMAT));
    // A store of the previous release (no stamp) is stamped when it opens, and keeps its data.
    {
        let db = redb::Database::open(tmp.path().join("hearth.redb")).expect("redb");
        let tx = db.begin_write().expect("write");
        tx.open_table(LOG).expect("log").remove("format").expect("remove");
        tx.commit().expect("commit");
    }
    assert_eq!(format(tmp.path()), None);
    let (store, _) = HubStore::open(tmp.path(), StoreLimits::default()).expect("open");
    assert_eq!(store.reading_count(&kid()).expect("count"), 50);
    drop(store);
    assert_eq!(format(tmp.path()), Some(2));
}

#[test]
fn a_catalog_of_a_newer_format_is_refused_and_left_unchanged() {
    let tmp = tempfile::tempdir().expect("tmp");
    written(tmp.path());
    {
        let db = redb::Database::open(tmp.path().join("hearth.redb")).expect("redb");
        let tx = db.begin_write().expect("write");
        tx.open_table(LOG).expect("log").insert("format", 4).expect("insert");
        tx.commit().expect("commit");
    }
    let before = files(tmp.path());
    let e = HubStore::open(tmp.path(), StoreLimits::default()).expect_err("a newer store");
    let text = e.to_string();
    assert!(matches!(e, StoreError::TooNew { .. }), "{text}");
    assert!(
        text.contains("written by a newer Hearth (store format 4; this hub reads up to store format 3). Nothing was changed"),
        "{text}"
    );
    assert!(files(tmp.path()) == before, "the newer store was changed");
}

#[test]
fn a_readings_log_of_a_newer_format_is_refused_and_left_unchanged() {
    let tmp = tempfile::tempdir().expect("tmp");
    written(tmp.path());
    let seg = std::fs::read_dir(tmp.path().join("readings"))
        .expect("log")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a segment");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("seg")
        .write_all_at(b"2", 7)
        .expect("patch");
    let before = files(tmp.path());
    let e = HubStore::open(tmp.path(), StoreLimits::default()).expect_err("a newer log");
    assert!(
        e.to_string()
            .contains("(readings log format 2; this hub reads up to readings log format 1)"),
        "{e}"
    );
    assert!(files(tmp.path()) == before, "the newer store was changed");
}
