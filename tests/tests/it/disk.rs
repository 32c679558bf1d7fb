//! A full disk (issue 20 item 1), on a small tmpfs mounted for the test: a fleet reports through
//! a relay that audits every nonce on the wire while a filler file takes the last free page. The
//! hub stops acknowledging (nothing it cannot make durable is answered), says so once in words
//! (`hub ctl status`, its log, the MQTT hub entity's `storage`), keeps answering queries, the
//! sensors buffer; once the filler is
//! deleted it resumes by itself, and every acknowledged reading is stored exactly once, with no
//! nonce reused. With a floor of free space, retention drops the oldest readings (counted)
//! before the disk is full, and no write ever fails.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::netfault::{Forward, NetRelay, RelayConfig};
use tests::{Hub, Sim, Tmpfs, field, free_tcp_port, free_udp_port, wait_for};

use crate::mqtt::Sub;

const SENSORS: usize = 16;

/// Acknowledged measurement times per device (from the fleet's `DELIVERED` lines).
#[derive(Default)]
struct Acked {
    by_kid: HashMap<String, BTreeSet<i64>>,
    lines: usize,
}

impl Acked {
    fn record(&mut self, l: &str) -> bool {
        if !l.starts_with("DELIVERED") {
            return false;
        }
        let kid = field(l, "kid").unwrap_or_default().to_string();
        let t = field(l, "time_ms").and_then(|v| v.parse().ok()).expect("time_ms");
        self.by_kid.entry(kid).or_default().insert(t);
        self.lines += 1;
        true
    }
}

fn status(l: &str) -> Option<Value> {
    serde_json::from_str(l.strip_prefix("STATUS ")?).ok()
}

fn storage(hub: &Hub) -> Value {
    hub.ctl(&["status"])["storage"].clone()
}

/// A hub on a `mib` MiB tmpfs (its data directory is the mount point, its log and config
/// beside it) behind an auditing relay, and a fleet of [`SENSORS`] paired through the relay.
fn setup(tmp: &std::path::Path, mib: u64, store: &str) -> (Tmpfs, Hub, NetRelay, Sim) {
    let disk = Tmpfs::mount(&tmp.join("disk"), mib);
    let hub = Hub::start_with(disk.dir(), free_udp_port(), store);
    let relay = NetRelay::start(RelayConfig {
        udp: vec![Forward { listen: "127.0.0.1:0".parse().expect("addr"), target: hub.coap }],
        audit: true,
        ..Default::default()
    })
    .expect("relay");
    let front = relay.udp[0].to_string();
    let sensors = SENSORS.to_string();
    let mut sim = Sim::fleet(
        &front,
        &hub,
        &tmp.join("flash.redb"),
        &[
            "--sensors",
            &sensors,
            "--interval-ms",
            "200",
            "--audit-nonces",
            "--status-ms",
            "250",
            "--probe-max-ms",
            "2000",
            "--drain-jitter-ms",
            "2000",
        ],
    );
    sim.paired(SENSORS, Duration::from_secs(120));
    (disk, hub, relay, sim)
}

/// Every acknowledged measurement is stored, none twice (the hub's raw count equals the
/// distinct readings), and at most one per sensor is stored unacknowledged (in flight when the
/// fleet stopped). Returns the readings stored.
fn each_once(hub: &Hub, acked: &Acked) -> u64 {
    let devices = hub.ctl(&["devices"]);
    let mut total = 0;
    for (kid, times) in &acked.by_kid {
        let d = devices
            .as_array()
            .and_then(|a| a.iter().find(|d| d["id"] == kid.as_str()))
            .unwrap_or_else(|| panic!("device {kid} not listed: {devices}"));
        let raw = d["readings"].as_u64().expect("readings count");
        let stored = hub.ctl(&["readings", kid, "--limit", "10000"]);
        let stored = stored.as_array().expect("readings");
        assert_eq!(raw, stored.len() as u64, "device {kid}: readings stored twice");
        let stored_times: BTreeSet<i64> =
            stored.iter().filter_map(|r| r["time_ms"].as_i64()).collect();
        let lost: Vec<_> = times.difference(&stored_times).collect();
        assert!(lost.is_empty(), "device {kid}: acknowledged measurements lost: {lost:?}");
        let extra = stored_times.difference(times).count();
        assert!(extra <= 1, "device {kid}: {extra} measurements stored and never acknowledged");
        total += raw;
    }
    total
}

