//! Helpers for integration tests that run the real executables (ripgrep style): build them once,
//! start a hub on loopback and read its `READY` line, run `hub ctl`, run `sensor-sim` and follow
//! its output, and wait for conditions with deadlines (never sleeps as a way of waiting).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod ha;
pub mod meter;
pub mod netfault;
pub mod netns;
pub use meter::Meter;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// Path of a workspace binary, built (debug) on first use. The hub is built with its
/// `fault-injection` feature (hidden control commands that wedge other subsystems on purpose;
/// see [`Hub::fault`]).
pub fn bin(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--bin", "hub", "--bin", "sensor-sim", "--bin", "demo"])
            .args(["--features", "hub/fault-injection"])
            .current_dir(root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    target_dir().join("debug").join(name)
}

/// Taken by the tests that compare a fleet's delivery rate under an attack with its normal
/// rate, and by the heaviest others (a real Home Assistant, 500 sensors through an outage):
/// they run one at a time (each one keeps the machine's two cores busy by itself), so that no
/// rate under attack is measured against another heavy test.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lowers the calling thread's CPU priority to the least (`renice 19` on its thread id): for
/// attack generators, which on this shared test machine would otherwise take CPU time from the
/// hub they attack — an attacker on the LAN brings its own.
pub fn lowest_priority() {
    let Ok(link) = std::fs::read_link("/proc/thread-self") else { return };
    let Some(tid) = link.file_name().and_then(|t| t.to_str()).map(str::to_owned) else { return };
    let _ = Command::new("renice")
        .args(["-n", "19", "-p", &tid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A free UDP port on loopback (bound, read, released).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `hub run`.
#[derive(Debug)]
pub struct Hub {
    /// The child process.
    pub child: Child,
    /// Data directory.
    pub dir: PathBuf,
    /// CoAP address.
    pub coap: SocketAddr,
    /// Control socket.
    pub control: PathBuf,
    /// Its stderr log file.
    pub log: PathBuf,
    /// The web UI's address (HTTPS).
    pub web: SocketAddr,
    /// What it printed before `READY` (web UI address, certificate fingerprint, setup code).
    pub printed: Vec<String>,
    /// Its standard output after `READY` (read all along, so the hub never writes to a closed
    /// pipe).
    stdout: std::sync::Mutex<Receiver<String>>,
}

/// A TCP port free on loopback now (for listeners that must keep their port across a restart).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// Pairing limits for a simulated fleet: all its sensors pair from one host, at once.
pub const FLEET_PAIRING: &str = "max_sessions = 1024\nsessions_per_source = 1024\nhello_rate = 100000\nhello_burst = 100000\nhost_hello_interval_ms = 1\nhost_hello_burst = 100000\nhost_request_rate = 1000000\nhost_request_burst = 1000000\n";

/// Writes a test configuration: fixed port, generous pairing limits for a simulated fleet, and
/// `extra` TOML sections. MQTT (fixed ports by default) is off unless `extra` has `[mqtt]`; the
/// web UI listens on a free loopback port unless `extra` has `[web]` (then it says `bind`).
pub fn write_config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let path = dir.join("hub.toml");
    let mqtt = if extra.contains("[mqtt]") { "" } else { "[mqtt]\nenabled = false\n" };
    let web = if extra.contains("[web]") { "" } else { "[web]\nbind = \"127.0.0.1:0\"\n" };
    let text =
        format!("coap_bind = \"127.0.0.1:{port}\"\n{web}[pairing]\n{FLEET_PAIRING}{mqtt}{extra}");
    std::fs::write(&path, text).expect("write config");
    path
}

impl Hub {
    /// Starts a hub with data in `dir` on `port` and waits for its `READY` line.
    pub fn start(dir: &Path, port: u16) -> Hub {
        Self::start_with(dir, port, "")
    }

    /// Starts a hub with extra configuration (TOML sections).
    pub fn start_with(dir: &Path, port: u16, extra: &str) -> Hub {
        let config = write_config(dir.parent().unwrap_or(dir), port, extra);
        Self::start_configured(dir, &config)
    }

    /// Starts a hub with the configuration file `config`.
    pub fn start_configured(dir: &Path, config: &Path) -> Hub {
        Self::spawn(Command::new(bin("hub")), dir, config)
    }

    /// Starts a hub with extra configuration inside the cgroup v1 group `cgroup` (a directory
    /// under `/sys/fs/cgroup/memory`; root only): it joins before it runs, so every page it
    /// ever uses is charged to the group.
    pub fn start_in_cgroup(dir: &Path, port: u16, extra: &str, cgroup: &Path) -> Hub {
        let config = write_config(dir.parent().unwrap_or(dir), port, extra);
        let mut sh = Command::new("sh");
        sh.args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""]).arg(cgroup).arg(bin("hub"));
        Self::spawn(sh, dir, &config)
    }

    /// Starts a hub with the configuration file `config` inside the network namespace `ns`
    /// (its control socket, a file in `dir`, stays reachable from everywhere).
    pub fn start_in_netns(dir: &Path, config: &Path, ns: &netns::Netns) -> Hub {
        Self::spawn(ns.command(bin("hub")), dir, config)
    }

    fn spawn(mut command: Command, dir: &Path, config: &Path) -> Hub {
        let log = unique(dir.with_extension("log"));
        let mut child = command
            .args(["run", "--data-dir"])
            .arg(dir)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start hub");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line); // read on even when nobody listens
            }
        });
        let mut printed = Vec::new();
        let ready = loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(l) if l.starts_with("READY ") => break l,
                Ok(l) => printed.push(l),
                Err(_) => panic!(
                    "hub did not print READY; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        };
        let v: Value = serde_json::from_str(&ready["READY ".len()..]).expect("READY json");
        Hub {
            child,
            dir: dir.to_path_buf(),
            coap: v["coap"].as_str().and_then(|s| s.parse().ok()).expect("coap addr"),
            control: PathBuf::from(v["control"].as_str().expect("control")),
            log,
            web: v["web"].as_str().and_then(|s| s.parse().ok()).expect("web addr"),
            printed,
            stdout: std::sync::Mutex::new(rx),
        }
    }

    /// Waits for the hub to start again in the same process (after a factory reset): its next
    /// `READY` line; takes the addresses and start-up lines (new fingerprint, new setup code)
    /// it printed.
    pub fn restarted(&mut self, timeout: Duration) {
        let rx = self.stdout.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = Instant::now() + timeout;
        let mut printed = Vec::new();
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.starts_with("READY ") => break l,
                Ok(l) => printed.push(l),
                Err(_) => panic!(
                    "the hub did not start again; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        };
        drop(rx);
        let v: Value = serde_json::from_str(&ready["READY ".len()..]).expect("READY json");
        self.coap = v["coap"].as_str().and_then(|s| s.parse().ok()).expect("coap addr");
        self.control = PathBuf::from(v["control"].as_str().expect("control"));
        self.web = v["web"].as_str().and_then(|s| s.parse().ok()).expect("web addr");
        self.printed = printed;
    }

    /// Runs `hub ctl <args>` and returns its JSON answer (panics on failure).
    pub fn ctl(&self, args: &[&str]) -> Value {
        self.try_ctl(args).unwrap_or_else(|e| panic!("hub ctl {args:?}: {e}"))
    }

    /// Runs `hub ctl <args>`: the JSON answer, or the error text.
    pub fn try_ctl(&self, args: &[&str]) -> Result<Value, String> {
        let out = Command::new(bin("hub"))
            .arg("ctl")
            .arg("--socket")
            .arg(&self.control)
            .arg("--json")
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// Runs `hub ctl <args>` as a person would (tables, no `--json`): whether it succeeded,
    /// its standard output and its standard error.
    pub fn ctl_human(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin("hub"))
            .arg("ctl")
            .arg("--socket")
            .arg(&self.control)
            .args(args)
            .output()
            .expect("hub ctl");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    /// `hub ctl update add` with a manifest and an image: the hub's answer, or its error text.
    pub fn update_add(&self, manifest: &Path, image: &Path) -> Result<Value, String> {
        let path = |p: &Path| p.to_str().expect("utf-8 path").to_string();
        let (m, i) = (path(manifest), path(image));
        self.try_ctl(&["update", "add", "--manifest", &m, "--image", &i])
    }

    /// `hub ctl security` as JSON.
    pub fn security(&self) -> Value {
        self.ctl(&["security"])
    }

    /// Injects a fault (test builds: the hub's `fault-injection` feature) through the control
    /// socket, e.g. `wedge_main_runtime`; returns the hub's answer.
    pub fn fault(&self, fault: &str) -> Value {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&self.control).expect("control socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let req = serde_json::json!({"cmd": "fault", "fault": fault});
        writeln!(s, "{req}").expect("send");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("answer");
        serde_json::from_str(&line).expect("json answer")
    }

    /// Sends SIGTERM and waits up to `within` for the process to end; its exit status, or
    /// `None` if it was still running (it is then killed).
    pub fn terminate_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the hub with SIGKILL and reaps it.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the hub gracefully (SIGTERM) and waits for it to exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique(p: PathBuf) -> PathBuf {
    static N: Mutex<u32> = Mutex::new(0);
    let mut n = N.lock().unwrap_or_else(|e| e.into_inner());
    *n += 1;
    let mut s = p.into_os_string();
    s.push(format!("-{}", *n));
    PathBuf::from(s)
}

/// A running `sensor-sim` whose stdout lines can be awaited.
#[derive(Debug)]
pub struct Sim {
    /// The child.
    pub child: Child,
    lines: Receiver<String>,
    /// Every line seen so far.
    pub seen: Vec<String>,
}

impl Sim {
    /// Starts a fleet reporting to `hub_addr` (the hub or a relay in front of it) that plays the
    /// owner typing PINs on `hub`'s control socket and keeps its flash in `flash`.
    pub fn fleet(hub_addr: &str, hub: &Hub, flash: &Path, extra: &[&str]) -> Sim {
        let ctl = hub.control.to_str().expect("utf-8");
        let flash = flash.to_str().expect("utf-8");
        let mut args = vec!["fleet", "--hub", hub_addr, "--ctl", ctl, "--flash", flash];
        args.extend(extra);
        Sim::start(&args)
    }

    /// Starts `sensor-sim <args>`.
    pub fn start(args: &[&str]) -> Sim {
        Sim::spawn(Command::new(bin("sensor-sim")), args)
    }

    /// Starts `sensor-sim <args>` inside the network namespace `ns`.
    pub fn start_in_netns(ns: &netns::Netns, args: &[&str]) -> Sim {
        Sim::spawn(ns.command(bin("sensor-sim")), args)
    }

    fn spawn(mut command: Command, args: &[&str]) -> Sim {
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sensor-sim");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Sim { child, lines, seen: Vec::new() }
    }

    /// Reads lines until `f` returns `Some` or `timeout` passes.
    pub fn until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = f(&line);
                    self.seen.push(line);
                    if let Some(v) = hit {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let tail: Vec<&String> = self
                        .seen
                        .iter()
                        .rev()
                        .filter(|l| !l.starts_with("DELIVERED"))
                        .take(40)
                        .collect();
                    panic!("timed out waiting for {what}; last lines (newest first): {tail:#?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("sensor-sim exited while waiting for {what}")
                }
            }
        }
    }

    /// Reads lines for `window` (a measurement window, not a wait for a condition), handing each
    /// to `f`.
    pub fn read_for(&mut self, window: Duration, mut f: impl FnMut(&str)) {
        let end = Instant::now() + window;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    f(&line);
                    self.seen.push(line);
                }
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => panic!("sensor-sim exited"),
            }
        }
    }

    /// Waits until `n` sensors printed `PAIRED`; returns their device ids by sensor index.
    pub fn paired(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        let mut kids = std::collections::BTreeMap::new();
        self.until(&format!("{n} sensors paired"), timeout, |l| {
            if l.starts_with("PAIRED") {
                let index: usize =
                    field(l, "sensor").and_then(|i| i.parse().ok()).expect("sensor index");
                kids.insert(index, field(l, "kid").expect("kid").to_string());
            }
            (kids.len() == n).then_some(())
        });
        kids.into_values().collect()
    }

    /// Every line read so far.
    pub fn seen_lines(&self) -> &[String] {
        &self.seen
    }

    /// Takes the lines that arrived so far without waiting.
    pub fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    /// Stops the simulator gracefully (SIGTERM: unacknowledged measurements are written to
    /// flash first) and waits for it to exit.
    pub fn terminate(mut self) -> Vec<String> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        self.drain_until_closed();
        std::mem::take(&mut self.seen)
    }

    fn drain_until_closed(&mut self) {
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.seen.push(l);
        }
    }

    /// Stops the simulator (SIGKILL: its flash is durable anyway).
    pub fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.drain();
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CoAP request as an attacker would forge it: confirmable POST to `/r` with an OSCORE option
/// naming `kid` and `piv`, and `ciphertext` as payload.
pub fn forged_oscore(kid: &[u8], piv: u64, mid: u16, ciphertext: &[u8]) -> Vec<u8> {
    let piv_bytes: Vec<u8> = piv.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
    let piv_bytes = if piv_bytes.is_empty() { vec![0] } else { piv_bytes };
    let mut option = vec![0x08 | piv_bytes.len() as u8];
    option.extend_from_slice(&piv_bytes);
    option.extend_from_slice(kid);
    let mut p = coap_lite::Packet::new();
    p.header.set_type(coap_lite::MessageType::Confirmable);
    p.header.code = coap_lite::MessageClass::Request(coap_lite::RequestType::Post);
    p.header.message_id = mid;
    p.set_token(mid.to_be_bytes().to_vec());
    p.add_option(coap_lite::CoapOption::Oscore, option);
    p.payload = ciphertext.to_vec();
    p.to_bytes().expect("encode")
}

