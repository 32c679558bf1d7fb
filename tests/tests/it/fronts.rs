//! The hub's fronts under attack from outside, at the process level, with a fleet of simulated
//! sensors reporting throughout and its deliveries counted (issue 15 findings 4, 5, 10): slow
//! bodies and idle connections against the web UI and idle and half-CONNECT connections against
//! both MQTT fronts, from one address and from many, while the owner logs in on the first try;
//! the MQTT fronts' rules on the wire are in `mqtt_rules`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tests::{Hub, Sim, field, free_udp_port, wait_for};

use super::web::Client;

/// A TCP connection to `to` from the local address `from` (any of 127.0.0.0/8 on loopback),
/// from a local port below the ephemeral range: thousands of attacking connections must not
/// take the ports other tests pick for their listeners (`free_tcp_port`).
pub fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    static NEXT_PORT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mut last = std::io::Error::other("no local port");
    for _ in 0..64 {
        let port = 20_000 + (NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 12_000) as u16;
        let socket =
            socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        if let Err(e) = socket.bind(&SocketAddr::new(from, port).into()) {
            last = e;
            continue;
        }
        match socket.connect_timeout(&to.into(), Duration::from_secs(5)) {
            Ok(()) => return Ok(socket.into()),
            // The same four-tuple still in TIME_WAIT: another port.
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => last = e,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

pub(crate) fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A rustls client trusting the hub's certificate (it names 127.0.0.1).
pub(crate) fn hub_tls(dir: &Path) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(dir.join("hub-cert.pem")).expect("hub certificate");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(&pem).expect("pem")).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

// ---------------------------------------------------------------------------------------------
// The fleet: deliveries counted by the time the hub acknowledged them.

/// A fleet reporting throughout, its acknowledgements recorded.
struct Fleet {
    sim: Sim,
    /// By device: (measured, acknowledged) Unix ms of every delivered reading.
    acked: HashMap<String, Vec<(i64, i64)>>,
}

impl Fleet {
    const SENSORS: usize = 6;
    const INTERVAL_MS: i64 = 200;

    fn start(hub: &Hub, dir: &Path) -> Fleet {
        let interval = Self::INTERVAL_MS.to_string();
        let sensors = Self::SENSORS.to_string();
        let args = ["--sensors", &sensors, "--interval-ms", &interval, "--status-ms", "500"];
        let mut sim = Sim::fleet(&hub.coap.to_string(), hub, &dir.join("flash.redb"), &args);
        sim.paired(Self::SENSORS, Duration::from_secs(120));
        Fleet { sim, acked: HashMap::new() }
    }

    /// Records a DELIVERED line; returns when it was acknowledged.
    fn record(acked: &mut HashMap<String, Vec<(i64, i64)>>, l: &str) -> Option<i64> {
        if !l.starts_with("DELIVERED") {
            return None;
        }
        let num = |k: &str| field(l, k).and_then(|v| v.parse::<i64>().ok()).unwrap_or_default();
        let kid = field(l, "kid").unwrap_or_default().to_owned();
        let measured = num("time_ms");
        let ack = measured + num("latency_us") / 1000;
        acked.entry(kid).or_default().push((measured, ack));
        Some(ack)
    }

    /// Reads the fleet's output (however long it waited unread) up to its first reading
    /// acknowledged at `until` (Unix ms) or later.
    fn follow(&mut self, until: i64) {
        let acked = &mut self.acked;
        self.sim.until("the fleet's reports", Duration::from_secs(120), |l| {
            Self::record(acked, l).filter(|ack| *ack >= until).map(|_| ())
        });
    }

    /// Readings acknowledged within `[from, to)` (Unix ms), per second.
    fn rate(&self, from: i64, to: i64) -> f64 {
        let n = self.acked.values().flatten().filter(|(_, ack)| (from..to).contains(ack)).count();
        n as f64 * 1000.0 / (to - from) as f64
    }

    /// Waits until every sensor's queue is empty, then checks that every acknowledged reading
    /// is stored; returns how many were checked.
    fn all_stored(&mut self, hub: &Hub) -> usize {
        let acked = &mut self.acked;
        self.sim.until("a quiet fleet", Duration::from_secs(120), |l| {
            let _ = Self::record(acked, l);
            let s: Value = serde_json::from_str(l.strip_prefix("STATUS ")?).ok()?;
            (s["queued"].as_u64() == Some(0)).then_some(())
        });
        let mut checked = 0;
        for (kid, readings) in &self.acked {
            let stored: std::collections::HashSet<i64> =
                wait_for("the readings query", Duration::from_secs(20), || {
                    let r = hub.try_ctl(&["readings", kid, "--limit", "100000"]).ok()?;
                    Some(r.as_array()?.iter().filter_map(|x| x["time_ms"].as_i64()).collect())
                });
            let missing: Vec<i64> =
                readings.iter().map(|(t, _)| *t).filter(|t| !stored.contains(t)).collect();
            assert!(missing.is_empty(), "{kid}: acknowledged readings not stored: {missing:?}");
            checked += readings.len();
        }
        checked
    }
}

/// Deliveries during `[from, to)` against the normal rate: at least 95 %.
fn assert_fleet_kept_up(fleet: &Fleet, normal: f64, from: i64, to: i64, what: &str) -> f64 {
    let rate = fleet.rate(from, to);
    eprintln!("{what}: {rate:.1} readings/s acknowledged (normal {normal:.1}/s)");
    assert!(rate >= 0.95 * normal, "{what}: {rate:.1}/s is below 95 % of the normal {normal:.1}/s");
    rate
}

// ---------------------------------------------------------------------------------------------
// Attackers that hold connections open and open new ones when the hub closes theirs.

/// What an attacking connection does after connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Nothing at all (no TLS ClientHello, no CONNECT).
    IdleTcp,
    /// A TLS handshake, then nothing.
    IdleTls,
    /// TLS, then a POST's headers announcing a body that never comes.
    SlowBody,
    /// The first bytes of an MQTT CONNECT, then nothing (plain).
    HalfConnect,
    /// TLS, then the first bytes of an MQTT CONNECT.
    HalfConnectTls,
}

