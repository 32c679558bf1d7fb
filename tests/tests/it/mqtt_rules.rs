//! The MQTT fronts' rules at the wire level, against the real hub with a fleet reporting: Wills
//! checked like publications, client ids bound to their user, the broker's own port closed to
//! anything the fronts did not prepare, a storm of Home Assistant birth messages
//! republishing discovery a bounded number of times, retained messages handed over whole and
//! bounded, subscribers that never read costing a bounded heap, the hub's own messages
//! following each client's filters, bounded and never shared, and made-up client ids from many
//! addresses at once never taking another connection's session, across a SIGKILL restart.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tests::{Hub, Sim, free_udp_port, unix_ms, wait_for};

use super::fronts::{MQTT_PASSWORD, MqttPorts, counter, hub_tls, ip};

fn mqtt_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A Will: topic, payload, retained.
type Will<'a> = (&'a str, &'a [u8], bool);

fn connect_packet(id: &str, user: &str, password: &str, will: Option<Will<'_>>) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_string(&mut body, b"MQTT");
    body.push(4);
    let mut flags = 0x80 | 0x40 | 0x02;
    if let Some((_, _, retain)) = will {
        flags |= 0x04 | if retain { 0x20 } else { 0 };
    }
    body.push(flags);
    body.extend_from_slice(&30u16.to_be_bytes());
    mqtt_string(&mut body, id.as_bytes());
    if let Some((topic, payload, _)) = will {
        mqtt_string(&mut body, topic.as_bytes());
        mqtt_string(&mut body, payload);
    }
    mqtt_string(&mut body, user.as_bytes());
    mqtt_string(&mut body, password.as_bytes());
    packet(0x10, &body)
}

/// The same CONNECT asking for a persistent session (clean session flag cleared).
fn persistent(connect: &[u8]) -> Vec<u8> {
    let mut p = connect.to_vec();
    // Fixed header (2 bytes for these short packets), then protocol name and level.
    assert!(p.len() < 130 && p[2..9] == [0, 4, b'M', b'Q', b'T', b'T', 4]);
    p[9] &= !0x02;
    p
}

/// Connects to `port` and sends a CONNECT: the CONNACK's return code (none if the connection
/// was closed without one) and the connection.
fn mqtt_connect(port: u16, connect: &[u8]) -> (Option<u8>, TcpStream) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    s.write_all(connect).expect("CONNECT");
    let mut ack = [0u8; 4];
    let code = s.read_exact(&mut ack).ok().filter(|()| ack[0] == 0x20).map(|()| ack[3]);
    (code, s)
}

fn subscribe_packet(topic: &str) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    mqtt_string(&mut body, topic.as_bytes());
    body.push(0);
    packet(0x82, &body)
}

/// Subscribes to a topic without retained messages (the SUBACK is the next packet).
fn subscribe(s: &mut TcpStream, topic: &str) {
    s.write_all(&subscribe_packet(topic)).expect("SUBSCRIBE");
    let mut ack = [0u8; 5];
    s.read_exact(&mut ack).expect("SUBACK");
    assert_eq!(ack[0], 0x90, "SUBACK");
}

fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_string(&mut body, topic.as_bytes());
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

