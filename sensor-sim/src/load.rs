//! The load generator: pairs (or reuses) N sensors, offers R readings/s in total for S seconds,
//! and reports one JSON line (offered, acknowledged, rate, latency percentiles, errors, hub RSS).
//! With `plain`, it sends unprotected CoAP POSTs of the same size to any CoAP server instead.
//! Either way a sensor whose last reading is not answered yet lets its turn pass (the offer is
//! dropped, not buffered): beyond the server's capacity both modes measure that capacity, and
//! the generator does no work for readings that would only wait.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ctl;
use crate::fleet::{self, FleetConfig, FleetEvent, SimFaults, WhenBusy};

/// Load settings.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Hub (or any CoAP server with `plain`).
    pub hub: SocketAddr,
    /// Sensors.
    pub sensors: u32,
    /// Offered readings per second, in total.
    pub rate: f64,
    /// Seconds of load.
    pub duration: f64,
    /// The hub's control socket, to pair sensors that are not paired yet.
    pub ctl: Option<PathBuf>,
    /// Flash file to reuse paired sensors across runs.
    pub flash: Option<PathBuf>,
    /// The hub's pid, to report its resident memory.
    pub hub_pid: Option<u32>,
    /// Unprotected CoAP instead of OSCORE.
    pub plain: bool,
    /// Seed.
    pub seed: u64,
    /// Sockets.
    pub sockets: usize,
}

/// The JSON line the load generator prints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// "oscore" or "plain".
    pub mode: &'static str,
    /// Sensors used.
    pub sensors: u32,
    /// Target rate.
    pub target_rate: f64,
    /// Seconds measured.
    pub duration_s: f64,
    /// Readings offered.
    pub offered: u64,
    /// Readings acknowledged.
    pub acknowledged: u64,
    /// Acknowledged per second within the load window (the drain afterwards not counted).
    pub readings_per_s: f64,
    /// Latency percentiles, measurement to acknowledgement.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Errors by kind.
    pub errors: HashMap<&'static str, u64>,
    /// The hub's resident set size in KiB, if `hub_pid` was given.
    pub hub_rss_kib: Option<u64>,
    /// The server's CPU time (user + system, all threads) per acknowledged reading over the
    /// load window and its drain, in microseconds, if `hub_pid` was given: what a reading costs
    /// the gateway (at one reading a minute, N sensors use N × this / 60 s of a core).
    pub hub_cpu_us_per_reading: Option<f64>,
    /// This generator's own CPU time per acknowledged reading over the same span, in
    /// microseconds: on a machine it shares with the server, what the load takes from it.
    pub generator_cpu_us_per_reading: Option<f64>,
    /// Seconds spent pairing before the load.
    pub pairing_s: f64,
    /// When the load window began, Unix ms (the warm-up's readings are older): what a
    /// subscriber's messages are matched against.
    pub window_start_ms: i64,
}

