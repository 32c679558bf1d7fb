//! The bridge API over MQTT with Debian's mosquitto clients against a real hub and sensor: an
//! admin MQTT user opens the pairing window, pairs a sensor with the PIN its display shows,
//! renames it, puts it in a room, lists and removes it, each answered on the response topic
//! with its transaction; refusals and malformed bodies get a reason; a user the owner did not
//! make admin is refused by the topic rules, counted, and answered nothing; requests beyond the
//! budget are refused.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::{Hub, Sim, bin, field, free_tcp_port, free_udp_port, wait_for};

use super::mqtt::{Sub, publish};

const PASSWORD: &str = "correct-horse-battery-staple";
const LONG: Duration = Duration::from_secs(60);

/// An admin's requests and the responses everyone subscribed sees.
struct Bridge {
    port: String,
    responses: Sub,
}

impl Bridge {
    fn base<'a>(&'a self, user: &'a str) -> Vec<&'a str> {
        vec!["-h", "127.0.0.1", "-p", &self.port, "-u", user, "-P", PASSWORD, "-q", "1"]
    }

    /// Publishes `body` (with a transaction) to `hearth/bridge/request/<request>` as `user`.
    fn send(&self, user: &str, request: &str, body: &str) {
        let (ok, err) = self.try_send(user, request, body);
        assert!(ok, "{err}");
    }

    /// Like [`Bridge::send`]: whether the hub took the publication (QoS 1), and stderr.
    fn try_send(&self, user: &str, request: &str, body: &str) -> (bool, String) {
        let topic = format!("hearth/bridge/request/{request}");
        let mut args = self.base(user);
        args.extend(["-t", &topic, "-m", body]);
        publish(&args)
    }

    /// The response to `request` carrying `transaction`.
    fn response(&self, request: &str, transaction: &str) -> Value {
        let topic = format!("hearth/bridge/response/{request}");
        self.responses.until(&format!("response to {request} {transaction}"), LONG, |t, p| {
            let v: Value = serde_json::from_str(p).ok()?;
            (t == topic && v["transaction"] == transaction).then_some(v)
        })
    }

    /// `body` (a JSON object) sent as the admin with a fresh transaction: the response.
    fn ask(&self, request: &str, mut body: Value, transaction: &str) -> Value {
        body["transaction"] = json!(transaction);
        self.send("owner-ha", request, &body.to_string());
        self.response(request, transaction)
    }

    /// Like [`Bridge::ask`], and the request must succeed: its data.
    fn ok(&self, request: &str, body: Value, transaction: &str) -> Value {
        let v = self.ask(request, body, transaction);
        assert_eq!(v["status"], "ok", "{request}: {v}");
        assert!(v.get("error").is_none(), "{v}");
        v["data"].clone()
    }
}