/// Reads from `s` until `needle` was received (panics at the deadline or if it closes).
fn receive(s: &mut TcpStream, needle: &[u8], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        assert!(Instant::now() < deadline, "{what}: not received");
        match s.read(&mut buf) {
            Ok(0) => panic!("{what}: the connection was closed"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// The retained messages under `filter`, as a fresh subscriber sees them (topic → payload).
fn retained(port: u16, filter: &str) -> HashMap<String, String> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-u", "ha", "-P", MQTT_PASSWORD])
        .args(["-t", filter, "--retained-only", "-W", "2", "-F", "%t|%p"])
        .output()
        .expect("mosquitto_sub");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(t, p)| (t.to_owned(), p.to_owned()))
        .collect()
}

#[test]
fn mqtt_wills_client_ids_and_the_broker_port_follow_the_fronts_rules() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ports = MqttPorts::new();
    let hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &ports.config(""));
    for user in ["ha", "guest", "alice", "bob"] {
        hub.add_mqtt_user(user, Some(MQTT_PASSWORD));
    }
    let mut sim = Sim::fleet(
        &hub.coap.to_string(),
        &hub,
        &tmp.path().join("flash.redb"),
        &["--sensors", "2", "--models", "door,climate", "--interval-ms", "300"],
    );
    let kids = sim.paired(2, Duration::from_secs(60));
    let door = &kids[0];
    let availability = format!("hearth/{door}/availability");
    let state = format!("hearth/{door}/state");
    let config_filter = format!("homeassistant/+/hearth_{door}/+/config");
    let door_configs = wait_for("the door's retained configs", Duration::from_secs(30), || {
        let r = retained(ports.plain, &config_filter);
        (!r.is_empty()).then_some(r)
    });
    let door_config = door_configs.keys().next().expect("a config").clone();
    wait_for("the door online", Duration::from_secs(30), || {
        (retained(ports.plain, &availability).get(&availability)? == "online").then_some(())
    });

    // Retained Wills to the hub's own topics: refused with CONNACK 5 and counted.
    let denied = counter(&hub, "mqtt_denied_publish");
    let fake_lock = "homeassistant/lock/front_door/lock/config";
    let lock_config = br#"{"name":"Front door lock","command_topic":"x/y"}"#.as_slice();
    let forged: [Will<'_>; 5] = [
        (fake_lock, lock_config, true),
        (&door_config, b"", true),
        ("hearth/hub/status", b"offline", true),
        (&availability, b"online", true),
        (&state, br#"{"values":{"contact":false}}"#, true),
    ];
    for (i, will) in forged.iter().enumerate() {
        let (code, _) = mqtt_connect(
            ports.plain,
            &connect_packet(&format!("w{i}"), "guest", MQTT_PASSWORD, Some(*will)),
        );
        assert_eq!(code, Some(5), "Will to {} refused with CONNACK 5", will.0);
    }
    // And over TLS the same.
    let tls = hub_tls(&hub.dir);
    let tcp = TcpStream::connect(("127.0.0.1", ports.tls)).expect("tls front");
    let conn =
        rustls::ClientConnection::new(tls, ServerName::IpAddress(ip(1).into())).expect("tls");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(&connect_packet("wt", "guest", MQTT_PASSWORD, Some(forged[2]))).expect("send");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).expect("CONNACK over TLS");
    assert_eq!(ack, [0x20, 2, 0, 5]);
    wait_for("the refused Wills counted", Duration::from_secs(10), || {
        (counter(&hub, "mqtt_denied_publish") >= denied + 6).then_some(())
    });
    // None of them took effect.
    assert!(retained(ports.plain, "homeassistant/lock/#").is_empty(), "a fake entity was planted");
    assert_eq!(
        retained(ports.plain, "hearth/hub/status").get("hearth/hub/status").map(String::as_str),
        Some("online")
    );
    assert!(retained(ports.plain, &door_config).get(&door_config).is_some_and(|p| !p.is_empty()));
    let log = std::fs::read_to_string(&hub.log).unwrap_or_default();
    assert!(log.contains("DeniedWill"), "the refused Will is logged");

    // A Will to a topic clients may use still works.
    let mut watcher =
        mqtt_connect(ports.plain, &connect_packet("watch", "ha", MQTT_PASSWORD, None));
    assert_eq!(watcher.0, Some(0));
    subscribe(&mut watcher.1, "clients/guest/status");
    let will: Will<'_> = ("clients/guest/status", b"gone-away", false);
    let (code, gone) =
        mqtt_connect(ports.plain, &connect_packet("guest-1", "guest", MQTT_PASSWORD, Some(will)));
    assert_eq!(code, Some(0), "an allowed Will is accepted");
    drop(gone); // no DISCONNECT: the Will is published
    receive(&mut watcher.1, b"gone-away", "the allowed Will");

    // Client ids are bound to their user: bob using alice's id does not take her session.
    let (code, mut alice) =
        mqtt_connect(ports.plain, &connect_packet("kitchen-panel", "alice", MQTT_PASSWORD, None));
    assert_eq!(code, Some(0));
    subscribe(&mut alice, "panel/kitchen");
    let (code, mut bob) =
        mqtt_connect(ports.plain, &connect_packet("kitchen-panel", "bob", MQTT_PASSWORD, None));
    assert_eq!(code, Some(0), "bob gets a session of his own");
    bob.write_all(&publish_packet("panel/kitchen", b"still-there")).expect("publish");
    receive(&mut alice, b"still-there", "alice, after bob used her client id");
    // Her own second connection with that id takes the session over, as MQTT says.
    let (code, _again) =
        mqtt_connect(ports.plain, &connect_packet("kitchen-panel", "alice", MQTT_PASSWORD, None));
    assert_eq!(code, Some(0));
    let mut b = [0u8; 16];
    alice.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let closed = loop {
        match alice.read(&mut b) {
            Ok(0) | Err(_) => break true,
            Ok(_) => {}
        }
    };
    assert!(closed, "the user's own reconnection takes its session over");

    // Persistent sessions keep their client id, at most 16 of them per user (the broker keeps
    // a record of every id it has seen); clean sessions, with made-up ids, are not limited.
    for i in 0..16 {
        let (code, _) = mqtt_connect(
            ports.plain,
            &persistent(&connect_packet(&format!("p{i}"), "bob", MQTT_PASSWORD, None)),
        );
        assert_eq!(code, Some(0), "persistent session {i}");
    }
    let (code, _) =
        mqtt_connect(ports.plain, &persistent(&connect_packet("p16", "bob", MQTT_PASSWORD, None)));
    assert_eq!(code, Some(2), "a 17th persistent-session id is refused (identifier rejected)");
    let (code, _) =
        mqtt_connect(ports.plain, &persistent(&connect_packet("p3", "bob", MQTT_PASSWORD, None)));
    assert_eq!(code, Some(0), "a known one resumes");
    for i in 0..20 {
        let (code, _) = mqtt_connect(
            ports.plain,
            &connect_packet(&format!("mosq-{i}"), "bob", MQTT_PASSWORD, None),
        );
        assert_eq!(code, Some(0), "clean session {i}");
    }
    let (code, _) =
        mqtt_connect(ports.plain, &persistent(&connect_packet("p0", "alice", MQTT_PASSWORD, None)));
    assert_eq!(code, Some(0), "another user's ids are counted apart");

    // The broker's own port takes nothing the fronts did not prepare, right password or not.
    let bypass = counter(&hub, "mqtt_bypass_refused");
    let (code, _) = mqtt_connect(
        ports.broker,
        &connect_packet("direct", "alice", MQTT_PASSWORD, Some(("hearth/hub/status", b"x", true))),
    );
    assert_eq!(code, None, "the broker's port refused a direct client");
    wait_for("the bypass counted", Duration::from_secs(10), || {
        (counter(&hub, "mqtt_bypass_refused") > bypass).then_some(())
    });
    assert_eq!(
        retained(ports.plain, "hearth/hub/status").get("hearth/hub/status").map(String::as_str),
        Some("online")
    );
    sim.stop();
}

