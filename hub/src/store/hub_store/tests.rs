//! The store under crashes, corruption and concurrent readers: commits, recovery, retention,
//! snapshots, and the helpers other store tests share.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;

use protocol::link::PeerState;
use protocol::oscore::{ContextParams, KeyUsage, WindowState};
use protocol::senml::{Reading, UnixTimeMillis, Value};

use super::*;

fn kid(n: u8) -> Kid {
    Kid::new(&[n, 0xaa, n, 0xbb]).expect("kid")
}

/// A paired device record for tests (also used by the outbox's tests).
pub(in crate::store) fn device(k: Kid) -> Write {
    let info = DeviceInfo {
        id: k.into(),
        about: protocol::pairing::Descriptor {
            model: "hearth-temp-1".into(),
            serial: format!("s{k}"),
            firmware_version: 1,
            updatable: true,
            verifies_signatures: false,
            capabilities: vec!["temperature".into()],
            support_end: protocol::time::UnixTime(2_000_000_000),
        },
        paired_at: 1_700_000_000,
    };
    let params = ContextParams {
        master_secret: vec![7; 16],
        master_salt: vec![1, 2],
        sender_id: Kid::new(&[0]).expect("kid"),
        recipient_id: k,
        id_context: None,
    };
    Write::Device { info, params }
}

/// Readings at `times` for tests (also used by the outbox's tests).
pub(in crate::store) fn readings(k: Kid, times: impl IntoIterator<Item = i64>) -> Write {
    let readings = times
        .into_iter()
        .map(|t| Reading {
            name: format!("urn:dev:{k}:temp"),
            unit: Some("Cel".into()),
            value: Value::Number(t as f64 / 100.0),
            time: UnixTimeMillis(t),
        })
        .collect();
    Write::Readings { kid: k, readings }
}

fn checkpoint(k: Kid, highest: u64, port: u16) -> Write {
    let state = PeerState {
        window: Some(WindowState { highest, seen: 1 }),
        usage: KeyUsage { encryptions: highest * 2, failed_decryptions: 1 },
        endpoint: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        budget: None,
    };
    Write::State { kid: k, state }
}

fn config(segment_bytes: u64) -> StoreLimits {
    StoreLimits {
        max_readings_per_device: 1 << 40,
        segment_bytes,
        max_log_bytes: 1 << 40,
        min_free_bytes: 0,
    }
}

fn times(store: &HubStore, k: Kid, limit: usize) -> Vec<i64> {
    store.readings(&k, limit).expect("readings").iter().map(|r| r.time_ms).collect()
}

/// A store in `dir` with devices 1 and 2 paired.
fn paired(dir: &Path, c: StoreLimits) -> (HubStore, Kid, Kid) {
    let (store, _) = HubStore::open(dir, c).expect("open");
    store.commit(&[device(kid(1)), device(kid(2))]).expect("pair");
    (store, kid(1), kid(2))
}

fn peer(store: &HubStore, k: Kid) -> PeerRecord {
    let peers = store.load_peers().expect("peers");
    peers.into_iter().find(|p| p.params.recipient_id == k).expect("peer")
}

#[test]
fn link_states_recover_from_the_snapshot_and_the_frames_after_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (kid(1), kid(2));
    {
        let (store, ..) = paired(tmp.path(), config(4096));
        // Enough frames to seal several segments (each seal snapshots), then a few more.
        for i in 1..=300u64 {
            let mut w = vec![readings(a, [i as i64 * 1000]), checkpoint(a, i, 4000)];
            if i % 100 == 0 {
                w.push(Write::Lease { kid: a, lease: i * 10 });
            }
            if i == 150 {
                w.push(checkpoint(b, 77, 5000));
            }
            store.commit(&w).expect("commit");
        }
        store.settle();
        assert!(store.live().log.sealed_segments() >= 3);
    }
    let (store, _) = HubStore::open(tmp.path(), config(4096)).expect("reopen");
    let p = peer(&store, a);
    assert_eq!(p.window.map(|w| w.highest), Some(300));
    assert_eq!(p.usage.encryptions, 600);
    assert_eq!(p.lease, 3000);
    assert_eq!(p.endpoint, Some(SocketAddr::from(([127, 0, 0, 1], 4000))));
    assert_eq!(peer(&store, b).window.map(|w| w.highest), Some(77));
    assert_eq!(store.reading_count(&a).expect("count"), 300);
    assert_eq!(times(&store, a, 3), vec![298_000, 299_000, 300_000]);
    assert_eq!(times(&store, a, 1000).len(), 300);
}

