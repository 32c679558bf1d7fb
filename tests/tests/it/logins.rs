//! Logins under attack at the process level (issue 15 findings 2, 6, 7; EN 303 645 5.1-5), with a
//! simulated fleet reporting throughout and its deliveries counted: bursts of web logins and
//! MQTT CONNECTs against a hub in a 1 GiB memory cgroup (it survives, its RSS comes back near
//! idle, the excess is shed and counted), concurrent wrong passwords (checked at most
//! `free_failures` times), thousands of failures from fresh names and addresses (the owner's
//! back-off holds, and survives a SIGKILL and restart), and the owner's browser (device cookie)
//! and Home Assistant (a remembered MQTT client) logging in first try during a back-off an
//! attacker caused from rotating addresses.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tests::{Hub, Sim, field, free_udp_port, wait_for};

use super::web::{Client, Res, setup_code};

const OWNER_PASSWORD: &str = "quiet harbour 42";
const HA_PASSWORD: &str = "correct-horse-battery-staple";
/// A pre-login cookie an attacker makes up (the login form's token only has to echo it).
const PRE: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The `n`th of `hosts` loopback source addresses in `127.<net>.0.0/16`.
fn source(net: u8, n: usize, hosts: usize) -> IpAddr {
    let i = n % hosts;
    IpAddr::V4(Ipv4Addr::new(127, net, (i / 250) as u8, (i % 250) as u8 + 1))
}

/// A TCP connection to `to` from the source address `from`.
fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(from, 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(30))?;
    Ok(s.into())
}

/// A web login as a script would send it (no browser: a made-up pre-login cookie), from `from`,
/// with the cookies in `extra` (a device cookie); the answer, or why there was none.
fn web_login(
    web: &Client,
    from: IpAddr,
    user: &str,
    password: &str,
    extra: &str,
) -> Result<Res, String> {
    let tcp = connect_from(from, web.addr()).map_err(|e| e.to_string())?;
    let mut cookie = format!("__Host-hearth-pre={PRE}");
    if !extra.is_empty() {
        cookie = format!("{cookie}; {extra}");
    }
    let origin = format!("https://{}", web.addr());
    let body = format!("csrf={PRE}&user={user}&password={}", password.replace(' ', "+"));
    let headers = [("Origin", origin.as_str()), ("Sec-Fetch-Site", "same-origin")];
    web.try_send_on(tcp, "POST", "/login", &cookie, &headers, &body)
}

/// The device cookie an answer set, as a request's cookie pair.
fn device_cookie(r: &Res) -> String {
    let v = r.cookie("__Host-hearth-device").expect("a device cookie");
    format!("__Host-hearth-device={v}")
}

/// An MQTT 3.1.1 CONNECT with credentials and a clean session.
fn connect_packet(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let field = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(b);
    };
    let mut rest = Vec::new();
    field(&mut rest, b"MQTT");
    rest.extend_from_slice(&[4, 0xC2, 0, 60]);
    field(&mut rest, client_id.as_bytes());
    field(&mut rest, user.as_bytes());
    field(&mut rest, password.as_bytes());
    let mut p = vec![0x10];
    let mut len = rest.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        p.push(byte);
        if len == 0 {
            break;
        }
    }
    p.extend_from_slice(&rest);
    p
}

/// The CONNACK code (0 accepted, 3 server unavailable, 4 bad user name or password, 5 not
/// authorised) for a CONNECT from `from`, or why there was none.
fn mqtt_login(
    from: IpAddr,
    to: SocketAddr,
    client_id: &str,
    user: &str,
    password: &str,
) -> Result<u8, String> {
    let mut s = connect_from(from, to).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    s.write_all(&connect_packet(client_id, user, password)).map_err(|e| e.to_string())?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).map_err(|e| format!("no CONNACK: {e}"))?;
    if ack[0] != 0x20 {
        return Err(format!("not a CONNACK: {ack:?}"));
    }
    if ack[3] == 0 {
        let _ = s.write_all(&[0xE0, 0]); // DISCONNECT
    }
    Ok(ack[3])
}

