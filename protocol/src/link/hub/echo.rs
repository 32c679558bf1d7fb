//! Return routability for sources over their failure budget (RFC 9175 §2.2–2.4: the Echo
//! option as a reachability check; with OSCORE it is an *outer* option here, since it is the
//! hub's transport-level test of the source address, not part of the protected request).
//!
//! A datagram for a known kid whose class has no token left is answered with an unprotected
//! 4.01 carrying an outer Echo: a [`crate::echo`] value, under a key that never leaves this
//! process, bound to the kid and the exact source endpoint: minting and checking one costs no
//! key usage and keeps no per-source state, and only a party that receives what is sent to that
//! endpoint can echo it. A blind (off-path) spoofer
//! of the sensor's address never sees it; an on-path attacker can, and could drop the sensor's
//! traffic anyway (the stated residual).
//!
//! Challenges are never larger than the request they answer (no amplification) and go out at
//! most one per [`CHALLENGE_SPACING_MS`] to any endpoint other than the sensor's known one; the
//! known endpoint gets one for every datagram over budget, so a spoofer of that endpoint cannot
//! use up the sensor's challenges (it only reflects its own datagrams, one for one, onto the
//! sensor, which ignores answers to tokens it did not send).

use std::collections::HashMap;

use rand_core::CryptoRng;

use crate::echo::{ECHO_LEN, EchoKey};
use crate::oscore::Kid;
use crate::time::Millis;

use super::Endpoint;

pub use crate::echo::ECHO_OPTION;
/// Length of a return-routability value.
pub const ROUTABILITY_LEN: usize = ECHO_LEN;
/// A value is valid in the slot it was minted in and the next one: 32 to 64 seconds.
pub const ROUTABILITY_SLOT_MS: u64 = 32_000;
/// Challenges to one endpoint other than the sensor's known endpoint: at most one per this.
pub const CHALLENGE_SPACING_MS: u64 = 250;
/// Endpoints remembered for challenge spacing (beyond it the oldest are forgotten: a source
/// with many addresses gets more challenges, each no larger than its own datagram).
const SPACED_SOURCES: usize = 1024;

/// Mints and checks return-routability values, spacing the challenges.
pub(super) struct Routability<A> {
    key: Option<EchoKey>,
    sent: HashMap<A, Millis>,
}

impl<A: Endpoint> Routability<A> {
    pub(super) fn new() -> Self {
        Self { key: None, sent: HashMap::new() }
    }

    /// A value for `from` to echo, if a challenge may go there now (`known`: `from` is the
    /// sensor's known endpoint).
    pub(super) fn challenge<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        kid: &Kid,
        from: A,
        known: bool,
        rng: &mut R,
    ) -> Option<[u8; ROUTABILITY_LEN]> {
        if !known {
            if self.sent.get(&from).is_some_and(|t| now < t.plus(CHALLENGE_SPACING_MS)) {
                return None;
            }
            if self.sent.len() >= SPACED_SOURCES {
                self.sent.retain(|_, t| now < t.plus(CHALLENGE_SPACING_MS));
                if self.sent.len() >= SPACED_SOURCES {
                    self.sent.clear();
                }
            }
            self.sent.insert(from, now);
        }
        let key = self.key.get_or_insert_with(|| {
            EchoKey::new(rng, b"hearth return routability", ROUTABILITY_SLOT_MS)
        });
        Some(key.mint(now, &binding(kid, &from)))
    }

    /// Whether `echo` is a value minted for `from` and `kid` in this slot or the one before.
    pub(super) fn valid(&self, now: Millis, kid: &Kid, from: &A, echo: &[u8]) -> bool {
        self.key.as_ref().is_some_and(|k| k.check(now, &binding(kid, from), echo))
    }
}

/// What a value is bound to: the sensor's kid and the exact source endpoint.
fn binding<A: Endpoint>(kid: &Kid, from: &A) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.push(kid.as_bytes().len() as u8);
    out.extend_from_slice(kid.as_bytes());
    from.write_id(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    struct Ep(u8, u16);

    impl Endpoint for Ep {
        type Host = u8;
        fn host(&self) -> u8 {
            self.0
        }
        fn write_id(&self, out: &mut Vec<u8>) {
            out.push(self.0);
            out.extend_from_slice(&self.1.to_be_bytes());
        }
    }

    fn kid(b: u8) -> Kid {
        Kid::new(&[b]).expect("kid")
    }

    #[test]
    fn a_value_proves_only_its_endpoint_kid_and_time() {
        let mut r = Routability::new();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (k, sensor) = (kid(1), Ep(2, 5683));
        assert!(!r.valid(Millis(1), &k, &sensor, &[0; 8]), "no key yet: nothing is valid");
        let now = Millis(100_000);
        let v = r.challenge(now, &k, sensor, true, &mut rng).expect("challenge");
        assert!(r.valid(now, &k, &sensor, &v));
        // Wrong endpoint (another port, another host), wrong kid.
        assert!(!r.valid(now, &k, &Ep(2, 5684), &v));
        assert!(!r.valid(now, &k, &Ep(3, 5683), &v));
        assert!(!r.valid(now, &kid(9), &sensor, &v));
        // Forged: every single-bit change, a truncation, an empty value.
        for i in 0..v.len() * 8 {
            let mut f = v;
            f[i / 8] ^= 1 << (i % 8);
            assert!(!r.valid(now, &k, &sensor, &f), "bit {i}");
        }
        assert!(!r.valid(now, &k, &sensor, &v[..7]));
        assert!(!r.valid(now, &k, &sensor, &[]));
        // Valid through the next slot, stale after it.
        let slot_end = (now.0 / ROUTABILITY_SLOT_MS + 1) * ROUTABILITY_SLOT_MS;
        assert!(r.valid(Millis(slot_end + ROUTABILITY_SLOT_MS - 1), &k, &sensor, &v));
        assert!(!r.valid(Millis(slot_end + ROUTABILITY_SLOT_MS), &k, &sensor, &v));
        // Another hub (another key) does not accept it.
        let mut other = Routability::new();
        let mut rng2 = ChaCha20Rng::seed_from_u64(2);
        let _ = other.challenge(now, &k, sensor, true, &mut rng2);
        assert!(!other.valid(now, &k, &sensor, &v));
    }

    #[test]
    fn challenges_are_spaced_per_endpoint_except_the_known_one() {
        let mut r = Routability::new();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let k = kid(1);
        let known = Ep(1, 1);
        // The known endpoint gets one for every datagram (a spoofer cannot use them up).
        let n = (0..100).filter(|_| r.challenge(Millis(5), &k, known, true, &mut rng).is_some());
        assert_eq!(n.count(), 100);
        let other = Ep(9, 9);
        assert!(r.challenge(Millis(5), &k, other, false, &mut rng).is_some());
        assert!(r.challenge(Millis(6), &k, other, false, &mut rng).is_none());
        assert!(
            r.challenge(Millis(5 + CHALLENGE_SPACING_MS), &k, other, false, &mut rng).is_some()
        );
        // Many endpoints: each gets its own, and the table stays bounded.
        for p in 0..5000u16 {
            assert!(r.challenge(Millis(10_000), &k, Ep(7, p), false, &mut rng).is_some());
        }
        assert!(r.sent.len() <= SPACED_SOURCES);
    }
}
