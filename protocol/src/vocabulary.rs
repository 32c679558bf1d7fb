//! The device vocabulary (DESIGN "Device vocabulary"): one typed description of the quantities
//! sensors measure (name, unit, SenML name, range, kind, settable or not), the capabilities
//! they declare at pairing (battery included), the commands the hub relays and the models that
//! exist. The rows are in `table`; this module gives them their types and the questions the
//! simulator, the link, MQTT, `hub ctl` and the web UI ask of them. A device's entity set
//! comes from its declared capabilities alone — never from which readings happened to arrive.

mod table;

use core::ops::RangeInclusive;

pub use table::{Command, Model, Quantity};

/// A unit: its SenML symbol (RFC 8428 §12.1, as sensors send it), as people write it, and as
/// Home Assistant expects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// SenML symbol (`Cel`).
    pub senml: &'static str,
    /// For people (`°C`); empty for a plain count.
    pub symbol: &'static str,
    /// Home Assistant's `unit_of_measurement` (`°C`; `%` for relative humidity).
    pub home_assistant: &'static str,
}

impl Unit {
    /// Degrees Celsius.
    pub const CELSIUS: Unit = Unit { senml: "Cel", symbol: "°C", home_assistant: "°C" };
    /// Relative humidity, percent.
    pub const RELATIVE_HUMIDITY: Unit = Unit { senml: "%RH", symbol: "% RH", home_assistant: "%" };
    /// Remaining battery charge, percent of full (SenML `%EL`).
    pub const BATTERY: Unit = Unit { senml: "%EL", symbol: "%", home_assistant: "%" };
    /// Parts per million.
    pub const PPM: Unit = Unit { senml: "ppm", symbol: "ppm", home_assistant: "ppm" };
    /// A count of things.
    pub const COUNT: Unit = Unit { senml: "count", symbol: "", home_assistant: "" };

    /// The unit whose SenML symbol is `senml`, among the vocabulary's quantities.
    pub fn of_senml(senml: &str) -> Option<Unit> {
        Quantity::ALL.into_iter().filter_map(Quantity::unit).find(|u| u.senml == senml)
    }

    /// A SenML unit as people write it (`Cel` → `°C`, `count` → nothing); a unit outside the
    /// vocabulary as it came.
    pub fn display(senml: &str) -> &str {
        match Unit::of_senml(senml) {
            Some(u) => u.symbol,
            None => senml,
        }
    }
}

/// What kind of value a quantity has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A number (SenML `v`).
    Numeric,
    /// A state that holds until it changes (SenML `vb`), with its words for people.
    State {
        /// The word for `true` (`open`).
        on: &'static str,
        /// The word for `false` (`closed`).
        off: &'static str,
    },
    /// Something that happens (SenML `vb`, `true` when it did): each one is an event, not a
    /// state to sample.
    Event {
        /// The word for `true` (`pressed`).
        happened: &'static str,
        /// The word for `false`.
        idle: &'static str,
    },
}

/// How the simulator produces a quantity's values, one measurement at a time (all rounded to
/// hundredths).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Simulated {
    /// A random walk from `start`, up to `step` either way per measurement, kept within
    /// `low..=high`.
    Walk {
        /// First value.
        start: f64,
        /// Largest change per measurement.
        step: f64,
        /// Lowest value.
        low: f64,
        /// Highest value.
        high: f64,
    },
    /// Holds its value until a command sets it.
    Held {
        /// First value.
        start: f64,
    },
    /// A state (starting `false`) that flips with probability 1/`one_in` per measurement.
    Flips {
        /// Inverse probability.
        one_in: u32,
    },
    /// An event that happens in a measurement with probability 1/`one_in`.
    Happens {
        /// Inverse probability.
        one_in: u32,
    },
    /// A level from `start` that drops by 1 with probability 1/`one_in` per measurement, down
    /// to 0.
    Drains {
        /// First value.
        start: f64,
        /// Inverse probability.
        one_in: u32,
    },
    /// Not measured: counted by the sensor itself (the outage buffer's drop counter).
    Counted,
}

