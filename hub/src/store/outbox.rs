//! The upstream outbox (DESIGN capability 5, TR 103 621 6.51–6.53 store-and-forward): a reader
//! that walks the readings log in commit order through its own file handles, and the durable
//! cursor (`upstream.cursor`) saying how far the broker acknowledged; readings are not stored twice.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::oscore::Kid;
use serde::{Deserialize, Serialize};

use super::log::{Counted, SEG_HEADER, SegmentView, find_frame, frame_at};
use super::records::{self, Item};
use super::{HubStore, StoredReading};

/// Outbox failures.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The cursor file could not be read or written.
    #[error("upstream cursor {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The cursor file is not a cursor.
    #[error("upstream cursor {0} is corrupt: {1}")]
    Corrupt(PathBuf, serde_json::Error),
}

/// The durable state of the outbox: how far the broker acknowledged, and the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The next frame (log sequence number) to forward.
    pub next_seq: u64,
    /// Readings of that frame already acknowledged (or withheld).
    pub index: u32,
    /// Readings acknowledged by the broker.
    pub forwarded: u64,
    /// Readings given up: beyond the bound, or dropped by retention before they were sent.
    pub dropped: u64,
    /// Readings of isolated or removed devices that were not forwarded (TR 103 621 6.23).
    pub withheld: u64,
    /// Frame ranges `[from, to)` after the cursor that were given up (skipped on resume).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skips: Vec<(u64, u64)>,
}

impl Cursor {
    /// The cursor in `path`, or `None` if there is none yet.
    pub fn load(path: &Path) -> Result<Option<Self>, OutboxError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| OutboxError::Corrupt(path.into(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(OutboxError::Io(path.into(), e)),
        }
    }

    /// Replaces `path` atomically and durably (temporary file, fsync, rename, directory fsync).
    pub fn save(&self, path: &Path) -> Result<(), OutboxError> {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let io = |e| OutboxError::Io(path.into(), e);
        crate::private_fs::write(path, &bytes).map_err(io)?;
        match path.parent() {
            Some(dir) => crate::private_fs::sync_dir(dir).map_err(io),
            None => Ok(()),
        }
    }
}

/// One frame's readings, in the order they were committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Its log sequence number.
    pub seq: u64,
    /// Device and reading, in commit order.
    pub readings: Vec<(Kid, StoredReading)>,
}

/// What the reader found next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A frame holding readings.
    Frame(Frame),
    /// Frames that are gone before they were read (retention, damage); `readings` of them were
    /// counted (those of frames no record describes are not).
    Lost {
        /// First frame lost.
        from_seq: u64,
        /// After the last frame lost.
        to_seq: u64,
        /// Readings known to be in them.
        readings: u64,
    },
    /// Nothing more is durable yet.
    Idle,
}

/// The segment being read.
#[derive(Debug)]
struct Current {
    first_seq: u64,
    file: Arc<File>,
    /// Durable bytes known so far.
    len: u64,
    /// Whether frames may still be appended.
    active: bool,
    /// Readings in the segment (of devices not erased), and those before the reader's
    /// position (of every device, erased since or not).
    readings: u64,
    passed: u64,
    /// `passed` by device: what is left is counted in the segment's own terms — the readings
    /// of devices not erased — so a device removed after its readings were passed neither
    /// hides pending readings nor counts twice.
    passed_by_kid: std::collections::HashMap<Kid, u64>,
}

impl Current {
    fn pass(&mut self, payload: &[u8]) {
        if let Ok(items) = records::scan(payload) {
            for i in items {
                if let Item::Block(b) = i {
                    self.passed += u64::from(b.count);
                    *self.passed_by_kid.entry(b.kid).or_default() += u64::from(b.count);
                }
            }
        }
    }
}

/// Reads the log's frames in order from a position, never holding the store's lock across I/O.
#[derive(Debug)]
pub struct OutboxReader {
    store: HubStore,
    cur: Option<Current>,
    /// The next frame to read, and where it starts in `cur`.
    next_seq: u64,
    offset: u64,
    /// Retention drops counted through this sequence.
    accounted_through: u64,
    skips: Vec<(u64, u64)>,
}

