//! Sensor models: what each kind says about itself at pairing (EN 303 645 5.3-13/5.3-16,
//! 5.8-3) and what it measures.

use protocol::pairing::{Descriptor, MaskWidth};
use protocol::senml::{Reading, UnixTimeMillis, Value};
use protocol::time::UnixTime;
use rand_core::Rng;

/// The kinds of simulated sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// A thermostat with a setpoint; verifies update signatures itself (TR 6.18 example 5).
    Thermostat,
    /// A temperature/humidity sensor; constrained, trusts the hub's link (example 4).
    Climate,
    /// A door contact.
    Door,
    /// A battery button that cannot be updated at all.
    Button,
}

impl ModelKind {
    /// All kinds, in the order a mixed fleet cycles through them.
    pub const ALL: [ModelKind; 4] = [Self::Thermostat, Self::Climate, Self::Door, Self::Button];

    /// Model designation (5.3-16).
    pub fn designation(self) -> &'static str {
        match self {
            Self::Thermostat => "hearth-thermo-1",
            Self::Climate => "hearth-climate-1",
            Self::Door => "hearth-door-1",
            Self::Button => "hearth-button-1",
        }
    }

    /// Serial prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Thermostat => "TH",
            Self::Climate => "CL",
            Self::Door => "DR",
            Self::Button => "BT",
        }
    }

    /// The descriptor sent at pairing.
    pub fn descriptor(self, serial: &str, firmware_version: u32) -> Descriptor {
        use protocol::vocabulary::Capability as C;
        // Battery-powered models declare their battery like any other capability.
        let caps: &[C] = match self {
            Self::Thermostat => &[C::Temperature, C::Setpoint],
            Self::Climate => &[C::Temperature, C::Humidity],
            Self::Door => &[C::Contact, C::Battery],
            Self::Button => &[C::Button, C::Battery],
        };
        Descriptor {
            model: self.designation().into(),
            serial: serial.into(),
            firmware_version,
            updatable: self != Self::Button,
            verifies_signatures: self == Self::Thermostat,
            capabilities: caps.iter().map(|c| c.name().into()).collect(),
            // Support periods (5.3-13): the button's has already ended.
            support_end: UnixTime(if self == Self::Button { 1_700_000_000 } else { 2_000_000_000 }),
        }
    }

    /// PIN width (bytes of X masked): the TR's 2 bytes for all models here.
    pub fn width(self) -> MaskWidth {
        MaskWidth::TWO
    }
}

/// One measurement, compact (24 bytes in flash): its time and up to two values whose meaning
/// the model gives ([`ModelKind::quantities`]; booleans are 0 or 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was measured, Unix milliseconds (the SenML time the hub stores).
    pub time_ms: i64,
    /// The values, in the order of the model's quantities.
    pub values: [f64; 2],
}

/// Bytes of a [`Sample`] in flash.
pub const SAMPLE_BYTES: usize = 24;

impl Sample {
    /// Flash encoding: time, then both values, big-endian.
    pub fn to_bytes(&self) -> [u8; SAMPLE_BYTES] {
        let mut out = [0u8; SAMPLE_BYTES];
        out[..8].copy_from_slice(&self.time_ms.to_be_bytes());
        out[8..16].copy_from_slice(&self.values[0].to_be_bytes());
        out[16..].copy_from_slice(&self.values[1].to_be_bytes());
        out
    }

    /// Back from flash; `None` if the length is wrong.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; SAMPLE_BYTES] = b.try_into().ok()?;
        let f = |at: usize| b[at..at + 8].try_into().ok().map(f64::from_be_bytes);
        let time_ms = i64::from_be_bytes(b[..8].try_into().ok()?);
        Some(Self { time_ms, values: [f(8)?, f(16)?] })
    }
}

/// What one value of a model means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    /// Last segment of the SenML name (`urn:dev:<serial>:<name>`).
    pub name: &'static str,
    /// SenML unit, if any.
    pub unit: Option<&'static str>,
    /// Sent as a boolean (`vb`) rather than a number.
    pub boolean: bool,
}

const fn number(name: &'static str, unit: &'static str) -> Quantity {
    Quantity { name, unit: Some(unit), boolean: false }
}

const fn flag(name: &'static str) -> Quantity {
    Quantity { name, unit: None, boolean: true }
}

impl ModelKind {
    /// What this model measures, in the order of [`Sample::values`].
    pub fn quantities(self) -> &'static [Quantity] {
        use protocol::vocabulary::Capability as C;
        const TEMP: Quantity = number(C::Temperature.quantity(), "Cel");
        const THERMOSTAT: [Quantity; 2] = [TEMP, number(C::Setpoint.quantity(), "Cel")];
        const CLIMATE: [Quantity; 2] = [TEMP, number(C::Humidity.quantity(), "%RH")];
        // Battery-powered models report their level (SenML `%EL`, percent of full charge).
        const BATTERY: Quantity = number(C::Battery.quantity(), "%EL");
        const DOOR: [Quantity; 2] = [flag(C::Contact.quantity()), BATTERY];
        const BUTTON: [Quantity; 2] = [flag(C::Button.quantity()), BATTERY];
        match self {
            Self::Thermostat => &THERMOSTAT,
            Self::Climate => &CLIMATE,
            Self::Door => &DOOR,
            Self::Button => &BUTTON,
        }
    }

    /// A sample as SenML records named `urn:dev:<serial>:<quantity>`, at the sample's time.
    pub fn readings(self, serial: &str, sample: &Sample) -> Vec<Reading> {
        let time = UnixTimeMillis(sample.time_ms);
        self.quantities()
            .iter()
            .zip(sample.values)
            .map(|(q, v)| Reading {
                name: format!("urn:dev:{serial}:{}", q.name),
                unit: q.unit.map(str::to_owned),
                value: if q.boolean { Value::Bool(v != 0.0) } else { Value::Number(v) },
                time,
            })
            .collect()
    }
}

