//! Update manifests: the signed description of a firmware image and the `VerifiedManifest` proof
//! type. EN 303 645 5.3-9/5.3-10 (authenticity, anti-rollback: TR 103 621 6.17 ex. 3), 5.3-11
//! (risks mitigated) and 5.3-12 (disruptive flag).

use super::cose::{self, KeyId, SigningKeyPair, TrustAnchors};
use super::{MAX_IMAGE_SIZE, UpdateError, payload_type, validate_model, validate_text};
use crate::cbor::{Reader, Writer, set_once};
use crate::time::UnixTime;

const PAYLOAD_TYPE: u64 = 1;
const K_TYPE: i64 = 0;
const K_MODEL: i64 = 1;
const K_VERSION: i64 = 2;
const K_MIN_VERSION: i64 = 3;
const K_IMAGE_SIZE: i64 = 4;
const K_IMAGE_SHA256: i64 = 5;
const K_EXPIRES: i64 = 6;
const K_DISRUPTIVE: i64 = 7;
const K_RISKS: i64 = 8;
const K_RELEASED: i64 = 9;

/// The content of a manifest, as the manufacturer writes it. Nothing here is trusted until
/// [`verify_manifest`] turns an envelope into a [`VerifiedManifest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Model designation the image is for (1..=64 bytes of printable ASCII).
    pub model: String,
    /// Version of the image; versions only ever increase.
    pub version: u32,
    /// Lowest installed version this update may be applied on.
    pub min_version: u32,
    /// Image size in bytes (1..=16 MiB).
    pub image_size: u32,
    /// SHA-256 of the whole image.
    pub image_sha256: [u8; 32],
    /// The manifest is refused after this time (freeze protection).
    pub expires: UnixTime,
    /// Installing interrupts the device's basic functioning; needs owner acknowledgement (5.3-12).
    pub disruptive: bool,
    /// Risks mitigated by this update, shown to the owner (5.3-11); at most 1024 bytes.
    pub risks_mitigated: String,
    /// Release date.
    pub released: UnixTime,
}

impl Manifest {
    /// Checks the field limits that [`verify_manifest`] enforces.
    pub fn validate(&self) -> Result<(), UpdateError> {
        validate_model(&self.model)?;
        if self.image_size == 0 || self.image_size > MAX_IMAGE_SIZE {
            return Err(UpdateError::ImageSizeOutOfRange(self.image_size));
        }
        if self.min_version > self.version {
            return Err(UpdateError::InvalidVersionRange);
        }
        validate_text("risks mitigated", &self.risks_mitigated)?;
        if self.expires < self.released {
            return Err(UpdateError::ExpiryBeforeRelease);
        }
        Ok(())
    }

    /// Signs the manifest, returning untagged COSE_Sign1 bytes. It does not check the field
    /// limits: call [`Manifest::validate`] first, or receivers will refuse the envelope.
    pub fn sign(&self, key: &SigningKeyPair) -> Vec<u8> {
        cose::sign(key, &self.encode())
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.map(10)
            .int(K_TYPE)
            .uint(PAYLOAD_TYPE)
            .int(K_MODEL)
            .text(&self.model)
            .int(K_VERSION)
            .uint(self.version.into())
            .int(K_MIN_VERSION)
            .uint(self.min_version.into())
            .int(K_IMAGE_SIZE)
            .uint(self.image_size.into())
            .int(K_IMAGE_SHA256)
            .bytes(&self.image_sha256)
            .int(K_EXPIRES)
            .uint(self.expires.0)
            .int(K_DISRUPTIVE)
            .bool(self.disruptive)
            .int(K_RISKS)
            .text(&self.risks_mitigated)
            .int(K_RELEASED)
            .uint(self.released.0);
        w.into_bytes()
    }