/// Why the load run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The fleet failed.
    #[error(transparent)]
    Fleet(#[from] fleet::FleetError),
    /// The control socket failed.
    #[error(transparent)]
    Ctl(#[from] ctl::CtlError),
    /// Sockets failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// Pairing did not finish.
    #[error("only {0} of {1} sensors paired")]
    Pairing(u32, u32),
}

/// Runs the load and returns the report.
pub async fn run(config: LoadConfig) -> Result<LoadReport, LoadError> {
    if config.plain {
        return run_plain(config).await;
    }
    let shutdown = CancellationToken::new();
    let _guard = shutdown.clone().drop_guard();
    let (tx, mut events) = mpsc::unbounded_channel();
    let fc = FleetConfig {
        sockets: config.sockets,
        seed: config.seed,
        flash: config.flash.clone(),
        faults: SimFaults::none(),
        ..FleetConfig::new(config.hub, config.sensors)
    };
    let fleet = fleet::spawn(fc, Some(tx), shutdown.clone()).await?;
    let started = Instant::now();
    let status = fleet.status().await?;
    if status.paired < config.sensors {
        let Some(sock) = config.ctl.clone() else {
            return Err(LoadError::Pairing(status.paired, config.sensors));
        };
        ctl::pair_open(&sock, 3600).await?;
        // Pair in waves, so the hub's limit on sensors waiting for a PIN is never the bottleneck.
        const WAVE: u32 = 128;
        let mut paired = status.paired;
        let mut next = 0u32;
        let mut in_progress = 0u32;
        let unpaired = fleet.unpaired().await?;
        let deadline = Instant::now() + Duration::from_secs(1800);
        let mut flash_paired = std::collections::HashSet::new();
        while paired < config.sensors && Instant::now() < deadline {
            while in_progress < WAVE && (next as usize) < unpaired.len() {
                fleet.pair(unpaired[next as usize]);
                next += 1;
                in_progress += 1;
            }
            match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
                Ok(Some(FleetEvent::PinShown { serial, pin, .. })) => {
                    let sock = sock.clone();
                    tokio::spawn(async move {
                        if let Err(e) = ctl::pair_pin(&sock, &pin, &serial).await {
                            tracing::warn!(%serial, error = %e, "PIN entry failed");
                        }
                    });
                }
                Ok(Some(FleetEvent::Paired { index, .. })) => {
                    if flash_paired.insert(index) {
                        paired += 1;
                    }
                    in_progress = in_progress.saturating_sub(1);
                }
                Ok(Some(FleetEvent::PairingFailed { index, .. })) => fleet.pair(index),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {}
            }
        }
        if paired < config.sensors {
            return Err(LoadError::Pairing(paired, config.sensors));
        }
    }
    let pairing_s = started.elapsed().as_secs_f64();
    // Drain events from now on (latencies are collected inside the fleet).
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    // Warm-up: one reading per sensor, so first sequence leases (one fsync'd flash write each)
    // are behind us and the measurement is of the steady state.
    let warm = fleet.status().await?;
    for i in 0..config.sensors {
        fleet.measure(i);
    }
    let warm_deadline = Instant::now() + Duration::from_secs(60);
    while fleet.status().await?.acknowledged < warm.acknowledged + u64::from(config.sensors)
        && Instant::now() < warm_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = fleet.status().await?;
    let _ = fleet.take_latencies().await?;
    let cpu_before = config.hub_pid.and_then(cpu_us);
    let own_before = cpu_us(std::process::id());
    let t0 = Instant::now();
    let window_start_ms = crate::clock::unix_millis();
    fleet.offer(config.rate, config.duration, WhenBusy::Drop);
    tokio::time::sleep(Duration::from_secs_f64(config.duration)).await;
    // The sustained rate counts only what was acknowledged within the load window.
    let at_end = fleet.status().await?;
    let window = t0.elapsed().as_secs_f64();
    // Give the last readings a moment to be acknowledged.
    let drain_until = Instant::now() + Duration::from_secs(5);
    loop {
        let s = fleet.status().await?;
        if s.queued == 0 || Instant::now() > drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = fleet.status().await?;
    let mut lat = fleet.take_latencies().await?;
    let mut report = LoadReport {
        mode: "oscore",
        sensors: config.sensors,
        target_rate: config.rate,
        duration_s: config.duration,
        offered: after.offered - before.offered,
        acknowledged: after.acknowledged - before.acknowledged,
        pairing_s,
        window_start_ms,
        ..Default::default()
    };
    report.readings_per_s = (at_end.acknowledged - before.acknowledged) as f64 / window;
    report.hub_cpu_us_per_reading = per_reading(cpu_before, config.hub_pid, report.acknowledged);
    report.generator_cpu_us_per_reading =
        per_reading(own_before, Some(std::process::id()), report.acknowledged);
    percentiles(&mut lat, &mut report);
    let unacked = report.offered.saturating_sub(report.acknowledged);
    if unacked > 0 {
        report.errors.insert("unacknowledged", unacked);
    }
    if after.refused > before.refused {
        report.errors.insert("refused", after.refused - before.refused);
    }
    report.hub_rss_kib = config.hub_pid.and_then(rss_kib);
    Ok(report)
}

fn percentiles(lat: &mut [u64], report: &mut LoadReport) {
    if lat.is_empty() {
        return;
    }
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0;
    report.p50_ms = at(0.50);
    report.p99_ms = at(0.99);
    report.p999_ms = at(0.999);
}

/// A process's CPU time so far (user + system, every thread), in microseconds.
pub fn cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses: utime and stime
    // are the 12th and 13th, in clock ticks of USER_HZ, which Linux fixes at 100 for /proc.
    let rest = stat.rsplit_once(')')?.1;
    let mut f = rest.split_whitespace().skip(11);
    let (utime, stime): (u64, u64) = (f.next()?.parse().ok()?, f.next()?.parse().ok()?);
    Some((utime + stime) * 10_000)
}

