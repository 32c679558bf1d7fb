//! MQTT against a real hub with real clients (Debian's mosquitto clients, PyPI's paho-mqtt):
//! readings over TLS by IP address and by host name, a thermostat setpoint relayed over OSCORE
//! and published back, Home Assistant discovery (checked against HA's documented schema) and
//! its republication, removal of a device's configs, refusal of unauthenticated, wrong-password
//! and forging clients, login throttling, and a plain listener bound to loopback only.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{Hub, Sim, bin, free_udp_port, python, wait_for};

const PASSWORD: &str = "correct-horse-battery-staple";

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

struct Ports {
    plain: u16,
    tls: u16,
    broker: u16,
}

fn mqtt_config(p: &Ports) -> String {
    format!(
        "[mqtt]\nplain_bind = \"127.0.0.1:{}\"\ntls_bind = \"0.0.0.0:{}\"\nbroker_port = {}\n\
         [login]\nfree_failures = 4\nbackoff_base_ms = 1500\nbackoff_max_ms = 3000\n",
        p.plain, p.tls, p.broker
    )
}

/// A running `mosquitto_sub` whose lines (`topic|payload`) can be awaited.
pub(crate) struct Sub {
    child: Child,
    lines: Receiver<String>,
}

impl Sub {
    pub(crate) fn start(args: &[&str]) -> Sub {
        let mut child = Command::new("mosquitto_sub")
            .args(args)
            .args(["-F", "%t|%p"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (Debian mosquitto-clients; bash scripts/test installs it)");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Sub { child, lines }
    }

    /// Lines until `f` returns `Some`, within `timeout`.
    pub(crate) fn until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&str, &str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line =
                self.lines.recv_timeout(left).unwrap_or_else(|_| panic!("timed out: {what}"));
            let (topic, payload) = line.split_once('|').unwrap_or((&line, ""));
            if let Some(v) = f(topic, payload) {
                return v;
            }
        }
    }
}

impl Sub {
    /// The lines received so far and not read yet, as (topic, payload).
    pub(crate) fn received(&self) -> Vec<(String, String)> {
        self.lines
            .try_iter()
            .map(|l| match l.split_once('|') {
                Some((t, p)) => (t.to_owned(), p.to_owned()),
                None => (l, String::new()),
            })
            .collect()
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_args<'a>(
    host: &'a str,
    port: &'a str,
    cafile: &'a str,
    user: &'a str,
    pw: &'a str,
) -> Vec<&'a str> {
    vec!["-h", host, "-p", port, "--cafile", cafile, "-u", user, "-P", pw]
}

/// `mosquitto_pub` once: exit status and stderr.
pub(crate) fn publish(args: &[&str]) -> (bool, String) {
    let out = Command::new("mosquitto_pub").args(args).output().expect("mosquitto_pub");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn mqtt_counters(hub: &Hub) -> Value {
    let s = hub.security();
    serde_json::json!({
        "login_failed": s["mqtt_login_failed"],
        "throttled": s["mqtt_throttled"],
        "denied_publish": s["mqtt_denied_publish"],
    })
}

/// The address a listener on `port` is bound to, from /proc/net/tcp (LISTEN state).
fn listening_address(port: u16) -> Option<IpAddr> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (addr, p) = f.get(1)?.split_once(':')?;
        if u16::from_str_radix(p, 16).ok()? != port || *f.get(3)? != "0A" {
            return None;
        }
        let raw = u32::from_str_radix(addr, 16).ok()?;
        Some(IpAddr::from(raw.to_le_bytes()))
    })
}

/// A non-loopback IPv4 address of this machine, if it has one.
fn other_local_address() -> Option<IpAddr> {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).split_whitespace().find_map(|w| {
        let ip: IpAddr = w.split('/').next()?.parse().ok()?;
        (w.contains('/') && !ip.is_loopback()).then_some(ip)
    })
}

