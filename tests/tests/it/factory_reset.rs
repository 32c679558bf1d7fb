//! Erase is a factory reset (issue 19 item 6, EN 303 645 5.11-1): after "erase everything" the
//! hub restarts in the same process as a new hub — no devices, readings, MQTT users, pinned
//! keys, releases or policy; a new key-encryption key, certificate and setup code — and the old
//! MQTT password and the old web session are refused.

use std::process::Command;
use std::time::Duration;

use tests::{Hub, Maker, Sim, free_tcp_port, free_udp_port, wait_for};

use crate::web::{Client, setup_code};

const THERMO: &str = "hearth-thermo-1";
const CLIMATE: &str = "hearth-climate-1";
const PASSWORD: &str = "quiet harbour 42";
const MQTT_PASSWORD: &str = "correct-horse-battery-staple";

/// `mosquitto_pub` with a login on the plain listener: whether it got through, and stderr.
fn mqtt_login(port: u16, user: &str, password: &str) -> (bool, String) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-u", user, "-P", password])
        .args(["-t", "hearth/check", "-m", "1"])
        .output()
        .expect("mosquitto_pub");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn erase_everything_is_a_factory_reset_and_old_credentials_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let maker = Maker::new(tmp.path());
    let (plain, tls, broker, web) =
        (free_tcp_port(), free_tcp_port(), free_tcp_port(), free_tcp_port());
    let extra = format!(
        "[web]\nbind = \"127.0.0.1:{web}\"\n[mqtt]\nplain_bind = \"127.0.0.1:{plain}\"\n\
         tls_bind = \"127.0.0.1:{tls}\"\nbroker_port = {broker}\n{}",
        maker.trust_toml(&[THERMO])
    );
    let mut hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &extra);

    // Everything an owner sets up: account and session, an MQTT login, a paired sensor with
    // readings, a pinned key, a release, a policy.
    let client = Client::new(&hub);
    let code = setup_code(&hub);
    let made = client.setup(&code, "owner", PASSWORD);
    assert_eq!(made.status, 303, "{}", made.body);
    let session = format!("__Host-hearth={}", made.cookie("__Host-hearth").expect("session"));
    assert_eq!(client.get("/", &session).status, 200);
    hub.add_mqtt_user("homeassistant", Some(MQTT_PASSWORD));
    let (ok, err) = mqtt_login(plain, "homeassistant", MQTT_PASSWORD);
    assert!(ok, "the MQTT login works before the erase: {err}");
    let mut sim = Sim::fleet(
        &hub.coap.to_string(),
        &hub,
        &tmp.path().join("flash.redb"),
        &["--sensors", "1", "--models", "thermostat", "--interval-ms", "200"],
    );
    let kid = sim.paired(1, Duration::from_secs(60)).remove(0);
    wait_for("readings", Duration::from_secs(30), || {
        (hub.ctl(&["device", &kid])["readings"].as_u64() > Some(2)).then_some(())
    });
    hub.ctl(&["trust", "--model", CLIMATE, "--key", &maker.public]);
    maker.publish(THERMO, 2, 4096, &[]);
    let (m, i) = maker.files(THERMO, 2);
    hub.update_add(&m, &i).expect("release taken");
    hub.ctl(&["update", "policy", "notify"]);
    let before = hub.ctl(&["updates"]);
    assert_eq!(before["policy"]["mode"], "notify_only", "{before}");
    let kek = std::fs::read(hub.dir.join("kek")).expect("kek");

    // Erase everything on the privacy page.
    let privacy = client.get("/privacy", &session);
    let erased =
        client.post("/privacy/erase", &session, &format!("csrf={}&confirm=ERASE", privacy.csrf()));
    assert_eq!(erased.status, 200, "{}", erased.body);
    assert!(erased.body.contains("Erase complete."), "{}", erased.body);
    hub.restarted(Duration::from_secs(60));

    // A new hub: new key-encryption key, certificate and setup code.
    assert_ne!(std::fs::read(hub.dir.join("kek")).expect("new kek"), kek);
    let fresh = Client::new(&hub);
    assert_ne!(fresh.fingerprint, client.fingerprint, "the TLS key was replaced");
    let new_code = setup_code(&hub);
    assert_ne!(new_code, code);
    // The old web session and the old MQTT password are refused.
    let old = fresh.get("/", &session);
    assert_eq!((old.status, old.header("location")), (303, Some("/setup")), "{}", old.body);
    let (ok, err) = mqtt_login(plain, "homeassistant", MQTT_PASSWORD);
    assert!(!ok, "the old MQTT password still works after the erase");
    assert!(err.contains("bad user name or password") || err.contains("not authori"), "{err}");
    assert!(hub.ctl(&["mqtt-user", "list"]).as_array().is_none_or(Vec::is_empty));
    // No devices, readings, pinned keys, releases or policy.
    assert!(hub.ctl(&["devices"]).as_array().is_some_and(Vec::is_empty));
    let after = hub.ctl(&["updates"]);
    assert_eq!(after["policy"]["mode"], "auto", "{after}");
    assert!(after["releases"].as_array().is_some_and(Vec::is_empty), "{after}");
    let trusted: Vec<&str> = after["trust"]
        .as_array()
        .map(|t| t.iter().filter_map(|e| e[0].as_str()).collect())
        .unwrap_or_default();
    assert!(!trusted.contains(&CLIMATE), "the owner's pinned key survived: {after}");
    // The old sensor's keys are gone with the rest: its readings are refused.
    let unknown = hub.security()["unknown_kid"].as_u64().unwrap_or(0);
    wait_for("the old sensor refused", Duration::from_secs(30), || {
        (hub.security()["unknown_kid"].as_u64() > Some(unknown)).then_some(())
    });
    drop(sim);
    // The new owner sets up with the new code.
    let again = fresh.setup(&new_code, "owner", PASSWORD);
    assert_eq!(again.status, 303, "{}", again.body);
    let status = hub.terminate_within(Duration::from_secs(15)).expect("SIGTERM ends the hub");
    assert!(status.success(), "{status:?}");
}
