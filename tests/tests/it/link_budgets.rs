//! The link's failure budgets attacked from outside, with a sensor reporting throughout (issue
//! 15 findings 3 and 8; EN 303 645 5.5, 5.6-9, 5.10-1; RFC 8613 §7.4, RFC 9175): a crash-restart
//! loop with forgeries between neither refills the budgets nor erases the record of the attack;
//! a blind spoofer of the sensor's own address delays it by one round trip at most; a sensor
//! that moves to another host while a flood drains the shared budget is back within seconds.
//! Every reading measured is stored in the end.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{Attacker, Hub, Sim, Spoofer, field, forged_oscore, free_udp_port, wait_for};

/// Acknowledged readings by device, and when each acknowledgement was read.
#[derive(Default)]
struct Acks {
    by_kid: HashMap<String, HashSet<i64>>,
    times: Vec<Instant>,
    /// Measurement time of the newest acknowledged reading (Unix ms).
    newest: i64,
}

impl Acks {
    fn line(&mut self, l: &str) -> bool {
        if !l.starts_with("DELIVERED") {
            return false;
        }
        let t: i64 = field(l, "time_ms").and_then(|v| v.parse().ok()).unwrap_or_default();
        let kid = field(l, "kid").unwrap_or_default().to_string();
        self.by_kid.entry(kid).or_default().insert(t);
        self.times.push(Instant::now());
        self.newest = self.newest.max(t);
        true
    }

    /// Waits for `n` more acknowledgements.
    fn wait(&mut self, sim: &mut Sim, n: usize, what: &str) {
        let mut seen = 0;
        sim.until(what, Duration::from_secs(60), |l| {
            seen += usize::from(self.line(l));
            (seen >= n).then_some(())
        });
    }

    /// Waits for the acknowledgement of a reading measured after `unix_ms`: its request left
    /// the sensor after everything sent before then reached the hub's socket, so the commit
    /// that answered it recorded all of that (checkpoints and counters).
    fn wait_past(&mut self, sim: &mut Sim, unix_ms: i64, what: &str) {
        sim.until(what, Duration::from_secs(60), |l| {
            (self.line(l) && self.newest > unix_ms).then_some(())
        });
    }

    /// Acknowledgements in `window`, and the longest gap between two of them (or between the
    /// window's start and the first).
    fn count_for(&mut self, sim: &mut Sim, window: Duration) -> (usize, Duration) {
        let start = Instant::now();
        let first = self.times.len();
        sim.read_for(window, |l| {
            self.line(l);
        });
        let times = &self.times[first..];
        let mut gap = Duration::ZERO;
        let mut prev = start;
        for t in times {
            gap = gap.max(t.duration_since(prev));
            prev = *t;
        }
        gap = gap.max(Instant::now().duration_since(prev));
        (times.len(), gap)
    }

