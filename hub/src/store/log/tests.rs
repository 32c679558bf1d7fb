//! Segment log tests: torn tails, damaged frames, index rebuilds, retention, erase.

use protocol::link::PeerState;
use protocol::oscore::{KeyUsage, WindowState};
use protocol::senml::{Reading, UnixTimeMillis, Value};

use super::*;
use crate::store::records::Change;

fn kid() -> Kid {
    Kid::new(&[1, 2, 3]).expect("kid")
}

/// A frame with one reading at `t` and a checkpoint whose window is at `t`.
fn payload(t: i64) -> Payload {
    let mut p = Payload::default();
    let r = Reading {
        name: "urn:dev:x:temp".into(),
        unit: Some("Cel".into()),
        value: Value::Number(20.5),
        time: UnixTimeMillis(t),
    };
    p.readings(&kid(), &[r]);
    let cp = PeerState {
        window: Some(WindowState { highest: t as u64, seen: 1 }),
        usage: KeyUsage::default(),
        endpoint: None,
        budget: None,
    };
    p.change(&kid(), Change::Checkpoint(cp));
    p
}

struct Opened {
    log: SegmentLog,
    report: OpenReport,
    /// Highest window replayed.
    window: u64,
}

fn open(dir: &Path, segment_bytes: u64) -> Opened {
    let mut window = 0;
    let mut replay = |_: u64, item: Replayed| {
        if let Replayed::Change(_, Change::Checkpoint(cp)) = item {
            window = cp.window.map_or(0, |w| w.highest);
        }
    };
    let (log, report) =
        SegmentLog::open(dir, LogConfig { segment_bytes }, &HashMap::new(), 0, 1, &mut replay)
            .expect("open");
    Opened { log, report, window }
}

fn times(log: &SegmentLog) -> Vec<i64> {
    read(&log.sources(&kid()), &kid(), 1000).expect("read").iter().map(|r| r.time_ms).collect()
}

fn segment(dir: &Path) -> PathBuf {
    dir.join(format!("{:020}.seg", 1))
}

#[test]
fn a_torn_last_frame_is_cut_off_and_the_log_goes_on() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut o = open(tmp.path(), 1 << 20);
    for t in 1..=3 {
        o.log.append(&payload(t)).expect("append");
    }
    let good = o.log.active.len;
    drop(o);
    let size = || std::fs::metadata(segment(tmp.path())).expect("meta").len();
    // A crash in the middle of writing frame 4.
    let frame = encode_frame(4, &payload(4).bytes);
    for cut in [3, FRAME_HEADER as usize, frame.len() - 1] {
        let f = std::fs::OpenOptions::new().write(true).open(segment(tmp.path())).expect("f");
        f.write_all_at(&frame[..cut], good).expect("write");
        drop(f);
        // What follows the last frame: the torn one, and (the first time) the zeros after it
        // that were written ahead of the frames.
        let after = size() - good;
        assert!(after >= cut as u64);
        let mut o = open(tmp.path(), 1 << 20);
        assert_eq!(o.report.torn_bytes, after);
        assert_eq!(o.report.damaged_copy, None);
        assert_eq!((o.log.next_seq(), o.window), (4, 3));
        assert_eq!(times(&o.log), vec![1, 2, 3]);
        assert_eq!(size(), good);
        drop(o.log);
        o = open(tmp.path(), 1 << 20);
        assert_eq!(o.report, OpenReport { replayed_frames: 3, ..Default::default() });
    }
    let mut o = open(tmp.path(), 1 << 20);
    o.log.append(&payload(4)).expect("append after recovery");
    drop(o);
    let o = open(tmp.path(), 1 << 20);
    assert_eq!((times(&o.log), o.window), (vec![1, 2, 3, 4], 4));
}

