//! Manufacturer keys, trust anchors and the COSE_Sign1 envelope (RFC 9052 §4.2, ES256 with raw
//! r || s signatures): the trust relationship of EN 303 645 provision 5.3-10 (TR 103 621 6.18).

use std::collections::BTreeMap;
use std::fmt;

use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};

use super::{MAX_ENVELOPE_LEN, UpdateError};
use crate::cbor::{Reader, Writer, set_once};

/// COSE algorithm identifier for ECDSA P-256 with SHA-256.
const ALG_ES256: i64 = -7;
/// COSE header label `alg`.
const HDR_ALG: i64 = 1;
/// COSE header label `kid`.
const HDR_KID: i64 = 4;
/// Raw r || s signature length for P-256.
const SIGNATURE_LEN: usize = 64;

/// Identifies a public key: the first 8 bytes of SHA-256 of its compressed SEC1 encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 8]);

/// The manufacturer's signing key (ECDSA P-256). Secret: keep it on the signing side only.
#[derive(Clone)]
pub struct SigningKeyPair {
    key: SigningKey,
}

impl SigningKeyPair {
    /// Generates a fresh key from the caller's RNG.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        SigningKeyPair { key: SigningKey::generate_from_rng(rng) }
    }

    /// Loads a key from its 32-byte big-endian scalar.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, UpdateError> {
        SigningKey::from_slice(bytes)
            .map(|key| SigningKeyPair { key })
            .map_err(|_| UpdateError::InvalidKey)
    }

    /// The 32-byte secret scalar. **Secret**: store it protected (5.4-1) and wipe copies.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes().into()
    }

    /// The matching public key, to be installed as a trust anchor.
    pub fn public(&self) -> PublicKey {
        PublicKey::from_verifying_key(*self.key.verifying_key())
    }
}

impl fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyPair").field("kid", &self.public().kid()).finish_non_exhaustive()
    }
}

/// A manufacturer's public key (ECDSA P-256), with its precomputed [`KeyId`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    kid: KeyId,
}

impl PublicKey {
    fn from_verifying_key(key: VerifyingKey) -> Self {
        let compressed = compressed(&key);
        let digest: [u8; 32] = Sha256::digest(compressed).into();
        let mut kid = [0u8; 8];
        kid.iter_mut().zip(digest).for_each(|(k, d)| *k = d);
        PublicKey { key, kid: KeyId(kid) }
    }

    /// Parses a SEC1-encoded point (compressed or uncompressed).
    pub fn from_sec1(bytes: &[u8]) -> Result<Self, UpdateError> {
        VerifyingKey::from_sec1_bytes(bytes)
            .map(Self::from_verifying_key)
            .map_err(|_| UpdateError::InvalidKey)
    }

    /// The 33-byte compressed SEC1 encoding.
    pub fn to_sec1_compressed(&self) -> [u8; 33] {
        compressed(&self.key)
    }

    /// This key's identifier, as carried in the COSE `kid` header.
    pub fn kid(&self) -> KeyId {
        self.kid
    }

    fn verifies(&self, message: &[u8], signature: &Signature) -> bool {
        self.key.verify(message, signature).is_ok()
    }
}

fn compressed(key: &VerifyingKey) -> [u8; 33] {
    let point = key.to_sec1_point(true);
    let mut out = [0u8; 33];
    // A valid (non-identity) P-256 key always compresses to exactly 33 bytes.
    out.iter_mut().zip(point.as_bytes()).for_each(|(o, b)| *o = *b);
    out
}

/// The keys trusted to sign updates and advisories, per model designation (6.18 note 1: keep
/// this set integrity protected).
#[derive(Debug, Clone, Default)]
pub struct TrustAnchors {
    by_model: BTreeMap<String, Vec<PublicKey>>,
}

impl TrustAnchors {
    /// An empty set: nothing verifies.
    pub fn new() -> Self {
        TrustAnchors::default()
    }

