//! The upstream bridge against a real broker (Debian's mosquitto, started by the test on
//! loopback with TLS and a password file): readings reach it exactly once and in order across a
//! broker restart while the hub keeps working locally; the outbox bound drops the oldest; a
//! broker certificate that does not check out (another CA, another name) is refused, counted
//! and logged at warn, once a minute.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{Hub, Sim, free_udp_port, wait_for};

const PREFIX: &str = "hearth/test";

/// mosquitto from PATH, or where Debian puts it.
fn mosquitto() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("mosquitto")).find(|p| p.is_file()));
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"))
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

/// A broker's files: configuration (TLS listener on loopback, password file, persistence).
struct Broker {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    fn new(dir: &Path) -> Broker {
        std::fs::create_dir_all(dir).expect("broker dir");
        let tls = sensor_sim::maker::feed_tls(&dir.join("tls"), &["127.0.0.1"]).expect("cert");
        std::fs::write(dir.join("cert.pem"), &tls.cert_pem).expect("cert");
        std::fs::write(dir.join("key.pem"), &tls.key_pem).expect("key");
        let passwd = dir.join("passwd");
        for (i, (user, pass)) in [("hub", "hub-secret"), ("sub", "sub-secret")].iter().enumerate() {
            let mut cmd = Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let ok = cmd.arg("-b").arg(&passwd).args([user, pass]).status().expect("passwd");
            assert!(ok.success(), "mosquitto_passwd failed");
        }
        let port = free_tcp_port();
        // As root, mosquitto would switch to the `mosquitto` user, who cannot read these files.
        let user = std::env::var("USER").ok().filter(|u| !u.is_empty());
        let user = match user {
            Some(u) => u,
            None => {
                String::from_utf8_lossy(&Command::new("id").arg("-un").output().expect("id").stdout)
                    .trim()
                    .to_string()
            }
        };
        let d = dir.display();
        let conf = format!(
            "user {user}\nper_listener_settings false\nallow_anonymous false\n\
             password_file {d}/passwd\npersistence true\npersistence_location {d}/\n\
             persistence_file mosquitto.db\nmax_queued_messages 1000000\n\
             log_dest file {d}/mosquitto.log\nlog_type all\n\
             listener {port} 127.0.0.1\ncertfile {d}/cert.pem\nkeyfile {d}/key.pem\n"
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).expect("conf");
        Broker { dir: dir.to_path_buf(), port, child: None }
    }