#[test]
fn mqtt_clients_get_readings_discovery_and_commands_and_strangers_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("hub");
    let ports = Ports { plain: free_tcp_port(), tls: free_tcp_port(), broker: free_tcp_port() };
    let hub = Hub::start_with(&data, free_udp_port(), &mqtt_config(&ports));
    let cert = data.join("hub-cert.pem");
    let cafile = cert.to_str().expect("utf-8");
    let (plain, tls) = (ports.plain.to_string(), ports.tls.to_string());

    // No default user: nobody gets in until the owner adds one.
    let (ok, err) = publish(&["-h", "127.0.0.1", "-p", &plain, "-t", "x", "-m", "1"]);
    assert!(!ok && err.contains("bad user name or password"), "{err}");
    assert_eq!(hub.add_mqtt_user("ha", Some(PASSWORD)), serde_json::json!({"added": "ha"}));
    let generated = hub.add_mqtt_user("script", None);
    assert_eq!(generated["password"].as_str().map(str::len), Some(36), "{generated}");
    let users = hub.ctl(&["mqtt-user", "list"]);
    assert_eq!(users.as_array().map(Vec::len), Some(2));
    assert!(!users.to_string().contains("argon2"), "hashes never leave the hub");

    let flash = tmp.path().join("flash.redb");
    let mut sim = Sim::fleet(
        &hub.coap.to_string(),
        &hub,
        &flash,
        &["--sensors", "2", "--interval-ms", "300", "--models", "thermostat,climate"],
    );
    let kids = sim.paired(2, Duration::from_secs(60));
    let (thermo, climate) = (kids[0].clone(), kids[1].clone());

    // Readings over TLS, naming the hub by IP address and by host name.
    for host in ["127.0.0.1", "localhost"] {
        let mut args = tls_args(host, &tls, cafile, "ha", PASSWORD);
        args.extend(["-t", "hearth/+/state"]);
        let sub = Sub::start(&args);
        let mut seen = std::collections::HashSet::new();
        sub.until(&format!("states over TLS via {host}"), Duration::from_secs(30), |topic, p| {
            let v: Value = serde_json::from_str(p).ok()?;
            assert!(v["time_ms"].as_i64().is_some() && v["timestamp"].as_str().is_some(), "{p}");
            assert!(v["values"]["temp"].as_f64().is_some(), "{p}");
            assert_eq!(v["backfill"], false);
            seen.insert(topic.to_owned());
            (seen.len() == 2).then_some(())
        });
    }

    // The hub as a device of its own: its retained state and its discovery configs.
    let mut args = tls_args("127.0.0.1", &tls, cafile, "ha", PASSWORD);
    args.extend(["-t", "hearth/hub/overview", "-t", "homeassistant/+/hearth_hub/+/config"]);
    let sub = Sub::start(&args);
    let mut configs = std::collections::HashSet::new();
    let mut online = false;
    sub.until("the hub's state and configs", Duration::from_secs(30), |topic, p| {
        let v: Value = serde_json::from_str(p).ok()?;
        if topic == "hearth/hub/overview" {
            online |= v["devices_online"] == 2 && v["devices_isolated"] == 0;
            assert!(v["anomalies"].as_array().is_some() && v["started"].is_string(), "{p}");
        } else {
            assert_eq!(v["device"]["identifiers"], serde_json::json!(["hearth_hub"]), "{p}");
            configs.insert(topic.to_owned());
        }
        (online && configs.len() == 6).then_some(())
    });
    drop(sub);

    // A setpoint from mosquitto_pub reaches the thermostat over OSCORE; its new state comes back.
    let mut args = tls_args("127.0.0.1", &tls, cafile, "ha", PASSWORD);
    let state_topic = format!("hearth/{thermo}/state");
    let result_topic = format!("hearth/{thermo}/set/result");
    args.extend(["-t", &state_topic, "-t", &result_topic]);
    let sub = Sub::start(&args);
    sub.until("a thermostat state", Duration::from_secs(30), |t, _| {
        (t == state_topic).then_some(())
    });
    let set_topic = format!("hearth/{thermo}/set");
    let mut pub_args = tls_args("localhost", &tls, cafile, "ha", PASSWORD);
    pub_args.extend(["-t", &set_topic, "-m", "24.5"]);
    let (ok, err) = publish(&pub_args);
    assert!(ok, "{err}");
    let mut queued = false;
    sub.until("the new setpoint published back", Duration::from_secs(30), |t, p| {
        let v: Value = serde_json::from_str(p).ok()?;
        if t == result_topic {
            assert_eq!(v["status"], "queued", "{p}");
            queued = true;
        }
        (t == state_topic && v["values"]["setpoint"].as_f64() == Some(24.5)).then_some(())
    });
    assert!(queued, "the command's result was published");
    sim.until("the simulated thermostat applied it", Duration::from_secs(10), |l| {
        l.starts_with("COMMAND sensor=0 name=setpoint value=24.5 applied=24.5").then_some(())
    });
    // Commands are checked: out of range, or to a device without a setpoint, are refused.
    let climate_set = format!("hearth/{climate}/set");
    let climate_result = format!("hearth/{climate}/set/result");
    let mut args = tls_args("127.0.0.1", &tls, cafile, "ha", PASSWORD);
    args.extend(["-t", &result_topic, "-t", &climate_result]);
    let results = Sub::start(&args);
    wait_for("the result subscription", Duration::from_secs(20), || {
        let mut a = tls_args("127.0.0.1", &tls, cafile, "ha", PASSWORD);
        a.extend(["-t", &set_topic, "-m", "99"]);
        publish(&a);
        results.lines.recv_timeout(Duration::from_millis(300)).ok()
    });
    let mut a = tls_args("127.0.0.1", &tls, cafile, "ha", PASSWORD);
    a.extend(["-t", &climate_set, "-m", "20"]);
    publish(&a);
    results.until("the climate sensor refuses a setpoint", Duration::from_secs(10), |t, p| {
        (t == climate_result && p.contains("refused")).then_some(())
    });

    // Home Assistant discovery through paho-mqtt over TLS: every config fits HA's schema, and
    // all of them come again after HA's birth message.
    let script = r#"
