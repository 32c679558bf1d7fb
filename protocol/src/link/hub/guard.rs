//! Per-sensor limits that keep an unauthenticated sender from spending a legitimate key
//! (EN 303 645 5.5-1, 5.6; RFC 8613 §7.4 and B.1.2; the AES-CCM key-usage limits in
//! `oscore::usage`):
//!
//! - **Failed verifications** are budgeted: a datagram that names a kid is verified only while
//!   its source's bucket has tokens left, and only below the durable usage ceiling. There are
//!   three buckets: the sensor's last authenticated endpoint; other ports of that host (the
//!   sensor after a reboot on a new port); every other host. A flood from elsewhere therefore
//!   costs the attacker its datagrams, not the owner the key or the sensor its link: sustained,
//!   the three buckets together regain one failure per [`FAIL_REFILL_MS`] / 3, so the hard
//!   limit of 2^14 failures is ~57 days away and the re-key warning (at 7/8) comes a week
//!   before it. Residual: an attacker who floods from the sensor's own host (or spoofs its
//!   address) can starve it; one who floods from elsewhere can starve a sensor that moved to a
//!   new address until it has authenticated once from it.
//! - **Usage ceilings** (the counters' analogue of B.1.1 leases): encryptions and failed
//!   decryptions may grow only below ceilings the caller has made durable, and a restart
//!   resumes at the ceiling, so a persisted count is never restored lower than it was.
//! - **Echo challenges** (each costs an encryption) are limited per source endpoint, plus a
//!   shared bucket for sources other than the sensor's known endpoint, so replaying one old
//!   request cannot keep a recovering sensor from its challenge.

use std::collections::VecDeque;

use crate::oscore::KeyUsage;
use crate::oscore::{ENCRYPTION_LIMIT, FAILED_DECRYPTION_LIMIT};
use crate::time::Millis;

/// Failed verifications a bucket may absorb at once.
pub const FAIL_BURST: u32 = 32;
/// One failed verification is regained per bucket every this many milliseconds (15 minutes).
pub const FAIL_REFILL_MS: u64 = 15 * 60 * 1000;
/// Encryptions reserved by each checkpoint beyond the current count (a restart resumes above
/// them: 4,096 restarts cost the 2^20 limit).
pub const ENCRYPTION_HEADROOM: u64 = 256;
/// Failed decryptions reserved by each checkpoint beyond the current count (2,048 restarts
/// cost the 2^14 limit).
pub const FAILURE_HEADROOM: u64 = 8;
/// Minimum spacing of Echo challenges to one source endpoint.
pub const ECHO_INTERVAL_MS: u64 = 250;
/// Echo challenges to sources other than the sensor's known endpoint: burst, then one per this.
pub const ECHO_BURST: u32 = 8;
/// See [`ECHO_BURST`].
pub const ECHO_REFILL_MS: u64 = 1_000;
/// Source endpoints remembered for Echo spacing.
const ECHO_SOURCES: usize = 8;

/// A token bucket on the caller's clock.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    at: Millis,
}

impl Bucket {
    fn full(burst: u32) -> Self {
        Self { tokens: burst, at: Millis(0) }
    }

    fn refill(&mut self, now: Millis, burst: u32, every_ms: u64) {
        if self.tokens >= burst {
            self.at = now;
            return;
        }
        let gained = now.0.saturating_sub(self.at.0) / every_ms;
        if gained > 0 {
            self.tokens = (u64::from(self.tokens) + gained).min(u64::from(burst)) as u32;
            self.at = self.at.plus(gained * every_ms);
        }
    }

    fn has(&mut self, now: Millis, burst: u32, every_ms: u64) -> bool {
        self.refill(now, burst, every_ms);
        self.tokens > 0
    }

    fn take(&mut self, now: Millis, burst: u32, every_ms: u64) -> bool {
        if !self.has(now, burst, every_ms) {
            return false;
        }
        if self.tokens == burst {
            self.at = now; // regain time counts from the first token spent
        }
        self.tokens -= 1;
        true
    }
}

/// Why a datagram for a known kid is not verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The source's failure budget is spent: drop it unverified.
    Throttled,
    /// The durable failure ceiling is reached: drop it and persist a checkpoint.
    NeedsCheckpoint,
    /// The hard limit of failed decryptions is reached: the key is retired (re-pair).
    KeyRetired,
}

/// One sensor's budgets.
#[derive(Debug, Clone)]
pub struct Guard<A> {
    /// The endpoint of the last authenticated request.
    known: Option<A>,
    known_failures: Bucket,
    same_host_failures: Bucket,
    other_failures: Bucket,
    echo_others: Bucket,
    echo_sent: VecDeque<(A, Millis)>,
    /// Durable ceilings.
    ceiling: KeyUsage,
}

