//! Isolating vulnerable sensors (TR 103 621 6.22, 6.23): the maker publishes signed advisories;
//! within one feed check the hub isolates every affected button (not updatable) and schedules
//! the fix for affected climate sensors (updatable) instead. Isolated buttons' readings no
//! longer leave them for the hub, while their physical interface shows they kept recording; a
//! replacement takes over name, room and history and the old keys stop working.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tests::{Hub, Maker, Sim, bin, field, free_udp_port, wait_for};

const BUTTON: &str = "hearth-button-1";
const CLIMATE: &str = "hearth-climate-1";

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn device(hub: &Hub, id: &str) -> Value {
    hub.ctl(&["device", id])
}

#[test]
fn advisories_isolate_buttons_schedule_fixes_and_a_replacement_inherits_the_button() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut maker = Maker::new(tmp.path());
    let (url, cert) = maker.serve(tmp.path());
    let extra = format!(
        "[updates]\nfeed_url = \"{url}\"\nfeed_cert = \"{}\"\ncheck_interval_s = 2\n{}",
        cert.display(),
        maker.trust_toml(&[BUTTON, CLIMATE])
    );
    let hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &extra);
    // Updates wait for the owner: only the advisory's decision can schedule the fix.
    hub.ctl(&["update", "policy", "notify"]);
    let flash = tmp.path().join("flash.redb");
    let mut sim = Sim::fleet(
        &hub.coap.to_string(),
        &hub,
        &flash,
        &["--sensors", "4", "--models", "button,climate", "--interval-ms", "200"],
    );
    let kids = sim.paired(4, Duration::from_secs(60));
    let (buttons, climates) = (vec![&kids[0], &kids[2]], vec![&kids[1], &kids[3]]);
    for b in &buttons {
        assert_eq!(device(&hub, b)["model"], BUTTON);
    }
    hub.ctl(&["rename", buttons[0], "Doorbell button"]);
    hub.ctl(&["room", buttons[0], "Hall"]);
    // Readings flow from everyone.
    wait_for("readings from every sensor", Duration::from_secs(30), || {
        kids.iter().all(|k| device(&hub, k)["readings"].as_u64() > Some(3)).then_some(())
    });

    maker.publish(CLIMATE, 2, 16 * 1024, &[]);
    maker.advisory(BUTTON, 1, 1, None, "The radio stack accepts unauthenticated frames.");
    maker.advisory(CLIMATE, 1, 1, Some(2), "Buffer overflow in the SenML encoder.");

    // One feed check (about every 2 s) later, both buttons are isolated with the reason, the
    // support period and the replacement path; the climate sensors are not.
    let advisories = wait_for("both advisories acted on", Duration::from_secs(30), || {
        let a = hub.ctl(&["advisories"]);
        let acted = a.as_array().is_some_and(|l| {
            l.len() == 2 && l.iter().all(|r| r["actions"].as_object().is_some_and(|m| m.len() == 2))
        });
        acted.then_some(a)
    });
    for b in &buttons {
        let d = device(&hub, b);
        assert_eq!(d["availability"], "isolated", "{d}");
        let reason = d["isolation"]["reason"].as_str().expect("reason");
        assert!(reason.contains("cannot be updated"), "{d}");
        assert!(d["isolation"]["replacement"].as_str().expect("path").contains("--replaces"));
        assert!(d["support_end"].as_u64().is_some(), "{d}");
    }
    for c in &climates {
        let d = device(&hub, c);
        assert_ne!(d["availability"], "isolated", "{d}");
    }
    let actions = |model: &str| -> Vec<Value> {
        let list = advisories.as_array().expect("list");
        let a = list.iter().find(|a| a["model"] == model).expect("advisory");
        a["actions"].as_object().expect("actions").values().cloned().collect()
    };
    assert!(actions(BUTTON).iter().all(|a| a["action"] == "isolated"), "{advisories}");
    assert!(
        actions(CLIMATE).iter().all(|a| a["action"] == "fix_scheduled" && a["version"] == 2),
        "{advisories}"
    );
    // The scheduled fix is installed although the policy is notify-only.
    sim.until("both climate sensors on v2", Duration::from_secs(120), {
        let mut done = std::collections::HashSet::new();
        move |l| {
            if l.starts_with("UPDATED") && field(l, "outcome") == Some("Installed") {
                done.insert(field(l, "sensor").map(str::to_owned));
            }
            (done.len() == 2).then_some(())
        }
    });

    // The buttons keep measuring; the hub accepts none of it any more.
    let stored: Vec<u64> =
        buttons.iter().map(|b| device(&hub, b)["readings"].as_u64().expect("n")).collect();
    sim.until("an isolated button's reading refused", Duration::from_secs(30), |l| {
        (l.starts_with("REFUSED") && matches!(field(l, "sensor"), Some("0" | "2"))).then_some(())
    });
    // Isolation is in force from here on: what the buttons measure later never reached the hub.
    let isolated_at = now_ms();
    let later = wait_for("more refusals", Duration::from_secs(30), || {
        let n = sim_refusals(&mut sim);
        (n >= 4).then_some(n)
    });
    assert!(later >= 4);
    for (b, before) in buttons.iter().zip(&stored) {
        let now = device(&hub, b)["readings"].as_u64().expect("n");
        assert!(now <= before + 1, "isolated {b} still stored readings: {before} → {now}");
    }

    // Replacement: a new sensor (a door contact) paired as the doorbell button's replacement.
    hub.ctl(&["pair", "open", "--seconds", "120"]);
    let mut new = Sim::start(&[
        "fleet",
        "--hub",
        &hub.coap.to_string(),
        "--sensors",
        "1",
        "--models",
        "door",
        "--pair",
        "--interval-ms",
        "200",
        "--flash",
        tmp.path().join("flash-new.redb").to_str().expect("utf-8"),
    ]);
    let (serial, pin) = new.until("the new sensor's PIN", Duration::from_secs(30), |l| {
        l.starts_with("PIN").then(|| {
            (
                field(l, "serial").expect("serial").to_owned(),
                field(l, "pin").expect("pin").to_owned(),
            )
        })
    });
    // Only a paired device can be replaced (any one: isolated, moved, broken).
    let refused =
        hub.try_ctl(&["pair", "pin", &pin, "--serial", &serial, "--replaces", "0badc0de"]);
    assert!(refused.is_err_and(|e| e.contains("no device")));
    let paired = hub.ctl(&["pair", "pin", &pin, "--serial", &serial, "--replaces", buttons[0]]);
    let new_id = paired["pairing"].as_str().expect("new id").to_owned();
    let d = device(&hub, &new_id);
    assert_eq!((d["name"].as_str(), d["room"].as_str()), (Some("Doorbell button"), Some("Hall")));
    assert_eq!(d["replaces"], serde_json::json!([buttons[0]]));
    assert!(hub.try_ctl(&["device", buttons[0]]).is_err_and(|e| e.contains("no device")));
    // History: the button's readings come with the new sensor's.
    wait_for("the new sensor's readings", Duration::from_secs(30), || {
        let r = hub.ctl(&["readings", &new_id, "--limit", "10000"]);
        let names: Vec<&str> =
            r.as_array().expect("list").iter().filter_map(|r| r["name"].as_str()).collect();
        let old = names.iter().any(|n| n.contains(":press"));
        let new = names.iter().any(|n| n.contains(":open"));
        (old && new).then_some(())
    });
    // The old button's keys are gone: its datagrams are now from an unknown key id.
    let unknown = hub.security()["unknown_kid"].as_u64().unwrap_or(0);
    wait_for("the replaced button's requests refused as unknown", Duration::from_secs(30), || {
        (hub.security()["unknown_kid"].as_u64().unwrap_or(0) > unknown).then_some(())
    });
    new.stop();

    // The owner's explicit override: the other button's readings are accepted again, and the
    // override is on record.
    let before = device(&hub, buttons[1])["readings"].as_u64().expect("n");
    hub.ctl(&["unisolate", buttons[1]]);
    let d = wait_for("readings from the unisolated button", Duration::from_secs(30), || {
        let d = device(&hub, buttons[1]);
        (d["readings"].as_u64() > Some(before + 2)).then_some(d)
    });
    assert_ne!(d["availability"], "isolated", "{d}");
    assert!(d["isolation"]["overridden_at"].as_u64().is_some(), "{d}");
    let why: Vec<&str> =
        d["transitions"].as_array().expect("t").iter().filter_map(|t| t["why"].as_str()).collect();
    assert!(why.iter().any(|w| w.contains("overridden by the owner")), "{d}");

    // The buttons kept recording: their physical interface shows measurements taken after the
    // isolation (read with the fleet stopped, as from the device itself). Both buttons measure
    // on the same 200 ms schedule in one fleet, so once button 2 has delivered a measurement
    // taken 1 s after the isolation, each has taken about 5 since.
    sim.until("a measurement 1 s after the isolation", Duration::from_secs(30), |l| {
        let late =
            field(l, "time_ms").and_then(|t| t.parse::<i64>().ok()) > Some(isolated_at + 1_000);
        (l.starts_with("DELIVERED") && field(l, "sensor") == Some("2") && late).then_some(())
    });
    sim.terminate();
    for index in ["0", "2"] {
        let out = std::process::Command::new(bin("sensor-sim"))
            .args(["physical", index, "dump", "--json", "--flash"])
            .arg(&flash)
            .output()
            .expect("dump");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let after = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["time_ms"].as_i64() > Some(isolated_at))
            .count();
        assert!(after >= 3, "button {index} recorded {after} after isolation:\n{text}");
    }
}

/// Refusals seen so far for the button sensors (indexes 0 and 2).
fn sim_refusals(sim: &mut Sim) -> usize {
    sim.drain();
    sim.seen_lines()
        .iter()
        .filter(|l| l.starts_with("REFUSED") && matches!(field(l, "sensor"), Some("0" | "2")))
        .count()
}
