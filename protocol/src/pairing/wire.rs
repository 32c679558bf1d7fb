//! Pairing messages on the wire (CBOR arrays) and the sensor descriptor, with explicit limits.

use minicbor::Decoder;

use crate::cbor::{Enc, EncResult, encode_with};
use crate::oscore::Kid;
use crate::time::UnixTime;

use super::{COMPRESSED_KEY_LEN, MaskWidth, NONCE_LEN, PairingError};

/// Protocol version carried in the hellos.
pub const VERSION: u8 = 1;
/// Limits on descriptor fields.
pub const MAX_TEXT: usize = 64;
/// At most this many sensing capabilities.
pub const MAX_CAPABILITIES: usize = 16;

/// What a sensor says about itself at pairing (EN 303 645 5.3-13/5.3-16, 5.8-3): model
/// designation, firmware, whether it can be updated, what it senses, and its support period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Model designation, e.g. `hearth-thermo-1`.
    pub model: String,
    /// Hardware serial number.
    pub serial: String,
    /// Installed firmware version.
    pub firmware_version: u32,
    /// Whether the sensor can be updated at all.
    pub updatable: bool,
    /// Whether the sensor verifies manifest signatures itself (TR 103 621 6.18 example 5).
    pub verifies_signatures: bool,
    /// Sensing capabilities, e.g. `temperature`, `humidity`, `contact`.
    pub capabilities: Vec<String>,
    /// End of the security-update support period.
    pub support_end: UnixTime,
}

/// Sensor → hub: the masked ephemeral key and the descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorHello {
    /// How many bytes of X are masked (and shown as the PIN).
    pub width: MaskWidth,
    /// Compressed SEC1 key with the last `width` bytes of X set to zero.
    pub masked_key: [u8; COMPRESSED_KEY_LEN],
    /// Sensor nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Descriptor.
    pub descriptor: Descriptor,
}

/// Hub → sensor: the hub's ephemeral key, nonce and the OSCORE IDs it assigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubHello {
    /// Compressed SEC1 key.
    pub key: [u8; COMPRESSED_KEY_LEN],
    /// Hub nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The sensor's OSCORE Sender ID (unique per sensor; the hub demultiplexes by it).
    pub sensor_kid: Kid,
    /// The hub's OSCORE Sender ID in this context.
    pub hub_kid: Kid,
}

/// A key-confirmation MAC (hub's first, then the sensor's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    /// HMAC-SHA256 over the transcript hash.
    pub mac: [u8; 32],
}

fn malformed(_: minicbor::decode::Error) -> PairingError {
    PairingError::Malformed
}

fn array(d: &mut Decoder<'_>, len: u64) -> Result<(), PairingError> {
    match d.array().map_err(malformed)? {
        Some(n) if n == len => Ok(()),
        _ => Err(PairingError::Malformed),
    }
}

fn text(d: &mut Decoder<'_>, max: usize) -> Result<String, PairingError> {
    let s = d.str().map_err(malformed)?;
    let ok =
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if !ok {
        return Err(PairingError::BadDescriptor);
    }
    Ok(s.to_owned())
}

fn fixed<const N: usize>(d: &mut Decoder<'_>) -> Result<[u8; N], PairingError> {
    d.bytes().map_err(malformed)?.try_into().map_err(|_| PairingError::Malformed)
}

fn kid(d: &mut Decoder<'_>) -> Result<Kid, PairingError> {
    Kid::new(d.bytes().map_err(malformed)?).map_err(|_| PairingError::Malformed)
}

fn end(d: &Decoder<'_>) -> Result<(), PairingError> {
    if d.position() != d.input().len() {
        return Err(PairingError::Malformed);
    }
    Ok(())
}

impl Descriptor {
    pub(crate) fn encode_into(&self, e: &mut Enc<'_>) -> EncResult {
        e.array(7)?.str(&self.model)?.str(&self.serial)?.u32(self.firmware_version)?;
        e.bool(self.updatable)?.bool(self.verifies_signatures)?;
        e.array(self.capabilities.len() as u64)?;
        for c in &self.capabilities {
            e.str(c)?;
        }
        e.u64(self.support_end.0)?;
        Ok(())
    }

    /// Canonical encoding (also what the transcript hashes).
    pub fn encode(&self) -> Vec<u8> {
        encode_with(|e| self.encode_into(e))
    }

