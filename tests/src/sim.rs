//! A running `sensor-sim` whose stdout lines can be awaited with deadlines.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use crate::{Hub, bin, field, netns};

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