#[test]
fn a_crc_mismatch_at_the_end_is_a_torn_write_and_before_it_damage_that_is_skipped() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut o = open(tmp.path(), 1 << 20);
    let mut ends = vec![SEG_HEADER];
    for t in 1..=4 {
        o.log.append(&payload(t)).expect("append");
        ends.push(o.log.active.len);
    }
    drop(o);
    let spoil = |at: u64, bytes: &[u8]| {
        let f = std::fs::OpenOptions::new().write(true).open(segment(tmp.path())).expect("f");
        f.write_all_at(bytes, at).expect("write");
    };
    // A byte changed in the last frame's payload: it never verified, like a torn write.
    spoil(ends[4] - 2, &[0x55]);
    let size = std::fs::metadata(segment(tmp.path())).expect("meta").len();
    assert!(size > ends[4], "zeros are written ahead of the frames");
    let o = open(tmp.path(), 1 << 20);
    assert_eq!(o.report.torn_bytes, size - ends[3]);
    assert_eq!((times(&o.log), o.window), (vec![1, 2, 3], 3));
    drop(o);
    // Damage before the end, in a payload and in a length: those frames are skipped, the
    // frames after them are kept.
    spoil(ends[0] + FRAME_HEADER + 3, &[0x55]);
    spoil(ends[1], &[0xff, 0xff, 0, 0]);
    let o = open(tmp.path(), 1 << 20);
    assert_eq!((o.report.skipped_frames, o.report.torn_bytes), (2, 0));
    assert_eq!((times(&o.log), o.window), (vec![3], 3));
    assert_eq!(o.log.next_seq(), 4);
}

#[test]
fn zeros_written_ahead_are_no_damage_and_are_cut_at_a_seal_and_at_open() {
    let tmp = tempfile::tempdir().expect("tmp");
    let size = || std::fs::metadata(segment(tmp.path())).expect("meta").len();
    let mut o = open(tmp.path(), 1 << 20);
    for t in 1..=3 {
        o.log.append(&payload(t)).expect("append");
    }
    assert_eq!(size(), 1 << 20, "zeros ahead, up to the segment's size");
    let len = o.log.active.len;
    drop(o);
    // A stop or a crash with the zeros there: no torn frame, and the zeros are cut.
    let mut o = open(tmp.path(), 1 << 20);
    assert_eq!(o.report, OpenReport { replayed_frames: 3, ..Default::default() });
    assert_eq!(size(), len);
    o.log.append(&payload(4)).expect("append");
    assert!(size() > o.log.active.len);
    // A seal leaves the sealed file its frames only, and its index matches it at the next open.
    let sealed = o.log.active.len;
    o.log.seal().expect("seal");
    assert_eq!(size(), sealed);
    o.log.append(&payload(5)).expect("append");
    drop(o);
    let o = open(tmp.path(), 1 << 20);
    assert_eq!(o.report.reindexed, 0);
    drop(o);
    // A crash between a seal's index and its cut: zeros after a sealed segment's frames. Its
    // index does not match the file: it is written again, once, and the zeros are cut.
    let f = std::fs::OpenOptions::new().write(true).open(segment(tmp.path())).expect("f");
    f.write_all_at(&[0; 4096], sealed).expect("zeros");
    drop(f);
    let o = open(tmp.path(), 1 << 20);
    assert_eq!((o.report.reindexed, o.report.torn_bytes, &o.report.damaged_copy), (1, 0, &None));
    assert_eq!(size(), sealed);
    assert_eq!(times(&o.log), vec![1, 2, 3, 4, 5]);
    drop(o);
    let o = open(tmp.path(), 1 << 20);
    assert_eq!((o.report.reindexed, times(&o.log)), (0, vec![1, 2, 3, 4, 5]));
}

