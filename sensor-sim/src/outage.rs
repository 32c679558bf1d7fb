//! The outage benchmark (DESIGN.md performance table; TR 103 621 6.53): runs the hub as a child
//! process, pairs (or reuses) N sensors reporting live, kills the hub, lets every sensor buffer
//! a backlog (measured faster than live, so that an hour's worth builds up in seconds), restarts
//! the hub on the same port and data, and measures the drain rate and the live readings'
//! latency while the backlog drains. Prints one JSON line.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ctl;
use crate::fleet::{self, FleetConfig, FleetEvent, FleetHandle, WhenBusy};

/// Outage benchmark settings.
#[derive(Debug, Clone)]
pub struct OutageConfig {
    /// The hub's command line (`hub run --data-dir … --config …`), started and restarted here.
    pub hub_cmd: Vec<String>,
    /// The hub's control socket, to pair sensors that are not paired yet.
    pub ctl: PathBuf,
    /// Backlog each sensor builds up during the outage.
    pub backlog: u64,
    /// Extra measurements per second, round-robin, while the hub is down (builds the backlog).
    pub outage_rate: f64,
    /// The fleet: the hub's address, sensors, flash file (reuse it to pair once), the live
    /// reporting interval, buffering and drain settings.
    pub fleet: FleetConfig,
}

/// The JSON line the benchmark prints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutageReport {
    /// "outage".
    pub mode: &'static str,
    /// Sensors.
    pub sensors: u32,
    /// Backlog measurements held when the hub came back, in total.
    pub backlog: u64,
    /// Seconds the hub was down.
    pub outage_s: f64,
    /// The randomized wait's window.
    pub drain_jitter_ms: u64,
    /// Backlog measurements delivered after the restart.
    pub drained: u64,
    /// Seconds from the hub's restart (READY) to the last backlog delivery.
    pub drain_s: f64,
    /// `drained / drain_s`: the probe interval and the randomized wait included.
    pub drain_readings_per_s: f64,
    /// From the first sensor's drain start to the last backlog delivery.
    pub drain_active_readings_per_s: f64,
    /// Live readings delivered while the backlog drained.
    pub live: u64,
    /// Their latency, measurement to acknowledgement.
    pub live_p50_ms: f64,
    /// 99th percentile.
    pub live_p99_ms: f64,
    /// 99.9th percentile.
    pub live_p999_ms: f64,
    /// Largest.
    pub live_max_ms: f64,
    /// Measurements dropped from full buffers.
    pub dropped: u64,
    /// The hub's resident memory after the drain, KiB.
    pub hub_rss_kib: Option<u64>,
    /// Seconds spent pairing first.
    pub pairing_s: f64,
}

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum OutageError {
    /// The fleet failed.
    #[error(transparent)]
    Fleet(#[from] fleet::FleetError),
    /// The control socket failed.
    #[error(transparent)]
    Ctl(#[from] ctl::CtlError),
    /// The hub could not be started.
    #[error("hub: {0}")]
    Hub(std::io::Error),
    /// The hub exited before it was ready.
    #[error("the hub exited before printing READY")]
    HubNotReady,
    /// A phase did not finish in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// A hub child process.
struct HubProcess(Child);

impl HubProcess {
    /// Starts the hub and waits for its `READY` line; its further output is discarded.
    fn start(cmd: &[String]) -> Result<Self, OutageError> {
        let (program, args) = cmd.split_first().ok_or(OutageError::HubNotReady)?;
        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(OutageError::Hub)?;
        let stdout = child.stdout.take().ok_or(OutageError::HubNotReady)?;
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("READY") => break,
                Some(Ok(_)) => {}
                _ => return Err(OutageError::HubNotReady),
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self(child))
    }

    /// SIGKILL: the hub goes down as in a power cut.
    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the benchmark.
pub async fn run(config: OutageConfig) -> Result<OutageReport, OutageError> {
    let shutdown = CancellationToken::new();
    let _guard = shutdown.clone().drop_guard();
    let hub = HubProcess::start(&config.hub_cmd)?;
    let (tx, mut events) = mpsc::unbounded_channel();
    let sensors = config.fleet.sensors;
    let fleet = fleet::spawn(config.fleet.clone(), Some(tx), shutdown.clone()).await?;
    let started = Instant::now();
    pair_all(&fleet, &mut events, &config).await?;
    let pairing_s = started.elapsed().as_secs_f64();
    // Everyone reports live for a moment (first leases behind us).
    let steady = fleet.status().await?.acknowledged + 2 * u64::from(sensors);
    until(&fleet, &mut events, "live reports", 120, |s| s.acknowledged >= steady).await?;

    hub.kill();
    let down = Instant::now();
    until(&fleet, &mut events, "every sensor offline", 60, |s| s.offline == sensors).await?;
    let per_sensor = config.outage_rate / f64::from(sensors);
    let seconds = config.backlog as f64 / per_sensor.max(0.001) * 2.0;
    fleet.offer(config.outage_rate, seconds, WhenBusy::Buffer);
    let target = config.backlog;
    until(&fleet, &mut events, "backlog", 3600, |s| s.backlog_min >= target).await?;
    fleet.offer(0.0, 0.0, WhenBusy::Buffer);
    let backlog = fleet.status().await?.backlog;

    let hub = HubProcess::start(&config.hub_cmd)?;
    let t0 = Instant::now();
    let outage_s = down.elapsed().as_secs_f64();
    let mut r = OutageReport {
        mode: "outage",
        sensors,
        backlog,
        outage_s,
        drain_jitter_ms: config.fleet.buffer.drain_jitter_ms,
        pairing_s,
        ..OutageReport::default()
    };
    let (mut first_drain, mut last_backlog) = (None, t0);
    let mut live = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let deadline = t0 + Duration::from_secs(3600);
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Some(FleetEvent::DrainStarted { .. }) => {
                    first_drain.get_or_insert_with(Instant::now);
                }
                Some(FleetEvent::Delivered { backlog: true, .. }) => {
                    r.drained += 1;
                    last_backlog = Instant::now();
                }
                Some(FleetEvent::Delivered { latency_us, .. }) => live.push(latency_us),
                Some(_) => {}
                None => return Err(fleet::FleetError::Stopped.into()),
            },
            _ = tick.tick() => {
                let s = fleet.status().await?;
                if s.backlog == 0 && s.draining == 0 && s.offline == 0 {
                    r.dropped = s.buffer_dropped;
                    break;
                }
                if Instant::now() > deadline {
                    return Err(OutageError::Timeout("drain"));
                }
            }
        }
    }
    r.drain_s = last_backlog.duration_since(t0).as_secs_f64();
    r.drain_readings_per_s = r.drained as f64 / r.drain_s.max(0.001);
    let active = last_backlog.duration_since(first_drain.unwrap_or(t0)).as_secs_f64();
    r.drain_active_readings_per_s = r.drained as f64 / active.max(0.001);
    live.sort_unstable();
    r.live = live.len() as u64;
    let at = |q: f64| match live.len() {
        0 => 0.0,
        n => live[((n - 1) as f64 * q).round() as usize] as f64 / 1000.0,
    };
    (r.live_p50_ms, r.live_p99_ms, r.live_p999_ms, r.live_max_ms) =
        (at(0.5), at(0.99), at(0.999), at(1.0));
    r.hub_rss_kib = crate::load::rss_kib(hub.0.id());
    Ok(r)
}