#[test]
fn a_birth_message_storm_republishes_discovery_a_bounded_number_of_times() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ports = MqttPorts::new();
    let interval_s = 3;
    let hub = Hub::start_with(
        &tmp.path().join("hub"),
        free_udp_port(),
        &ports.config(&format!("republish_interval_s = {interval_s}\n")),
    );
    hub.add_mqtt_user("ha", Some(MQTT_PASSWORD));
    let mut sim = Sim::fleet(
        &hub.coap.to_string(),
        &hub,
        &tmp.path().join("flash.redb"),
        &["--sensors", "2", "--models", "thermostat,climate", "--interval-ms", "300"],
    );
    sim.paired(2, Duration::from_secs(60));
    // Thermostat: temperature, climate, last command, firmware; climate sensor: temperature,
    // humidity, firmware.
    // And the hub itself: devices online, offline, isolated, security events, anomaly, start.
    let per_round = 7 + 6;
    let (code, mut sub) =
        mqtt_connect(ports.plain, &connect_packet("counter", "ha", MQTT_PASSWORD, None));
    assert_eq!(code, Some(0));
    // Retained configs may come before or after the SUBACK: the reader sorts them out.
    sub.write_all(&subscribe_packet("homeassistant/+/+/+/config")).expect("SUBSCRIBE");
    // Counts config messages (non-empty) arriving on `sub`, with their arrival times.
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let mut reader = sub.try_clone().expect("clone");
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            // Split complete packets; a config PUBLISH has a non-empty payload.
            while let Some((len, header)) = remaining_length(&buf) {
                if buf.len() < header + len {
                    break;
                }
                let p: Vec<u8> = buf.drain(..header + len).collect();
                if p[0] >> 4 == 3 {
                    let topic_len = u16::from_be_bytes([p[header], p[header + 1]]) as usize;
                    let payload = len - 2 - topic_len;
                    if payload > 0 && tx.send(Instant::now()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    for _ in 0..per_round {
        rx.recv_timeout(Duration::from_secs(30)).expect("the retained configs");
    }

    // 200 births as fast as one client can send them.
    let (code, mut storm) =
        mqtt_connect(ports.plain, &connect_packet("storm", "ha", MQTT_PASSWORD, None));
    assert_eq!(code, Some(0));
    let started = Instant::now();
    let births: Vec<u8> =
        (0..200).flat_map(|_| publish_packet("homeassistant/status", b"online")).collect();
    storm.write_all(&births).expect("births");
    let sent_in = started.elapsed();
    // The first republication comes promptly.
    let first = rx.recv_timeout(Duration::from_secs(10)).expect("discovery republished promptly");
    eprintln!("first republished config {:?} after the storm began", first - started);
    // Then at most one more round per interval while births keep coming (here: one).
    let window = Duration::from_secs(interval_s * 3);
    let mut received = 1;
    while let Ok(_t) = rx.recv_timeout(window.saturating_sub(started.elapsed())) {
        received += 1;
        if started.elapsed() >= window {
            break;
        }
    }
    let rounds_allowed = 2 + (sent_in.as_secs() / interval_s) as usize;
    eprintln!("200 births in {sent_in:?}: {received} configs republished (rounds of {per_round})");
    assert!(received >= per_round, "every config was republished: {received}");
    assert!(
        received <= rounds_allowed * per_round,
        "{received} configs for 200 births: at most {rounds_allowed} rounds of {per_round}"
    );
    sim.stop();
}

/// An MQTT packet's remaining length and the fixed header's size, if complete.
fn remaining_length(buf: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for (i, b) in buf.iter().skip(1).take(4).enumerate() {
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((len, i + 2));
        }
    }
    None
}

/// What a fresh QoS 1 subscriber to `filters` gets within `wait_s` seconds: topic → (retained,
/// payload), the last message of each topic.
fn received_qos1(port: u16, filters: &[&str], wait_s: u32) -> HashMap<String, (bool, String)> {
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-u", "ha", "-P", MQTT_PASSWORD]).args([
        "-q",
        "1",
        "-W",
        &wait_s.to_string(),
        "-F",
        "%r|%t|%p",
    ]);
    for f in filters {
        cmd.args(["-t", f]);
    }
    let out = cmd.output().expect("mosquitto_sub");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (retained, rest) = l.split_once('|')?;
            let (t, p) = rest.split_once('|')?;
            Some((t.to_owned(), (retained == "1", p.to_owned())))
        })
        .collect()
}