/// An attacker on `host` that forges requests for one kid from several source ports and reads
/// what the hub answers: 4.00 "Decryption failed" (a verification it was told failed) and
/// return-routability challenges (an unprotected 4.01 with an Echo option, which it can answer
/// when it really is at that address).
#[derive(Debug)]
pub struct Attacker {
    sockets: Vec<UdpSocket>,
    to: SocketAddr,
    kid: Vec<u8>,
    piv: u64,
    /// Forgeries sent.
    pub sent: u64,
    /// "Decryption failed" answers received.
    pub failures_seen: u64,
    /// Routability challenges received.
    pub challenges_seen: u64,
    /// Forgeries sent again with a challenge's Echo (proving this address).
    pub answered: u64,
}

impl Attacker {
    /// `ports` sockets on `host`, forging for `kid` at the hub `to`.
    pub fn new(to: SocketAddr, host: std::net::IpAddr, kid: &[u8], ports: usize) -> Attacker {
        let sockets = (0..ports.max(1))
            .map(|_| {
                let s = UdpSocket::bind(SocketAddr::new(host, 0)).expect("attacker bind");
                s.set_nonblocking(true).expect("nonblocking");
                s
            })
            .collect();
        let piv = 1_000_000 + u64::from(host_byte(host)) * 10_000_000;
        Attacker {
            sockets,
            to,
            kid: kid.to_vec(),
            piv,
            sent: 0,
            failures_seen: 0,
            challenges_seen: 0,
            answered: 0,
        }
    }

