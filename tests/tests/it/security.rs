//! The security monitor at the process level (EN 303 645 5.10-1): events of the link, MQTT and
//! the web UI counted once, flagged the same by `hub ctl`, MQTT and the web UI whether anyone
//! looks or not, saved by one path across restarts, and the self-check printed by `hub ctl`.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tests::{Hub, free_tcp_port, free_udp_port, wait_for};

use crate::mqtt::Sub;
use crate::web::{Client, setup_code};

const OWNER_PASSWORD: &str = "quiet harbour 42";
const HA_PASSWORD: &str = "home assistant password 7";

fn config(plain: u16, tls: u16, broker: u16) -> String {
    // Every failure is checked (no back-off within this test's few attempts).
    format!(
        "[mqtt]\nplain_bind = \"127.0.0.1:{plain}\"\ntls_bind = \"127.0.0.1:{tls}\"\n\
         broker_port = {broker}\n[login]\nfree_failures = 50\n"
    )
}

/// A counter of `hub ctl --json security`.
fn count(report: &Value, name: &str) -> u64 {
    report[name].as_u64().unwrap_or_else(|| panic!("no counter {name}: {report}"))
}

fn flagged(report: &Value) -> Vec<String> {
    report["anomalies"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// A wrong MQTT password through the plain front (CONNACK refused).
fn wrong_mqtt_login(port: u16) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-u", "ha", "-P", "not it"])
        .args(["-t", "x/y", "-m", "1"])
        .output()
        .expect("mosquitto_pub");
    assert!(!out.status.success(), "a wrong password was accepted");
}

#[test]
fn events_of_every_source_are_flagged_alike_everywhere_and_survive_restarts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (plain, tls, broker) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let extra = config(plain, tls, broker);
    let dir = tmp.path().join("hub");
    let udp = free_udp_port();
    let hub = Hub::start_with(&dir, udp, &extra);
    hub.add_mqtt_user("ha", Some(HA_PASSWORD));
    let web = Client::new(&hub);
    let made = web.setup(&setup_code(&hub), "owner", OWNER_PASSWORD);
    assert_eq!(made.status, 303, "{}", made.body);
    let session = format!("__Host-hearth={}", made.cookie("__Host-hearth").expect("cookie"));
    let overview = Sub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &plain.to_string(),
        "-u",
        "ha",
        "-P",
        HA_PASSWORD,
        "-t",
        "hearth/hub/overview",
        "-q",
        "1",
    ]);
    let quiet = hub.security();
    assert_eq!(flagged(&quiet), Vec::<String>::new(), "{quiet}");

    // Six wrong web passwords (the catalogue flags five within 5 minutes) and three wrong MQTT
    // ones (it flags twenty): one anomaly, the web UI's, and every count in one report.
    for _ in 0..6 {
        assert_eq!(web.login("owner", "not the password").status, 401);
    }
    for _ in 0..3 {
        wrong_mqtt_login(plain);
    }
    let report =
        wait_for("the hub to count and flag the web logins", Duration::from_secs(30), || {
            let r = hub.security();
            (count(&r, "web_login_failed") == 6 && count(&r, "mqtt_login_failed") == 3).then_some(r)
        });
    assert_eq!(flagged(&report), vec!["web_login_failed"], "{report}");
    assert_eq!(report["recent"]["web_login_failed"], 6, "{report}");
    assert_eq!(report["recent"]["mqtt_login_failed"], 3, "{report}");
    assert!(count(&report, "total") >= 9, "{report}");

    // hub ctl, its self-check, MQTT and the web UI say the same.
    let (ok, text, _) = hub.ctl_human(&["security"]);
    assert!(ok, "{text}");
    let row = text.lines().find(|l| l.starts_with("Failed web logins")).unwrap_or_default();
    assert_eq!(row.split_whitespace().rev().take(3).collect::<Vec<_>>(), ["ANOMALY", "6", "6"]);
    assert!(text.contains("1 anomaly flag(s)"), "{text}");
    let (ok, check, _) = hub.ctl_human(&["security", "--check"]);
    assert!(ok, "{check}");
    assert!(
        check.contains("5.10-1 Security events are monitored is not met.")
            && check.contains(": Failed web logins.")
            && check.contains("What to do: See which events are flagged"),
        "{check}"
    );
    assert!(check.lines().any(|l| l.starts_with("5.4-1") && l.contains(" yes ")), "{check}");
    overview.until("the overview to flag it", Duration::from_secs(30), |_, payload| {
        let v: Value = serde_json::from_str(payload).ok()?;
        (v["anomalies"] == serde_json::json!(["Failed web logins"])).then_some(())
    });
    let events = web.get("/events", &session);
    assert!(
        events.body.contains("class=\"anomaly\" data-event=\"web_login_failed\""),
        "{}",
        events.body
    );
    assert!(events.body.contains("1 anomaly flag(s)."), "{}", events.body);
    let status = web.get("/security", &session);
    let row = status.body.split("data-check=\"5.10-1\"").nth(1).expect("5.10-1 row");
    assert!(row.split("</tr>").next().is_some_and(|r| r.contains("✗ no")), "{row}");

    // A graceful restart keeps every count (the web UI's and MQTT's with the link's, in one
    // document); old totals are not recent after it, so nothing is flagged.
    let before = hub.security();
    hub.stop();
    let hub = Hub::start_with(&dir, udp, &extra);
    let after = hub.security();
    for (name, v) in before.as_object().into_iter().flatten().filter(|(_, v)| v.is_u64()) {
        assert_eq!(after[name], *v, "{name}: {after}");
    }
    assert_eq!(flagged(&after), Vec::<String>::new(), "{after}");

    // SIGKILL: what was saved before stays (at most the last second's events may be lost).
    let web = Client::new(&hub);
    assert_eq!(web.login("owner", "still not it").status, 401);
    hub.kill9();
    let hub = Hub::start_with(&dir, udp, &extra);
    let killed = hub.security();
    assert!(count(&killed, "web_login_failed") >= 6, "{killed}");
    assert_eq!(count(&killed, "mqtt_login_failed"), 3, "{killed}");
    hub.stop();
}
