//! An outside adversary against a running hub, at the process level (EN 303 645 5.5, 5.6,
//! 5.13; RFC 8613 §7.4, B.1.2): a forgery flood on one sensor's kid, pairing sessions from one
//! host on many ports, log flooding, captured firmware GETs replayed after restarts, and the
//! update loop after a sensor refuses an offer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand_core::{Rng, SeedableRng};
use serde_json::Value;
use tests::{
    Hub, Maker, Relay, Sim, field, forged_oscore, free_udp_port, hello_from_new_port,
    open_to_others, send_from_new_port, wait_for,
};

/// Waits for `n` more DELIVERED lines.
fn deliveries(sim: &mut Sim, n: usize, what: &str) {
    let mut seen = 0;
    sim.until(what, Duration::from_secs(60), |l| {
        seen += usize::from(l.starts_with("DELIVERED"));
        (seen >= n).then_some(())
    });
}

/// Floods `kid` with forged requests (fresh Partial IVs, random ciphertext) from 8 source
/// ports until `stop`, at least `min` datagrams; returns how many were sent.
fn flood(
    to: std::net::SocketAddr,
    kid: Vec<u8>,
    min: u64,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let sockets: Vec<std::net::UdpSocket> =
            (0..8).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")).collect();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let mut n = 0u64;
        while n < min || !stop.load(Ordering::Relaxed) {
            let mut ct = [0u8; 24];
            rng.fill_bytes(&mut ct);
            let d = forged_oscore(&kid, 1_000_000 + n, n as u16, &ct);
            let _ = sockets[(n % 8) as usize].send_to(&d, to);
            n += 1;
            sent.store(n, Ordering::Relaxed);
            if n.is_multiple_of(100) {
                // Paced (~2,500/s, 8 s for 20,000) so that the flood spans many of the sensor's
                // reports even when a debug build of the hub shares the machine with other tests.
                std::thread::sleep(Duration::from_millis(40));
            }
        }
    })
}

#[test]
fn a_forgery_flood_on_one_kid_does_not_stop_its_sensor_and_the_data_dir_is_private() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("hub");
    let port = free_udp_port();
    let mut hub = Hub::start(&dir, port);
    let flash = tmp.path().join("flash.redb");
    let addr = hub.coap.to_string();
    let mut sim = Sim::fleet(&addr, &hub, &flash, &["--sensors", "1", "--interval-ms", "100"]);
    let kid = sim.paired(1, Duration::from_secs(60)).remove(0);
    let kid_bytes = protocol::hex::decode(&kid).expect("hex kid");
    deliveries(&mut sim, 3, "first readings");

    for round in ["before restart", "after SIGKILL"] {
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let t = flood(hub.coap, kid_bytes.clone(), 20_000, sent.clone(), stop.clone());
        // The sensor keeps reporting while the flood runs.
        wait_for("flood under way", Duration::from_secs(10), || {
            (sent.load(Ordering::Relaxed) > 1_000).then_some(())
        });
        deliveries(&mut sim, 5, &format!("readings during the flood ({round})"));
        let during = sent.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        t.join().expect("flood thread");
        assert!(during < 20_000, "{round}: 5 readings took the whole flood ({during} sent)");
        deliveries(&mut sim, 5, &format!("readings after the flood ({round})"));
        let sec = hub.security();
        assert_eq!(sec["key_limit"], 0, "{round}: {sec}");
        let throttled = sec["throttled"].as_u64().unwrap_or(0);
        let bad_tag = sec["bad_tag"].as_u64().unwrap_or(0);
        assert!(throttled >= 15_000, "{round}: most forgeries dropped unverified: {sec}");
        assert!(bad_tag < 200, "{round}: failed verifications stay within the budget: {sec}");
        if round == "before restart" {
            hub.kill9();
            hub = Hub::start(&dir, port);
            deliveries(&mut sim, 3, "readings after the restart");
        }
    }

    // Every file in the data directory is private, and a loosened one is tightened at start.
    assert_eq!(open_to_others(&dir), vec![], "data dir entries open to others");
    let db = dir.join("hearth.redb");
    use std::os::unix::fs::PermissionsExt;
    hub.stop();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let hub = Hub::start(&dir, port);
    assert_eq!(open_to_others(&dir), vec![], "tightened at start");
    let log = std::fs::read_to_string(&hub.log).unwrap_or_default();
    assert!(log.contains("made private"), "the start-up check reports what it fixed: {log}");
}

