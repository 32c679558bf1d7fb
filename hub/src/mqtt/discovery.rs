//! Home Assistant MQTT discovery: one retained config per entity under
//! `<prefix>/<component>/hearth_<device>/<object>/config` (sensor, binary_sensor, climate,
//! update, event), each with `unique_id`, a `device` block and an availability topic. Only devices whose
//! data may leave the hub get configs (isolated ones have theirs removed: TR 103 621 6.23), and
//! the device block names the model and firmware (EN 303 645 5.3-16).

use serde_json::{Value, json};

use protocol::vocabulary::{Command, Kind, Quantity, capabilities};

use super::topics;
use crate::devices::DeviceSnapshot;

/// Manufacturer named in device blocks.
pub(crate) const MANUFACTURER: &str = "Hearth";

/// One entity's config.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EntityConfig {
    /// The config topic.
    pub topic: String,
    /// The config (JSON).
    pub payload: Value,
}

/// Home Assistant's component for an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Component {
    /// A measurement.
    Sensor,
    /// On/off (door contact, button).
    BinarySensor,
    /// The thermostat.
    Climate,
    /// Firmware.
    Update,
    /// Button presses.
    Event,
}

impl Component {
    /// As in the topic.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Sensor => "sensor",
            Self::BinarySensor => "binary_sensor",
            Self::Climate => "climate",
            Self::Update => "update",
            Self::Event => "event",
        }
    }
}

/// The config topic of one entity.
pub(crate) fn config_topic(
    prefix: &str,
    component: Component,
    device: &str,
    object: &str,
) -> String {
    format!("{prefix}/{}/hearth_{device}/{object}/config", component.as_str())
}

/// Every entity config for `device` (none for an isolated device): one or more entities per
/// capability its model declared at pairing, derived from the quantity's row in
/// `protocol::vocabulary` (numbers are sensors, states binary sensors, events events, a
/// settable quantity its command's entity), and the firmware `update` entity if it can be
/// updated — never depending on which readings have arrived.
pub(crate) fn configs(prefix: &str, device: &DeviceSnapshot) -> Vec<EntityConfig> {
    if device.availability == crate::devices::Availability::Isolated {
        return Vec::new();
    }
    let id = device.info.id.to_string();
    let state = topics::state(&device.info.id);
    let mut out = Vec::new();
    let mut entity = |component: Component, object: &str, name: &str, extra: Value| {
        let object_id = format!("hearth_{id}_{object}");
        let mut payload = json!({
            "name": name,
            "unique_id": object_id,
            // `object_id` for HA before 2025.10, `default_entity_id` from then on (HA 2024.3's
            // schemas drop the key they do not know).
            "object_id": object_id,
            "default_entity_id": format!("{}.{object_id}", component.as_str()),
            "availability_topic": topics::availability(&device.info.id),
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device_block(device),
            "origin": {"name": "Hearth"},
        });
        if let (Some(p), Value::Object(extra)) = (payload.as_object_mut(), extra) {
            p.extend(extra);
        }
        out.push(EntityConfig { topic: config_topic(prefix, component, &id, object), payload });
    };
    // A quantity's value in the state message; `None` (HA: unknown) until one was measured.
    let value = |q: Quantity| format!("{{{{ value_json['values'].get('{}') }}}}", q.senml());
    for q in capabilities(&device.info.about.capabilities) {
        let object = q.capability().unwrap_or(q.senml());
        let spec = q.spec();
        let mut common = json!({});
        if let Some(class) = spec.device_class {
            common["device_class"] = json!(class);
        }
        if spec.diagnostic {
            common["entity_category"] = json!("diagnostic");
        }
        match (q.command(), q.kind()) {
            (Some(Command::Setpoint), _) => {
                entity(
                    Component::Climate,
                    "thermostat",
                    "Thermostat",
                    json!({
                        // Heating only: the mode is always `heat`, and HA shows it as such.
                        "modes": ["heat"],
                        "mode_state_topic": state,
                        "mode_state_template": "heat",
                        "current_temperature_topic": state,
                        "current_temperature_template": value(Quantity::Temperature),
                        "temperature_state_topic": state,
                        "temperature_state_template": value(q),
                        "temperature_command_topic": topics::set(&device.info.id),
                        "min_temp": *Command::Setpoint.range().start(),
                        "max_temp": *Command::Setpoint.range().end(),
                        "temp_step": Command::Setpoint.step(),
                        "temperature_unit": "C",
                        "precision": 0.1,
                    }),
                );
                // What became of the last command: a refusal is visible, with its reason.
                entity(
                    Component::Sensor,
                    "command",
                    "Last command",
                    json!({
                        "state_topic": topics::set_result(&device.info.id),
                        "value_template": "{{ value_json['status'] }}",
                        "json_attributes_topic": topics::set_result(&device.info.id),
                        "entity_category": "diagnostic",
                        "icon": "mdi:message-reply-text",
                    }),
                );
            }
            (None, Kind::Numeric) => {
                common["state_topic"] = json!(state);
                common["state_class"] = json!("measurement");
                common["value_template"] = json!(value(q));
                if let Some(u) = spec.unit.map(|u| u.home_assistant).filter(|u| !u.is_empty()) {
                    common["unit_of_measurement"] = json!(u);
                }
                entity(Component::Sensor, object, spec.label, common);
            }
            (None, Kind::State { .. }) => {
                common["state_topic"] = json!(state);
                common["value_template"] = json!(format!(
                    "{{{{ {{true: 'ON', false: 'OFF'}}.get(value_json['values'].get('{}'), 'None') }}}}",
                    q.senml()
                ));
                common["payload_on"] = json!("ON");
                common["payload_off"] = json!("OFF");
                entity(Component::BinarySensor, object, spec.label, common);
            }
            // Every occurrence is an event (HA's `event` entity, usable as a trigger), not a
            // state sampled at reports.
            (None, Kind::Event { .. }) => {
                common["state_topic"] = json!(topics::event(&device.info.id));
                common["event_types"] = json!([q.senml()]);
                entity(Component::Event, object, spec.label, common);
            }
        }
    }
    if device.info.about.updatable {
        entity(
            Component::Update,
            "firmware",
            "Firmware",
            json!({
                "state_topic": topics::update(&device.info.id),
                // Install = the owner approves the release shown for this device.
                "command_topic": topics::update_install(&device.info.id),
                "payload_install": "install",
                "device_class": "firmware",
                "entity_category": "diagnostic",
            }),
        );
    }
    out
}

