//! Attempt accounting for pairing (EN 303 645 5.1-5 applied to pairing): the hub accepts pairing
//! only while the owner has armed it, for a bounded time, with a few failed confirmations and a
//! back-off that doubles after each failure.

use crate::time::Millis;

/// Limits of one pairing window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// How long the window stays open.
    pub duration_ms: u64,
    /// Failed confirmations after which the window closes.
    pub max_failures: u32,
    /// Back-off after the first failure; doubles after each further one.
    pub backoff_base_ms: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self { duration_ms: 120_000, max_failures: 3, backoff_base_ms: 2_000 }
    }
}

/// Why a pairing attempt is refused now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PairingRefused {
    /// The window's time is up (or it was never opened).
    #[error("pairing window closed")]
    Closed,
    /// Too many sensors are waiting for their PIN already; try again shortly.
    #[error("too many pairing requests waiting; try again shortly")]
    Busy,
    /// The budget of key generations for this host, or for all, is used up for now (a flood
    /// of hellos): dropped unanswered.
    #[error("too many pairing requests from this host or in all; dropped")]
    Throttled,
    /// Too many failed confirmations in this window.
    #[error("too many failed attempts; open a new pairing window")]
    TooManyFailures,
    /// Waiting out the back-off after a failure.
    #[error("backing off after a failed attempt")]
    BackingOff {
        /// When attempts are accepted again.
        retry_at: Millis,
    },
}

/// One armed pairing window.
#[derive(Debug, Clone)]
pub struct PairingWindow {
    config: WindowConfig,
    closes_at: Millis,
    failures: u32,
    backoff_until: Millis,
}

impl PairingWindow {
    /// Arms pairing at `now`.
    pub fn open(now: Millis, config: WindowConfig) -> Self {
        Self { config, closes_at: now.plus(config.duration_ms), failures: 0, backoff_until: now }
    }

    /// May an attempt proceed at `now`?
    pub fn admit(&self, now: Millis) -> Result<(), PairingRefused> {
        if self.failures >= self.config.max_failures {
            return Err(PairingRefused::TooManyFailures);
        }
        if now >= self.closes_at {
            return Err(PairingRefused::Closed);
        }
        if now < self.backoff_until {
            return Err(PairingRefused::BackingOff { retry_at: self.backoff_until });
        }
        Ok(())
    }

    /// Counts a failed confirmation (or a PIN that completes to no valid key).
    pub fn record_failure(&mut self, now: Millis) {
        self.failures = self.failures.saturating_add(1);
        let shift = (self.failures - 1).min(16);
        self.backoff_until = now.plus(self.config.backoff_base_ms << shift);
    }

    /// Failed confirmations left before the window closes.
    pub fn attempts_left(&self) -> u32 {
        self.config.max_failures.saturating_sub(self.failures)
    }

    /// Failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// When the window closes.
    pub fn closes_at(&self) -> Millis {
        self.closes_at
    }
}
