//! OSCORE, RFC 8613, with AES-CCM-16-64-128: the protected link between the hub and a sensor
//! (EN 303 645 5.5-1/5.5-2: integrity, confidentiality and replay protection of communications).
//!
//! Each rule lives in one file: key derivation (§3.2) `derive`, the nonce (§5.2) `nonce`, the AAD
//! (§5.4) `aad`, the option (§6.1) `option`, sequence leases (B.1.1) `sequence`, the replay window
//! (§7.4, B.1.2) `replay`, key-usage limits `usage`, renewing a context restored from a backup
//! (B.2) `renew`; `context` protects and unprotects messages.

mod aad;
mod context;
mod derive;
mod nonce;
mod option;
pub mod renew;
mod replay;
mod sequence;
mod usage;

pub use aad::aad;
pub use context::{RequestBinding, Sealed, SecurityContext, Verified, echo_value};
pub use derive::{ALG_AES_CCM_16_64_128, ContextParams};
pub use nonce::nonce;
pub use option::OscoreOption;
pub use replay::{Fresh, ReplayWindow, WINDOW, WindowState};
pub use sequence::{DEFAULT_LEASE_BLOCK, Lease, SenderSequence};
pub use usage::{ENCRYPTION_LIMIT, FAILED_DECRYPTION_LIMIT, KeyUsage, NeedsRekey};

/// AES-CCM-16-64-128 key length.
pub const KEY_LEN: usize = 16;
/// AES-CCM-16-64-128 nonce length.
pub const NONCE_LEN: usize = 13;
/// AES-CCM-16-64-128 tag length.
pub const TAG_LEN: usize = 8;
/// Longest Sender ID the nonce can carry (§5.2: nonce length − 6).
pub const MAX_KID_LEN: usize = NONCE_LEN - 6;

/// Why a message could not be protected or unprotected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OscoreError {
    /// The OSCORE option is malformed.
    #[error("malformed OSCORE option: {0}")]
    BadOption(&'static str),
    /// The message has no OSCORE option, or one without the parts it needs.
    #[error("not an OSCORE request: {0}")]
    NotOscore(&'static str),
    /// A Sender ID longer than the nonce allows.
    #[error("kid longer than 7 bytes")]
    KidTooLong,
    /// A Partial IV longer than 5 bytes or above 2^40 − 1.
    #[error("partial IV out of range")]
    PivOutOfRange,
    /// The kid does not name this context.
    #[error("unknown kid")]
    UnknownKid,
    /// The Partial IV was seen before or is older than the window.
    #[error("replayed or too old")]
    Replay,
    /// The replay window was lost in a restart; freshness needs an Echo round trip (B.1.2).
    #[error("replay window unknown: Echo required")]
    ReplayWindowUnknown,
    /// The AEAD tag did not verify (tampered, wrong key, or wrong request binding).
    #[error("decryption failed")]
    DecryptionFailed,
    /// The decrypted plaintext is not a valid inner CoAP message.
    #[error("malformed inner message")]
    BadInnerMessage,
    /// The CoAP message could not be encoded.
    #[error("message too large to encode")]
    Encode,
    /// No sequence number below a durable lease is available (B.1.1).
    #[error("no durable sequence lease")]
    LeaseNotDurable,
    /// The sender sequence number space (2^40) is used up.
    #[error("sequence numbers exhausted")]
    SequenceExhausted,
    /// The key reached a usage limit and must be replaced.
    #[error("key usage limit reached")]
    KeyLimitReached,
}

/// An OSCORE Sender/Recipient ID ("kid"): 0 to 7 bytes, stored inline so it is cheap to copy and
/// hash (the hub demultiplexes sensors by kid). It hashes and orders as one number (its
/// length, then its bytes): the hub looks kids up several times per reading.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Kid {
    len: u8,
    bytes: [u8; MAX_KID_LEN],
}

impl Kid {
    /// A kid from its bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, OscoreError> {
        if bytes.len() > MAX_KID_LEN {
            return Err(OscoreError::KidTooLong);
        }
        let mut k = Self { len: bytes.len() as u8, bytes: [0; MAX_KID_LEN] };
        k.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(k)
    }

    /// The kid's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The length, then the bytes, big-endian: equal exactly when the kids are (the bytes past
    /// the length are always zero), and ordered as (length, bytes) compare.
    fn key(&self) -> u64 {
        let mut b = [0u8; 8];
        b[0] = self.len;
        b[1..].copy_from_slice(&self.bytes);
        u64::from_be_bytes(b)
    }
}

impl core::hash::Hash for Kid {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        // One write instead of three (length byte, array length, bytes): SipHash per write
        // was the link thread's largest single user-space cost.
        state.write_u64(self.key());
    }
}

impl Ord for Kid {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for Kid {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl core::fmt::Debug for Kid {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Kid(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl core::fmt::Display for Kid {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A Partial IV: a sender sequence number, 0 to 2^40 − 1 (§6.1: at most 5 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Piv(u64);

impl Piv {
    /// The largest Partial IV.
    pub const MAX: u64 = (1 << 40) - 1;

    /// A Partial IV from a sequence number.
    pub fn new(value: u64) -> Result<Self, OscoreError> {
        if value > Self::MAX {
            return Err(OscoreError::PivOutOfRange);
        }
        Ok(Self(value))
    }

    /// The sequence number.
    pub fn value(self) -> u64 {
        self.0
    }

    /// Minimal big-endian encoding (at least one byte, §6.1), as (buffer, used length): the
    /// used bytes are the last `len` of the buffer.
    pub fn to_bytes(self) -> ([u8; 5], usize) {
        let be = self.0.to_be_bytes();
        let mut out = [0u8; 5];
        out.copy_from_slice(&be[3..]);
        let len = (5 - (self.0.leading_zeros() as usize).saturating_sub(24) / 8).max(1);
        (out, len)
    }

    /// Parses 1 to 5 big-endian bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, OscoreError> {
        if bytes.is_empty() || bytes.len() > 5 {
            return Err(OscoreError::PivOutOfRange);
        }
        Ok(Self(bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))))
    }
}

#[cfg(test)]
mod vectors;

#[cfg(test)]
mod kid_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // The packed key orders and compares kids as their (length, bytes) do.
        #[test]
        fn kids_order_and_compare_by_length_then_bytes(
            a in proptest::collection::vec(any::<u8>(), 0..=MAX_KID_LEN),
            b in proptest::collection::vec(any::<u8>(), 0..=MAX_KID_LEN),
        ) {
            let (ka, kb) = (Kid::new(&a).unwrap(), Kid::new(&b).unwrap());
            prop_assert_eq!(ka.cmp(&kb), (a.len(), &a).cmp(&(b.len(), &b)));
            prop_assert_eq!(ka == kb, a == b);
        }
    }

    #[test]
    fn a_kid_and_its_zero_padded_longer_twin_differ() {
        let short = Kid::new(&[1]).unwrap();
        let long = Kid::new(&[1, 0]).unwrap();
        assert_ne!(short, long);
        assert!(short < long);
        let s = std::hash::RandomState::new();
        assert_ne!(
            std::hash::BuildHasher::hash_one(&s, short),
            std::hash::BuildHasher::hash_one(&s, long)
        );
        assert_eq!(
            std::hash::BuildHasher::hash_one(&s, short),
            std::hash::BuildHasher::hash_one(&s, Kid::new(&[1]).unwrap())
        );
    }
}