/// The attacker: a Python process at the lowest CPU priority (`nice -n 19`) that makes login
/// attempts from given source addresses and prints their outcomes in order. On a LAN the
/// attacker is another host; on this shared 2-core machine its own TLS handshakes must not
/// take the CPU from the hub and the fleet whose deliveries are being counted.
const ATTACKER: &str = r#"
import json, socket, ssl, struct, sys, threading, queue
job = json.load(sys.stdin)
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
PRE = "5e" * 32
def addr(s):
    h, p = s.rsplit(":", 1); return (h, int(p))
def web(a):
    host = addr(job["web"])
    try:
        s = socket.create_connection(host, timeout=120, source_address=(a["from"], 0))
        t = ctx.wrap_socket(s, server_hostname=host[0])
        body = f"csrf={PRE}&user={a['user']}&password={a['password'].replace(' ', '+')}"
        req = (f"POST /login HTTP/1.1\r\nHost: {job['web']}\r\nConnection: close\r\n"
               f"Cookie: __Host-hearth-pre={PRE}\r\nOrigin: https://{job['web']}\r\n"
               f"Sec-Fetch-Site: same-origin\r\nContent-Type: application/x-www-form-urlencoded\r\n"
               f"Content-Length: {len(body)}\r\n\r\n{body}")
        t.sendall(req.encode()); raw = b""
        while len(raw) < 16:
            b = t.recv(4096)
            if not b: break
            raw += b
        t.close()
        return raw.split(b" ", 2)[1].decode() if raw.startswith(b"HTTP/1.1 ") else "closed"
    except Exception:
        return "closed"
def mqtt(a):
    f = lambda b: struct.pack(">H", len(b)) + b
    rest = f(b"MQTT") + bytes([4, 0xC2, 0, 60]) + f(a["client"].encode()) + f(a["user"].encode()) + f(a["password"].encode())
    n, enc = len(rest), b""
    while True:
        d = n % 128; n //= 128; enc += bytes([d | (0x80 if n else 0)])
        if not n: break
    try:
        s = socket.create_connection(addr(job["mqtt"]), timeout=120, source_address=(a["from"], 0))
        s.sendall(b"\x10" + enc + rest)
        ack = s.recv(4)
        if len(ack) == 4 and ack[0] == 0x20:
            if ack[3] == 0: s.sendall(b"\xe0\x00")
            s.close(); return f"connack{ack[3]}"
        return "closed"
    except Exception:
        return "closed"
attempts = job["attempts"]; out = [None] * len(attempts)
def one(i): out[i] = (web if attempts[i]["kind"] == "web" else mqtt)(attempts[i])
if job["workers"] == 0:
    gate = threading.Barrier(len(attempts))
    def run(i): gate.wait(); one(i)
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(attempts))]
else:
    q = queue.Queue()
    for i in range(len(attempts)): q.put(i)
    def run(_):
        while True:
            try: i = q.get_nowait()
            except queue.Empty: return
            one(i)
    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in range(job["workers"])]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"#;

/// One login attempt for the attacker.
fn web_attempt(from: IpAddr, user: &str, password: &str) -> serde_json::Value {
    serde_json::json!({"kind": "web", "from": from.to_string(), "user": user, "password": password})
}

fn mqtt_attempt(from: IpAddr, client: &str, user: &str, password: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "mqtt", "from": from.to_string(), "client": client, "user": user,
        "password": password,
    })
}

/// Runs `attempts` against the web UI at `web` and MQTT at `mqtt`: all released at once
/// (`workers` 0), or by `workers` threads one after another; their outcomes (HTTP status,
/// `connackN`, or `closed`) in order.
fn attack(
    web: SocketAddr,
    mqtt: SocketAddr,
    workers: usize,
    attempts: Vec<serde_json::Value>,
) -> Vec<String> {
    let n = attempts.len();
    let job = serde_json::json!({
        "web": web.to_string(), "mqtt": mqtt.to_string(), "workers": workers,
        "attempts": attempts,
    });
    let mut child = std::process::Command::new("nice")
        .args(["-n", "19"])
        .arg(tests::python())
        .args(["-c", ATTACKER])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the attacker (python3)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(job.to_string().as_bytes()).expect("job");
    drop(stdin);
    let out = child.wait_with_output().expect("attacker");
    assert!(out.status.success(), "the attacker failed");
    let outcomes: Vec<String> = serde_json::from_slice(&out.stdout).expect("outcomes");
    assert_eq!(outcomes.len(), n);
    outcomes
}