impl OutboxReader {
    /// A reader at `cursor` (at the end of the log for `None`: a new outbox forwards from now).
    pub fn open(store: &HubStore, cursor: Option<&Cursor>) -> Self {
        let (views, _) = store.frames(u64::MAX);
        let end = views.last().map_or(1, |v| v.last_seq + 1);
        let (next_seq, skips) = match cursor {
            Some(c) => (c.next_seq, c.skips.clone()),
            None => (end, Vec::new()),
        };
        let mut r = Self {
            store: store.clone(),
            cur: None,
            next_seq,
            offset: 0,
            accounted_through: next_seq.saturating_sub(1),
            skips,
        };
        if next_seq > end {
            tracing::warn!(
                cursor = next_seq,
                log_end = end,
                "the upstream cursor is past the end of the readings log; continuing at its end"
            );
            r.next_seq = end;
            r.accounted_through = end - 1;
        }
        r.position(&views);
        r
    }

    /// The next frame to read.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Frame ranges given up after `after` (for the cursor).
    pub fn skips(&self, after: u64) -> Vec<(u64, u64)> {
        self.skips.iter().filter(|(_, to)| *to > after).copied().collect()
    }

    /// Readings stored after the reader's position, of devices not erased (a device removed
    /// after the reader passed its readings does not hide the others').
    pub fn pending(&self) -> u64 {
        let (views, _) = self.store.frames(u64::MAX);
        let cur_first = self.cur.as_ref().map(|c| c.first_seq);
        let here = self.cur.as_ref().map_or(0, |c| {
            let total = views
                .iter()
                .find(|v| v.first_seq == c.first_seq)
                .map_or(c.readings, |v| v.readings);
            self.left_in(c, total)
        });
        let later: u64 = views
            .iter()
            .filter(|v| v.first_seq >= self.next_seq && Some(v.first_seq) != cur_first)
            .map(|v| v.readings)
            .sum();
        here + later
    }

    /// Readings after the position in the current segment, of its `total` (of devices not
    /// erased): what was passed of the devices still counted there is taken off.
    fn left_in(&self, c: &Current, total: u64) -> u64 {
        match self.store.counted(c.first_seq) {
            Some(kids) => {
                let passed: u64 =
                    c.passed_by_kid.iter().filter(|(k, _)| kids.contains(k)).map(|(_, n)| n).sum();
                total.saturating_sub(passed)
            }
            None => total.saturating_sub(c.passed),
        }
    }

    /// Sets `cur` and `offset` for `next_seq` (scanning the segment's frame headers and
    /// counting the readings before it).
    fn position(&mut self, views: &[SegmentView]) {
        self.cur = None;
        let Some(v) = views
            .iter()
            .rev()
            .find(|v| v.first_seq <= self.next_seq && self.next_seq <= v.last_seq + 1)
        else {
            return; // before the oldest segment: `next` reports the gap
        };
        let mut cur = Current {
            first_seq: v.first_seq,
            file: v.file.clone(),
            len: v.len,
            active: v.active,
            readings: v.readings,
            passed: 0,
            passed_by_kid: std::collections::HashMap::new(),
        };
        let (mut at, mut seq) = (SEG_HEADER, v.first_seq);
        while seq < self.next_seq && at < cur.len {
            let Some((end, payload)) = frame_at(&cur.file, at, cur.len, seq) else {
                match find_frame(&cur.file, at + 1, cur.len, seq + 1) {
                    Some((next_at, next_seq)) => (at, seq) = (next_at, next_seq),
                    None => break,
                }
                continue;
            };
            cur.pass(&payload);
            (at, seq) = (end, seq + 1);
        }
        self.offset = at;
        self.cur = Some(cur);
    }

    /// The next frame with readings (or what was lost before it).
    pub fn next_step(&mut self) -> Step {
        loop {
            match self.advance() {
                Adv::Frame { seq, payload } => {
                    if self.skipped(seq) {
                        continue;
                    }
                    let readings = decode_frame(&payload);
                    if !readings.is_empty() {
                        return Step::Frame(Frame { seq, readings });
                    }
                }
                Adv::Lost(step) => return step,
                Adv::Idle => return Step::Idle,
                Adv::Moved => {}
            }
        }
    }