fn device_block(device: &DeviceSnapshot) -> Value {
    let mut d = json!({
        "identifiers": [format!("hearth_{}", device.info.id)],
        "name": device.name,
        "model": device.info.about.model,
        "manufacturer": MANUFACTURER,
        "sw_version": device.info.about.firmware_version.to_string(),
        "serial_number": device.info.about.serial,
    });
    if let Some(room) = &device.room {
        d["suggested_area"] = json!(room);
    }
    d
}

/// The `update` entity's state: installed and latest version, progress while delivering, and
/// what the release fixes and why it is not being installed (if so) as its summary.
pub(crate) fn update_state(
    installed: u32,
    latest: Option<u32>,
    progress: Option<(u32, u32)>,
    summary: Option<String>,
) -> Value {
    let percent = progress
        .filter(|(_, total)| *total > 0)
        .map(|(done, total)| (u64::from(done.min(total)) * 100 / u64::from(total)) as u32);
    let latest = latest.unwrap_or(installed).max(installed);
    let mut v = json!({
        "installed_version": installed.to_string(),
        "latest_version": latest.to_string(),
        "title": format!("Firmware v{latest}"),
        "in_progress": progress.is_some(),
        "update_percentage": percent,
    });
    if let Some(s) = summary {
        // HA shows at most 255 characters.
        v["release_summary"] = json!(s.chars().take(255).collect::<String>());
    }
    v
}

/// Keys Home Assistant's MQTT discovery documentation requires (or that Hearth's entities
/// need to work) per component; checked by tests against every config Hearth publishes.
pub(crate) fn required_keys(component: &str) -> &'static [&'static str] {
    match component {
        "sensor" | "binary_sensor" => &["state_topic"],
        "climate" => &["temperature_command_topic", "modes"],
        "update" => &["state_topic"],
        "event" => &["state_topic", "event_types"],
        _ => &[],
    }
}