    fn decode_from(d: &mut Decoder<'_>) -> Result<Self, PairingError> {
        array(d, 7)?;
        let model = text(d, MAX_TEXT)?;
        let serial = text(d, MAX_TEXT)?;
        let firmware_version = d.u32().map_err(malformed)?;
        let updatable = d.bool().map_err(malformed)?;
        let verifies_signatures = d.bool().map_err(malformed)?;
        let n = d.array().map_err(malformed)?.ok_or(PairingError::Malformed)?;
        if n > MAX_CAPABILITIES as u64 {
            return Err(PairingError::BadDescriptor);
        }
        let capabilities = (0..n).map(|_| text(d, MAX_TEXT)).collect::<Result<_, _>>()?;
        let support_end = UnixTime(d.u64().map_err(malformed)?);
        Ok(Self {
            model,
            serial,
            firmware_version,
            updatable,
            verifies_signatures,
            capabilities,
            support_end,
        })
    }

    /// Parses a descriptor encoded by [`Descriptor::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, PairingError> {
        let mut d = Decoder::new(bytes);
        let desc = Self::decode_from(&mut d)?;
        end(&d)?;
        Ok(desc)
    }
}

impl SensorHello {
    /// Encodes `[1, w, masked_key, nonce, descriptor]`.
    pub fn encode(&self) -> Vec<u8> {
        encode_with(|e| {
            e.array(5)?.u8(VERSION)?.u8(self.width.get())?;
            e.bytes(&self.masked_key)?.bytes(&self.nonce)?;
            self.descriptor.encode_into(e)
        })
    }

    /// Parses a sensor hello; the key itself is validated when the PIN completes it.
    pub fn decode(bytes: &[u8]) -> Result<Self, PairingError> {
        let mut d = Decoder::new(bytes);
        array(&mut d, 5)?;
        if d.u8().map_err(malformed)? != VERSION {
            return Err(PairingError::UnsupportedVersion);
        }
        let width = MaskWidth::new(d.u8().map_err(malformed)?)?;
        let key = d.bytes().map_err(malformed)?;
        let masked_key: [u8; COMPRESSED_KEY_LEN] =
            key.try_into().map_err(|_| PairingError::NotCompressed)?;
        if !matches!(masked_key[0], 0x02 | 0x03) {
            return Err(PairingError::NotCompressed);
        }
        let nonce = fixed(&mut d)?;
        let descriptor = Descriptor::decode_from(&mut d)?;
        end(&d)?;
        Ok(Self { width, masked_key, nonce, descriptor })
    }
}

impl HubHello {
    /// Encodes `[1, key, nonce, sensor_kid, hub_kid]`.
    pub fn encode(&self) -> Vec<u8> {
        encode_with(|e| {
            e.array(5)?.u8(VERSION)?.bytes(&self.key)?.bytes(&self.nonce)?;
            e.bytes(self.sensor_kid.as_bytes())?.bytes(self.hub_kid.as_bytes())?;
            Ok(())
        })
    }

    /// Parses a hub hello.
    pub fn decode(bytes: &[u8]) -> Result<Self, PairingError> {
        let mut d = Decoder::new(bytes);
        array(&mut d, 5)?;
        if d.u8().map_err(malformed)? != VERSION {
            return Err(PairingError::UnsupportedVersion);
        }
        let key = d.bytes().map_err(malformed)?;
        let key: [u8; COMPRESSED_KEY_LEN] =
            key.try_into().map_err(|_| PairingError::NotCompressed)?;
        let nonce = fixed(&mut d)?;
        let sensor_kid = kid(&mut d)?;
        let hub_kid = kid(&mut d)?;
        end(&d)?;
        Ok(Self { key, nonce, sensor_kid, hub_kid })
    }
}

impl Confirm {
    /// Encodes `[mac]`.
    pub fn encode(&self) -> Vec<u8> {
        encode_with(|e| {
            e.array(1)?.bytes(&self.mac)?;
            Ok(())
        })
    }

    /// Parses a confirmation.
    pub fn decode(bytes: &[u8]) -> Result<Self, PairingError> {
        let mut d = Decoder::new(bytes);
        array(&mut d, 1)?;
        let mac = fixed(&mut d)?;
        end(&d)?;
        Ok(Self { mac })
    }
}
