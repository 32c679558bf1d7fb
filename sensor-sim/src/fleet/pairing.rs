//! Pairing in the fleet (TR 103 621 6.29 ex. 3): every attempt starts with a fresh ephemeral key
//! and a new PIN on the display; a refused or failed attempt (no window open, window closed,
//! wrong PIN) is retried with back-off — 2 s, doubling up to a bound — until the owner opens a
//! window and types the PIN shown.

use protocol::time::Millis;
use rand_core::Rng;

use super::{FleetEvent, FleetTask, boot_link};

/// First retry interval.
const FIRST_RETRY_MS: u64 = 2_000;

impl FleetTask {
    /// Starts a pairing attempt on an unpaired sensor (its display then shows a new PIN).
    pub(super) fn start_pairing(&mut self, index: u32, now: Millis) {
        let Some(s) = self.sensors.get_mut(index as usize) else { return };
        if s.link.is_paired() {
            return;
        }
        s.pair_retry = None;
        s.pair_attempts = s.pair_attempts.saturating_add(1);
        let descriptor = crate::model::descriptor(s.model, &s.serial, s.fw.running());
        s.link = boot_link(&mut self.rng, None, 0, &self.config, index);
        s.kid = None;
        s.link.start_pairing(now, &mut self.rng, descriptor, crate::model::WIDTH);
        self.service(index);
    }

    /// After a refusal or failure: tries again later, unless retries are off.
    pub(super) fn schedule_pair_retry(&mut self, index: u32, now: Millis) {
        let max = self.config.pair_retry_max_ms;
        let Some(s) = self.sensors.get_mut(index as usize) else { return };
        if max == 0 || s.link.is_paired() {
            return;
        }
        let doublings = s.pair_attempts.saturating_sub(1).min(16);
        let base = FIRST_RETRY_MS.saturating_mul(1 << doublings).min(max.max(FIRST_RETRY_MS));
        // Up to a quarter more, so that sensors refused together do not retry together.
        let in_ms = base + self.rng.next_u64() % (base / 4 + 1);
        s.pair_retry = Some(now.plus(in_ms));
        self.emit(FleetEvent::PairingRetry { index, in_ms });
    }
}
