//! A device's identity at the hub: its OSCORE kid (assigned at pairing), written as hex in every
//! interface and document. Parsed once at the edge; never passed around as a string.

use std::fmt;
use std::str::FromStr;

use protocol::oscore::Kid;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A paired device's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(Kid);

/// A device id that is not 1 to 7 bytes of hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad device id {0:?} (expected the hex id `hub ctl devices` shows)")]
pub struct BadDeviceId(pub String);

impl DeviceId {
    /// The OSCORE kid.
    pub fn kid(&self) -> Kid {
        self.0
    }
}

impl From<Kid> for DeviceId {
    fn from(kid: Kid) -> Self {
        Self(kid)
    }
}

impl FromStr for DeviceId {
    type Err = BadDeviceId;

    fn from_str(s: &str) -> Result<Self, BadDeviceId> {
        protocol::hex::decode(s)
            .filter(|b| !b.is_empty())
            .and_then(|b| Kid::new(&b).ok())
            .map(Self)
            .ok_or_else(|| BadDeviceId(s.chars().take(32).collect()))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_round_trips_and_refuses_the_rest() {
        let id: DeviceId = "0a1b2c3d".parse().expect("hex");
        assert_eq!(id.to_string(), "0a1b2c3d");
        assert_eq!(serde_json::to_string(&id).expect("json"), "\"0a1b2c3d\"");
        assert_eq!(serde_json::from_str::<DeviceId>("\"0a1b2c3d\"").expect("json"), id);
        for bad in ["", "xyz", "0a1", "00112233445566778899"] {
            assert!(bad.parse::<DeviceId>().is_err(), "{bad:?}");
        }
        let map: std::collections::BTreeMap<DeviceId, u8> = [(id, 1)].into();
        assert_eq!(serde_json::to_string(&map).expect("json"), "{\"0a1b2c3d\":1}");
    }
}