enum Held {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Held {
    /// Whether the hub closed it (or answered it, which ends the attack on it too).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        let r = match self {
            Held::Tcp(s) => s.read(&mut b),
            Held::Tls(s) => s.read(&mut b),
        };
        !matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    }
}

/// Opens one attacking connection of `kind` from `from`.
fn open(kind: Kind, from: IpAddr, to: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> Option<Held> {
    let mut tcp = connect_from(from, to).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let half_connect: &[u8] = &[0x10, 100, 0x00, 0x04, b'M', b'Q'];
    if matches!(kind, Kind::IdleTcp | Kind::HalfConnect) {
        if kind == Kind::HalfConnect {
            tcp.write_all(half_connect).ok()?;
        }
        tcp.set_nonblocking(true).ok()?;
        return Some(Held::Tcp(tcp));
    }
    let name = ServerName::IpAddress(to.ip().into());
    let conn = rustls::ClientConnection::new(tls.clone(), name).ok()?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).ok()?;
    }
    match kind {
        Kind::SlowBody => {
            let head = format!(
                "POST /login HTTP/1.1\r\nHost: {to}\r\nContent-Type: \
                 application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\n"
            );
            s.write_all(head.as_bytes()).ok()?;
        }
        Kind::HalfConnectTls => s.write_all(half_connect).ok()?,
        _ => {}
    }
    s.flush().ok()?;
    s.sock.set_nonblocking(true).ok()?;
    Some(Held::Tls(Box::new(s)))
}

/// Attackers running until dropped.
struct Attack {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Attack {
    fn new() -> Attack {
        Attack { stop: Arc::default(), opened: Arc::default(), threads: Vec::new() }
    }