/// One row of the quantity table.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantitySpec {
    /// The name a sensor declares at pairing (`temperature`); `None` for one every sensor
    /// reports without declaring it.
    pub capability: Option<&'static str>,
    /// The last segment of its SenML name, `urn:dev:<serial>:<senml>` (`temp`).
    pub senml: &'static str,
    /// For people (`Temperature`).
    pub label: &'static str,
    /// Its unit (none for states and events).
    pub unit: Option<Unit>,
    /// Number, state or event.
    pub kind: Kind,
    /// The values it can take (for a settable one: the values a command may set).
    pub range: RangeInclusive<f64>,
    /// Decimals shown to people.
    pub decimals: u8,
    /// Its device class, in Home Assistant's vocabulary (`temperature`, `door`, `battery`).
    pub device_class: Option<&'static str>,
    /// About the device rather than what it senses (battery, drop counter).
    pub diagnostic: bool,
    /// How the simulator produces it.
    pub simulated: Simulated,
}

/// One row of the model table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// Model designation (EN 303 645 5.3-16).
    pub designation: &'static str,
    /// Serial number prefix.
    pub serial_prefix: &'static str,
    /// What it declares at pairing and measures, in the order it reports them.
    pub quantities: &'static [Quantity],
    /// Can be updated at all (5.3-13 otherwise).
    pub updatable: bool,
    /// Verifies update signatures itself (TR 6.18 example 5).
    pub verifies_signatures: bool,
    /// End of its support period, Unix seconds (5.3-13).
    pub support_end: u64,
    /// An example model: a fleet runs it only when asked by name.
    pub example: bool,
}

impl Quantity {
    /// The name a sensor declares at pairing, if it is declared at all.
    pub const fn capability(self) -> Option<&'static str> {
        self.spec().capability
    }

    /// The last segment of its SenML name (`temp`).
    pub const fn senml(self) -> &'static str {
        self.spec().senml
    }

    /// For people (`Temperature`).
    pub const fn label(self) -> &'static str {
        self.spec().label
    }

    /// Its unit.
    pub const fn unit(self) -> Option<Unit> {
        self.spec().unit
    }

    /// Number, state or event.
    pub const fn kind(self) -> Kind {
        self.spec().kind
    }

    /// The values it can take.
    pub fn range(self) -> RangeInclusive<f64> {
        self.spec().range
    }

    /// Sent as a SenML boolean (`vb`) rather than a number.
    pub const fn boolean(self) -> bool {
        !matches!(self.kind(), Kind::Numeric)
    }

    /// About the device rather than what it senses.
    pub const fn diagnostic(self) -> bool {
        self.spec().diagnostic
    }

    /// The command that sets it, if it is settable.
    pub fn command(self) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.quantity() == self)
    }

    /// The quantity a sensor declared as `name` (`None` for a name outside the vocabulary).
    pub fn from_capability(name: &str) -> Option<Quantity> {
        Self::ALL.into_iter().find(|q| q.capability() == Some(name))
    }

    /// The quantity whose SenML short name is `short` (`temp`).
    pub fn from_senml(short: &str) -> Option<Quantity> {
        Self::ALL.into_iter().find(|q| q.senml() == short)
    }

    /// The quantity a full SenML record name reports (`urn:dev:TH-1:temp` → temperature).
    pub fn of_record(name: &str) -> Option<Quantity> {
        Self::from_senml(short_name(name))
    }

    /// The SenML record name of this quantity measured by sensor `serial`.
    pub fn record_name(self, serial: &str) -> String {
        format!("urn:dev:{serial}:{}", self.senml())
    }

    /// A number with the quantity's decimals, without its unit (`21.5`, `87`).
    pub fn digits(self, value: f64) -> String {
        format!("{value:.*}", usize::from(self.spec().decimals))
    }

    /// A number as people read it: the quantity's decimals and unit (`21.5 °C`, `87 %`).
    pub fn format_number(self, value: f64) -> String {
        let n = self.digits(value);
        match self.unit().map(|u| u.symbol).filter(|s| !s.is_empty()) {
            Some(u) => format!("{n} {u}"),
            None => n,
        }
    }

    /// A boolean as people read it (`open` / `closed`); for a number, `1` / `0`.
    pub fn format_bool(self, value: bool) -> String {
        match (self.kind(), value) {
            (Kind::State { on, .. }, true) => on.into(),
            (Kind::State { off, .. }, false) => off.into(),
            (Kind::Event { happened, .. }, true) => happened.into(),
            (Kind::Event { idle, .. }, false) => idle.into(),
            (Kind::Numeric, v) => self.format_number(f64::from(u8::from(v))),
        }
    }
}