/// How many devices' states a fresh subscriber gets within 3 s that were measured after it
/// started (live, not a retained copy from before).
fn live_states(port: u16) -> usize {
    let since = unix_ms();
    received_qos1(port, &["hearth/+/state"], 3)
        .values()
        .filter_map(|(_, p)| serde_json::from_str::<serde_json::Value>(p).ok())
        .filter(|s| s["time_ms"].as_i64() >= Some(since))
        .count()
}

/// A hub with the MQTT user `ha` and a fleet of `sensors` reporting every `interval_ms` (not
/// yet paired: the caller waits for that); the temporary directory holds both.
fn hub_with_fleet(sensors: usize, interval_ms: u32) -> (tempfile::TempDir, MqttPorts, Hub, Sim) {
    let tmp = tempfile::tempdir().expect("tmp");
    let ports = MqttPorts::new();
    let hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &ports.config(""));
    hub.add_mqtt_user("ha", Some(MQTT_PASSWORD));
    let sim = Sim::fleet(
        &hub.coap.to_string(),
        &hub,
        &tmp.path().join("flash.redb"),
        &["--sensors", &sensors.to_string(), "--interval-ms", &interval_ms.to_string()],
    );
    (tmp, ports, hub, sim)
}

#[test]
fn a_new_subscriber_gets_every_devices_retained_configs_availability_and_state() {
    // rumqttd handed a new subscriber no more retained messages than its in-flight window
    // (100 at QoS 1): with 50 devices of 3 or more entities, most of Home Assistant's discovery
    // never arrived. The hub's own retained messages now come from the fronts, every one.
    const SENSORS: usize = 50;
    let (_tmp, ports, hub, mut sim) = hub_with_fleet(SENSORS, 500);
    let ids = sim.paired(SENSORS, Duration::from_secs(120));
    wait_for("every device reported", Duration::from_secs(60), || {
        let devices = hub.ctl(&["devices"]);
        let list = devices.as_array()?;
        (list.len() == SENSORS && list.iter().all(|d| d["readings"].as_u64() > Some(0)))
            .then_some(())
    });
    let all = received_qos1(ports.plain, &["homeassistant/#", "hearth/#"], 4);
    // A state that arrived live before its device's retained messages were made is newer than
    // the retained one, which is then left out: states may be either.
    let states: HashMap<&String, &String> =
        all.iter().filter(|(t, _)| t.ends_with("/state")).map(|(t, (_, p))| (t, p)).collect();
    let got: HashMap<String, String> =
        all.iter().filter(|(_, (r, _))| *r).map(|(t, (_, p))| (t.clone(), p.clone())).collect();
    let mut configs_per_device = Vec::new();
    for id in &ids {
        let configs = got
            .keys()
            .filter(|t| t.starts_with("homeassistant/") && t.contains(&format!("/hearth_{id}/")))
            .count();
        configs_per_device.push(configs);
        assert_eq!(
            got.get(&format!("hearth/{id}/availability")).map(String::as_str),
            Some("online")
        );
        let state = states.get(&format!("hearth/{id}/state")).expect("a state");
        let state: serde_json::Value = serde_json::from_str(state).expect("JSON state");
        assert!(state["values"].as_object().is_some_and(|v| !v.is_empty()), "{state}");
    }
    // Every model has at least two entities (a measurement and its firmware).
    assert!(configs_per_device.iter().all(|n| *n >= 2), "{configs_per_device:?}");
    assert_eq!(got.get("hearth/hub/status").map(String::as_str), Some("online"));
    assert!(got.keys().any(|t| t.contains("/hearth_hub/")), "the hub's own configs");
    drop(sim);
}

