//! Interop with a real Home Assistant Core (2024.3.3): set up through its own onboarding API and
//! MQTT config flow, connected to the hub's MQTT broker as an owner would connect it, with a
//! fleet of every model. Asserts what an owner sees in HA: every entity of every device present
//! and available within 10 s of pairing, and again after a hub restart and an HA restart; after
//! a 30 s hub outage (SIGKILL) whose buffered readings drain, no entity flaps unavailable and
//! the state HA reads never goes back in time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use tests::ha::HomeAssistant;
use tests::{Hub, Maker, Sim, field, free_udp_port, wait_for};

const THERMO: &str = "hearth-thermo-1";
const PASSWORD: &str = "ha-interop-password-2f9c";
/// Sensors of each model in the fleet.
const PER_MODEL: usize = 5;
/// How long the hub is down in the outage.
const OUTAGE: Duration = Duration::from_secs(30);

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

/// The entities an owner must see for a device, by its serial's model prefix (the test's own
/// statement of each model's entity set, not read from the hub).
fn expected_entities(serial: &str, id: &str) -> Vec<String> {
    let objects: &[&str] = match &serial[..2] {
        "TH" => &["sensor/temperature", "climate/thermostat", "sensor/command", "update/firmware"],
        "CL" => &["sensor/temperature", "sensor/humidity", "update/firmware"],
        "DR" => &["binary_sensor/contact", "sensor/battery", "update/firmware"],
        "BT" => &["event/button", "sensor/battery"],
        other => panic!("unknown model prefix {other}"),
    };
    objects
        .iter()
        .map(|o| {
            let (domain, object) = o.split_once('/').expect("domain/object");
            format!("{domain}.hearth_{id}_{object}")
        })
        .collect()
}

/// Entities of `want` that HA lacks or shows `unavailable`, and battery entities without a
/// level (with their state).
fn missing(ha: &HomeAssistant, want: &BTreeSet<String>) -> BTreeMap<String, String> {
    let states = ha.states();
    want.iter()
        .filter_map(|e| match states.get(e).and_then(|s| s["state"].as_str()) {
            None => Some((e.clone(), "absent".to_owned())),
            Some("unavailable") => Some((e.clone(), "unavailable".to_owned())),
            // A battery level is known from the first report on, and restored after restarts.
            Some(v)
                if e.ends_with("_battery")
                    && !v.parse::<f64>().is_ok_and(|b| (0.0..=100.0).contains(&b)) =>
            {
                Some((e.clone(), format!("battery {v}")))
            }
            Some(_) => None,
        })
        .collect()
}