import json, ssl, sys, time
import paho.mqtt.client as mqtt
port, cafile, user, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
want = int(sys.argv[5])
configs, again, phase = {}, set(), [1]
def on_message(c, u, m):
    if not m.topic.endswith("/config") or not m.payload:
        return
    if phase[0] == 1:
        configs[m.topic] = json.loads(m.payload)
    else:
        again.add(m.topic)
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-ha")
c.username_pw_set(user, pw)
c.tls_set(ca_certs=cafile, cert_reqs=ssl.CERT_REQUIRED)
c.on_message = on_message
c.connect("localhost", port)
c.subscribe("homeassistant/#")
c.loop_start()
deadline = time.time() + 30
while len(configs) < want and time.time() < deadline:
    time.sleep(0.05)
phase[0] = 2
c.publish("homeassistant/status", "online")
while len(again) < len(configs) and time.time() < deadline:
    time.sleep(0.05)
c.loop_stop()
print(json.dumps({"configs": configs, "again": sorted(again)}))
"#;
    // Thermostat: temperature, climate, last command, firmware; climate sensor: temperature,
    // humidity, firmware; the hub: devices online, offline, isolated, security events, anomaly,
    // start.
    let out = Command::new(python())
        .args(["-c", script, &tls, cafile, "ha", PASSWORD, "13"])
        .output()
        .expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let configs = v["configs"].as_object().expect("configs");
    assert_eq!(configs.len(), 13, "{:?}", configs.keys());
    for (topic, payload) in configs {
        let problems = hub::schema_problems(topic, payload);
        assert!(problems.is_empty(), "{topic}: {problems:?}");
        let availability = if topic.contains("/hearth_hub/") {
            "hearth/hub/status".to_owned()
        } else {
            let dev = if topic.contains(&thermo) { &thermo } else { &climate };
            format!("hearth/{dev}/availability")
        };
        assert_eq!(payload["availability_topic"], availability, "{topic}");
    }
    let climate_cfg = format!("homeassistant/climate/hearth_{thermo}/thermostat/config");
    assert_eq!(configs[&climate_cfg]["temperature_command_topic"], set_topic);
    assert_eq!(v["again"].as_array().map(Vec::len), Some(13), "republished after HA's birth");

    // Removing a device withdraws its discovery configs (empty retained messages).
    let filter = format!("homeassistant/+/hearth_{climate}/+/config");
    let mut args = tls_args("127.0.0.1", &tls, cafile, "ha", PASSWORD);
    args.extend(["-t", &filter]);
    let cfgs = Sub::start(&args);
    cfgs.until("the climate sensor's retained configs", Duration::from_secs(10), |_, p| {
        (!p.is_empty()).then_some(())
    });
    hub.ctl(&["remove", &climate]);
    let mut cleared = std::collections::HashSet::new();
    cfgs.until("its configs cleared", Duration::from_secs(10), |t, p| {
        if p.is_empty() {
            cleared.insert(t.to_owned());
        }
        (cleared.len() == 3).then_some(())
    });

    // Clients cannot forge the hub's own topics: the connection is closed, and it is counted.
    let mut a = tls_args("127.0.0.1", &tls, cafile, "ha", PASSWORD);
    a.extend(["-t", &state_topic, "-m", "{\"values\":{\"temp\":99}}", "-q", "1"]);
    let (ok, _) = publish(&a);
    assert!(!ok, "a forged state is not acknowledged");
    wait_for("the forgery counted", Duration::from_secs(5), || {
        (mqtt_counters(&hub)["denied_publish"].as_u64() >= Some(1)).then_some(())
    });

    // The plain listener and the broker's own listener are bound to loopback only.
    for port in [ports.plain, ports.broker] {
        assert_eq!(listening_address(port), Some(IpAddr::from([127, 0, 0, 1])), "port {port}");
        if let Some(ip) = other_local_address() {
            let r = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(2));
            assert!(r.is_err(), "port {port} reachable via {ip}");
        }
    }
    // ... and the broker's listener, too, wants a login (no bypass of the fronts' checks).
    let broker = ports.broker.to_string();
    let (ok, _) = publish(&["-h", "127.0.0.1", "-p", &broker, "-t", "x", "-m", "1"]);
    assert!(!ok, "the broker's own listener refuses clients without credentials");

    // Unauthenticated and wrong-password clients are refused; failures are counted; at
    // `free_failures` (4) the address backs off, even for the right password from a client
    // that never logged in (mosquitto_pub picks a new client id each time), then recovers.
    let before = mqtt_counters(&hub)["login_failed"].as_u64().unwrap_or(0);
    let (ok, err) = publish(&["-h", "127.0.0.1", "-p", &plain, "-t", "x", "-m", "1"]);
    assert!(!ok && err.contains("bad user name or password"), "{err}");
    for _ in 0..3 {
        let mut a = tls_args("127.0.0.1", &tls, cafile, "ha", "wrong-password");
        a.extend(["-t", "x", "-m", "1"]);
        let (ok, err) = publish(&a);
        assert!(!ok && err.contains("bad user name or password"), "{err}");
    }
    let failed = mqtt_counters(&hub)["login_failed"].as_u64().unwrap_or(0);
    assert!(failed >= before + 4, "{failed} vs {before}");
    let mut a = tls_args("127.0.0.1", &tls, cafile, "ha", PASSWORD);
    a.extend(["-t", "x", "-m", "1"]);
    let (ok, err) = publish(&a);
    assert!(!ok && err.contains("not authori"), "throttled despite the right password: {err}");
    assert!(mqtt_counters(&hub)["throttled"].as_u64() >= Some(1));
    assert!(hub.security()["total"].as_u64() >= Some(failed));
    wait_for("the back-off to expire", Duration::from_secs(15), || publish(&a).0.then_some(()));
    sim.stop();
    wait_for_log(&hub.log, "MQTT security event");
}