/// The last segment of a SenML record name (`urn:dev:<serial>:temp` → `temp`), the one place
/// it is parsed.
pub fn short_name(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

/// The known quantities among declared capability `names`, in vocabulary order, without
/// repeats (names outside the vocabulary are skipped).
pub fn capabilities<S: AsRef<str>>(names: &[S]) -> Vec<Quantity> {
    let mut caps: Vec<Quantity> =
        names.iter().filter_map(|n| Quantity::from_capability(n.as_ref())).collect();
    caps.sort();
    caps.dedup();
    caps
}

/// Why a command's value was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandRefused {
    /// NaN or infinite.
    #[error("{0} must be a number")]
    NotANumber(&'static str),
    /// Outside the command's range.
    #[error("{name} must be {low} to {high}{unit}")]
    OutOfRange {
        /// The command's name.
        name: &'static str,
        /// Lowest value.
        low: f64,
        /// Highest value.
        high: f64,
        /// ` °C`, or empty.
        unit: String,
    },
}

impl Command {
    /// The quantity it sets.
    pub const fn quantity(self) -> Quantity {
        self.spec().0
    }

    /// Its name on the wire and in MQTT payloads: the quantity's SenML short name.
    pub const fn name(self) -> &'static str {
        self.quantity().senml()
    }

    /// The values it may set (the quantity's range).
    pub fn range(self) -> RangeInclusive<f64> {
        self.quantity().range()
    }

    /// The step a user interface offers.
    pub const fn step(self) -> f64 {
        self.spec().1
    }

    /// The command named `name` (`setpoint`).
    pub fn parse(name: &str) -> Option<Command> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// `value` checked against the range and rounded to hundredths, as relayed to a sensor.
    pub fn check(self, value: f64) -> Result<f64, CommandRefused> {
        if !value.is_finite() {
            return Err(CommandRefused::NotANumber(self.name()));
        }
        let range = self.range();
        if !range.contains(&value) {
            let unit = self.quantity().unit().map(|u| format!(" {}", u.symbol)).unwrap_or_default();
            let (low, high) = range.into_inner();
            return Err(CommandRefused::OutOfRange { name: self.name(), low, high, unit });
        }
        Ok(hundredths(value))
    }

    /// `value` brought into the range and rounded to hundredths (what a sensor applies);
    /// `None` if it is not a number.
    pub fn clamp(self, value: f64) -> Option<f64> {
        let (low, high) = self.range().into_inner();
        value.is_finite().then(|| hundredths(value.clamp(low, high)))
    }
}