/// A retained PUBLISH (QoS 0).
fn retained_publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut p = publish_packet(topic, payload);
    p[0] |= 0x01;
    p
}

#[test]
fn clients_retained_messages_are_bounded_and_the_one_beyond_is_refused_and_counted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ports = MqttPorts::new();
    let hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &ports.config(""));
    hub.add_mqtt_user("ha", Some(MQTT_PASSWORD));
    // A retained Will is kept once the client goes away without DISCONNECT.
    let will = Some(("tool/lwt", b"gone".as_slice(), true));
    let (code, lwt) = mqtt_connect(ports.plain, &connect_packet("lwt", "ha", MQTT_PASSWORD, will));
    assert_eq!(code, Some(0));
    drop(lwt);
    wait_for("the retained Will", Duration::from_secs(30), || {
        (retained(ports.plain, "tool/lwt").get("tool/lwt")? == "gone").then_some(())
    });
    // Another tool on the broker keeps a retained message per topic: 10,000 of them fit.
    let (code, mut tool) =
        mqtt_connect(ports.plain, &connect_packet("tool", "ha", MQTT_PASSWORD, None));
    assert_eq!(code, Some(0));
    let burst: Vec<u8> =
        (1..10_000).flat_map(|i| retained_publish(&format!("tool/dev{i}"), b"on")).collect();
    tool.write_all(&burst).expect("9,999 retained PUBLISHes");
    wait_for("10,000 retained messages kept", Duration::from_secs(60), || {
        (retained(ports.plain, "tool/#").len() == 10_000).then_some(())
    });
    // One topic more is refused like a publication the client may not make: counted, and the
    // connection closed.
    let denied = counter(&hub, "mqtt_denied_publish");
    tool.write_all(&retained_publish("tool/one-more", b"on")).expect("PUBLISH");
    let mut rest = [0u8; 64];
    wait_for("the connection closed", Duration::from_secs(20), || {
        matches!(tool.read(&mut rest), Ok(0) | Err(_)).then_some(())
    });
    assert_eq!(counter(&hub, "mqtt_denied_publish"), denied + 1);
    assert!(!retained(ports.plain, "tool/one-more").contains_key("tool/one-more"));
    // Deleting one (an empty retained message) makes room for another.
    let (code, mut tool) =
        mqtt_connect(ports.plain, &connect_packet("tool", "ha", MQTT_PASSWORD, None));
    assert_eq!(code, Some(0));
    tool.write_all(&retained_publish("tool/dev1", b"")).expect("delete");
    tool.write_all(&retained_publish("tool/one-more", b"on")).expect("PUBLISH");
    wait_for("the new topic kept", Duration::from_secs(20), || {
        retained(ports.plain, "tool/one-more").contains_key("tool/one-more").then_some(())
    });
    assert_eq!(counter(&hub, "mqtt_denied_publish"), denied + 1);
    // The hub's own retained messages are not clients' and do not count: still all there.
    assert_eq!(retained(ports.plain, "hearth/hub/status")["hearth/hub/status"], "online");
}