/// Checks a discovery config against Home Assistant's documented schema: the component's
/// required keys, `unique_id`, a `device` block with identifiers and name, an availability
/// topic, and valid sensor device classes with matching units. Returns what is wrong.
pub fn schema_problems(topic: &str, payload: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let parts: Vec<&str> = topic.split('/').collect();
    let (component, node, object) = match parts.as_slice() {
        [_, c, n, o, "config"] => (*c, *n, *o),
        _ => {
            return vec![format!(
                "topic {topic} is not <prefix>/<component>/<node>/<object>/config"
            )];
        }
    };
    let id_ok = |s: &str| {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !id_ok(node) || !id_ok(object) {
        problems.push(format!("node_id/object_id {node}/{object} has characters HA refuses"));
    }
    if !matches!(component, "sensor" | "binary_sensor" | "climate" | "update" | "event") {
        problems.push(format!("unexpected component {component}"));
    }
    for k in required_keys(component) {
        if payload.get(k).is_none() {
            problems.push(format!("{component} lacks {k}"));
        }
    }
    if payload.get("unique_id").and_then(Value::as_str).is_none_or(str::is_empty) {
        problems.push("no unique_id".into());
    }
    let device = payload.get("device");
    let identifiers = device.and_then(|d| d.get("identifiers")).and_then(Value::as_array);
    if identifiers.is_none_or(|i| i.is_empty()) {
        problems.push("device block without identifiers".into());
    }
    for k in ["name", "model", "manufacturer", "sw_version"] {
        if device.and_then(|d| d.get(k)).and_then(Value::as_str).is_none() {
            problems.push(format!("device block without {k}"));
        }
    }
    let availability = payload.get("availability_topic").and_then(Value::as_str);
    if availability.is_none_or(|t| t.is_empty() || t.contains(['+', '#'])) {
        problems.push("no availability_topic".into());
    }
    if component == "sensor" {
        let class = payload.get("device_class").and_then(Value::as_str);
        let unit = payload.get("unit_of_measurement").and_then(Value::as_str);
        // Home Assistant's sensor device classes and the units each accepts (a subset).
        let units: &[&str] = match class {
            Some("temperature") => &["°C", "°F", "K"],
            Some("humidity" | "battery" | "moisture") => &["%"],
            Some("carbon_dioxide" | "carbon_monoxide") => &["ppm"],
            Some("pressure" | "atmospheric_pressure") => {
                &["Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"]
            }
            Some("illuminance") => &["lx"],
            Some("pm1" | "pm25" | "pm10") => &["µg/m³"],
            Some("power") => &["W", "kW"],
            Some("energy") => &["Wh", "kWh", "MWh"],
            Some("voltage") => &["V", "mV"],
            Some("current") => &["A", "mA"],
            // Times: no unit at all.
            Some("timestamp" | "date") => &[],
            Some(other) => {
                problems.push(format!("unexpected device_class {other}"));
                &[]
            }
            None => &[],
        };
        let unitless = matches!(class, Some("timestamp" | "date"));
        if unitless && unit.is_some()
            || !unitless && class.is_some() && !unit.is_some_and(|u| units.contains(&u))
        {
            problems.push(format!("unit {unit:?} does not fit device_class {class:?}"));
        }
        let state_class = payload.get("state_class").and_then(Value::as_str);
        if !state_class.is_none_or(|s| matches!(s, "measurement" | "total" | "total_increasing")) {
            problems.push(format!("bad state_class {state_class:?}"));
        }
    }
    if component == "binary_sensor"
        && let Some(c) = payload.get("device_class").and_then(Value::as_str)
        && !matches!(
            c,
            "door"
                | "garage_door"
                | "opening"
                | "window"
                | "motion"
                | "occupancy"
                | "presence"
                | "moisture"
                | "smoke"
                | "gas"
                | "vibration"
                | "tamper"
                | "problem"
                | "safety"
                | "connectivity"
        )
    {
        problems.push(format!("unexpected binary_sensor device_class {c}"));
    }
    if component == "update"
        && payload.get("device_class").and_then(Value::as_str).is_some_and(|c| c != "firmware")
    {
        problems.push("update device_class must be firmware".into());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::Availability;
    use crate::store::DeviceInfo;
    use std::collections::BTreeMap;

    fn snapshot(caps: &[&str], updatable: bool, availability: Availability) -> DeviceSnapshot {
        DeviceSnapshot {
            info: DeviceInfo {
                id: "0a1b".parse().expect("id"),
                about: protocol::pairing::Descriptor {
                    model: "hearth-thermo-1".into(),
                    serial: "TH-00001".into(),
                    firmware_version: 3,
                    updatable,
                    verifies_signatures: true,
                    capabilities: caps.iter().map(|c| (*c).to_string()).collect(),
                    support_end: protocol::time::UnixTime(2_000_000_000),
                },
                paired_at: 1_700_000_000,
            },
            name: "Hall thermostat".into(),
            room: Some("Hall".into()),
            availability,
            isolation: None,
            last_seen_ms: None,
            battery: None,
            state: BTreeMap::new(),
            period_ms: 1000,
            transitions: Vec::new(),
            replaces: Vec::new(),
        }
    }

    #[test]
    fn every_model_gets_configs_that_fit_the_schema() {
        // Every model in the vocabulary, the example ones included: one entity per declared
        // capability (two for a thermostat: the climate entity and its last command), plus
        // the firmware.
        for model in protocol::vocabulary::Model::ALL {
            let caps: Vec<&str> =
                model.quantities().iter().filter_map(|q| q.capability()).collect();
            let d = snapshot(&caps, true, Availability::Online);
            let configs = configs("homeassistant", &d);
            let commands = model.commands().count();
            assert_eq!(configs.len(), caps.len() + commands + 1, "{model:?}: {configs:?}");
            for c in &configs {
                assert_eq!(schema_problems(&c.topic, &c.payload), Vec::<String>::new(), "{c:?}");
            }
            let ids: std::collections::HashSet<_> =
                configs.iter().map(|c| c.payload["unique_id"].to_string()).collect();
            assert_eq!(ids.len(), configs.len(), "unique ids are unique");
        }
        let co2 =
            configs("homeassistant", &snapshot(&["co2", "battery"], false, Availability::Online));
        let sensor = co2.iter().find(|c| c.topic.ends_with("/co2/config")).expect("co2");
        assert_eq!(sensor.topic, "homeassistant/sensor/hearth_0a1b/co2/config");
        assert_eq!(sensor.payload["device_class"], "carbon_dioxide");
        assert_eq!(sensor.payload["unit_of_measurement"], "ppm");
        assert_eq!(sensor.payload["value_template"], "{{ value_json['values'].get('co2') }}");
        let thermo = configs(
            "homeassistant",
            &snapshot(&["temperature", "setpoint"], true, Availability::Online),
        );
        let climate = thermo.iter().find(|c| c.topic.contains("/climate/")).expect("climate");
        assert_eq!(climate.topic, "homeassistant/climate/hearth_0a1b/thermostat/config");
        assert_eq!(climate.payload["temperature_command_topic"], "hearth/0a1b/set");
        assert_eq!(
            (climate.payload["min_temp"].as_f64(), climate.payload["max_temp"].as_f64()),
            (Some(5.0), Some(35.0))
        );
        assert!(thermo.iter().any(|c| c.topic.contains("/update/")));
    }

    #[test]
    fn isolated_devices_get_none_and_the_checker_catches_gaps() {
        let d = snapshot(&["temperature"], false, Availability::Isolated);
        assert!(configs("homeassistant", &d).is_empty());
        let bad = json!({"name": "x", "device_class": "temperature", "unit_of_measurement": "%"});
        let problems = schema_problems("homeassistant/sensor/n/o/config", &bad);
        for needle in ["state_topic", "unique_id", "identifiers", "availability_topic", "unit"] {
            assert!(problems.iter().any(|p| p.contains(needle)), "{needle}: {problems:?}");
        }
    }

    #[test]
    fn update_state_reports_versions_and_progress() {
        let s = update_state(3, Some(4), Some((5, 20)), Some("Fixes it.".into()));
        assert_eq!(s["installed_version"], "3");
        assert_eq!(s["latest_version"], "4");
        assert_eq!(s["in_progress"], true);
        assert_eq!(s["update_percentage"], 25);
        assert_eq!(s["release_summary"], "Fixes it.");
        let idle = update_state(4, None, None, None);
        assert_eq!(idle["latest_version"], "4");
        assert_eq!(idle["update_percentage"], Value::Null);
    }
}
