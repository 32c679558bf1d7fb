//! Signed security advisories (which versions of a model are vulnerable) and the
//! `VerifiedAdvisory` proof type; input to isolating vulnerable sensors (EN 303 645 5.3,
//! TR 103 621 6.22/6.23), authenticated like updates (5.3-10, COSE_Sign1 per RFC 9052).

use std::ops::RangeInclusive;

use super::cose::{self, KeyId, SigningKeyPair, TrustAnchors};
use super::{UpdateError, payload_type, validate_model, validate_text};
use crate::cbor::{Reader, Writer, set_once};
use crate::time::UnixTime;

const PAYLOAD_TYPE: u64 = 2;
const K_TYPE: i64 = 0;
const K_MODEL: i64 = 1;
const K_AFFECTED_LOW: i64 = 2;
const K_AFFECTED_HIGH: i64 = 3;
const K_SEVERITY: i64 = 4;
const K_FIXED_IN: i64 = 5;
const K_TEXT: i64 = 6;
const K_ISSUED: i64 = 7;

/// Tolerated clock difference for an advisory's issue date (one day).
const MAX_CLOCK_AHEAD_SECS: u64 = 86_400;

/// How serious the vulnerability is. Encoded as 0 (low) to 3 (critical).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    fn code(self) -> u64 {
        match self {
            Severity::Low => 0,
            Severity::Medium => 1,
            Severity::High => 2,
            Severity::Critical => 3,
        }
    }

    fn from_code(code: u64) -> Result<Self, UpdateError> {
        match code {
            0 => Ok(Severity::Low),
            1 => Ok(Severity::Medium),
            2 => Ok(Severity::High),
            3 => Ok(Severity::Critical),
            _ => Err(UpdateError::Malformed("severity must be 0..=3")),
        }
    }
}

/// The content of an advisory, as the manufacturer writes it; untrusted until
/// [`verify_advisory`] makes a [`VerifiedAdvisory`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advisory {
    /// Affected model designation.
    pub model: String,
    /// First affected version (inclusive).
    pub affected_low: u32,
    /// Last affected version (inclusive).
    pub affected_high: u32,
    pub severity: Severity,
    /// First version with the fix, if one exists; must be above `affected_high`.
    pub fixed_in: Option<u32>,
    /// Description for the owner; at most 1024 bytes.
    pub text: String,
    pub issued: UnixTime,
}

impl Advisory {
    /// Checks the field limits that [`verify_advisory`] enforces (except the issue date).
    pub fn validate(&self) -> Result<(), UpdateError> {
        validate_model(&self.model)?;
        if self.affected_low > self.affected_high
            || self.fixed_in.is_some_and(|f| f <= self.affected_high)
        {
            return Err(UpdateError::InvalidVersionRange);
        }
        validate_text("advisory text", &self.text)
    }

    /// Signs the advisory, returning untagged COSE_Sign1 bytes. Does not check field limits:
    /// call [`Advisory::validate`] first.
    pub fn sign(&self, key: &SigningKeyPair) -> Vec<u8> {
        cose::sign(key, &self.encode())
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.map(if self.fixed_in.is_some() { 8 } else { 7 })
            .int(K_TYPE)
            .uint(PAYLOAD_TYPE)
            .int(K_MODEL)
            .text(&self.model)
            .int(K_AFFECTED_LOW)
            .uint(self.affected_low.into())
            .int(K_AFFECTED_HIGH)
            .uint(self.affected_high.into())
            .int(K_SEVERITY)
            .uint(self.severity.code());
        if let Some(fixed) = self.fixed_in {
            w.int(K_FIXED_IN).uint(fixed.into());
        }
        w.int(K_TEXT).text(&self.text).int(K_ISSUED).uint(self.issued.0);
        w.into_bytes()
    }

