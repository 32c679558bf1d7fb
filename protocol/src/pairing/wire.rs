//! Pairing messages on the wire (CBOR arrays) and the sensor descriptor, with explicit limits.

use crate::cbor::{CborError, Reader, Writer};
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
/// The hub keeps it as it came, within its record of the device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

impl From<CborError> for PairingError {
    fn from(_: CborError) -> Self {
        PairingError::Malformed
    }
}

fn array(r: &mut Reader<'_>, len: u64) -> Result<(), PairingError> {
    if r.array("message")? != len {
        return Err(PairingError::Malformed);
    }
    Ok(())
}

fn text(r: &mut Reader<'_>, max: usize) -> Result<String, PairingError> {
    let s = r.text("text")?;
    let ok =
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if !ok {
        return Err(PairingError::BadDescriptor);
    }
    Ok(s.to_owned())
}

fn fixed<const N: usize>(r: &mut Reader<'_>) -> Result<[u8; N], PairingError> {
    r.bytes("fixed-length bytes")?.try_into().map_err(|_| PairingError::Malformed)
}

fn kid(r: &mut Reader<'_>) -> Result<Kid, PairingError> {
    Kid::new(r.bytes("kid")?).map_err(|_| PairingError::Malformed)
}

impl Descriptor {
    pub(crate) fn encode_into(&self, w: &mut Writer) {
        w.array(7).text(&self.model).text(&self.serial).uint(self.firmware_version.into());
        w.bool(self.updatable).bool(self.verifies_signatures);
        w.array(self.capabilities.len() as u64);
        for c in &self.capabilities {
            w.text(c);
        }
        w.uint(self.support_end.0);
    }

    /// Canonical encoding (also what the transcript hashes).
    pub fn encode(&self) -> Vec<u8> {
        Writer::build(|w| self.encode_into(w))
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, PairingError> {
        array(r, 7)?;
        let model = text(r, MAX_TEXT)?;
        let serial = text(r, MAX_TEXT)?;
        let firmware_version = r.u32("firmware version")?;
        let updatable = r.bool("updatable")?;
        let verifies_signatures = r.bool("verifies signatures")?;
        let n = r.array("capabilities")?;
        if n > MAX_CAPABILITIES as u64 {
            return Err(PairingError::BadDescriptor);
        }
        let capabilities = (0..n).map(|_| text(r, MAX_TEXT)).collect::<Result<_, _>>()?;
        let support_end = UnixTime(r.uint("support end")?);
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
        let mut r = Reader::new(bytes);
        let desc = Self::decode_from(&mut r)?;
        r.finish()?;
        Ok(desc)
    }
}

impl SensorHello {
    /// Encodes `[1, w, masked_key, nonce, descriptor]`.
    pub fn encode(&self) -> Vec<u8> {
        Writer::build(|w| {
            w.array(5).uint(VERSION.into()).uint(self.width.get().into());
            w.bytes(&self.masked_key).bytes(&self.nonce);
            self.descriptor.encode_into(w);
        })
    }

    /// Parses a sensor hello; the key itself is validated when the PIN completes it.
    pub fn decode(bytes: &[u8]) -> Result<Self, PairingError> {
        let mut r = Reader::new(bytes);
        array(&mut r, 5)?;
        if r.u8("version")? != VERSION {
            return Err(PairingError::UnsupportedVersion);
        }
        let width = MaskWidth::new(r.u8("width")?)?;
        let key = r.bytes("key")?;
        let masked_key: [u8; COMPRESSED_KEY_LEN] =
            key.try_into().map_err(|_| PairingError::NotCompressed)?;
        if !matches!(masked_key[0], 0x02 | 0x03) {
            return Err(PairingError::NotCompressed);
        }
        let nonce = fixed(&mut r)?;
        let descriptor = Descriptor::decode_from(&mut r)?;
        r.finish()?;
        Ok(Self { width, masked_key, nonce, descriptor })
    }
}

impl HubHello {
    /// Encodes `[1, key, nonce, sensor_kid, hub_kid]`.
    pub fn encode(&self) -> Vec<u8> {
        Writer::build(|w| {
            w.array(5).uint(VERSION.into()).bytes(&self.key).bytes(&self.nonce);
            w.bytes(self.sensor_kid.as_bytes()).bytes(self.hub_kid.as_bytes());
        })
    }

    /// Parses a hub hello.
    pub fn decode(bytes: &[u8]) -> Result<Self, PairingError> {
        let mut r = Reader::new(bytes);
        array(&mut r, 5)?;
        if r.u8("version")? != VERSION {
            return Err(PairingError::UnsupportedVersion);
        }
        let key = r.bytes("key")?;
        let key: [u8; COMPRESSED_KEY_LEN] =
            key.try_into().map_err(|_| PairingError::NotCompressed)?;
        let nonce = fixed(&mut r)?;
        let sensor_kid = kid(&mut r)?;
        let hub_kid = kid(&mut r)?;
        r.finish()?;
        Ok(Self { key, nonce, sensor_kid, hub_kid })
    }
}

impl Confirm {
    /// Encodes `[mac]`.
    pub fn encode(&self) -> Vec<u8> {
        Writer::build(|w| _ = w.array(1).bytes(&self.mac))
    }

    /// Parses a confirmation.
    pub fn decode(bytes: &[u8]) -> Result<Self, PairingError> {
        let mut r = Reader::new(bytes);
        array(&mut r, 1)?;
        let mac = fixed(&mut r)?;
        r.finish()?;
        Ok(Self { mac })
    }
}
