//! The device vocabulary (DESIGN "Device vocabulary"), kept minimal and in one place: the
//! capabilities a sensor declares at pairing (battery included) and the quantity each one
//! reports (the last segment of its SenML name). The simulator declares and measures them,
//! and the hub's MQTT discovery derives a device's entity set from them alone — never from
//! which readings happened to arrive.

/// One declared capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// Air temperature, °C.
    Temperature,
    /// Relative humidity, %.
    Humidity,
    /// A thermostat's target temperature, °C (settable).
    Setpoint,
    /// A door or window contact (open / closed).
    Contact,
    /// A push button.
    Button,
    /// A battery and its charge level, %.
    Battery,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 6] = [
        Self::Temperature,
        Self::Humidity,
        Self::Setpoint,
        Self::Contact,
        Self::Button,
        Self::Battery,
    ];

    /// The name a descriptor declares.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Temperature => "temperature",
            Self::Humidity => "humidity",
            Self::Setpoint => "setpoint",
            Self::Contact => "contact",
            Self::Button => "button",
            Self::Battery => "battery",
        }
    }

    /// The quantity it reports: the last segment of the SenML name (`urn:dev:<serial>:<q>`).
    pub const fn quantity(self) -> &'static str {
        match self {
            Self::Temperature => "temp",
            Self::Humidity => "hum",
            Self::Setpoint => "setpoint",
            Self::Contact => "open",
            Self::Button => "press",
            Self::Battery => "battery",
        }
    }

    /// The capability a descriptor names (`None` for a name outside the vocabulary).
    pub fn parse(name: &str) -> Option<Capability> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The capability that reports `quantity`.
    pub fn of_quantity(quantity: &str) -> Option<Capability> {
        Self::ALL.into_iter().find(|c| c.quantity() == quantity)
    }
}

/// The known capabilities among declared `names`, in vocabulary order, without repeats.
pub fn capabilities<S: AsRef<str>>(names: &[S]) -> Vec<Capability> {
    let mut caps: Vec<Capability> =
        names.iter().filter_map(|n| Capability::parse(n.as_ref())).collect();
    caps.sort();
    caps.dedup();
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_quantities_round_trip_and_unknown_names_are_skipped() {
        for c in Capability::ALL {
            assert_eq!(Capability::parse(c.name()), Some(c));
            assert_eq!(Capability::of_quantity(c.quantity()), Some(c));
        }
        assert_eq!(Capability::parse("laser"), None);
        assert_eq!(
            capabilities(&["battery", "contact", "laser", "battery"]),
            vec![Capability::Contact, Capability::Battery]
        );
    }
}