    /// Trusts `key` for envelopes about `model`. Adding a key twice has no effect.
    pub fn add(&mut self, model: &str, key: PublicKey) {
        let keys = self.by_model.entry(model.to_owned()).or_default();
        if !keys.contains(&key) {
            keys.push(key);
        }
    }

    /// The first key trusted for `model` with identifier `kid`, if any.
    pub fn lookup(&self, model: &str, kid: &KeyId) -> Option<&PublicKey> {
        self.candidates(model, *kid).next()
    }

    fn candidates<'a>(
        &'a self,
        model: &str,
        kid: KeyId,
    ) -> impl Iterator<Item = &'a PublicKey> + use<'a> {
        self.by_model.get(model).into_iter().flatten().filter(move |k| k.kid == kid)
    }
}

/// A structurally valid, canonical COSE_Sign1 whose signature has not been checked yet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sign1<'a> {
    pub(super) kid: KeyId,
    pub(super) protected: &'a [u8],
    pub(super) payload: &'a [u8],
    pub(super) signature: &'a [u8],
}

/// Signs `payload` and returns the untagged COSE_Sign1 bytes.
pub(super) fn sign(key: &SigningKeyPair, payload: &[u8]) -> Vec<u8> {
    let protected = encode_protected(ALG_ES256, &key.public().kid());
    let signature: Signature = key.key.sign(&sig_structure(&protected, payload));
    encode_envelope(&protected, payload, &signature.to_bytes())
}

/// Parses an untagged COSE_Sign1, refusing non-canonical encodings, trailing bytes, unknown
/// header parameters, algorithms other than ES256 and signatures that are not 64 bytes.
pub(super) fn parse(envelope: &[u8]) -> Result<Sign1<'_>, UpdateError> {
    if envelope.len() > MAX_ENVELOPE_LEN {
        return Err(UpdateError::EnvelopeTooLarge { len: envelope.len(), max: MAX_ENVELOPE_LEN });
    }
    let mut r = Reader::new(envelope);
    if r.peek("COSE_Sign1")? == crate::cbor::Kind::Tag {
        return Err(UpdateError::Malformed("tagged COSE_Sign1; send it untagged"));
    }
    if r.array("COSE_Sign1")? != 4 {
        return Err(UpdateError::Malformed("COSE_Sign1 must have 4 elements"));
    }
    let protected = r.bytes("protected header")?;
    if r.map("unprotected header")? != 0 {
        return Err(UpdateError::Malformed("unprotected header must be empty"));
    }
    let payload = r.bytes("payload")?;
    let signature = r.bytes("signature")?;
    r.finish()?;
    if encode_envelope(protected, payload, signature) != envelope {
        return Err(UpdateError::NonCanonical);
    }
    let kid = parse_protected(protected)?;
    if signature.len() != SIGNATURE_LEN {
        return Err(UpdateError::SignatureLength(signature.len()));
    }
    Ok(Sign1 { kid, protected, payload, signature })
}

/// Verifies the signature with a key trusted for `model`.
pub(super) fn verify(
    sign1: &Sign1<'_>,
    anchors: &TrustAnchors,
    model: &str,
) -> Result<(), UpdateError> {
    let mut keys = anchors.candidates(model, sign1.kid).peekable();
    if keys.peek().is_none() {
        return Err(UpdateError::UnknownKey);
    }
    let signature =
        Signature::from_slice(sign1.signature).map_err(|_| UpdateError::BadSignature)?;
    let tbs = sig_structure(sign1.protected, sign1.payload);
    if keys.any(|k| k.verifies(&tbs, &signature)) { Ok(()) } else { Err(UpdateError::BadSignature) }
}