    /// Holds `count` connections of `kind` to `to`, spread over `sources`, re-opening those
    /// the hub closes (at most one new one per round of 20 ms, 50/s per attacker: a steady
    /// attack on the slots, not a handshake flood, and light enough for tests running beside
    /// it).
    fn hold(
        &mut self,
        kind: Kind,
        to: SocketAddr,
        sources: Vec<IpAddr>,
        count: usize,
        tls: Arc<rustls::ClientConfig>,
    ) {
        let (stop, opened) = (self.stop.clone(), self.opened.clone());
        self.threads.push(std::thread::spawn(move || {
            let per_round = 1;
            let mut held: Vec<Option<Held>> = (0..count).map(|_| None).collect();
            while !stop.load(Ordering::Relaxed) {
                let mut new = 0;
                for (i, h) in held.iter_mut().enumerate() {
                    if h.as_mut().is_some_and(Held::closed) {
                        *h = None;
                    }
                    if h.is_none() && new < per_round {
                        *h = open(kind, sources[i % sources.len()], to, &tls);
                        new += 1;
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                // Pacing of the attack's own loop (load generation, not a wait in the test).
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub(crate) fn counter(hub: &Hub, name: &str) -> u64 {
    hub.security()[name].as_u64().unwrap_or_else(|| panic!("no counter {name}"))
}

// ---------------------------------------------------------------------------------------------
// The web UI.

const OWNER_PASSWORD: &str = "quiet harbour 42";

/// The owner logs in from `client` on the first try and sees the dashboard.
fn owner_logs_in(client: &Client, what: &str) -> Duration {
    let started = Instant::now();
    let r = client.login("owner", OWNER_PASSWORD);
    assert_eq!((r.status, r.header("location")), (303, Some("/")), "{what}: {}", r.body);
    let session = format!("__Host-hearth={}", r.cookie("__Host-hearth").expect("session"));
    let dash = client.get("/", &session);
    assert_eq!(dash.status, 200, "{what}: dashboard");
    started.elapsed()
}

#[test]
fn web_slow_body_and_idle_slot_attacks_leave_the_owner_logging_in_first_try() {
    let tmp = tempfile::tempdir().expect("tmp");
    // The default limits: 256 connections, 32 per address, 10 s for each phase.
    let hub = Hub::start(&tmp.path().join("hub"), free_udp_port());
    let web = Client::new(&hub);
    let code = super::web::setup_code(&hub);
    assert_eq!(web.setup(&code, "owner", OWNER_PASSWORD).status, 303);
    let tls = hub_tls(&hub.dir);
    let mut fleet = Fleet::start(&hub, tmp.path());
    let t0 = now_ms();
    fleet.follow(t0 + 9_000);
    let normal = fleet.rate(t0, t0 + 8_000);
    assert!(normal > 0.8 * (Fleet::SENSORS as f64) * 1000.0 / Fleet::INTERVAL_MS as f64);

    // One address: 200 POSTs with headers and no body, 100 idle TCP connections and 50 idle
    // TLS connections — more than the listener's 256 slots.
    let attacker = vec![ip(3)];
    let mut attack = Attack::new();
    attack.hold(Kind::SlowBody, hub.web, attacker.clone(), 200, tls.clone());
    attack.hold(Kind::IdleTcp, hub.web, attacker.clone(), 100, tls.clone());
    attack.hold(Kind::IdleTls, hub.web, attacker, 50, tls.clone());
    wait_for("the attack contesting the slots", Duration::from_secs(60), || {
        (counter(&hub, "web_connections_shed") > 0).then_some(())
    });
    let from = now_ms();
    let owner = web.from(ip(2));
    for i in 0..5 {
        let took = owner_logs_in(&owner, &format!("login {i} during the one-address attack"));
        eprintln!("owner login during the one-address attack: {took:?}");
    }
    // A slow body is cut at the deadline: 408, and counted.
    let slow_before = counter(&hub, "web_slow_requests");
    let mut s = open(Kind::SlowBody, ip(4), hub.web, &tls).map(|h| match h {
        Held::Tls(s) => s,
        Held::Tcp(_) => unreachable!(),
    });
    let s = s.as_mut().expect("a slow-body connection");
    s.sock.set_nonblocking(false).expect("blocking");
    s.sock.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(counter(&hub, "web_slow_requests") > slow_before);
    let to = from + 10_000;
    fleet.follow(to);
    assert_fleet_kept_up(&fleet, normal, from, to, "web, one attacking address");

    // Many addresses: 20 of them with 30 slow bodies each (600 connections for 256 slots).
    let many: Vec<IpAddr> = (10..30).map(ip).collect();
    let phase_one = attack.opened.load(Ordering::Relaxed);
    drop(attack);
    let mut attack = Attack::new();
    attack.hold(Kind::SlowBody, hub.web, many[..10].to_vec(), 300, tls.clone());
    attack.hold(Kind::SlowBody, hub.web, many[10..].to_vec(), 300, tls.clone());
    let shed = counter(&hub, "web_connections_shed");
    wait_for("the listener full and contested", Duration::from_secs(60), || {
        (counter(&hub, "web_connections_shed") > shed + 100).then_some(())
    });
    let from = now_ms();
    for i in 0..5 {
        let took = owner_logs_in(&owner, &format!("login {i} during the many-address attack"));
        eprintln!("owner login during the many-address attack: {took:?}");
    }
    let to = from + 10_000;
    fleet.follow(to);
    assert_fleet_kept_up(&fleet, normal, from, to, "web, 20 attacking addresses");
    let opened = attack.opened.load(Ordering::Relaxed);
    drop(attack);

    let checked = fleet.all_stored(&hub);
    let sec = hub.security();
    eprintln!(
        "web attack: {phase_one} then {opened} attacking connections; {checked} readings \
         stored; shed {} slow {}",
        sec["web_connections_shed"], sec["web_slow_requests"]
    );
    assert!(sec["web_slow_requests"].as_u64() > Some(0), "{sec}");
    let log = std::fs::read_to_string(&hub.log).unwrap_or_default();
    assert!(log.contains("connections closed or refused to make room"), "the shedding is logged");
}

// ---------------------------------------------------------------------------------------------
// MQTT.

pub(crate) const MQTT_PASSWORD: &str = "correct-horse-battery-staple";

pub(crate) struct MqttPorts {
    pub(crate) plain: u16,
    pub(crate) tls: u16,
    pub(crate) broker: u16,
}

impl MqttPorts {
    pub(crate) fn new() -> MqttPorts {
        MqttPorts { plain: free_tcp_port(), tls: free_tcp_port(), broker: free_tcp_port() }
    }

    pub(crate) fn config(&self, extra: &str) -> String {
        format!(
            "[mqtt]\nplain_bind = \"127.0.0.1:{}\"\ntls_bind = \"127.0.0.1:{}\"\nbroker_port = {}\n{extra}",
            self.plain, self.tls, self.broker
        )
    }
}

/// `mosquitto_pub` once as `user` from `from` (TLS when `cafile` is given): success, stderr.
fn mosquitto_pub(from: IpAddr, port: u16, cafile: Option<&Path>, user: &str) -> (bool, String) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-A", &from.to_string(), "-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(ca) = cafile {
        cmd.arg("--cafile").arg(ca);
    }
    cmd.args(["-u", user, "-P", MQTT_PASSWORD, "-t", "owner/ping", "-m", "1", "-q", "1"]);
    let out = cmd.output().expect("mosquitto_pub");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn mqtt_idle_and_half_connect_attacks_on_both_fronts_leave_the_owner_logging_in_first_try() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ports = MqttPorts::new();
    // The default limits: 256 connections per front, 32 per address, 10 s for TLS and CONNECT.
    let hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &ports.config(""));
    hub.add_mqtt_user("ha", Some(MQTT_PASSWORD));
    let cafile = hub.dir.join("hub-cert.pem");
    let tls = hub_tls(&hub.dir);
    let plain = SocketAddr::from(([127, 0, 0, 1], ports.plain));
    let tls_front = SocketAddr::from(([127, 0, 0, 1], ports.tls));
    let mut fleet = Fleet::start(&hub, tmp.path());
    let t0 = now_ms();
    fleet.follow(t0 + 9_000);
    let normal = fleet.rate(t0, t0 + 8_000);

    let owner_logs_in = |what: &str| {
        for (port, ca) in [(ports.plain, None), (ports.tls, Some(cafile.as_path()))] {
            let started = Instant::now();
            let (ok, err) = mosquitto_pub(ip(2), port, ca, "ha");
            assert!(ok, "{what}: the owner's client was refused on port {port}: {err}");
            eprintln!("{what}: MQTT login on port {port} took {:?}", started.elapsed());
        }
    };

    // One address holds idle and half-CONNECT connections on both fronts, 500 in all.
    let one = vec![ip(3)];
    let mut attack = Attack::new();
    attack.hold(Kind::IdleTcp, plain, one.clone(), 150, tls.clone());
    attack.hold(Kind::HalfConnect, plain, one.clone(), 100, tls.clone());
    attack.hold(Kind::IdleTcp, tls_front, one.clone(), 100, tls.clone());
    attack.hold(Kind::IdleTls, tls_front, one.clone(), 100, tls.clone());
    attack.hold(Kind::HalfConnectTls, tls_front, one, 50, tls.clone());
    wait_for("the attack contesting the slots", Duration::from_secs(60), || {
        (counter(&hub, "mqtt_connections_shed") > 0).then_some(())
    });
    let from = now_ms();
    for i in 0..5 {
        owner_logs_in(&format!("one attacking address, try {i}"));
    }
    // A connection that never sends CONNECT (or a TLS ClientHello) is cut at the deadline and
    // counted.
    let slow = counter(&hub, "mqtt_slow_connects");
    let idle: Vec<TcpStream> =
        [plain, tls_front].map(|f| connect_from(ip(4), f).expect("connect")).into();
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let mut b = [0u8; 8];
        assert!(matches!(c.read(&mut b), Ok(0)), "closed by the hub at the deadline");
    }
    wait_for("the idle connections counted", Duration::from_secs(10), || {
        (counter(&hub, "mqtt_slow_connects") >= slow + 2).then_some(())
    });
    let to = from + 10_000;
    fleet.follow(to);
    assert_fleet_kept_up(&fleet, normal, from, to, "MQTT, one attacking address");
    drop(attack);

    // Twenty addresses, 40 idle connections each per front: 800 per front for 256 slots.
    let many: Vec<IpAddr> = (10..30).map(ip).collect();
    let mut attack = Attack::new();
    attack.hold(Kind::IdleTcp, plain, many.clone(), 400, tls.clone());
    attack.hold(Kind::HalfConnect, plain, many.clone(), 400, tls.clone());
    attack.hold(Kind::IdleTcp, tls_front, many.clone(), 400, tls.clone());
    attack.hold(Kind::IdleTls, tls_front, many, 400, tls.clone());
    let shed = counter(&hub, "mqtt_connections_shed");
    wait_for("both fronts full and contested", Duration::from_secs(90), || {
        (counter(&hub, "mqtt_connections_shed") > shed + 200).then_some(())
    });
    let from = now_ms();
    for i in 0..5 {
        owner_logs_in(&format!("20 attacking addresses, try {i}"));
    }
    let to = from + 10_000;
    fleet.follow(to);
    assert_fleet_kept_up(&fleet, normal, from, to, "MQTT, 20 attacking addresses");
    drop(attack);

    let checked = fleet.all_stored(&hub);
    let sec = hub.security();
    eprintln!(
        "MQTT attack: {checked} readings stored; shed {} slow {} malformed {}",
        sec["mqtt_connections_shed"], sec["mqtt_slow_connects"], sec["mqtt_malformed"]
    );
    assert!(sec["mqtt_malformed"].as_u64() > Some(0), "half CONNECTs are malformed: {sec}");
}

// ---------------------------------------------------------------------------------------------
// A small MQTT 3.1.1 client for exact packets.
