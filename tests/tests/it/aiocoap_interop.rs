//! Interop with aiocoap (a real OSCORE stack), attacked the way the wire allows: a sensor paired
//! by the simulator is exported in aiocoap's context format; aiocoap posts SenML readings and
//! GETs through a recording relay; the genuine requests are answered; the identical datagrams
//! sent again from other source ports — before and after a SIGKILL, and after a graceful
//! restart — get 4.01 "Replay detected" and store nothing; tampered copies are refused; every
//! refusal is counted; and the genuine client keeps receiving its own answers.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tests::{
    Hub, Relay, Sim, bin, field, free_udp_port, python, root, send_from_new_port, wait_for,
};

/// Runs aiocoap with `items` (see tests/interop/aiocoap_requests.py); returns its lines.
fn aiocoap(ctx: &Path, relay: &Relay, items: &[&str]) -> Vec<String> {
    let base = format!("coap://127.0.0.1:{}", relay.addr.port());
    let run = Command::new(python())
        .arg(root().join("tests/interop/aiocoap_requests.py"))
        .arg(ctx)
        .arg(&base)
        .args(items)
        .output()
        .expect("run aiocoap");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(run.status.success(), "aiocoap: {stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    stdout.lines().map(str::to_string).collect()
}

fn names(hub: &Hub, kid: &str) -> Vec<String> {
    hub.ctl(&["readings", kid, "--limit", "100"])
        .as_array()
        .expect("readings")
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Sends every datagram from a fresh source port; each must get an unprotected 4.01
/// "Replay detected".
fn all_refused_as_replays(hub: &Hub, datagrams: &[Vec<u8>], when: &str) {
    for (i, d) in datagrams.iter().enumerate() {
        let answer = send_from_new_port(hub.coap, d);
        let Some((code, payload, protected)) = answer else {
            panic!("{when}: no answer to replayed datagram {i}");
        };
        assert_eq!(code, "Unauthorized", "{when}: datagram {i}");
        assert_eq!(payload, b"Replay detected", "{when}: datagram {i}");
        assert!(!protected, "{when}: a replay must not get a protected answer");
    }
}

#[test]
fn aiocoap_requests_are_answered_once_replays_from_any_port_and_after_restarts_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("hub");
    let port = free_udp_port();
    let mut hub = Hub::start(&dir, port);
    let flash = tmp.path().join("flash.redb");
    let flash_s = flash.to_str().expect("utf-8");
    let ctl = hub.control.to_str().expect("utf-8").to_string();

    // Pair one sensor with the simulator, then stop it: its flash holds the context.
    let mut sim = Sim::start(&[
        "fleet",
        "--hub",
        &hub.coap.to_string(),
        "--sensors",
        "1",
        "--flash",
        flash_s,
        "--ctl",
        &ctl,
        "--interval-ms",
        "0",
    ]);
    let kid = sim.until("pairing", Duration::from_secs(60), |l| {
        l.starts_with("PAIRED").then(|| field(l, "kid").map(str::to_string)).flatten()
    });
    drop(sim);

    let ctx = tmp.path().join("aiocoap-ctx");
    let out = Command::new(bin("sensor-sim"))
        .args(["export-context", "0", "--flash", flash_s, "--aiocoap"])
        .arg(&ctx)
        .output()
        .expect("export");
    assert!(out.status.success(), "export failed: {}", String::from_utf8_lossy(&out.stderr));
    // A second export of the same sensor is refused (one context, one endpoint).
    let again = Command::new(bin("sensor-sim"))
        .args(["export-context", "0", "--flash", flash_s, "--aiocoap"])
        .arg(tmp.path().join("x"))
        .output()
        .expect("export");
    assert!(!again.status.success());

    // aiocoap posts two readings and GETs an unknown resource through a relay that records
    // everything and tampers with the fourth request.
    let relay = Relay::start(hub.coap);
    relay.tamper.lock().expect("lock").push(3);
    let lines = aiocoap(
        &ctx,
        &relay,
        &[
            "urn:dev:aiocoap:temp=21.5",
            "urn:dev:aiocoap:temp2=22.5",
            "get:/nothing",
            "urn:dev:aiocoap:temp3=23.5",
        ],
    );
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[0].starts_with("2.04"), "{lines:?}");
    assert!(lines[1].starts_with("2.04"), "{lines:?}");
    assert!(lines[2].starts_with("4.04"), "an authenticated GET of nothing: {lines:?}");
    assert!(!lines[3].starts_with("2.04"), "the tampered request must not be accepted: {lines:?}");
    let stored = names(&hub, &kid);
    assert!(stored.contains(&"urn:dev:aiocoap:temp".to_string()), "{stored:?}");
    assert!(stored.contains(&"urn:dev:aiocoap:temp2".to_string()), "{stored:?}");
    assert!(!stored.contains(&"urn:dev:aiocoap:temp3".to_string()), "{stored:?}");
    let sec = hub.security();
    assert!(sec["bad_tag"].as_u64() >= Some(1), "tampering must be counted: {sec}");

    // The three genuine requests, the last one included (it is the one a response cache would
    // answer), byte for byte from other source ports: 4.01 Replay detected, nothing stored.
    let captured = relay.captured.lock().expect("lock").clone();
    let genuine: Vec<Vec<u8>> = captured[..3].to_vec();
    all_refused_as_replays(&hub, &genuine, "live");
    // A tampered copy of the last accepted request, and random ciphertext with its tag.
    let mut tampered = genuine[1].clone();
    let mid = tampered.len() - 12;
    tampered[mid] ^= 0x40;
    let mut random_with_tag = genuine[1].clone();
    let len = random_with_tag.len();
    for b in &mut random_with_tag[len - 20..len - 8] {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    for d in [tampered, random_with_tag] {
        let (code, _, protected) = send_from_new_port(hub.coap, &d).expect("an answer");
        assert!(code == "Unauthorized" || code == "BadRequest", "tampered copy got {code}");
        assert!(!protected);
    }
    let sec = wait_for("replays counted", Duration::from_secs(5), || {
        let s = hub.security();
        (s["replays"].as_u64() >= Some(5)).then_some(s)
    });
    assert!(sec["total"].as_u64() >= Some(6), "{sec}");
    let count = |hub: &Hub| names(hub, &kid).len();
    assert_eq!(count(&hub), 2, "replays stored nothing");

    // After a power cut (SIGKILL) the hub restores the windows that accepted those requests:
    // the same datagrams are still replays; the genuine client still gets its own answers.
    hub.kill9();
    hub = Hub::start(&dir, port);
    all_refused_as_replays(&hub, &genuine, "after SIGKILL");
    let lines = aiocoap(&ctx, &relay, &["urn:dev:aiocoap:temp4=24.5", "get:/nothing"]);
    assert!(lines[0].starts_with("2.04") && lines[1].starts_with("4.04"), "{lines:?}");
    assert_eq!(count(&hub), 3);

    // After a graceful restart, likewise — including the requests made since.
    let all: Vec<Vec<u8>> = relay.captured.lock().expect("lock").clone();
    let genuine_since: Vec<Vec<u8>> = all[4..].to_vec();
    hub.stop();
    let hub = Hub::start(&dir, port);
    all_refused_as_replays(&hub, &genuine, "after a graceful restart");
    all_refused_as_replays(&hub, &genuine_since, "after a graceful restart");
    let lines = aiocoap(&ctx, &relay, &["urn:dev:aiocoap:temp5=25.5"]);
    assert!(lines[0].starts_with("2.04"), "{lines:?}");
    assert_eq!(count(&hub), 4);
    let sec = hub.security();
    assert!(sec["replays"].as_u64() >= Some(5), "counted after restart: {sec}");
}