    /// Decodes an advisory payload: canonical encoding, no unknown keys, limits checked.
    pub(super) fn decode(payload: &[u8]) -> Result<Advisory, UpdateError> {
        let mut r = Reader::new(payload);
        let entries = r.map("advisory")?;
        let mut ty = None;
        let mut model = None;
        let mut low = None;
        let mut high = None;
        let mut severity = None;
        let mut fixed_in = None;
        let mut text = None;
        let mut issued = None;
        for _ in 0..entries {
            match r.int("advisory key")? {
                K_TYPE => payload_type(&mut r, &mut ty, PAYLOAD_TYPE, "advisory")?,
                K_MODEL => set_once(&mut model, r.text("model")?)?,
                K_AFFECTED_LOW => set_once(&mut low, r.u32("first affected version")?)?,
                K_AFFECTED_HIGH => set_once(&mut high, r.u32("last affected version")?)?,
                K_SEVERITY => set_once(&mut severity, Severity::from_code(r.uint("severity")?)?)?,
                K_FIXED_IN => set_once(&mut fixed_in, r.u32("fixed-in version")?)?,
                K_TEXT => set_once(&mut text, r.text("advisory text")?)?,
                K_ISSUED => set_once(&mut issued, r.uint("issue date")?)?,
                other => return Err(UpdateError::UnknownField(other)),
            }
        }
        r.finish()?;
        ty.ok_or(UpdateError::MissingField("payload type"))?;
        let advisory = Advisory {
            model: model.ok_or(UpdateError::MissingField("model"))?.to_owned(),
            affected_low: low.ok_or(UpdateError::MissingField("first affected version"))?,
            affected_high: high.ok_or(UpdateError::MissingField("last affected version"))?,
            severity: severity.ok_or(UpdateError::MissingField("severity"))?,
            fixed_in,
            text: text.ok_or(UpdateError::MissingField("advisory text"))?.to_owned(),
            issued: UnixTime(issued.ok_or(UpdateError::MissingField("issue date"))?),
        };
        if advisory.encode() != payload {
            return Err(UpdateError::NonCanonical);
        }
        advisory.validate()?;
        Ok(advisory)
    }
}

/// An advisory whose signature verified under a trust anchor for its model. Only
/// [`verify_advisory`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAdvisory {
    advisory: Advisory,
    kid: KeyId,
    signed: Vec<u8>,
}

/// Verifies an advisory envelope: canonical COSE_Sign1, a key trusted for the advisory's model,
/// a valid ES256 signature, field limits, and an issue date at most one day after `now` (a
/// later one means the manufacturer's or the caller's clock is wrong).
pub fn verify_advisory(
    envelope: &[u8],
    anchors: &TrustAnchors,
    now: UnixTime,
) -> Result<VerifiedAdvisory, UpdateError> {
    let sign1 = cose::parse(envelope)?;
    let advisory = Advisory::decode(sign1.payload)?;
    cose::verify(&sign1, anchors, &advisory.model)?;
    if advisory.issued.0 > now.0.saturating_add(MAX_CLOCK_AHEAD_SECS) {
        return Err(UpdateError::IssuedInFuture { issued: advisory.issued, now });
    }
    Ok(VerifiedAdvisory { advisory, kid: sign1.kid, signed: envelope.to_vec() })
}

impl VerifiedAdvisory {
    /// Whether a `model` device running `version` is affected (range ends inclusive).
    pub fn affects(&self, model: &str, version: u32) -> bool {
        self.advisory.model == model && self.affected().contains(&version)
    }

    /// All fields, read-only.
    pub fn advisory(&self) -> &Advisory {
        &self.advisory
    }

    pub fn model(&self) -> &str {
        &self.advisory.model
    }

    /// Affected versions, both ends inclusive.
    pub fn affected(&self) -> RangeInclusive<u32> {
        self.advisory.affected_low..=self.advisory.affected_high
    }

    pub fn severity(&self) -> Severity {
        self.advisory.severity
    }

    pub fn fixed_in(&self) -> Option<u32> {
        self.advisory.fixed_in
    }

    pub fn text(&self) -> &str {
        &self.advisory.text
    }

    pub fn issued(&self) -> UnixTime {
        self.advisory.issued
    }

    /// Identifier of the key that signed it.
    pub fn kid(&self) -> KeyId {
        self.kid
    }

    /// The original envelope bytes.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.signed
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    fn advisory() -> Advisory {
        Advisory {
            model: "hearth-thermo-1".into(),
            affected_low: 2,
            affected_high: 4,
            severity: Severity::Critical,
            fixed_in: Some(5),
            text: "Remote code execution via malformed CoAP options.".into(),
            issued: UnixTime(NOW.0 - 3600),
        }
    }

    fn setup() -> (SigningKeyPair, Advisory, TrustAnchors) {
        let key = key(3);
        let a = advisory();
        let anchors = anchors_with(&a.model, &key);
        (key, a, anchors)
    }

    #[test]
    fn verifies_and_round_trips() {
        let (key, a, anchors) = setup();
        let env = a.sign(&key);
        let v = verify_advisory(&env, &anchors, NOW).expect("verifies");
        assert_eq!(v.advisory(), &a);
        assert_eq!(v.model(), a.model);
        assert_eq!(v.affected(), 2..=4);
        assert_eq!(v.severity(), Severity::Critical);
        assert_eq!(v.fixed_in(), Some(5));
        assert_eq!(v.text(), a.text);
        assert_eq!(v.issued(), a.issued);
        assert_eq!(v.kid(), key.public().kid());
        assert_eq!(v.signed_bytes(), env.as_slice());
        for severity in [Severity::Low, Severity::Medium, Severity::High] {
            let b = Advisory { severity, fixed_in: None, ..a.clone() };
            let v = verify_advisory(&b.sign(&key), &anchors, NOW).expect("verifies");
            assert_eq!(v.advisory(), &b);
        }
        assert!(Severity::Low < Severity::Critical);
    }