    /// Waits until the fleet has nothing left to send, then checks that every acknowledged
    /// reading is stored (100 % of what was measured reaches the store).
    fn all_stored(&mut self, sim: &mut Sim, hub: &Hub) {
        sim.until("a quiet fleet", Duration::from_secs(120), |l| {
            self.line(l);
            let s: Value = serde_json::from_str(l.strip_prefix("STATUS ")?).ok()?;
            (s["queued"].as_u64() == Some(0)).then_some(())
        });
        for (kid, times) in &self.by_kid {
            let stored: HashSet<i64> = wait_for("readings", Duration::from_secs(10), || {
                let r = hub.try_ctl(&["readings", kid, "--limit", "100000"]).ok()?;
                Some(r.as_array()?.iter().filter_map(|x| x["time_ms"].as_i64()).collect())
            });
            let missing: Vec<_> = times.difference(&stored).collect();
            assert!(missing.is_empty(), "{kid}: acknowledged readings missing: {missing:?}");
        }
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn count(v: &Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or(0)
}

/// The counters a crash must never erase.
const RECORDED: [&str; 5] = ["bad_tag", "throttled", "key_limit", "echo_challenges", "replays"];

/// A one-sensor fleet reporting every `interval` ms from `bind`, paired with `hub`.
fn fleet(hub: &Hub, flash: &std::path::Path, bind: &str, interval: &str) -> (Sim, String) {
    let addr = hub.coap.to_string();
    let args = [
        "--sensors",
        "1",
        "--interval-ms",
        interval,
        "--sockets",
        "1",
        "--bind",
        bind,
        "--status-ms",
        "1000",
        "--drain-jitter-ms",
        "0",
    ];
    let mut sim = Sim::fleet(&addr, hub, flash, &args);
    let kid = sim.paired(1, Duration::from_secs(60)).remove(0);
    (sim, kid)
}

#[test]
fn a_crash_restart_loop_with_forgeries_between_keeps_the_key_and_the_record() {
    let cycles: u64 =
        std::env::var("HEARTH_LOOP_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("hub");
    let port = free_udp_port();
    let mut hub = Hub::start(&dir, port);
    let flash = tmp.path().join("flash.redb");
    let (mut sim, kid) = fleet(&hub, &flash, "127.0.0.1", "100");
    let kid_bytes = protocol::hex::decode(&kid).expect("hex kid");
    let mut acks = Acks::default();
    acks.wait(&mut sim, 3, "first readings");
    let host: IpAddr = "127.0.0.9".parse().expect("ip");
    let mut attacker = Attacker::new(hub.coap, host, &kid_bytes, 4);
    let started = Instant::now();
    // Forgeries sent in cycles whose counts were durable before the kill.
    let mut durable_sent = 0u64;
    for cycle in 0..cycles {
        let before_forging = unix_ms();
        attacker.forge(40);
        if cycle % 2 == 0 {
            // Kill once everything sent is recorded: nothing the hub counted may be lost.
            acks.wait_past(&mut sim, before_forging, "a reading measured after the forgeries");
            durable_sent += 40;
            let before = hub.security();
            hub.kill9();
            attacker.drain(false);
            hub = Hub::start(&dir, port);
            let after = hub.security();
            for name in RECORDED {
                assert_eq!(count(&after, name), count(&before, name), "cycle {cycle}: {name}");
            }
        } else {
            // Kill while the forgeries are being verified.
            hub.kill9();
            attacker.drain(false);
            hub = Hub::start(&dir, port);
        }
        acks.wait(&mut sim, 1, &format!("the sensor reporting after restart {cycle}"));
    }
    let elapsed = started.elapsed();
    acks.wait(&mut sim, 20, "readings after the loop");
    attacker.drain(false);
    let sec = hub.security();
    let (bad_tag, throttled) = (count(&sec, "bad_tag"), count(&sec, "throttled"));
    eprintln!(
        "crash loop: {cycles} SIGKILL cycles in {:.1} s ({:.0} ms each); {} forgeries sent, \
         {} seen refused after verification, {} challenged; hub counts bad_tag={bad_tag} \
         throttled={throttled}",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / cycles as f64,
        attacker.sent,
        attacker.failures_seen,
        attacker.challenges_seen
    );
    // The key: restarts refilled nothing, so the failures verified stay within one burst plus
    // what the time elapsed earns back (the old budgets verified 96 per start).
    let refilled = elapsed.as_secs() / (protocol::link::FAIL_REFILL_MS / 1000);
    let budget = u64::from(protocol::link::FAIL_BURST) + refilled + 1;
    assert!(bad_tag <= budget, "{bad_tag} failed verifications over {cycles} restarts: {sec}");
    assert!(bad_tag >= u64::from(protocol::link::FAIL_BURST) / 2, "forgeries were verified: {sec}");
    assert_eq!(count(&sec, "key_limit"), 0, "{sec}");
    // The record: every failure the attacker was told of is counted, and every forgery sent in
    // a cycle that reached durability is counted (verified or thrown away) — nothing else.
    assert!(bad_tag >= attacker.failures_seen, "{sec}");
    assert!(bad_tag + throttled >= durable_sent, "{durable_sent} durable forgeries: {sec}");
    assert!(bad_tag + throttled <= attacker.sent, "{sec}");
    // The sensor kept its key: it never paired again and nothing was refused.
    let seen = sim.seen_lines();
    assert_eq!(seen.iter().filter(|l| l.starts_with("PAIRED")).count(), 1);
    assert!(!seen.iter().any(|l| l.starts_with("REFUSED")));
    acks.all_stored(&mut sim, &hub);
}

#[test]
fn a_blind_spoofer_of_the_sensors_address_delays_it_by_one_round_trip_at_most() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hub = Hub::start(&tmp.path().join("hub"), free_udp_port());
    let flash = tmp.path().join("flash.redb");
    let sensor_port = UdpSocket::bind("127.0.0.2:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let sensor = SocketAddrV4::new("127.0.0.2".parse().expect("ip"), sensor_port);
    let (mut sim, kid) = fleet(&hub, &flash, &sensor.to_string(), "100");
    let kid_bytes = protocol::hex::decode(&kid).expect("hex kid");
    let mut acks = Acks::default();
    acks.wait(&mut sim, 5, "first readings");
    let window = Duration::from_secs(10);
    let (normal, normal_gap) = acks.count_for(&mut sim, window);

    // The spoofer sends as the sensor's own address and port (a raw socket: it never sees
    // what the hub answers there): 40 at once, then 100 a second.
    let spoofer = Spoofer::new().expect("raw socket (root or CAP_NET_RAW)");
    let SocketAddr::V4(hub_v4) = hub.coap else { panic!("IPv4 hub") };
    let stop = Arc::new(AtomicBool::new(false));
    let attack = {
        let (stop, kid) = (stop.clone(), kid_bytes.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = 40 + started.elapsed().as_millis() as u64 / 10;
                while sent < due {
                    let d = forged_oscore(&kid, 9_000_000 + sent, sent as u16, &[sent as u8; 24]);
                    spoofer.send(sensor, hub_v4, &d).expect("spoof");
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(5)); // pacing the attack
            }
            sent
        })
    };
    wait_for("the known endpoint's budget spent", Duration::from_secs(30), || {
        (count(&hub.security(), "throttled") > 0).then_some(())
    });
    let (during, gap) = acks.count_for(&mut sim, window);
    stop.store(true, Ordering::Relaxed);
    let spoofed = attack.join().expect("spoofer");
    let sec = hub.security();
    eprintln!(
        "spoofed endpoint: {spoofed} datagrams as {sensor}; deliveries in {window:?}: {normal} \
         normally (longest gap {normal_gap:?}), {during} under attack (longest gap {gap:?}); {sec}"
    );
    assert!(during * 100 >= normal * 95, "{during} deliveries under attack, {normal} normally");
    assert!(gap <= Duration::from_secs(3), "the sensor was silent for {gap:?}");
    // The spoofer spent the known endpoint's budget and nothing more; each of its datagrams
    // over budget was challenged (at the sensor, which ignored them); the sensor proved it
    // receives there and was verified under its host's routable budget.
    assert!(count(&sec, "bad_tag") <= u64::from(protocol::link::FAIL_BURST) + 1, "{sec}");
    assert!(count(&sec, "throttled") + count(&sec, "bad_tag") >= spoofed * 9 / 10, "{sec}");
    assert_eq!(count(&sec, "echo_challenges"), count(&sec, "throttled"), "{sec}");
    assert!(count(&sec, "routable") >= during as u64 / 2, "{sec}");
    assert_eq!(count(&sec, "key_limit"), 0, "{sec}");
    acks.all_stored(&mut sim, &hub);
}

#[test]
fn a_sensor_that_moves_host_during_a_flood_is_back_within_seconds() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hub = Hub::start(&tmp.path().join("hub"), free_udp_port());
    let flash = tmp.path().join("flash.redb");
    let (mut sim, kid) = fleet(&hub, &flash, "127.0.0.2", "100");
    let kid_bytes = protocol::hex::decode(&kid).expect("hex kid");
    let mut acks = Acks::default();
    acks.wait(&mut sim, 5, "first readings");
    let window = Duration::from_secs(8);
    let (normal, _) = acks.count_for(&mut sim, window);

