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
    let mut config =
        Config { coap_bind: SocketAddr::from(([127, 0, 0, 1], 0)), ..Config::default() };
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
    let fc = FleetConfig { report_interval_ms: 5_000, ..FleetConfig::new(hub.coap, sensors) };
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
                    }
                }
                Some(FleetEvent::PairingFailed { index }) => {
                    println!("  sensor {index}: pairing attempt failed; retrying with a fresh key and PIN");
                    fleet.pair(index);
                }
                Some(FleetEvent::Delivered { .. }) => delivered += 1,
                Some(FleetEvent::Refused { index }) => println!("  sensor {index}: a reading was refused by the hub"),
                Some(FleetEvent::UpdateProgress { index, version, done, total }) => {
                    println!("  sensor {index}: writing v{version} to its inactive slot, {done}/{total} blocks");
                }
                Some(FleetEvent::Updated { index, version, running, outcome, reason }) => {
                    println!("  sensor {index}: update to v{version}: {outcome:?}, running v{running} {reason}");
                }
                None => return Ok(()),
            },
            _ = tick.tick() => {
                let devices = hub.api.devices().await?;
                let stored: u64 = devices.iter().map(|d| d.readings).sum();
                let sec = hub.api.security().await?;
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
    Ok(())
}