fn wait_for_log(log: &Path, needle: &str) {
    wait_for("the security log line", Duration::from_secs(5), || {
        std::fs::read_to_string(log).ok().filter(|l| l.contains(needle)).map(|_| ())
    });
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!text.contains(PASSWORD), "no password in the log");
}

#[test]
fn an_isolated_device_leaves_mqtt_its_configs_and_state_withdrawn() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut maker = tests::Maker::new(tmp.path());
    let (url, cert) = maker.serve(tmp.path());
    let ports = Ports { plain: free_tcp_port(), tls: free_tcp_port(), broker: free_tcp_port() };
    let extra = format!(
        "[updates]\nfeed_url = \"{url}\"\nfeed_cert = \"{}\"\ncheck_interval_s = 2\n{}\n{}",
        cert.display(),
        maker.trust_toml(&["hearth-button-1"]),
        mqtt_config(&ports)
    );
    let hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &extra);
    hub.add_mqtt_user("ha", Some(PASSWORD));
    // Malformed MQTT (here HTTP) is refused with a disconnect and counted, never a crash.
    let mut s = TcpStream::connect(("127.0.0.1", ports.plain)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n").expect("write");
    let mut buf = [0u8; 16];
    assert_eq!(std::io::Read::read(&mut s, &mut buf).ok(), Some(0), "closed without an answer");
    wait_for("the malformed input counted", Duration::from_secs(5), || {
        (hub.security()["mqtt_malformed"].as_u64() >= Some(1)).then_some(())
    });
    let flash = tmp.path().join("flash.redb");
    let mut sim = Sim::fleet(
        &hub.coap.to_string(),
        &hub,
        &flash,
        &["--sensors", "1", "--models", "button", "--interval-ms", "200"],
    );
    let button = sim.paired(1, Duration::from_secs(60)).remove(0);
    let plain = ports.plain.to_string();
    let (cfg, dev) =
        (format!("homeassistant/+/hearth_{button}/+/config"), format!("hearth/{button}/#"));
    let sub = Sub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &plain,
        "-u",
        "ha",
        "-P",
        PASSWORD,
        "-t",
        &cfg,
        "-t",
        &dev,
    ]);
    let config_topic =
        sub.until("the button's discovery config", Duration::from_secs(30), |t, p| {
            (t.ends_with("/config") && !p.is_empty()).then(|| t.to_owned())
        });
    let state = format!("hearth/{button}/state");
    sub.until("a button state", Duration::from_secs(30), |t, _| (t == state).then_some(()));

    maker.advisory(
        "hearth-button-1",
        1,
        1,
        None,
        "The radio stack accepts unauthenticated frames.",
    );
    let (mut isolated, mut config_gone, mut state_gone) = (false, false, false);
    sub.until(
        "availability isolated, config and state withdrawn",
        Duration::from_secs(30),
        |t, p| {
            isolated |= t.ends_with("/availability") && p == "isolated";
            config_gone |= t == config_topic && p.is_empty();
            state_gone |= t == state && p.is_empty();
            (isolated && config_gone && state_gone).then_some(())
        },
    );
    // From now on nothing of its data leaves: a new subscriber sees only "isolated".
    let fresh = Sub::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &plain,
        "-u",
        "ha",
        "-P",
        PASSWORD,
        "-t",
        &dev,
        "-t",
        &cfg,
    ]);
    let first = fresh.until("the retained availability", Duration::from_secs(10), |t, p| {
        Some((t.to_owned(), p.to_owned()))
    });
    assert_eq!(first, (format!("hearth/{button}/availability"), "isolated".to_owned()));
    // An observation window for absence (the button keeps reporting every 200 ms).
    let settled = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settled {
        if let Ok(l) = fresh.lines.recv_timeout(Duration::from_millis(100)) {
            panic!("an isolated device's data left the hub: {l}");
        }
    }
    assert_eq!(hub.ctl(&["device", &button])["availability"], "isolated");
    sim.stop();
    // The MQTT security counters survive a restart (EN 303 645 5.10-1).
    let (dir, udp) = (hub.dir.clone(), hub.coap.port());
    hub.stop();
    let hub = Hub::start_with(&dir, udp, &extra);
    assert!(hub.security()["mqtt_malformed"].as_u64() >= Some(1), "{}", hub.security());
}