#[test]
fn logged_documents_and_budgets_are_durable_with_their_commit_across_seals_and_reopens() {
    use protocol::link::{BucketState, GuardState};
    let tmp = tempfile::tempdir().expect("tmp");
    let a = kid(1);
    let budget = |tokens| GuardState {
        known: BucketState { tokens, at: 1_700_000_000_000 + u64::from(tokens) },
        others: BucketState { tokens: 0, at: 5 },
        routable: vec![("192.0.2.9".parse().expect("ip"), BucketState { tokens: 1, at: 6 })],
    };
    let counters = |n: u32| Write::LogMeta {
        key: "security_counters".into(),
        value: format!("{{\"bad_tag\":{n}}}").into_bytes(),
    };
    {
        let (store, ..) = paired(tmp.path(), config(4096));
        // An old-format value in the catalog is what a store from before logging returns.
        let old = Write::Meta { key: "security_counters".into(), value: b"old".to_vec() };
        store.commit(&[old]).expect("commit");
        assert_eq!(store.meta("security_counters").expect("meta"), Some(b"old".to_vec()));
        for i in 1..=200u32 {
            let Write::State { kid, mut state } = checkpoint(a, u64::from(i), 4000) else {
                unreachable!()
            };
            state.budget = Some(budget(i % 32));
            let w = [readings(a, [i64::from(i)]), Write::State { kid, state }, counters(i)];
            store.commit(&w).expect("commit");
            let newest = format!("{{\"bad_tag\":{i}}}").into_bytes();
            assert_eq!(store.meta("security_counters").expect("meta"), Some(newest));
        }
        store.settle();
        assert!(store.live().log.sealed_segments() >= 2, "snapshots were taken");
    }
    let (store, _) = HubStore::open(tmp.path(), config(4096)).expect("reopen");
    assert_eq!(
        store.meta("security_counters").expect("meta"),
        Some(br#"{"bad_tag":200}"#.to_vec())
    );
    assert_eq!(peer(&store, a).budget, Some(budget(200 % 32)));
    // The catalog alone (the last snapshot) holds a logged value too.
    let snap = store.inner.catalog.meta("security_counters").expect("meta");
    assert!(snap.is_some_and(|v| v != b"old"), "the snapshot carries the logged value");
}

#[test]
fn newest_readings_come_from_every_segment_in_time_order_without_duplicates() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (store, a, b) = paired(tmp.path(), config(2048));
    for i in 0..200i64 {
        store.commit(&[readings(a, [10_000 + i]), readings(b, [i])]).expect("commit");
    }
    // A buffered batch drained late (old times), and a reading resent after a lost ack.
    store.commit(&[readings(a, [5, 6, 7])]).expect("late");
    store.commit(&[readings(a, [10_199])]).expect("resent");
    assert_eq!(times(&store, a, 2), vec![10_198, 10_199]);
    let all = times(&store, a, 10_000);
    assert_eq!(all.len(), 203);
    assert_eq!(&all[..4], &[5, 6, 7, 10_000]);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    let r = store.readings(&b, 1).expect("readings");
    assert_eq!(r[0].name, format!("urn:dev:{b}:temp"));
    assert_eq!(r[0].unit.as_deref(), Some("Cel"));
    assert_eq!(r[0].value, serde_json::json!(1.99));
    // The duplicate is stored (and counted) but returned once.
    assert_eq!(store.reading_count(&a).expect("count"), 204);
    assert!(store.readings(&kid(9), 10).expect("unknown").is_empty());
}