    fn forgery(&mut self, echo: Option<&[u8]>) -> Vec<u8> {
        self.piv += 1;
        let body: Vec<u8> =
            (0..24u64).map(|i| (self.piv.wrapping_mul(2_654_435_761) >> (i % 24)) as u8).collect();
        let d = forged_oscore(&self.kid, self.piv, self.piv as u16, &body);
        match echo {
            None => d,
            Some(v) => {
                let mut p = coap_lite::Packet::from_bytes(&d).expect("own forgery");
                p.add_option(
                    coap_lite::CoapOption::Unknown(protocol::link::ECHO_OPTION),
                    v.to_vec(),
                );
                p.to_bytes().expect("encode")
            }
        }
    }

    /// Sends `n` forgeries, round robin over the ports.
    pub fn forge(&mut self, n: u64) {
        for _ in 0..n {
            let d = self.forgery(None);
            let i = (self.sent % self.sockets.len() as u64) as usize;
            let _ = self.sockets[i].send_to(&d, self.to);
            self.sent += 1;
        }
    }

    /// Reads every answer waiting; with `answer`, each challenge is answered once with a new
    /// forgery carrying its Echo from the port it came to.
    pub fn drain(&mut self, answer: bool) {
        let mut buf = [0u8; 1500];
        for i in 0..self.sockets.len() {
            while let Ok(n) = self.sockets[i].recv(&mut buf) {
                let Ok(p) = coap_lite::Packet::from_bytes(&buf[..n]) else { continue };
                let code = p.header.code;
                if code == coap_lite::MessageClass::Response(coap_lite::ResponseType::BadRequest)
                    && p.payload == b"Decryption failed"
                {
                    self.failures_seen += 1;
                }
                let echo = p
                    .get_first_option(coap_lite::CoapOption::Unknown(protocol::link::ECHO_OPTION))
                    .cloned();
                if let Some(echo) = echo {
                    self.challenges_seen += 1;
                    if answer {
                        let d = self.forgery(Some(&echo));
                        let _ = self.sockets[i].send_to(&d, self.to);
                        self.sent += 1;
                        self.answered += 1;
                    }
                }
            }
        }
    }

