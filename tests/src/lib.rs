//! Helpers for integration tests that run the real executables (ripgrep style): build them once,
//! start a hub on loopback and read its `READY` line, run `hub ctl`, run `sensor-sim` and follow
//! its output, and wait for conditions with deadlines (never sleeps as a way of waiting).

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

mod attack;
pub mod ha;
mod hub;
mod maker;
pub mod meter;
pub mod netfault;
pub mod netns;
mod relay;
mod sim;
mod tmpfs;
pub use attack::{Attacker, Spoofer, forged_oscore, hello_from_new_port, send_from_new_port};
pub use hub::{FLEET_PAIRING, Hub, open_to_others, write_config};
pub use maker::Maker;
pub use meter::Meter;
pub use relay::Relay;
pub use sim::Sim;
pub use tmpfs::Tmpfs;

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

/// Now, Unix ms.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A free UDP port on loopback (bound, read, released).
pub fn free_udp_port() -> u16 {
    unused_port(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

/// A TCP port free on loopback now (for listeners that must keep their port across a restart).
pub fn free_tcp_port() -> u16 {
    unused_port(|p| std::net::TcpListener::bind(("0.0.0.0", p)).is_ok())
}

/// Where the ports tests give their listeners come from: below the kernel's ephemeral range
/// (32768–60999 by default). A port found by binding port 0 is in that range, and while a hub
/// restarts on it, any test's outgoing connection can take it as its source port (seen: a
/// restarted hub's MQTT front refused with "Address already in use").
const PORTS: std::ops::Range<u32> = 20_000..32_000;

/// The next port of [`PORTS`] that `free` says is free; each is handed out once per process
/// (each test binary is one process; processes start at different places).
fn unused_port(free: impl Fn(u16) -> bool) -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = PORTS.end - PORTS.start;
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = PORTS.start + (start + n) % span;
        let port = u16::try_from(port).expect("ports below 65536");
        if free(port) {
            return port;
        }
    }
    panic!("no free port in {PORTS:?}");
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

/// The lines a child prints on its stdout (piped), as they come, from a reader thread.
pub fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    lines
}
