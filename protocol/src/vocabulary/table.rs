//! The table: every quantity, actuator command and sensor model Hearth knows, one row each.
//! Adding a quantity or a model is a row here (plus its tests); everything else — the
//! simulator's measurements, MQTT topics and Home Assistant discovery, parsing SenML names —
//! is derived from the rows. A new actuator command is a row here and its entity in
//! `hub::mqtt::discovery` (the compiler points at the `match` that lacks it).

use super::{Kind, ModelSpec, QuantitySpec, Simulated, Unit};

/// One thing a sensor measures. Each (but the drop counter) is also a capability: a sensor
/// declares the quantities it has at pairing, by [`Quantity::capability`] name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Quantity {
    /// Air temperature.
    Temperature,
    /// Relative humidity.
    Humidity,
    /// A thermostat's target temperature (settable: [`Command::Setpoint`]).
    Setpoint,
    /// A door or window contact: open or closed.
    Contact,
    /// A push button: pressed.
    Button,
    /// A battery's charge level.
    Battery,
    /// Carbon dioxide concentration (the example model's quantity).
    Co2,
    /// Measurements the sensor's outage buffer dropped, in total (TR 103 621 6.53); every
    /// sensor reports it, none declares it.
    BufferDropped,
}

impl Quantity {
    /// Every quantity, in vocabulary order.
    pub const ALL: [Quantity; 8] = [
        Self::Temperature,
        Self::Humidity,
        Self::Setpoint,
        Self::Contact,
        Self::Button,
        Self::Battery,
        Self::Co2,
        Self::BufferDropped,
    ];

    /// This quantity's row.
    pub const fn spec(self) -> QuantitySpec {
        match self {
            Self::Temperature => QuantitySpec {
                capability: Some("temperature"),
                senml: "temp",
                label: "Temperature",
                unit: Some(Unit::CELSIUS),
                kind: Kind::Numeric,
                range: -40.0..=85.0,
                decimals: 1,
                device_class: Some("temperature"),
                diagnostic: false,
                simulated: Simulated::Walk { start: 20.0, step: 0.2, low: 10.0, high: 30.0 },
            },
            Self::Humidity => QuantitySpec {
                capability: Some("humidity"),
                senml: "hum",
                label: "Humidity",
                unit: Some(Unit::RELATIVE_HUMIDITY),
                kind: Kind::Numeric,
                range: 0.0..=100.0,
                decimals: 1,
                device_class: Some("humidity"),
                diagnostic: false,
                simulated: Simulated::Walk { start: 45.0, step: 0.5, low: 20.0, high: 80.0 },
            },
            Self::Setpoint => QuantitySpec {
                capability: Some("setpoint"),
                senml: "setpoint",
                label: "Setpoint",
                unit: Some(Unit::CELSIUS),
                kind: Kind::Numeric,
                range: 5.0..=35.0,
                decimals: 1,
                device_class: Some("temperature"),
                diagnostic: false,
                simulated: Simulated::Held { start: 21.0 },
            },
            Self::Contact => QuantitySpec {
                capability: Some("contact"),
                senml: "open",
                label: "Door",
                unit: None,
                kind: Kind::State { on: "open", off: "closed" },
                range: 0.0..=1.0,
                decimals: 0,
                device_class: Some("door"),
                diagnostic: false,
                simulated: Simulated::Flips { one_in: 5 },
            },
            Self::Button => QuantitySpec {
                capability: Some("button"),
                senml: "press",
                label: "Button",
                unit: None,
                kind: Kind::Event { happened: "pressed", idle: "released" },
                range: 0.0..=1.0,
                decimals: 0,
                device_class: Some("button"),
                diagnostic: false,
                simulated: Simulated::Happens { one_in: 2 },
            },
            Self::Battery => QuantitySpec {
                capability: Some("battery"),
                senml: "battery",
                label: "Battery",
                unit: Some(Unit::BATTERY),
                kind: Kind::Numeric,
                range: 0.0..=100.0,
                decimals: 0,
                device_class: Some("battery"),
                diagnostic: true,
                simulated: Simulated::Drains { start: 100.0, one_in: 1000 },
            },
            Self::Co2 => QuantitySpec {
                capability: Some("co2"),
                senml: "co2",
                label: "CO₂",
                unit: Some(Unit::PPM),
                kind: Kind::Numeric,
                range: 0.0..=10_000.0,
                decimals: 0,
                device_class: Some("carbon_dioxide"),
                diagnostic: false,
                simulated: Simulated::Walk { start: 600.0, step: 15.0, low: 400.0, high: 2000.0 },
            },
            Self::BufferDropped => QuantitySpec {
                capability: None,
                senml: "buffer_dropped",
                label: "Measurements dropped",
                unit: Some(Unit::COUNT),
                kind: Kind::Numeric,
                range: 0.0..=1.0e15,
                decimals: 0,
                device_class: None,
                diagnostic: true,
                simulated: Simulated::Counted,
            },
        }
    }
}

