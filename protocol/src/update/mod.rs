//! Signed update manifests, security advisories and image reassembly: EN 303 645 provisions
//! 5.3-7/5.3-9/5.3-10 (TR 103 621 clauses 6.15, 6.17, 6.18) — COSE_Sign1 (RFC 9052 §4.2) with
//! ES256 over canonical CBOR (RFC 8949 §4.2.1), anti-rollback (6.17 ex. 3) and freeze protection.
//!
//! Wire format, all maps with small unsigned integer keys, all encodings canonical:
//!
//! * envelope: untagged `COSE_Sign1 = [protected: bstr .cbor {1: -7, 4: kid}, {}, payload: bstr,
//!   signature: bstr(64)]`; `kid` is the first 8 bytes of SHA-256 of the compressed SEC1 key.
//! * manifest payload: `{0: 1 (type), 1: model tstr, 2: version uint, 3: minimum installed version
//!   uint, 4: image size uint, 5: image SHA-256 bstr(32), 6: expires uint (Unix s), 7: disruptive
//!   bool, 8: risks mitigated tstr, 9: released uint (Unix s)}`.
//! * advisory payload: `{0: 2 (type), 1: model tstr, 2: first affected version uint, 3: last
//!   affected version uint, 4: severity uint (0 low, 1 medium, 2 high, 3 critical), 5: fixed-in
//!   version uint (omitted when none), 6: text tstr, 7: issued uint (Unix s)}`.

mod advisory;
mod cose;
pub mod feed;
mod image;
mod manifest;

pub use advisory::{Advisory, Severity, VerifiedAdvisory, verify_advisory};
pub use cose::{KeyId, PublicKey, SigningKeyPair, TrustAnchors};
pub use image::{ImageAssembler, Progress, VerifiedImage, verify_image};
pub use manifest::{Manifest, VerifiedManifest, signer_kid, verify_manifest};

use crate::time::UnixTime;

/// Largest accepted envelope (manifest or advisory), in bytes.
pub const MAX_ENVELOPE_LEN: usize = 4096;
/// Largest image a manifest may announce (16 MiB).
pub const MAX_IMAGE_SIZE: u32 = 16 * 1024 * 1024;
/// Longest model designation, in bytes (printable ASCII).
pub const MAX_MODEL_LEN: usize = 64;
/// Longest free text (risks mitigated, advisory text), in bytes.
pub const MAX_TEXT_LEN: usize = 1024;

impl From<crate::cbor::CborError> for UpdateError {
    fn from(e: crate::cbor::CborError) -> Self {
        use crate::cbor::CborError;
        match e {
            CborError::Truncated => Self::TruncatedEnvelope,
            CborError::Malformed(what) => Self::Malformed(what),
            CborError::Nested => Self::Malformed("unexpected array, map or tag"),
            CborError::NonCanonical => Self::NonCanonical,
            CborError::Trailing => Self::TrailingBytes,
        }
    }
}