    /// Runs an attacker on its own thread: `rate` forgeries a second (answering challenges if
    /// `answer`) until `stop`; returns it with its counts when joined.
    pub fn flood(
        mut self,
        rate: u64,
        answer: bool,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<Attacker> {
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let due = started.elapsed().as_millis() as u64 * rate / 1000;
                if self.sent < due {
                    self.forge((due - self.sent).min(64));
                }
                self.drain(answer);
                // Pacing the attack, not waiting for a condition.
                std::thread::sleep(Duration::from_millis(2));
            }
            self.drain(answer);
            self
        })
    }
}

fn host_byte(host: std::net::IpAddr) -> u8 {
    match host {
        std::net::IpAddr::V4(v4) => v4.octets()[3],
        std::net::IpAddr::V6(v6) => v6.octets()[15],
    }
}

/// A blind spoofer: sends UDP datagrams with any IPv4 source address and port through a raw
/// socket, and never receives what is sent back there (needs root or CAP_NET_RAW).
#[derive(Debug)]
pub struct Spoofer {
    socket: socket2::Socket,
}

impl Spoofer {
    /// A raw IPv4 socket (`IPPROTO_RAW`: the datagram carries its own IP header).
    pub fn new() -> std::io::Result<Spoofer> {
        const SOCK_RAW: i32 = 3;
        const IPPROTO_RAW: i32 = 255;
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::from(SOCK_RAW),
            Some(socket2::Protocol::from(IPPROTO_RAW)),
        )?;
        Ok(Spoofer { socket })
    }

    /// Sends `payload` as a UDP datagram from `from` to `to` (the kernel fills in the IP
    /// checksum and id; the UDP checksum is left out, which IPv4 allows).
    pub fn send(
        &self,
        from: std::net::SocketAddrV4,
        to: std::net::SocketAddrV4,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let udp_len = 8 + payload.len();
        let total = 20 + udp_len;
        let mut p = Vec::with_capacity(total);
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
        p.extend_from_slice(&from.ip().octets());
        p.extend_from_slice(&to.ip().octets());
        p.extend_from_slice(&from.port().to_be_bytes());
        p.extend_from_slice(&to.port().to_be_bytes());
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        self.socket.send_to(&p, &SocketAddr::V4(to).into())?;
        Ok(())
    }
}

