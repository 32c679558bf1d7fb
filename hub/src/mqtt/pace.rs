//! How often one device's messages go out on MQTT. Its `…/state` at once while it reports at a
//! human pace, then at most [`STATE_PER_S`] a second (a token bucket of [`STATE_BURST`]): later
//! reports wait and go out together as the newest state. The readings that never become a
//! published state (replayed, older, or overtaken while waiting) gather for `…/history`,
//! already written as its entries, and go out as one message at most every [`HISTORY_EVERY`],
//! or at once when [`HISTORY_MAX_BYTES`] have gathered. A device that reports faster than
//! anyone could watch (a fault, a flood, a drain after an outage) so costs the hub and each
//! subscriber a bounded number of messages, and every reading still reaches them, as state or
//! in history.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::topics;
use crate::devices::LiveReading;

/// State messages a device may send at once after a quiet spell.
pub(crate) const STATE_BURST: f64 = 10.0;
/// State messages a device may send per second beyond its burst.
pub(crate) const STATE_PER_S: f64 = 5.0;
/// A device's history goes out at most this often…
pub(crate) const HISTORY_EVERY: Duration = Duration::from_secs(1);
/// …unless this much of it waits (its entries' JSON): so the history held for all devices is
/// at most what arrives in about a second, some 70 bytes a reading.
pub(crate) const HISTORY_MAX_BYTES: usize = 16 << 10;
/// What waits for its pace is looked at this often.
pub(crate) const TICK: Duration = Duration::from_millis(50);

/// One reading of a report (shared with the directory's other listeners, not copied).
#[derive(Debug, Clone)]
pub(crate) struct Held {
    report: Arc<[LiveReading]>,
    at: usize,
}

impl Held {
    fn reading(&self) -> &LiveReading {
        &self.report[self.at]
    }

    fn time_ms(&self) -> i64 {
        self.reading().reading.time_ms
    }
}

/// One device's pace and what it holds back.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    /// State messages it could send (a fraction accrues) and when that was counted; `None`: a
    /// full bucket.
    bucket: Option<(f64, Instant)>,
    /// Its state is newer than the one published and waits for the bucket.
    state_owed: bool,
    /// Live readings of its newest report, not yet in a published state.
    live: Vec<Held>,
    /// The entries of its next `…/history` message ([`topics::history_entries`]), oldest
    /// report first.
    held: Vec<u8>,
    /// When its history last went out.
    history_sent: Option<Instant>,
}

impl Pace {
    /// A report's readings: those older than the device's current state (measured at
    /// `current_ms`) or replayed go to history; the rest may become its state. What waited for
    /// a state that `current_ms` has overtaken goes to history too.
    pub(crate) fn report(&mut self, readings: &Arc<[LiveReading]>, current_ms: Option<i64>) {
        let older =
            |r: &LiveReading| r.backfill || current_ms.is_some_and(|t| r.reading.time_ms < t);
        self.overtaken(current_ms);
        topics::history_entries(&mut self.held, readings.iter().filter(|r| older(r)));
        for (at, r) in readings.iter().enumerate() {
            if !older(r) {
                self.live.push(Held { report: readings.clone(), at });
            }
        }
    }

    /// The state measured at `state_ms` was published (or had been): the live readings it
    /// overtook go to history, the rest are in it.
    pub(crate) fn state_published(&mut self, state_ms: i64) {
        self.overtaken(Some(state_ms));
        self.live.clear();
        self.state_owed = false;
    }

    fn overtaken(&mut self, newest_ms: Option<i64>) {
        let Some(t) = newest_ms else { return };
        if self.live.iter().any(|r| r.time_ms() < t) {
            let old: Vec<Held> = self.live.extract_if(.., |r| r.time_ms() < t).collect();
            topics::history_entries(&mut self.held, old.iter().map(Held::reading));
        }
    }

    /// State messages it may send at `now`.
    fn tokens(&self, now: Instant) -> f64 {
        match self.bucket {
            None => STATE_BURST,
            Some((tokens, at)) => (tokens
                + now.saturating_duration_since(at).as_secs_f64() * STATE_PER_S)
                .min(STATE_BURST),
        }
    }

    /// Whether a state could go out at `now` (without taking the token).
    pub(crate) fn may_send(&self, now: Instant) -> bool {
        self.tokens(now) >= 1.0
    }

    /// A newer state may wait for the bucket (to be looked at when it has a token).
    pub(crate) fn owe(&mut self) {
        self.state_owed = true;
    }

    /// Whether a newer state may go out now (taking its token); if not, it is owed.
    pub(crate) fn take_state(&mut self, now: Instant) -> bool {
        let tokens = self.tokens(now);
        let ok = tokens >= 1.0;
        self.bucket = Some((if ok { tokens - 1.0 } else { tokens }, now));
        self.state_owed = !ok;
        ok
    }