/// What a sensor is measuring right now (a random walk per quantity).
#[derive(Debug, Clone)]
pub struct Environment {
    temperature: f64,
    humidity: f64,
    setpoint: f64,
    open: bool,
    battery: f64,
}

impl Default for Environment {
    fn default() -> Self {
        Self { temperature: 20.0, humidity: 45.0, setpoint: 21.0, open: false, battery: 100.0 }
    }
}

fn step<R: Rng + ?Sized>(rng: &mut R, v: f64, amp: f64, lo: f64, hi: f64) -> f64 {
    let r = (rng.next_u32() as f64 / u32::MAX as f64) * 2.0 - 1.0;
    ((v + r * amp).clamp(lo, hi) * 100.0).round() / 100.0
}

impl Environment {
    /// The battery level after one more measurement: about 0.1 % per 100 measurements.
    fn drain_battery<R: Rng + ?Sized>(&mut self, rng: &mut R) -> f64 {
        if rng.next_u32().is_multiple_of(1000) {
            self.battery = (self.battery - 1.0).max(0.0);
        }
        self.battery
    }

    /// One measurement at `time_ms`, in the model's quantities.
    pub fn sample<R: Rng + ?Sized>(
        &mut self,
        kind: ModelKind,
        rng: &mut R,
        time_ms: i64,
    ) -> Sample {
        let values = match kind {
            ModelKind::Thermostat => {
                self.temperature = step(rng, self.temperature, 0.2, 10.0, 30.0);
                [self.temperature, self.setpoint]
            }
            ModelKind::Climate => {
                self.temperature = step(rng, self.temperature, 0.2, 10.0, 30.0);
                self.humidity = step(rng, self.humidity, 0.5, 20.0, 80.0);
                [self.temperature, self.humidity]
            }
            ModelKind::Door => {
                if rng.next_u32().is_multiple_of(5) {
                    self.open = !self.open;
                }
                [f64::from(u8::from(self.open)), self.drain_battery(rng)]
            }
            ModelKind::Button => {
                [f64::from(u8::from(rng.next_u32().is_multiple_of(2))), self.drain_battery(rng)]
            }
        };
        Sample { time_ms, values }
    }

    /// A command from the hub: sets quantity `name` if the model has it as a setting (the
    /// thermostat's `setpoint`, clamped to 5–35 °C); the next sample reports it. Returns the
    /// value now in effect, or `None` if the model has no such setting.
    pub fn apply(&mut self, kind: ModelKind, name: &str, value: f64) -> Option<f64> {
        match (kind, name) {
            (ModelKind::Thermostat, "setpoint") if value.is_finite() => {
                self.setpoint = (value.clamp(5.0, 35.0) * 100.0).round() / 100.0;
                Some(self.setpoint)
            }
            _ => None,
        }
    }

    /// One measurement as SenML records named `urn:dev:<serial>:<quantity>`.
    pub fn measure<R: Rng + ?Sized>(
        &mut self,
        kind: ModelKind,
        serial: &str,
        rng: &mut R,
        time_ms: i64,
    ) -> Vec<Reading> {
        let sample = self.sample(kind, rng, time_ms);
        kind.readings(serial, &sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_round_trip_through_flash_bytes_and_become_named_records() {
        let s = Sample { time_ms: 1_700_000_123_456, values: [20.13, 45.5] };
        assert_eq!(Sample::from_bytes(&s.to_bytes()), Some(s));
        assert_eq!(Sample::from_bytes(&[0; 23]), None);
        let r = ModelKind::Climate.readings("CL-00001", &s);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].name, "urn:dev:CL-00001:hum");
        assert_eq!(r[1].unit.as_deref(), Some("%RH"));
        assert_eq!(r[1].value, Value::Number(45.5));
        assert_eq!(r[0].time, UnixTimeMillis(1_700_000_123_456));
        let door =
            ModelKind::Door.readings("DR-00002", &Sample { time_ms: 1, values: [1.0, 97.0] });
        assert_eq!(door.len(), 2);
        assert_eq!(door[1].name, "urn:dev:DR-00002:battery");
        assert_eq!(door[1].value, Value::Number(97.0));
        assert_eq!(door[0].value, Value::Bool(true));
    }

    #[test]
    fn every_quantity_measured_is_a_declared_capability() {
        use protocol::vocabulary::Capability;
        for kind in ModelKind::ALL {
            let declared = kind.descriptor("X-1", 1).capabilities;
            for q in kind.quantities() {
                let cap = Capability::of_quantity(q.name).expect("in the vocabulary");
                assert!(declared.iter().any(|d| d == cap.name()), "{kind:?} {}", q.name);
            }
        }
    }
}