/// Sends `datagram` to `to` from a fresh socket (a new source port) and returns the answer's
/// code and payload, if one comes within a few seconds.
pub fn send_from_new_port(to: SocketAddr, datagram: &[u8]) -> Option<(String, Vec<u8>, bool)> {
    let s = UdpSocket::bind("127.0.0.1:0").expect("socket");
    s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    s.send_to(datagram, to).expect("send");
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    let p = coap_lite::Packet::from_bytes(&buf[..n]).ok()?;
    let code = match p.header.code {
        coap_lite::MessageClass::Response(r) => format!("{r:?}"),
        other => format!("{other:?}"),
    };
    let protected = p.get_option(coap_lite::CoapOption::Oscore).is_some();
    Some((code, p.payload, protected))
}

/// Sends a pairing hello from a fresh socket (a new source port) as a sensor does: when the hub
/// answers 4.01 with an Echo option (its return-routability cookie, RFC 9175), sends it again
/// with that option. The final answer's code and payload, if one comes within a few seconds.
pub fn hello_from_new_port(to: SocketAddr, datagram: &[u8]) -> Option<(String, Vec<u8>)> {
    let s = UdpSocket::bind(SocketAddr::new(to.ip(), 0)).expect("socket");
    s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let mut request = coap_lite::Packet::from_bytes(datagram).expect("a CoAP request");
    let echo = coap_lite::CoapOption::Unknown(protocol::pairing::ECHO_OPTION);
    for _ in 0..3 {
        s.send_to(&request.to_bytes().expect("encode"), to).expect("send");
        let mut buf = [0u8; 1500];
        let (n, _) = s.recv_from(&mut buf).ok()?;
        let p = coap_lite::Packet::from_bytes(&buf[..n]).ok()?;
        let code = match p.header.code {
            coap_lite::MessageClass::Response(r) => format!("{r:?}"),
            other => format!("{other:?}"),
        };
        match p.get_first_option(echo) {
            Some(cookie) if code == "Unauthorized" => {
                request.header.message_id = request.header.message_id.wrapping_add(1);
                request.set_option(echo, [cookie.clone()].into_iter().collect());
            }
            _ => return Some((code, p.payload)),
        }
    }
    None
}