/// How many of each outcome.
fn tally<T: Ord + Clone>(outcomes: &[T]) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for o in outcomes {
        *m.entry(o.clone()).or_insert(0) += 1;
    }
    m
}

/// One delivery the fleet reported: sensor, kid, measurement id, when it was acknowledged.
#[derive(Debug, Clone)]
struct Delivery {
    sensor: u32,
    kid: String,
    id: u64,
    measured_ms: i64,
    acked_ms: i64,
}

/// The fleet's deliveries, counted by when they were acknowledged.
struct Fleet {
    sim: Sim,
    sensors: usize,
    /// Deliveries per second in the window measured before any attack.
    normal: f64,
}

impl Fleet {
    /// Pairs `sensors` climate sensors reporting every `interval_ms` and measures their normal
    /// delivery rate over a few seconds.
    fn start(hub: &Hub, dir: &Path, sensors: usize, interval_ms: u64) -> Fleet {
        let flash = dir.join("flash.redb");
        let (n, every) = (sensors.to_string(), interval_ms.to_string());
        let args = ["--sensors", &n, "--interval-ms", &every, "--models", "climate"];
        let mut sim = Sim::fleet(&hub.coap.to_string(), hub, &flash, &args);
        sim.paired(sensors, Duration::from_secs(120));
        // The sensors are devices of their own: the simulator is not to be slowed down by
        // the attacker and the hub sharing its two cores (root may raise its priority).
        for task in std::fs::read_dir(format!("/proc/{}/task", sim.child.id())).expect("tasks") {
            let tid = task.expect("task").file_name().to_string_lossy().into_owned();
            let reniced = std::process::Command::new("renice")
                .args(["-n", "-10", "-p", &tid])
                .stdout(std::process::Stdio::null())
                .status()
                .expect("renice");
            assert!(reniced.success(), "renice the simulator (root)");
        }
        let mut fleet = Fleet { sim, sensors, normal: 0.0 };
        // Settle, then measure the normal rate over 6 s.
        let settled = unix_ms() + 2_000;
        fleet.wait_until(settled);
        let from = unix_ms();
        fleet.wait_until(from + 6_000);
        fleet.normal = fleet.rate(from, from + 6_000);
        assert!(fleet.normal > 0.0, "the fleet delivers");
        fleet
    }

    fn deliveries(&mut self) -> Vec<Delivery> {
        self.sim.drain();
        self.sim
            .seen_lines()
            .iter()
            .filter(|l| l.starts_with("DELIVERED"))
            .filter_map(|l| {
                let num = |k: &str| field(l, k).and_then(|v| v.parse::<i64>().ok());
                Some(Delivery {
                    sensor: u32::try_from(num("sensor")?).ok()?,
                    kid: field(l, "kid")?.to_owned(),
                    id: u64::try_from(num("id")?).ok()?,
                    measured_ms: num("time_ms")?,
                    acked_ms: num("time_ms")? + num("latency_us")? / 1000,
                })
            })
            .collect()
    }

    /// Waits until a delivery acknowledged at `t` or later was reported (so every earlier one
    /// was printed).
    fn wait_until(&mut self, t: i64) {
        wait_for("fleet deliveries", Duration::from_secs(120), || {
            self.deliveries().iter().any(|d| d.acked_ms >= t).then_some(())
        });
    }

    /// Deliveries per second acknowledged within `[from, to)`.
    fn rate(&mut self, from: i64, to: i64) -> f64 {
        let n = self.deliveries().iter().filter(|d| (from..to).contains(&d.acked_ms)).count();
        n as f64 * 1000.0 / (to - from).max(1) as f64
    }