    fn skipped(&self, seq: u64) -> bool {
        self.skips.iter().any(|(from, to)| (*from..*to).contains(&seq))
    }

    /// Gives up at least `n` of the oldest readings after the position (whole frames; the rest
    /// of a sealed segment without reading it); returns how many were given up.
    pub fn drop_oldest(&mut self, n: u64) -> u64 {
        let from = self.next_seq;
        let mut done = 0;
        let mut live_kids: Option<(u64, Option<Counted>)> = None;
        while done < n {
            let left = self.cur.as_ref().map_or(0, |c| self.left_in(c, c.readings));
            if let Some(c) = &self.cur
                && !c.active
                && self.offset < c.len
                && left <= n - done
            {
                let (views, _) = self.store.frames(u64::MAX);
                if let Some(v) = views.iter().find(|v| v.first_seq == c.first_seq) {
                    // The rest of a sealed segment: counted from its index, not read.
                    done += left;
                    self.next_seq = v.last_seq + 1;
                    self.offset = c.len;
                    continue;
                }
            }
            match self.advance() {
                Adv::Frame { seq, payload } => {
                    if !self.skipped(seq) {
                        // Of devices not erased: the same terms as `pending` (the segment's
                        // devices are looked up once per segment).
                        let first = self.cur.as_ref().map(|c| c.first_seq);
                        if live_kids.as_ref().map(|(f, _)| *f) != first {
                            live_kids = first.map(|f| (f, self.store.counted(f)));
                        }
                        let live = live_kids.as_ref().and_then(|(_, k)| k.as_ref());
                        done += count_of(&payload, live);
                    }
                }
                Adv::Lost(Step::Lost { readings, .. }) => done += readings,
                Adv::Lost(_) | Adv::Idle => break,
                Adv::Moved => {}
            }
        }
        if self.next_seq > from {
            // Drops one after another (the broker away for days, a tick at a time) extend one
            // range: the list grows with the gaps between them, not with every drop.
            match self.skips.last_mut() {
                Some(last) if last.1 == from => last.1 = self.next_seq,
                _ => self.skips.push((from, self.next_seq)),
            }
        }
        done
    }

    /// Readings of segments retention dropped ahead of the reader, not yet counted: counts them
    /// now. Call it now and then while not reading (e.g. while the broker is away).
    pub fn account_retired(&mut self) -> u64 {
        let (_, retired) = self.store.frames(self.next_seq);
        let cur_first = self.cur.as_ref().map(|c| c.first_seq);
        let mut n = 0;
        for d in retired {
            if Some(d.first_seq) != cur_first
                && d.first_seq >= self.next_seq
                && d.last_seq > self.accounted_through
            {
                n += d.readings;
                self.accounted_through = d.last_seq;
            }
        }
        n
    }

    /// One step: a frame, a lost range, idle, or a move to another segment.
    fn advance(&mut self) -> Adv {
        let Some(cur) = &mut self.cur else {
            return self.enter();
        };
        if self.offset >= cur.len {
            if cur.active {
                let (views, _) = self.store.frames(u64::MAX);
                match views.iter().find(|v| v.first_seq == cur.first_seq) {
                    Some(v) => (cur.len, cur.active, cur.readings) = (v.len, v.active, v.readings),
                    None => {
                        // Sealed and retired since: the file's length is final.
                        cur.len = cur.file.metadata().map_or(cur.len, |m| m.len());
                        cur.active = false;
                    }
                }
                if self.offset < cur.len {
                    return Adv::Moved;
                }
                if cur.active {
                    return Adv::Idle;
                }
            }
            self.cur = None;
            return Adv::Moved;
        }
        let seq = self.next_seq;
        let Some((end, payload)) = frame_at(&cur.file, self.offset, cur.len, seq) else {
            // Damage (recovery kept what is valid after it): skip to the next valid frame.
            return match find_frame(&cur.file, self.offset + 1, cur.len, seq + 1) {
                Some((at, next_seq)) => {
                    tracing::warn!(
                        from_seq = seq,
                        to_seq = next_seq,
                        "upstream outbox: damaged log frames skipped"
                    );
                    (self.offset, self.next_seq) = (at, next_seq);
                    Adv::Lost(Step::Lost { from_seq: seq, to_seq: next_seq, readings: 0 })
                }
                None => {
                    tracing::warn!(seq, "upstream outbox: damaged end of a log segment skipped");
                    self.offset = cur.len;
                    Adv::Moved
                }
            };
        };
        cur.pass(&payload);
        (self.offset, self.next_seq) = (end, seq + 1);
        Adv::Frame { seq, payload }
    }