#[test]
fn subscribers_to_everything_that_never_read_cost_a_bounded_heap_and_stop_no_one_else() {
    // Authenticated clients subscribe to `#` at QoS 1 and then read nothing (a hung Home
    // Assistant, a client that lost its network), while a fleet reports at ~2,000 readings/s:
    // whatever the hub keeps for them is bounded (the feed of the hub's messages, a socket
    // buffer, one page in the front), the link keeps acknowledging at the fleet's rate, and a client
    // that reads still gets live states.
    const SENSORS: usize = 50;
    const STALLED: usize = 8;
    let (_tmp, ports, hub, mut sim) = hub_with_fleet(SENSORS, 50);
    sim.paired(SENSORS, Duration::from_secs(120));
    let stored = |hub: &Hub| -> u64 {
        let devices = hub.ctl(&["devices"]);
        devices.as_array().expect("devices").iter().filter_map(|d| d["readings"].as_u64()).sum()
    };
    let heap = |hub: &Hub| hub.ctl(&["status"])["memory"]["heap_bytes"].as_u64().expect("heap");
    // The normal rate, and the heap, with nobody subscribed.
    let (n0, t0) = (stored(&hub), Instant::now());
    std::thread::sleep(Duration::from_secs(5)); // measuring a rate over a fixed span
    let normal = (stored(&hub) - n0) as f64 / t0.elapsed().as_secs_f64();
    let heap_before = heap(&hub);

    let mut stalled = Vec::new();
    for i in 0..STALLED {
        let connect = connect_packet(&format!("stalled-{i}"), "ha", MQTT_PASSWORD, None);
        let (code, mut s) = mqtt_connect(ports.plain, &connect);
        assert_eq!(code, Some(0), "stalled client {i} connects");
        // As little kernel buffer as the client can have: the rest waits in the hub, or not.
        socket2::SockRef::from(&s).set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut body = 1u16.to_be_bytes().to_vec();
        mqtt_string(&mut body, b"#");
        body.push(1);
        s.write_all(&packet(0x82, &body)).expect("SUBSCRIBE");
        stalled.push(s); // never read from again
    }
    let (n1, t1) = (stored(&hub), Instant::now());
    let mut peak = heap_before;
    while t1.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_secs(1)); // sampling the heap once a second
        peak = peak.max(heap(&hub));
    }
    let rate = (stored(&hub) - n1) as f64 / t1.elapsed().as_secs_f64();
    eprintln!(
        "normal {normal:.0}/s, with {STALLED} stalled subscribers {rate:.0}/s; heap {} → peak {} KiB",
        heap_before / 1024,
        peak / 1024
    );
    assert!(rate >= 0.9 * normal, "the link slowed down: {rate:.0}/s against {normal:.0}/s");
    // Unbounded, 30 s of everything the fleet publishes (~300 KB/s) for each stalled client
    // would be ~70 MiB; bounded, the hub's feed (4,096 messages) and a page per client.
    assert!(
        peak < heap_before + (24 << 20),
        "the heap grew from {} to {} KiB with {STALLED} clients not reading",
        heap_before / 1024,
        peak / 1024
    );
    // A client that reads gets live states.
    let live = live_states(ports.plain);
    assert!(live >= SENSORS / 2, "{live} of {SENSORS} devices' states were live");
    drop(stalled);
    drop(sim);
}

/// Connects from `source` (any of 127.0.0.0/8) to `port` and sends a CONNECT; the CONNACK's
/// return code and the connection.
fn mqtt_connect_from(
    source: std::net::IpAddr,
    port: u16,
    connect: &[u8],
) -> (Option<u8>, TcpStream) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&std::net::SocketAddr::new(source, 0).into()).expect("bind the source address");
    socket.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into()).expect("connect");
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    s.write_all(connect).expect("CONNECT");
    let mut ack = [0u8; 4];
    let code = s.read_exact(&mut ack).ok().filter(|()| ack[0] == 0x20).map(|()| ack[3]);
    (code, s)
}

/// A SUBSCRIBE (packet id `pkid`) of `filters` at QoS 0.
fn subscribe_many(pkid: u16, filters: &[String]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for f in filters {
        mqtt_string(&mut body, f.as_bytes());
        body.push(0);
    }
    packet(0x82, &body)
}