    fn start(&mut self) {
        let child = Command::new(mosquitto())
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (install Debian's mosquitto: scripts/test does)");
        self.child = Some(child);
        let port = self.port;
        wait_for("mosquitto listening", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    /// SIGTERM (it saves its persistence file) and wait.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    fn cafile(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// The hub's `[upstream]` section (password in a 0600 file).
    fn hub_config(&self, extra: &str) -> String {
        let pw = self.dir.join("hub.pw");
        std::fs::write(&pw, "hub-secret\n").expect("pw");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        format!(
            "[upstream]\nurl = \"mqtts://127.0.0.1:{}\"\nusername = \"hub\"\npassword_file = \"{}\"\n\
             ca_cert = \"{}\"\ntopic_prefix = \"{PREFIX}\"\nclient_id = \"hearth-test\"\n\
             reconnect_max_ms = 1000\n{extra}",
            self.port,
            pw.display(),
            self.cafile().display()
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `mosquitto_sub` with a persistent session (QoS 2) on the hub's readings.
struct Subscriber {
    child: Child,
    lines: Receiver<String>,
    messages: Vec<Value>,
    port: u16,
    dir: PathBuf,
    /// Times it exited and was started again (same persistent session).
    restarts: usize,
}

/// Starts `mosquitto_sub` (stderr to `sub.err` in the broker's directory) and a line reader.
fn spawn_sub(port: u16, dir: &Path) -> (Child, Receiver<String>) {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("sub.err"))
        .expect("sub.err");
    // Line-buffered: its debug lines (SUBACK) are not flushed otherwise.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .arg("--cafile")
        .arg(dir.join("cert.pem"))
        // The certificate names 127.0.0.1; libmosquitto checks host names only.
        .arg("--insecure")
        .args(["-u", "sub", "-P", "sub-secret", "-i", "test-sub", "-c", "-q", "2", "-d"])
        .args(["-t", &format!("{PREFIX}/+/reading")])
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("mosquitto_sub");
    let out = child.stdout.take().expect("stdout");
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, lines)
}

impl Subscriber {
    /// Connects and waits for its SUBACK.
    fn start(broker: &Broker) -> Subscriber {
        let (child, lines) = spawn_sub(broker.port, &broker.dir);
        let (port, dir) = (broker.port, broker.dir.clone());
        let mut sub = Subscriber { child, lines, messages: Vec::new(), port, dir, restarts: 0 };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = sub.lines.recv_timeout(left).expect("mosquitto_sub subscribed");
            if line.contains("SUBACK") {
                break;
            }
            sub.take(line);
        }
        sub
    }

    fn take(&mut self, line: String) {
        if line.starts_with('{') {
            self.messages.push(serde_json::from_str(&line).expect("json payload"));
        }
    }

    /// mosquitto_sub sometimes exits when its broker goes away instead of reconnecting: start
    /// it again (its session, with what was queued for it, is kept by the broker; libmosquitto
    /// hands a QoS 2 message over on PUBREL, so a restart cannot duplicate one).
    fn revive(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            // Everything it printed, to the pipe's end: its reader may not have read its last
            // lines yet (taking only what had arrived lost them, and with them readings the
            // broker had already handed over). The reader ends at end of file, as it exited.
            let (child, lines) = spawn_sub(self.port, &self.dir);
            let old = std::mem::replace(&mut self.lines, lines);
            for l in old.iter() {
                self.take(l);
            }
            self.child = child;
            self.restarts += 1;
        }
    }

    /// Takes what arrived (payload lines are JSON; debug lines are not).
    fn drain(&mut self) -> usize {
        self.revive();
        while let Ok(l) = self.lines.try_recv() {
            self.take(l);
        }
        self.messages.len()
    }

    /// Whether nothing more arrives for `quiet` (what does arrive is taken).
    fn quiet_for(&mut self, quiet: Duration) -> bool {
        self.revive();
        match self.lines.recv_timeout(quiet) {
            Ok(l) => {
                self.take(l);
                false
            }
            Err(_) => true,
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn upstream(hub: &Hub) -> Value {
    hub.ctl(&["upstream"])
}

fn stored_total(hub: &Hub) -> u64 {
    let devices = hub.ctl(&["devices"]);
    devices.as_array().expect("devices").iter().map(|d| d["readings"].as_u64().unwrap_or(0)).sum()
}

/// The hub's stored readings per device: (time, name, value).
fn stored(hub: &Hub, kids: &[String]) -> HashMap<String, Vec<(i64, String, String)>> {
    kids.iter()
        .map(|kid| {
            let r = hub.ctl(&["readings", kid, "--limit", "100000"]);
            let v = r
                .as_array()
                .expect("readings")
                .iter()
                .map(|x| key(x, "time_ms"))
                .collect::<Vec<_>>();
            (kid.clone(), v)
        })
        .collect()
}

fn key(x: &Value, time: &str) -> (i64, String, String) {
    (
        x[time].as_i64().expect("time"),
        x["name"].as_str().expect("name").to_string(),
        x["value"].to_string(),
    )
}

/// Checks the subscriber's messages: each once (by outbox id and by content), in outbox order
/// per device, with the device's topic; returns them per device.
fn received_once_in_order(messages: &[Value]) -> HashMap<String, Vec<(i64, String, String)>> {
    let mut ids = BTreeSet::new();
    let mut last: HashMap<String, (u64, u64)> = HashMap::new();
    let mut out: HashMap<String, Vec<(i64, String, String)>> = HashMap::new();
    for m in messages {
        let device = m["device"].as_str().expect("device").to_string();
        let id = (m["seq"].as_u64().expect("seq"), m["index"].as_u64().expect("index"));
        assert!(ids.insert(id), "outbox id {id:?} received twice: {m}");
        if let Some(prev) = last.insert(device.clone(), id) {
            assert!(prev < id, "device {device}: {id:?} after {prev:?}");
        }
        out.entry(device).or_default().push(key(m, "time_ms"));
    }
    for (device, v) in &out {
        let unique: BTreeSet<_> = v.iter().collect();
        assert_eq!(unique.len(), v.len(), "device {device}: a reading received twice");
    }
    out
}

fn sorted(mut v: Vec<(i64, String, String)>) -> Vec<(i64, String, String)> {
    v.sort();
    v
}

#[test]
fn every_reading_reaches_the_broker_once_in_order_across_a_broker_restart() {
    const SENSORS: usize = 20;
    let tmp = tempfile::tempdir().expect("tmp");
    let mut broker = Broker::new(&tmp.path().join("broker"));
    broker.start();
    let mut sub = Subscriber::start(&broker);
    let hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &broker.hub_config(""));
    wait_for("the hub connected upstream", Duration::from_secs(30), || {
        (upstream(&hub)["connected"] == true).then_some(())
    });
    let flash = tmp.path().join("flash.redb");
    let mut sim = Sim::fleet(
        &hub.coap.to_string(),
        &hub,
        &flash,
        &["--sensors", &SENSORS.to_string(), "--interval-ms", "100"],
    );
    let kids = sim.paired(SENSORS, Duration::from_secs(60));
    wait_for("readings forwarded", Duration::from_secs(30), || {
        (upstream(&hub)["forwarded"].as_u64() >= Some(200)).then_some(())
    });

    // The broker goes away: the hub notices, its outbox grows, and it keeps working locally.
    broker.stop();
    wait_for("disconnected with a growing outbox", Duration::from_secs(30), || {
        let u = upstream(&hub);
        (u["connected"] == false && u["pending"].as_u64() >= Some(300)).then_some(())
    });
    let stored_then = stored_total(&hub);
    wait_for("readings still stored locally", Duration::from_secs(30), || {
        (stored_total(&hub) >= stored_then + 200).then_some(())
    });
    let devices = hub.ctl(&["devices"]);
    assert_eq!(devices.as_array().map(Vec::len), Some(SENSORS), "hub ctl devices works");
    sim.drain();

    // Back: the outbox drains, the backlog first (it is older in the log than live readings).
    let backlog = upstream(&hub);
    let (forwarded, pending) =
        (backlog["forwarded"].as_u64().expect("n"), backlog["pending"].as_u64().expect("n"));
    broker.start();
    let restarted = Instant::now();
    wait_for("reconnected and the backlog forwarded", Duration::from_secs(60), || {
        let u = upstream(&hub);
        (u["connected"] == true && u["forwarded"].as_u64() >= Some(forwarded + pending))
            .then_some(())
    });
    let backlog_s = restarted.elapsed().as_secs_f64();
    drop(sim.stop());
    let started = Instant::now();
    let done = wait_for("the outbox drained", Duration::from_secs(60), || {
        let u = upstream(&hub);
        (u["pending"] == 0 && u["in_flight"] == 0).then_some(u)
    });
    let total = stored_total(&hub);
    assert_eq!(done["dropped"], 0, "{done}");
    assert_eq!(done["forwarded"].as_u64(), Some(total), "{done}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while (sub.drain() as u64) < total {
        if Instant::now() > deadline {
            let keep = tmp.keep();
            panic!(
                "the subscriber has {} of {total} readings ({done}); files in {}",
                sub.messages.len(),
                keep.display()
            );
        }
        sub.quiet_for(Duration::from_millis(100));
    }
    // A duplicate would arrive right behind: wait until the subscriber is quiet.
    wait_for("no more messages", Duration::from_secs(20), || {
        sub.quiet_for(Duration::from_millis(500)).then_some(())
    });
    let received = received_once_in_order(&sub.messages);
    assert_eq!(sub.messages.len() as u64, total, "messages beyond the stored readings");
    let stored = stored(&hub, &kids);
    for kid in &kids {
        let got = sorted(received.get(kid).cloned().unwrap_or_default());
        assert_eq!(got, sorted(stored[kid].clone()), "device {kid}: broker and hub differ");
    }
    eprintln!(
        "upstream: {total} readings of {SENSORS} sensors; a backlog of {pending} forwarded \
         {backlog_s:.2} s after the broker's restart (reconnection included); the rest \
         {:?} after the fleet stopped; the subscriber was restarted {} times",
        started.elapsed(),
        sub.restarts
    );
}

#[test]
fn a_full_outbox_drops_the_oldest_and_counts_them() {
    const SENSORS: usize = 5;
    const MAX_PENDING: u64 = 60;
    let tmp = tempfile::tempdir().expect("tmp");
    let mut broker = Broker::new(&tmp.path().join("broker"));
    // The subscriber's session exists before the hub ever connects.
    broker.start();
    drop(Subscriber::start(&broker));
    broker.stop();

    let config = broker.hub_config(&format!("max_pending = {MAX_PENDING}\n"));
    let hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &config);
    let flash = tmp.path().join("flash.redb");
    let mut sim = Sim::fleet(
        &hub.coap.to_string(),
        &hub,
        &flash,
        &["--sensors", &SENSORS.to_string(), "--interval-ms", "100"],
    );
    let kids = sim.paired(SENSORS, Duration::from_secs(60));
    wait_for("readings dropped beyond the bound", Duration::from_secs(60), || {
        let u = upstream(&hub);
        (u["dropped"].as_u64() >= Some(3 * MAX_PENDING)).then_some(())
    });
    drop(sim.stop());
    // Quiet: the last datagrams of the fleet are stored and the bound applied to them.
    let mut last = (Value::Null, 0, Instant::now());
    let before = wait_for("the bound holds and nothing changes", Duration::from_secs(20), || {
        let (u, total) = (upstream(&hub), stored_total(&hub));
        let same = (u["dropped"] == last.0["dropped"] && total == last.1).then_some(last.2);
        if same.is_none() {
            last = (u.clone(), total, Instant::now());
        }
        let settled = same.is_some_and(|t| t.elapsed() >= Duration::from_millis(600));
        (settled && u["pending"].as_u64() <= Some(MAX_PENDING)).then_some(u)
    });
    assert_eq!(before["connected"], false);
    let dropped = before["dropped"].as_u64().expect("dropped");
    let total = stored_total(&hub);

    let mut sub_broker = broker;
    sub_broker.start();
    let done = wait_for("the rest forwarded", Duration::from_secs(30), || {
        let u = upstream(&hub);
        (u["pending"] == 0 && u["in_flight"] == 0 && u["connected"] == true).then_some(u)
    });
    if done["dropped"].as_u64() != Some(dropped) {
        let log = std::fs::read_to_string(&hub.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("upstream")).collect();
        panic!("more dropped once connected: {before} then {done}; log:\n{}", lines.join("\n"));
    }
    let forwarded = done["forwarded"].as_u64().expect("forwarded");
    assert_eq!(forwarded + dropped, total, "every stored reading forwarded or counted: {done}");
    let mut sub = Subscriber::start(&sub_broker);
    wait_for("the subscriber has the forwarded readings", Duration::from_secs(30), || {
        (sub.drain() as u64 >= forwarded).then_some(())
    });
    wait_for("no more messages", Duration::from_secs(20), || {
        sub.quiet_for(Duration::from_millis(500)).then_some(())
    });
    let received = received_once_in_order(&sub.messages);
    assert_eq!(sub.messages.len() as u64, forwarded);
    // The newest were kept: per device, what arrived is the newest of what is stored.
    let stored = stored(&hub, &kids);
    let mut kept_any = BTreeMap::new();
    for kid in &kids {
        let all = sorted(stored[kid].clone());
        let got = sorted(received.get(kid).cloned().unwrap_or_default());
        assert_eq!(got[..], all[all.len() - got.len()..], "device {kid}: not the newest kept");
        kept_any.insert(kid.clone(), got.len());
    }
    assert!(kept_any.values().sum::<usize>() as u64 <= MAX_PENDING + 64, "{kept_any:?}");
}

/// `pending` is what the broker will still get (issue 19 item 5): a device removed while its
/// readings wait in the outbox takes them out of the count and out of what is sent, and once
/// the broker is back exactly `pending` more readings are forwarded.
#[test]
fn pending_counts_what_will_be_forwarded_after_a_device_is_removed() {
    const SENSORS: usize = 3;
    let tmp = tempfile::tempdir().expect("tmp");
    let mut broker = Broker::new(&tmp.path().join("broker"));
    broker.start();
    let hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &broker.hub_config(""));
    wait_for("the hub connected upstream", Duration::from_secs(30), || {
        (upstream(&hub)["connected"] == true).then_some(())
    });
    let mut sim = Sim::fleet(
        &hub.coap.to_string(),
        &hub,
        &tmp.path().join("flash.redb"),
        &["--sensors", &SENSORS.to_string(), "--interval-ms", "100"],
    );
    let kids = sim.paired(SENSORS, Duration::from_secs(60));
    wait_for("readings forwarded", Duration::from_secs(30), || {
        (upstream(&hub)["forwarded"].as_u64() >= Some(30)).then_some(())
    });
    broker.stop();
    wait_for("disconnected with readings waiting", Duration::from_secs(30), || {
        let u = upstream(&hub);
        (u["connected"] == false && u["pending"].as_u64() >= Some(60)).then_some(())
    });
    drop(sim.stop());
    let quiet = |hub: &Hub| {
        let mut last = (u64::MAX, Instant::now());
        wait_for("the outbox stops changing", Duration::from_secs(30), || {
            let u = upstream(hub);
            let p = u["pending"].as_u64().expect("pending");
            if p != last.0 {
                last = (p, Instant::now());
            }
            (last.1.elapsed() >= Duration::from_millis(800)).then_some(u)
        })
    };
    let before = quiet(&hub)["pending"].as_u64().expect("pending");
    // One device goes while its readings wait: they leave the count (and the outbox).
    hub.ctl(&["remove", &kids[0]]);
    let quiet = quiet(&hub);
    let (forwarded, pending) =
        (quiet["forwarded"].as_u64().expect("n"), quiet["pending"].as_u64().expect("n"));
    assert!(0 < pending && pending < before, "removing a device: {before} then {quiet}");
    broker.start();
    let done = wait_for("the outbox drained", Duration::from_secs(60), || {
        let u = upstream(&hub);
        (u["connected"] == true && u["pending"] == 0 && u["in_flight"] == 0).then_some(u)
    });
    assert_eq!(done["forwarded"].as_u64(), Some(forwarded + pending), "then {quiet}, now {done}");
    assert_eq!(done["dropped"], 0, "{done}");
}

/// The hub's log lines about refused upstream certificates.
fn refusal_lines(hub: &Hub) -> Vec<String> {
    std::fs::read_to_string(&hub.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("upstream broker's certificate refused"))
        .map(str::to_owned)
        .collect()
}

/// Waits until the hub refused the broker's certificate `n` times; returns `hub ctl upstream`.
fn refused(hub: &Hub, n: u64) -> Value {
    wait_for("certificate refusals counted", Duration::from_secs(60), || {
        (hub.security()["upstream_tls_refused"].as_u64()? >= n).then_some(())
    });
    upstream(hub)
}

#[test]
fn upstream_certificates_that_do_not_check_out_are_refused_counted_and_logged() {
    let tmp = tempfile::tempdir().expect("tmp");
    // A broker (or a man in the middle) whose certificate was not made by the CA the hub pins.
    let mut broker = Broker::new(&tmp.path().join("broker"));
    broker.start();
    let other = sensor_sim::maker::feed_tls(&tmp.path().join("other"), &["127.0.0.1"]).expect("ca");
    let pinned = tmp.path().join("pinned-ca.pem");
    std::fs::write(&pinned, &other.cert_pem).expect("ca");
    let config = broker
        .hub_config("")
        .replace(&broker.cafile().display().to_string(), &pinned.display().to_string());
    let dir = tmp.path().join("hub");
    let hub = Hub::start_with(&dir, free_udp_port(), &config);
    let status = refused(&hub, 5);
    assert_eq!(status["connected"], false, "{status}");
    assert!(status["tls_refused"].as_u64() >= Some(5), "{status}");
    assert!(hub.security()["total"].as_u64() >= Some(5));
    // Logged at warn, in words, once for several refusals within a minute.
    let lines = refusal_lines(&hub);
    assert_eq!(lines.len(), 1, "rate-limited: {lines:#?}");
    assert!(lines[0].contains("WARN") && lines[0].contains("configured CA"), "{}", lines[0]);
    let (ok, human, _) = hub.ctl_human(&["upstream"]);
    assert!(ok && human.contains("man in the middle"), "{human}");
    let port = hub.coap.port();
    hub.stop();
    broker.stop();

    // The right CA, but a certificate for another name than the one the hub connects to.
    let named = tmp.path().join("named");
    sensor_sim::maker::feed_tls(&named.join("tls"), &["broker.example"]).expect("cert");
    let mut broker = Broker::new(&named);
    broker.start();
    let hub = Hub::start_with(&dir, port, &broker.hub_config(""));
    // The count survived the restart (the hub reconnects after 200 ms, 400 ms, ...: five more
    // refusals take seconds).
    let counted = hub.security()["upstream_tls_refused"].as_u64().unwrap_or_default();
    assert!(counted >= 5, "the refusals counted before the restart are kept: {counted}");
    let status = refused(&hub, counted + 1);
    assert_eq!(status["connected"], false, "{status}");
    let lines = refusal_lines(&hub);
    assert!(lines.iter().any(|l| l.contains("does not name the host")), "{lines:#?}");
}