impl<A: super::Endpoint> Guard<A> {
    /// Budgets for a sensor whose usage ceilings `ceiling` are durable.
    pub fn new(known: Option<A>, ceiling: KeyUsage) -> Self {
        Self {
            known,
            known_failures: Bucket::full(FAIL_BURST),
            same_host_failures: Bucket::full(FAIL_BURST),
            other_failures: Bucket::full(FAIL_BURST),
            echo_others: Bucket::full(ECHO_BURST),
            echo_sent: VecDeque::new(),
            ceiling,
        }
    }

    /// The endpoint of the last authenticated request.
    pub fn known(&self) -> Option<A> {
        self.known
    }

    /// May a datagram from `from` be verified? A verification can fail, so it needs a token of
    /// its source's bucket and room below the durable failure ceiling.
    pub fn may_verify(&mut self, now: Millis, from: A, used: KeyUsage) -> Result<(), Hold> {
        if used.failed_decryptions >= FAILED_DECRYPTION_LIMIT {
            return Err(Hold::KeyRetired);
        }
        let bucket = self.failures(from);
        if !bucket.has(now, FAIL_BURST, FAIL_REFILL_MS) {
            return Err(Hold::Throttled);
        }
        if used.failed_decryptions >= self.ceiling.failed_decryptions {
            return Err(Hold::NeedsCheckpoint);
        }
        Ok(())
    }

    /// A verification from `from` failed: it spends a token.
    pub fn failed(&mut self, now: Millis, from: A) {
        self.failures(from).take(now, FAIL_BURST, FAIL_REFILL_MS);
    }

    /// A fresh request from `from` authenticated: answers go there, and it is the sensor's
    /// known endpoint from now on.
    pub fn authenticated(&mut self, from: A) {
        self.known = Some(from);
    }

    fn failures(&mut self, from: A) -> &mut Bucket {
        match self.known {
            Some(k) if k == from => &mut self.known_failures,
            Some(k) if k.host() == from.host() => &mut self.same_host_failures,
            _ => &mut self.other_failures,
        }
    }

    /// May an encryption be made now (below the durable ceiling)?
    pub fn may_encrypt(&self, used: KeyUsage) -> bool {
        used.encryptions < self.ceiling.encryptions
    }

    /// Would a checkpoint raise a ceiling (false once both are at the hard limits)?
    pub fn can_reserve(&self, used: KeyUsage) -> bool {
        let r = self.reserve(used);
        r.encryptions > self.ceiling.encryptions
            || r.failed_decryptions > self.ceiling.failed_decryptions
    }

    /// Ceilings to persist at the next checkpoint: the current counts plus headroom (capped at
    /// the hard limits), never below what is already durable.
    pub fn reserve(&self, used: KeyUsage) -> KeyUsage {
        KeyUsage {
            encryptions: (used.encryptions + ENCRYPTION_HEADROOM)
                .min(ENCRYPTION_LIMIT)
                .max(self.ceiling.encryptions),
            failed_decryptions: (used.failed_decryptions + FAILURE_HEADROOM)
                .min(FAILED_DECRYPTION_LIMIT)
                .max(self.ceiling.failed_decryptions),
        }
    }

    /// Ceilings made durable.
    pub fn ceiling_durable(&mut self, c: KeyUsage) {
        self.ceiling.encryptions = self.ceiling.encryptions.max(c.encryptions);
        self.ceiling.failed_decryptions = self.ceiling.failed_decryptions.max(c.failed_decryptions);
    }

    /// Should a checkpoint be persisted soon (less than half the headroom left)?
    pub fn running_low(&self, used: KeyUsage) -> bool {
        let enc_left = self.ceiling.encryptions.saturating_sub(used.encryptions);
        let fail_left = self.ceiling.failed_decryptions.saturating_sub(used.failed_decryptions);
        (enc_left < ENCRYPTION_HEADROOM / 2 && self.ceiling.encryptions < ENCRYPTION_LIMIT)
            || (fail_left < FAILURE_HEADROOM / 2
                && self.ceiling.failed_decryptions < FAILED_DECRYPTION_LIMIT)
    }