/// Why an envelope, manifest, advisory or image was refused (reported to the user, 6.17 ex. 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// The envelope is larger than [`MAX_ENVELOPE_LEN`].
    #[error("envelope is {len} bytes, more than the {max}-byte limit")]
    EnvelopeTooLarge { len: usize, max: usize },
    /// The CBOR input ends in the middle of an item.
    #[error("envelope is truncated")]
    TruncatedEnvelope,
    /// The input is not the expected CBOR structure.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// The input is well-formed but not in canonical (deterministic) encoding.
    #[error("encoding is not canonical CBOR (RFC 8949 §4.2.1)")]
    NonCanonical,
    /// Bytes follow the top-level CBOR item.
    #[error("trailing bytes after the envelope")]
    TrailingBytes,
    /// A map carries a key this version does not know.
    #[error("unknown field {0}")]
    UnknownField(i64),
    /// A required field is absent.
    #[error("missing field: {0}")]
    MissingField(&'static str),
    /// The payload is of another kind (an advisory offered as a manifest or vice versa).
    #[error("payload is not a {expected}")]
    WrongPayloadType { expected: &'static str },
    /// The protected header names an algorithm other than ES256 (-7).
    #[error("unsupported COSE algorithm {0}; only ES256 (-7) is accepted")]
    UnsupportedAlgorithm(i64),
    /// The signature is not exactly 64 bytes (raw r || s).
    #[error("signature is {0} bytes; ES256 signatures are 64")]
    SignatureLength(usize),
    /// Key bytes do not encode a valid P-256 key.
    #[error("invalid P-256 key")]
    InvalidKey,
    /// No trust anchor for this model has the envelope's key id.
    #[error("no trusted key for this model and key id")]
    UnknownKey,
    /// The signature does not verify under the trusted key.
    #[error("signature does not verify")]
    BadSignature,
    /// The model designation is empty, too long or not printable ASCII.
    #[error("invalid model designation")]
    InvalidModel,
    /// A text field is longer than allowed.
    #[error("{field} is {len} bytes, more than {max}")]
    TextTooLong { field: &'static str, len: usize, max: usize },
    /// A text field contains control characters (other than newline).
    #[error("{0} contains control characters")]
    InvalidText(&'static str),
    /// The announced image size is 0 or more than [`MAX_IMAGE_SIZE`].
    #[error("image size {0} is outside 1..=16 MiB")]
    ImageSizeOutOfRange(u32),
    /// Version bounds contradict each other (minimum above version, empty range, fix inside range).
    #[error("inconsistent version numbers")]
    InvalidVersionRange,
    /// The manifest expires before its release date.
    #[error("manifest expires before it is released")]
    ExpiryBeforeRelease,
    /// The manifest is past its expiry (freeze protection).
    #[error("manifest expired at {expires:?} (now {now:?})")]
    Expired { expires: UnixTime, now: UnixTime },
    /// The advisory's issue date is more than a day ahead of `now`.
    #[error("advisory issued at {issued:?}, in the future (now {now:?}); check the clock")]
    IssuedInFuture { issued: UnixTime, now: UnixTime },
    /// The update is for another model.
    #[error("update is for another model")]
    WrongModel,
    /// Anti-rollback (6.17 ex. 3): the offered version is not newer than the installed one.
    #[error("version {offered} is not newer than installed version {installed}")]
    NotNewer { installed: u32, offered: u32 },
    /// The installed version is below the manifest's minimum applicable version.
    #[error("installed version {installed} is below the minimum {minimum} for this update")]
    BelowMinimum { installed: u32, minimum: u32 },
    /// The image is shorter than the manifest says.
    #[error("image truncated: {received} of {expected} bytes")]
    Truncated { received: u64, expected: u64 },
    /// The image (or a block) goes past the size the manifest says.
    #[error("image too long: {attempted} bytes, manifest says {limit}")]
    TooLong { limit: u64, attempted: u64 },
    /// A block does not start at the next expected offset.
    #[error("block at offset {got}, expected {expected}")]
    OutOfOrder { expected: u64, got: u64 },
    /// A re-sent block differs from the bytes already accepted at that offset.
    #[error("block at offset {offset} differs from data already received")]
    ConflictingData { offset: u64 },
    /// The image's SHA-256 differs from the manifest's.
    #[error("image digest does not match the manifest")]
    DigestMismatch,
}

/// Entry point for fuzz targets: runs the envelope, manifest and advisory parsers (no key needed)
/// over arbitrary bytes, discarding the result. Must never panic.
pub fn fuzz_parse(bytes: &[u8]) {
    if let Ok(sign1) = cose::parse(bytes) {
        let _ = manifest::Manifest::decode(sign1.payload);
        let _ = advisory::Advisory::decode(sign1.payload);
    }
    let _ = manifest::Manifest::decode(bytes);
    let _ = advisory::Advisory::decode(bytes);
}

/// Reads a signed payload's type field once, refusing another kind of payload (an advisory
/// where a manifest is expected, or the reverse).
fn payload_type(
    r: &mut crate::cbor::Reader<'_>,
    ty: &mut Option<u64>,
    code: u64,
    expected: &'static str,
) -> Result<(), UpdateError> {
    let found = r.uint("payload type")?;
    if found != code {
        return Err(UpdateError::WrongPayloadType { expected });
    }
    crate::cbor::set_once(ty, found)?;
    Ok(())
}

/// Checks a model designation: 1..=64 bytes of printable ASCII.
fn validate_model(model: &str) -> Result<(), UpdateError> {
    let ok = (1..=MAX_MODEL_LEN).contains(&model.len())
        && model.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if ok { Ok(()) } else { Err(UpdateError::InvalidModel) }
}

/// Checks a free-text field: at most [`MAX_TEXT_LEN`] bytes, no control characters but newline.
fn validate_text(field: &'static str, text: &str) -> Result<(), UpdateError> {
    if text.len() > MAX_TEXT_LEN {
        return Err(UpdateError::TextTooLong { field, len: text.len(), max: MAX_TEXT_LEN });
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(UpdateError::InvalidText(field));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    pub fn key(seed: u64) -> SigningKeyPair {
        SigningKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    pub const NOW: UnixTime = UnixTime(1_750_000_000);

    pub fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    pub fn manifest_for(image: &[u8]) -> Manifest {
        Manifest {
            model: "hearth-thermo-1".to_owned(),
            version: 5,
            min_version: 2,
            image_size: image.len() as u32,
            image_sha256: sha256(image),
            expires: UnixTime(NOW.0 + 86_400 * 30),
            disruptive: true,
            risks_mitigated: "Fixes CVE-2099-0001: heap overflow in CoAP option parsing.\n"
                .to_owned(),
            released: UnixTime(NOW.0 - 86_400),
        }
    }

    pub fn sha256(data: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(data).into()
    }

    pub fn anchors_with(model: &str, key: &SigningKeyPair) -> TrustAnchors {
        let mut anchors = TrustAnchors::new();
        anchors.add(model, key.public());
        anchors
    }

    /// Signs arbitrary payload bytes, to build validly signed but malformed payloads.
    pub fn sign_raw(key: &SigningKeyPair, payload: &[u8]) -> Vec<u8> {
        super::cose::sign(key, payload)
    }

    pub fn verified(image: &[u8]) -> VerifiedManifest {
        let key = key(1);
        let m = manifest_for(image);
        let anchors = anchors_with(&m.model, &key);
        verify_manifest(&m.sign(&key), &anchors, NOW).expect("fixture manifest verifies")
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn model_validation() {
        assert_eq!(validate_model("a"), Ok(()));
        assert_eq!(validate_model("Hearth Thermo 1"), Ok(()));
        assert_eq!(validate_model(&"m".repeat(64)), Ok(()));
        assert_eq!(validate_model(""), Err(UpdateError::InvalidModel));
        assert_eq!(validate_model(&"m".repeat(65)), Err(UpdateError::InvalidModel));
        assert_eq!(validate_model("tab\there"), Err(UpdateError::InvalidModel));
        assert_eq!(validate_model("thermo-é"), Err(UpdateError::InvalidModel));
    }

    #[test]
    fn text_validation() {
        assert_eq!(validate_text("t", &"x".repeat(1024)), Ok(()));
        assert_eq!(validate_text("t", "line\nline"), Ok(()));
        assert!(matches!(
            validate_text("t", &"x".repeat(1025)),
            Err(UpdateError::TextTooLong { len: 1025, .. })
        ));
        assert_eq!(validate_text("t", "esc\u{1b}[2J"), Err(UpdateError::InvalidText("t")));
    }

    #[test]
    fn fuzz_parse_accepts_valid_and_garbage() {
        let img = image(100);
        let key = key(1);
        fuzz_parse(&manifest_for(&img).sign(&key));
        fuzz_parse(&[]);
        fuzz_parse(&[0xff; 64]);
    }

    proptest! {
        #[test]
        fn fuzz_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            fuzz_parse(&bytes);
        }

        #[test]
        fn fuzz_parse_never_panics_on_mutated_envelopes(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)
        ) {
            let mut env = manifest_for(&image(64)).sign(&key(1));
            for (pos, val) in flips {
                let len = env.len();
                if let Some(b) = env.get_mut(pos % len) {
                    *b = val;
                }
            }
            fuzz_parse(&env);
        }
    }
}
