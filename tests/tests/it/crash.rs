//! Crash campaign (issue 20 item 5): 200 simulated sensors report through a recording relay
//! while the hub is killed with SIGKILL — from outside at random moments, and by the hub itself
//! at kill points (`fault-injection`): mid-commit (a frame written, not synced), mid-seal (a
//! segment rolled and indexed, its snapshot not saved), mid-retention (a segment's file removed,
//! not its index), mid-firmware-delivery (a block request accepted, not yet answered) and
//! mid-pairing (a key exchange done and the device not durable; or durable and not confirmed).
//! Small segments and a small per-device retention make seals and retention frequent; firmware
//! deliveries run throughout and a sensor pairs during the pairing cycles.
//!
//! After every restart: the store opened; requests the hub had accepted before, replayed byte
//! for byte, are refused; a pairing cut by the kill is tried again and completes. At the end:
//! every acknowledged reading is stored once (or was dropped by retention, which keeps each
//! device's newest readings), no nonce was reused — audited by the relay on the wire,
//! independently of the hub's bookkeeping and the sensors' — and the deliveries completed.
//!
//! 21 cycles in CI; `scripts/bench-crash` runs ≥ 200 (HEARTH_CRASH_CYCLES, HEARTH_CRASH_SEED).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde_json::{Value, json};
use tests::netfault::{Forward, NetRelay, RelayConfig};
use tests::{Hub, Maker, Sim, field, free_udp_port, wait_for};

const SENSORS: usize = 200;
const THERMO: &str = "hearth-thermo-1";
/// Readings kept per device by retention (at least).
const KEEP: usize = 150;
/// Firmware image size: 24 blocks.
const IMAGE: usize = 24 * 1024;

/// How a cycle's kill comes, in the order the cycles take them.
const KINDS: [&str; 7] =
    ["commit", "seal", "firmware", "pairing", "outside", "paired", "retention"];

