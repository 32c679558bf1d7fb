//! `demo`: a hub with a temporary data directory, a simulated fleet and a simulated
//! manufacturer in one process. It plays the owner and the manufacturer through four acts —
//! pairing by PIN, readings arriving, refused releases, a verified update delivered with
//! progress — prints what happens in readable lines, and ends by itself.

mod manufacturer;

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hub::api::{ApiError, HubApi};
use hub::config::{Config, TrustedKey};
use hub::daemon::{self, Running, StartError};
use protocol::update::TrustAnchors;
use sensor_sim::fleet::{self, FleetConfig, FleetError, FleetEvent, FleetHandle};
use sensor_sim::maker::MakerError;
use sensor_sim::model::Model;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;

use manufacturer::Manufacturer;

const THERMO: &str = "hearth-thermo-1";
const CLIMATE: &str = "hearth-climate-1";

#[derive(Parser)]
#[command(name = "demo", about = "Hearth demo: a hub, simulated sensors and their manufacturer")]
struct Args {
    /// Simulated sensors (models cycle: thermostat, climate, door contact, button).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    sensors: u32,
    /// Give up if the demo has not finished after this many seconds.
    #[arg(long, default_value_t = 180)]
    timeout_s: u64,
    /// After the four acts, keep the hub and its sensors running (with the web UI and its setup
    /// code) until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("simulated manufacturer: {0}")]
    Maker(#[from] MakerError),
    #[error("the simulated fleet stopped")]
    FleetStopped,
    #[error("interrupted")]
    Interrupted,
    #[error("the demo did not finish within {0:?} (it was {1})")]
    Timeout(Duration, &'static str),
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    hub::logs::init("demo", "error");
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(DemoError::Interrupted) => {
            println!("Stopped.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), DemoError> {
    let dir =
        tempfile::Builder::new().prefix("hearth-demo-").tempdir().map_err(DemoError::TempDir)?;
    let shutdown = CancellationToken::new();
    let maker = Manufacturer::start(&dir.path().join("manufacturer"), shutdown.clone()).await?;
    let hub = daemon::start(hub_config(&maker, args.sensors), dir.path(), shutdown.clone()).await?;
    println!(
        "Hearth demo — hub on coap://{} (temporary data in {})",
        hub.coap,
        dir.path().display()
    );
    let code = dir.path().join(hub::SETUP_CODE_FILE);
    if args.keep_running {
        println!(
            "It plays four acts, then keeps running until you press Ctrl-C: the web UI at \
             https://{}/ and its setup code in {} stay valid until then.",
            hub.web,
            code.display()
        );
    } else {
        println!(
            "It ends by itself after four acts (or press Ctrl-C). The web UI at https://{}/ and \
             its setup code live only until then (the data is temporary); run `demo \
             --keep-running` to keep them until Ctrl-C.",
            hub.web
        );
    }
    let (tx, events) = mpsc::unbounded_channel();
    let mut anchors = TrustAnchors::default();
    for model in Model::standard() {
        anchors.add(model.designation(), maker.public.clone());
    }
    let fleet_config = FleetConfig {
        report_interval_ms: 2_000,
        trust: Some(anchors),
        ..FleetConfig::new(hub.coap, args.sensors)
    };
    let fleet = fleet::spawn(fleet_config, Some(tx), shutdown.clone()).await?;
    let timeout = Duration::from_secs(args.timeout_s);
    let mut demo = Demo {
        api: hub.api.clone(),
        fleet,
        events,
        sensors: args.sensors,
        serials: HashMap::new(),
        deadline: Instant::now() + timeout,
        timeout,
        tick: tokio::time::interval(Duration::from_millis(500)),
        reset: hub.reset.clone(),
    };
    let mut acted = demo.play(&maker).await;
    if acted.is_ok() && args.keep_running {
        acted = demo.linger(&code, hub.web).await;
    }
    shutdown.cancel();
    stop(hub, maker).await;
    acted?;
    println!("Demo finished: the hub and the simulated sensors stopped; temporary data removed.");
    Ok(())
}

/// The hub's configuration: loopback, the manufacturer's key pinned for every model, its feed
/// certificate pinned, feed checks at a random time around every 2 s (hours in real life;
/// TR 103 621 6.13), and pairing limits wide enough for a fleet sharing a few sockets.
fn hub_config(maker: &Manufacturer, sensors: u32) -> Config {
    let mut config = Config { coap_bind: ([127, 0, 0, 1], 0).into(), ..Config::default() };
    config.web.bind = ([127, 0, 0, 1], 0).into();
    config.updates.trust = Model::standard()
        .map(|m| TrustedKey { model: m.designation().into(), key: maker.public.clone() })
        .collect();
    config.updates.feed_url = Some(maker.url());
    config.updates.feed_cert = Some(maker.cert.clone());
    config.updates.check_interval_s = 2;
    // The demo shows the link, updates and outages; MQTT's fixed ports stay free.
    config.mqtt.enabled = false;
    config.pairing.max_sessions = config.pairing.max_sessions.max(sensors as usize);
    config.pairing.sessions_per_source = config.pairing.max_sessions;
    // The whole simulated fleet pairs from this one host at once.
    config.pairing.host_hello_burst = config.pairing.host_hello_burst.max(sensors);
    config.pairing.hello_burst = config.pairing.hello_burst.max(2 * sensors);
    config.pairing.hello_rate = config.pairing.hello_rate.max(sensors);
    config.pairing.host_request_rate = config.pairing.host_request_rate.max(20 * sensors);
    config.pairing.host_request_burst = config.pairing.host_request_burst.max(20 * sensors);
    config
}

async fn stop(hub: Running, maker: Manufacturer) {
    hub.join().await;
    let _ = maker.server.task.await;
}

/// The running show: the owner's API, the fleet and its events, and the overall deadline.
struct Demo {
    api: HubApi,
    fleet: FleetHandle,
    events: mpsc::UnboundedReceiver<FleetEvent>,
    sensors: u32,
    /// Serial numbers by sensor index, learnt from pairing.
    serials: HashMap<u32, String>,
    deadline: Instant,
    timeout: Duration,
    tick: Interval,
    /// Fires when "erase everything" is used in the demo's web UI: the demo's data is
    /// temporary, so the demo ends (its directory is removed).
    reset: CancellationToken,
}

impl Demo {
    async fn play(&mut self, maker: &Manufacturer) -> Result<(), DemoError> {
        self.pairing().await?;
        self.readings().await?;
        println!(
            "\n== 3. Refused releases: the hub checks its feed at a random time (6.13) and \
             verifies everything before any sensor sees it."
        );
        maker.publish_bad_releases(CLIMATE, THERMO)?;
        self.refusals(2).await?;
        println!("\n== 4. Update: the manufacturer publishes a genuine {THERMO} v2.");
        maker.publish_update(
            THERMO,
            "Fixes a buffer overflow in the setpoint parser (CVE-2026-0001).",
        )?;
        self.delivery(THERMO).await
    }

    /// After the acts: the hub and the fleet keep running until Ctrl-C (or an erase in the web
    /// UI, which ends the demo: its data is temporary).
    async fn linger(
        &mut self,
        code: &std::path::Path,
        web: std::net::SocketAddr,
    ) -> Result<(), DemoError> {
        println!(
            "\nThe four acts are done; the hub and its sensors keep running. Web UI: https://{web}/ \
             (setup code in {}). Press Ctrl-C to stop; the temporary data is then removed.",
            code.display()
        );
        loop {
            tokio::select! {
                e = self.events.recv() => { e.ok_or(DemoError::FleetStopped)?; }
                _ = tokio::signal::ctrl_c() => return Ok(()),
                () = self.reset.cancelled() => {
                    println!("Erase everything was used in the web UI: the demo ends and its data is removed.");
                    return Ok(());
                }
            }
        }
    }

    /// The next fleet event, or `None` at a half-second tick. PINs shown are typed at the hub
    /// (the demo plays the owner) and failed pairings retried on the way.
    async fn next(&mut self, act: &'static str) -> Result<Option<FleetEvent>, DemoError> {
        let event = tokio::select! {
            e = self.events.recv() => e.ok_or(DemoError::FleetStopped)?,
            _ = self.tick.tick() => return Ok(None),
            _ = tokio::signal::ctrl_c() => return Err(DemoError::Interrupted),
            () = self.reset.cancelled() => {
                println!("Erase everything was used in the web UI: the demo ends and its data is removed.");
                return Err(DemoError::Interrupted);
            }
            () = tokio::time::sleep_until(self.deadline) => {
                return Err(DemoError::Timeout(self.timeout, act));
            }
        };
        match &event {
            FleetEvent::PinShown { serial, pin, .. } => {
                println!("  {serial}: display shows PIN {pin} — typing it at the hub");
                let (api, pin, serial) = (self.api.clone(), pin.clone(), serial.clone());
                tokio::spawn(async move {
                    if let Err(e) = type_pin(&api, &pin, &serial).await {
                        println!("  {serial}: PIN refused: {e}");
                    }
                });
            }
            FleetEvent::PairingFailed { index, reason } => {
                println!(
                    "  sensor {index}: pairing failed ({reason}); retrying with a fresh key and PIN"
                );
                self.fleet.pair(*index);
            }
            _ => {}
        }
        Ok(Some(event))
    }

    /// A sensor's serial number (its index before it paired).
    fn serial(&self, index: u32) -> String {
        self.serials.get(&index).cloned().unwrap_or_else(|| format!("sensor {index}"))
    }

    /// Act 1: every sensor pairs by PIN + ECDH (TR 103 621 6.29 ex. 3).
    async fn pairing(&mut self) -> Result<(), DemoError> {
        let status = self.api.pair_open(Some(300)).await?;
        println!(
            "\n== 1. Pairing: window open for {} s, {} failed attempts allowed. {} sensors ask to \
             pair;\n   the demo plays the owner: it reads each display and types the PIN at the hub.",
            status.closes_in_s, status.attempts_left, self.sensors
        );
        for i in 0..self.sensors {
            self.fleet.pair(i);
        }
        let mut paired = 0;
        while paired < self.sensors {
            if let Some(FleetEvent::Paired { index, serial, kid }) = self.next("pairing").await? {
                paired += 1;
                self.serials.insert(index, serial.clone());
                println!(
                    "  {serial}: paired as device {kid} — OSCORE link up (AES-CCM-16-64-128) \
                     [{paired}/{}]",
                    self.sensors
                );
            }
        }
        self.api.pair_close().await?;
        println!("All {} sensors paired; pairing window closed.", self.sensors);
        Ok(())
    }

    /// Act 2: readings arrive over OSCORE and are acknowledged once durable.
    async fn readings(&mut self) -> Result<(), DemoError> {
        println!("\n== 2. Readings: each sensor measures every 2 s and reports over OSCORE.");
        let mut heard = HashSet::new();
        let mut acknowledged = 0u64;
        while heard.len() < self.sensors as usize {
            match self.next("waiting for readings").await? {
                Some(FleetEvent::Delivered { index, .. }) => {
                    acknowledged += 1;
                    heard.insert(index);
                }
                Some(FleetEvent::Refused { index }) => {
                    println!("  {}: the hub refused a reading", self.serial(index));
                    heard.insert(index);
                }
                _ => {}
            }
        }
        println!("  {acknowledged} readings acknowledged after a durable commit; latest stored:");
        for d in self.api.devices().await? {
            let latest = self.api.readings(d.device.info.id, Some(1)).await?.pop();
            let Some(r) = latest else { continue };
            let quantity = protocol::vocabulary::short_name(&r.name);
            let unit = r.unit.map(|u| format!(" {u}")).unwrap_or_default();
            println!(
                "  {} ({}): {quantity} = {}{unit}",
                d.device.info.about.serial, d.device.info.about.model, r.value
            );
        }
        Ok(())
    }

    /// Act 3: the hub refuses `count` bad releases from its feed and says why (6.17 ex. 1).
    async fn refusals(&mut self, count: usize) -> Result<(), DemoError> {
        let mut shown = 0;
        while shown < count {
            if self.next("waiting for the hub to refuse the bad releases").await?.is_some() {
                continue;
            }
            for r in self.api.updates().await?.refused.iter().skip(shown) {
                println!("  [hub] refused a release from the {}: {}", r.source, r.reason);
                shown += 1;
            }
        }
        Ok(())
    }

    /// Act 4: the hub verifies `model` v2 and delivers it block-wise over OSCORE; each sensor
    /// writes its inactive slot, switches, checks its health and reports.
    async fn delivery(&mut self, model: &str) -> Result<(), DemoError> {
        let targets =
            self.api.devices().await?.into_iter().filter(|d| d.device.info.about.model == model);
        let expected = targets.count();
        let mut announced = false;
        let mut quarters: HashMap<u32, u32> = HashMap::new();
        let mut done = 0;
        while done < expected {
            match self.next("delivering the update").await? {
                None if !announced => {
                    let updates = self.api.updates().await?;
                    if let Some(r) = updates.releases.iter().find(|r| r.model == model) {
                        println!(
                            "  [hub] verified {} v{} (signature, model, anti-rollback, expiry, \
                             digest): \"{}\" — delivering it to {expected} sensors",
                            r.model, r.version, r.risks_mitigated
                        );
                        announced = true;
                    }
                }
                Some(FleetEvent::UpdateProgress { index, version, done: blocks, total }) => {
                    let quarter = blocks * 4 / total.max(1);
                    if quarter > *quarters.get(&index).unwrap_or(&0) {
                        quarters.insert(index, quarter);
                        println!(
                            "  {}: writing v{version} to its inactive slot (Block2 over \
                             OSCORE): {blocks}/{total} blocks ({}%)",
                            self.serial(index),
                            quarter * 25
                        );
                    }
                }
                Some(FleetEvent::Updated { index, version, running, outcome, reason, .. }) => {
                    done += 1;
                    let why =
                        if reason.is_empty() { String::new() } else { format!(" ({reason})") };
                    println!(
                        "  {}: update to v{version}: {outcome:?}, now running v{running}{why}",
                        self.serial(index)
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Plays the owner: waits until the hub lists the sensor as waiting, then types its PIN.
async fn type_pin(api: &HubApi, pin: &str, serial: &str) -> Result<String, ApiError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if api.pairing().await?.waiting.iter().any(|w| w.serial == serial) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api.pair_pin(pin.to_string(), Some(serial.to_string()), None, None, true).await
}