    /// Moves to the segment holding `next_seq`, or past a gap to the next one there is.
    fn enter(&mut self) -> Adv {
        let (views, retired) = self.store.frames(self.next_seq);
        if let Some(v) =
            views.iter().find(|v| v.first_seq <= self.next_seq && self.next_seq <= v.last_seq)
        {
            let v = v.clone();
            self.position(std::slice::from_ref(&v));
            return Adv::Moved;
        }
        let Some(v) = views.iter().find(|v| v.first_seq > self.next_seq) else {
            // At the end: wait at the active segment.
            self.position(&views);
            return Adv::Idle;
        };
        let (from_seq, to_seq) = (self.next_seq, v.first_seq);
        let mut readings = 0;
        let mut covered = 0;
        for d in retired.iter().filter(|d| d.first_seq >= from_seq && d.last_seq < to_seq) {
            covered += d.last_seq + 1 - d.first_seq;
            if d.last_seq > self.accounted_through {
                readings += d.readings;
            }
        }
        if covered < to_seq - from_seq {
            tracing::warn!(
                from_seq,
                to_seq,
                "upstream outbox: log frames are gone that no retention record describes (dropped before this start?); their readings are not counted"
            );
        }
        self.accounted_through = self.accounted_through.max(to_seq - 1);
        self.next_seq = to_seq;
        let v = v.clone();
        self.position(std::slice::from_ref(&v));
        Adv::Lost(Step::Lost { from_seq, to_seq, readings })
    }
}

/// One step of the reader.
enum Adv {
    Frame { seq: u64, payload: Vec<u8> },
    Lost(Step),
    Idle,
    Moved,
}

/// Readings in a frame's payload (from block headers).
/// Readings in a frame's payload, of the devices in `live` (all of them for `None`).
fn count_of(payload: &[u8], live: Option<&Counted>) -> u64 {
    records::scan(payload).map_or(0, |items| {
        items
            .iter()
            .map(|i| match i {
                Item::Block(b) if live.is_none_or(|l| l.contains(&b.kid)) => u64::from(b.count),
                Item::Block(_) | Item::Change(..) | Item::Meta(..) => 0,
            })
            .sum()
    })
}