/// A command the hub can relay to an actuator: set a settable quantity.
// Not `#[non_exhaustive]` on purpose: a new command must make every `match` on it (the
// discovery entity) fail to compile until it is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Command {
    /// A thermostat's target temperature, 5–35 °C.
    Setpoint,
}

impl Command {
    /// Every command.
    pub const ALL: [Command; 1] = [Self::Setpoint];

    /// The quantity it sets (its range is the command's range) and the step a user interface
    /// offers.
    pub const fn spec(self) -> (Quantity, f64) {
        match self {
            Self::Setpoint => (Quantity::Setpoint, 0.5),
        }
    }
}

/// The sensor models (the simulator's, and the manufacturer's designations).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Model {
    /// A thermostat with a setpoint; verifies update signatures itself (TR 6.18 example 5).
    Thermostat,
    /// A temperature/humidity sensor; constrained, trusts the hub's link (example 4).
    Climate,
    /// A battery door contact.
    Door,
    /// A battery button that cannot be updated at all; its support period has ended.
    Button,
    /// An example: a battery CO₂ sensor (ppm). Not in a default fleet; run it with
    /// `sensor-sim fleet --models co2`.
    Co2,
}

impl Model {
    /// Every model.
    pub const ALL: [Model; 5] =
        [Self::Thermostat, Self::Climate, Self::Door, Self::Button, Self::Co2];

    /// This model's row.
    pub const fn spec(self) -> ModelSpec {
        use Quantity as Q;
        match self {
            Self::Thermostat => ModelSpec {
                designation: "hearth-thermo-1",
                serial_prefix: "TH",
                quantities: &[Q::Temperature, Q::Setpoint],
                verifies_signatures: true,
                ..SUPPORTED
            },
            Self::Climate => ModelSpec {
                designation: "hearth-climate-1",
                serial_prefix: "CL",
                quantities: &[Q::Temperature, Q::Humidity],
                ..SUPPORTED
            },
            Self::Door => ModelSpec {
                designation: "hearth-door-1",
                serial_prefix: "DR",
                quantities: &[Q::Contact, Q::Battery],
                ..SUPPORTED
            },
            Self::Button => ModelSpec {
                designation: "hearth-button-1",
                serial_prefix: "BT",
                quantities: &[Q::Button, Q::Battery],
                updatable: false,
                support_end: 1_700_000_000,
                ..SUPPORTED
            },
            Self::Co2 => ModelSpec {
                designation: "hearth-co2-1",
                serial_prefix: "CO",
                quantities: &[Q::Co2, Q::Battery],
                example: true,
                ..SUPPORTED
            },
        }
    }
}

/// What a row leaves out: an updatable model that trusts the hub's link for signatures (TR
/// 6.18 example 4), supported until 2033-05-18.
const SUPPORTED: ModelSpec = ModelSpec {
    designation: "",
    serial_prefix: "",
    quantities: &[],
    updatable: true,
    verifies_signatures: false,
    support_end: 2_000_000_000,
    example: false,
};