/// Pairs every unpaired sensor, playing the owner (PINs typed through the control socket);
/// refused or failed attempts are retried by the fleet itself.
async fn pair_all(
    fleet: &FleetHandle,
    events: &mut mpsc::UnboundedReceiver<FleetEvent>,
    config: &OutageConfig,
) -> Result<(), OutageError> {
    let unpaired = fleet.unpaired().await?;
    if unpaired.is_empty() {
        return Ok(());
    }
    ctl::pair_open(&config.ctl, 3600).await?;
    for &i in &unpaired {
        fleet.pair(i);
    }
    let mut left = unpaired.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1800);
    while left > 0 {
        let e = tokio::time::timeout_at(deadline, events.recv()).await;
        match e.map_err(|_| OutageError::Timeout("pairing"))? {
            Some(FleetEvent::PinShown { serial, pin, .. }) => {
                let sock = config.ctl.clone();
                tokio::spawn(async move { ctl::pair_pin(&sock, &pin, &serial).await });
            }
            Some(FleetEvent::Paired { .. }) => left -= 1,
            Some(_) => {}
            None => return Err(fleet::FleetError::Stopped.into()),
        }
    }
    Ok(())
}

/// Waits (draining events) until the fleet's status satisfies `done`.
async fn until(
    fleet: &FleetHandle,
    events: &mut mpsc::UnboundedReceiver<FleetEvent>,
    what: &'static str,
    timeout_s: u64,
    done: impl Fn(&fleet::FleetStatus) -> bool,
) -> Result<(), OutageError> {
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            e = events.recv() => if e.is_none() { return Err(fleet::FleetError::Stopped.into()) },
            _ = tick.tick() => {
                if done(&fleet.status().await?) {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(OutageError::Timeout(what));
                }
            }
        }
    }
}
