//! A running `hub`: start it on loopback (plain, in a cgroup or a network namespace), read its
//! `READY` line, run `hub ctl` against it, restart, stop or kill it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{bin, netns};

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

    /// Adds an MQTT user with `hub ctl mqtt-user add NAME`, typing `password` on its standard
    /// input (with none the hub makes one up and prints it). Its JSON answer.
    pub fn add_mqtt_user(&self, name: &str, password: Option<&str>) -> Value {
        use std::io::Write as _;
        let mut child = Command::new(bin("hub"))
            .args(["ctl", "--json", "--socket"])
            .arg(&self.control)
            .args(["mqtt-user", "add", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("hub ctl");
        let mut stdin = child.stdin.take().expect("stdin");
        if let Some(p) = password {
            writeln!(stdin, "{p}").expect("write password");
        }
        drop(stdin);
        let out = child.wait_with_output().expect("hub ctl");
        assert!(out.status.success(), "mqtt-user add {name} failed");
        serde_json::from_slice(&out.stdout).expect("json answer")
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