#[test]
fn sealed_segments_are_indexed_and_a_lost_index_is_rebuilt() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut o = open(tmp.path(), 1024);
    for t in 1..=100 {
        o.log.append(&payload(t)).expect("append");
        if o.log.wants_seal() {
            o.log.seal().expect("seal");
        }
    }
    let sealed = o.log.sealed_segments();
    assert!(sealed >= 3, "{sealed}");
    assert_eq!(times(&o.log), (1..=100).collect::<Vec<_>>());
    assert_eq!(o.log.count(&kid()), 100);
    drop(o);
    let o = open(tmp.path(), 1024);
    assert_eq!(o.report.reindexed, 0);
    assert_eq!(o.window, 100, "replays every frame after the snapshot (none here)");
    drop(o);
    let indexes: Vec<PathBuf> = std::fs::read_dir(tmp.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .collect();
    // An index of the previous format (the same bytes but the version), then garbage.
    for spoil in [&b"HRTHIDX1"[..], b"garbage"] {
        for p in &indexes {
            let f = std::fs::OpenOptions::new().write(true).open(p).expect("idx");
            f.write_all_at(spoil, 0).expect("spoil");
        }
        let o = open(tmp.path(), 1024);
        assert_eq!(o.report.reindexed, sealed);
        assert_eq!(times(&o.log), (1..=100).collect::<Vec<_>>());
        assert_eq!(o.log.count(&kid()), 100);
    }
}

/// One reading at `t` for each of `kids`, in one frame.
fn frame_of(kids: &[Kid], t: i64) -> Payload {
    let mut p = Payload::default();
    for k in kids {
        let r = Reading {
            name: "urn:dev:x:temp".into(),
            unit: None,
            value: Value::Number(t as f64),
            time: UnixTimeMillis(t),
        };
        p.readings(k, &[r]);
    }
    p
}

fn times_of(log: &SegmentLog, kid: &Kid) -> Vec<i64> {
    read(&log.sources(kid), kid, 1000).expect("read").iter().map(|r| r.time_ms).collect()
}

#[test]
fn many_devices_are_found_through_a_small_fence_and_absent_ones_are_not() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Every kid length, the empty kid, and the ends of each length's range.
    let mut kids = vec![Kid::new(&[]).expect("kid")];
    kids.extend((0..=255u8).map(|b| Kid::new(&[b]).expect("kid")));
    kids.extend((0..200u16).map(|i| Kid::new(&(i * 7).to_be_bytes()).expect("kid")));
    kids.extend((0..100u8).map(|i| Kid::new(&[i, 0, 0, 0, 0, 0, 9]).expect("kid")));
    let absent = [
        Kid::new(&[0xff, 0xff]).expect("kid"),
        Kid::new(&[1, 2, 3]).expect("kid"),
        Kid::new(&[0xff; 7]).expect("kid"),
        Kid::new(&[0, 0, 0, 0, 0, 0, 8]).expect("kid"),
    ];
    let mut o = open(tmp.path(), 1 << 30);
    for t in 1..=6 {
        o.log.append(&frame_of(&kids, t)).expect("append");
        if t % 2 == 0 {
            o.log.seal().expect("seal");
        }
    }
    let check = |log: &SegmentLog| {
        assert_eq!(log.sealed.len(), 3);
        for s in &log.sealed {
            assert_eq!(s.fence.held(), kids.len().div_ceil(64), "one kid in memory per 64");
            assert_eq!(s.readings, 2 * kids.len() as u64);
        }
        for k in &kids {
            assert_eq!(times_of(log, k), vec![1, 2, 3, 4, 5, 6], "{k}");
            assert_eq!(log.count(k), 6);
        }
        for k in &absent {
            assert!(log.sources(k).iter().all(|s| matches!(s.blocks, Blocks::Indexed(..))));
            assert_eq!((times_of(log, k), log.count(k)), (vec![], 0), "{k}");
        }
    };
    check(&o.log);
    drop(o);
    let o = open(tmp.path(), 1 << 30);
    assert_eq!(o.report.reindexed, 0);
    check(&o.log);
}

