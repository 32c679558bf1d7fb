//! Upgrades (issue 20 item 3): the current hub starts on a store written by the previous release
//! (`tests/fixtures/store-v2.tar.gz`, see the README there) and finds every device with its name
//! and room, every reading and every secret — the sealed OSCORE contexts (the fleet whose flash
//! came with the store reports again without pairing, no nonce reused) and the MQTT user's
//! password; and a store of a newer hub is refused with a clear message and left unchanged.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tests::{Hub, Sim, bin, field, free_tcp_port, free_udp_port, root};

use crate::mqtt::Sub;

/// Unpacks the fixture into `dir`: `data/`, `flash.redb`, `expected.json`.
fn unpack(dir: &Path) -> Value {
    let fixture = root().join("tests/fixtures/store-v2.tar.gz");
    let ok = Command::new("tar").arg("-C").arg(dir).arg("-xzf").arg(&fixture).status();
    assert!(ok.is_ok_and(|s| s.success()), "unpack {}", fixture.display());
    let expected = std::fs::read(dir.join("expected.json")).expect("expected.json");
    serde_json::from_slice(&expected).expect("expected json")
}

/// Every file under `dir` and its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.display().to_string(), std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

#[test]
fn the_current_hub_finds_every_device_reading_and_secret_of_the_previous_releases_store() {
    let tmp = tempfile::tempdir().expect("tmp");
    let expected = unpack(tmp.path());
    let (plain, tls, broker) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let extra = format!(
        "[mqtt]\nplain_bind = \"127.0.0.1:{plain}\"\ntls_bind = \"127.0.0.1:{tls}\"\n\
         broker_port = {broker}\n"
    );
    let hub = Hub::start_with(&tmp.path().join("data"), free_udp_port(), &extra);

    // Every device, with its model, serial, name and room, and every reading.
    let devices = hub.ctl(&["devices"]);
    let devices = devices.as_array().expect("devices");
    let want = expected["devices"].as_array().expect("expected devices");
    assert_eq!(devices.len(), want.len(), "{devices:?}");
    for w in want {
        let id = w["id"].as_str().expect("id");
        let d = devices.iter().find(|d| d["id"] == id).unwrap_or_else(|| panic!("device {id}"));
        for key in ["model", "serial", "name", "room"] {
            assert_eq!(d[key], w[key], "device {id}: {key}");
        }
        let readings = hub.ctl(&["readings", id, "--limit", "10000"]);
        assert_eq!(readings, w["readings"], "device {id}: readings");
        assert_eq!(d["readings"].as_u64(), w["readings"].as_array().map(|r| r.len() as u64));
    }

    // The MQTT user logs in with its password (its hash is one of the store's secrets).
    let users = hub.ctl(&["mqtt-user", "list"]);
    assert!(users.to_string().contains("\"ha\""), "{users}");
    let port = plain.to_string();
    let password = expected["mqtt_password"].as_str().expect("password");
    let sub = Sub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-u",
        "ha",
        "-P",
        password,
        "-t",
        "hearth/hub/overview",
    ]);
    sub.until("the user's login", Duration::from_secs(30), |t, _| {
        (t == "hearth/hub/overview").then_some(())
    });

    // The sealed contexts open: the fleet that paired with the old hub reports to the new one
    // without pairing again, and no nonce is reused (its sequence numbers go on).
    let flash = tmp.path().join("flash.redb");
    let mut sim = Sim::fleet(
        &hub.coap.to_string(),
        &hub,
        &flash,
        &[
            "--sensors",
            "4",
            "--interval-ms",
            "250",
            "--seed",
            "7",
            "--audit-nonces",
            "--status-ms",
            "500",
        ],
    );
    let mut reported = std::collections::BTreeSet::new();
    let status = sim.until("every sensor reporting", Duration::from_secs(90), |l| {
        assert!(!l.starts_with("PAIRED") && !l.starts_with("PIN"), "a sensor paired again: {l}");
        if l.starts_with("DELIVERED") {
            reported.insert(field(l, "kid").unwrap_or_default().to_string());
        }
        let s: Value = serde_json::from_str(l.strip_prefix("STATUS ")?).ok()?;
        (reported.len() == 4).then_some(s)
    });
    assert_eq!(status["nonce_reuses"], 0, "{status}");
    let ids: std::collections::BTreeSet<String> =
        want.iter().filter_map(|w| w["id"].as_str().map(str::to_owned)).collect();
    assert_eq!(reported, ids);
    drop(sim.terminate());
    let s = hub.ctl(&["status"]);
    assert_eq!(s["storage"]["ok"], true, "{s}");
}

#[test]
fn a_store_of_a_newer_hub_is_refused_with_a_clear_message_and_left_unchanged() {
    let tmp = tempfile::tempdir().expect("tmp");
    unpack(tmp.path());
    let data = tmp.path().join("data");
    // A newer hub's readings log (the format is the last byte of each segment's magic).
    let seg = std::fs::read_dir(data.join("readings"))
        .expect("log")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a segment");
    let f = std::fs::OpenOptions::new().write(true).open(&seg).expect("segment");
    f.write_all_at(b"2", 7).expect("patch");
    let before = files(&data);
    let config = tests::write_config(tmp.path(), free_udp_port(), "");
    let out = Command::new(bin("hub"))
        .args(["run", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run hub");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the hub started on a newer store: {stderr}");
    assert!(
        stderr.contains("written by a newer Hearth (readings log format 2; this hub reads up to readings log format 1). Nothing was changed"),
        "{stderr}"
    );
    assert!(files(&data) == before, "the newer store was changed");
}
