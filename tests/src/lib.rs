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

pub mod netfault;
pub mod netns;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// Path of a workspace binary, built (debug) on first use.
pub fn bin(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--bin", "hub", "--bin", "sensor-sim", "--bin", "demo"])
            .current_dir(root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    target_dir().join("debug").join(name)
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
}

/// Writes a test configuration: fixed port, generous pairing limits for a simulated fleet, and
/// `extra` TOML sections. MQTT (fixed ports by default) is off unless `extra` has `[mqtt]`; the
/// web UI listens on a free loopback port unless `extra` has `[web]` (then it says `bind`).
pub fn write_config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let path = dir.join("hub.toml");
    let mqtt = if extra.contains("[mqtt]") { "" } else { "[mqtt]\nenabled = false\n" };
    let web = if extra.contains("[web]") { "" } else { "[web]\nbind = \"127.0.0.1:0\"\n" };
    let text = format!(
        "coap_bind = \"127.0.0.1:{port}\"\n{web}[pairing]\nmax_sessions = 1024\nsessions_per_source = 1024\n{mqtt}{extra}"
    );
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
                if tx.send(line).is_err() {
                    return;
                }
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
        }
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