#[test]
fn a_taken_mqtt_port_fails_the_start_with_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Another process holds the broker's port: rumqttd alone would return quietly.
    let squatter = TcpListener::bind("127.0.0.1:0").expect("bind");
    let broker = squatter.local_addr().expect("addr").port();
    // The other two ports are only free when chosen: a test running beside this one may take
    // one before the hub binds it. Such a start names that port; it is tried again with new ones.
    for _attempt in 0..5 {
        let ports = Ports { plain: free_tcp_port(), tls: free_tcp_port(), broker };
        let config = tests::write_config(tmp.path(), free_udp_port(), &mqtt_config(&ports));
        let out = Command::new(bin("hub"))
            .args(["run", "--data-dir"])
            .arg(tmp.path().join("hub"))
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run hub");
        assert!(!out.status.success());
        assert!(!String::from_utf8_lossy(&out.stdout).contains("READY"));
        let err = String::from_utf8_lossy(&out.stderr);
        let raced = [ports.plain, ports.tls].iter().any(|p| err.contains(&format!(":{p}:")));
        if !raced {
            assert!(err.contains(&format!("127.0.0.1:{broker}")), "{err}");
            return;
        }
    }
    panic!("five starts lost their free ports to other tests");
}

#[test]
fn a_client_that_subscribes_again_gets_the_retained_message_again_without_a_gap() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ports = Ports { plain: free_tcp_port(), tls: free_tcp_port(), broker: free_tcp_port() };
    let hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &mqtt_config(&ports));
    hub.add_mqtt_user("ha", Some(PASSWORD));
    // One client subscribes to the hub's retained status and to a live counter another client
    // publishes as fast as it can (QoS 1, 20 in flight); it subscribes to the status 30 more
    // times, every other time together with the counter again, and counts: each SUBSCRIBE
    // brings the retained message, no UNSUBACK reaches it, and the counter has no gap (a front
    // that let the counter's subscription lapse for a moment would lose some of it).
    let script = r#"
import json, os, sys, threading, time
import paho.mqtt.client as mqtt
port, user, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3]
retained, unsubacks, subacks, counter = [], [], [], []
def on_message(c, u, m):
    if m.topic == "hearth/hub/status":
        retained.append((m.retain, m.payload.decode()))
    else:
        counter.append(int(m.payload))
def client(cid):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
    c.username_pw_set(user, pw)
    c.connect("127.0.0.1", port)
    return c