#[test]
fn a_full_disk_stops_acknowledgements_says_so_and_resumes_by_itself_with_every_reading_once() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tmp");
    // No floor: the disk is let to fill up.
    let (plain, tls, broker) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let extra = format!(
        "[store]\nsegment_kb = 256\nmin_free_mb = 0\n[mqtt]\nplain_bind = \"127.0.0.1:{plain}\"\n\
         tls_bind = \"127.0.0.1:{tls}\"\nbroker_port = {broker}\n"
    );
    let (disk, hub, relay, mut sim) = setup(tmp.path(), 24, &extra);
    hub.add_mqtt_user("watcher", Some("disk-full-watcher-pw"));
    let port = plain.to_string();
    let overview = Sub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-u",
        "watcher",
        "-P",
        "disk-full-watcher-pw",
        "-t",
        "hearth/hub/overview",
    ]);
    let storage_ok = |want: bool| {
        move |_: &str, payload: &str| {
            let v: Value = serde_json::from_str(payload).ok()?;
            (v["storage"]["ok"] == want).then_some(v["storage"].clone())
        }
    };
    overview.until("the hub's overview", Duration::from_secs(30), storage_ok(true));
    let mut acked = Acked::default();
    sim.until("readings acknowledged", Duration::from_secs(60), |l| {
        acked.record(l);
        (acked.lines >= 300).then_some(())
    });
    let ok = storage(&hub);
    assert_eq!(ok["ok"], true, "{ok}");

    // The disk fills up.
    let filler = disk.dir().join("filler");
    let filled = disk.fill(&filler, u64::MAX);
    let problem = wait_for("the hub to say the disk is full", Duration::from_secs(60), || {
        sim.read_for(Duration::from_millis(200), |l| {
            acked.record(l);
        });
        let s = storage(&hub);
        (s["ok"] == false).then_some(s)
    });
    let words = problem["problem"].as_str().unwrap_or_default();
    assert!(words.starts_with("the disk is full"), "{problem}");
    let (ok_human, text, _) = hub.ctl_human(&["status"]);
    assert!(ok_human && text.contains("Storage: PROBLEM") && text.contains(words), "{text}");
    // The self-check (`hub ctl security --check`, the web UI's security status) says it too.
    let (_, check, _) = hub.ctl_human(&["security", "--check"]);
    assert!(check.contains("5.9-1 The hub's disk can be written is not met."), "{check}");
    assert!(check.contains(words), "{check}");
    let mqtt = overview.until("MQTT to say so", Duration::from_secs(30), storage_ok(false));
    assert_eq!(mqtt["problem"], words, "{mqtt}");
    // The sensors get no answer and buffer what they measure.
    let buffering = sim.until("sensors buffering", Duration::from_secs(60), |l| {
        acked.record(l);
        status(l).filter(|s| s["offline"].as_u64() >= Some(SENSORS as u64 / 2))
    });
    // Nothing is acknowledged while the disk is full (a window, not a wait).
    let before = acked.lines;
    let mut backlog = 0;
    sim.read_for(Duration::from_secs(3), |l| {
        acked.record(l);
        if let Some(s) = status(l) {
            backlog = s["backlog"].as_u64().unwrap_or(0);
        }
    });
    assert_eq!(acked.lines, before, "readings acknowledged on a full disk");
    assert!(backlog > buffering["backlog"].as_u64().unwrap_or(0), "the backlog did not grow");
    // Queries still answer from what is stored.
    let kid = acked.by_kid.keys().next().expect("a device").clone();
    let r = hub.ctl(&["readings", &kid, "--limit", "5"]);
    assert_eq!(r.as_array().map(Vec::len), Some(5), "{r}");
    let still = storage(&hub);
    assert_eq!(still["ok"], false, "{still}");
    assert_eq!(still["episodes"], 1, "one episode, said once: {still}");

    // Space returns: the hub resumes by itself and the sensors drain their buffers.
    std::fs::remove_file(&filler).expect("delete the filler");
    wait_for("the hub to resume", Duration::from_secs(60), || {
        sim.read_for(Duration::from_millis(200), |l| {
            acked.record(l);
        });
        (storage(&hub)["ok"] == true).then_some(())
    });
    overview.until("MQTT to say it works again", Duration::from_secs(30), storage_ok(true));
    let quiet = sim.until("the fleet drained", Duration::from_secs(180), |l| {
        acked.record(l);
        status(l).filter(|s| s["backlog"] == 0 && s["offline"] == 0 && s["draining"] == 0)
    });
    let lines = sim.terminate();
    for l in &lines {
        acked.record(l);
    }
    assert_eq!(quiet["nonce_reuses"], 0, "the sensors saw a nonce reused: {quiet}");
    assert_eq!(quiet["buffer_dropped"], 0, "{quiet}");
    let stored = each_once(&hub, &acked);
    let audit = relay.audit().expect("audit");
    assert_eq!(audit.reuses, 0, "the relay saw a nonce reused: {:?}", audit.examples);
    assert!(audit.audited > 1000, "{}", audit.json());

    let log = std::fs::read_to_string(&hub.log).unwrap_or_default();
    for l in log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")) {
        eprintln!("hub: {l}");
    }
    let said = log.lines().filter(|l| l.contains("storage problem")).count();
    assert_eq!(said, 1, "the problem is logged once per episode:\n{log}");
    assert!(log.contains("storage works again"), "{log}");
    eprintln!(
        "{}",
        serde_json::json!({"full_disk": {
            "filler_bytes": filled, "readings_stored": stored, "acknowledged": acked.by_kid.values().map(BTreeSet::len).sum::<usize>(),
            "backlog_while_full": backlog, "relay_audit": audit.json(), "seconds": started.elapsed().as_secs_f64(),
        }})
    );
}

