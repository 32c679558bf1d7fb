//! Interop with aiocoap (a real OSCORE stack): a sensor paired by the simulator is exported in
//! aiocoap's context format; aiocoap posts SenML readings that the hub stores; the identical
//! datagram replayed is rejected; a tampered one is rejected; both show in `hub ctl security`.

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use tests::{Hub, Relay, Sim, bin, field, free_udp_port, python, root, wait_for};

#[test]
fn aiocoap_client_posts_readings_replays_and_tampering_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hub = Hub::start(&tmp.path().join("hub"), free_udp_port());
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

    // aiocoap posts three readings through a relay that tampers with the third.
    let relay = Relay::start(hub.coap);
    relay.tamper.lock().expect("lock").push(2);
    let uri = format!("coap://127.0.0.1:{}/r", relay.addr.port());
    let run = Command::new(python())
        .arg(root().join("tests/interop/aiocoap_post.py"))
        .arg(&ctx)
        .arg(&uri)
        .args([
            "urn:dev:aiocoap:temp=21.5",
            "urn:dev:aiocoap:temp2=22.5",
            "urn:dev:aiocoap:temp3=23.5",
        ])
        .output()
        .expect("run aiocoap");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        run.status.success(),
        "aiocoap failed: {stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with("2.04"), "{stdout}");
    assert!(lines[1].starts_with("2.04"), "{stdout}");
    assert!(!lines[2].starts_with("2.04"), "the tampered request must not be accepted: {stdout}");

    // The hub stored the two authentic readings, not the tampered one.
    let names = || -> Vec<String> {
        hub.ctl(&["readings", &kid, "--limit", "100"])
            .as_array()
            .expect("readings")
            .iter()
            .map(|r| r["name"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let stored = names();
    assert!(stored.contains(&"urn:dev:aiocoap:temp".to_string()), "{stored:?}");
    assert!(stored.contains(&"urn:dev:aiocoap:temp2".to_string()), "{stored:?}");
    assert!(!stored.contains(&"urn:dev:aiocoap:temp3".to_string()), "{stored:?}");
    let sec = hub.security();
    assert!(sec["bad_tag"].as_u64() >= Some(1), "tampering must be counted: {sec}");

    // Replay the first request, byte for byte, from another socket: refused and counted.
    let first = relay.captured.lock().expect("lock")[0].clone();
    let attacker = UdpSocket::bind("127.0.0.1:0").expect("socket");
    attacker.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let replays_before = sec["replays"].as_u64().unwrap_or(0);
    attacker.send_to(&first, hub.coap).expect("send");
    let mut buf = [0u8; 1500];
    let (n, _) = attacker.recv_from(&mut buf).expect("an answer to the replay");
    let answer = coap_lite::Packet::from_bytes(&buf[..n]).expect("coap");
    assert_eq!(
        answer.header.code,
        coap_lite::MessageClass::Response(coap_lite::ResponseType::Unauthorized)
    );
    let sec = wait_for("replay counted", Duration::from_secs(5), || {
        let s = hub.security();
        (s["replays"].as_u64() > Some(replays_before)).then_some(s)
    });
    assert!(sec["total"].as_u64() >= Some(2));
    assert_eq!(
        names().iter().filter(|n| *n == "urn:dev:aiocoap:temp").count(),
        1,
        "the replay stored nothing new"
    );
}