    #[test]
    fn affects_edges() {
        let (key, a, anchors) = setup();
        let v = verify_advisory(&a.sign(&key), &anchors, NOW).expect("verifies");
        assert!(!v.affects("hearth-thermo-1", 1));
        assert!(v.affects("hearth-thermo-1", 2));
        assert!(v.affects("hearth-thermo-1", 3));
        assert!(v.affects("hearth-thermo-1", 4));
        assert!(!v.affects("hearth-thermo-1", 5));
        assert!(!v.affects("hearth-door-2", 3));
        let single = Advisory { affected_low: 0, affected_high: 0, fixed_in: None, ..a };
        let v = verify_advisory(&single.sign(&key), &anchors, NOW).expect("verifies");
        assert!(v.affects("hearth-thermo-1", 0));
        assert!(!v.affects("hearth-thermo-1", 1));
    }

    #[test]
    fn refusals() {
        let (key, a, anchors) = setup();
        let env = a.sign(&key);
        assert_eq!(verify_advisory(&env, &TrustAnchors::new(), NOW), Err(UpdateError::UnknownKey));
        assert_eq!(
            verify_advisory(&a.sign(&super::super::test_support::key(4)), &anchors, NOW),
            Err(UpdateError::UnknownKey)
        );
        let mut bad = env.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(verify_advisory(&bad, &anchors, NOW), Err(UpdateError::BadSignature));
        for len in 0..env.len() {
            assert!(verify_advisory(&env[..len], &anchors, NOW).is_err());
        }
        let mut trailing = env.clone();
        trailing.push(0);
        assert_eq!(verify_advisory(&trailing, &anchors, NOW), Err(UpdateError::TrailingBytes));
        // A manifest is not an advisory.
        let m = manifest_for(&image(10));
        assert_eq!(
            verify_advisory(&m.sign(&key), &anchors, NOW),
            Err(UpdateError::WrongPayloadType { expected: "advisory" })
        );
    }

    #[test]
    fn issue_date_tolerance() {
        let (key, a, anchors) = setup();
        let at_limit = Advisory { issued: UnixTime(NOW.0 + 86_400), ..a.clone() };
        assert!(verify_advisory(&at_limit.sign(&key), &anchors, NOW).is_ok());
        let future = Advisory { issued: UnixTime(NOW.0 + 86_401), ..a };
        assert_eq!(
            verify_advisory(&future.sign(&key), &anchors, NOW),
            Err(UpdateError::IssuedInFuture { issued: future.issued, now: NOW })
        );
    }

    #[test]
    fn field_limits() {
        let (key, a, anchors) = setup();
        let cases = [
            (Advisory { affected_low: 5, ..a.clone() }, UpdateError::InvalidVersionRange),
            (Advisory { fixed_in: Some(4), ..a.clone() }, UpdateError::InvalidVersionRange),
            (
                Advisory { text: "t".repeat(1025), ..a.clone() },
                UpdateError::TextTooLong { field: "advisory text", len: 1025, max: 1024 },
            ),
            (Advisory { model: String::new(), ..a.clone() }, UpdateError::InvalidModel),
        ];
        for (bad, err) in cases {
            assert_eq!(bad.validate(), Err(err));
            let mut anchors = anchors.clone();
            anchors.add(&bad.model, key.public());
            assert_eq!(verify_advisory(&bad.sign(&key), &anchors, NOW), Err(err));
        }
        // Severity 4 does not exist.
        let mut payload = a.encode();
        let at = payload.windows(2).position(|w| w == [0x04, 0x03]).expect("severity entry");
        payload[at + 1] = 0x04;
        assert_eq!(
            verify_advisory(&sign_raw(&key, &payload), &anchors, NOW),
            Err(UpdateError::Malformed("severity must be 0..=3"))
        );
        // fixed-in written as null instead of omitted.
        let mut w = Writer::new();
        w.map(8).int(0).uint(2).int(1).text(&a.model).int(2).uint(2).int(3).uint(4);
        w.int(4).uint(3).int(5);
        let mut payload = w.into_bytes();
        payload.push(0xf6);
        let mut w = Writer::new();
        w.int(6).text(&a.text).int(7).uint(a.issued.0);
        payload.extend_from_slice(&w.into_bytes());
        assert_eq!(
            verify_advisory(&sign_raw(&key, &payload), &anchors, NOW),
            Err(UpdateError::Malformed("fixed-in version"))
        );
    }
}