fn hundredths(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

impl Model {
    /// Model designation (5.3-16).
    pub const fn designation(self) -> &'static str {
        self.spec().designation
    }

    /// What it declares at pairing and measures, in order.
    pub const fn quantities(self) -> &'static [Quantity] {
        self.spec().quantities
    }

    /// The models a fleet cycles through when none are named (the examples left out).
    pub fn standard() -> impl Iterator<Item = Model> {
        Self::ALL.into_iter().filter(|m| !m.spec().example)
    }

    /// The commands it takes.
    pub fn commands(self) -> impl Iterator<Item = Command> {
        self.quantities().iter().filter_map(|q| q.command())
    }

    /// The model designated `designation` (`hearth-thermo-1`).
    pub fn of_designation(designation: &str) -> Option<Model> {
        Self::ALL.into_iter().find(|m| m.designation() == designation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_round_trip_and_unknown_names_are_skipped() {
        let mut senml = HashSet::new();
        let mut caps = HashSet::new();
        for q in Quantity::ALL {
            assert!(senml.insert(q.senml()), "{q:?}");
            assert_eq!(Quantity::from_senml(q.senml()), Some(q));
            assert_eq!(Quantity::of_record(&q.record_name("TH-00001")), Some(q));
            if let Some(c) = q.capability() {
                assert!(caps.insert(c), "{q:?}");
                assert_eq!(Quantity::from_capability(c), Some(q));
            }
        }
        assert_eq!(Quantity::from_capability("laser"), None);
        assert_eq!(Quantity::from_capability("buffer_dropped"), None, "never declared");
        assert_eq!(
            capabilities(&["battery", "contact", "laser", "battery"]),
            vec![Quantity::Contact, Quantity::Battery]
        );
        assert_eq!(short_name("urn:dev:TH-1:temp"), "temp");
        assert_eq!(short_name("temp"), "temp");
        let designations: HashSet<_> = Model::ALL.iter().map(|m| m.designation()).collect();
        assert_eq!(designations.len(), Model::ALL.len());
        let prefixes: HashSet<_> = Model::ALL.iter().map(|m| m.spec().serial_prefix).collect();
        assert_eq!(prefixes.len(), Model::ALL.len());
    }

    #[test]
    fn rows_are_consistent() {
        for q in Quantity::ALL {
            let s = q.spec();
            assert!(s.range.start() < s.range.end(), "{q:?}");
            assert_eq!(q.boolean(), s.unit.is_none(), "numbers have units, booleans none: {q:?}");
            match s.simulated {
                Simulated::Walk { start, low, high, step } => {
                    assert!(low <= start && start <= high && step > 0.0, "{q:?}");
                    assert!(s.range.contains(&low) && s.range.contains(&high), "{q:?}");
                }
                Simulated::Held { start } | Simulated::Drains { start, .. } => {
                    assert!(s.range.contains(&start), "{q:?}");
                }
                Simulated::Flips { one_in } | Simulated::Happens { one_in } => {
                    assert!(one_in > 0 && q.boolean(), "{q:?}");
                }
                Simulated::Counted => assert_eq!(s.capability, None, "{q:?}"),
            }
        }
        for m in Model::ALL {
            assert!(!m.quantities().is_empty(), "{m:?}");
            for q in m.quantities() {
                assert!(q.capability().is_some(), "{m:?} declares {q:?}");
            }
        }
        for c in Command::ALL {
            assert_eq!(c.quantity().kind(), Kind::Numeric, "{c:?}");
            assert_eq!(Command::parse(c.name()), Some(c));
            assert_eq!(c.quantity().command(), Some(c));
            assert!(c.step() > 0.0);
        }
        assert!(
            Model::standard().all(|m| m != Model::Co2),
            "the example is not in a default fleet"
        );
        assert_eq!(Model::of_designation("hearth-co2-1"), Some(Model::Co2));
    }

    #[test]
    fn setpoints_are_checked_clamped_and_formatted() {
        let s = Command::Setpoint;
        assert_eq!(s.name(), "setpoint");
        assert_eq!(s.range(), 5.0..=35.0);
        assert_eq!(s.check(22.456), Ok(22.46));
        assert_eq!(s.check(5.0), Ok(5.0));
        let refused = s.check(99.0).expect_err("out of range");
        assert_eq!(refused.to_string(), "setpoint must be 5 to 35 °C");
        assert!(s.check(f64::NAN).is_err());
        assert_eq!(s.clamp(40.0), Some(35.0));
        assert_eq!(s.clamp(f64::INFINITY), None);
        assert_eq!(Model::Thermostat.commands().collect::<Vec<_>>(), vec![s]);
        assert_eq!(Model::Climate.commands().count(), 0);
        assert_eq!(Quantity::Temperature.format_number(21.456), "21.5 °C");
        assert_eq!(Quantity::Battery.format_number(87.0), "87 %");
        assert_eq!(Quantity::Co2.format_number(612.4), "612 ppm");
        assert_eq!(Quantity::BufferDropped.format_number(3.0), "3");
        assert_eq!(Quantity::Humidity.digits(45.04), "45.0");
        assert_eq!(Quantity::Contact.format_bool(true), "open");
        assert_eq!(Quantity::Contact.format_bool(false), "closed");
        assert_eq!(Quantity::Button.format_bool(true), "pressed");
        assert_eq!(Unit::display("Cel"), "°C");
        assert_eq!(Unit::display("%RH"), "% RH");
        assert_eq!(Unit::display("count"), "");
        assert_eq!(Unit::display("furlong"), "furlong");
    }
}
