//! Pairing retries (issue 9 item 8, TR 103 621 6.29 ex. 3): a simulated sensor refused because no
//! pairing window is open keeps trying with back-off and a fresh key each time, showing a PIN only
//! once the hub has taken its hello, and pairs once the owner opens a window and types that PIN.

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

    // No window: every attempt is refused (and shows no PIN: the hub never took it), and each
    // sensor tries again after a bounded back-off.
    let mut refused: BTreeMap<usize, usize> = BTreeMap::new();
    let mut retries = Vec::new();
    sim.until("three refused attempts per sensor", Duration::from_secs(30), |l| {
        let sensor = || field(l, "sensor").and_then(|s| s.parse::<usize>().ok());
        assert!(!l.starts_with("PIN "), "a PIN was shown for a refused attempt: {l}");
        if l.starts_with("PAIRING-FAILED") {
            *refused.entry(sensor()?).or_default() += 1;
        }
        if l.starts_with("PAIRING-RETRY") {
            retries.push(field(l, "in_ms")?.parse::<u64>().ok()?);
        }
        (refused.len() == SENSORS && refused.values().all(|&n| n >= 3)).then_some(())
    });
    assert!(retries.iter().all(|ms| (2_000..=2_500).contains(ms)), "bounded back-off: {retries:?}");
    let sec = hub.security();
    assert!(sec["pairing_refused"].as_u64() >= Some(4), "{sec}");
    assert!(!sim.seen.iter().any(|l| l.starts_with("PAIRED")));

    // The owner opens a window and types each PIN the display shows: the hub lists every one
    // (the display waits for the hub's answer), each attempt with a PIN of its own.
    hub.ctl(&["pair", "open", "--seconds", "120"]);
    let mut paired = BTreeSet::new();
    let mut shown = Vec::new();
    while paired.len() < SENSORS {
        let line = sim.until("a PIN or a pairing", Duration::from_secs(30), |l| {
            (l.starts_with("PIN ") || l.starts_with("PAIRED")).then(|| l.to_string())
        });
        let (Some(serial), Some(pin)) = (field(&line, "serial"), field(&line, "pin")) else {
            paired.insert(field(&line, "sensor").expect("sensor").to_string());
            continue;
        };
        assert!(
            listed_within(&hub, serial, Duration::from_secs(3)),
            "{serial} shows {pin} unlisted"
        );
        shown.push(pin.to_owned());
        let _ = hub.try_ctl(&["pair", "pin", pin, "--serial", serial]);
    }
    assert_eq!(paired.len(), SENSORS);
    let distinct: BTreeSet<&String> = shown.iter().collect();
    assert_eq!(distinct.len(), shown.len(), "a PIN was shown twice: {shown:?}");
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
