//! When a sensor counts as offline: no report for `missed_periods` of its reporting periods. The
//! period is learned from the gaps between the measurement times of its reports (the median of
//! the last few, so one outage does not skew it, and a drained backlog teaches the sensor's own
//! rhythm rather than the drain's), with the configured default until learned.

use serde::{Deserialize, Serialize};

/// Gaps kept for the median.
const GAPS: usize = 8;
/// Gaps needed before the learned period replaces the default.
const LEARNED_AFTER: usize = 3;
/// Reports closer together than this are one burst (a backlog drain), not a period.
const MIN_GAP_MS: u64 = 200;

/// A device's availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// Reporting.
    Online,
    /// No report for the configured number of reporting periods.
    Offline,
    /// Cut off from everything beyond the hub (TR 103 621 6.23 example 2).
    Isolated,
}

impl Availability {
    /// As published (`online`, `offline`, `isolated`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
            Self::Isolated => "isolated",
        }
    }
}

/// Learns a device's reporting period from the measurement times of its reports.
#[derive(Debug, Clone, Default)]
pub(crate) struct Period {
    last_ms: Option<u64>,
    gaps: Vec<u64>,
    next: usize,
}

impl Period {
    /// A report whose newest reading was measured at `now_ms` (older ones are ignored).
    pub(crate) fn report(&mut self, now_ms: u64) {
        if let Some(last) = self.last_ms {
            if now_ms <= last {
                return; // replayed or reordered: not a new measurement
            }
            let gap = now_ms - last;
            if gap < MIN_GAP_MS {
                return;
            }
            if self.gaps.len() < GAPS {
                self.gaps.push(gap);
            } else {
                self.gaps[self.next] = gap;
                self.next = (self.next + 1) % GAPS;
            }
        }
        self.last_ms = Some(now_ms);
    }

    /// The learned period, or `default_ms` until enough gaps were seen.
    pub(crate) fn period_ms(&self, default_ms: u64) -> u64 {
        if self.gaps.len() < LEARNED_AFTER {
            return default_ms;
        }
        let mut g = self.gaps.clone();
        g.sort_unstable();
        g[g.len() / 2]
    }

    /// Whether a device last heard from at `last_ms` is overdue at `now_ms`.
    pub(crate) fn overdue(&self, last_ms: u64, now_ms: u64, default_ms: u64, missed: u32) -> bool {
        let allowed = self.period_ms(default_ms).saturating_mul(u64::from(missed.max(1)));
        now_ms.saturating_sub(last_ms) > allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_until_learned_then_median_of_recent_gaps() {
        let mut p = Period::default();
        assert_eq!(p.period_ms(60_000), 60_000);
        for t in [0, 1_000, 2_000, 3_000] {
            p.report(t);
        }
        assert_eq!(p.period_ms(60_000), 1_000);
        // One long gap (an outage) and a burst (its backlog) do not move the median.
        p.report(30_000);
        p.report(30_050);
        p.report(30_100);
        p.report(31_100);
        assert_eq!(p.period_ms(60_000), 1_000);
        // A lasting change of rhythm is learned.
        for i in 1..=8 {
            p.report(31_100 + i * 5_000);
        }
        assert_eq!(p.period_ms(60_000), 5_000);
    }

    #[test]
    fn overdue_after_the_configured_number_of_periods() {
        let mut p = Period::default();
        for t in [0, 1_000, 2_000, 3_000] {
            p.report(t);
        }
        assert!(!p.overdue(3_000, 6_000, 60_000, 3), "exactly 3 periods is not yet overdue");
        assert!(p.overdue(3_000, 6_001, 60_000, 3));
        assert!(!p.overdue(3_000, 7_000, 60_000, 4));
        // Unlearned: the default applies.
        let fresh = Period::default();
        assert!(!fresh.overdue(0, 179_000, 60_000, 3));
        assert!(fresh.overdue(0, 181_000, 60_000, 3));
    }
}
