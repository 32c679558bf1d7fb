//! Network namespaces for process tests (root only; issue 20 item 4): a hub, a fleet and the
//! wire between them, joined by veth pairs, with addresses that exist only inside the test's own
//! namespaces. Every namespace is deleted when its guard drops, also when the test fails; ones
//! left by a test process that was killed are deleted by the next test that makes any.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace the tests make: `hearth-<pid>-<n>-<role>`.
const PREFIX: &str = "hearth-";

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes a fresh namespace with its loopback up.
    pub fn create(role: &str) -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{role}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` to be run inside the namespace (`ip netns exec`, which execs it: the child's
    /// pid is the program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `ip -n <ns> <args>` and checks that it succeeded.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(["-n", &self.name]).args(args));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).status();
    }
}

fn run(c: &mut Command) {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "{c:?} failed (network namespaces need root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes namespaces left by test processes that no longer run.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}

/// Three namespaces in a row: `hub` ─veth─ `wire` ─veth─ `fleet`. Nothing routes between
/// `hub` and `fleet`: whatever crosses goes through a program listening in `wire` (the relay).
#[derive(Debug)]
pub struct Lab {
    /// The hub's namespace (address [`Lab::HUB`]).
    pub hub: Netns,
    /// The path between them ([`Lab::WIRE_HUB`] toward the hub, [`Lab::WIRE_FLEET`] toward
    /// the fleet).
    pub wire: Netns,
    /// The sensors' and clients' namespace (address [`Lab::FLEET`]).
    pub fleet: Netns,
}

impl Lab {
    /// The hub's address.
    pub const HUB: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
    /// The wire's address on the hub's side.
    pub const WIRE_HUB: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
    /// The wire's address on the fleet's side.
    pub const WIRE_FLEET: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
    /// The fleet's address.
    pub const FLEET: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);

    /// Makes the namespaces, the two veth pairs and the addresses.
    pub fn new() -> Lab {
        remove_stale();
        let lab = Lab {
            hub: Netns::create("hub"),
            wire: Netns::create("wire"),
            fleet: Netns::create("fleet"),
        };
        let pair = |a: &Netns,
                    a_if: &str,
                    a_ip: Ipv4Addr,
                    b: &Netns,
                    b_if: &str,
                    b_ip: Ipv4Addr| {
            a.ip(&["link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name()]);
            a.ip(&["addr", "add", &format!("{a_ip}/24"), "dev", a_if]);
            b.ip(&["addr", "add", &format!("{b_ip}/24"), "dev", b_if]);
            a.ip(&["link", "set", a_if, "up"]);
            b.ip(&["link", "set", b_if, "up"]);
        };
        pair(&lab.wire, "to-hub", Self::WIRE_HUB, &lab.hub, "eth0", Self::HUB);
        pair(&lab.wire, "to-fleet", Self::WIRE_FLEET, &lab.fleet, "eth0", Self::FLEET);
        lab
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}
