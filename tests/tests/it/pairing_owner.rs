//! Pairing a real household (issue 19 item 3), with the hub's default pairing limits: the
//! README's five sensors, all on one host, wait for their PINs at once without a refusal; a
//! mistyped or wrong PIN says what the owner can do and how many attempts are left; `pair
//! status` tells the truth during the back-off; the fleet prints why an attempt failed; a sensor
//! past its support period or under a known advisory pairs only once the owner accepts the
//! warning (and a replacement of a vulnerable model is told it will be isolated again); a
//! second sensor with a paired serial is refused until the owner names the device it replaces,
//! and `--replaces` works for any device, keeping its name, room and history.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tests::{Hub, Maker, Sim, field, free_udp_port, wait_for};

const THERMO: &str = "hearth-thermo-1";
const BUTTON: &str = "hearth-button-1";
const LONG: Duration = Duration::from_secs(90);

/// The newest PIN the fleet's sensor `serial` showed.
fn latest_pin(sim: &mut Sim, serial: &str) -> Option<String> {
    sim.drain();
    let line =
        sim.seen.iter().rev().find(|l| l.starts_with("PIN ") && field(l, "serial") == Some(serial));
    line.and_then(|l| field(l, "pin")).map(str::to_owned)
}

fn waiting(hub: &Hub) -> Vec<Value> {
    hub.ctl(&["pair", "status"])["waiting"].as_array().cloned().unwrap_or_default()
}

fn waiting_entry(hub: &Hub, serial: &str) -> Option<Value> {
    waiting(hub).into_iter().find(|w| w["serial"] == serial)
}

/// Waits until `serial` waits for its PIN and PINs are taken, then types the newest PIN its
/// display shows with `extra` flags; returns the new device id.
fn pair(hub: &Hub, sim: &mut Sim, serial: &str, extra: &[&str]) -> String {
    let pin = wait_for(&format!("{serial} waiting, PINs taken"), LONG, || {
        let status = hub.ctl(&["pair", "status"]);
        let listed = status["waiting"].as_array()?.iter().any(|w| w["serial"] == serial);
        (listed && status["state"] == "open").then_some(())?;
        latest_pin(sim, serial)
    });
    let mut args = vec!["pair", "pin", &pin, "--serial", serial];
    args.extend(extra);
    let answer = hub.try_ctl(&args).unwrap_or_else(|e| panic!("pairing {serial}: {e}"));
    answer["pairing"].as_str().expect("new device id").to_owned()
}

fn fleet(hub: &Hub, extra: &[&str]) -> Sim {
    let addr = hub.coap.to_string();
    let mut args = vec![
        "fleet",
        "--hub",
        &addr,
        "--pair",
        "--interval-ms",
        "500",
        "--pair-retry-max-ms",
        "2000",
    ];
    args.extend(extra);
    Sim::start(&args)
}

fn advise(hub: &Hub, maker: &Maker, number: u32) {
    let file = maker.feed.join(format!("advisories/{number}.cose"));
    hub.ctl(&["advisory", file.to_str().expect("utf-8")]);
}

fn config(dir: &Path, port: u16, maker: &Maker) -> std::path::PathBuf {
    // The hub's own pairing limits (no fleet allowance); a back-off long enough to look at.
    let text = format!(
        "coap_bind = \"127.0.0.1:{port}\"\n[web]\nbind = \"127.0.0.1:0\"\n[mqtt]\nenabled = \
         false\n[pairing]\nbackoff_base_ms = 8000\n{}",
        maker.trust_toml(&[THERMO, BUTTON])
    );
    let path = dir.join("hub.toml");
    std::fs::write(&path, text).expect("config");
    path
}