    /// Asserts the fleet kept at least 95 % of its normal deliveries while `what` ran from
    /// `from` to `to` (a window of at least 4 s, so a short burst is measured with its effect):
    /// of the measurements the sensors took in the window (by their sequence numbers, so one
    /// still buffered counts too), at least 95 % were acknowledged within a second. Normally
    /// all are (in milliseconds); counting against what the sensors produced, rather than
    /// against a rate measured earlier, keeps the check fair when other tests share the
    /// machine's two cores. The delivery rate against the normal one is printed as well.
    fn held_during(&mut self, what: &str, from: i64, to: i64) {
        let to = to.max(from + 4_000);
        self.wait_until(to + 1_500);
        let deliveries = self.deliveries();
        let mut window: HashMap<u32, (u64, u64, usize)> = HashMap::new();
        for d in deliveries.iter().filter(|d| (from..to).contains(&d.measured_ms)) {
            let prompt = usize::from(d.acked_ms - d.measured_ms <= 1_000);
            let e = window.entry(d.sensor).or_insert((d.id, d.id, 0));
            e.0 = e.0.min(d.id);
            e.1 = e.1.max(d.id);
            e.2 += prompt;
        }
        let taken: u64 = window.values().map(|(lo, hi, _)| hi - lo + 1).sum();
        let prompt: usize = window.values().map(|(_, _, p)| p).sum();
        let share = prompt as f64 / taken.max(1) as f64;
        let rate = self.rate(from, to) / self.normal;
        eprintln!(
            "fleet during {what}: {:.1} % of {taken} measurements acknowledged within 1 s; \
             delivery rate {:.1} % of normal ({:.1}/s)",
            share * 100.0,
            rate * 100.0,
            self.normal
        );
        assert_eq!(window.len(), self.sensors, "{what}: every sensor measured");
        assert!(share >= 0.95, "{what}: {:.1} % delivered within 1 s", share * 100.0);
    }

    /// Every measurement was stored: no sensor's delivered ids have a gap, none was refused,
    /// and the hub holds at least as many readings per device as were acknowledged.
    fn all_stored(&mut self, hub: &Hub) {
        // Until every sensor's backlog (after a restart) has drained: no gaps left.
        let gaps = |d: &[Delivery]| {
            let mut ids: HashMap<u32, Vec<u64>> = HashMap::new();
            for x in d {
                ids.entry(x.sensor).or_default().push(x.id);
            }
            ids.values_mut()
                .map(|v| {
                    v.sort_unstable();
                    v.dedup();
                    (v[v.len() - 1] - v[0] + 1) - v.len() as u64
                })
                .sum::<u64>()
        };
        wait_for("every sensor's backlog delivered", Duration::from_secs(120), || {
            let d = self.deliveries();
            (gaps(&d) == 0).then_some(())
        });
        let deliveries = self.deliveries();
        let mut per_sensor: HashMap<u32, (String, Vec<u64>)> = HashMap::new();
        for d in &deliveries {
            let e = per_sensor.entry(d.sensor).or_insert_with(|| (d.kid.clone(), Vec::new()));
            e.1.push(d.id);
        }
        assert_eq!(per_sensor.len(), self.sensors, "every sensor delivered");
        let refused = self.sim.seen_lines().iter().filter(|l| l.starts_with("REFUSED")).count();
        assert_eq!(refused, 0, "no measurement was refused");
        let dropped: Vec<&String> = self
            .sim
            .seen_lines()
            .iter()
            .filter(|l| l.starts_with("DRAINED") && !l.contains("dropped=0"))
            .collect();
        assert!(dropped.is_empty(), "measurements dropped: {dropped:?}");
        let stored: HashMap<String, u64> = hub
            .ctl(&["devices"])
            .as_array()
            .expect("devices")
            .iter()
            .map(|d| {
                (d["id"].as_str().unwrap_or("").to_owned(), d["readings"].as_u64().unwrap_or(0))
            })
            .collect();
        for (sensor, (kid, mut ids)) in per_sensor {
            ids.sort_unstable();
            ids.dedup();
            let (first, last) = (ids[0], ids[ids.len() - 1]);
            assert_eq!(
                ids.len() as u64,
                last - first + 1,
                "sensor {sensor}: a measurement between {first} and {last} was never delivered"
            );
            let have = stored.get(&kid).copied().unwrap_or(0);
            assert!(
                have >= ids.len() as u64,
                "sensor {sensor}: {have} stored, {} acked",
                ids.len()
            );
        }
    }
}