    /// Decodes a manifest payload: canonical encoding, no unknown keys, limits checked.
    pub(super) fn decode(payload: &[u8]) -> Result<Manifest, UpdateError> {
        let mut r = Reader::new(payload);
        let entries = r.map("manifest")?;
        let mut ty = None;
        let mut model = None;
        let mut version = None;
        let mut min_version = None;
        let mut image_size = None;
        let mut image_sha256 = None;
        let mut expires = None;
        let mut disruptive = None;
        let mut risks = None;
        let mut released = None;
        for _ in 0..entries {
            match r.int("manifest key")? {
                K_TYPE => payload_type(&mut r, &mut ty, PAYLOAD_TYPE, "manifest")?,
                K_MODEL => set_once(&mut model, r.text("model")?)?,
                K_VERSION => set_once(&mut version, r.u32("version")?)?,
                K_MIN_VERSION => set_once(&mut min_version, r.u32("minimum version")?)?,
                K_IMAGE_SIZE => set_once(&mut image_size, r.u32("image size")?)?,
                K_IMAGE_SHA256 => set_once(&mut image_sha256, r.bytes("image SHA-256")?)?,
                K_EXPIRES => set_once(&mut expires, r.uint("expiry")?)?,
                K_DISRUPTIVE => set_once(&mut disruptive, r.bool("disruptive flag")?)?,
                K_RISKS => set_once(&mut risks, r.text("risks mitigated")?)?,
                K_RELEASED => set_once(&mut released, r.uint("release date")?)?,
                other => return Err(UpdateError::UnknownField(other)),
            }
        }
        r.finish()?;
        ty.ok_or(UpdateError::MissingField("payload type"))?;
        let digest = image_sha256.ok_or(UpdateError::MissingField("image SHA-256"))?;
        let manifest = Manifest {
            model: model.ok_or(UpdateError::MissingField("model"))?.to_owned(),
            version: version.ok_or(UpdateError::MissingField("version"))?,
            min_version: min_version.ok_or(UpdateError::MissingField("minimum version"))?,
            image_size: image_size.ok_or(UpdateError::MissingField("image size"))?,
            image_sha256: <[u8; 32]>::try_from(digest)
                .map_err(|_| UpdateError::Malformed("image SHA-256 must be 32 bytes"))?,
            expires: UnixTime(expires.ok_or(UpdateError::MissingField("expiry"))?),
            disruptive: disruptive.ok_or(UpdateError::MissingField("disruptive flag"))?,
            risks_mitigated: risks.ok_or(UpdateError::MissingField("risks mitigated"))?.to_owned(),
            released: UnixTime(released.ok_or(UpdateError::MissingField("release date"))?),
        };
        if manifest.encode() != payload {
            return Err(UpdateError::NonCanonical);
        }
        manifest.validate()?;
        Ok(manifest)
    }
}

/// A manifest whose signature verified under a trust anchor for its model and which had not
/// expired when checked. Only [`verify_manifest`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedManifest {
    manifest: Manifest,
    kid: KeyId,
    signed: Vec<u8>,
}

/// Verifies a manifest envelope (5.3-10): canonical COSE_Sign1, a key trusted for the manifest's
/// model, a valid ES256 signature, field limits, and `now` not after the expiry.
pub fn verify_manifest(
    envelope: &[u8],
    anchors: &TrustAnchors,
    now: UnixTime,
) -> Result<VerifiedManifest, UpdateError> {
    let sign1 = cose::parse(envelope)?;
    let manifest = Manifest::decode(sign1.payload)?;
    cose::verify(&sign1, anchors, &manifest.model)?;
    if now > manifest.expires {
        return Err(UpdateError::Expired { expires: manifest.expires, now });
    }
    Ok(VerifiedManifest { manifest, kid: sign1.kid, signed: envelope.to_vec() })
}

/// The key id a signed envelope names in its protected header. A hint only — nothing about the
/// envelope is trusted until [`verify_manifest`] or [`super::verify_advisory`] accepts it — used
/// to explain a refusal (e.g. "signed with the key of another model").
pub fn signer_kid(envelope: &[u8]) -> Result<KeyId, UpdateError> {
    cose::parse(envelope).map(|s| s.kid)
}