/// Waits until every entity of `want` is present and not unavailable; returns how long it took.
fn all_available(ha: &HomeAssistant, want: &BTreeSet<String>, within: Duration, what: &str) {
    let start = Instant::now();
    let mut last = BTreeMap::new();
    while start.elapsed() < within {
        last = missing(ha, want);
        if last.is_empty() {
            eprintln!(
                "home_assistant: {what}: all {} entities in {:?}",
                want.len(),
                start.elapsed()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{what}: {} of {} entities missing or unavailable after {within:?}: {last:#?}\n{}",
        last.len(),
        want.len(),
        ha.log_tail()
    );
}

pub(crate) struct Setup {
    pub hub: Option<Hub>,
    pub ha: HomeAssistant,
    pub sim: Sim,
    pub config: String,
    pub data: std::path::PathBuf,
    pub coap: u16,
    /// The hub's plain MQTT port (loopback).
    pub plain: u16,
    /// Serial and device id of each sensor.
    pub devices: Vec<(String, String)>,
    pub maker: Maker,
    pub _tmp: tempfile::TempDir,
}

impl Setup {
    /// Stops the hub (SIGTERM) and starts it again on the same data and ports.
    pub fn restart_hub(&mut self) {
        if let Some(h) = self.hub.take() {
            h.stop();
        }
        self.start_hub();
    }

    /// Starts the hub on the same data and ports.
    pub fn start_hub(&mut self) {
        let config =
            tests::write_config(self.data.parent().expect("parent"), self.coap, &self.config);
        self.hub = Some(Hub::start_configured(&self.data, &config));
    }
}

/// A hub with MQTT, a Home Assistant with the MQTT integration on it, and a paired fleet of
/// `per_model` sensors of each model reporting every `interval_ms`.
pub(crate) fn setup(per_model: usize, interval_ms: u32) -> Setup {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("hub");
    let plain = free_tcp_port();
    let config = format!(
        "[mqtt]\nplain_bind = \"127.0.0.1:{plain}\"\ntls_bind = \"127.0.0.1:{}\"\nbroker_port = {}\n",
        free_tcp_port(),
        free_tcp_port()
    );
    // The maker whose releases the hub trusts (for installing an update from HA).
    let maker = Maker::new(tmp.path());
    let config = format!("{config}{}", maker.trust_toml(&[THERMO]));
    let coap = free_udp_port();
    let hub = Hub::start_with(&data, coap, &config);
    hub.add_mqtt_user("ha", Some(PASSWORD));
    let mut ha = HomeAssistant::start(&tmp.path().join("ha"));
    ha.onboard();
    let entry = ha.add_mqtt(plain, "ha", PASSWORD);
    assert_eq!(entry["state"], "loaded", "{entry}");

    let flash = tmp.path().join("flash.redb");
    let n = (per_model * 4).to_string();
    let interval = interval_ms.to_string();
    let mut sim = Sim::fleet(
        &hub.coap.to_string(),
        &hub,
        &flash,
        &[
            "--sensors",
            &n,
            "--interval-ms",
            &interval,
            "--models",
            "thermostat,climate,door,button",
            "--maker-keys",
            maker.keys.to_str().expect("utf-8"),
        ],
    );
    let mut devices = BTreeMap::new();
    sim.until("the fleet paired", Duration::from_secs(120), |l| {
        if l.starts_with("PAIRED") {
            let index: usize = field(l, "sensor").and_then(|i| i.parse().ok()).expect("index");
            let serial = field(l, "serial").expect("serial").to_owned();
            devices.insert(index, (serial, field(l, "kid").expect("kid").to_owned()));
        }
        (devices.len() == per_model * 4).then_some(())
    });
    Setup {
        hub: Some(hub),
        ha,
        sim,
        config,
        data,
        coap,
        plain,
        devices: devices.into_values().collect(),
        maker,
        _tmp: tmp,
    }
}

#[test]
fn home_assistant_shows_every_entity_of_every_device_after_pairing_and_restarts() {
    let _one_at_a_time = tests::exclusive();
    let mut s = setup(PER_MODEL, 1000);
    let want: BTreeSet<String> =
        s.devices.iter().flat_map(|(serial, id)| expected_entities(serial, id)).collect();
    assert_eq!(want.len(), PER_MODEL * 12);
    all_available(&s.ha, &want, Duration::from_secs(10), "after pairing");
    climate(&mut s);
    // Button presses arrive as events (each one, not a sampled state).
    let (_, button) =
        s.devices.iter().find(|(serial, _)| serial.starts_with("BT")).expect("button");
    let event = format!("event.hearth_{button}_button");
    wait_for("a press event in HA", Duration::from_secs(30), || {
        let e = s.ha.states().remove(&event)?;
        (e["attributes"]["event_type"] == "press").then_some(())
    });
    update(&mut s);

    // A hub restart: HA reconnects (its client retries every 10 s) and sees everything again.
    s.restart_hub();
    all_available(&s.ha, &want, Duration::from_secs(20), "after a hub restart");

    // An HA restart: it learns everything from the retained configs and states.
    s.ha.restart();
    all_available(&s.ha, &want, Duration::from_secs(10), "after an HA restart");

    outage(&mut s, &want);
    let log = s.ha.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("extra keys not allowed") || (l.contains("ERROR") && l.contains("mqtt"))
        })
        .collect();
    assert!(errors.is_empty(), "HA's MQTT integration logged errors: {errors:#?}");
}

/// The thermostat in HA: mode `heat`, current and target temperature from the sensor; a
/// setpoint set in HA reaches the sensor and comes back as the target; a refused one leaves
/// the target where it was and shows why on the device's "Last command" entity.
fn climate(s: &mut Setup) {
    let (index, (_, th)) = s
        .devices
        .iter()
        .enumerate()
        .find(|(_, (serial, _))| serial.starts_with("TH"))
        .expect("thermostat");
    let entity = format!("climate.hearth_{th}_thermostat");
    let state = |ha: &HomeAssistant| ha.states().remove(&entity).expect("climate entity");
    let c = state(&s.ha);
    assert_eq!(c["state"], "heat", "{c}");
    assert_eq!(c["attributes"]["hvac_modes"], serde_json::json!(["heat"]), "{c}");
    assert!(c["attributes"]["current_temperature"].as_f64().is_some(), "{c}");
    assert!(c["attributes"]["temperature"].as_f64().is_some(), "{c}");

    let body = serde_json::json!({"entity_id": entity, "temperature": 23.5});
    s.ha.call("climate", "set_temperature", &body).expect("set_temperature");
    let applied = format!("COMMAND sensor={index} name=setpoint value=23.5 applied=23.5");
    s.sim.until("the thermostat applied HA's setpoint", Duration::from_secs(30), |l| {
        l.starts_with(&applied).then_some(())
    });
    wait_for("HA's target temperature 23.5", Duration::from_secs(30), || {
        (state(&s.ha)["attributes"]["temperature"].as_f64() == Some(23.5)).then_some(())
    });

    // Refused by the hub (out of range): the target stays, the reason is shown.
    let body = serde_json::json!({"topic": format!("hearth/{th}/set"), "payload": "99"});
    s.ha.call("mqtt", "publish", &body).expect("mqtt.publish");
    let command = format!("sensor.hearth_{th}_command");
    let shown = wait_for("the refusal in HA", Duration::from_secs(30), || {
        let c = s.ha.states().remove(&command)?;
        (c["state"] == "refused").then_some(c)
    });
    let reason = shown["attributes"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("5 to 35"), "{shown}");
    assert_eq!(state(&s.ha)["attributes"]["temperature"].as_f64(), Some(23.5));
}

/// A release that needs the owner's approval shows on the thermostats' `update` entities with
/// what it fixes; installing it from HA approves it for that device only, which installs it.
fn update(s: &mut Setup) {
    s.maker.publish(THERMO, 2, 16 * 1024, &["--disruptive", "--risks", "Fixes CVE-2026-0002."]);
    let (m, i) = s.maker.files(THERMO, 2);
    s.hub.as_ref().expect("hub").update_add(&m, &i).expect("the hub takes the release");
    let thermostats: Vec<(usize, &str)> = s
        .devices
        .iter()
        .enumerate()
        .filter(|(_, (serial, _))| serial.starts_with("TH"))
        .map(|(i, (_, id))| (i, id.as_str()))
        .collect();
    let (index, th) = thermostats[0];
    let entity = format!("update.hearth_{th}_firmware");
    let shown = wait_for("HA's update entity offering v2", Duration::from_secs(30), || {
        let u = s.ha.states().remove(&entity)?;
        (u["state"] == "on" && u["attributes"]["latest_version"] == "2").then_some(u)
    });
    let summary = shown["attributes"]["release_summary"].as_str().unwrap_or_default();
    assert!(summary.contains("CVE-2026-0002"), "{shown}");
    assert_eq!(shown["attributes"]["installed_version"], "1", "{shown}");
    s.ha.call("update", "install", &serde_json::json!({"entity_id": entity})).expect("install");
    let updated = format!("UPDATED sensor={index} version=2");
    let line = s.sim.until("the thermostat installed v2", Duration::from_secs(120), |l| {
        l.starts_with(&updated).then(|| l.to_owned())
    });
    assert_eq!(field(&line, "outcome"), Some("Installed"), "{line}");
    let mut last = serde_json::Value::Null;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        last = s.ha.states().remove(&entity).unwrap_or(last);
        if last["attributes"]["installed_version"] == "2" && last["state"] == "off" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "HA does not show v2 installed: {last}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The other thermostats were not approved: they still offer it.
    let other = format!("update.hearth_{}_firmware", thermostats[1].1);
    assert_eq!(s.ha.states()[&other]["state"], "on");
}

/// A hub outage of [`OUTAGE`] (SIGKILL; the sensors buffer what they measure), then the hub
/// again: once HA has reconnected, no entity goes unavailable while the buffers drain, no
/// device is published offline, and every device's `…/state` — what HA's entities read — only
/// moves forward in measurement time although the drain delivers 30 s of older readings.
fn outage(s: &mut Setup, want: &BTreeSet<String>) {
    s.hub.take().expect("hub").kill9();
    // The outage itself is a span of time, not a condition to wait for.
    s.sim.read_for(OUTAGE, |_| {});
    s.start_hub();
    let port = s.plain.to_string();
    let sub = crate::mqtt::Sub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-u",
        "ha",
        "-P",
        PASSWORD,
        "-t",
        "hearth/+/state",
        "-t",
        "hearth/+/availability",
    ]);
    all_available(&s.ha, want, Duration::from_secs(30), "after the outage");
    // The drain: until every sensor has emptied its buffer, HA is looked at twice a second.
    let sensors = s.devices.len();
    let mut drained = BTreeSet::new();
    let mut most = 0;
    let mut looked = Instant::now();
    let mut flaps: BTreeMap<String, String> = BTreeMap::new();
    s.sim.until("the sensors' buffers drained", Duration::from_secs(180), |l| {
        let index = || field(l, "sensor").and_then(|i| i.parse::<usize>().ok()).expect("index");
        if l.starts_with("DRAIN ") {
            most = most.max(field(l, "backlog").and_then(|b| b.parse().ok()).expect("backlog"));
        } else if l.starts_with("DRAINED ") {
            drained.insert(index());
        }
        if looked.elapsed() >= Duration::from_millis(500) {
            looked = Instant::now();
            flaps.extend(missing(&s.ha, want));
        }
        (drained.len() == sensors).then_some(())
    });
    flaps.extend(missing(&s.ha, want));
    assert!(
        flaps.is_empty(),
        "entities unavailable or absent while the buffers drained: {flaps:#?}"
    );
    assert!(most >= 10, "the outage left the sensors nothing to drain (largest backlog {most})");
    let mut newest: BTreeMap<String, i64> = BTreeMap::new();
    let mut states = 0;
    for (topic, payload) in sub.received() {
        if topic.ends_with("/availability") {
            assert_eq!(payload, "online", "{topic} published {payload} after the outage");
            continue;
        }
        let state: serde_json::Value = serde_json::from_str(&payload).expect("state JSON");
        let t = state["time_ms"].as_i64().expect("time_ms");
        let before = newest.insert(topic.clone(), t).unwrap_or(i64::MIN);
        assert!(t >= before, "{topic} went back in time from {before} to {t}: {payload}");
        states += 1;
    }
    assert!(states > sensors, "only {states} state messages seen during the drain");
    eprintln!(
        "home_assistant: outage of {OUTAGE:?}: largest backlog {most}, {states} state messages, \
         no flap, never back in time"
    );
}
