//! A real hub process and a real simulated fleet on loopback: 50 sensors pair through the
//! owner's control socket and report; readings are queryable with `hub ctl readings`; the hub
//! restarts and the sensors carry on without pairing again.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tests::{Hub, Sim, free_udp_port, wait_for};

const SENSORS: usize = 50;

fn device_counts(hub: &Hub) -> HashMap<String, u64> {
    hub.ctl(&["devices"])
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            (d["id"].as_str().expect("id").to_string(), d["readings"].as_u64().expect("count"))
        })
        .collect()
}

#[test]
fn fifty_sensors_pair_report_and_survive_a_hub_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("hub");
    let port = free_udp_port();
    let hub = Hub::start(&data, port);
    let flash = tmp.path().join("flash.redb");
    let sensors = SENSORS.to_string();
    let mut sim = Sim::fleet(
        &hub.coap.to_string(),
        &hub,
        &flash,
        &["--sensors", &sensors, "--interval-ms", "300"],
    );

    // Every sensor pairs (the simulator plays the owner typing each display's PIN).
    let paired: HashSet<String> =
        sim.paired(SENSORS, Duration::from_secs(120)).into_iter().collect();
    let devices = wait_for("hub lists 50 devices with readings", Duration::from_secs(60), || {
        let c = device_counts(&hub);
        (c.len() == SENSORS && c.values().all(|&n| n >= 2)).then_some(c)
    });
    assert_eq!(devices.keys().cloned().collect::<HashSet<_>>(), paired);

    // Readings are queryable, time-ordered, with names from the sensor's serial.
    let some = devices.keys().next().expect("a device").clone();
    let readings = hub.ctl(&["readings", &some, "--limit", "5"]);
    let readings = readings.as_array().expect("readings");
    assert!(!readings.is_empty());
    let times: Vec<i64> = readings.iter().map(|r| r["time_ms"].as_i64().expect("time")).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "not time-ordered: {times:?}");
    assert!(readings.iter().all(|r| r["name"].as_str().is_some_and(|n| n.starts_with("urn:dev:"))));

    // Restart the hub (SIGKILL, same port and data): the sensors carry on, no pairing.
    let before = device_counts(&hub);
    hub.kill9();
    let hub = Hub::start(&data, port);
    let after = wait_for("every device reports after the restart", Duration::from_secs(90), || {
        let c = device_counts(&hub);
        (c.len() == SENSORS && c.iter().all(|(k, n)| *n > before[k] + 1)).then_some(c)
    });
    assert_eq!(after.len(), SENSORS);
    sim.drain();
    let paired_lines = sim.seen.iter().filter(|l| l.starts_with("PAIRED")).count();
    assert_eq!(paired_lines, SENSORS, "no sensor may pair again after the restart");
    let sec = hub.security();
    assert_eq!(sec["pairing_failed"], 0);
    drop(sim);
}
