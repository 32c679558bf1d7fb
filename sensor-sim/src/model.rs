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
        let caps: &[&str] = match self {
            Self::Thermostat => &["temperature", "setpoint"],
            Self::Climate => &["temperature", "humidity"],
            Self::Door => &["contact"],
            Self::Button => &["button"],
        };
        Descriptor {
            model: self.designation().into(),
            serial: serial.into(),
            firmware_version,
            updatable: self != Self::Button,
            verifies_signatures: self == Self::Thermostat,
            capabilities: caps.iter().map(|c| (*c).into()).collect(),
            // Support periods (5.3-13): the button's has already ended.
            support_end: UnixTime(if self == Self::Button { 1_700_000_000 } else { 2_000_000_000 }),
        }
    }

    /// PIN width (bytes of X masked): the TR's 2 bytes for all models here.
    pub fn width(self) -> MaskWidth {
        MaskWidth::TWO
    }
}

/// What a sensor is measuring right now (a random walk per quantity).
#[derive(Debug, Clone)]
pub struct Environment {
    temperature: f64,
    humidity: f64,
    setpoint: f64,
    open: bool,
}

impl Default for Environment {
    fn default() -> Self {
        Self { temperature: 20.0, humidity: 45.0, setpoint: 21.0, open: false }
    }
}

fn step<R: Rng + ?Sized>(rng: &mut R, v: f64, amp: f64, lo: f64, hi: f64) -> f64 {
    let r = (rng.next_u32() as f64 / u32::MAX as f64) * 2.0 - 1.0;
    ((v + r * amp).clamp(lo, hi) * 100.0).round() / 100.0
}

impl Environment {
    /// One measurement as SenML records named `urn:dev:<serial>:<quantity>`.
    pub fn measure<R: Rng + ?Sized>(
        &mut self,
        kind: ModelKind,
        serial: &str,
        rng: &mut R,
        time_ms: i64,
    ) -> Vec<Reading> {
        let name = |q: &str| format!("urn:dev:{serial}:{q}");
        let time = UnixTimeMillis(time_ms);
        let num = |n: String, unit: &str, v: f64| Reading {
            name: n,
            unit: Some(unit.into()),
            value: Value::Number(v),
            time,
        };
        match kind {
            ModelKind::Thermostat => {
                self.temperature = step(rng, self.temperature, 0.2, 10.0, 30.0);
                vec![
                    num(name("temp"), "Cel", self.temperature),
                    num(name("setpoint"), "Cel", self.setpoint),
                ]
            }
            ModelKind::Climate => {
                self.temperature = step(rng, self.temperature, 0.2, 10.0, 30.0);
                self.humidity = step(rng, self.humidity, 0.5, 20.0, 80.0);
                vec![
                    num(name("temp"), "Cel", self.temperature),
                    num(name("hum"), "%RH", self.humidity),
                ]
            }
            ModelKind::Door => {
                if rng.next_u32().is_multiple_of(5) {
                    self.open = !self.open;
                }
                vec![Reading {
                    name: name("open"),
                    unit: None,
                    value: Value::Bool(self.open),
                    time,
                }]
            }
            ModelKind::Button => {
                vec![Reading {
                    name: name("press"),
                    unit: None,
                    value: Value::Bool(rng.next_u32().is_multiple_of(2)),
                    time,
                }]
            }
        }
    }
}