#[test]
fn a_household_pairs_with_warnings_clear_pin_errors_and_replacements_of_any_device() {
    let tmp = tempfile::tempdir().expect("tmp");
    let maker = Maker::new(tmp.path());
    let config = config(tmp.path(), free_udp_port(), &maker);
    let hub = Hub::start_configured(&tmp.path().join("hub"), &config);
    hub.ctl(&["pair", "open", "--seconds", "900"]);

    // The README's example: five sensors on one host, all waiting at once, none refused.
    let mut sim = fleet(&hub, &["--sensors", "5"]);
    wait_for("all five sensors waiting for their PIN", LONG, || {
        (waiting(&hub).len() == 5).then_some(())
    });
    sim.drain();
    let refused: Vec<&String> =
        sim.seen.iter().filter(|l| l.starts_with("PAIRING-FAILED")).collect();
    assert!(refused.is_empty(), "a sensor of the README's five was refused: {refused:?}");
    assert_eq!(hub.security()["pairing_refused"], 0);

    // Warned before its PIN: the button is past its support period; the thermostat is not.
    let button = waiting_entry(&hub, "BT-00003").expect("the button waits");
    let warning = button["warning"].as_str().expect("a warning for the button");
    assert!(warning.contains("support period ended"), "{warning}");
    assert!(waiting_entry(&hub, "TH-00000").expect("thermostat")["warning"].is_null());
    let (_, shown, _) = hub.ctl_human(&["pair", "status"]);
    assert!(shown.contains("Warning for BT-00003") && shown.contains("FIRMWARE"), "{shown}");

    // A number no display can show: said so, not counted.
    let (ok, _, err) = hub.ctl_human(&["pair", "pin", "99999", "--serial", "TH-00000"]);
    assert!(!ok && err.contains("5 digits from 00000 to 65535"), "{err}");
    assert!(err.contains("not counted"), "{err}");
    assert_eq!(hub.ctl(&["pair", "status"])["attempts_left"], 3);

    // A wrong PIN: what happened, attempts left, what to do — in the owner's words.
    let pin = latest_pin(&mut sim, "TH-00000").expect("PIN shown");
    let wrong = format!("{:05}", (pin.parse::<u32>().expect("digits") + 1) % 65536);
    let (ok, _, err) = hub.ctl_human(&["pair", "pin", &wrong, "--serial", "TH-00000"]);
    assert!(!ok, "a wrong PIN paired");
    assert!(err.contains("the PIN did not match this sensor's display"), "{err}");
    assert!(err.contains("2 attempts left"), "{err}");
    // During the back-off the window is open and says when PINs are taken again.
    let status = hub.ctl(&["pair", "status"]);
    assert_eq!(status["state"], "backing_off", "{status}");
    assert!((1..=8).contains(&status["backoff_s"].as_u64().unwrap_or(0)), "{status}");
    assert_eq!(status["attempts_left"], 2, "{status}");
    let (_, shown, _) = hub.ctl_human(&["pair", "status"]);
    assert!(shown.contains("PINs are taken again in"), "{shown}");
    assert!(!shown.contains("closed"), "{shown}");
    // The fleet says why its attempt failed.
    let line = sim.until("the failed attempt's line", LONG, |l| {
        (l.starts_with("PAIRING-FAILED") && field(l, "sensor") == Some("0")).then(|| l.to_owned())
    });
    let reason = line.split_once("reason=").map(|(_, r)| r.trim_matches('"')).unwrap_or("");
    assert!(reason.len() > 5, "no reason in {line:?}");

    // The button's PIN is not tried until the owner accepts the warning (not an attempt).
    let pin = latest_pin(&mut sim, "BT-00003").expect("button PIN");
    let refusal = hub.try_ctl(&["pair", "pin", &pin, "--serial", "BT-00003"]).expect_err("warned");
    assert!(
        refusal.contains("support period ended") && refusal.contains("--accept-risk"),
        "{refusal}"
    );
    assert_eq!(hub.security()["pairing_failed"], 1);
    let button = pair(&hub, &mut sim, "BT-00003", &["--accept-risk"]);

    // The others pair; the thermostat whose PIN was wrong with the new PIN its display shows.
    let thermostat = pair(&hub, &mut sim, "TH-00000", &[]);
    for serial in ["CL-00001", "DR-00002", "TH-00004"] {
        pair(&hub, &mut sim, serial, &[]);
    }
    assert_eq!(hub.ctl(&["devices"]).as_array().map(Vec::len), Some(5));
    hub.ctl(&["rename", &thermostat, "Living room thermostat"]);
    hub.ctl(&["room", &thermostat, "Living room"]);
    let before = wait_for("the thermostat's readings", LONG, || {
        let n = hub.ctl(&["device", &thermostat])["readings"].as_u64()?;
        (n >= 3).then_some(n)
    });

    // Known advisories: a fixable one for the thermostat, an unfixable one for the button.
    maker.advisory(THERMO, 1, 1, Some(2), "The CoAP parser overreads long options.");
    maker.advisory(BUTTON, 1, 1, None, "The radio stack accepts unauthenticated frames.");
    advise(&hub, &maker, 1);
    advise(&hub, &maker, 2);

    // The same serial again (the thermostat moved to a new flash, or someone poses as it):
    // refused with the reason and the way out; the warning names the advisory.
    let mut again = fleet(&hub, &["--sensors", "1", "--models", "thermostat", "--seed", "11"]);
    let entry = wait_for("the second TH-00000 waiting", LONG, || {
        let w = waiting_entry(&hub, "TH-00000")?;
        latest_pin(&mut again, "TH-00000").map(|_| w)
    });
    let warning = entry["warning"].as_str().expect("warning");
    assert!(warning.contains("already paired") && warning.contains("install the fix"), "{warning}");
    let pin = latest_pin(&mut again, "TH-00000").expect("pin");
    let refusal = hub.try_ctl(&["pair", "pin", &pin, "--serial", "TH-00000"]).expect_err("dup");
    assert!(
        refusal.contains("already paired") && refusal.contains(&format!("--replaces {thermostat}")),
        "{refusal}"
    );
    assert_eq!(hub.security()["pairing_failed"], 1, "a refusal before the PIN is no attempt");

    // `--replaces` for a device that is not isolated: name, room and history carry over.
    let new = pair(&hub, &mut again, "TH-00000", &["--replaces", &thermostat, "--accept-risk"]);
    assert_ne!(new, thermostat);
    let d = hub.ctl(&["device", &new]);
    assert_eq!(d["name"], "Living room thermostat", "{d}");
    assert_eq!(d["room"], "Living room", "{d}");
    assert_eq!(d["replaces"], serde_json::json!([thermostat]), "{d}");
    assert!(hub.try_ctl(&["device", &thermostat]).is_err_and(|e| e.contains("no device")));
    let history = hub.ctl(&["readings", &new, "--limit", "10000"]);
    assert!(history.as_array().map_or(0, Vec::len) as u64 >= before, "{history}");

    // A replacement of the vulnerable button is told it will be isolated again, and is.
    let mut third = fleet(&hub, &["--sensors", "1", "--models", "button", "--seed", "12"]);
    wait_for("the new button waiting", LONG, || {
        waiting_entry(&hub, "BT-00000").and(latest_pin(&mut third, "BT-00000"))
    });
    let pin = latest_pin(&mut third, "BT-00000").expect("pin");
    let refusal = hub
        .try_ctl(&["pair", "pin", &pin, "--serial", "BT-00000", "--replaces", &button])
        .expect_err("warned");
    assert!(refusal.contains("isolated again"), "{refusal}");
    let replacement = pair(&hub, &mut third, "BT-00000", &["--replaces", &button, "--accept-risk"]);
    wait_for("the replacement button isolated", LONG, || {
        (hub.ctl(&["device", &replacement])["availability"] == "isolated").then_some(())
    });
}