#[test]
fn erase_hides_readings_at_once_and_after_restart_and_a_reused_id_starts_clean() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (kid(1), kid(2));
    {
        let (store, ..) = paired(tmp.path(), config(2048));
        for i in 0..100 {
            store.commit(&[readings(a, [i]), readings(b, [i]), checkpoint(a, 90, 1)]).expect("c");
        }
        // Removed with its last readings in the same batch: none of them counts.
        store
            .commit(&[readings(a, [500]), Write::Remove { kid: a }, readings(a, [501])])
            .expect("remove");
        assert_eq!(store.reading_count(&a).expect("count"), 0);
        assert!(store.readings(&a, 100).expect("r").is_empty());
        assert!(store.devices().expect("devices").iter().all(|d| d.id.kid() != a));
        // The segments' reading counts (kept per sealed segment) forget it too.
        assert!(store.frames(0).0.len() > 2, "sealed segments");
        assert_eq!(store.frames(0).0.iter().map(|v| v.readings).sum::<u64>(), 100);
    }
    let (store, _) = HubStore::open(tmp.path(), config(2048)).expect("reopen");
    assert!(store.readings(&a, 100).expect("r").is_empty());
    assert_eq!(store.reading_count(&b).expect("count"), 100);
    assert_eq!(store.frames(0).0.iter().map(|v| v.readings).sum::<u64>(), 100);
    assert!(store.load_peers().expect("peers").iter().all(|p| p.params.recipient_id != a));
    // The same id paired again: no old readings, no old replay window.
    store.commit(&[device(a), readings(a, [1000])]).expect("again");
    drop(store);
    let (store, _) = HubStore::open(tmp.path(), config(2048)).expect("reopen");
    assert_eq!(times(&store, a, 100), vec![1000]);
    assert_eq!(peer(&store, a).window, None);
}

#[test]
fn a_retired_device_loses_its_keys_and_keeps_its_readings() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (kid(1), kid(2));
    {
        let (store, ..) = paired(tmp.path(), config(2048));
        for i in 0..50 {
            store.commit(&[readings(a, [i]), checkpoint(a, 40, 1)]).expect("c");
        }
        store.commit(&[readings(a, [50]), Write::Retire { kid: a }]).expect("retire");
        assert!(store.load_peers().expect("peers").iter().all(|p| p.params.recipient_id != a));
        assert!(store.devices().expect("devices").iter().all(|d| d.id.kid() != a));
        assert_eq!(store.reading_count(&a).expect("count"), 51);
    }
    let (store, _) = HubStore::open(tmp.path(), config(2048)).expect("reopen");
    assert_eq!(times(&store, a, 100), (0..=50).collect::<Vec<_>>());
    let peers = store.load_peers().expect("peers");
    assert_eq!(peers.iter().map(|p| p.params.recipient_id).collect::<Vec<_>>(), [b]);
}

#[test]
fn retention_drops_whole_old_segments_by_size_and_by_per_device_count() {
    let tmp = tempfile::tempdir().expect("tmp");
    let a = kid(1);
    let by_size = StoreLimits { max_log_bytes: 16 << 10, ..config(4096) };
    let (store, _) = HubStore::open(tmp.path(), by_size).expect("open");
    store.commit(&[device(a)]).expect("pair");
    for i in 0..2000 {
        store.commit(&[readings(a, [i]), checkpoint(a, i as u64, 1)]).expect("c");
    }
    store.settle();
    let live = store.live();
    assert!(live.log.bytes() <= (16 << 10) + 4096 + 512, "{}", live.log.bytes());
    drop(live);
    let kept = store.reading_count(&a).expect("count");
    assert!(kept > 100 && kept < 2000, "{kept}");
    let t = times(&store, a, 10_000);
    assert_eq!(t.len() as u64, kept);
    assert_eq!(*t.last().expect("newest"), 1999);
    drop(store);

    let tmp = tempfile::tempdir().expect("tmp");
    let by_count = StoreLimits { max_readings_per_device: 300, ..config(4096) };
    let (store, a, b) = paired(tmp.path(), by_count);
    store.commit(&[readings(b, [1])]).expect("b");
    for i in 0..3000 {
        store.commit(&[readings(a, [i])]).expect("c");
    }
    // `b` has nothing newer: the segment holding its reading stays, and with it every later
    // one (segments go oldest first).
    store.settle();
    assert_eq!(store.reading_count(&a).expect("count"), 3000);
    store.commit(&[Write::Remove { kid: b }]).expect("remove b");
    for i in 3000..3200 {
        store.commit(&[readings(a, [i])]).expect("c");
    }
    store.settle();
    let kept = store.reading_count(&a).expect("count");
    assert!((300..=300 + 400).contains(&kept), "{kept}");
    drop(store);
    let (store, _) = HubStore::open(tmp.path(), by_count).expect("reopen");
    assert_eq!(store.reading_count(&a).expect("count"), kept);
}