    /// May an Echo challenge go to `from` now? Records it if so.
    pub fn echo(&mut self, now: Millis, from: A) -> bool {
        self.echo_sent.retain(|(_, at)| now < at.plus(ECHO_INTERVAL_MS));
        if self.echo_sent.iter().any(|(a, _)| *a == from) {
            return false;
        }
        if self.known != Some(from) && !self.echo_others.take(now, ECHO_BURST, ECHO_REFILL_MS) {
            return false;
        }
        if self.echo_sent.len() >= ECHO_SOURCES {
            self.echo_sent.pop_front();
        }
        self.echo_sent.push_back((from, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test endpoints: (host, port).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    struct Ep(u8, u16);

    impl super::super::Endpoint for Ep {
        type Host = u8;
        fn host(&self) -> u8 {
            self.0
        }
    }

    const KNOWN: Ep = Ep(1, 5683);
    const KNOWN_REBOOTED: Ep = Ep(1, 40000);
    const ATTACKER: Ep = Ep(2, 1);

    fn used(failed: u64) -> KeyUsage {
        KeyUsage { encryptions: 0, failed_decryptions: failed }
    }

    #[test]
    fn a_flood_from_another_host_leaves_the_sensor_its_budget() {
        let mut g = Guard::new(Some(KNOWN), KeyUsage { encryptions: 0, failed_decryptions: 1000 });
        let mut failures = 0;
        let now = Millis(1);
        for i in 0..20_000u16 {
            let from = Ep(2, i);
            if g.may_verify(now, from, used(failures)).is_ok() {
                g.failed(now, from);
                failures += 1;
            }
        }
        assert_eq!(failures, u64::from(FAIL_BURST));
        assert_eq!(g.may_verify(now, ATTACKER, used(failures)), Err(Hold::Throttled));
        assert_eq!(g.may_verify(now, KNOWN, used(failures)), Ok(()));
        // The sensor rebooted onto a new port of its host: not starved by the other host.
        assert_eq!(g.may_verify(now, KNOWN_REBOOTED, used(failures)), Ok(()));
    }

    #[test]
    fn the_budget_returns_only_with_time() {
        let ceiling = KeyUsage { encryptions: 0, failed_decryptions: FAILED_DECRYPTION_LIMIT };
        let mut g: Guard<Ep> = Guard::new(None, ceiling);
        for _ in 0..FAIL_BURST {
            g.failed(Millis(10), ATTACKER);
        }
        assert_eq!(g.may_verify(Millis(10), ATTACKER, used(0)), Err(Hold::Throttled));
        let almost = Millis(10 + FAIL_REFILL_MS - 1);
        assert_eq!(g.may_verify(almost, ATTACKER, used(0)), Err(Hold::Throttled));
        assert_eq!(g.may_verify(Millis(10 + FAIL_REFILL_MS), ATTACKER, used(0)), Ok(()));
        // Sustained, a flood reaches the hard limit no faster than three buckets refill.
        let days = (FAILED_DECRYPTION_LIMIT * FAIL_REFILL_MS) as f64 / 86_400_000.0 / 3.0;
        assert!(days > 50.0, "three buckets reach the limit in {days:.1} days");
        let spent = used(FAILED_DECRYPTION_LIMIT);
        assert_eq!(g.may_verify(Millis(u64::MAX / 2), KNOWN, spent), Err(Hold::KeyRetired));
    }

    #[test]
    fn failures_stop_at_the_durable_ceiling() {
        let mut g = Guard::new(Some(KNOWN), KeyUsage { encryptions: 10, failed_decryptions: 5 });
        assert_eq!(g.may_verify(Millis(1), KNOWN, used(5)), Err(Hold::NeedsCheckpoint));
        assert!(g.running_low(used(5)));
        let r = g.reserve(used(5));
        assert_eq!(r.failed_decryptions, 5 + FAILURE_HEADROOM);
        g.ceiling_durable(r);
        assert_eq!(g.may_verify(Millis(1), KNOWN, used(5)), Ok(()));
        let enc = |n| KeyUsage { encryptions: n, failed_decryptions: 0 };
        assert!(g.may_encrypt(enc(9)));
        assert!(g.may_encrypt(enc(r.encryptions - 1)));
        assert!(!g.may_encrypt(enc(r.encryptions)));
        // A reservation never lowers a durable ceiling.
        assert!(g.reserve(KeyUsage::default()).encryptions >= r.encryptions);
        // At the hard limits there is nothing left to reserve (no checkpoint loop).
        let spent =
            KeyUsage { encryptions: ENCRYPTION_LIMIT, failed_decryptions: FAILED_DECRYPTION_LIMIT };
        g.ceiling_durable(spent);
        assert!(!g.can_reserve(spent));
        assert!(!g.running_low(spent));
    }

    #[test]
    fn echo_is_spaced_per_source_and_others_share_a_bucket() {
        let mut g: Guard<Ep> = Guard::new(Some(KNOWN), KeyUsage::default());
        assert!(g.echo(Millis(1), KNOWN));
        assert!(!g.echo(Millis(2), KNOWN), "same source again too soon");
        // One replaying source every 50 ms does not keep the known endpoint from its challenge.
        for i in 0..100u64 {
            g.echo(Millis(100 + i * 50), ATTACKER);
        }
        assert!(g.echo(Millis(5_200), KNOWN));
        // Many ports: at most the shared burst, then one per refill.
        let sent = (100..1100u16).filter(|p| g.echo(Millis(10_000), Ep(2, *p))).count();
        assert!(sent <= ECHO_BURST as usize, "{sent} challenges to other sources");
        assert!(g.echo(Millis(10_001), KNOWN), "the known endpoint still gets one");
    }
}
