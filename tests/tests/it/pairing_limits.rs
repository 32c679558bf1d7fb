//! Pairing limits at the process level: refused outside a window; a window closes after its
//! time; wrong PINs are counted, back off, and after 3 failures the window closes.

use std::time::Duration;

use tests::{Hub, Sim, field, free_udp_port, wait_for};

fn attempt(hub: &Hub) -> (Sim, Option<String>) {
    let mut sim = Sim::start(&[
        "fleet",
        "--hub",
        &hub.coap.to_string(),
        "--sensors",
        "1",
        "--pair",
        "--interval-ms",
        "0",
    ]);
    // The display shows a PIN only once the hub has taken the hello; a refused one shows none.
    let pin = sim.until("a PIN on the display or a refusal", Duration::from_secs(30), |l| {
        if l.starts_with("PAIRING-FAILED") {
            return Some(None);
        }
        l.starts_with("PIN").then(|| field(l, "pin").map(str::to_string))
    });
    (sim, pin)
}

fn wrong(pin: &str) -> String {
    let v: u32 = pin.parse().expect("digits");
    format!("{:05}", (v + 1) % 65536)
}

#[test]
fn pairing_is_refused_outside_a_window_and_the_window_closes_on_time_and_after_three_failures() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hub = Hub::start(&tmp.path().join("hub"), free_udp_port());

    // No window: refused, and no PIN was shown for it.
    let (sim, pin) = attempt(&hub);
    assert_eq!(pin, None, "a PIN was shown for a refused hello");
    drop(sim);
    assert!(hub.security()["pairing_refused"].as_u64() >= Some(1));

    // A one-second window closes by itself.
    hub.ctl(&["pair", "open", "--seconds", "1"]);
    wait_for("the window to close", Duration::from_secs(10), || {
        (hub.ctl(&["pair", "status"])["open"] == false).then_some(())
    });
    let (sim, pin) = attempt(&hub);
    assert_eq!(pin, None, "a PIN was shown after the window closed");
    drop(sim);

    // Wrong PINs: each counted, back-off in between, closed after the third.
    hub.ctl(&["pair", "open", "--seconds", "120"]);
    for failure in 1..=3u64 {
        // A hello during the back-off after a failure is refused: wait for it to end.
        wait_for("the back-off to end", Duration::from_secs(30), || {
            (hub.ctl(&["pair", "status"])["open"] == true).then_some(())
        });
        let (sim, pin) = attempt(&hub);
        let pin = pin.expect("pin");
        let serial = wait_for("the sensor to wait for its PIN", Duration::from_secs(30), || {
            hub.ctl(&["pair", "status"])["waiting"].as_array()?.first()?["serial"]
                .as_str()
                .map(str::to_string)
        });
        // Typed while backing off from the previous failure: refused without a guess.
        let typed = wait_for("the back-off to end", Duration::from_secs(30), || {
            match hub.try_ctl(&["pair", "pin", &wrong(&pin), "--serial", &serial]) {
                Err(e) if e.contains("backing off") => None,
                other => Some(other),
            }
        });
        let _ = typed; // off-curve PINs fail here, the others at the sensor's check
        wait_for("the failure to be counted", Duration::from_secs(30), || {
            (hub.security()["pairing_failed"].as_u64() == Some(failure)).then_some(())
        });
        if failure < 3 {
            let right = hub.try_ctl(&["pair", "pin", &pin, "--serial", &serial]);
            assert!(right.is_err(), "a PIN typed during the back-off must be refused: {right:?}");
        }
        drop(sim);
    }
    let status = hub.ctl(&["pair", "status"]);
    assert_eq!(status["open"], false, "{status}");
    assert_eq!(status["attempts_left"], 0, "{status}");
    let (_sim, pin) = attempt(&hub);
    assert_eq!(pin, None, "a PIN was shown after three failures closed the window");
    assert!(hub.ctl(&["devices"]).as_array().is_some_and(Vec::is_empty));
}
