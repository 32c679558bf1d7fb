//! The device vocabulary end to end: the example CO₂ model (`protocol::vocabulary`'s table, no
//! other edit) run by the simulator against a real hub is paired with its declared
//! capabilities, shown by `hub ctl` in ppm, and published over MQTT — Home Assistant
//! discovery configs that fit HA's schema and a retained state — read by a real client
//! (mosquitto_sub), and shown by the web UI (dashboard and device page, with its chart).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tests::{Hub, Sim, free_tcp_port, free_udp_port, wait_for};

const PASSWORD: &str = "correct-horse-battery-staple";

#[test]
fn a_co2_sensor_from_the_vocabulary_alone_reaches_hub_ctl_home_assistant_and_the_web_ui() {
    let tmp = tempfile::tempdir().expect("tmp");
    let plain = free_tcp_port();
    let mqtt = format!(
        "[mqtt]\nplain_bind = \"127.0.0.1:{plain}\"\ntls_bind = \"127.0.0.1:{}\"\n\
         broker_port = {}\n",
        free_tcp_port(),
        free_tcp_port()
    );
    let hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &mqtt);
    hub.add_mqtt_user("ha", Some(PASSWORD));
    let flash = tmp.path().join("flash.redb");
    let args = ["--sensors", "1", "--models", "co2", "--interval-ms", "200"];
    let mut sim = Sim::fleet(&hub.coap.to_string(), &hub, &flash, &args);
    let id = sim.paired(1, Duration::from_secs(60)).remove(0);

    // Paired with what the model declares; its readings are stored under their short names.
    let device = wait_for("a CO₂ reading", Duration::from_secs(30), || {
        let d = hub.ctl(&["device", &id]);
        d["state"].get("co2").is_some().then_some(d)
    });
    assert_eq!(device["model"], "hearth-co2-1", "{device}");
    assert!(device["serial"].as_str().is_some_and(|s| s.starts_with("CO-")), "{device}");
    assert_eq!(device["capabilities"], serde_json::json!(["co2", "battery"]), "{device}");
    assert_eq!(device["state"]["co2"]["unit"], "ppm", "{device}");
    let (ok, detail, err) = hub.ctl_human(&["device", &id]);
    assert!(ok, "{err}");
    assert!(detail.contains("co2") && detail.contains(" ppm"), "{detail}");

    // Over MQTT: its retained discovery configs and state, as a client subscribing now sees them.
    let (cfg, state) =
        (format!("homeassistant/+/hearth_{id}/+/config"), format!("hearth/{id}/state"));
    let port = plain.to_string();
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-u", "ha", "-P", PASSWORD])
        .args(["-t", &cfg, "-t", &state, "-F", "%t|%p", "-W", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub (Debian mosquitto-clients; bash scripts/test installs it)");
    let out = sub.stdout.take().expect("stdout");
    let mut configs: BTreeMap<String, Value> = BTreeMap::new();
    let mut values = None;
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        let (topic, payload) = line.split_once('|').unwrap_or((&line, ""));
        let Ok(v) = serde_json::from_str::<Value>(payload) else { continue };
        if topic == state {
            values = Some(v);
        } else {
            configs.insert(topic.to_owned(), v);
        }
        if configs.len() >= 3 && values.is_some() {
            break;
        }
    }
    let _ = sub.kill();
    let _ = sub.wait();
    let values = values.expect("a retained state within 60 s");
    let co2 = values["values"]["co2"].as_f64().expect("a CO₂ value");
    assert!((400.0..=2000.0).contains(&co2), "{values}");
    assert!(values["battery"].as_f64().is_some(), "{values}");

    // One config per declared capability plus the firmware, each fitting HA's schema.
    let topics: Vec<&str> = configs.keys().map(String::as_str).collect();
    assert_eq!(
        topics,
        [
            format!("homeassistant/sensor/hearth_{id}/battery/config"),
            format!("homeassistant/sensor/hearth_{id}/co2/config"),
            format!("homeassistant/update/hearth_{id}/firmware/config"),
        ],
        "{configs:?}"
    );
    for (topic, payload) in &configs {
        let problems = hub::schema_problems(topic, payload);
        assert!(problems.is_empty(), "{topic}: {problems:?}");
        assert_eq!(payload["availability_topic"], format!("hearth/{id}/availability"));
        assert_eq!(payload["device"]["model"], "hearth-co2-1");
    }
    let sensor = &configs[&format!("homeassistant/sensor/hearth_{id}/co2/config")];
    assert_eq!(sensor["device_class"], "carbon_dioxide");
    assert_eq!(sensor["unit_of_measurement"], "ppm");
    assert_eq!(sensor["state_topic"], state);
    assert_eq!(sensor["value_template"], "{{ value_json['values'].get('co2') }}");

    // The web UI: the dashboard and the device page name the quantity and its unit, and the
    // device page charts it (its main quantity) with the battery as a capability.
    let web = crate::web::Client::new(&hub);
    let made = web.setup(&crate::web::setup_code(&hub), "owner", "quiet harbour 42");
    assert_eq!(made.status, 303, "{}", made.body);
    let session = format!("__Host-hearth={}", made.cookie("__Host-hearth").expect("cookie"));
    let dash = web.get("/", &session);
    assert!(dash.body.contains("CO₂ ") && dash.body.contains(" ppm"), "{}", dash.body);
    // A chart needs two readings: the page is read again until it has one.
    let page = wait_for("a CO₂ chart on the device page", Duration::from_secs(30), || {
        let page = web.get(&format!("/devices/{id}"), &session);
        (page.status == 200 && page.body.contains("<svg")).then_some(page)
    });
    for want in ["hearth-co2-1", "CO₂", " ppm", "<svg", "battery"] {
        assert!(page.body.contains(want), "the device page lacks {want}: {}", page.body);
    }
    sim.stop();
}
