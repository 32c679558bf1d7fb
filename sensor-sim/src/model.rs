//! Sensor models: what each kind says about itself at pairing (EN 303 645 5.3-13/5.3-16,
//! 5.8-3) and what it measures.

use protocol::pairing::{Descriptor, MaskWidth};
use protocol::senml::{Reading, UnixTimeMillis, Value};
use protocol::time::UnixTime;
use protocol::vocabulary::{Command, Quantity, Simulated};
use rand_core::Rng;

/// The kinds of simulated sensor are the vocabulary's models, named in `--models` and in
/// flash as `thermostat`, `climate`, `door`, `button`, `co2`.
pub use protocol::vocabulary::Model;

/// Most quantities a model may measure: the values a [`Sample`] holds.
pub const MAX_QUANTITIES: usize = 2;

/// The descriptor `model` sends at pairing (5.3-13/5.3-16, 5.8-3): everything from its row
/// in the vocabulary. Battery-powered models declare their battery like any other capability.
pub fn descriptor(model: Model, serial: &str, firmware_version: u32) -> Descriptor {
    let spec = model.spec();
    Descriptor {
        model: spec.designation.into(),
        serial: serial.into(),
        firmware_version,
        updatable: spec.updatable,
        verifies_signatures: spec.verifies_signatures,
        capabilities: spec
            .quantities
            .iter()
            .filter_map(|q| q.capability())
            .map(Into::into)
            .collect(),
        support_end: UnixTime(spec.support_end),
    }
}

/// Serial prefix of `model`'s sensors.
pub fn prefix(model: Model) -> &'static str {
    model.spec().serial_prefix
}

/// PIN width (bytes of X masked): the TR's 2 bytes for all models here.
pub const WIDTH: MaskWidth = MaskWidth::TWO;

/// One measurement, compact (24 bytes in flash): its time and up to two values whose meaning
/// the model gives ([`Model::quantities`]; booleans are 0 or 1).
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

/// A sample of `model` as SenML records named `urn:dev:<serial>:<quantity>`, at the sample's
/// time.
pub fn readings(model: Model, serial: &str, sample: &Sample) -> Vec<Reading> {
    let time = UnixTimeMillis(sample.time_ms);
    model
        .quantities()
        .iter()
        .zip(sample.values)
        .map(|(q, v)| Reading {
            name: q.record_name(serial),
            unit: q.unit().map(|u| u.senml.to_owned()),
            value: if q.boolean() { Value::Bool(v != 0.0) } else { Value::Number(v) },
            time,
        })
        .collect()
}

/// What a sensor is measuring right now: one value per quantity of its model, each produced
/// as the vocabulary says ([`Simulated`]).
#[derive(Debug, Clone)]
pub struct Environment {
    model: Model,
    values: [f64; MAX_QUANTITIES],
}