#[test]
fn writes_from_many_threads_go_through_the_one_writer_in_order() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (store, a, _) = paired(tmp.path(), config(1 << 20));
    // Submitted back to back: merged into shared commits, each job's writes in order, every
    // job called back once, in submission order.
    let (tx, rx) = mpsc::channel();
    for i in 0..200i64 {
        let tx = tx.clone();
        let writes = vec![readings(a, [i]), Write::Meta { key: "k".into(), value: vec![i as u8] }];
        store.submit(
            writes,
            Box::new(move |writes, result| {
                let _ = tx.send((i, writes.len(), result.is_ok()));
            }),
        );
    }
    let done: Vec<_> = (0..200).map(|_| rx.recv().expect("called back")).collect();
    assert_eq!(done, (0..200).map(|i| (i, 2, true)).collect::<Vec<_>>());
    assert_eq!(store.meta("k").expect("meta"), Some(vec![199]));
    assert_eq!(times(&store, a, 1000), (0..200).collect::<Vec<_>>());
    // Blocking commits from other threads meanwhile.
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..20u8 {
                    let key = format!("t{t}");
                    store.commit(&[Write::Meta { key, value: vec![i] }]).expect("commit");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    for t in 0..4 {
        assert_eq!(store.meta(&format!("t{t}")).expect("meta"), Some(vec![19]));
    }
    // Dropping the last handle closes the store at once: it can be opened again.
    drop(store);
    let (store, _) = HubStore::open(tmp.path(), config(1 << 20)).expect("reopen");
    assert_eq!(store.reading_count(&a).expect("count"), 200);
}

#[test]
fn every_file_is_private() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (store, _) = HubStore::open(tmp.path(), config(2048)).expect("open");
    store.commit(&[device(kid(1))]).expect("pair");
    for i in 0..200 {
        store.commit(&[readings(kid(1), [i])]).expect("c");
    }
    let mut stack = vec![tmp.path().to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("list") {
            let e = e.expect("entry");
            let mode = e.metadata().expect("meta").permissions().mode() & 0o777;
            if e.file_type().expect("type").is_dir() {
                assert_eq!(mode, 0o700, "{}", e.path().display());
                stack.push(e.path());
            } else {
                assert_eq!(mode, 0o600, "{}", e.path().display());
                files += 1;
            }
        }
    }
    assert!(files > 5, "segments and indexes expected");
}

#[test]
fn readings_of_the_first_store_format_move_to_the_log_once() {
    use redb::{ReadableDatabase, TableDefinition};
    let tmp = tempfile::tempdir().expect("tmp");
    let (store, a, _) = paired(tmp.path(), config(4096));
    drop(store);
    // The first format: key len(kid) ‖ kid ‖ time (sign bit flipped, big-endian) ‖ name.
    let old: TableDefinition<&[u8], &[u8]> = TableDefinition::new("readings");
    let db = redb::Database::open(tmp.path().join("hearth.redb")).expect("db");
    let tx = db.begin_write().expect("tx");
    {
        let mut t = tx.open_table(old).expect("table");
        for (time, v) in [(1_000i64, r#"{"u":"Cel","v":20.5}"#), (2_000, r#"{"u":null,"v":true}"#)]
        {
            let mut k = vec![4];
            k.extend_from_slice(a.as_bytes());
            k.extend_from_slice(&((time as u64) ^ (1 << 63)).to_be_bytes());
            k.extend_from_slice(b"urn:dev:x:temp");
            t.insert(k.as_slice(), v.as_bytes()).expect("insert");
        }
    }
    tx.commit().expect("commit");
    drop(db);
    for _ in 0..2 {
        let (store, _) = HubStore::open(tmp.path(), config(4096)).expect("open");
        let r = store.readings(&a, 10).expect("readings");
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].time_ms, r[0].unit.as_deref()), (1_000, Some("Cel")));
        assert_eq!((r[1].time_ms, &r[1].value), (2_000, &serde_json::json!(true)));
        assert_eq!(store.reading_count(&a).expect("count"), 2, "moved once");
    }
    let db = redb::Database::open(tmp.path().join("hearth.redb")).expect("db");
    let tx = db.begin_read().expect("tx");
    assert!(tx.open_table(old).is_err(), "the old table is gone");
}