#[test]
fn below_the_free_space_floor_the_oldest_readings_are_dropped_and_counted_before_the_disk_fills() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tmp");
    let store = "[store]\nsegment_kb = 16\nmin_free_mb = 4\n";
    let (disk, hub, _relay, mut sim) = setup(tmp.path(), 16, store);
    let mut acked = Acked::default();
    sim.until("readings acknowledged", Duration::from_secs(60), |l| {
        acked.record(l);
        (acked.lines >= 200).then_some(())
    });
    // Leave 48 KiB above the floor: the log soon reaches it.
    let margin = 4 << 20 | 48 << 10;
    let filled = disk.fill(&disk.dir().join("filler"), disk.free().saturating_sub(margin));
    let s = wait_for("retention to make room", Duration::from_secs(120), || {
        sim.read_for(Duration::from_millis(250), |l| {
            acked.record(l);
            if let Some(s) = status(l) {
                assert_eq!(s["offline"], 0, "a sensor went unanswered: {s}");
            }
        });
        let s = storage(&hub);
        assert_eq!(s["ok"], true, "a write failed: {s}");
        (s["dropped_for_space"].as_u64() > Some(0)).then_some(s)
    });
    assert!(s["free_mb"].as_u64() >= Some(3), "{s}");
    // Readings go on being acknowledged and dropped oldest first; the disk never fills.
    let at = acked.lines;
    sim.until("more readings", Duration::from_secs(60), |l| {
        acked.record(l);
        (acked.lines >= at + 200).then_some(())
    });
    let lines = sim.terminate();
    for l in &lines {
        acked.record(l);
    }
    let s = storage(&hub);
    assert_eq!(s["ok"], true, "{s}");
    assert_eq!(s["episodes"], 0, "{s}");
    let dropped = s["dropped_for_space"].as_u64().expect("dropped");
    // What is gone is exactly what was counted, and only the oldest of each device.
    let devices = hub.ctl(&["devices"]);
    let mut gone = 0;
    for (kid, times) in &acked.by_kid {
        let stored = hub.ctl(&["readings", kid, "--limit", "10000"]);
        let stored = stored.as_array().expect("readings");
        let raw = devices
            .as_array()
            .and_then(|a| a.iter().find(|d| d["id"] == kid.as_str()))
            .and_then(|d| d["readings"].as_u64());
        assert_eq!(raw, Some(stored.len() as u64), "device {kid}: readings stored twice");
        let stored_times: BTreeSet<i64> =
            stored.iter().filter_map(|r| r["time_ms"].as_i64()).collect();
        let Some(&oldest) = stored_times.first() else {
            panic!("device {kid}: nothing left");
        };
        let lost: Vec<i64> = times.difference(&stored_times).copied().collect();
        assert!(lost.iter().all(|&t| t < oldest), "device {kid}: a newer reading is gone");
        let per_measurement = stored.len() / stored_times.len();
        gone += (lost.len() * per_measurement) as u64;
    }
    assert_eq!(gone, dropped, "readings gone vs counted: {s}");
    eprintln!(
        "{}",
        serde_json::json!({"free_space_floor": {
            "filler_bytes": filled, "dropped_for_space": dropped, "status": s,
            "seconds": started.elapsed().as_secs_f64(),
        }})
    );
}