sub = client("resub")
sub.on_message = on_message
sub.on_subscribe = lambda c, u, mid, rc, p: subacks.append(mid)
sub.on_unsubscribe = lambda c, u, mid, rc, p: unsubacks.append(mid)
sub.loop_start()
def wait(cond, what):
    deadline = time.time() + 30
    while not cond():
        if time.time() > deadline:
            print("timed out: " + what, file=sys.stderr, flush=True)
            os._exit(1)
        time.sleep(0.002)
sub.subscribe([("hearth/hub/status", 1), ("test/counter", 1)])
wait(lambda: len(retained) == 1 and len(subacks) == 1, "first retained")
pub = client("counter")
pub.loop_start()
stop = threading.Event()
def publish():
    i = 0
    while not stop.is_set():
        info = pub.publish("test/counter", str(i), qos=1)
        if i % 20 == 19:
            info.wait_for_publish()
        i += 1
threading.Thread(target=publish, daemon=True).start()
wait(lambda: len(counter) > 20, "the counter flowing")
for k in range(30):
    if k % 2:
        sub.subscribe([("hearth/hub/status", 1), ("test/counter", 1)])
    else:
        sub.subscribe("hearth/hub/status", k % 4 // 2)
    wait(lambda: len(retained) == k + 2 and len(subacks) == k + 2, "retained after subscribe %d" % (k + 2))
n = len(counter)
wait(lambda: len(counter) > n + 20, "the counter still flowing")
stop.set()
time.sleep(0.3)
print(json.dumps({"retained": retained, "unsubacks": unsubacks, "subacks": len(subacks),
                  "counter": counter}))
"#;
    let out = Command::new(python())
        .args(["-c", script, &ports.plain.to_string(), "ha", PASSWORD])
        .output()
        .expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let retained = v["retained"].as_array().expect("retained");
    assert_eq!(retained.len(), 31, "{v}");
    assert!(retained.iter().all(|r| r == &serde_json::json!([true, "online"])), "{v}");
    assert_eq!(v["unsubacks"], serde_json::json!([]), "no UNSUBACK reached the client");
    assert_eq!(v["subacks"], 31);
    let counter: Vec<i64> =
        v["counter"].as_array().expect("counter").iter().filter_map(Value::as_i64).collect();
    let first = counter[0];
    let gaps: Vec<(usize, i64)> = counter
        .iter()
        .enumerate()
        .filter(|(i, c)| **c != first + *i as i64)
        .map(|(i, c)| (i, *c))
        .take(5)
        .collect();
    assert!(gaps.is_empty(), "the live flow had a gap or repeat: {gaps:?} of {}", counter.len());
}

#[test]
fn normal_disconnects_log_no_error_and_mqtt_31_clients_are_refused_with_code_1() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ports = Ports { plain: free_tcp_port(), tls: free_tcp_port(), broker: free_tcp_port() };
    let hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &mqtt_config(&ports));
    hub.add_mqtt_user("script", Some(PASSWORD));
    let plain = ports.plain.to_string();
    let base = ["-h", "127.0.0.1", "-p", &plain, "-u", "script", "-P", PASSWORD];
    // Short connections that end with DISCONNECT, as scripts make them.
    for i in 0..5 {
        let mut args = base.to_vec();
        let m = i.to_string();
        args.extend(["-t", "scripts/x", "-m", &m]);
        let (ok, err) = publish(&args);
        assert!(ok, "{err}");
    }
    // An MQTT 3.1 client (Debian's mosquitto_pub speaking 3.1) is told its version is not
    // served (CONNACK return code 1), not counted as malformed input.
    let before = hub.security()["mqtt_malformed"].as_u64().unwrap_or(0);
    let mut args = base.to_vec();
    args.extend(["-V", "mqttv31", "-t", "scripts/x", "-m", "old"]);
    let (ok, err) = publish(&args);
    assert!(!ok && err.contains("unacceptable protocol version"), "{err}");
    assert_eq!(hub.security()["mqtt_malformed"].as_u64().unwrap_or(0), before);
    // Another connection after them all, seen by a subscriber: the broker's router handles
    // events in order, so it has handled the earlier disconnections by then.
    let mut args = base.to_vec();
    args.extend(["-t", "scripts/x"]);
    let sub = Sub::start(&args);
    wait_for("the subscriber", Duration::from_secs(20), || {
        let mut a = base.to_vec();
        a.extend(["-t", "scripts/x", "-m", "last"]);
        assert!(publish(&a).0);
        sub.lines.recv_timeout(Duration::from_millis(300)).ok()
    });
    let log = std::fs::read_to_string(&hub.log).expect("hub log");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

