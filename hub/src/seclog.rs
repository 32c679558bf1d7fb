//! Security-event logging that an attacker cannot flood (EN 303 645 5.10-1): every event is
//! counted (`hub ctl security`), the first few of each kind per interval are logged one by one,
//! and the rest are summarized once per interval.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use protocol::link::SecurityEvent;

/// Events of one kind logged individually per interval.
pub(crate) const PER_INTERVAL: u32 = 5;
/// The summary interval.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

/// Rate-limited security log.
#[derive(Debug)]
pub(crate) struct SecurityLog {
    since: Instant,
    kinds: BTreeMap<&'static str, (u32, u64)>,
}

impl Default for SecurityLog {
    fn default() -> Self {
        Self { since: Instant::now(), kinds: BTreeMap::new() }
    }
}

impl SecurityLog {
    /// Logs `e` unless its kind has had its share this interval (then it is only summarized).
    pub(crate) fn event(&mut self, e: &SecurityEvent) {
        self.flush(Instant::now());
        let (logged, suppressed) = self.kinds.entry(kind(e)).or_default();
        if *logged >= PER_INTERVAL {
            *suppressed += 1;
            return;
        }
        *logged += 1;
        log(e);
    }

    /// Writes the summary of the interval that ended, if any (call it now and then).
    pub(crate) fn flush(&mut self, now: Instant) {
        if now.duration_since(self.since) < INTERVAL {
            return;
        }
        for (kind, (_, suppressed)) in std::mem::take(&mut self.kinds) {
            if suppressed > 0 {
                tracing::warn!(
                    kind,
                    more = suppressed,
                    seconds = INTERVAL.as_secs(),
                    "further security events not logged one by one (all are counted: hub ctl security)"
                );
            }
        }
        self.since = now;
    }
}

fn kind(e: &SecurityEvent) -> &'static str {
    match e {
        SecurityEvent::Replay { .. } => "replay",
        SecurityEvent::BadTag { .. } => "bad_tag",
        SecurityEvent::Throttled { .. } => "throttled",
        SecurityEvent::UnknownKid => "unknown_kid",
        SecurityEvent::Malformed(_) => "malformed",
        SecurityEvent::PairingRefused(_) => "pairing_refused",
        SecurityEvent::KeyLimit { .. } => "key_limit",
        SecurityEvent::PairingFailed { .. } => "pairing_failed",
    }
}

fn log(e: &SecurityEvent) {
    match e {
        SecurityEvent::Replay { kid } => tracing::warn!(device = %kid, "replay refused"),
        SecurityEvent::BadTag { kid } => {
            tracing::warn!(device = %kid, "message failed authentication")
        }
        SecurityEvent::Throttled { kid } => tracing::warn!(
            device = %kid,
            "forged-looking datagrams dropped unverified (failure budget spent)"
        ),
        SecurityEvent::UnknownKid => tracing::warn!("OSCORE message for an unknown device"),
        SecurityEvent::Malformed(what) => tracing::debug!(what, "malformed input"),
        SecurityEvent::PairingRefused(why) => tracing::warn!(%why, "pairing request refused"),
        SecurityEvent::PairingFailed { kid, reason } => {
            tracing::warn!(session = %kid, %reason, "pairing attempt failed")
        }
        SecurityEvent::KeyLimit { kid } => {
            tracing::error!(device = %kid, "key usage limit reached: re-pair the device")
        }
    }
}