#[test]
fn an_erased_device_stays_hidden_in_sealed_indexes_and_its_reused_kid_counts_anew() {
    let tmp = tempfile::tempdir().expect("tmp");
    let kids: Vec<Kid> = (0..100u8).map(|i| Kid::new(&[i]).expect("kid")).collect();
    let gone = kids[70];
    let mut o = open(tmp.path(), 1 << 30);
    for t in 1..=4 {
        o.log.append(&frame_of(&kids, t)).expect("append");
        o.log.seal().expect("seal");
    }
    o.log.erase(&gone);
    let floor = o.log.next_seq();
    o.log.append(&frame_of(&[gone], 5)).expect("append");
    let check = |log: &SegmentLog| {
        assert_eq!((times_of(log, &gone), log.count(&gone)), (vec![5], 1));
        assert_eq!(times_of(log, &kids[69]), vec![1, 2, 3, 4]);
        let counted: Vec<u64> = log.views().iter().map(|v| v.readings).collect();
        assert_eq!(counted, vec![99, 99, 99, 99, 1]);
        let first = log.sealed[0].first_seq;
        let c = log.counted(first).expect("segment");
        assert!(c.contains(&kids[69]) && !c.contains(&gone));
    };
    check(&o.log);
    drop(o);
    // At start the catalog hands the log the floor of the erase.
    let floors = HashMap::from([(gone, floor)]);
    let (log, _) = SegmentLog::open(
        tmp.path(),
        LogConfig { segment_bytes: 1 << 30 },
        &floors,
        0,
        1,
        &mut |_, _| {},
    )
    .expect("open");
    check(&log);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Any set of kids: each is found in a sealed segment's index (written and loaded back),
    /// and a kid not in it is not.
    #[test]
    fn a_sealed_index_finds_exactly_its_kids(
        set in proptest::collection::btree_set(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..=7), 0..300),
        probes in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..=7), 20),
    ) {
        let tmp = tempfile::tempdir().expect("tmp");
        let kids: Vec<Kid> = set.iter().map(|b| Kid::new(b).expect("kid")).collect();
        let mut o = open(tmp.path(), 1 << 30);
        o.log.append(&frame_of(&kids, 1)).expect("append");
        o.log.seal().expect("seal");
        drop(o);
        let o = open(tmp.path(), 1 << 30);
        for k in &kids {
            proptest::prop_assert_eq!(times_of(&o.log, k), vec![1]);
        }
        for p in probes.iter().filter(|p| !set.contains(*p)) {
            let k = Kid::new(p).expect("kid");
            proptest::prop_assert_eq!(times_of(&o.log, &k), Vec::<i64>::new());
        }
    }
}

#[test]
fn a_damaged_block_costs_its_readings_not_the_query_and_a_damaged_header_a_segment() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut o = open(tmp.path(), 1024);
    for t in 1..=20 {
        o.log.append(&payload(t)).expect("append");
        if o.log.wants_seal() {
            o.log.seal().expect("seal");
        }
    }
    drop(o);
    // The first frame's block starts right after the segment and frame headers.
    let f = std::fs::OpenOptions::new().write(true).open(segment(tmp.path())).expect("f");
    f.write_all_at(&[0xee], SEG_HEADER + FRAME_HEADER).expect("write");
    drop(f);
    let o = open(tmp.path(), 1024);
    assert_eq!(times(&o.log), (2..=20).collect::<Vec<_>>());
    let active = o.log.active.path.clone();
    drop(o);
    std::fs::write(&active, b"not a segment at all").expect("spoil");
    let mut o = open(tmp.path(), 1024);
    assert!(o.report.damaged_copy.is_some());
    let lost = o.log.next_seq();
    o.log.append(&payload(21)).expect("append");
    drop(o);
    let o = open(tmp.path(), 1024);
    assert_eq!(o.log.next_seq(), lost + 1);
    assert_eq!(*times(&o.log).last().expect("newest"), 21);
}

#[test]
fn a_query_that_has_enough_newer_readings_does_not_read_older_directories() {
    let tmp = tempfile::tempdir().expect("tmp");
    let kids = [kid()];
    let mut o = open(tmp.path(), 1 << 30);
    for t in 1..=6 {
        o.log.append(&frame_of(&kids, t)).expect("append");
        if t % 2 == 0 {
            o.log.seal().expect("seal");
        }
    }
    // The two older segments' index files become unreadable (the open handles see it).
    for s in &o.log.sealed[..2] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&s.idx_path)
            .expect("idx")
            .set_len(0)
            .expect("cut");
    }
    let newest = read(&o.log.sources(&kid()), &kid(), 2).expect("only the newest segment is read");
    assert_eq!(newest.iter().map(|r| r.time_ms).collect::<Vec<_>>(), vec![5, 6]);
    assert!(read(&o.log.sources(&kid()), &kid(), 3).is_err(), "older ones are needed");
}