    /// Whether a state waits for the bucket.
    pub(crate) fn state_owed(&self) -> bool {
        self.state_owed
    }

    /// The entries of one `…/history` message, if they are due at `now`.
    pub(crate) fn take_history(&mut self, now: Instant) -> Option<Vec<u8>> {
        let due = self.held.len() >= HISTORY_MAX_BYTES
            || self.history_sent.is_none_or(|t| now >= t + HISTORY_EVERY);
        if self.held.is_empty() || !due {
            return None;
        }
        self.history_sent = Some(now);
        Some(std::mem::take(&mut self.held))
    }

    /// The entries of its next `…/history` message, due or not (a clean stop).
    pub(crate) fn take_all_history(&mut self) -> Option<Vec<u8>> {
        (!self.held.is_empty()).then(|| std::mem::take(&mut self.held))
    }

    /// Whether anything waits to go out (a state or history).
    pub(crate) fn waiting(&self) -> bool {
        self.state_owed || !self.held.is_empty()
    }

    /// Forgets what it holds (the device's data may no longer leave the hub).
    pub(crate) fn drop_held(&mut self) {
        self.live.clear();
        self.held.clear();
        self.state_owed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredReading;

    fn reading(time_ms: i64, backfill: bool) -> LiveReading {
        LiveReading {
            reading: StoredReading {
                time_ms,
                name: "urn:dev:x:temp".into(),
                unit: Some("Cel".into()),
                value: serde_json::json!(20.5),
            },
            backfill,
        }
    }

    /// The times of a history's entries.
    fn times(entries: &[u8]) -> Vec<i64> {
        let list: serde_json::Value =
            serde_json::from_slice(&[b"[", entries, b"]"].concat()).expect("JSON entries");
        list.as_array()
            .expect("array")
            .iter()
            .map(|e| e["time_ms"].as_i64().expect("time"))
            .collect()
    }

    fn report(readings: &[LiveReading]) -> Arc<[LiveReading]> {
        readings.into()
    }

    #[test]
    fn a_burst_goes_at_once_then_five_a_second() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        for i in 0..10 {
            assert!(p.take_state(t0), "state {i} of the burst waits");
        }
        assert!(!p.take_state(t0), "the 11th at the same instant went out");
        assert!(p.state_owed());
        assert!(!p.take_state(t0 + Duration::from_millis(150)), "a token after 150 ms");
        assert!(p.take_state(t0 + Duration::from_millis(200)), "no token after 200 ms");
        assert!(!p.state_owed());
        // Five a second, sustained: over 10 s, 50 more (±1 for the fraction), never more.
        let sent =
            (1..=1000).filter(|i| p.take_state(t0 + Duration::from_millis(200 + i * 10))).count();
        assert!((49..=51).contains(&sent), "{sent} states in 10 s");
        // A quiet spell refills the burst, and no more than it.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| p.take_state(later)).count(), 10);
    }

    #[test]
    fn every_reading_ends_in_a_state_or_in_history() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        // Live 100, then 200 and 300 while the state waits: 300 is published, 100 and 200
        // were overtaken and go to history with the replayed 50.
        p.report(&report(&[reading(100, false)]), Some(100));
        p.report(&report(&[reading(50, true), reading(200, false)]), Some(200));
        p.report(&report(&[reading(300, false)]), Some(300));
        p.state_published(300);
        let h = p.take_history(t0).expect("history due");
        let mut got = times(&h);
        got.sort_unstable();
        assert_eq!(got, [50, 100, 200]);
        assert!(!p.waiting());
        // A report the directory has already overtaken (its state is newer) is history.
        p.report(&report(&[reading(250, false)]), Some(300));
        // History goes out at most once a second…
        assert!(p.take_history(t0 + Duration::from_millis(500)).is_none());
        assert!(p.waiting());
        assert_eq!(times(&p.take_history(t0 + HISTORY_EVERY).expect("due")), [250]);
        // …unless HISTORY_MAX_BYTES wait: then at once, and with every reading.
        let now = t0 + HISTORY_EVERY;
        let mut i = 0;
        let full = loop {
            p.report(&report(&[reading(i, true)]), Some(1 << 40));
            i += 1;
            if let Some(h) = p.take_history(now) {
                break h;
            }
            assert!(i < 1_000, "{i} readings held and no history");
        };
        assert!(full.len() >= HISTORY_MAX_BYTES && full.len() < HISTORY_MAX_BYTES + 200);
        assert_eq!(times(&full), (0..i).collect::<Vec<_>>());
    }

    #[test]
    fn a_device_whose_data_may_not_leave_holds_nothing() {
        let mut p = Pace::default();
        let now = Instant::now();
        p.report(&report(&[reading(1, true), reading(2, false)]), Some(2));
        while p.take_state(now) {}
        assert!(p.state_owed() && p.waiting());
        p.drop_held();
        assert!(!p.waiting());
        assert!(p.take_history(Instant::now()).is_none());
    }
}