/// `hub ctl mqtt-user add <name> --admin` with the password on standard input.
fn add_admin(hub: &Hub, name: &str) -> Value {
    let mut child = Command::new(bin("hub"))
        .args(["ctl", "--json", "--socket"])
        .arg(&hub.control)
        .args(["mqtt-user", "add", name, "--admin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("hub ctl");
    writeln!(child.stdin.take().expect("stdin"), "{PASSWORD}").expect("password");
    let out = child.wait_with_output().expect("hub ctl");
    assert!(out.status.success(), "mqtt-user add --admin failed");
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn an_admin_pairs_renames_places_lists_and_removes_a_sensor_over_mqtt_and_others_cannot() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (plain, tls, broker) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let config = format!(
        "[mqtt]\nplain_bind = \"127.0.0.1:{plain}\"\ntls_bind = \"127.0.0.1:{tls}\"\n\
         broker_port = {broker}\n"
    );
    let hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &config);
    assert_eq!(add_admin(&hub, "owner-ha"), json!({"added": "owner-ha"}));
    hub.add_mqtt_user("viewer", Some(PASSWORD));
    let users = hub.ctl(&["mqtt-user", "list"]);
    let admin = |name: &str| {
        users.as_array().and_then(|u| u.iter().find(|u| u["name"] == name)).map(|u| &u["admin"])
    };
    assert_eq!((admin("owner-ha"), admin("viewer")), (Some(&json!(true)), Some(&json!(false))));
    let (ok, table, _) = hub.ctl_human(&["mqtt-user", "list"]);
    assert!(
        ok && table.lines().any(|l| l.starts_with("owner-ha") && l.contains("admin")),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("viewer") && !l.contains("admin")), "{table}");

    // Anyone may read the responses; only the admin may ask.
    let port = plain.to_string();
    let sub_args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-u",
        "viewer",
        "-P",
        PASSWORD,
        "-t",
        "hearth/bridge/response/#",
        "-t",
        "hearth/hub/status",
    ];
    let bridge = Bridge { port: port.clone(), responses: Sub::start(&sub_args) };
    // Both filters go in one SUBSCRIBE: once the retained status is in, so is the other.
    bridge
        .responses
        .until("the subscription", LONG, |t, _| (t == "hearth/hub/status").then_some(()));

    // Open the pairing window; a sensor waits with a PIN on its display.
    let status = bridge.ok("pairing/open", json!({"seconds": 300}), "open");
    assert_eq!(status["state"], "open", "{status}");
    let coap = hub.coap.to_string();
    let mut sim = Sim::start(&[
        "fleet",
        "--hub",
        &coap,
        "--sensors",
        "1",
        "--models",
        "thermostat",
        "--pair",
        "--interval-ms",
        "500",
        "--pair-retry-max-ms",
        "2000",
    ]);
    let serial = "TH-00000";
    let pin = wait_for("the sensor waiting with its PIN", LONG, || {
        let status = hub.ctl(&["pair", "status"]);
        let waiting = status["waiting"].as_array()?.iter().any(|w| w["serial"] == serial);
        waiting.then_some(())?;
        sim.drain();
        let line = sim
            .seen
            .iter()
            .rev()
            .find(|l| l.starts_with("PIN ") && field(l, "serial") == Some(serial))?;
        field(line, "pin").map(str::to_owned)
    });
    // A PIN that is not a string is refused without echoing it.
    let refused = bridge.ask("pairing/pin", json!({"pin": 12345, "serial": serial}), "pin-number");
    assert_eq!(refused["status"], "error", "{refused}");
    let reason = refused["error"].as_str().unwrap_or_default();
    assert!(reason.contains("\"pin\" must be") && !reason.contains("12345"), "{refused}");
    let paired = bridge.ok("pairing/pin", json!({"pin": pin, "serial": serial}), "pin");
    let id = paired["pairing"].as_str().expect("device id").to_owned();
    sim.until("the sensor paired", LONG, |l| l.starts_with("PAIRED").then_some(()));

    // Rename, place, list: the same rules as hub ctl.
    bridge.ok("device/rename", json!({"id": id, "name": "Hall thermostat"}), "rename");
    bridge.ok("device/room", json!({"id": id, "room": "Hall"}), "room");
    let listed = bridge.ok("devices", json!({}), "list");
    let device = listed.as_array().and_then(|d| d.iter().find(|d| d["id"] == id.as_str()));
    let device = device.unwrap_or_else(|| panic!("{id} listed: {listed}"));
    assert_eq!(
        (&device["name"], &device["room"]),
        (&json!("Hall thermostat"), &json!("Hall")),
        "{device}"
    );
    let names: Vec<Value> =
        hub.ctl(&["devices"]).as_array().into_iter().flatten().map(|d| d["name"].clone()).collect();
    assert_eq!(names, [json!("Hall thermostat")], "hub ctl sees the same");

    // Refusals and malformed bodies: an error with a reason, and the transaction.
    let unknown =
        bridge.ask("device/rename", json!({"id": "00000000deadbeef", "name": "x"}), "ghost");
    assert_eq!(unknown["status"], "error", "{unknown}");
    assert!(unknown["error"].as_str().is_some_and(|e| !e.is_empty()), "{unknown}");
    let bad = bridge.ask("device/remove", json!({"device": id}), "bad-field");
    assert!(
        bad["error"].as_str().is_some_and(|e| e.contains("bad body") && e.contains("device")),
        "{bad}"
    );
    let odd = bridge.ask("device/fly", json!({}), "odd");
    assert!(odd["error"].as_str().is_some_and(|e| e.contains("unknown request")), "{odd}");
    bridge.send("owner-ha", "devices", "{not json");
    let garbled = bridge.responses.until("the malformed body's response", LONG, |t, p| {
        let v: Value = serde_json::from_str(p).ok()?;
        (t == "hearth/bridge/response/devices" && v["status"] == "error").then_some(v)
    });
    assert!(garbled["error"].as_str().is_some_and(|e| e.contains("not JSON")), "{garbled}");
    assert!(garbled.get("transaction").is_none(), "{garbled}");

    // A user the owner did not make admin: refused by the topic rules and counted; no answer.
    let denied = hub.security()["mqtt_denied_publish"].as_u64().unwrap_or(0);
    let body = json!({"id": id, "transaction": "viewer"}).to_string();
    let (taken, err) = bridge.try_send("viewer", "device/remove", &body);
    assert!(!taken && err.contains("connection was lost"), "closed without a PUBACK: {err}");
    wait_for("the refusal counted", LONG, || {
        (hub.security()["mqtt_denied_publish"].as_u64().unwrap_or(0) > denied).then_some(())
    });
    let after = bridge.ok("devices", json!({}), "after-viewer");
    assert_eq!(after.as_array().map(Vec::len), Some(1), "the device is still there: {after}");
    let seen = bridge.responses.received();
    assert!(!seen.iter().any(|(_, p)| p.contains("\"viewer\"")), "{seen:?}");

    // Remove: gone from the list.
    let removed = bridge.ok("device/remove", json!({"id": id}), "remove");
    assert_eq!(removed["removed"], id.as_str(), "{removed}");
    let empty = bridge.ok("devices", json!({}), "empty");
    assert_eq!(empty, json!([]), "{empty}");
    bridge.ok("pairing/close", json!({}), "close");
    drop(sim);

    // The budget: 40 requests in one burst; some are refused, and no more are taken than the
    // burst plus one per second since.
    let started = Instant::now();
    let mut args = bridge.base("owner-ha");
    args.extend(["-t", "hearth/bridge/request/devices", "-l"]);
    let mut child = Command::new("mosquitto_pub")
        .args(&args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for i in 0..40 {
            writeln!(stdin, "{}", json!({"transaction": format!("burst-{i}")})).expect("line");
        }
    }
    assert!(child.wait().expect("mosquitto_pub").success());
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 40 {
        let (t, v) = bridge.responses.until("the burst's responses", LONG, |topic, p| {
            (topic == "hearth/bridge/response/devices").then_some(())?;
            let v: Value = serde_json::from_str(p).ok()?;
            let t = v["transaction"].as_str()?.strip_prefix("burst-")?.to_owned();
            Some((t, v))
        });
        answers.insert(t, v);
    }
    let elapsed = started.elapsed().as_secs();
    let ok = answers.values().filter(|v| v["status"] == "ok").count();
    let refused: Vec<&Value> = answers.values().filter(|v| v["status"] != "ok").collect();
    assert!(!refused.is_empty(), "some of the burst refused: {ok} taken");
    assert!(
        refused
            .iter()
            .all(|v| v["error"].as_str().is_some_and(|e| e.contains("too many bridge requests"))),
        "{refused:?}"
    );
    assert!(ok >= 1 && ok as u64 <= 20 + elapsed + 1, "{ok} taken in {elapsed} s");
}