/// Every reading of a frame's payload, in commit order (a damaged block is skipped).
fn decode_frame(payload: &[u8]) -> Vec<(Kid, StoredReading)> {
    let Ok(items) = records::scan(payload) else { return Vec::new() };
    let mut out = Vec::new();
    for item in items {
        let Item::Block(b) = item else { continue };
        let Some(block) = payload.get(b.at..) else { continue };
        match records::decode_block(block, &b.kid) {
            Ok(readings) => out.extend(readings.into_iter().map(|r| (b.kid, r))),
            Err(e) => tracing::warn!(error = %e, "upstream outbox: damaged block skipped"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use protocol::oscore::Kid;

    use super::*;
    use crate::store::hub_store::tests::{device, readings};
    use crate::store::{StoreLimits, Write};

    fn kid(n: u8) -> Kid {
        Kid::new(&[n, 0x0b]).expect("kid")
    }

    fn config(max_log_bytes: u64) -> StoreLimits {
        StoreLimits {
            max_readings_per_device: 1 << 40,
            segment_bytes: 4096,
            max_log_bytes,
            min_free_bytes: 0,
        }
    }

    /// A store with devices 1 and 2 and `frames` commits of 3 readings of 1 and 2 of 2 each
    /// (times `i*10 + j`), with a lease-only frame between them.
    fn filled(dir: &Path, c: StoreLimits, frames: i64) -> HubStore {
        let (store, _) = HubStore::open(dir, c).expect("open");
        store.commit(&[device(kid(1)), device(kid(2))]).expect("pair");
        append(&store, 0..frames);
        store
    }

    fn append(store: &HubStore, frames: std::ops::Range<i64>) {
        for i in frames {
            let w = [
                readings(kid(1), (0..3).map(|j| i * 10 + j)),
                readings(kid(2), [i * 10 + 5, i * 10 + 6]),
            ];
            store.commit(&w).expect("commit");
            store.commit(&[Write::Lease { kid: kid(1), lease: i as u64 }]).expect("lease");
        }
    }

    /// Everything the reader gives until idle: (kid byte, time) and readings lost.
    fn read_all(r: &mut OutboxReader) -> (Vec<(Kid, i64)>, u64) {
        let (mut out, mut lost) = (Vec::new(), 0);
        loop {
            match r.next_step() {
                Step::Frame(f) => out.extend(f.readings.into_iter().map(|(k, x)| (k, x.time_ms))),
                Step::Lost { readings, .. } => lost += readings,
                Step::Idle => return (out, lost),
            }
        }
    }

    fn expected(frames: std::ops::Range<i64>) -> Vec<(Kid, i64)> {
        frames
            .flat_map(|i| {
                (0..3)
                    .map(move |j| (kid(1), i * 10 + j))
                    .chain([(kid(2), i * 10 + 5), (kid(2), i * 10 + 6)])
            })
            .collect()
    }

    #[test]
    fn reads_every_reading_in_commit_order_across_segments_and_follows_new_commits() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = filled(tmp.path(), config(1 << 40), 200);
        store.seal_now();
        assert!(store.frames(0).0.len() >= 3, "several segments");
        let mut r = OutboxReader::open(&store, Some(&Cursor { next_seq: 1, ..Cursor::default() }));
        assert_eq!(r.pending(), 1000);
        assert_eq!(read_all(&mut r), (expected(0..200), 0));
        assert_eq!(r.pending(), 0);
        append(&store, 200..203);
        assert_eq!(r.pending(), 15);
        assert_eq!(read_all(&mut r), (expected(200..203), 0));
        // A new outbox starts at the end of the log.
        let mut fresh = OutboxReader::open(&store, None);
        assert_eq!(read_all(&mut fresh), (vec![], 0));
    }

    #[test]
    fn resumes_at_a_saved_cursor_after_a_restart() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cursor_path = tmp.path().join("upstream.cursor");
        let all = {
            let store = filled(tmp.path(), config(1 << 40), 120);
            let mut r =
                OutboxReader::open(&store, Some(&Cursor { next_seq: 1, ..Cursor::default() }));
            let mut seen = Vec::new();
            // Forward 50 frames with readings, then save the cursor two readings into the next.
            while seen.len() < 50 {
                let Step::Frame(f) = r.next_step() else { panic!("a frame") };
                seen.push(f);
            }
            let Step::Frame(next) = r.next_step() else { panic!("a frame") };
            let c = Cursor { next_seq: next.seq, index: 2, forwarded: 252, ..Cursor::default() };
            c.save(&cursor_path).expect("save");
            expected(0..120)
        }; // the store closes: as after a crash, only what is on disk counts
        let (store, _) = HubStore::open(tmp.path(), config(1 << 40)).expect("reopen");
        let c = Cursor::load(&cursor_path).expect("load").expect("a cursor");
        assert_eq!(c.forwarded, 252);
        let mut r = OutboxReader::open(&store, Some(&c));
        assert_eq!(r.pending(), 70 * 5);
        let Step::Frame(first) = r.next_step() else { panic!("a frame") };
        assert_eq!(first.seq, c.next_seq);
        let mut rest: Vec<(Kid, i64)> =
            first.readings.into_iter().skip(2).map(|(k, x)| (k, x.time_ms)).collect();
        rest.extend(read_all(&mut r).0);
        assert_eq!(rest[..], all[50 * 5 + 2..]);
    }

    #[test]
    fn segments_dropped_by_retention_before_forwarding_are_counted() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = filled(tmp.path(), config(3 * 4096), 10);
        let mut r = OutboxReader::open(&store, Some(&Cursor { next_seq: 1, ..Cursor::default() }));
        // Read a little: the reader holds its segment open.
        let Step::Frame(_) = r.next_step() else { panic!("a frame") };
        append(&store, 10..400);
        store.seal_now();
        let kept: u64 = store.frames(0).0.iter().map(|v| v.readings).sum();
        assert!(kept < 1500, "retention dropped segments ({kept} readings kept)");
        let accounted = r.account_retired();
        assert!(accounted > 0);
        let (read, lost) = read_all(&mut r);
        assert_eq!(lost, 0, "counted once, by account_retired");
        assert_eq!(5 + read.len() as u64 + accounted, 2000, "every reading read or counted");
        // In commit order, through to the newest.
        let all = expected(0..400);
        let at = |x: &(Kid, i64)| all.iter().position(|y| y == x).expect("a committed reading");
        assert!(read.windows(2).all(|w| at(&w[0]) < at(&w[1])), "out of order");
        assert_eq!(read.last(), all.last());
        // A reader started behind the drop finds the gap and counts it.
        let mut behind =
            OutboxReader::open(&store, Some(&Cursor { next_seq: 1, ..Cursor::default() }));
        let (read, lost) = read_all(&mut behind);
        assert_eq!(read.len() as u64 + lost, 2000);
    }

    /// Issue 19: `pending` read 0 while readings waited, once a device whose readings the
    /// reader had passed was removed (the segment's count left them out, the passed count not).
    #[test]
    fn pending_counts_what_waits_after_a_passed_device_is_removed_and_drops_count_it() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = filled(tmp.path(), config(1 << 40), 100);
        let mut r = OutboxReader::open(&store, Some(&Cursor { next_seq: 1, ..Cursor::default() }));
        let mut frames = 0;
        while frames < 60 {
            if let Step::Frame(_) = r.next_step() {
                frames += 1;
            }
        }
        assert_eq!(r.pending(), 40 * 5);
        // Device 1 is removed; device 2 keeps reporting while the broker is away.
        store.commit(&[Write::Remove { kid: kid(1) }]).expect("remove");
        for i in 100..120 {
            store.commit(&[readings(kid(2), [i * 10 + 5, i * 10 + 6])]).expect("commit");
        }
        let waiting = 40 * 2 + 20 * 2;
        assert_eq!(r.pending(), waiting, "device 2's readings after the position");
        store.seal_now();
        assert_eq!(r.pending(), waiting, "the same once the segment is sealed");
        // The bound drops the oldest and counts them in the same terms.
        let dropped = r.drop_oldest(30);
        assert!((30..30 + 5).contains(&dropped), "{dropped}");
        assert_eq!(r.pending(), waiting - dropped);
        // The reader still yields the removed device's readings (the bridge withholds them).
        let (read, _) = read_all(&mut r);
        assert_eq!(read.iter().filter(|(k, _)| *k == kid(2)).count() as u64, waiting - dropped);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn dropping_the_oldest_skips_whole_frames_and_survives_a_resume() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = filled(tmp.path(), config(1 << 40), 300);
        store.seal_now();
        let start = Cursor { next_seq: 1, ..Cursor::default() };
        let mut r = OutboxReader::open(&store, Some(&start));
        let mut dropped = 0;
        for n in [1, 500, 500] {
            dropped += r.drop_oldest(n);
        }
        // Consecutive drops are one range.
        assert_eq!(r.skips(0).len(), 1);
        assert!((1001..1001 + 5).contains(&dropped), "at least 1001, one frame more at most");
        assert_eq!(dropped % 5, 0, "whole frames");
        assert_eq!(r.pending(), 1500 - dropped);
        let first_kept = (dropped / 5) as i64;
        let (read, _) = read_all(&mut r);
        assert_eq!(read, expected(first_kept..300));
        // The cursor has not moved (nothing was acknowledged): its skips keep them dropped.
        let c = Cursor { skips: r.skips(start.next_seq), ..start };
        assert!(!c.skips.is_empty());
        let mut again = OutboxReader::open(&store, Some(&c));
        assert_eq!(read_all(&mut again).0, expected(first_kept..300));
    }
}