    // Another host floods the kid blindly; a third one answers every challenge it gets (it
    // really is at its address).
    let stop = Arc::new(AtomicBool::new(false));
    let blind = Attacker::new(hub.coap, "127.0.0.3".parse().expect("ip"), &kid_bytes, 8);
    let smart = Attacker::new(hub.coap, "127.0.0.5".parse().expect("ip"), &kid_bytes, 4);
    let blind = blind.flood(500, false, stop.clone());
    let smart = smart.flood(50, true, stop.clone());
    wait_for("the shared budget spent", Duration::from_secs(30), || {
        (count(&hub.security(), "throttled") > 500).then_some(())
    });
    let (during, gap) = acks.count_for(&mut sim, window);
    assert!(during * 100 >= normal * 95, "{during} deliveries during the flood, {normal} normally");

    // The sensor moves to another host (same flash, new address) while the flood goes on.
    let _ = sim.terminate();
    let moved_at = Instant::now();
    let (mut sim, moved_kid) = {
        let addr = hub.coap.to_string();
        let args = [
            "--sensors",
            "1",
            "--interval-ms",
            "100",
            "--sockets",
            "1",
            "--bind",
            "127.0.0.4",
            "--status-ms",
            "1000",
            "--drain-jitter-ms",
            "0",
        ];
        let mut sim = Sim::fleet(&addr, &hub, &flash, &args);
        let mut kid = String::new();
        sim.until("the moved sensor's first acknowledgement", Duration::from_secs(60), |l| {
            acks.line(l).then(|| kid = field(l, "kid").unwrap_or_default().to_string())
        });
        (sim, kid)
    };
    let back = moved_at.elapsed();
    assert_eq!(moved_kid, kid, "the same key, not a new pairing");
    let (after, after_gap) = acks.count_for(&mut sim, window);
    stop.store(true, Ordering::Relaxed);
    let (blind, smart) = (blind.join().expect("flood"), smart.join().expect("flood"));
    let sec = hub.security();
    eprintln!(
        "moved sensor: back {back:?} after its fleet restarted on 127.0.0.4; deliveries in \
         {window:?}: {normal} normally, {during} during the flood (gap {gap:?}), {after} after \
         the move (gap {after_gap:?}); blind flood {} sent, smart flood {} sent / {} challenges \
         answered / {} refusals seen; {sec}",
        blind.sent, smart.sent, smart.answered, smart.failures_seen
    );
    assert!(back <= Duration::from_secs(5), "the moved sensor was back after {back:?}");
    assert!(after * 100 >= normal * 95, "{after} deliveries after the move, {normal} normally");
    assert!(count(&sec, "routable") >= 1, "the moved sensor proved its new address: {sec}");
    // The flooders spent the shared budget and the answering host its own, nothing more.
    let limit = u64::from(protocol::link::FAIL_BURST) + u64::from(protocol::link::ROUTABLE_BURST);
    assert!(count(&sec, "bad_tag") <= limit + 1, "{sec}");
    assert!(smart.answered > 0, "the smart flooder was challenged and answered");
    assert_eq!(count(&sec, "key_limit"), 0, "{sec}");
    acks.all_stored(&mut sim, &hub);
}