fn parse_protected(bytes: &[u8]) -> Result<KeyId, UpdateError> {
    let mut r = Reader::new(bytes);
    let entries = r.map("protected header")?;
    let (mut alg, mut kid) = (None, None);
    for _ in 0..entries {
        match r.int("header label")? {
            HDR_ALG => set_once(&mut alg, r.int("alg")?)?,
            HDR_KID => set_once(&mut kid, r.bytes("kid")?)?,
            other => return Err(UpdateError::UnknownField(other)),
        }
    }
    r.finish()?;
    let alg = alg.ok_or(UpdateError::MissingField("alg"))?;
    let kid = kid.ok_or(UpdateError::MissingField("kid"))?;
    let kid =
        KeyId(<[u8; 8]>::try_from(kid).map_err(|_| UpdateError::Malformed("kid must be 8 bytes"))?);
    if encode_protected(alg, &kid) != bytes {
        return Err(UpdateError::NonCanonical);
    }
    if alg != ALG_ES256 {
        return Err(UpdateError::UnsupportedAlgorithm(alg));
    }
    Ok(kid)
}

fn encode_protected(alg: i64, kid: &KeyId) -> Vec<u8> {
    let mut w = Writer::new();
    w.map(2).int(HDR_ALG).int(alg).int(HDR_KID).bytes(&kid.0);
    w.into_bytes()
}

fn encode_envelope(protected: &[u8], payload: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.array(4).bytes(protected).map(0).bytes(payload).bytes(signature);
    w.into_bytes()
}