/// Files and folders below `dir` whose mode lets anyone but the owner in.
pub fn open_to_others(dir: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let Ok(meta) = e.metadata() else { continue };
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 && !meta.file_type().is_symlink() {
                out.push((e.path(), mode));
            }
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// The value of `key=` in a `KEY=value` line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Python with aiocoap: `$HEARTH_PYTHON`, else the repository's `.venv`.
pub fn python() -> PathBuf {
    let p = std::env::var_os("HEARTH_PYTHON")
        .map_or_else(|| root().join(".venv/bin/python"), PathBuf::from);
    assert!(
        p.exists(),
        "{} missing: run `bash scripts/test`, which installs aiocoap into .venv",
        p.display()
    );
    p
}

/// A UDP relay between a client and the hub that records what the client sends and can tamper
/// with chosen datagrams (flips a byte of the ciphertext).
#[derive(Debug)]
pub struct Relay {
    /// Where clients send to.
    pub addr: SocketAddr,
    /// Datagrams from the client, in order.
    pub captured: std::sync::Arc<Mutex<Vec<Vec<u8>>>>,
    /// Indices (0-based, among client datagrams) to tamper with.
    pub tamper: std::sync::Arc<Mutex<Vec<usize>>>,
    /// Tokens of client requests the hub answered with an OSCORE-protected response.
    pub answered: std::sync::Arc<Mutex<std::collections::HashSet<Vec<u8>>>>,
}

impl Relay {
    /// Starts relaying to `hub`.
    pub fn start(hub: SocketAddr) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").expect("relay front");
        let back = UdpSocket::bind("127.0.0.1:0").expect("relay back");
        back.connect(hub).expect("connect hub");
        let addr = front.local_addr().expect("addr");
        let captured = std::sync::Arc::new(Mutex::new(Vec::new()));
        let tamper = std::sync::Arc::new(Mutex::new(Vec::new()));
        let client: std::sync::Arc<Mutex<Option<SocketAddr>>> =
            std::sync::Arc::new(Mutex::new(None));
        let answered = std::sync::Arc::new(Mutex::new(std::collections::HashSet::new()));
        let (f2, b2, c2, a2) = (
            front.try_clone().expect("clone"),
            back.try_clone().expect("clone"),
            client.clone(),
            answered.clone(),
        );
        let (cap, tam) = (captured.clone(), tamper.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = front.recv_from(&mut buf) {
                *client.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
                let mut d = buf[..n].to_vec();
                let mut cap = cap.lock().unwrap_or_else(|e| e.into_inner());
                if tam.lock().unwrap_or_else(|e| e.into_inner()).contains(&cap.len()) {
                    let last = d.len() - 1;
                    d[last] ^= 0x01;
                }
                cap.push(buf[..n].to_vec());
                drop(cap);
                let _ = back.send(&d);
            }
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                let n = match b2.recv(&mut buf) {
                    Ok(n) => n,
                    // The hub restarting makes the connected socket report refusals: keep going.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                    Err(_) => return,
                };
                if let Ok(p) = coap_lite::Packet::from_bytes(&buf[..n])
                    && p.get_option(coap_lite::CoapOption::Oscore).is_some()
                {
                    a2.lock().unwrap_or_else(|e| e.into_inner()).insert(p.get_token().to_vec());
                }
                let client = *c2.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(c) = client {
                    let _ = f2.send_to(&buf[..n], c);
                }
            }
        });
        Relay { addr, captured, tamper, answered }
    }
}