/// A pairing hello as a sensor would send it, from a fresh state.
fn hello(serial: &str, rng: &mut rand_chacha::ChaCha20Rng) -> (Vec<u8>, protocol::pairing::Pin) {
    use protocol::pairing::{Descriptor, MaskWidth, SensorPairing};
    let d = Descriptor {
        model: "hearth-temp-1".into(),
        serial: serial.into(),
        firmware_version: 1,
        updatable: true,
        verifies_signatures: false,
        capabilities: vec!["temperature".into()],
        support_end: protocol::time::UnixTime(2_000_000_000),
    };
    let (_state, hello, pin) = SensorPairing::start(rng, d, MaskWidth::TWO);
    let mut p = coap_lite::Packet::new();
    p.header.set_type(coap_lite::MessageType::Confirmable);
    p.header.code = coap_lite::MessageClass::Request(coap_lite::RequestType::Post);
    p.header.message_id = rng.next_u32() as u16;
    p.set_token(vec![1, 2]);
    p.add_option(coap_lite::CoapOption::UriPath, b"p".to_vec());
    p.add_option(coap_lite::CoapOption::UriPath, b"hello".to_vec());
    p.payload = hello.encode();
    (p.to_bytes().expect("encode"), pin)
}

#[test]
fn pairing_limits_hold_against_one_host_with_many_ports() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("hub");
    let port = free_udp_port();
    std::fs::create_dir_all(&dir).expect("dir");
    let config = tmp.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "coap_bind = \"127.0.0.1:{port}\"\n[web]\nbind = \"127.0.0.1:0\"\n[pairing]\nmax_sessions = 32\nsessions_per_source = 3\nsession_idle_s = 2\nbackoff_base_ms = 100\nhost_request_burst = 200\n[mqtt]\nenabled = false\n"
        ),
    )
    .expect("config");
    let hub = Hub::start_configured(&dir, &config);
    hub.ctl(&["pair", "open", "--seconds", "600"]);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);

    // 40 hellos from 40 source ports of one host: at most 3 sessions.
    let mut created = Vec::new();
    for i in 0..40 {
        let (d, pin) = hello(&format!("MP-{i:03}"), &mut rng);
        let (code, _) = hello_from_new_port(hub.coap, &d).expect("an answer");
        if code == "Created" {
            created.push((format!("MP-{i:03}"), pin));
        } else {
            assert_eq!(code, "ServiceUnavailable", "hello {i}");
        }
    }
    assert_eq!(created.len(), 3, "sessions per host");
    let status = hub.ctl(&["pair", "status"]);
    assert_eq!(status["waiting"].as_array().map(Vec::len), Some(3), "{status}");
    assert!(hub.security()["pairing_refused"].as_u64() >= Some(37));

    // Idle sessions (nobody asks for the proof) end; the host may try again.
    wait_for("idle sessions expire", Duration::from_secs(20), || {
        let s = hub.ctl(&["pair", "status"]);
        s["waiting"].as_array().is_some_and(Vec::is_empty).then_some(())
    });
    let (d, pin) = hello("MP-A", &mut rng);
    let (d2, _) = hello("MP-B", &mut rng);
    assert_eq!(hello_from_new_port(hub.coap, &d).expect("answer").0, "Created");
    assert_eq!(hello_from_new_port(hub.coap, &d2).expect("answer").0, "Created");

    // The owner types MP-A's correct PIN, but that "sensor" never finishes: the attempt stays
    // unresolved (a second PIN waits behind it), then counts as a failed attempt.
    let socket = hub.control.clone();
    let typed = |serial: &'static str, pin: String, tx: std::sync::mpsc::Sender<_>| {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let out = std::process::Command::new(tests::bin("hub"))
                .args(["ctl", "--socket"])
                .arg(&socket)
                .args(["pair", "pin", &pin, "--serial", serial])
                .output()
                .expect("ctl");
            let _ = tx.send((
                serial,
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        })
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let first = typed("MP-A", pin.to_string(), tx.clone());
    wait_for("first attempt taken", Duration::from_secs(10), || {
        let s = hub.ctl(&["pair", "status"]);
        (s["waiting"].as_array().map(Vec::len) == Some(1)).then_some(())
    });
    let second = typed("MP-B", "00000".into(), tx);
    // The second PIN is not tried while the first attempt is unresolved: it waits in a queue.
    let status = wait_for("the second PIN queued", Duration::from_secs(10), || {
        let s = hub.ctl(&["pair", "status"]);
        (s["pins_queued"] == 1).then_some(s)
    });
    assert!(status["confirming"].is_string(), "{status}");
    let mut ended = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let (who, ok, err) = rx.recv_timeout(Duration::from_secs(30)).expect("an attempt ends");
        ended.insert(who, (ok, err));
    }
    let (ok, err) = &ended["MP-A"];
    assert!(!ok, "an abandoned attempt is a failure");
    assert!(err.contains("did not finish"), "{err}");
    assert!(!ended["MP-B"].0, "{ended:?}");
    first.join().expect("thread");
    second.join().expect("thread");
    let sec = hub.security();
    assert!(sec["pairing_failed"].as_u64() >= Some(1), "{sec}");
    let status = hub.ctl(&["pair", "status"]);
    assert!(status["attempts_left"].as_u64() < Some(3), "{status}");
}

