//! Echo values for return routability (RFC 9175 §2.2 option, used as a reachability check as in
//! §2.4; like DTLS's HelloVerifyRequest cookie, RFC 6347 §4.2.1): a stateless MAC over a
//! purpose, a binding (the source endpoint and whatever else the caller ties it to) and a
//! coarse time slot. Only a party that receives what is sent to that endpoint can echo it, and
//! checking one costs one HMAC and keeps no per-source state. The one implementation behind the
//! pairing hello cookies (`pairing::admission`) and the link's challenges to sources over their
//! failure budget (`link::hub::echo`).

use std::hash::{Hash, Hasher};

use hmac::{Hmac, KeyInit, Mac};
use rand_core::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::time::Millis;

/// The Echo option number (RFC 9175 §2.2.1).
pub const ECHO_OPTION: u16 = 252;
/// Length of an Echo value: the slot's low byte and 8 bytes of MAC.
pub const ECHO_LEN: usize = 9;

/// The key values are minted under, for one purpose. Values are accepted in the slot they were
/// minted in and the next one, so they live between one and two slots; a new key voids every
/// value minted before.
pub struct EchoKey {
    key: [u8; 32],
    purpose: &'static [u8],
    slot_ms: u64,
}

impl core::fmt::Debug for EchoKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EchoKey").field("purpose", &self.purpose).finish_non_exhaustive()
    }
}

impl EchoKey {
    /// A fresh key for `purpose` (a label that keeps values of different uses apart) with
    /// slots of `slot_ms` (at least 1).
    pub fn new<R: CryptoRng + ?Sized>(rng: &mut R, purpose: &'static [u8], slot_ms: u64) -> Self {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        Self { key, purpose, slot_ms: slot_ms.max(1) }
    }

    fn mac(&self, slot: u64, binding: &[u8]) -> [u8; ECHO_LEN - 1] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(&(self.purpose.len() as u64).to_be_bytes());
        m.update(self.purpose);
        m.update(&slot.to_be_bytes());
        m.update(binding);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; ECHO_LEN - 1];
        out.copy_from_slice(&full[..ECHO_LEN - 1]);
        out
    }

    /// The value for `binding` at `now`.
    pub fn mint(&self, now: Millis, binding: &[u8]) -> [u8; ECHO_LEN] {
        let slot = now.0 / self.slot_ms;
        let mut out = [0u8; ECHO_LEN];
        out[0] = slot as u8;
        out[1..].copy_from_slice(&self.mac(slot, binding));
        out
    }

    /// Whether `value` was minted for `binding` in the current slot or the previous one.
    pub fn check(&self, now: Millis, binding: &[u8], value: &[u8]) -> bool {
        let Ok(value) = <[u8; ECHO_LEN]>::try_from(value) else { return false };
        let current = now.0 / self.slot_ms;
        let slot = if value[0] == current as u8 {
            current
        } else if current > 0 && value[0] == (current - 1) as u8 {
            current - 1
        } else {
            return false;
        };
        bool::from(self.mac(slot, binding).ct_eq(&value[1..]))
    }
}

/// A stable byte encoding of an endpoint for a binding: the bytes its `Hash` implementation
/// feeds a hasher (the same for equal values within this program, which is all a value needs:
/// it is checked by the process that minted it).
pub fn endpoint_bytes<A: Hash>(endpoint: &A) -> Vec<u8> {
    struct Collect(Vec<u8>);
    impl Hasher for Collect {
        fn write(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut c = Collect(Vec::with_capacity(32));
    endpoint.hash(&mut c);
    c.0
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    const SLOT: u64 = 60_000;

    fn key(seed: u64, purpose: &'static [u8]) -> EchoKey {
        EchoKey::new(&mut ChaCha20Rng::seed_from_u64(seed), purpose, SLOT)
    }

    fn ep(s: &str) -> Vec<u8> {
        endpoint_bytes(&s.parse::<SocketAddr>().expect("address"))
    }

    #[test]
    fn a_value_holds_for_its_binding_in_its_slot_and_the_next_only() {
        let c = key(1, b"test");
        let a = ep("127.0.0.2:5000");
        let minted = c.mint(Millis(10_000), &a);
        assert!(c.check(Millis(10_000), &a, &minted));
        assert!(c.check(Millis(SLOT - 1), &a, &minted), "end of its slot");
        assert!(c.check(Millis(2 * SLOT - 1), &a, &minted), "the next slot");
        assert!(!c.check(Millis(2 * SLOT), &a, &minted), "two slots later");
        // Slot numbers wrap in one byte: 256 slots later the low byte matches, the MAC does not.
        assert!(!c.check(Millis(256 * SLOT + 10_000), &a, &minted));
        for other in ["127.0.0.2:5001", "127.0.0.3:5000", "[::1]:5000", "[::ffff:127.0.0.2]:5000"] {
            assert!(!c.check(Millis(10_000), &ep(other), &minted), "{other}");
        }
        assert!(!key(2, b"test").check(Millis(10_000), &a, &minted), "another key");
        assert!(!key(1, b"other").check(Millis(10_000), &a, &minted), "another purpose");
        for i in 0..ECHO_LEN {
            for bit in 0..8 {
                let mut bad = minted;
                bad[i] ^= 1 << bit;
                assert!(!c.check(Millis(10_000), &a, &bad), "byte {i} bit {bit}");
            }
        }
        assert!(!c.check(Millis(10_000), &a, &minted[..ECHO_LEN - 1]));
        assert!(!c.check(Millis(10_000), &a, &[minted.as_slice(), &[0]].concat()));
        assert!(!c.check(Millis(10_000), &a, &[]));
    }

    #[test]
    fn a_value_minted_at_the_start_of_time_is_not_taken_for_the_slot_before() {
        let c = key(3, b"test");
        let a = ep("127.0.0.1:1");
        let mut v = c.mint(Millis(0), &a);
        v[0] = v[0].wrapping_sub(1);
        assert!(!c.check(Millis(0), &a, &v));
    }

    #[test]
    fn endpoint_bytes_tell_endpoints_apart() {
        assert_eq!(ep("127.0.0.1:1"), ep("127.0.0.1:1"));
        assert_ne!(ep("127.0.0.1:1"), ep("127.0.0.1:256"));
        assert_ne!(ep("127.0.0.1:1"), ep("127.0.0.2:1"));
        assert_ne!(ep("[::1]:1"), ep("[::2]:1"));
    }
}
