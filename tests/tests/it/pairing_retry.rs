//! Pairing retries (issue 9 item 8, TR 103 621 6.29 ex. 3): a simulated sensor refused because no
//! pairing window is open keeps trying with back-off, a fresh key and a new PIN each time, and
//! pairs once the owner opens a window and types the PIN its display shows.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tests::{Hub, Sim, field, free_udp_port};

#[test]
fn a_refused_sensor_retries_with_fresh_pins_and_pairs_when_the_owner_opens_a_window() {
    const SENSORS: usize = 2;
    let tmp = tempfile::tempdir().expect("tmp");
    let hub = Hub::start(&tmp.path().join("hub"), free_udp_port());
    let mut sim = Sim::start(&[
        "fleet",
        "--hub",
        &hub.coap.to_string(),
        "--sensors",
        &SENSORS.to_string(),
        "--pair",
        "--pair-retry-max-ms",
        "2000",
        "--interval-ms",
        "500",
    ]);

    // No window: every attempt is refused, and each sensor tries again with a new PIN.
    let mut pins: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut retries = Vec::new();
    sim.until("two refused attempts per sensor", Duration::from_secs(30), |l| {
        let sensor = || field(l, "sensor").and_then(|s| s.parse::<usize>().ok());
        if l.starts_with("PIN ") {
            pins.entry(sensor()?).or_default().push(field(l, "pin")?.to_string());
        }
        if l.starts_with("PAIRING-RETRY") {
            retries.push(field(l, "in_ms")?.parse::<u64>().ok()?);
        }
        (pins.len() == SENSORS && pins.values().all(|p| p.len() >= 3)).then_some(())
    });
    assert!(retries.iter().all(|ms| (2_000..=2_500).contains(ms)), "bounded back-off: {retries:?}");
    for (sensor, p) in &pins {
        let distinct: BTreeSet<&String> = p.iter().collect();
        assert!(distinct.len() >= 2, "sensor {sensor} showed the same PIN every time: {p:?}");
    }
    let sec = hub.security();
    assert!(sec["pairing_refused"].as_u64() >= Some(4), "{sec}");
    assert!(!sim.seen.iter().any(|l| l.starts_with("PAIRED")));

    // The owner opens a window and types each PIN the display shows once the hub lists it (an
    // attempt refused just before the window opened never is; the next one shows a new PIN).
    hub.ctl(&["pair", "open", "--seconds", "120"]);
    let mut paired = BTreeSet::new();
    while paired.len() < SENSORS {
        let line = sim.until("a PIN or a pairing", Duration::from_secs(30), |l| {
            (l.starts_with("PIN ") || l.starts_with("PAIRED")).then(|| l.to_string())
        });
        let (Some(serial), Some(pin)) = (field(&line, "serial"), field(&line, "pin")) else {
            paired.insert(field(&line, "sensor").expect("sensor").to_string());
            continue;
        };
        if listed_within(&hub, serial, Duration::from_secs(3)) {
            let _ = hub.try_ctl(&["pair", "pin", pin, "--serial", serial]);
        }
    }
    assert_eq!(paired.len(), SENSORS);
    let devices = hub.ctl(&["devices"]);
    assert_eq!(devices.as_array().map(Vec::len), Some(SENSORS), "{devices}");
}

/// Whether the hub lists `serial` as waiting for its PIN within `timeout`.
fn listed_within(hub: &Hub, serial: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let s = hub.ctl(&["pair", "status"]);
        if s["waiting"].as_array().is_some_and(|w| w.iter().any(|x| x["serial"] == serial)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