/// Arms the hub's kill point `point` at its `pass`-th pass from now.
fn arm(hub: &Hub, point: &str, pass: u64) {
    let mut s = std::os::unix::net::UnixStream::connect(&hub.control).expect("control socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let req = json!({"cmd": "fault", "fault": "kill_at", "point": point, "pass": pass});
    writeln!(s, "{req}").expect("send");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("answer");
    let v: Value = serde_json::from_str(&line).expect("json answer");
    assert_eq!(v["armed"], point, "arming {point}: {v}");
}

/// Serials of the pairing cycles' door contacts: `DR-0<PAIRER_SERIALS + n>`, far above the
/// fleet's.
const PAIRER_SERIALS: usize = 1000;

/// A sensor that pairs (a door contact with a serial of its own, `PAIRER_SERIALS + n`) through
/// the relay; the hub's window is opened by the simulator. Each attempt is a new sensor: a kill
/// after the hub committed a pairing but before the sensor heard its answer leaves that serial
/// paired on the hub, and the hub rightly refuses the same serial again.
fn pairer(relay: SocketAddr, hub: &Hub, dir: &Path, n: usize) -> Sim {
    let flash = dir.join(format!("pairer-{n}.redb"));
    let serial = (PAIRER_SERIALS + n).to_string();
    Sim::fleet(
        &relay.to_string(),
        hub,
        &flash,
        &[
            "--sensors",
            "1",
            "--models",
            "door",
            "--interval-ms",
            "1000",
            "--seed",
            &n.to_string(),
            "--first-serial",
            &serial,
        ],
    )
}

/// Removes every pairing cycle's door contact (those a kill cut short included): a device that
/// stops reporting would keep its segments from retention for good (each segment waits for
/// every device in it to have newer readings).
fn remove_pairers(hub: &Hub) {
    let devices = hub.ctl(&["devices"]);
    for d in devices.as_array().expect("devices") {
        let serial = d["serial"].as_str().unwrap_or_default();
        let n = serial.strip_prefix("DR-").and_then(|n| n.parse::<usize>().ok());
        if n.is_some_and(|n| n >= PAIRER_SERIALS) {
            hub.ctl(&["remove", d["id"].as_str().expect("device id")]);
        }
    }
}

/// Devices in the middle of a firmware delivery.
fn delivering(hub: &Hub) -> usize {
    hub.try_ctl(&["updates"])
        .ok()
        .and_then(|u| u["devices"].as_array().cloned())
        .map(|d| d.iter().filter(|d| d["delivering"].is_array()).count())
        .unwrap_or(0)
}

#[test]
fn acknowledged_readings_survive_sigkill_and_no_replay_or_nonce_reuse_follows() {
    let cycles: usize =
        std::env::var("HEARTH_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(21);
    let seed: u64 =
        std::env::var("HEARTH_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
    eprintln!("crash campaign: {cycles} cycles, seed {seed} (HEARTH_CRASH_SEED replays it)");
    let started = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("hub");
    let port = free_udp_port();
    let maker = Maker::new(tmp.path());
    let extra = format!(
        "[store]\nsegment_kb = 64\nmax_readings_per_device = {KEEP}\n\
         [updates]\nmax_concurrent = 8\nretry_base_s = 1\n{}",
        maker.trust_toml(&[THERMO])
    );
    let mut hub = Hub::start_with(&data, port, &extra);
    let relay = NetRelay::start(RelayConfig {
        seed,
        udp: vec![Forward { listen: "127.0.0.1:0".parse().expect("addr"), target: hub.coap }],
        audit: true,
        ..Default::default()
    })
    .expect("relay");
    let front = relay.udp[0];
    let flash = tmp.path().join("flash.redb");
    let sensors = SENSORS.to_string();
    let mut sim = Sim::fleet(
        &front.to_string(),
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
            "--maker-keys",
            &maker.keys.display().to_string(),
        ],
    );
    sim.paired(SENSORS, Duration::from_secs(180));
    let mut version = 2;
    let release = |hub: &Hub, version: u32| {
        maker.publish(THERMO, version, IMAGE, &[]);
        let (m, i) = maker.files(THERMO, version);
        hub.update_add(&m, &i).expect("update add");
    };
    release(&hub, version);

    // Acknowledged measurement times per device, in the order acknowledged.
    let mut acked: HashMap<String, (Vec<i64>, HashSet<i64>)> = HashMap::new();
    let mut record = |l: &str| {
        if l.starts_with("DELIVERED") {
            let kid = field(l, "kid").unwrap_or_default().to_string();
            let t: i64 = field(l, "time_ms").and_then(|v| v.parse().ok()).unwrap_or_default();
            let (order, set) = acked.entry(kid).or_default();
            if set.insert(t) {
                order.push(t);
            }
        }
    };
    let attacker = UdpSocket::bind("127.0.0.1:0").expect("attacker socket");
    attacker.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let (mut refused, mut silent) = (0, 0);
    let mut hits: BTreeMap<&str, u32> = BTreeMap::new();
    let mut missed: BTreeMap<&str, u32> = BTreeMap::new();
    let mut pairings = 0;
    for cycle in 0..cycles {
        let kind = KINDS[cycle % KINDS.len()];
        // A random moment: after a random number of further acknowledgements.
        let n = 50 + (rng.next_u32() % 600) as usize;
        let mut seen = 0;
        sim.until("deliveries before the kill", Duration::from_secs(60), |l| {
            record(l);
            seen += usize::from(l.starts_with("DELIVERED"));
            (seen >= n).then_some(())
        });
        let mut pairing = None;
        match kind {
            "outside" => {
                let _ = hub.child.kill();
            }
            "commit" => arm(&hub, kind, 1 + rng.next_u64() % 100),
            "seal" | "retention" => arm(&hub, kind, 1 + rng.next_u64() % 2),
            "firmware" => {
                if delivering(&hub) == 0 {
                    version += 1;
                    release(&hub, version);
                }
                arm(&hub, kind, 1 + rng.next_u64() % 30);
            }
            _ => {
                arm(&hub, kind, 1);
                pairings += 1;
                pairing = Some(pairer(front, &hub, tmp.path(), pairings));
            }
        }
        // The hub dies at the point (or, if it never gets there, is killed from outside).
        let deadline = Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Ok(Some(s)) = hub.child.try_wait() {
                break Some(s);
            }
            if Instant::now() >= deadline {
                break None;
            }
            sim.until("fleet lines", Duration::from_secs(10), |l| {
                record(l);
                Some(())
            });
        };
        let log = std::fs::read_to_string(&hub.log).unwrap_or_default();
        match status {
            Some(s) if kind == "outside" || log.contains(&format!("kill point {kind}\n")) => {
                assert_eq!(s.signal(), Some(9), "cycle {cycle}: the hub ended otherwise: {s:?}");
                *hits.entry(kind).or_default() += 1;
            }
            Some(s) => panic!("cycle {cycle}: the hub exited ({s:?}) before {kind}:\n{log}"),
            None => {
                eprintln!("crash campaign: cycle {cycle}: kill point {kind} not reached in 90 s");
                *missed.entry(kind).or_default() += 1;
                let _ = hub.child.kill();
                let _ = hub.child.wait();
            }
        }
        // The store always opens.
        hub = Hub::start_with(&data, port, &extra);
        // Requests the hub accepted before the crash (their windows were durable before their
        // answers), replayed: each is refused, never accepted (a protected response without a
        // Partial IV of its own answers an accepted request).
        let accepted = relay.accepted_requests();
        assert!(!accepted.is_empty(), "cycle {cycle}: the relay saw no accepted request");
        for _ in 0..3 {
            let d = &accepted[(rng.next_u64() as usize) % accepted.len()];
            attacker.send_to(d, hub.coap).expect("send replay");
            let mut buf = [0u8; 1500];
            let Ok((len, _)) = attacker.recv_from(&mut buf) else {
                silent += 1;
                continue;
            };
            let p = coap_lite::Packet::from_bytes(&buf[..len]).expect("coap answer");
            let accepted = p.get_first_option(coap_lite::CoapOption::Oscore).is_some_and(|v| {
                protocol::oscore::OscoreOption::parse(v).is_ok_and(|o| o.piv.is_none())
            });
            assert!(!accepted, "cycle {cycle}: a replayed request was accepted after the restart");
            refused += 1;
        }
        // A pairing the kill cut short: the owner tries again (a fresh attempt) and it completes.
        if let Some(old) = pairing {
            drop(old.terminate());
            pairings += 1;
            let mut again = pairer(front, &hub, tmp.path(), pairings);
            again.paired(1, Duration::from_secs(120));
            drop(again.terminate());
            remove_pairers(&hub);
        }
        if cycle % 10 == 9 {
            eprintln!(
                "crash campaign: {} cycles after {:.0} s",
                cycle + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }

    // Let the sensors settle and the deliveries finish, then check the store against every
    // acknowledgement.
    let status: Value = sim.until("a quiet fleet", Duration::from_secs(180), |l| {
        record(l);
        let s: Value = serde_json::from_str(l.strip_prefix("STATUS ")?).ok()?;
        // Every backlog drained (what is in flight at any moment is not acknowledged yet).
        (s["backlog"] == 0 && s["offline"] == 0 && s["draining"] == 0).then_some(s)
    });
    // `hub ctl updates` lists the devices with something to install or in delivery: once no
    // thermostat is listed, each runs the newest release (checked below on each one).
    let devices = hub.ctl(&["devices"]);
    let thermostats: Vec<&str> = devices
        .as_array()
        .expect("devices")
        .iter()
        .filter(|d| d["model"] == THERMO)
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(thermostats.len(), SENSORS / 4, "{devices}");
    let mut last = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(300);
    wait_for("every thermostat on the newest firmware", Duration::from_secs(300), || {
        let u = hub.try_ctl(&["updates"]).ok()?;
        assert!(Instant::now() < deadline, "not every thermostat runs version {version}: {last}");
        let listed = u["devices"].as_array()?.iter().any(|d| d["model"] == THERMO);
        last = u;
        (!listed).then_some(())
    });
    let mut installed = 0;
    for id in &thermostats {
        let dev = hub.ctl(&["device", id]);
        assert_eq!(dev["firmware_version"], version, "device {id}: {dev}");
        let history = dev["update"]["history"].as_array().cloned().unwrap_or_default();
        installed += history.iter().filter(|h| h["event"] == "installed").count();
        assert!(
            !history.iter().any(|h| h["event"] == "failed" || h["event"] == "timed_out"),
            "device {id}: a delivery failed: {dev}"
        );
    }

    assert_eq!(status["nonce_reuses"], 0, "the sensors saw a nonce reused: {status}");
    let audit = relay.audit().expect("audit");
    assert_eq!(audit.reuses, 0, "the relay saw a nonce reused: {:?}", audit.examples);
    assert!(audit.audited > 10_000, "{}", audit.json());

    let (mut total, mut retained_away) = (0usize, 0usize);
    for (kid, (order, _)) in &acked {
        let stored: Vec<(i64, String)> =
            wait_for("readings query", Duration::from_secs(10), || {
                let r = hub.try_ctl(&["readings", kid, "--limit", "100000"]).ok()?;
                let r = r.as_array()?.iter();
                Some(
                    r.filter_map(|x| Some((x["time_ms"].as_i64()?, x["name"].as_str()?.into())))
                        .collect(),
                )
            });
        // Each reading once.
        let mut once = HashSet::new();
        let twice: Vec<_> = stored.iter().filter(|r| !once.insert((*r).clone())).collect();
        assert!(twice.is_empty(), "device {kid}: readings stored twice: {twice:?}");
        let readings = stored.len();
        let mut per_time: HashMap<i64, usize> = HashMap::new();
        for r in &stored {
            *per_time.entry(r.0).or_default() += 1;
        }
        // Retention drops a segment once every device in it has KEEP newer readings: an
        // acknowledged measurement may be gone only if at least KEEP / 2 stored readings were
        // measured after it (measurement order follows the log's, up to the backlog a sensor
        // drains after a restart), and then the device keeps KEEP or more.
        let mut times: Vec<i64> = order.clone();
        times.sort_unstable();
        let mut stored_times: Vec<(i64, usize)> = per_time.into_iter().collect();
        stored_times.sort_unstable();
        let mut later_stored = 0;
        for t in times.iter().rev() {
            while let Some(&(st, n)) = stored_times.last()
                && st > *t
            {
                later_stored += n;
                stored_times.pop();
            }
            if stored_times.last().is_some_and(|&(st, _)| st == *t) {
                continue;
            }
            assert!(
                later_stored >= KEEP / 2,
                "device {kid}: acknowledged measurement {t} lost after {cycles} kills \
                 ({later_stored} readings measured after it are stored)"
            );
            assert!(readings >= KEEP, "device {kid}: retention kept {readings} readings");
            retained_away += 1;
        }
        total += order.len();
    }
    assert!(total > 1000, "too few readings acknowledged: {total}");
    assert!(refused > 0, "no replay was answered with a refusal");
    let sec = hub.security();
    for kind in KINDS {
        if cycles >= KINDS.len() {
            assert!(hits.get(kind) > Some(&0), "no kill at {kind}: {hits:?}, missed {missed:?}");
        }
    }
    eprintln!(
        "{}",
        json!({
            "crash_campaign": {
                "cycles": cycles, "seed": seed, "kills_at": hits, "points_missed": missed,
                "acknowledged_measurements": total, "lost": 0,
                "dropped_by_retention": retained_away, "replays_refused": refused,
                "replays_unanswered": silent, "replays_accepted": 0, "pairings": pairings,
                "firmware_versions": version - 1, "installs": installed,
                "relay_audit": audit.json(), "fleet_nonce_reuses": status["nonce_reuses"],
                "hub_security": sec, "seconds": started.elapsed().as_secs_f64(),
            }
        })
    );
}