/// The simulated manufacturer: a key pair, a feed directory, and (optionally) its HTTPS server.
#[derive(Debug)]
pub struct Maker {
    /// Key directory.
    pub keys: PathBuf,
    /// Feed directory.
    pub feed: PathBuf,
    /// Public key, hex.
    pub public: String,
    server: Option<Child>,
}

impl Maker {
    /// Generates a key pair under `dir`.
    pub fn new(dir: &Path) -> Maker {
        let keys = dir.join("maker-keys");
        let out = Command::new(bin("sensor-sim"))
            .args(["maker", "keygen", "--keys"])
            .arg(&keys)
            .output()
            .expect("keygen");
        assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let public = text.trim().strip_prefix("KEY ").expect("KEY line").to_string();
        Maker { keys, feed: dir.join("feed"), public, server: None }
    }

    /// Publishes a release; `extra` are further `maker publish` flags.
    pub fn publish(&self, model: &str, version: u32, size: usize, extra: &[&str]) {
        let out = Command::new(bin("sensor-sim"))
            .args(["maker", "publish", "--keys"])
            .arg(&self.keys)
            .arg("--feed")
            .arg(&self.feed)
            .args([
                "--model",
                model,
                "--version",
                &version.to_string(),
                "--size",
                &size.to_string(),
            ])
            .args(extra)
            .output()
            .expect("publish");
        assert!(out.status.success(), "publish: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Signs and publishes an advisory for `model` versions `low..=high`.
    pub fn advisory(&self, model: &str, low: u32, high: u32, fixed_in: Option<u32>, text: &str) {
        let (low, high) = (low.to_string(), high.to_string());
        let fixed = fixed_in.map(|v| v.to_string());
        let mut args = vec!["--model", model, "--low", &low, "--high", &high, "--text", text];
        if let Some(f) = &fixed {
            args.extend(["--fixed-in", f.as_str()]);
        }
        let out = Command::new(bin("sensor-sim"))
            .args(["maker", "advisory", "--keys"])
            .arg(&self.keys)
            .arg("--feed")
            .arg(&self.feed)
            .args(["--severity", "critical"])
            .args(&args)
            .output()
            .expect("advisory");
        assert!(out.status.success(), "advisory: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Paths of a published release's manifest and image.
    pub fn files(&self, model: &str, version: u32) -> (PathBuf, PathBuf) {
        let index: Value =
            serde_json::from_slice(&std::fs::read(self.feed.join("feed.json")).expect("feed.json"))
                .expect("json");
        let e = index["releases"]
            .as_array()
            .and_then(|r| r.iter().find(|e| e["model"] == model && e["version"] == version))
            .expect("release in feed");
        (
            self.feed.join(e["manifest"].as_str().expect("m")),
            self.feed.join(e["image"].as_str().expect("i")),
        )
    }

    /// Serves the feed over HTTPS; returns (url, certificate file).
    pub fn serve(&mut self, dir: &Path) -> (String, PathBuf) {
        std::fs::create_dir_all(&self.feed).expect("feed dir");
        let mut child = Command::new(bin("sensor-sim"))
            .args(["maker", "serve", "--feed"])
            .arg(&self.feed)
            .arg("--tls")
            .arg(dir.join("feed-tls"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("FEED line");
        self.server = Some(child);
        let mut parts = line.split_whitespace().skip(1);
        let url = parts.next().expect("url").to_string();
        let cert = PathBuf::from(parts.next().expect("cert"));
        (url, cert)
    }

    /// The `[updates]` trust entries for `models`.
    pub fn trust_toml(&self, models: &[&str]) -> String {
        models
            .iter()
            .map(|m| format!("[[updates.trust]]\nmodel = \"{m}\"\nkey = \"{}\"\n", self.public))
            .collect()
    }
}

impl Drop for Maker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.server {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
