//! The one CBOR reader and writer (RFC 8949) for every format Hearth speaks: pairing messages,
//! firmware offers and reports, OSCORE's HKDF `info`, signed manifests and advisories, and
//! SenML readings. The writer is deterministic (§4.2.1: definite lengths, shortest heads,
//! shortest exact floats); the reader is strict (no indefinite lengths) and maps every failure
//! to a [`CborError`] that each format turns into its own error.

mod read;
mod write;

pub(crate) use read::{Kind, Reader, set_once};
pub(crate) use write::Writer;

/// Why CBOR input was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CborError {
    /// The input ended inside an item.
    Truncated,
    /// An item of the wrong type or out of range (names what was expected).
    Malformed(&'static str),
    /// Valid CBOR that is not in deterministic form (indefinite length, repeated key).
    NonCanonical,
    /// An array, map or tag where a scalar was expected.
    Nested,
    /// Bytes after the last item.
    Trailing,
}