/// CPU microseconds per reading since `before` (none without a pid or readings).
fn per_reading(before: Option<u64>, pid: Option<u32>, readings: u64) -> Option<f64> {
    let spent = pid.and_then(cpu_us)?.checked_sub(before?)?;
    (readings > 0).then(|| spent as f64 / readings as f64)
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Unprotected CoAP POSTs of the same size as an OSCORE reading, for comparison with other
/// servers (e.g. libcoap's `coap-server`). One request in flight per simulated sensor; the
/// token is the sensor's index, so an answer, a send and a timeout each cost O(1).
async fn run_plain(config: LoadConfig) -> Result<LoadReport, LoadError> {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let bind = SocketAddr::new(config.hub.ip(), 0);
    let sock = crate::net::bind_udp(bind)?;
    let n = config.sensors.max(1);
    // Payload: the size of a typical protected reading's ciphertext.
    let payload = vec![0xa5u8; 60];
    // Per sensor: when its request went out and its serial number (None: idle).
    let mut sent: Vec<Option<(Instant, u64)>> = vec![None; n as usize];
    // Requests in the order they went out, for timeouts (stale entries are skipped).
    let mut expiry: VecDeque<(Instant, u32, u64)> = VecDeque::new();
    let mut in_flight = 0usize;
    let mut lat = Vec::new();
    let mut offered = 0u64;
    let mut mid: u16 = 0;
    let cpu_before = config.hub_pid.and_then(cpu_us);
    let own_before = cpu_us(std::process::id());
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(config.duration);
    let interval = Duration::from_secs_f64(1.0 / config.rate.max(1.0));
    let mut next = start;
    let mut cursor = 0u32;
    let mut buf = vec![0u8; 2048];
    let mut timeouts = 0u64;
    let mut answered_in_window = 0u64;
    loop {
        let now = Instant::now();
        if now >= end + TIMEOUT || (now >= end && in_flight == 0) {
            break;
        }
        while now >= next && now < end {
            cursor = (cursor + 1) % n;
            next += interval;
            let slot = &mut sent[cursor as usize];
            if slot.is_some() {
                continue; // that sensor is still waiting: the offer is dropped
            }
            mid = mid.wrapping_add(1);
            let p = protocol::link::coap::post(mid, &cursor.to_be_bytes(), "r", payload.clone());
            if let Some(bytes) = protocol::link::coap::encode(&p) {
                let _ = sock.try_send_to(&bytes, config.hub);
                let at = Instant::now();
                *slot = Some((at, offered));
                expiry.push_back((at, cursor, offered));
                in_flight += 1;
                offered += 1;
            }
        }
        while let Some(&(at, sensor, serial)) = expiry.front() {
            if now.duration_since(at) < TIMEOUT {
                break;
            }
            expiry.pop_front();
            let slot = &mut sent[sensor as usize];
            if slot.is_some_and(|(_, s)| s == serial) {
                *slot = None;
                in_flight -= 1;
                timeouts += 1;
            }
        }
        // Take every answer already queued, then wait for more or for the next send.
        while let Ok((len, _)) = sock.try_recv_from(&mut buf) {
            let tkl = usize::from(buf[0] & 0x0f);
            let token = buf[..len].get(4..4 + tkl).and_then(|t| <[u8; 4]>::try_from(t).ok());
            let sensor = token.map(u32::from_be_bytes).filter(|&i| i < n);
            if let Some(slot) = sensor.map(|i| &mut sent[i as usize])
                && let Some((at, _)) = slot.take()
            {
                in_flight -= 1;
                lat.push(at.elapsed().as_micros() as u64);
                answered_in_window += u64::from(now < end);
            }
        }
        let wait = next.saturating_duration_since(Instant::now()).min(Duration::from_millis(5));
        if !wait.is_zero() || now >= end {
            let _ = tokio::time::timeout(wait.max(Duration::from_millis(1)), sock.readable()).await;
        }
    }
    let mut report = LoadReport {
        mode: "plain",
        sensors: n,
        target_rate: config.rate,
        duration_s: config.duration,
        offered,
        acknowledged: lat.len() as u64,
        ..Default::default()
    };
    // Like the OSCORE mode: only what was answered within the load window counts.
    report.readings_per_s = answered_in_window as f64 / config.duration.max(0.001);
    if timeouts > 0 {
        report.errors.insert("timeout", timeouts);
    }
    percentiles(&mut lat, &mut report);
    report.hub_rss_kib = config.hub_pid.and_then(rss_kib);
    report.hub_cpu_us_per_reading = per_reading(cpu_before, config.hub_pid, report.acknowledged);
    report.generator_cpu_us_per_reading =
        per_reading(own_before, Some(std::process::id()), report.acknowledged);
    Ok(report)
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn cpu_time_of_a_process_grows_as_it_works() {
        let me = std::process::id();
        let before = cpu_us(me).expect("this process's CPU time");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut x = 0u64;
        while cpu_us(me).expect("again") <= before {
            assert!(Instant::now() < deadline, "no CPU time counted");
            x = (0..100_000u64).fold(x, |a, b| a.wrapping_mul(31).wrapping_add(b));
        }
        std::hint::black_box(x);
        assert_eq!(cpu_us(u32::MAX), None, "no such process");
        assert_eq!(per_reading(Some(before), Some(me), 0), None);
        assert!(per_reading(Some(before), Some(me), 10).is_some_and(|us| us > 0.0));
    }
}