fn hundredths(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn one_in<R: Rng + ?Sized>(rng: &mut R, n: u32) -> bool {
    rng.next_u32().is_multiple_of(n.max(1))
}

impl Environment {
    /// `model`'s first values.
    pub fn new(model: Model) -> Self {
        let mut values = [0.0; MAX_QUANTITIES];
        for (v, q) in values.iter_mut().zip(model.quantities()) {
            *v = match q.spec().simulated {
                Simulated::Walk { start, .. }
                | Simulated::Held { start }
                | Simulated::Drains { start, .. } => start,
                Simulated::Flips { .. } | Simulated::Happens { .. } | Simulated::Counted => 0.0,
            };
        }
        Self { model, values }
    }

    /// One measurement at `time_ms`, in the model's quantities.
    pub fn sample<R: Rng + ?Sized>(&mut self, rng: &mut R, time_ms: i64) -> Sample {
        for (v, q) in self.values.iter_mut().zip(self.model.quantities()) {
            *v = match q.spec().simulated {
                Simulated::Walk { step, low, high, .. } => {
                    let r = (rng.next_u32() as f64 / u32::MAX as f64) * 2.0 - 1.0;
                    hundredths((*v + r * step).clamp(low, high))
                }
                Simulated::Held { .. } | Simulated::Counted => *v,
                Simulated::Flips { one_in: n } => {
                    if one_in(rng, n) {
                        1.0 - *v
                    } else {
                        *v
                    }
                }
                Simulated::Happens { one_in: n } => f64::from(u8::from(one_in(rng, n))),
                Simulated::Drains { one_in: n, .. } if one_in(rng, n) => (*v - 1.0).max(0.0),
                Simulated::Drains { .. } => *v,
            };
        }
        Sample { time_ms, values: self.values }
    }

    /// A command from the hub: sets its quantity if the model has it as a setting (the
    /// thermostat's `setpoint`), brought into the command's range; the next sample reports
    /// it. Returns the value now in effect, or `None` if the model has no such setting.
    pub fn apply(&mut self, command: Command, value: f64) -> Option<f64> {
        let at = self.model.quantities().iter().position(|q| *q == command.quantity())?;
        let applied = command.clamp(value)?;
        *self.values.get_mut(at)? = applied;
        Some(applied)
    }

    /// One measurement as SenML records named `urn:dev:<serial>:<quantity>`.
    pub fn measure<R: Rng + ?Sized>(
        &mut self,
        serial: &str,
        rng: &mut R,
        time_ms: i64,
    ) -> Vec<Reading> {
        let sample = self.sample(rng, time_ms);
        readings(self.model, serial, &sample)
    }
}

/// The quantity of a recorded value.
pub fn quantity(model: Model, index: usize) -> Option<Quantity> {
    model.quantities().get(index).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn samples_round_trip_through_flash_bytes_and_become_named_records() {
        let s = Sample { time_ms: 1_700_000_123_456, values: [20.13, 45.5] };
        assert_eq!(Sample::from_bytes(&s.to_bytes()), Some(s));
        assert_eq!(Sample::from_bytes(&[0; 23]), None);
        let r = readings(Model::Climate, "CL-00001", &s);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].name, "urn:dev:CL-00001:hum");
        assert_eq!(r[1].unit.as_deref(), Some("%RH"));
        assert_eq!(r[1].value, Value::Number(45.5));
        assert_eq!(r[0].time, UnixTimeMillis(1_700_000_123_456));
        let door = readings(Model::Door, "DR-00002", &Sample { time_ms: 1, values: [1.0, 97.0] });
        assert_eq!(door.len(), 2);
        assert_eq!(door[1].name, "urn:dev:DR-00002:battery");
        assert_eq!(door[1].value, Value::Number(97.0));
        assert_eq!(door[0].value, Value::Bool(true));
    }

    #[test]
    fn every_model_fits_a_sample_and_declares_what_it_measures() {
        for model in Model::ALL {
            assert!(model.quantities().len() <= MAX_QUANTITIES, "{model:?}");
            let declared = descriptor(model, "X-1", 1).capabilities;
            assert_eq!(declared.len(), model.quantities().len(), "{model:?}");
            for q in model.quantities() {
                assert!(declared.iter().any(|d| Some(d.as_str()) == q.capability()), "{model:?}");
            }
        }
        let button = descriptor(Model::Button, "BT-1", 1);
        assert!(!button.updatable && button.support_end.0 < 2_000_000_000);
        assert!(descriptor(Model::Thermostat, "TH-1", 1).verifies_signatures);
    }

    #[test]
    fn measurements_stay_in_their_ranges_and_only_settings_take_commands() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for model in Model::ALL {
            let mut env = Environment::new(model);
            let mut seen = vec![std::collections::BTreeSet::new(); model.quantities().len()];
            for t in 0..2000 {
                for (i, r) in env.measure("X-1", &mut rng, t).into_iter().enumerate() {
                    let q = Quantity::of_record(&r.name).expect("a vocabulary quantity");
                    assert_eq!(Some(q), quantity(model, i));
                    let v = match r.value {
                        Value::Number(v) => v,
                        Value::Bool(b) => f64::from(u8::from(b)),
                    };
                    assert!(q.range().contains(&v), "{model:?} {q:?} {v}");
                    seen[i].insert(v.to_bits());
                }
            }
            for (i, q) in model.quantities().iter().enumerate() {
                // Everything but a held setting changes over 2000 measurements.
                let held = matches!(q.spec().simulated, Simulated::Held { .. });
                assert_eq!(seen[i].len() == 1, held, "{model:?} {q:?}");
            }
        }
        let mut thermostat = Environment::new(Model::Thermostat);
        assert_eq!(thermostat.apply(Command::Setpoint, 24.5), Some(24.5));
        assert_eq!(thermostat.apply(Command::Setpoint, 99.0), Some(35.0), "clamped to its range");
        assert_eq!(thermostat.apply(Command::Setpoint, f64::NAN), None);
        assert_eq!(thermostat.sample(&mut rng, 1).values[1], 35.0);
        assert_eq!(Environment::new(Model::Climate).apply(Command::Setpoint, 20.0), None);
    }
}