impl VerifiedManifest {
    /// Whether this update may be installed on a `model` device running `installed_version`:
    /// same model, strictly newer (anti-rollback, 6.17 ex. 3), installed at least the minimum.
    pub fn check_applicable(&self, model: &str, installed_version: u32) -> Result<(), UpdateError> {
        let m = &self.manifest;
        if m.model != model {
            return Err(UpdateError::WrongModel);
        }
        if m.version <= installed_version {
            return Err(UpdateError::NotNewer { installed: installed_version, offered: m.version });
        }
        if installed_version < m.min_version {
            return Err(UpdateError::BelowMinimum {
                installed: installed_version,
                minimum: m.min_version,
            });
        }
        Ok(())
    }

    /// All fields, read-only.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn model(&self) -> &str {
        &self.manifest.model
    }

    pub fn version(&self) -> u32 {
        self.manifest.version
    }

    pub fn min_version(&self) -> u32 {
        self.manifest.min_version
    }

    pub fn image_size(&self) -> u32 {
        self.manifest.image_size
    }

    pub fn image_sha256(&self) -> &[u8; 32] {
        &self.manifest.image_sha256
    }

    pub fn expires(&self) -> UnixTime {
        self.manifest.expires
    }

    pub fn disruptive(&self) -> bool {
        self.manifest.disruptive
    }

    pub fn risks_mitigated(&self) -> &str {
        &self.manifest.risks_mitigated
    }

    pub fn released(&self) -> UnixTime {
        self.manifest.released
    }

    /// Identifier of the key that signed it.
    pub fn kid(&self) -> KeyId {
        self.kid
    }

    /// The original envelope, to relay to sensors that verify signatures themselves (6.18 ex. 5).
    pub fn signed_bytes(&self) -> &[u8] {
        &self.signed
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    fn setup() -> (SigningKeyPair, Manifest, TrustAnchors) {
        let key = key(1);
        let m = manifest_for(&image(1000));
        let anchors = anchors_with(&m.model, &key);
        (key, m, anchors)
    }

    #[test]
    fn valid_manifest_verifies_and_round_trips() {
        let (key, m, anchors) = setup();
        let env = m.sign(&key);
        let v = verify_manifest(&env, &anchors, NOW).expect("verifies");
        assert_eq!(v.manifest(), &m);
        assert_eq!(v.model(), m.model);
        assert_eq!(v.version(), m.version);
        assert_eq!(v.min_version(), m.min_version);
        assert_eq!(v.image_size(), m.image_size);
        assert_eq!(v.image_sha256(), &m.image_sha256);
        assert_eq!(v.expires(), m.expires);
        assert_eq!(v.disruptive(), m.disruptive);
        assert_eq!(v.risks_mitigated(), m.risks_mitigated);
        assert_eq!(v.released(), m.released);
        assert_eq!(v.kid(), key.public().kid());
        assert_eq!(v.signed_bytes(), env.as_slice());
        // A sensor verifying the relayed bytes itself gets the same result.
        assert_eq!(verify_manifest(v.signed_bytes(), &anchors, NOW), Ok(v.clone()));
        // Signing is deterministic (RFC 6979), so the encoding is stable.
        assert_eq!(m.sign(&key), env);
        assert_eq!(m.validate(), Ok(()));
        let other = Manifest { disruptive: false, version: u32::MAX, min_version: 0, ..m };
        let v = verify_manifest(&other.sign(&key), &anchors, NOW).expect("verifies");
        assert_eq!(v.manifest(), &other);
    }

    fn sig_range(env: &[u8]) -> std::ops::Range<usize> {
        env.len() - 64..env.len()
    }

    #[test]
    fn flipped_signature_bit_is_bad_signature() {
        let (key, m, anchors) = setup();
        let env = m.sign(&key);
        for i in sig_range(&env).step_by(7) {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            assert_eq!(verify_manifest(&bad, &anchors, NOW), Err(UpdateError::BadSignature));
        }
    }

    #[test]
    fn flipped_payload_bit_is_bad_signature() {
        let (key, m, anchors) = setup();
        let env = m.sign(&key);
        let at =
            env.windows(32).position(|w| w == m.image_sha256).expect("digest is in the envelope");
        let mut bad = env.clone();
        bad[at + 5] ^= 0x80;
        assert_eq!(verify_manifest(&bad, &anchors, NOW), Err(UpdateError::BadSignature));
        // Changing the version byte (5 -> 6) keeps the encoding canonical.
        let m6 = Manifest { version: 6, ..m.clone() };
        let (e5, e6) = (m.encode(), m6.encode());
        let diff = e5.iter().zip(&e6).position(|(a, b)| a != b).expect("differ");
        let at = env.windows(e5.len()).position(|w| w == e5).expect("payload inside") + diff;
        let mut bad = env.clone();
        bad[at] = e6[diff];
        assert_eq!(verify_manifest(&bad, &anchors, NOW), Err(UpdateError::BadSignature));
    }

    #[test]
    fn untrusted_key_is_unknown_key() {
        let (_, m, anchors) = setup();
        let stranger = key(99);
        assert_eq!(
            verify_manifest(&m.sign(&stranger), &anchors, NOW),
            Err(UpdateError::UnknownKey)
        );
    }

    /// A key trusted only for another model does not verify this model's manifests: UnknownKey.
    #[test]
    fn key_trusted_for_other_model_is_unknown_key() {
        let key = key(1);
        let m = manifest_for(&image(10));
        let anchors = anchors_with("hearth-door-2", &key);
        assert_eq!(verify_manifest(&m.sign(&key), &anchors, NOW), Err(UpdateError::UnknownKey));
        assert_eq!(
            verify_manifest(&m.sign(&key), &TrustAnchors::new(), NOW),
            Err(UpdateError::UnknownKey)
        );
    }

    #[test]
    fn applicability() {
        let (key, m, anchors) = setup();
        let v = verify_manifest(&m.sign(&key), &anchors, NOW).expect("verifies");
        assert_eq!(v.check_applicable("hearth-thermo-1", 4), Ok(()));
        assert_eq!(v.check_applicable("hearth-thermo-1", 2), Ok(()));
        assert_eq!(v.check_applicable("hearth-door-2", 4), Err(UpdateError::WrongModel));
        assert_eq!(v.check_applicable("hearth-thermo-1 ", 4), Err(UpdateError::WrongModel));
        assert_eq!(
            v.check_applicable("hearth-thermo-1", 5),
            Err(UpdateError::NotNewer { installed: 5, offered: 5 })
        );
        assert_eq!(
            v.check_applicable("hearth-thermo-1", 9),
            Err(UpdateError::NotNewer { installed: 9, offered: 5 })
        );
        assert_eq!(
            v.check_applicable("hearth-thermo-1", 1),
            Err(UpdateError::BelowMinimum { installed: 1, minimum: 2 })
        );
    }

    #[test]
    fn expiry_is_enforced() {
        let (key, m, anchors) = setup();
        let env = m.sign(&key);
        assert!(verify_manifest(&env, &anchors, m.expires).is_ok());
        assert_eq!(
            verify_manifest(&env, &anchors, UnixTime(m.expires.0 + 1)),
            Err(UpdateError::Expired { expires: m.expires, now: UnixTime(m.expires.0 + 1) })
        );
    }

    #[test]
    fn field_limits_are_enforced_after_signing() {
        let (key, m, anchors) = setup();
        let cases: Vec<(Manifest, UpdateError)> = vec![
            (Manifest { model: String::new(), ..m.clone() }, UpdateError::InvalidModel),
            (Manifest { model: "m".repeat(65), ..m.clone() }, UpdateError::InvalidModel),
            (Manifest { model: "thermo\u{7f}".into(), ..m.clone() }, UpdateError::InvalidModel),
            (Manifest { image_size: 0, ..m.clone() }, UpdateError::ImageSizeOutOfRange(0)),
            (
                Manifest { image_size: MAX_IMAGE_SIZE + 1, ..m.clone() },
                UpdateError::ImageSizeOutOfRange(MAX_IMAGE_SIZE + 1),
            ),
            (
                Manifest { risks_mitigated: "r".repeat(1025), ..m.clone() },
                UpdateError::TextTooLong { field: "risks mitigated", len: 1025, max: 1024 },
            ),
            (
                Manifest { risks_mitigated: "bell\u{7}".into(), ..m.clone() },
                UpdateError::InvalidText("risks mitigated"),
            ),
            (Manifest { min_version: 6, ..m.clone() }, UpdateError::InvalidVersionRange),
            (
                Manifest { expires: UnixTime(m.released.0 - 1), ..m.clone() },
                UpdateError::ExpiryBeforeRelease,
            ),
        ];
        for (bad, err) in cases {
            assert_eq!(bad.validate(), Err(err));
            let anchors = {
                let mut a = anchors.clone();
                a.add(&bad.model, key.public());
                a
            };
            assert_eq!(verify_manifest(&bad.sign(&key), &anchors, NOW), Err(err));
        }
        let max = Manifest { image_size: MAX_IMAGE_SIZE, risks_mitigated: "r".repeat(1024), ..m };
        assert!(verify_manifest(&max.sign(&key), &anchors, NOW).is_ok());
    }

    fn payload_with(f: impl FnOnce(&mut Writer)) -> Vec<u8> {
        let mut w = Writer::new();
        f(&mut w);
        w.into_bytes()
    }

    /// Writes the manifest's entries from key `from` on, in canonical form.
    fn tail(w: &mut Writer, m: &Manifest, from: i64) {
        for k in from..=9 {
            w.int(k);
            match k {
                0 => w.uint(1),
                1 => w.text(&m.model),
                2 => w.uint(m.version.into()),
                3 => w.uint(m.min_version.into()),
                4 => w.uint(m.image_size.into()),
                5 => w.bytes(&m.image_sha256),
                6 => w.uint(m.expires.0),
                7 => w.bool(m.disruptive),
                8 => w.text(&m.risks_mitigated),
                _ => w.uint(m.released.0),
            };
        }
    }

    #[test]
    fn non_canonical_payloads_are_refused() {
        let (key, m, anchors) = setup();
        let check = |payload: Vec<u8>, err: UpdateError| {
            assert_eq!(verify_manifest(&sign_raw(&key, &payload), &anchors, NOW), Err(err));
        };
        // The canonical payload itself verifies through the same path.
        assert!(verify_manifest(&sign_raw(&key, &m.encode()), &anchors, NOW).is_ok());
        // Version 5 as a 4-byte integer.
        let mut long_int = m.encode();
        let at = long_int.iter().position(|&b| b == 0x02).expect("key 2") + 1;
        long_int.splice(at..at + 1, [0x1a, 0, 0, 0, 5]);
        check(long_int, UpdateError::NonCanonical);
        // Map header with a 1-byte length argument.
        let mut long_len = m.encode();
        long_len.splice(0..1, [0xb8, 10]);
        check(long_len, UpdateError::NonCanonical);
        // Keys out of order (1 before 0).
        check(
            payload_with(|w| {
                w.map(10).int(1).text(&m.model).int(0).uint(1);
                tail(w, &m, 2);
            }),
            UpdateError::NonCanonical,
        );
        // Indefinite-length map.
        let mut indef = vec![0xbf];
        indef.extend_from_slice(&m.encode()[1..]);
        indef.push(0xff);
        check(indef, UpdateError::NonCanonical);
        // Indefinite-length model text.
        let mut indef_text = payload_with(|w| _ = w.map(10).int(0).uint(1).int(1));
        indef_text.extend_from_slice(&[0x7f, 0x61, b'a', 0xff]);
        indef_text.extend_from_slice(&payload_with(|w| tail(w, &m, 2)));
        check(indef_text, UpdateError::NonCanonical);
        // Duplicate key.
        check(
            payload_with(|w| {
                w.map(11).int(0).uint(1).int(0).uint(1);
                tail(w, &m, 1);
            }),
            UpdateError::NonCanonical,
        );
    }

    #[test]
    fn indefinite_length_envelope_array_is_refused() {
        let (key, m, anchors) = setup();
        let env = m.sign(&key);
        let mut indef = vec![0x9f];
        indef.extend_from_slice(&env[1..]);
        indef.push(0xff);
        assert_eq!(verify_manifest(&indef, &anchors, NOW), Err(UpdateError::NonCanonical));
        // A signature byte string with a 2-byte length argument.
        let mut long = env.clone();
        let at = env.len() - 66;
        assert_eq!(long[at..at + 2], [0x58, 64]);
        long.splice(at..at + 2, [0x59, 0, 64]);
        assert_eq!(verify_manifest(&long, &anchors, NOW), Err(UpdateError::NonCanonical));
    }

    #[test]
    fn unknown_missing_and_wrong_type_fields() {
        let (key, m, anchors) = setup();
        let check = |payload: Vec<u8>, err: UpdateError| {
            assert_eq!(verify_manifest(&sign_raw(&key, &payload), &anchors, NOW), Err(err));
        };
        check(
            payload_with(|w| {
                w.map(11);
                tail(w, &m, 0);
                w.int(10).uint(0);
            }),
            UpdateError::UnknownField(10),
        );
        check(
            payload_with(|w| {
                w.map(9);
                tail(w, &m, 1);
            }),
            UpdateError::MissingField("payload type"),
        );
        check(
            payload_with(|w| {
                w.map(10).int(0).uint(2);
                tail(w, &m, 1);
            }),
            UpdateError::WrongPayloadType { expected: "manifest" },
        );
        check(
            payload_with(|w| {
                w.map(10).int(0).uint(1).int(1).uint(7);
                tail(w, &m, 2);
            }),
            UpdateError::Malformed("model"),
        );
        check(
            payload_with(|w| {
                w.map(10).int(0).uint(1).int(1).text(&m.model).int(2).uint(1 << 32);
                tail(w, &m, 3);
            }),
            UpdateError::Malformed("version"),
        );
        let mut short_digest = m.encode();
        let at = short_digest.windows(32).position(|x| x == m.image_sha256).expect("digest");
        assert_eq!(short_digest[at - 2..at], [0x58, 32]);
        short_digest[at - 1] = 31;
        short_digest.remove(at);
        check(short_digest, UpdateError::Malformed("image SHA-256 must be 32 bytes"));
        check(vec![0x80], UpdateError::Malformed("manifest"));
    }

    #[test]
    fn advisory_is_not_a_manifest() {
        let (key, _, anchors) = setup();
        let adv = crate::update::Advisory {
            model: "hearth-thermo-1".into(),
            affected_low: 1,
            affected_high: 4,
            severity: crate::update::Severity::High,
            fixed_in: Some(5),
            text: "x".into(),
            issued: NOW,
        };
        assert_eq!(
            verify_manifest(&adv.sign(&key), &anchors, NOW),
            Err(UpdateError::WrongPayloadType { expected: "manifest" })
        );
    }

    #[test]
    fn every_strict_prefix_is_refused() {
        let (key, m, anchors) = setup();
        let env = m.sign(&key);
        for len in 0..env.len() {
            let r = verify_manifest(&env[..len], &anchors, NOW);
            assert!(r.is_err(), "prefix of {len} bytes accepted");
        }
        assert!(matches!(
            verify_manifest(&env[..env.len() - 1], &anchors, NOW),
            Err(UpdateError::TruncatedEnvelope)
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let (key, m, anchors) = setup();
        let mut env = m.sign(&key);
        env.push(0x00);
        assert_eq!(verify_manifest(&env, &anchors, NOW), Err(UpdateError::TrailingBytes));
        let mut payload = m.encode();
        payload.push(0xf6);
        assert_eq!(
            verify_manifest(&sign_raw(&key, &payload), &anchors, NOW),
            Err(UpdateError::TrailingBytes)
        );
    }
}