#[test]
fn block_offsets_go_to_runs_and_queries_erases_seals_and_restarts_see_every_reading() {
    let tmp = tempfile::tempdir().expect("tmp");
    let kids: Vec<Kid> = (0..8u8).map(|i| Kid::new(&[i, 0x51]).expect("kid")).collect();
    let runs = |dir: &Path| {
        let files = std::fs::read_dir(dir).expect("list").map(|e| e.expect("entry").path());
        files.filter(|p| p.extension().is_some_and(|x| x == "run")).count()
    };
    let mut o = open(tmp.path(), 64 << 10);
    let spill = o.log.config.spill_at();
    assert_eq!(spill, 256);
    let mut t = 0;
    while o.log.active.runs.len() < 3 {
        t += 1;
        assert!(t < 2_000, "no runs made");
        o.log.append(&frame_of(&kids, t)).expect("append");
        assert!(o.log.active.held < spill, "at most {spill} offsets held after a commit");
    }
    assert_eq!(runs(tmp.path()), 3);
    // And some held in memory (a query reads the runs, then those).
    for _ in 0..5 {
        t += 1;
        o.log.append(&frame_of(&kids, t)).expect("append");
    }
    assert_eq!(o.log.active.held, 5 * kids.len());
    let all = |n: i64| (1..=n).collect::<Vec<_>>();
    for k in &kids {
        assert_eq!(times_of(&o.log, k), all(t), "{k}");
        assert_eq!(o.log.count(k), t as u64);
    }
    // A device erased, then paired again under its id, in the same segment: its readings
    // before the erase stay hidden, in the runs too (and in those written after).
    o.log.erase(&kids[0]);
    let erased_at = t;
    while o.log.active.runs.len() < 5 {
        t += 1;
        assert!(t < 2_000, "no runs made");
        o.log.append(&frame_of(&kids, t)).expect("append");
    }
    t += 1;
    o.log.append(&frame_of(&kids, t)).expect("append");
    let after = ((erased_at + 1)..=t).collect::<Vec<_>>();
    assert_eq!(times_of(&o.log, &kids[0]), after);
    assert_eq!(times_of(&o.log, &kids[7]), all(t));
    // The seal merges the runs into the segment's index and removes them.
    o.log.seal().expect("seal");
    assert_eq!(runs(tmp.path()), 0);
    assert_eq!(times_of(&o.log, &kids[0]), after);
    assert_eq!(times_of(&o.log, &kids[7]), all(t));
    assert_eq!(o.log.count(&kids[7]), t as u64);
    // Runs of the next segment, then a restart: they are removed, and the scan's offsets,
    // more than are held after a commit, go to a run at once.
    let sealed_at = t;
    while o.log.active.runs.len() < 2 {
        t += 1;
        assert!(t < 2_000, "no runs made");
        o.log.append(&frame_of(&kids, t)).expect("append");
    }
    let held = o.log.active.held;
    drop(o);
    let mut o = open(tmp.path(), 64 << 10);
    assert_eq!((o.log.active.runs.len(), o.log.active.held, runs(tmp.path())), (1, 0, 1));
    assert!(t - sealed_at > 256 / 8, "{held}");
    t += 1;
    o.log.append(&frame_of(&kids, t)).expect("append");
    assert_eq!(times_of(&o.log, &kids[0]), ((erased_at + 1)..=t).collect::<Vec<_>>());
    for k in &kids[1..] {
        assert_eq!(times_of(&o.log, k), all(t), "{k}");
        assert_eq!(o.log.count(k), t as u64);
    }
}
