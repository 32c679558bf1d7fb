//! The one helper for writing small CBOR messages into a buffer (pairing messages, firmware
//! offers and reports, OSCORE's HKDF `info`). Parsing stays with each format's own limits.

use minicbor::Encoder;

/// An encoder writing into a `Vec`.
pub(crate) type Enc<'a> = Encoder<&'a mut Vec<u8>>;
/// What an encoding closure returns (writing to a `Vec` cannot fail).
pub(crate) type EncResult = Result<(), minicbor::encode::Error<core::convert::Infallible>>;

/// Runs `f` on an encoder over a fresh buffer and returns the bytes.
pub(crate) fn encode_with(f: impl FnOnce(&mut Enc<'_>) -> EncResult) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let written = f(&mut Encoder::new(&mut out));
    debug_assert!(written.is_ok(), "writing to a Vec cannot fail");
    out
}
