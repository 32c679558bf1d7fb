//! Crash test: 200 simulated sensors report while the hub is killed with SIGKILL at random
//! moments (20 cycles; set HEARTH_CRASH_CYCLES for more). After every restart: requests the hub
//! had answered before the crash, replayed byte for byte, are refused; at the end every reading
//! that was acknowledged is in the store, and no nonce was reused (the simulator audits every
//! key/nonce pair on the wire).

use std::collections::{HashMap, HashSet};
use std::net::UdpSocket;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde_json::Value;
use tests::{Hub, Relay, Sim, field, free_udp_port, wait_for};

const SENSORS: usize = 200;

#[test]
fn acknowledged_readings_survive_sigkill_and_no_replay_or_nonce_reuse_follows() {
    let cycles: usize =
        std::env::var("HEARTH_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed: u64 =
        std::env::var("HEARTH_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("hub");
    let port = free_udp_port();
    let mut hub = Hub::start(&data, port);
    let relay = Relay::start(hub.coap);
    let flash = tmp.path().join("flash.redb");
    let sensors = SENSORS.to_string();
    let mut sim = Sim::fleet(
        &relay.addr.to_string(),
        &hub,
        &flash,
        &[
            "--sensors",
            &sensors,
            "--interval-ms",
            "200",
            "--audit-nonces",
            "--status-ms",
            "250",
            "--sockets",
            "1",
        ],
    );
    sim.paired(SENSORS, Duration::from_secs(180));

    let mut acked: HashMap<String, HashSet<i64>> = HashMap::new();
    let mut record = |l: &str| {
        if l.starts_with("DELIVERED") {
            let kid = field(l, "kid").unwrap_or_default().to_string();
            let t: i64 = field(l, "time_ms").and_then(|v| v.parse().ok()).unwrap_or_default();
            acked.entry(kid).or_default().insert(t);
        }
    };
    let attacker = UdpSocket::bind("127.0.0.1:0").expect("attacker socket");
    attacker.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let mut replayed = 0;
    for cycle in 0..cycles {
        // A random moment: after a random number of further acknowledgements.
        let n = 50 + (rng.next_u32() % 600) as usize;
        let mut seen = 0;
        sim.until("deliveries before the kill", Duration::from_secs(60), |l| {
            record(l);
            seen += usize::from(l.starts_with("DELIVERED"));
            (seen >= n).then_some(())
        });
        // Requests the hub answered under OSCORE before the crash (so their windows were durable).
        let answered: Vec<Vec<u8>> = {
            let tokens = relay.answered.lock().expect("lock").clone();
            let cap = relay.captured.lock().expect("lock");
            cap.iter()
                .filter(|d| {
                    coap_lite::Packet::from_bytes(d).is_ok_and(|p| tokens.contains(p.get_token()))
                })
                .cloned()
                .collect()
        };
        hub.kill9();
        hub = Hub::start(&data, port);
        // Replay some of them: each must be refused (an unprotected 4.01), never answered as
        // an accepted request (a protected response without its own Partial IV).
        for _ in 0..5 {
            let d = &answered[(rng.next_u64() as usize) % answered.len()];
            attacker.send_to(d, hub.coap).expect("send replay");
            let mut buf = [0u8; 1500];
            let (len, _) = attacker
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("cycle {cycle}: no answer to a replay: {e}"));
            let p = coap_lite::Packet::from_bytes(&buf[..len]).expect("coap answer");
            let accepted = p.get_first_option(coap_lite::CoapOption::Oscore).is_some_and(|v| {
                protocol::oscore::OscoreOption::parse(v).is_ok_and(|o| o.piv.is_none())
            });
            assert!(!accepted, "cycle {cycle}: a replayed request was accepted after the restart");
            replayed += 1;
        }
    }

    // Let the sensors settle, then check the store against every acknowledgement.
    let status: Value = sim.until("a quiet fleet", Duration::from_secs(120), |l| {
        record(l);
        let s: Value = serde_json::from_str(l.strip_prefix("STATUS ")?).ok()?;
        (s["queued"].as_u64() == Some(0)).then_some(s)
    });
    assert_eq!(status["nonce_reuses"], 0, "a nonce was reused: {status}");
    assert!(status["nonces_audited"].as_u64() > Some(10_000), "{status}");
    let total: usize = acked.values().map(HashSet::len).sum();
    assert!(total > 1000, "too few readings acknowledged: {total}");
    for (kid, times) in &acked {
        let stored: HashSet<i64> = wait_for("readings query", Duration::from_secs(10), || {
            let r = hub.try_ctl(&["readings", kid, "--limit", "10000"]).ok()?;
            Some(r.as_array()?.iter().filter_map(|x| x["time_ms"].as_i64()).collect())
        });
        let missing: Vec<_> = times.difference(&stored).collect();
        assert!(
            missing.is_empty(),
            "device {kid}: acknowledged readings missing after {cycles} kills: {missing:?}"
        );
    }
    let sec = hub.security();
    eprintln!(
        "crash test: {cycles} kills, {total} acknowledged readings checked, {replayed} replays refused, {}",
        status
    );
    assert!(sec["replays"].as_u64() >= Some(5), "{sec}");
}