#[test]
fn security_logging_stays_bounded_under_a_flood_from_many_ports() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hub = Hub::start(&tmp.path().join("hub"), free_udp_port());
    let mut sent = 0u64;
    for p in 0..200 {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        for i in 0..10u16 {
            let d = forged_oscore(&[0xde, 0xad, p as u8], u64::from(i), i, &[0u8; 16]);
            s.send_to(&d, hub.coap).expect("send");
            sent += 1;
        }
    }
    let sec = wait_for("all counted", Duration::from_secs(20), || {
        let s = hub.security();
        (s["unknown_kid"].as_u64() >= Some(sent)).then_some(s)
    });
    assert_eq!(sec["unknown_kid"].as_u64(), Some(sent));
    let log = std::fs::read_to_string(&hub.log).unwrap_or_default();
    let lines = log.lines().filter(|l| l.contains("unknown device")).count();
    assert!(lines <= 2 * hearth_per_interval(), "{lines} log lines for {sent} datagrams");
    assert!(lines >= 1, "the first events are logged");
}

/// Events of one kind logged one by one per interval (hub::seclog::PER_INTERVAL).
fn hearth_per_interval() -> usize {
    5
}

const THERMO: &str = "hearth-thermo-1";

fn device_update(hub: &Hub, kid: &str) -> (Value, Value) {
    let d = hub.ctl(&["device", kid]);
    (d["update"]["progress"].clone(), d["update"]["blocks_served"].clone())
}

#[test]
fn replayed_firmware_gets_after_restarts_are_refused_and_progress_does_not_move() {
    let tmp = tempfile::tempdir().expect("tmp");
    let maker = Maker::new(tmp.path());
    maker.publish(THERMO, 2, 512 * 1024, &[]);
    let dir = tmp.path().join("hub");
    let port = free_udp_port();
    let extra = maker.trust_toml(&[THERMO]);
    let mut hub = Hub::start_with(&dir, port, &format!("[updates]\n{extra}"));
    let relay = Relay::start(hub.coap);
    let flash = tmp.path().join("flash.redb");
    let via = relay.addr.to_string();
    // A thermostat verifies signatures itself: it GETs the manifest, then the blocks.
    let keys = maker.keys.to_str().expect("utf-8").to_string();
    let mut sim = Sim::fleet(
        &via,
        &hub,
        &flash,
        &[
            "--sensors",
            "1",
            "--interval-ms",
            "1000",
            "--models",
            "thermostat",
            "--maker-keys",
            &keys,
        ],
    );
    let kid = sim.paired(1, Duration::from_secs(60)).remove(0);
    let (m, i) = maker.files(THERMO, 2);
    hub.update_add(&m, &i).expect("update add");
    sim.until("a few blocks", Duration::from_secs(60), |l| {
        let done = field(l, "blocks")?.split('/').next()?.parse::<u32>().ok()?;
        (l.starts_with("UPDATE-PROGRESS") && done >= 20).then_some(())
    });
    drop(sim); // the sensor goes away mid-download; its captured requests stay with the attacker
    // The protected requests the hub answered (one still in flight when the sensor went away
    // was never answered, so the hub may still answer it once).
    let answered = relay.answered.lock().expect("lock").clone();
    let captured: Vec<Vec<u8>> = relay
        .captured
        .lock()
        .expect("lock")
        .iter()
        .filter(|d| {
            coap_lite::Packet::from_bytes(d).is_ok_and(|p| {
                p.get_option(coap_lite::CoapOption::Oscore).is_some()
                    && answered.contains(p.get_token())
            })
        })
        .cloned()
        .collect();
    assert!(captured.len() > 20, "captured {} datagrams", captured.len());

    for restart in ["SIGKILL", "graceful"] {
        match restart {
            "SIGKILL" => hub.kill9(),
            _ => hub.stop(),
        }
        hub = Hub::start_with(&dir, port, &format!("[updates]\n{extra}"));
        let before = device_update(&hub, &kid);
        let replays = hub.security()["replays"].as_u64().unwrap_or(0);
        for (n, d) in captured.iter().enumerate() {
            let (code, payload, protected) = send_from_new_port(hub.coap, d)
                .unwrap_or_else(|| panic!("{restart}: no answer to {n}"));
            assert_eq!(
                (code.as_str(), payload.as_slice(), protected),
                ("Unauthorized", &b"Replay detected"[..], false),
                "{restart}: datagram {n}"
            );
        }
        assert_eq!(
            device_update(&hub, &kid),
            before,
            "{restart}: replays moved the update's progress"
        );
        let after = hub.security()["replays"].as_u64().unwrap_or(0);
        assert_eq!(after - replays, captured.len() as u64, "{restart}: every replay counted");
    }
}