/// A cgroup v1 memory group the hub runs in (root only; removed when dropped, after the hub).
struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    fn new(limit: u64) -> Cgroup {
        let root = Path::new("/sys/fs/cgroup/memory");
        assert!(root.is_dir(), "the cgroup v1 memory controller is needed (and root)");
        let path = root.join(format!("hearth-logins-{}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create the cgroup (root?)");
        std::fs::write(path.join("memory.limit_in_bytes"), limit.to_string()).expect("limit");
        Cgroup { path }
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path.join(file)).unwrap_or_default()
    }

    fn value(&self, file: &str) -> u64 {
        self.read(file).trim().parse().unwrap_or(0)
    }

    /// OOM kills in the group (memory.oom_control's `oom_kill`, 0 if the kernel has none).
    fn oom_kills(&self) -> u64 {
        self.read("memory.oom_control")
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The resident set of `pid`, bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .map_or(0, |kb: u64| kb * 1024)
}

const MIB: u64 = 1 << 20;
/// MQTT users in the burst test.
const USERS: usize = 12;

/// MQTT on fixed ports; `login` is the `[login]` section's body.
fn config(plain: u16, tls: u16, broker: u16, login: &str) -> String {
    format!(
        "[mqtt]\nplain_bind = \"127.0.0.1:{plain}\"\ntls_bind = \"127.0.0.1:{tls}\"\n\
         broker_port = {broker}\nmax_connections = 2048\n[login]\n{login}\n"
    )
}

/// Sets up the owner through the web UI; the answer (session and device cookies).
fn owner(hub: &Hub, web: &Client) -> Res {
    let made = web.setup(&setup_code(hub), "owner", OWNER_PASSWORD);
    assert_eq!(made.status, 303, "{}", made.body);
    made
}

#[test]
fn login_bursts_in_a_1_gib_cgroup_are_shed_and_the_memory_comes_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (plain, tls, broker) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let cgroup = Cgroup::new(1 << 30);
    // The hub joins the group before it runs: every page it uses is charged to it.
    let extra = config(plain, tls, broker, "");
    let hub = Hub::start_in_cgroup(&tmp.path().join("hub"), free_udp_port(), &extra, &cgroup.path);
    let pid = hub.child.id();
    let procs = cgroup.read("cgroup.procs");
    assert!(procs.lines().any(|l| l.trim() == pid.to_string()), "the hub runs in the group");
    let web = Client::new(&hub);
    owner(&hub, &web);
    for u in 0..USERS {
        hub.add_mqtt_user(&format!("u{u}"), Some(HA_PASSWORD));
    }
    let mut fleet = Fleet::start(&hub, tmp.path(), 16, 100);
    // Idle: the hub has hashed (setup code, owner, MQTT users) and the fleet is reporting.
    let idle = rss(pid);
    eprintln!("idle RSS {} MiB", idle / MIB);
    let mqtt = SocketAddr::from(([127, 0, 0, 1], plain));

    // 500 concurrent web logins from 64 addresses, half the owner's with the right password,
    // half unknown names. A failure slot is taken before each hash, so only `free_failures`
    // of each account (the unknown names are one) are in flight at once: the rest are
    // answered 429 unchecked, whatever the password; what reaches the hashing budget beyond
    // its slot and queue is shed with 503.
    let attempts = (0..500)
        .map(|i| {
            let from = source(1, i, 64);
            if i % 2 == 0 {
                web_attempt(from, "owner", OWNER_PASSWORD)
            } else {
                web_attempt(from, &format!("visitor{i}"), "guess guess guess")
            }
        })
        .collect();
    let from = unix_ms();
    let started = Instant::now();
    let outcomes = attack(web.addr(), mqtt, 0, attempts);
    let took = started.elapsed();
    let web_tally = tally(&outcomes);
    eprintln!("500 web logins in {took:?}: {web_tally:?}");
    fleet.held_during("500 concurrent web logins", from, unix_ms());
    let count = |t: &BTreeMap<String, usize>, k: &str| t.get(k).copied().unwrap_or(0);
    assert!(count(&web_tally, "303") >= 1, "the owner got in: {web_tally:?}");
    assert!(count(&web_tally, "429") >= 100, "most were refused unchecked: {web_tally:?}");
    // Checked (303, 401), refused unchecked (429), shed (503) or, beyond the web server's
    // connection limit, closed unanswered: nothing else (no 500, no hang).
    let unexpected: usize = web_tally
        .iter()
        .filter(|(k, _)| !["303", "401", "429", "503", "closed"].contains(&k.as_str()))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(unexpected, 0, "{web_tally:?}");

    // 1,000 concurrent MQTT CONNECTs from 128 addresses, all with the right password of one of
    // 12 users: up to 36 are admitted at once, more than the budget's slot and queue (9); the
    // rest are shed with CONNACK 3 and counted.
    let attempts = (0..1000)
        .map(|i| {
            let (user, cid) = (format!("u{}", i % USERS), format!("burst-{i}"));
            mqtt_attempt(source(2, i, 128), &cid, &user, HA_PASSWORD)
        })
        .collect();
    let from = unix_ms();
    let started = Instant::now();
    let outcomes = attack(web.addr(), mqtt, 0, attempts);
    let took = started.elapsed();
    let mqtt_tally = tally(&outcomes);
    eprintln!("1000 MQTT CONNECTs in {took:?}: {mqtt_tally:?}");
    fleet.held_during("1,000 concurrent MQTT CONNECTs", from, unix_ms());
    let shed = count(&mqtt_tally, "connack3");
    assert!(shed > 0, "the excess was shed: {mqtt_tally:?}");
    assert!(count(&mqtt_tally, "connack0") >= USERS, "{mqtt_tally:?}");
    let unexpected: usize = mqtt_tally
        .iter()
        .filter(|(k, _)| !["connack0", "connack3", "connack5"].contains(&k.as_str()))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(unexpected, 0, "{mqtt_tally:?}");
    let sec = hub.security();
    assert_eq!(sec["mqtt_login_shed"].as_u64(), Some(shed as u64), "every shed one counted: {sec}");

    // The hub survived in its 1 GiB group, and its memory comes back to near idle.
    let mut hub = hub;
    assert!(hub.alive(), "the hub survived");
    assert_eq!(cgroup.oom_kills(), 0);
    let peak = cgroup.value("memory.max_usage_in_bytes");
    eprintln!("cgroup peak usage {} MiB (limit 1024 MiB)", peak / MIB);
    assert!(peak > 10 * MIB, "the group counts the hub's memory: {peak}");
    let after = wait_for("the hub's RSS back near idle", Duration::from_secs(60), || {
        let now = rss(pid);
        (now <= idle + 64 * MIB).then_some(now)
    });
    eprintln!("RSS after the bursts {} MiB (idle {} MiB)", after / MIB, idle / MIB);
    // The owner still logs in (from a fresh address, first try).
    let r = web_login(&web, source(3, 0, 1), "owner", OWNER_PASSWORD, "").expect("answer");
    assert_eq!(r.status, 303);
    fleet.all_stored(&hub);
}