#[test]
fn the_hubs_messages_follow_each_clients_filters_which_are_bounded_and_never_shared() {
    // The hub's own messages are written to each client by the front it came through, by the
    // filters the broker granted it: a shared subscription would get them once per member,
    // so it is refused (SUBACK 0x80); a client cannot make every message of the hub's cost a
    // walk over unbounded filters; and none of this slows the link or other clients.
    const SENSORS: usize = 20;
    let (_tmp, ports, hub, mut sim) = hub_with_fleet(SENSORS, 200);
    sim.paired(SENSORS, Duration::from_secs(120));

    // A client connected but subscribed to nothing is not handed the hub's messages meanwhile:
    // when it subscribes, its live messages are new ones, not a backlog from its connection.
    let connect = connect_packet("late", "ha", MQTT_PASSWORD, None);
    let (code, mut late) = mqtt_connect_from(ip(20), ports.plain, &connect);
    assert_eq!(code, Some(0));
    std::thread::sleep(Duration::from_secs(3)); // the fleet publishes ~300 states meanwhile
    let subscribed_at = unix_ms();
    late.write_all(&subscribe_many(3, &["hearth/+/state".to_owned()])).expect("SUBSCRIBE");
    let (mut got, mut buf, mut live) = (Vec::new(), [0u8; 4096], Vec::new());
    late.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        match late.read(&mut buf) {
            Ok(0) => panic!("closed"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        while let Some((len, header)) = remaining_length(&got) {
            if got.len() < header + len {
                break;
            }
            let frame: Vec<u8> = got.drain(..header + len).collect();
            // A live (not retained) QoS 0 PUBLISH: topic length, topic, payload.
            if frame[0] == 0x30 {
                let topic_len = usize::from(u16::from_be_bytes([frame[header], frame[header + 1]]));
                let payload = &frame[header + 2 + topic_len..];
                let state: serde_json::Value = serde_json::from_slice(payload).expect("state");
                live.push(state["time_ms"].as_i64().expect("time_ms"));
            }
        }
    }
    assert!(live.len() >= 20, "{} live states in 2 s", live.len());
    let oldest = live.iter().min().copied().unwrap_or_default();
    assert!(
        oldest >= subscribed_at - 1_000,
        "a live state from {} ms before the SUBSCRIBE",
        subscribed_at - oldest
    );
    drop(late);

    // A shared subscription, even beside an ordinary filter: refused whole, nothing delivered.
    let connect = connect_packet("sharer", "ha", MQTT_PASSWORD, None);
    let (code, mut sharer) = mqtt_connect_from(ip(21), ports.plain, &connect);
    assert_eq!(code, Some(0));
    let filters = ["hearth/+/state".to_owned(), "$share/g/hearth/#".to_owned()];
    sharer.write_all(&subscribe_many(7, &filters)).expect("SUBSCRIBE");
    let mut ack = [0u8; 6];
    sharer.read_exact(&mut ack).expect("SUBACK");
    assert_eq!(ack, [0x90, 4, 0, 7, 0x80, 0x80], "both filters refused");
    sharer.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut buf = [0u8; 1024];
    match sharer.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a refused subscription got something: {other:?}"),
    }

    // Wildcard filters are tried on every message: 1,024 per connection at most.
    let malformed = counter(&hub, "mqtt_malformed");
    let connect = connect_packet("greedy", "ha", MQTT_PASSWORD, None);
    let (code, mut greedy) = mqtt_connect_from(ip(22), ports.plain, &connect);
    assert_eq!(code, Some(0));
    let many: Vec<String> = (0..1024).map(|i| format!("hearth/+/x{i}")).collect();
    greedy.write_all(&subscribe_many(1, &many)).expect("SUBSCRIBE");
    // SUBACK: type, remaining length 1,026 (two bytes), packet id, 1,024 return codes.
    let mut suback = vec![0u8; 5 + 1024];
    greedy.read_exact(&mut suback).expect("SUBACK of 1,024 filters");
    assert_eq!(suback[..5], [0x90, 0x82, 0x08, 0, 1]);
    assert!(suback[5..].iter().all(|c| *c == 0), "all granted");
    greedy.write_all(&subscribe_many(2, &["hearth/+/one-more".to_owned()])).expect("SUBSCRIBE");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "the connection beyond the bound stayed open");
        match greedy.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break, // reset
        }
    }
    wait_for("the refusal counted", Duration::from_secs(10), || {
        (counter(&hub, "mqtt_malformed") > malformed).then_some(())
    });

    // Everyone else is served: a subscriber gets live states of most devices within 3 s.
    let live = live_states(ports.plain);
    assert!(live >= SENSORS / 2, "{live} of {SENSORS} devices' states were live");
    drop(sim);
}

/// Reads one MQTT packet: its first byte and body; none if the connection closed.
fn read_packet(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = Vec::with_capacity(5);
    let (len, _) = loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).ok()?;
        header.push(b[0]);
        if header.len() > 1 && (b[0] & 0x80 == 0 || header.len() == 5) {
            break remaining_length(&header)?;
        }
    };
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((header[0], body))
}

