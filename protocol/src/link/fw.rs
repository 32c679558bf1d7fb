//! Firmware delivery on the link (EN 303 645 5.3, TR 103 621 6.18 examples 4/5): the hub offers
//! an update inside a reading's OSCORE-protected acknowledgement; the sensor fetches the signed
//! manifest (`GET /fw/m`) and the image block by block (`GET /fw/i`, CoAP Block2, RFC 7959),
//! resuming from its last good block, and reports the outcome (`POST /fw/r`).

use crate::cbor::{CborError, Reader, Writer};

/// Manifest resource.
pub const PATH_MANIFEST: &str = "fw/m";
/// Image resource (Block2).
pub const PATH_IMAGE: &str = "fw/i";
/// Outcome reports.
pub const PATH_REPORT: &str = "fw/r";
/// The Block2 option number (RFC 7959 §2.1).
pub const BLOCK2: u16 = 23;
/// Block size exponent used for images: 2^(6+4) = 1024 bytes.
pub const DEFAULT_SZX: u8 = 6;

/// Why a firmware message did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FwError {
    /// Not the expected CBOR.
    #[error("malformed firmware message")]
    Malformed,
    /// A Block2 value out of range.
    #[error("bad Block2 option")]
    BadBlock,
}

/// An update offered to one sensor (sent inside OSCORE: the link authenticates it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateOffer {
    /// Version offered.
    pub version: u32,
    /// Image size in bytes.
    pub size: u32,
    /// Image SHA-256.
    pub sha256: [u8; 32],
    /// Block size exponent (block = 2^(szx+4) bytes).
    pub szx: u8,
}

/// An offer that arrived inside an authenticated OSCORE response. Only the sensor link makes
/// one, so holding it proves the hub (which verified the manufacturer's signature) sent it:
/// a constrained sensor's trust in an image rests on this (TR 103 621 6.18 example 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkOffer(UpdateOffer);

impl LinkOffer {
    pub(crate) fn new(offer: UpdateOffer) -> Self {
        Self(offer)
    }

    /// The offer.
    pub fn offer(&self) -> &UpdateOffer {
        &self.0
    }
}

/// How an update ended on the sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Running the new version, health check passed.
    Installed,
    /// The new version failed its health check (or did not boot): the old one runs again.
    RolledBack,
    /// The update was refused or could not be completed (bad manifest, digest mismatch, ...).
    Failed,
}

/// What a sensor reports after an update attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateReport {
    /// The version the report is about.
    pub version: u32,
    /// The version now running.
    pub running: u32,
    /// Outcome.
    pub outcome: Outcome,
    /// Why (for rollbacks and failures).
    pub reason: String,
}

const MAX_REASON: usize = 200;

impl From<CborError> for FwError {
    fn from(_: CborError) -> Self {
        FwError::Malformed
    }
}

impl UpdateOffer {
    /// `[version, size, sha256, szx]`.
    pub fn encode(&self) -> Vec<u8> {
        Writer::build(|w| {
            w.array(4).uint(self.version.into()).uint(self.size.into());
            w.bytes(&self.sha256).uint(self.szx.into());
        })
    }

    /// Parses an offer.
    pub fn decode(bytes: &[u8]) -> Result<Self, FwError> {
        let mut r = Reader::new(bytes);
        if r.array("offer")? != 4 {
            return Err(FwError::Malformed);
        }
        let version = r.u32("version")?;
        let size = r.u32("size")?;
        let sha256 = r.bytes("sha256")?.try_into().map_err(|_| FwError::Malformed)?;
        let szx = r.u8("szx")?;
        r.finish()?;
        if szx > 6 {
            return Err(FwError::Malformed);
        }
        Ok(Self { version, size, sha256, szx })
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        16 << self.szx
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u32 {
        self.size.div_ceil(self.block_size())
    }
}

impl UpdateReport {
    /// `[version, running, outcome, reason]`.
    pub fn encode(&self) -> Vec<u8> {
        let outcome = match self.outcome {
            Outcome::Installed => 0u8,
            Outcome::RolledBack => 1,
            Outcome::Failed => 2,
        };
        let reason: String = self.reason.chars().take(MAX_REASON).collect();
        Writer::build(|w| {
            w.array(4).uint(self.version.into()).uint(self.running.into());
            w.uint(outcome.into()).text(&reason);
        })
    }

