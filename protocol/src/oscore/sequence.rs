//! Sender sequence numbers with durable leases, RFC 8613 Appendix B.1.1.
//!
//! A number may be used only once it lies below a lease that the caller has made durable. The
//! caller persists the value of [`SenderSequence::poll_lease`] (fsync) and then reports it with
//! [`SenderSequence::lease_durable`]. After a crash, [`SenderSequence::resume`] starts at the last
//! durable lease, so every number that might have been used before the crash is skipped and no
//! nonce is ever used twice, whatever the crash point.

use super::{OscoreError, Piv};

/// The default lease block K.
pub const DEFAULT_LEASE_BLOCK: u64 = 1000;

/// A value the caller must make durable before the numbers below it may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[must_use = "a lease must be persisted, then reported with lease_durable"]
pub struct Lease(pub u64);

/// The sender side of one security context's sequence number space.
#[derive(Debug, Clone)]
pub struct SenderSequence {
    next: u64,
    /// Exclusive upper bound of the numbers that may be used (the last durable lease).
    authorized: u64,
    /// A lease handed out by `poll_lease` and not yet reported durable.
    requested: Option<u64>,
    block: u64,
}

impl SenderSequence {
    /// A brand-new context: nothing may be sent until the first lease is durable.
    pub fn new(block: u64) -> Self {
        Self::resume(Lease(0), block)
    }

    /// Restarts from the last durable lease (B.1.1): numbers below it are never used again.
    pub fn resume(durable: Lease, block: u64) -> Self {
        let start = durable.0.min(Piv::MAX + 1);
        Self { next: start, authorized: start, requested: None, block: block.max(1) }
    }

    /// The next number that will be used.
    pub fn next_value(&self) -> u64 {
        self.next
    }

    /// Numbers still usable without a new lease.
    pub fn remaining(&self) -> u64 {
        self.authorized.saturating_sub(self.next)
    }

    /// A new lease to persist, if fewer than half a block remains and none is pending.
    /// Calling it early and often is cheap: it returns `None` while a lease is outstanding.
    pub fn poll_lease(&mut self) -> Option<Lease> {
        if self.requested.is_some() || self.remaining() > self.block / 2 {
            return None;
        }
        let base = self.authorized.max(self.next);
        let value = base.saturating_add(self.block).min(Piv::MAX + 1);
        if value <= self.authorized {
            return None; // the sequence space is used up
        }
        self.requested = Some(value);
        Some(Lease(value))
    }

    /// Reports that `lease` is durable: numbers below it may now be used.
    pub fn lease_durable(&mut self, lease: Lease) {
        self.authorized = self.authorized.max(lease.0.min(Piv::MAX + 1));
        if self.requested.is_some_and(|r| r <= lease.0) {
            self.requested = None;
        }
    }

    /// Forgets a lease that could not be persisted, so that `poll_lease` offers one again.
    pub fn lease_failed(&mut self) {
        self.requested = None;
    }

    /// Takes the next Partial IV, or says why none may be used yet.
    pub fn take(&mut self) -> Result<Piv, OscoreError> {
        if self.next > Piv::MAX {
            return Err(OscoreError::SequenceExhausted);
        }
        if self.next >= self.authorized {
            return Err(OscoreError::LeaseNotDurable);
        }
        let piv = Piv::new(self.next)?;
        self.next += 1;
        Ok(piv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[derive(Debug, Clone)]
    enum Op {
        Take,
        PollLease,
        /// The pending lease write completes.
        WriteDone,
        /// Power cut: RAM (including a pending write) is lost, flash keeps the last lease.
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![6 => Just(Op::Take), 2 => Just(Op::PollLease), 2 => Just(Op::WriteDone), 1 => Just(Op::Crash)]
    }

    proptest! {
        /// Whatever the crash points, no sequence number is ever handed out twice.
        #[test]
        fn no_number_is_used_twice_across_crashes(block in 1u64..20, ops in proptest::collection::vec(op(), 1..600)) {
            let mut flash = Lease(0);
            let mut s = SenderSequence::resume(flash, block);
            let mut writing: Option<Lease> = None;
            let mut used = HashSet::new();
            for op in ops {
                match op {
                    Op::Take => if let Ok(p) = s.take() {
                        prop_assert!(used.insert(p.value()), "{} used twice", p.value());
                        prop_assert!(p.value() < flash.0, "used above the durable lease");
                    },
                    Op::PollLease => if let Some(l) = s.poll_lease() { writing = Some(l) },
                    Op::WriteDone => if let Some(l) = writing.take() { flash = l; s.lease_durable(l) },
                    Op::Crash => { writing = None; s = SenderSequence::resume(flash, block); }
                }
            }
        }
    }

    #[test]
    fn nothing_is_usable_before_the_first_lease_is_durable() {
        let mut s = SenderSequence::new(10);
        assert_eq!(s.take(), Err(OscoreError::LeaseNotDurable));
        let lease = s.poll_lease().expect("a lease");
        assert_eq!(lease, Lease(10));
        assert_eq!(s.poll_lease(), None, "one lease outstanding at a time");
        assert_eq!(s.take(), Err(OscoreError::LeaseNotDurable));
        s.lease_durable(lease);
        for i in 0..10 {
            assert_eq!(s.take().map(Piv::value), Ok(i));
        }
        assert_eq!(s.take(), Err(OscoreError::LeaseNotDurable));
    }

    #[test]
    fn next_lease_is_offered_at_half_a_block() {
        let mut s = SenderSequence::new(10);
        let l = s.poll_lease().expect("lease");
        s.lease_durable(l);
        for _ in 0..4 {
            s.take().expect("usable");
            assert_eq!(s.poll_lease(), None);
        }
        s.take().expect("usable");
        assert_eq!(s.poll_lease(), Some(Lease(20)));
    }

    #[test]
    fn resume_skips_everything_below_the_durable_lease() {
        let mut s = SenderSequence::resume(Lease(2000), 1000);
        assert_eq!(s.take(), Err(OscoreError::LeaseNotDurable));
        let l = s.poll_lease().expect("lease");
        assert_eq!(l, Lease(3000));
        s.lease_durable(l);
        assert_eq!(s.take().map(Piv::value), Ok(2000));
    }

    #[test]
    fn the_sequence_space_ends_at_two_to_the_forty() {
        let mut s = SenderSequence::resume(Lease(Piv::MAX - 1), 1000);
        let l = s.poll_lease().expect("lease");
        assert_eq!(l, Lease(Piv::MAX + 1));
        s.lease_durable(l);
        assert_eq!(s.take().map(Piv::value), Ok(Piv::MAX - 1));
        assert_eq!(s.take().map(Piv::value), Ok(Piv::MAX));
        assert_eq!(s.take(), Err(OscoreError::SequenceExhausted));
        assert_eq!(s.poll_lease(), None);
    }
}