#[test]
fn a_refused_update_is_not_offered_again_before_its_back_off() {
    let tmp = tempfile::tempdir().expect("tmp");
    let maker = Maker::new(tmp.path());
    maker.publish(THERMO, 2, 4096, &[]);
    let dir = tmp.path().join("hub");
    let hub = Hub::start_with(
        &dir,
        free_udp_port(),
        &format!("[updates]\n{}", maker.trust_toml(&[THERMO])),
    );
    // The README's fleet command, thermostats only, no maker keys: they cannot verify the
    // manifest and refuse the update.
    let flash = tmp.path().join("flash.redb");
    let addr = hub.coap.to_string();
    let mut sim = Sim::fleet(
        &addr,
        &hub,
        &flash,
        &["--sensors", "2", "--interval-ms", "200", "--models", "thermostat"],
    );
    let kids = sim.paired(2, Duration::from_secs(60));
    let (m, i) = maker.files(THERMO, 2);
    hub.update_add(&m, &i).expect("update add");
    let mut refused = std::collections::BTreeMap::new();
    sim.until("both refuse", Duration::from_secs(60), |l| {
        if l.starts_with("UPDATED") && field(l, "outcome") == Some("Failed") {
            *refused.entry(field(l, "sensor").unwrap_or("").to_string()).or_insert(0) += 1;
        }
        (refused.len() == 2).then_some(())
    });
    // 40 more readings (several seconds, well inside the 30 s back-off): no new offer, so no
    // new refusal.
    let mut seen = 0;
    sim.until("40 readings", Duration::from_secs(60), |l| {
        if l.starts_with("UPDATED") {
            *refused.entry(field(l, "sensor").unwrap_or("").to_string()).or_insert(0) += 1;
        }
        seen += usize::from(l.starts_with("DELIVERED"));
        (seen >= 40).then_some(())
    });
    assert!(refused.values().all(|n| *n == 1), "refusals per sensor: {refused:?}");
    for kid in &kids {
        let d = hub.ctl(&["device", kid]);
        let failed = d["update"]["history"]
            .as_array()
            .map_or(0, |h| h.iter().filter(|e| e["event"] == "failed").count());
        assert_eq!(failed, 1, "{d}");
        assert!(d["update"]["retry_at"].as_u64() > Some(0), "a back-off is set: {d}");
    }
}

#[test]
fn security_counters_survive_a_restart_and_ctl_says_how_to_start_a_stopped_hub() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("hub");
    let port = free_udp_port();
    let hub = Hub::start(&dir, port);
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    for i in 0..25u16 {
        s.send_to(&forged_oscore(&[0xde, 0xad], u64::from(i), i, &[0u8; 16]), hub.coap)
            .expect("send");
    }
    let before = wait_for("counted", Duration::from_secs(20), || {
        let s = hub.security();
        (s["unknown_kid"].as_u64() >= Some(25)).then_some(s)
    });
    let control = hub.control.clone();
    hub.stop();
    // With the hub stopped, ctl fails and says how to start it.
    let out = std::process::Command::new(tests::bin("hub"))
        .args(["ctl", "--socket"])
        .arg(&control)
        .arg("security")
        .output()
        .expect("ctl");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hub run --data-dir"), "{out:?}");
    let hub = Hub::start(&dir, port);
    let after = hub.security();
    assert_eq!(after["unknown_kid"], before["unknown_kid"], "{after}");
    assert!(after["total"].as_u64() >= before["total"].as_u64(), "{after}");
}
