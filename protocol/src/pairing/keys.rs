//! Key masking, the PIN, point validation, the transcript and key derivation for pairing.

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use p256::PublicKey;
use p256::elliptic_curve::sec1::ToSec1Point;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::oscore::{ContextParams, Kid};

use super::{COMPRESSED_KEY_LEN, HubHello, PairingError, SensorHello};

/// How many bytes of X the sensor masks and displays: 2 (the TR's example), 3 or 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskWidth(u8);

impl MaskWidth {
    /// The TR's example width.
    pub const TWO: Self = Self(2);

    /// A width of 2 to 4 bytes.
    pub fn new(w: u8) -> Result<Self, PairingError> {
        if (2..=4).contains(&w) { Ok(Self(w)) } else { Err(PairingError::BadWidth) }
    }

    /// The width in bytes.
    pub fn get(self) -> u8 {
        self.0
    }

    /// Decimal digits the PIN is shown with: 5, 8 or 10.
    pub fn digits(self) -> usize {
        match self.0 {
            2 => 5,
            3 => 8,
            _ => 10,
        }
    }

    fn range(self) -> core::ops::Range<usize> {
        COMPRESSED_KEY_LEN - usize::from(self.0)..COMPRESSED_KEY_LEN
    }
}

/// The masked bytes of the sensor's key, shown as a zero-padded decimal number.
#[derive(Clone, Copy, PartialEq, Eq, Zeroize)]
pub struct Pin {
    value: u32,
    #[zeroize(skip)]
    width: MaskWidth,
}

impl core::fmt::Debug for Pin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

impl core::fmt::Display for Pin {
    /// The digits the sensor's display shows.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:0width$}", self.value, width = self.width.digits())
    }
}

impl Pin {
    /// Parses the digits the owner typed: exactly `width.digits()` decimal digits, in range.
    pub fn parse(text: &str, width: MaskWidth) -> Result<Self, PairingError> {
        let text = text.trim();
        let bad = PairingError::BadPin(width.digits());
        if text.len() != width.digits() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad);
        }
        let value: u64 = text.parse().map_err(|_| bad)?;
        let max = (1u64 << (8 * u32::from(width.get()))) - 1;
        if value > max {
            return Err(bad);
        }
        Ok(Self { value: value as u32, width })
    }

    /// The mask width this PIN belongs to.
    pub fn width(&self) -> MaskWidth {
        self.width
    }

    fn bytes(&self) -> impl Iterator<Item = u8> {
        let w = usize::from(self.width.get());
        self.value.to_be_bytes().into_iter().skip(4 - w)
    }
}

/// Splits a full compressed key into (masked key, PIN).
pub(crate) fn mask(
    full: &[u8; COMPRESSED_KEY_LEN],
    width: MaskWidth,
) -> ([u8; COMPRESSED_KEY_LEN], Pin) {
    let mut masked = *full;
    let value = full[width.range()].iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    masked[width.range()].fill(0);
    (masked, Pin { value, width })
}

/// Rebuilds the sensor's key from its masked form and the PIN, and validates it: a compressed
/// encoding, the masked bytes zero, a point on the curve (decoding a compressed point checks
/// the curve equation; the identity has no compressed encoding).
pub(crate) fn unmask(
    masked: &[u8; COMPRESSED_KEY_LEN],
    pin: &Pin,
) -> Result<([u8; COMPRESSED_KEY_LEN], PublicKey), PairingError> {
    if !matches!(masked[0], 0x02 | 0x03) {
        return Err(PairingError::NotCompressed);
    }
    if masked[pin.width.range()].iter().any(|&b| b != 0) {
        return Err(PairingError::NotMasked);
    }
    let mut full = *masked;
    for (dst, src) in full[pin.width.range()].iter_mut().zip(pin.bytes()) {
        *dst = src;
    }
    let key = parse_compressed(&full).map_err(|_| PairingError::OffCurve)?;
    Ok((full, key))
}

/// Parses a compressed SEC1 key, refusing every other encoding (uncompressed, identity).
pub(crate) fn parse_compressed(
    bytes: &[u8; COMPRESSED_KEY_LEN],
) -> Result<PublicKey, PairingError> {
    if !matches!(bytes[0], 0x02 | 0x03) {
        return Err(PairingError::NotCompressed);
    }
    PublicKey::from_sec1_bytes(bytes).map_err(|_| PairingError::OffCurve)
}