/// After a sensor installs an update, Home Assistant's device block carries the new firmware:
/// every discovery config of the device is published again with `sw_version` "2", and again
/// with it after a hub restart (the directory keeps the version the sensor paired with).
#[test]
fn discovery_configs_carry_the_installed_firmware_after_an_update_and_a_restart() {
    const THERMO: &str = "hearth-thermo-1";
    let tmp = tempfile::tempdir().expect("tmp");
    let ports = Ports { plain: free_tcp_port(), tls: free_tcp_port(), broker: free_tcp_port() };
    let maker = tests::Maker::new(tmp.path());
    let extra = format!("{}{}", mqtt_config(&ports), maker.trust_toml(&[THERMO]));
    let hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &extra);
    hub.add_mqtt_user("ha", Some(PASSWORD));
    let keys = maker.keys.display().to_string();
    let flash = tmp.path().join("flash.redb");
    let args = ["--sensors", "1", "--models", "thermostat", "--interval-ms", "300"];
    let mut sim = Sim::fleet(
        &hub.coap.to_string(),
        &hub,
        &flash,
        &[&args[..], &["--maker-keys", &keys]].concat(),
    );
    let id = sim.paired(1, Duration::from_secs(120)).remove(0);
    let plain = ports.plain.to_string();
    let filter = format!("homeassistant/+/hearth_{id}/+/config");
    let sub_args = ["-h", "127.0.0.1", "-p", &plain, "-u", "ha", "-P", PASSWORD, "-t", &filter];
    // The device's configs, as the newest of each topic: their sw_version, once all have `want`.
    let configs = |sub: &Sub, want: &str| {
        let mut by_topic = std::collections::BTreeMap::new();
        sub.until(
            &format!("every config with sw_version {want}"),
            Duration::from_secs(120),
            |t, p| {
                let v: Value = serde_json::from_str(p).ok()?;
                by_topic.insert(t.to_owned(), v["device"]["sw_version"].clone());
                // Temperature, thermostat, its command's outcome, firmware.
                (by_topic.len() >= 4 && by_topic.values().all(|s| s == want)).then_some(())
            },
        );
        by_topic
    };
    let sub = Sub::start(&sub_args);
    let before = configs(&sub, "1");
    maker.publish(THERMO, 2, 8 * 1024, &[]);
    let (m, i) = maker.files(THERMO, 2);
    hub.update_add(&m, &i).expect("the hub takes the release");
    sim.until("v2 installed", Duration::from_secs(180), |l| {
        (l.starts_with("UPDATED") && tests::field(l, "outcome") == Some("Installed")).then_some(())
    });
    let after = configs(&sub, "2");
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
    drop(sub);
    // After a restart, the configs the hub publishes at start carry it too.
    let coap = hub.coap.port();
    hub.stop();
    let _hub = Hub::start_with(&tmp.path().join("hub"), coap, &extra);
    let sub = Sub::start(&sub_args);
    let again = configs(&sub, "2");
    assert_eq!(again.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
}

