//! Pairing by out-of-band PIN and ECDH (EN 303 645 5.5-1/5.6-4 via TR 103 621 clause 6.29 ex. 3).
//!
//! The sensor makes a fresh ephemeral P-256 key for every attempt and sends it compressed with the
//! last `w` bytes of X zeroed; its display shows those bytes as a decimal PIN, which the owner
//! types into the hub. The hub rebuilds and validates the key, and both sides run ECDH and HKDF
//! over the whole transcript (both full keys, both nonces, the descriptor, the assigned IDs).
//!
//! **Key confirmation is hub first.** Before the hub's proof, nothing the sensor sends depends on
//! the PIN. Were the sensor to send its MAC first, an attacker posing as the hub could compute
//! the shared secret for every candidate PIN (it holds its own private key) and test each against
//! that MAC offline, recovering the PIN in milliseconds. With the hub first, the attacker must
//! commit to one PIN guess per attempt, and the sensor discards its key after a failed proof.
//!
//! **Attacker bound.** About half of the 2^(8w) completions of X are valid points, so an active
//! attacker who guesses wins with probability about 2^-(8w-1) per attempt (w = 2: 1 in 32,768).
//! A passive eavesdropper learns nothing: the compressed key hides the masked bytes (the curve
//! equation gives Y from X, not the other way round). The hub arms pairing only for a bounded
//! window with a few failed attempts and growing back-off ([`PairingWindow`]).

mod admission;
mod hub;
mod keys;
mod sensor;
mod window;
mod wire;

pub use crate::echo::ECHO_OPTION;
pub use admission::{
    COOKIE_SLOT_MS, FILTER_HOSTS, Held, HelloBudget, HelloLimits, RequestFilter, Seat, Shed,
    hello_cookie_key, seat,
};
pub use hub::{AwaitingPin, AwaitingSensorConfirm, HubPairing};
pub use keys::{MaskWidth, Pin};
pub use sensor::{AwaitingHubHello, AwaitingHubProof, SensorPairing};
pub use window::{PairingRefused, PairingWindow, WindowConfig};
pub use wire::{Confirm, Descriptor, HubHello, MAX_CAPABILITIES, MAX_TEXT, SensorHello};

use crate::oscore::ContextParams;

/// Compressed SEC1 P-256 key length.
pub const COMPRESSED_KEY_LEN: usize = 33;
/// Pairing nonce length.
pub const NONCE_LEN: usize = 16;

/// Why a pairing step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PairingError {
    /// The message is not well-formed CBOR of the expected shape.
    #[error("malformed pairing message")]
    Malformed,
    /// A version this implementation does not speak.
    #[error("unsupported pairing version")]
    UnsupportedVersion,
    /// The descriptor breaks a limit (text length, characters, capability count).
    #[error("invalid descriptor")]
    BadDescriptor,
    /// The mask width is not 2, 3 or 4 bytes.
    #[error("mask width must be 2 to 4 bytes")]
    BadWidth,
    /// The key is not a 33-byte compressed SEC1 point (uncompressed keys leak the PIN).
    #[error("key is not a compressed SEC1 point")]
    NotCompressed,
    /// The masked bytes of the key are not zero.
    #[error("masked key bytes are not zero")]
    NotMasked,
    /// The PIN text is not the expected number of decimal digits, or out of range.
    #[error("PIN must be exactly {0} decimal digits")]
    BadPin(usize),
    /// The completed key is not a point on P-256 (most often a mistyped PIN).
    #[error("the PIN completes no valid key (mistyped, or not this sensor's PIN)")]
    OffCurve,
    /// The peer's key has the same X as ours (a reflected key).
    #[error("peer key equals our own")]
    ReflectedKey,
    /// The hub's proof did not verify: wrong PIN or an attacker. The attempt is over.
    #[error("the hub's proof did not match this sensor's PIN (wrong PIN typed, or an attacker)")]
    HubProofInvalid,
    /// The sensor's confirmation did not verify. The attempt is over.
    #[error("the sensor's confirmation did not match (wrong PIN typed, or an attacker)")]
    SensorProofInvalid,
    /// The hub assigned unusable OSCORE IDs (equal IDs).
    #[error("invalid OSCORE IDs")]
    BadIds,
    /// The owner typed the PIN but the sensor never finished (counted as a failed attempt, so
    /// that abandoning attempts cannot be used to try PINs past the window's limit).
    #[error("the sensor did not finish pairing after its PIN was entered")]
    Abandoned,
}

/// The result of a successful pairing on either side.
#[derive(Debug, Clone)]
pub struct Paired {
    /// The OSCORE context inputs, from this side's point of view.
    pub context: ContextParams,
    /// The sensor's descriptor (as sent by the sensor, bound into the transcript).
    pub descriptor: Descriptor,
}

#[cfg(test)]
mod tests;