/// `Sig_structure = ["Signature1", protected, external_aad = h'', payload]` (RFC 9052 §4.4).
fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.array(4).text("Signature1").bytes(protected).bytes(&[]).bytes(payload);
    w.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::key;
    use super::*;

    #[test]
    fn key_round_trips() {
        let k = key(7);
        let again = SigningKeyPair::from_bytes(&k.to_bytes()).expect("valid scalar");
        assert_eq!(again.public(), k.public());
        let public = PublicKey::from_sec1(&k.public().to_sec1_compressed()).expect("valid point");
        assert_eq!(public, k.public());
        assert_eq!(public.kid(), k.public().kid());
        assert_ne!(key(8).public().kid(), k.public().kid());
        let digest: [u8; 32] = Sha256::digest(k.public().to_sec1_compressed()).into();
        assert_eq!(k.public().kid().0, digest[..8]);
        assert!(!format!("{k:?}").contains(&format!("{:?}", k.to_bytes())));
    }

    #[test]
    fn invalid_keys_refused() {
        assert!(matches!(SigningKeyPair::from_bytes(&[0; 32]), Err(UpdateError::InvalidKey)));
        assert!(matches!(SigningKeyPair::from_bytes(&[0xff; 32]), Err(UpdateError::InvalidKey)));
        assert!(matches!(
            PublicKey::from_sec1(&[[2].as_slice(), &[0xff; 32]].concat()),
            Err(UpdateError::InvalidKey)
        ));
        assert!(matches!(PublicKey::from_sec1(&[]), Err(UpdateError::InvalidKey)));
    }

    #[test]
    fn envelope_layout_is_cose_sign1() {
        let k = key(1);
        let env = sign(&k, b"\xa0");
        let s = parse(&env).expect("parses");
        assert_eq!(s.kid, k.public().kid());
        assert_eq!(s.payload, b"\xa0");
        // Protected header: {1: -7, 4: h'<kid>'}
        let mut expected = vec![0xa2, 0x01, 0x26, 0x04, 0x48];
        expected.extend_from_slice(&k.public().kid().0);
        assert_eq!(s.protected, expected.as_slice());
        // [bstr(13), {}, bstr(1), bstr(64)]
        assert_eq!(env[..2], [0x84, 0x4d]);
        assert_eq!(env[15..18], [0xa0, 0x41, 0xa0]);
        assert_eq!(env[18..20], [0x58, 64]);
        assert_eq!(env.len(), 20 + 64);
        let anchors = {
            let mut a = TrustAnchors::new();
            a.add("m", k.public());
            a.add("m", k.public());
            a
        };
        assert_eq!(verify(&s, &anchors, "m"), Ok(()));
        assert_eq!(verify(&s, &anchors, "other"), Err(UpdateError::UnknownKey));
        assert!(anchors.lookup("m", &k.public().kid()).is_some());
        assert!(anchors.lookup("m", &KeyId([0; 8])).is_none());
    }

    fn envelope_with_protected(protected: &[u8]) -> Vec<u8> {
        encode_envelope(protected, b"\xa0", &[1; 64])
    }

    #[test]
    fn protected_header_checks() {
        let kid = KeyId([9; 8]);
        let es384 = encode_protected(-35, &kid);
        assert_eq!(
            parse(&envelope_with_protected(&es384)).map(|s| s.kid),
            Err(UpdateError::UnsupportedAlgorithm(-35))
        );
        let mut w = Writer::new();
        w.map(3).int(1).int(-7).int(3).int(0).int(4).bytes(&kid.0);
        assert_eq!(
            parse(&envelope_with_protected(&w.into_bytes())).map(|s| s.kid),
            Err(UpdateError::UnknownField(3))
        );
        let mut w = Writer::new();
        w.map(1).int(4).bytes(&kid.0);
        assert_eq!(
            parse(&envelope_with_protected(&w.into_bytes())).map(|s| s.kid),
            Err(UpdateError::MissingField("alg"))
        );
        let mut w = Writer::new();
        w.map(2).int(1).int(-7).int(4).bytes(&[1; 7]);
        assert_eq!(
            parse(&envelope_with_protected(&w.into_bytes())).map(|s| s.kid),
            Err(UpdateError::Malformed("kid must be 8 bytes"))
        );
        // Keys out of order.
        let mut w = Writer::new();
        w.map(2).int(4).bytes(&kid.0).int(1).int(-7);
        assert_eq!(
            parse(&envelope_with_protected(&w.into_bytes())).map(|s| s.kid),
            Err(UpdateError::NonCanonical)
        );
        // Duplicate key.
        let mut w = Writer::new();
        w.map(2).int(1).int(-7).int(1).int(-7);
        assert_eq!(
            parse(&envelope_with_protected(&w.into_bytes())).map(|s| s.kid),
            Err(UpdateError::NonCanonical)
        );
        // alg -7 in a two-byte form.
        let mut p = vec![0xa2, 0x01, 0x38, 0x06, 0x04, 0x48];
        p.extend_from_slice(&kid.0);
        assert_eq!(
            parse(&envelope_with_protected(&p)).map(|s| s.kid),
            Err(UpdateError::NonCanonical)
        );
    }

    #[test]
    fn envelope_shape_checks() {
        let k = key(1);
        let env = sign(&k, b"\xa0");
        let mut tagged = vec![0xd2];
        tagged.extend_from_slice(&env);
        assert!(matches!(parse(&tagged), Err(UpdateError::Malformed(_))));

        let protected = encode_protected(ALG_ES256, &k.public().kid());
        let mut w = Writer::new();
        w.array(3).bytes(&protected).map(0).bytes(b"\xa0");
        assert!(matches!(parse(&w.into_bytes()), Err(UpdateError::Malformed(_))));

        let mut w = Writer::new();
        w.array(4).bytes(&protected).map(1).int(1).int(-7).bytes(b"\xa0").bytes(&[1; 64]);
        assert!(matches!(parse(&w.into_bytes()), Err(UpdateError::Malformed(_))));

        for len in [0, 63, 65, 72] {
            let bad = encode_envelope(&protected, b"\xa0", &vec![1; len]);
            assert_eq!(parse(&bad).map(|s| s.kid), Err(UpdateError::SignatureLength(len)));
        }

        let big = encode_envelope(&protected, &vec![0; MAX_ENVELOPE_LEN], &[1; 64]);
        assert!(matches!(parse(&big), Err(UpdateError::EnvelopeTooLarge { .. })));
    }

    #[test]
    fn signature_of_zeroes_is_bad_not_a_panic() {
        let k = key(1);
        let protected = encode_protected(ALG_ES256, &k.public().kid());
        let env = encode_envelope(&protected, b"\xa0", &[0; 64]);
        let s = parse(&env).expect("structurally fine");
        let mut anchors = TrustAnchors::new();
        anchors.add("m", k.public());
        assert_eq!(verify(&s, &anchors, "m"), Err(UpdateError::BadSignature));
    }
}