/// Compressed encoding of a key.
pub(crate) fn compress(key: &PublicKey) -> [u8; COMPRESSED_KEY_LEN] {
    let point = key.to_sec1_point(true);
    let mut out = [0u8; COMPRESSED_KEY_LEN];
    out.copy_from_slice(point.as_bytes());
    out
}

/// Refuses a peer key whose X equals ours (reflection).
pub(crate) fn check_not_reflected(
    ours: &[u8; COMPRESSED_KEY_LEN],
    theirs: &[u8; COMPRESSED_KEY_LEN],
) -> Result<(), PairingError> {
    if ours[1..] == theirs[1..] { Err(PairingError::ReflectedKey) } else { Ok(()) }
}

/// Everything both sides must agree on, hashed: label, width, both full keys, both nonces, the
/// IDs, and the descriptor.
pub(crate) fn transcript_hash(
    sensor: &SensorHello,
    sensor_full_key: &[u8; COMPRESSED_KEY_LEN],
    hub: &HubHello,
) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u32).to_be_bytes());
        h.update(bytes);
    };
    field(b"hearth-pair-v1");
    field(&[sensor.width.get()]);
    field(sensor_full_key);
    field(&hub.key);
    field(&sensor.nonce);
    field(&hub.nonce);
    field(hub.sensor_kid.as_bytes());
    field(hub.hub_kid.as_bytes());
    field(&sensor.descriptor.encode());
    h.finalize().into()
}

/// Keys derived from the ECDH secret and the transcript.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct SessionKeys {
    hub_confirm: [u8; 32],
    sensor_confirm: [u8; 32],
    master_secret: [u8; 16],
    master_salt: [u8; 8],
    th: [u8; 32],
}

impl SessionKeys {
    /// HKDF-SHA256(salt = transcript hash, IKM = shared X coordinate).
    pub(crate) fn derive(shared_x: &[u8], th: [u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(&th), shared_x);
        let mut k = Self {
            hub_confirm: [0; 32],
            sensor_confirm: [0; 32],
            master_secret: [0; 16],
            master_salt: [0; 8],
            th,
        };
        let outputs: [(&[u8], &mut [u8]); 4] = [
            (b"hearth pair hub confirm", &mut k.hub_confirm),
            (b"hearth pair sensor confirm", &mut k.sensor_confirm),
            (b"hearth oscore master secret", &mut k.master_secret),
            (b"hearth oscore master salt", &mut k.master_salt),
        ];
        for (info, out) in outputs {
            if hk.expand(info, out).is_err() {
                unreachable!("HKDF output lengths are small constants");
            }
        }
        k
    }

    fn mac(key: &[u8; 32], role: &[u8], th: &[u8; 32]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(role);
        m.update(th);
        m
    }

    pub(crate) fn hub_mac(&self) -> [u8; 32] {
        Self::mac(&self.hub_confirm, b"hub", &self.th).finalize().into_bytes().into()
    }

    pub(crate) fn sensor_mac(&self) -> [u8; 32] {
        Self::mac(&self.sensor_confirm, b"sensor", &self.th).finalize().into_bytes().into()
    }

    /// Constant-time check of the hub's MAC.
    pub(crate) fn verify_hub(&self, mac: &[u8; 32]) -> bool {
        Self::mac(&self.hub_confirm, b"hub", &self.th).verify_slice(mac).is_ok()
    }

    /// Constant-time check of the sensor's MAC.
    pub(crate) fn verify_sensor(&self, mac: &[u8; 32]) -> bool {
        Self::mac(&self.sensor_confirm, b"sensor", &self.th).verify_slice(mac).is_ok()
    }

    /// The OSCORE context for the side whose Sender ID is `sender`.
    pub(crate) fn context(&self, sender: Kid, recipient: Kid) -> ContextParams {
        ContextParams {
            master_secret: self.master_secret.to_vec(),
            master_salt: self.master_salt.to_vec(),
            sender_id: sender,
            recipient_id: recipient,
            id_context: None,
        }
    }
}
