//! `hub ctl` for people, walked through as an owner would: device tables with units and
//! relative times, names and rooms, availability going offline when a sensor stops and staying
//! so across a hub restart, `--json` for scripts, and errors that say what to do.

use std::time::Duration;

use serde_json::Value;
use tests::{Hub, Sim, free_tcp_port, free_udp_port, wait_for};

const AVAILABILITY: &str = "[availability]\ndefault_period_s = 1\nmissed_periods = 3\n";

fn availability(hub: &Hub, id: &str) -> String {
    hub.ctl(&["device", id])["availability"].as_str().unwrap_or("").to_owned()
}

#[test]
fn the_owner_names_rooms_and_watches_availability_through_hub_ctl() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, port) = (tmp.path().join("hub"), free_udp_port());
    let mut hub = Hub::start_with(&dir, port, AVAILABILITY);
    let flash = tmp.path().join("flash.redb");
    let fleet_args = ["--sensors", "2", "--models", "thermostat,door", "--interval-ms", "200"];
    let mut sim = Sim::fleet(&hub.coap.to_string(), &hub, &flash, &fleet_args);
    let ids = sim.paired(2, Duration::from_secs(60));
    let (thermo, door) = (ids[0].as_str(), ids[1].as_str());
    wait_for("a current state for both", Duration::from_secs(30), || {
        let list = hub.ctl(&["devices"]);
        let all =
            list.as_array()?.iter().all(|d| d["state"].as_object().is_some_and(|s| !s.is_empty()));
        all.then_some(())
    });

    // The table: a header, one row per device, units and relative times.
    let (ok, table, _) = hub.ctl_human(&["devices"]);
    assert!(ok);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("AVAILABILITY"), "{table}");
    assert_eq!(lines.len(), 3, "{table}");
    let row = lines.iter().find(|l| l.contains(thermo)).expect("thermostat row");
    assert!(row.contains("online") && row.contains("°C") && row.contains(" s ago"), "{table}");

    // Rename and room, shown in the detail view and in --json.
    let (ok, _, err) = hub.ctl_human(&["rename", thermo, "Living room thermostat"]);
    assert!(ok, "{err}");
    assert!(hub.ctl_human(&["room", thermo, "Living room"]).0);
    assert!(hub.ctl_human(&["room", door, "Hall"]).0);
    let (_, detail, _) = hub.ctl_human(&["device", thermo]);
    assert!(detail.contains("Name:") && detail.contains("Living room thermostat"), "{detail}");
    assert!(detail.contains("Room:") && detail.contains("Living room"), "{detail}");
    assert!(detail.contains("Support period:") && detail.contains("Senses:"), "{detail}");
    assert!(detail.contains("Current state:") && detail.contains("°C"), "{detail}");
    let json: Value = hub.ctl(&["devices"]);
    let t = json.as_array().expect("list").iter().find(|d| d["id"] == thermo).expect("thermo");
    assert_eq!(
        (t["name"].as_str(), t["room"].as_str()),
        (Some("Living room thermostat"), Some("Living room"))
    );
    assert!(hub.ctl_human(&["room", door, "--clear"]).0);
    assert_eq!(hub.ctl(&["device", door])["room"], Value::Null);
    wait_for("four readings", Duration::from_secs(30), || {
        (hub.ctl(&["device", thermo])["readings"].as_u64() >= Some(4)).then_some(())
    });
    let (_, readings, _) = hub.ctl_human(&["readings", thermo, "--limit", "4"]);
    assert!(readings.starts_with("MEASURED") && readings.contains("°C"), "{readings}");
    assert_eq!(readings.lines().count(), 5, "{readings}");

    // Bad input and unknown devices: non-zero exit, the reason, and what to do.
    let (ok, _, err) = hub.ctl_human(&["rename", thermo, "   "]);
    assert!(!ok && err.contains("a name must be 1 to 64 printable characters"), "{err}");
    let (ok, _, err) = hub.ctl_human(&["device", "0badc0de"]);
    assert!(!ok && err.contains("no device 0badc0de") && err.contains("hub ctl devices"), "{err}");
    let (ok, _, err) = hub.ctl_human(&["pair", "pin", "123456"]);
    assert!(!ok && err.contains("hub ctl pair status"), "{err}");
    assert!(hub.ctl_human(&["pair", "close"]).1.contains("closed"));
    let (ok, _, err) = hub.ctl_human(&["pair", "pin", "123456"]);
    assert!(!ok && err.contains("hub ctl pair open"), "{err}");
    let (ok, _, err) = hub.ctl_human(&["unisolate", door]);
    assert!(!ok && err.contains("not isolated"), "{err}");

    // The sensors stop: after three reporting periods both are offline, and stay offline
    // across a hub restart, with the transition recorded.
    sim.stop();
    wait_for("both offline", Duration::from_secs(30), || {
        (availability(&hub, thermo) == "offline" && availability(&hub, door) == "offline")
            .then_some(())
    });
    hub.stop();
    hub = Hub::start_with(&dir, port, AVAILABILITY);
    let d = hub.ctl(&["device", thermo]);
    assert_eq!(d["availability"], "offline", "{d}");
    assert_eq!(d["name"], "Living room thermostat", "names survive restarts");
    let (_, detail, _) = hub.ctl_human(&["device", thermo]);
    assert!(detail.contains("Availability history:") && detail.contains("offline"), "{detail}");

    // They come back: online again, recorded as a transition.
    let _sim = Sim::fleet(&hub.coap.to_string(), &hub, &flash, &fleet_args);
    wait_for("both online again", Duration::from_secs(30), || {
        (availability(&hub, thermo) == "online" && availability(&hub, door) == "online")
            .then_some(())
    });
    let d = hub.ctl(&["device", thermo]);
    let to: Vec<&str> =
        d["transitions"].as_array().expect("t").iter().filter_map(|t| t["to"].as_str()).collect();
    assert_eq!(to.last(), Some(&"online"), "{d}");
    assert!(to.contains(&"offline"), "{d}");

    // A stopped hub: ctl says how to start it.
    hub.stop();
    let control = dir.join("control.sock");
    let out = std::process::Command::new(tests::bin("hub"))
        .args(["ctl", "--socket"])
        .arg(&control)
        .arg("devices")
        .output()
        .expect("ctl");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Start it with `hub run --data-dir"));
}

/// `hub ctl` reads every answer back into its type before it renders it: for each command, the
/// table for people succeeds and shows what the JSON for scripts says (a field renamed on one
/// side fails here, or `hub ctl` says the answer is not what it expects).
#[test]
fn hub_ctl_renders_what_the_control_socket_answers() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (plain, tls, broker) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let mqtt = format!(
        "[mqtt]\nplain_bind = \"127.0.0.1:{plain}\"\ntls_bind = \"127.0.0.1:{tls}\"\n\
         broker_port = {broker}\n"
    );
    let hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &mqtt);
    let human = |args: &[&str]| {
        let (ok, out, err) = hub.ctl_human(args);
        assert!(ok && err.is_empty() && !out.is_empty(), "hub ctl {args:?}: {out}{err}");
        out
    };
    let json = |args: &[&str]| hub.ctl(args);

    let report = json(&["security"]);
    let out = human(&["security"]);
    let total = report["total"].as_u64().expect("a total");
    assert!(
        out.contains(&format!("Security events in total: {total}\nNo anomaly now.\n")),
        "{out}"
    );
    // One row per counter (everything but the total and the window's view of them).
    let counters = report.as_object().map_or(0, |m| m.values().filter(|v| v.is_u64()).count() - 1);
    let rows = out.lines().skip(1).take_while(|l| !l.is_empty()).count();
    assert_eq!(rows, counters, "{out}");
    let check = human(&["security", "--check"]);
    assert!(check.starts_with("PROVISION") && check.contains(" met now"), "{check}");

    let status = json(&["pair", "open", "--seconds", "600"]);
    assert_eq!((status["open"].as_bool(), status["state"].as_str()), (Some(true), Some("open")));
    let out = human(&["pair", "status"]);
    assert!(out.starts_with("Pairing window open: closes in "), "{out}");
    let left = status["attempts_left"].as_u64().expect("attempts left");
    assert!(out.contains(&format!("{left} failed attempt(s) left")), "{out}");
    assert!(human(&["pair", "close"]).starts_with("Pairing window closed."));

    assert!(json(&["advisories"]).as_array().is_some_and(Vec::is_empty));
    assert_eq!(human(&["advisories"]), "No security advisories received.\n");
    assert_eq!(json(&["upstream"])["configured"], false);
    assert!(human(&["upstream"]).starts_with("No upstream broker configured"));
    let updates = json(&["updates"]);
    assert_eq!(updates["policy"]["mode"], "auto", "{updates}");
    let out = human(&["updates"]);
    assert!(
        out.starts_with("Update feed: none configured") && out.contains("Policy: auto"),
        "{out}"
    );
    assert_eq!(json(&["update", "policy", "notify"]), serde_json::json!({"ok": true}));
    assert!(human(&["updates"]).contains("Policy: notify only"));
    assert_eq!(human(&["update", "policy", "auto"]), "ok: true\n");

    // MQTT users: the generated password is shown once, in both forms.
    let added = json(&["mqtt-user", "add", "scripts"]);
    assert_eq!(added["added"], "scripts");
    assert!(added["password"].as_str().is_some_and(|p| p.len() >= 16), "{added}");
    let out = human(&["mqtt-user", "add", "people"]);
    assert!(out.starts_with("added: people\npassword: "), "{out}");
    let users = json(&["mqtt-user", "list"]);
    assert_eq!(users.as_array().map(Vec::len), Some(2), "{users}");
    let out = human(&["mqtt-user", "list"]);
    assert!(
        out.starts_with("USER") && out.contains("scripts ") && out.contains("people "),
        "{out}"
    );
    assert!(out.contains(" s ago)") && !out.contains("created"), "{out}");
    assert_eq!(human(&["mqtt-user", "remove", "people"]), "removed: people\n");
    assert!(human(&["devices"]).starts_with("No devices paired."));
}
