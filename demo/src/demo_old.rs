//! `hub demo`: a hub with a temporary data directory and an in-process fleet of simulated
//! sensors. The demo plays the owner — it reads each sensor's display and types the PIN through
//! the command API — and prints what happens in readable lines until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use sensor_sim::fleet::{self, FleetConfig, FleetEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon;

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Temporary directory.
    #[error("temporary directory: {0}")]
    TempDir(std::io::Error),
    /// The hub.
    #[error(transparent)]
    Start(#[from] daemon::StartError),
    /// The fleet.
    #[error(transparent)]
    Fleet(#[from] fleet::FleetError),
    /// The API.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// The simulated manufacturer.
    #[error(transparent)]
    Maker(#[from] sensor_sim::maker::MakerError),
}

/// Plays the owner: waits until the hub lists the sensor as waiting, then types its PIN.
async fn type_pin(
    api: &crate::api::HubApi,
    pin: &str,
    serial: &str,
) -> Result<String, crate::api::ApiError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if api.pairing().await?.waiting.iter().any(|w| w.serial == serial) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api.pair_pin(pin.to_string(), Some(serial.to_string()), None).await
}

/// Runs the demo with `sensors` simulated sensors until `shutdown` (or Ctrl-C).
pub async fn run(sensors: u32, shutdown: CancellationToken) -> Result<(), DemoError> {
    let dir =
        tempfile::Builder::new().prefix("hearth-demo-").tempdir().map_err(DemoError::TempDir)?;
    // The simulated manufacturer: a signing key, a feed served over HTTPS (TLS 1.3).
    use sensor_sim::maker;
    let maker_dir = dir.path().join("manufacturer");
    let public = maker::keygen(&maker_dir.join("keys"))?;
    let key_hex = protocol::hex::encode(&public.to_sec1_compressed());
    let feed_dir = maker_dir.join("feed");
    std::fs::create_dir_all(&feed_dir).map_err(DemoError::TempDir)?;
    let tls = maker::feed_tls(&maker_dir.join("tls"), &["localhost", "127.0.0.1"])?;
    let (stop_feed, feed_stop) = tokio::sync::watch::channel(false);
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let feed = maker::serve_feed(feed_dir.clone(), &tls, loopback, feed_stop).await?;
    let mut config = Config { coap_bind: loopback, ..Config::default() };
    // The hub pins the manufacturer's key per model and its feed's certificate, and checks the
    // feed at a random time around every 20 s (hours in real life; TR 103 621 6.13).
    let models = ["hearth-thermo-1", "hearth-climate-1", "hearth-door-1"];
    config.updates.trust = models
        .iter()
        .map(|m| crate::config::TrustedKey { model: (*m).into(), key: key_hex.clone() })
        .collect();
    config.updates.feed_url = Some(format!("https://{}/", feed.addr));
    config.updates.feed_cert = Some(maker_dir.join("tls").join(maker::TLS_CERT_FILE));
    config.updates.check_interval_s = 20;
    // The simulated fleet shares a few sockets, so many sensors pair from one address.
    config.pairing.max_sessions = config.pairing.max_sessions.max(sensors as usize);
    config.pairing.sessions_per_source = config.pairing.max_sessions;
    let hub = daemon::start(config, dir.path(), shutdown.clone()).await?;
    println!(
        "Hearth demo — hub on coap://{} (temporary data in {})",
        hub.coap,
        dir.path().display()
    );
    println!("Owner's control socket: {}", hub.control.display());
    let (tx, mut events) = mpsc::unbounded_channel();
    let mut anchors = protocol::update::TrustAnchors::default();
    for m in models {
        anchors.add(m, public.clone());
    }
    let fc = FleetConfig {
        report_interval_ms: 5_000,
        trust: Some(anchors),
        ..FleetConfig::new(hub.coap, sensors)
    };
    let fleet = fleet::spawn(fc, Some(tx), shutdown.clone()).await?;
    let status = hub.api.pair_open(Some(300)).await?;
    println!(
        "Pairing window open for {} s ({} failed attempts allowed). {sensors} sensors ask to pair;",
        status.closes_in_s, status.attempts_left
    );
    println!(
        "the demo plays the owner: it reads each sensor's display and types its PIN at the hub."
    );
    for i in 0..sensors {
        fleet.pair(i);
    }
    let mut paired = 0u32;
    let mut announced = std::collections::HashSet::new();
    let mut announced_refusals = std::collections::HashSet::new();
    let mut delivered = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Some(FleetEvent::PinShown { serial, pin, .. }) => {
                    println!("  {serial}: display shows PIN {pin} — typing it at the hub");
                    let api = hub.api.clone();
                    tokio::spawn(async move {
                        if let Err(e) = type_pin(&api, &pin, &serial).await {
                            println!("  {serial}: PIN refused: {e}");
                        }
                    });
                }
                Some(FleetEvent::Paired { serial, kid, .. }) => {
                    paired += 1;
                    println!("  {serial}: paired as device {kid} — OSCORE link up (AES-CCM-16-64-128) [{paired}/{sensors}]");
                    if paired == sensors {
                        let _ = hub.api.pair_close().await;
                        println!("All {sensors} sensors paired; pairing window closed. Readings every 5 s per sensor.");
                        publish_later(maker_dir.clone(), feed_dir.clone());
                    }
                }
                Some(FleetEvent::PairingFailed { index }) => {
                    println!("  sensor {index}: pairing attempt failed; retrying with a fresh key and PIN");
                    fleet.pair(index);
                }
                Some(FleetEvent::Delivered { .. }) => delivered += 1,
                Some(FleetEvent::Refused { index }) => println!("  sensor {index}: a reading was refused by the hub"),
                Some(FleetEvent::UpdateProgress { index, version, done, total }) => {
                    // Progress arrives every 16 blocks; show the start and the middle.
                    if done == 1 || (done <= total / 2 && done + 16 > total / 2) {
                        println!("  sensor {index}: writing v{version} to its inactive slot (Block2 over OSCORE), {done}/{total} blocks");
                    }
                }
                Some(FleetEvent::Updated { index, version, running, outcome, reason, .. }) => {
                    println!("  sensor {index}: update to v{version}: {outcome:?}, running v{running} {reason}");
                }
                None => return Ok(()),
            },
            _ = tick.tick() => {
                let devices = hub.api.devices().await?;
                let stored: u64 = devices.iter().map(|d| d.readings).sum();
                let sec = hub.api.security().await?;
                let updates = hub.api.updates().await?;
                for r in &updates.releases {
                    if announced.insert((r.model.clone(), r.version)) {
                        println!("[hub] verified {} v{} from the manufacturer's feed (signature, model, anti-rollback, expiry, digest): \"{}\" — delivering it", r.model, r.version, r.risks_mitigated);
                    }
                }
                for r in &updates.refused {
                    if announced_refusals.insert(r.reason.clone()) {
                        println!("[hub] refused an update: {}", r.reason);
                    }
                }
                print!("[hub] {} devices, {stored} readings stored, {delivered} acknowledged, {} security events", devices.len(), sec.total);
                let latest = match devices.first() {
                    Some(d) => hub.api.readings(&d.info.id, Some(1)).await?.pop().map(|r| (d.info.serial.clone(), r)),
                    None => None,
                };
                if let Some((serial, r)) = latest {
                    let quantity = r.name.rsplit(':').next().unwrap_or("");
                    print!("; latest from {serial} {quantity}: {} {}", r.value, r.unit.as_deref().unwrap_or(""));
                }
                println!();
            }
            _ = tokio::signal::ctrl_c() => {
                println!("Stopping.");
                shutdown.cancel();
                break;
            }
            () = shutdown.cancelled() => break,
        }
    }
    hub.join().await;
    let _ = stop_feed.send(true);
    Ok(())
}

/// The manufacturer publishes v2 for the thermostat and climate models 15 s after the fleet paired.
fn publish_later(maker_dir: std::path::PathBuf, feed_dir: std::path::PathBuf) {
    use sensor_sim::maker;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(15)).await;
        let Ok(key) = maker::load_key(&maker_dir.join("keys")) else { return };
        let now = sensor_sim::clock::unix_now();
        for (model, risks) in [
            ("hearth-thermo-1", "Fixes a buffer overflow in the setpoint parser (CVE-2026-0001)."),
            ("hearth-climate-1", "Fixes a timing leak in the humidity calibration command."),
        ] {
            let release = maker::Release {
                model: model.into(),
                version: 2,
                min_version: 1,
                expires: protocol::time::UnixTime(now.0 + 90 * 86_400),
                disruptive: false,
                risks: risks.into(),
                released: now,
            };
            let image = maker::build_image(model, 2, 256 * 1024, true);
            match maker::publish(&feed_dir, &key, &release, &image) {
                Ok(_) => println!(
                    "[manufacturer] signed and published {model} v2 (256 KiB) on its HTTPS feed"
                ),
                Err(e) => println!("[manufacturer] publishing {model} failed: {e}"),
            }
        }
    });
}