/// Pings `s` and reads up to the PINGRESP: the PUBLISH packets received before it, or none if
/// the connection was closed (its session taken over).
fn publishes_then_pong(s: &mut TcpStream) -> Option<usize> {
    s.write_all(&[0xc0, 0]).ok()?;
    let mut publishes = 0;
    loop {
        match read_packet(s)? {
            (0xd0, _) => return Some(publishes),
            (first, _) if first >> 4 == 3 => publishes += 1,
            _ => {}
        }
    }
}

#[test]
fn clients_with_made_up_ids_from_many_addresses_never_take_each_others_sessions() {
    // The fronts give each clean session a broker id from a pool of slots, reused once free
    // (`mqtt/client_ids.rs`). Were a slot ever handed to two live connections, the broker would
    // take the older one's session over and close it. So: long-lived subscribers, each from its
    // own address, and meanwhile threads opening and closing connections with made-up ids,
    // empty ids and a repeated id, from many addresses at once: two users, three threads each
    // (three unremembered logins of one account at once are checked; a fourth would be refused
    // by design, `admission::throttle`); then a SIGKILL restart, which must not turn the logins
    // being checked at that moment into failures that refuse the next ones, and the same again.
    // Every long-lived subscriber stays connected and keeps getting the sensors' states, every
    // connection is accepted, and the sensors' readings keep being stored.
    const LONG: u8 = 12;
    const CHURN_THREADS: u8 = 6;
    const CHURN_EACH: u8 = 20;
    const SENSORS: usize = 4;
    let (tmp, ports, mut hub, mut sim) = hub_with_fleet(SENSORS, 200);
    sim.paired(SENSORS, Duration::from_secs(60));
    let coap_port = hub.coap.port();
    const USERS: u8 = 2;
    for u in 0..USERS {
        hub.add_mqtt_user(&format!("churn{u}"), Some(MQTT_PASSWORD));
    }
    let stored = |hub: &Hub| -> u64 {
        let devices = hub.ctl(&["devices"]);
        devices.as_array().expect("devices").iter().filter_map(|d| d["readings"].as_u64()).sum()
    };
    for round in 0..2u8 {
        let connect = |source: [u8; 4], user: &str, id: &str| {
            let (code, s) = mqtt_connect_from(
                std::net::Ipv4Addr::from(source).into(),
                ports.plain,
                &connect_packet(id, user, MQTT_PASSWORD, None),
            );
            assert_eq!(code, Some(0), "round {round}: {user} {id:?} from {source:?} accepted");
            s
        };
        let mut long: Vec<TcpStream> = (0..LONG)
            .map(|i| {
                let mut s = connect([127, 10 + round, 0, i + 2], "ha", &format!("panel-{i}"));
                subscribe(&mut s, "hearth/+/state");
                s
            })
            .collect();
        let before = stored(&hub);
        std::thread::scope(|scope| {
            for t in 0..CHURN_THREADS {
                scope.spawn(move || {
                    let user = format!("churn{}", t % USERS);
                    let mut held = Vec::new();
                    for i in 0..CHURN_EACH {
                        let id = match i % 4 {
                            0 => String::new(),
                            1 => format!("the-same-script-{t}"), // one user's, repeated in this thread
                            _ => format!("mosq-{round}-{t}-{i}"),
                        };
                        held.push(connect([127, 20 + round, t, i + 2], &user, &id));
                        // Ids repeat 4 connections apart: every one held is still its own.
                        if held.len() > 3 {
                            let mut old = held.remove(0);
                            let alive = publishes_then_pong(&mut old).is_some();
                            assert!(alive, "round {round}: {user}'s connection {i} taken over");
                        }
                    }
                    for mut s in held {
                        let alive = publishes_then_pong(&mut s).is_some();
                        assert!(alive, "round {round}: {user}'s last connections taken over");
                    }
                });
            }
        });
        for (i, s) in long.iter_mut().enumerate() {
            let got = publishes_then_pong(s);
            assert!(got.is_some(), "round {round}: subscriber {i} was disconnected");
            assert!(got > Some(0), "round {round}: subscriber {i} got no state");
        }
        wait_for("readings stored meanwhile", Duration::from_secs(30), || {
            (stored(&hub) > before).then_some(())
        });
        if round == 0 {
            drop(long);
            hub.kill9();
            hub = Hub::start_with(&tmp.path().join("hub"), coap_port, &ports.config(""));
        }
    }
    sim.stop();
}