#[test]
fn a_device_reporting_faster_than_its_pace_has_its_states_spaced_and_every_reading_delivered() {
    // One sensor reporting 50 times a second: its states go out at the pace (a burst of 10,
    // then 5 a second, hub/src/mqtt/pace.rs), and every reading the hub stored reaches the
    // subscriber, as a state or in a `…/history` array.
    let tmp = tempfile::tempdir().expect("tmp");
    let ports = Ports { plain: free_tcp_port(), tls: free_tcp_port(), broker: free_tcp_port() };
    let (dir, coap) = (tmp.path().join("hub"), free_udp_port());
    let mut hub = Hub::start_with(&dir, coap, &mqtt_config(&ports));
    hub.add_mqtt_user("ha", Some(PASSWORD));
    let flash = tmp.path().join("flash.redb");
    let mut sim = Sim::fleet(
        &hub.coap.to_string(),
        &hub,
        &flash,
        &["--sensors", "1", "--models", "climate", "--interval-ms", "20"],
    );
    let id = sim.paired(1, Duration::from_secs(60)).remove(0);
    let plain = ports.plain.to_string();
    let (state, history) = (format!("hearth/{id}/state"), format!("hearth/{id}/history"));
    let args = ["-h", "127.0.0.1", "-p", &plain, "-u", "ha", "-P", PASSWORD, "-q", "1"];
    let sub = Sub::start(&[&args[..], &["-t", &state, "-t", &history]].concat());
    // The window: from a live state to one measured 6 s later.
    #[derive(Default)]
    struct Seen {
        device: String,
        states: Vec<i64>,
        in_history: Vec<i64>,
        history_messages: usize,
    }
    impl Seen {
        fn take(&mut self, history: bool, p: &str) {
            let v: Value = serde_json::from_str(p).unwrap_or_else(|e| panic!("{e}: {p}"));
            if history {
                assert_eq!(v["device"].as_str(), Some(self.device.as_str()), "{p}");
                let list = v["readings"].as_array().unwrap_or_else(|| panic!("no readings: {p}"));
                assert!(!list.is_empty(), "an empty history message");
                self.in_history.extend(list.iter().map(|m| m["time_ms"].as_i64().expect("time")));
                self.history_messages += 1;
            } else {
                self.states.push(v["time_ms"].as_i64().expect("time_ms"));
            }
        }
        /// A state message's time, if it was one.
        fn state(&mut self, history: bool, p: &str) -> Option<i64> {
            self.take(history, p);
            (!history).then(|| self.states.last().copied()).flatten()
        }
    }
    let mut seen = Seen { device: id.clone(), ..Seen::default() };
    let since = tests::unix_ms();
    let start = sub.until("a live state", Duration::from_secs(30), |t, p| {
        seen.state(t == history, p).filter(|&s| s >= since)
    });
    let (first_state, first_history) = (seen.states.len(), seen.history_messages);
    let end = sub.until("a state 6 s later", Duration::from_secs(30), |t, p| {
        seen.state(t == history, p).filter(|&s| s >= start + 6_000)
    });
    // Spaced: 6 s at 5 a second (+ the burst it may have saved), far fewer than the ~300 reports.
    let spaced = seen.states.len() - first_state;
    assert!((10..=41).contains(&spaced), "{spaced} states in 6 s");
    let histories = seen.history_messages - first_history;
    eprintln!("{spaced} states and {histories} history messages in 6 s");
    assert!((3..=8).contains(&histories), "{histories} history messages in 6 s");
    // Every reading stored within the window arrives (in history within a second and a tick).
    let stored: std::collections::BTreeSet<i64> = hub
        .ctl(&["readings", &id, "--limit", "100000"])
        .as_array()
        .expect("readings")
        .iter()
        .filter_map(|r| r["time_ms"].as_i64())
        .filter(|t| (start..=end).contains(t))
        .collect();
    assert!(stored.len() > 200, "the sensor reported {} times in 6 s", stored.len());
    let missing = |seen: &Seen| {
        let got: std::collections::BTreeSet<i64> =
            seen.states.iter().chain(&seen.in_history).copied().collect();
        stored.difference(&got).count()
    };
    if missing(&seen) > 0 {
        sub.until("every reading of the window", Duration::from_secs(10), |t, p| {
            seen.take(t == history, p);
            (missing(&seen) == 0).then_some(())
        });
    }
    // States only ever get newer.
    let states = &seen.states;
    assert!(states.windows(2).all(|w| w[1] > w[0]), "a state went back: {states:?}");

    // A clean stop while the sensor reports: what waited for the pace (the owed state, up to a
    // second of history) goes out before the fronts close, and so does the hub's `offline`.
    let status = Sub::start(&[&args[..], &["-t", "hearth/hub/status"]].concat());
    status.until("the hub online", Duration::from_secs(30), |_, p| (p == "online").then_some(()));
    let stopped_ms = tests::unix_ms();
    let exit = hub.terminate_within(Duration::from_secs(30));
    assert!(exit.is_some_and(|s| s.success()), "a clean stop: {exit:?}");
    status.until("offline at the stop", Duration::from_secs(10), |_, p| {
        (p == "offline").then_some(())
    });
    drop(sim);
    // Every reading stored from the window's start until just before the stop (later ones may
    // have been stored as the bridge stopped, never to be published) reached the subscriber.
    let hub = Hub::start_with(&dir, coap, &mqtt_config(&ports));
    let stored: std::collections::BTreeSet<i64> = hub
        .ctl(&["readings", &id, "--limit", "100000"])
        .as_array()
        .expect("readings")
        .iter()
        .filter_map(|r| r["time_ms"].as_i64())
        .filter(|t| (start..stopped_ms - 200).contains(t))
        .collect();
    let missing = |seen: &Seen| {
        let got: std::collections::BTreeSet<i64> =
            seen.states.iter().chain(&seen.in_history).copied().collect();
        stored.difference(&got).copied().collect::<Vec<_>>()
    };
    for (t, p) in sub.received() {
        seen.take(t == history, &p);
    }
    let lost = missing(&seen);
    assert!(lost.is_empty(), "{} readings stored before the stop never reached MQTT", lost.len());
}