#[test]
fn concurrent_guesses_sprays_and_restarts_never_beat_the_throttle_nor_lock_out_the_owner() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (plain, tls, broker) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    // A first back-off of 5 minutes: long enough to outlast the spray and the restart.
    let login = "free_failures = 3\nbackoff_base_ms = 300000\nbackoff_max_ms = 600000";
    let extra = config(plain, tls, broker, login);
    let dir = tmp.path().join("hub");
    let udp = free_udp_port();
    let hub = Hub::start_with(&dir, udp, &extra);
    let web = Client::new(&hub);
    let device = device_cookie(&owner(&hub, &web));
    hub.add_mqtt_user("ha", Some(HA_PASSWORD));
    let to = SocketAddr::from(([127, 0, 0, 1], plain));
    // Home Assistant's address and client id; it logged in before the attack.
    let ha_at = IpAddr::from([127, 0, 9, 1]);
    assert_eq!(mqtt_login(ha_at, to, "home-assistant-7f3a", "ha", HA_PASSWORD), Ok(0));
    let mut fleet = Fleet::start(&hub, tmp.path(), 16, 100);

    // 50 concurrent wrong passwords, web and MQTT: at most the free failures are checked.
    let from = unix_ms();
    let guesses = (0..50).map(|i| web_attempt(source(4, i, 50), "owner", "not the password"));
    let t = tally(&attack(web.addr(), to, 0, guesses.collect()));
    eprintln!("50 concurrent wrong web passwords: {t:?}");
    assert_eq!(t.get("401"), Some(&3), "checked only free_failures times: {t:?}");
    assert_eq!(t.get("429"), Some(&47), "{t:?}");
    let before = hub.security()["mqtt_login_failed"].as_u64().unwrap_or(0);
    let guesses = (0..50)
        .map(|i| mqtt_attempt(source(5, i, 50), &format!("guess-{i}"), "ha", "not the password"));
    let t = tally(&attack(web.addr(), to, 0, guesses.collect()));
    eprintln!("50 concurrent wrong MQTT passwords: {t:?}");
    assert_eq!(t.get("connack4"), Some(&3), "checked only free_failures times: {t:?}");
    assert_eq!(t.get("connack5"), Some(&47), "{t:?}");
    let sec = hub.security();
    assert_eq!(sec["mqtt_login_failed"].as_u64(), Some(before + 3), "{sec}");
    fleet.held_during("50 concurrent wrong passwords (web, MQTT)", from, unix_ms());

    // Thousands of failures from fresh names and rotating addresses: refused cheaply, and the
    // owner's and Home Assistant's back-offs are not cleared.
    let from = unix_ms();
    let spray = (0..2_112).map(|i| web_attempt(source(6, i, 2_112), &format!("user{i}"), "guess"));
    let web_spray = attack(web.addr(), to, 16, spray.collect());
    let spray = (0..2_112).map(|i| {
        let (who, cid) = (format!("user{i}"), format!("spray-{i}"));
        mqtt_attempt(source(7, i, 2_112), &cid, &who, "guess guess")
    });
    let mqtt_spray = attack(web.addr(), to, 16, spray.collect());
    let (wt, mt) = (tally(&web_spray), tally(&mqtt_spray));
    eprintln!("spray of 2,112 web logins: {wt:?}; 2,112 MQTT CONNECTs: {mt:?}");
    assert!(wt.get("401").copied().unwrap_or(0) <= 3, "unknown names share one record: {wt:?}");
    assert!(mt.get("connack4").copied().unwrap_or(0) <= 3, "{mt:?}");
    fleet.held_during("2,112 web and 2,112 MQTT failures from fresh names", from, unix_ms());
    let held =
        web_login(&web, IpAddr::from([127, 0, 8, 1]), "owner", OWNER_PASSWORD, "").expect("answer");
    assert_eq!(held.status, 429, "the owner's back-off held (a new browser waits)");
    let wait: u64 = held.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(wait > 200, "not reset: {wait} s left");
    let new_client = mqtt_login(IpAddr::from([127, 0, 8, 2]), to, "new-client", "ha", HA_PASSWORD);
    assert_eq!(new_client, Ok(5));

    // The owner's browser and Home Assistant: first try, right password, during the back-off.
    let r = web_login(&web, IpAddr::from([127, 0, 8, 3]), "owner", OWNER_PASSWORD, &device)
        .expect("answer");
    assert_eq!(r.status, 303, "device cookie: {}", r.body);
    assert_eq!(mqtt_login(ha_at, to, "home-assistant-7f3a", "ha", HA_PASSWORD), Ok(0));
    // Its client id from another address, or another id from its address, is someone else.
    let elsewhere = IpAddr::from([127, 0, 9, 2]);
    assert_eq!(mqtt_login(elsewhere, to, "home-assistant-7f3a", "ha", HA_PASSWORD), Ok(5));
    assert_eq!(mqtt_login(ha_at, to, "home-assistant-other", "ha", HA_PASSWORD), Ok(5));

    // SIGKILL and restart: the back-offs are still there, and so are the trusted clients.
    hub.kill9();
    let hub = Hub::start_with(&dir, udp, &extra);
    let web = Client::new(&hub);
    let held =
        web_login(&web, IpAddr::from([127, 0, 8, 4]), "owner", OWNER_PASSWORD, "").expect("answer");
    assert_eq!(held.status, 429, "a restart does not reset the owner's back-off");
    assert_eq!(
        mqtt_login(IpAddr::from([127, 0, 8, 5]), to, "new-client-2", "ha", HA_PASSWORD),
        Ok(5),
        "nor Home Assistant's user's"
    );
    let r = web_login(&web, IpAddr::from([127, 0, 8, 3]), "owner", OWNER_PASSWORD, &device)
        .expect("answer");
    assert_eq!(r.status, 303, "the device cookie survived the restart");
    assert_eq!(mqtt_login(ha_at, to, "home-assistant-7f3a", "ha", HA_PASSWORD), Ok(0));
    // Every reading of the whole test was stored, those buffered while the hub was down too.
    fleet.all_stored(&hub);
}
