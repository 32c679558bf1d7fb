//! Commands to actuators (the thermostat's setpoint), queue-mode style (like LwM2M queue mode):
//! the hub has no request path to a sleeping sensor, so a command waits at the hub and rides,
//! as an inner (encrypted and authenticated) OSCORE option, in the acknowledgement of the
//! sensor's next request. The sensor applies it and reports the new value in its next reading.
//! Latency is therefore one reporting period. EN 303 645 5.5-1 (commands only over the
//! authenticated link).

use crate::cbor::{CborError, Reader, Writer};
use crate::vocabulary;

/// The CoAP option that carries a command inside an OSCORE-protected response. From the
/// experimental range (RFC 7252 §12.2); even, so elective: a sensor that does not know it
/// ignores it. Not a class U option, so OSCORE encrypts it (RFC 8613 §4.1).
pub const COMMAND_OPTION: u16 = 65004;
/// Longest command name.
pub const MAX_NAME: usize = 32;

/// A command: set the quantity of `setting` to `value`. `id` lets both sides tell commands
/// apart. On the wire the setting is its name in the vocabulary (`setpoint`).
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Chosen by the hub, increasing.
    pub id: u32,
    /// What it sets.
    pub setting: vocabulary::Command,
    /// The new value (finite).
    pub value: f64,
}

/// Why a command did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not `[id, name, value]` in CBOR, a name outside the vocabulary's commands, or a value
    /// not finite.
    #[error("malformed command")]
    Malformed,
}

impl From<CborError> for CommandError {
    fn from(_: CborError) -> Self {
        Self::Malformed
    }
}

impl Command {
    /// `[id, name, value]`.
    pub fn encode(&self) -> Vec<u8> {
        Writer::build(|w| {
            w.array(3).uint(self.id.into()).text(self.setting.name()).float(self.value);
        })
    }

    /// Parses a command.
    pub fn decode(bytes: &[u8]) -> Result<Self, CommandError> {
        let mut r = Reader::new(bytes);
        if r.array("command")? != 3 {
            return Err(CommandError::Malformed);
        }
        let id = r.u32("id")?;
        let name = r.text("name")?;
        let value = r.number("value")?;
        r.finish()?;
        if name.len() > MAX_NAME || !value.is_finite() {
            return Err(CommandError::Malformed);
        }
        let setting = vocabulary::Command::parse(name).ok_or(CommandError::Malformed)?;
        Ok(Self { id, setting, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_input() {
        let c = Command { id: 7, setting: vocabulary::Command::Setpoint, value: 22.5 };
        assert_eq!(Command::decode(&c.encode()), Ok(c));
        let wire = |name: &str, value: f64| {
            Writer::build(|w| {
                w.array(3).uint(1).text(name).float(value);
            })
        };
        assert!(Command::decode(&wire("setpoint", 20.0)).is_ok());
        assert_eq!(Command::decode(&wire("", 1.0)), Err(CommandError::Malformed));
        assert_eq!(Command::decode(&wire("laser", 1.0)), Err(CommandError::Malformed));
        assert_eq!(Command::decode(&wire("setpoint", f64::NAN)), Err(CommandError::Malformed));
        assert_eq!(Command::decode(&[0x83, 0x01]), Err(CommandError::Malformed));
        assert_eq!(Command::decode(b""), Err(CommandError::Malformed));
    }
}
