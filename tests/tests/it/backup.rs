//! Backup and restore to a new gateway (issue 20 item 2): a fleet reports through a recording
//! relay; the running hub is backed up; the old hub runs on and the fleet talks to it; it
//! stops; the backup is restored into a new data directory (a wrong passphrase and a flipped
//! byte are refused first, leaving nothing) and a new hub starts on it on the same port. The
//! fleet follows without pairing again (each link renewed, RFC 8613 B.2), names and rooms are
//! there, every reading the new hub stores is stored once, the relay's independent nonce
//! audit over both hubs finds no reuse, and requests the old hub accepted, replayed to the new
//! one, get 4.01.

use std::collections::{HashMap, HashSet};
use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tests::netfault::{Forward, NetRelay, RelayConfig};
use tests::{Hub, Maker, Sim, bin, field, free_tcp_port, free_udp_port, write_config};

const SENSORS: usize = 4;
const PASSPHRASE: &str = "moving house in spring";

fn hub_cmd(args: &[&str], pass: &str) -> (bool, String) {
    let out = Command::new(bin("hub"))
        .args(args)
        .env("HEARTH_BACKUP_PASSPHRASE", pass)
        .output()
        .expect("run hub");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Reads the fleet's lines until every sensor has `n` more deliveries acknowledged by the hub
/// it talks to now. A sensor's deliveries count for the new hub once it printed `RENEWED`
/// (the old hub cannot answer under a renewed context): `renewed` holds those sensors, and a
/// delivery before that goes to `old` (acknowledged by the old hub).
fn deliveries(
    sim: &mut Sim,
    n: usize,
    renewed: &mut HashSet<String>,
    old: &mut HashMap<String, Vec<i64>>,
    new: &mut HashMap<String, Vec<i64>>,
) {
    let mut more: HashMap<String, usize> = HashMap::new();
    sim.until("deliveries from every sensor", Duration::from_secs(90), |l| {
        let sensor = field(l, "sensor").unwrap_or_default().to_string();
        if l.starts_with("RENEWED") && field(l, "renewed") == Some("true") {
            renewed.insert(sensor);
        } else if l.starts_with("DELIVERED") {
            let kid = field(l, "kid").unwrap_or_default().to_string();
            let t: i64 = field(l, "time_ms").and_then(|t| t.parse().ok()).unwrap_or(0);
            let to = if renewed.contains(&sensor) { &mut *new } else { &mut *old };
            to.entry(kid.clone()).or_default().push(t);
            *more.entry(kid).or_default() += 1;
        }
        (more.len() == SENSORS && more.values().all(|&c| c >= n)).then_some(())
    });
}

/// A device's stored readings as (time, SenML name) (a measurement may have several records).
fn stored_times(hub: &Hub, kid: &str) -> Vec<(i64, String)> {
    let r = hub.ctl(&["readings", kid, "--limit", "100000"]);
    r.as_array()
        .expect("readings")
        .iter()
        .filter_map(|x| Some((x["time_ms"].as_i64()?, x["name"].as_str()?.to_string())))
        .collect()
}

#[test]
fn a_restored_hub_takes_over_the_fleet_without_reuse_or_replay() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_udp_port();
    let old_dir = tmp.path().join("old");
    // The old gateway's configuration: MQTT on, an upstream broker (not running: its outbox
    // just waits) with its password in a file of its own.
    let etc = tmp.path().join("etc");
    std::fs::create_dir(&etc).expect("etc");
    let pw = etc.join("upstream.pw");
    std::fs::write(&pw, "upstream secret\n").expect("pw");
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("pw");
    let upstream = format!("mqtt://127.0.0.1:{}", free_tcp_port());
    let extra = format!(
        "[mqtt]\nplain_bind = \"127.0.0.1:{}\"\ntls_bind = \"127.0.0.1:{}\"\nbroker_port = {}\n\
         [upstream]\nurl = \"{upstream}\"\nusername = \"home\"\npassword_file = \"{}\"\n",
        free_tcp_port(),
        free_tcp_port(),
        free_tcp_port(),
        pw.display()
    );
    let config = write_config(&etc, port, &extra);
    let hub = Hub::start_configured(&old_dir, &config);
    let relay = NetRelay::start(RelayConfig {
        udp: vec![Forward { listen: "127.0.0.1:0".parse().expect("addr"), target: hub.coap }],
        audit: true,
        ..Default::default()
    })
    .expect("relay");
    let front = relay.udp[0].to_string();
    let n = SENSORS.to_string();
    let mut sim = Sim::fleet(
        &front,
        &hub,
        &tmp.path().join("flash.redb"),
        &["--sensors", &n, "--interval-ms", "100", "--audit-nonces", "--status-ms", "500"],
    );
    let kids = sim.paired(SENSORS, Duration::from_secs(120));
    hub.ctl(&["rename", &kids[0], "Kitchen thermostat"]);
    hub.ctl(&["room", &kids[0], "Kitchen"]);
    hub.add_mqtt_user("homeassistant", Some("a long enough password"));
    let maker = Maker::new(tmp.path());
    hub.ctl(&["trust", "--model", "hearth-climate-1", "--key", &maker.public]);
    hub.ctl(&["update", "policy", "notify"]);
    let (mut renewed, mut acked, mut after) = (HashSet::new(), HashMap::new(), HashMap::new());
    deliveries(&mut sim, 3, &mut renewed, &mut acked, &mut after);

    // Acknowledged before the backup started, so durable in it.
    let before_backup = acked.clone();
    // Backed up while the fleet reports, through the running hub.
    let file = tmp.path().join("home.hearth-backup");
    let (file_s, old_s) = (file.to_str().expect("utf8"), old_dir.to_str().expect("utf8"));
    let (ok, out) = hub_cmd(&["backup", file_s, "--data-dir", old_s], PASSPHRASE);
    assert!(ok && out.contains("backed up the running hub"), "{out}");
    let (ok, out) = hub_cmd(&["backup", file_s, "--data-dir", old_s], "short");
    assert!(!ok && out.contains("too short"), "{out}");
    // The old hub runs on: the fleet goes on talking to it, then it stops.
    deliveries(&mut sim, 3, &mut renewed, &mut acked, &mut after);
    hub.stop();

    // A wrong passphrase and a flipped byte are refused and leave nothing.
    let new_dir = tmp.path().join("new");
    let new_s = new_dir.to_str().expect("utf8");
    let (ok, out) = hub_cmd(&["restore", file_s, "--data-dir", new_s], "not the passphrase!");
    assert!(!ok && out.contains("wrong passphrase"), "{out}");
    let mut bytes = std::fs::read(&file).expect("read backup");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    let bad = tmp.path().join("flipped");
    std::fs::write(&bad, &bytes).expect("write");
    let (ok, out) =
        hub_cmd(&["restore", bad.to_str().expect("utf8"), "--data-dir", new_s], PASSPHRASE);
    assert!(!ok && (out.contains("altered") || out.contains("damaged")), "{out}");
    assert!(!new_dir.exists(), "a refused restore left {new_dir:?}");
    let (ok, out) = hub_cmd(&["restore", file_s, "--data-dir", new_s], PASSPHRASE);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{SENSORS} devices")), "{out}");

    // The new hub, same port, with the configuration the backup carried: the fleet follows
    // without pairing again.
    let restored = new_dir.join("restored-config/hub.toml");
    assert!(out.contains(&restored.display().to_string()), "{out}");
    let hub = Hub::start_configured(&new_dir, &restored);
    // Until each sensor has renewed and been answered by the new hub a few times.
    while renewed.len() < SENSORS
        || after.len() < SENSORS
        || after.values().any(|v: &Vec<i64>| v.len() < 3)
    {
        deliveries(&mut sim, 1, &mut renewed, &mut acked, &mut after);
    }
    assert!(!sim.seen_lines().iter().any(|l| l.starts_with("PAIRING")), "a sensor paired again");
    let log = std::fs::read_to_string(&hub.log).unwrap_or_default();
    assert_eq!(log.matches("security context renewed").count(), SENSORS, "{log}");
    let devices = hub.ctl(&["devices"]).to_string();
    assert!(devices.contains("Kitchen thermostat") && devices.contains("Kitchen"), "{devices}");
    let users = hub.ctl(&["mqtt-user", "list"]).to_string();
    assert!(users.contains("homeassistant"), "{users}");
    let updates = hub.ctl(&["updates"]);
    assert_eq!(updates["policy"]["mode"], "notify_only", "{updates}");
    assert_eq!(updates["trust"][0][0], "hearth-climate-1", "the pinned key: {updates}");
    let up = hub.ctl(&["upstream"]);
    assert_eq!(up["url"], upstream.as_str(), "{up}");
    // Every reading the new hub holds is there once; what it acknowledged is there.
    for kid in &kids {
        let times = stored_times(&hub, kid);
        let unique: HashSet<&(i64, String)> = times.iter().collect();
        assert_eq!(unique.len(), times.len(), "{kid}: a reading stored twice");
        let at: HashSet<i64> = times.iter().map(|(t, _)| *t).collect();
        for t in after.get(kid).into_iter().flatten() {
            assert!(at.contains(t), "{kid}: reading {t} acknowledged by the new hub not stored");
        }
        for t in before_backup.get(kid).into_iter().flatten() {
            assert!(at.contains(t), "{kid}: reading {t} acknowledged before the backup lost");
        }
    }

    // Requests the old hub accepted, replayed to the new one: 4.01, nothing stored.
    let before: Vec<usize> = kids.iter().map(|k| stored_times(&hub, k).len()).collect();
    let accepted = relay.accepted_requests();
    assert!(!accepted.is_empty(), "the relay saw no accepted request");
    let attacker = UdpSocket::bind("127.0.0.1:0").expect("bind");
    attacker.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut answered = 0;
    for d in accepted.iter().take(20) {
        attacker.send_to(d, hub.coap).expect("send replay");
        let mut buf = [0u8; 1500];
        let Ok((len, _)) = attacker.recv_from(&mut buf) else { continue };
        let p = coap_lite::Packet::from_bytes(&buf[..len]).expect("coap answer");
        // Refused: an unprotected 4.01, or B.2 Response #1 (protected under a one-time context
        // with its own Partial IV and a fresh 'kid context'; its 4.01 is inside). An accepted
        // request's answer would be protected under the request's nonce (no Partial IV).
        let option = p
            .get_first_option(coap_lite::CoapOption::Oscore)
            .map(|v| protocol::oscore::OscoreOption::parse(v).expect("OSCORE option"));
        match option {
            None => assert_eq!(
                p.header.code,
                coap_lite::MessageClass::Response(coap_lite::ResponseType::Unauthorized),
                "a replayed request was not refused"
            ),
            Some(o) => assert!(
                o.piv.is_some() && o.kid_context.as_ref().is_some_and(|c| c.len() == 8),
                "a replayed request was accepted: {o:?}"
            ),
        }
        answered += 1;
    }
    assert!(answered > 0, "no replay was answered");
    let mut later = HashMap::new();
    deliveries(&mut sim, 1, &mut renewed, &mut acked, &mut later);
    // The sensors' own audit of what they sent and received, both hubs: no nonce reused.
    let status: serde_json::Value = sim.until("a fleet status", Duration::from_secs(30), |l| {
        serde_json::from_str(l.strip_prefix("STATUS ")?).ok()
    });
    assert!(status["nonces_audited"].as_u64() > Some(0), "{status}");
    assert_eq!(status["nonce_reuses"], 0, "the sensors saw a nonce reused: {status}");
    drop(sim.terminate());
    // Nothing replayed was stored: what the fleet added since came with new times.
    for (i, kid) in kids.iter().enumerate() {
        let times = stored_times(&hub, kid);
        let unique: HashSet<&(i64, String)> = times.iter().collect();
        assert_eq!(unique.len(), times.len(), "{kid}: a replay was stored");
        assert!(times.len() >= before[i]);
    }
    let audit = relay.audit().expect("audit");
    assert!(audit.audited > 0);
    assert_eq!(audit.reuses, 0, "nonce reuse across the two hubs: {:?}", audit.examples);
    hub.stop();
    let _ = Path::new(&file);
}