    /// Parses a report.
    pub fn decode(bytes: &[u8]) -> Result<Self, FwError> {
        let mut r = Reader::new(bytes);
        if r.array("report")? != 4 {
            return Err(FwError::Malformed);
        }
        let version = r.u32("version")?;
        let running = r.u32("running")?;
        let outcome = match r.u8("outcome")? {
            0 => Outcome::Installed,
            1 => Outcome::RolledBack,
            2 => Outcome::Failed,
            _ => return Err(FwError::Malformed),
        };
        let reason = r.text("reason")?;
        r.finish()?;
        if reason.len() > MAX_REASON {
            return Err(FwError::Malformed);
        }
        Ok(Self { version, running, outcome, reason: reason.to_owned() })
    }
}

/// A Block2 option value (RFC 7959 §2.2): block number, more flag, size exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Block number.
    pub num: u32,
    /// More blocks follow.
    pub more: bool,
    /// Size exponent.
    pub szx: u8,
}

impl Block {
    /// Minimal big-endian encoding (0 to 3 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let v = (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx & 7);
        let b = v.to_be_bytes();
        let skip = b.iter().take_while(|&&x| x == 0).count().min(4);
        b[skip..].to_vec()
    }

    /// Parses a Block2 value; SZX 7 is reserved.
    pub fn decode(bytes: &[u8]) -> Result<Self, FwError> {
        if bytes.len() > 3 {
            return Err(FwError::BadBlock);
        }
        let v = bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
        let szx = (v & 7) as u8;
        if szx == 7 {
            return Err(FwError::BadBlock);
        }
        Ok(Self { num: v >> 4, more: v & 8 != 0, szx })
    }

    /// Byte offset of this block.
    pub fn offset(&self) -> u64 {
        u64::from(self.num) << (self.szx + 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_refuse_garbage() {
        let o = UpdateOffer { version: 7, size: 262_144, sha256: [9; 32], szx: 6 };
        assert_eq!(UpdateOffer::decode(&o.encode()), Ok(o.clone()));
        assert_eq!(o.blocks(), 256);
        let r = UpdateReport {
            version: 7,
            running: 6,
            outcome: Outcome::RolledBack,
            reason: "health".into(),
        };
        assert_eq!(UpdateReport::decode(&r.encode()), Ok(r));
        let enc = o.encode();
        for cut in 0..enc.len() {
            assert!(UpdateOffer::decode(&enc[..cut]).is_err());
        }
        let mut bad_szx = o.clone();
        bad_szx.szx = 7;
        assert!(UpdateOffer::decode(&bad_szx.encode()).is_err());
    }

    #[test]
    fn block_values_follow_rfc_7959() {
        for (num, more, szx) in
            [(0, false, 0), (0, true, 6), (15, true, 6), (255, false, 2), (65_535, true, 6)]
        {
            let b = Block { num, more, szx };
            assert_eq!(Block::decode(&b.encode()), Ok(b));
        }
        assert_eq!(Block { num: 0, more: false, szx: 0 }.encode(), Vec::<u8>::new());
        assert_eq!(Block::decode(&[0x0e]), Ok(Block { num: 0, more: true, szx: 6 }));
        assert_eq!(Block::decode(&[0x07]), Err(FwError::BadBlock));
        assert_eq!(Block::decode(&[1, 2, 3, 4]), Err(FwError::BadBlock));
        assert_eq!(Block { num: 3, more: true, szx: 6 }.offset(), 3072);
    }
}
