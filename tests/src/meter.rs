//! A fleet whose every output line is recorded with its arrival time by a thread of its own, so
//! that a test can count deliveries (acknowledged readings) per time window while it attacks the
//! hub from the test thread, and check afterwards that every acknowledged reading is stored.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Hub, bin, field};

/// A running `sensor-sim fleet` with a time-stamped record of its output.
#[derive(Debug)]
pub struct Meter {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

/// Deliveries in two windows of equal length and their ratio.
#[derive(Debug, Clone, Copy)]
pub struct Ratio {
    /// Deliveries in the window before the attack.
    pub normal: usize,
    /// Deliveries in the window of the attack.
    pub attacked: usize,
}

impl Ratio {
    /// `attacked / normal`.
    pub fn value(&self) -> f64 {
        self.attacked as f64 / self.normal.max(1) as f64
    }
}

impl Meter {
    /// Starts a fleet of `sensors` sensors reporting every `interval_ms` to `hub`, playing the
    /// owner on its control socket (they pair themselves), with its flash in `flash`.
    pub fn fleet(
        hub: &Hub,
        flash: &Path,
        sensors: usize,
        interval_ms: u64,
        extra: &[&str],
    ) -> Self {
        let coap = format!("127.0.0.1:{}", hub.coap.port());
        let (n, interval) = (sensors.to_string(), interval_ms.to_string());
        let mut args = vec![
            "fleet",
            "--hub",
            &coap,
            "--ctl",
            hub.control.to_str().expect("utf-8"),
            "--flash",
            flash.to_str().expect("utf-8"),
            "--sensors",
            &n,
            "--interval-ms",
            &interval,
        ];
        args.extend(extra);
        Self::start(&args)
    }

    /// Starts `sensor-sim <args>`.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(bin("sensor-sim"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sensor-sim");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap_or_else(|e| e.into_inner()).push((Instant::now(), line));
            }
        });
        Meter { child, lines }
    }

    fn with<T>(&self, f: impl FnOnce(&[(Instant, String)]) -> T) -> T {
        f(&self.lines.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until `n` sensors printed `PAIRED`; their device ids.
    pub fn paired(&self, n: usize, timeout: Duration) -> BTreeSet<String> {
        crate::wait_for(&format!("{n} sensors paired"), timeout, || {
            let kids: BTreeSet<String> = self.with(|l| {
                l.iter()
                    .filter(|(_, l)| l.starts_with("PAIRED"))
                    .filter_map(|(_, l)| field(l, "kid").map(str::to_string))
                    .collect()
            });
            (kids.len() >= n).then_some(kids)
        })
    }

    /// Readings acknowledged between `from` and `to` (by arrival of the `DELIVERED` line).
    pub fn delivered_between(&self, from: Instant, to: Instant) -> usize {
        self.with(|l| {
            l.iter().filter(|(at, l)| *at >= from && *at < to && l.starts_with("DELIVERED")).count()
        })
    }

    /// Waits until `window` has passed since `from`; the deliveries in it.
    pub fn count_window(&self, from: Instant, window: Duration) -> usize {
        let to = from + window;
        crate::wait_for("the window to pass", window + Duration::from_secs(5), || {
            (Instant::now() >= to).then_some(())
        });
        self.delivered_between(from, to)
    }

    /// Deliveries while `attack` runs, against the same length of time just before it: the
    /// window before it is measured first (`window`), then `attack` runs (it must take at least
    /// `window`; only its first `window` is compared, so slow set-up at its end does not count).
    pub fn during<T>(&self, window: Duration, attack: impl FnOnce() -> T) -> (Ratio, T) {
        let before = Instant::now();
        let normal = self.count_window(before, window);
        let start = Instant::now();
        let out = attack();
        let elapsed = start.elapsed();
        assert!(
            elapsed >= window,
            "the attack ran {elapsed:?}, shorter than the window {window:?}"
        );
        let attacked = self.delivered_between(start, start + window);
        (Ratio { normal, attacked }, out)
    }

    /// Every acknowledged reading so far, as (device id, measurement time in ms).
    pub fn acknowledged(&self) -> BTreeMap<String, BTreeSet<i64>> {
        let mut out: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
        self.with(|l| {
            for (_, line) in l.iter().filter(|(_, l)| l.starts_with("DELIVERED")) {
                let kid = field(line, "kid").unwrap_or_default().to_string();
                if let Some(t) = field(line, "time_ms").and_then(|t| t.parse().ok()) {
                    out.entry(kid).or_default().insert(t);
                }
            }
        });
        out
    }

    /// Lines so far that start with `prefix`.
    pub fn lines(&self, prefix: &str) -> Vec<String> {
        self.with(|l| {
            l.iter().filter(|(_, l)| l.starts_with(prefix)).map(|(_, l)| l.clone()).collect()
        })
    }

    /// Stops the fleet (SIGTERM: unacknowledged measurements go to its flash) and waits.
    pub fn terminate(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks that every reading in `acknowledged` is stored by `hub` (queried with `hub ctl
/// readings`); returns how many were checked.
pub fn assert_all_stored(hub: &Hub, acknowledged: &BTreeMap<String, BTreeSet<i64>>) -> usize {
    let mut checked = 0;
    for (kid, times) in acknowledged {
        let stored = hub.ctl(&["readings", kid, "--limit", "10000"]);
        let stored: BTreeSet<i64> = stored
            .as_array()
            .expect("readings")
            .iter()
            .filter_map(|r| r["time_ms"].as_i64())
            .collect();
        let missing: Vec<&i64> = times.iter().filter(|t| !stored.contains(t)).collect();
        assert!(missing.is_empty(), "{kid}: acknowledged but not stored: {missing:?}");
        checked += times.len();
    }
    checked
}
