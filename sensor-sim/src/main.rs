//! `sensor-sim`: run a simulated fleet, generate load, export a sensor's context for aiocoap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use protocol::netsim::Faults;
use sensor_sim::fleet::{self, FleetConfig, FleetEvent, SimFaults};
use sensor_sim::{ctl, export, flash, load};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "sensor-sim", about = "Simulated Hearth sensors and the load generator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a fleet until Ctrl-C, printing what happens.
    Fleet(FleetArgs),
    /// Offer load and print one JSON line with the results.
    Load(LoadArgs),
    /// Write a paired sensor's OSCORE context in aiocoap's format (the sim never uses it again).
    ExportContext {
        /// Sensor index or serial.
        sensor: String,
        /// The fleet's flash file.
        #[arg(long)]
        flash: PathBuf,
        /// Directory to write the aiocoap context into.
        #[arg(long)]
        aiocoap: PathBuf,
    },
}

#[derive(Args)]
struct FleetArgs {
    /// The hub's CoAP address.
    #[arg(long, default_value = "127.0.0.1:5683")]
    hub: SocketAddr,
    /// Number of sensors.
    #[arg(long, default_value_t = 20)]
    sensors: u32,
    /// Flash file (state survives restarts).
    #[arg(long)]
    flash: Option<PathBuf>,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Each sensor reports this often.
    #[arg(long, default_value_t = 5000)]
    interval_ms: u64,
    /// Start pairing unpaired sensors (their displays show PINs for the owner to type).
    #[arg(long)]
    pair: bool,
    /// Pair unpaired sensors and type their PINs through the hub's control socket (plays the
    /// owner; implies --pair).
    #[arg(long)]
    ctl: Option<PathBuf>,
    /// Audit every nonce on the wire; print the count of reuses with `STATUS` lines.
    #[arg(long)]
    audit_nonces: bool,
    /// UDP sockets the fleet shares.
    #[arg(long, default_value_t = 4)]
    sockets: usize,
    /// Print a `STATUS` JSON line this often (0: never).
    #[arg(long, default_value_t = 0)]
    status_ms: u64,
    #[command(flatten)]
    faults: FaultArgs,
}

#[derive(Args)]
struct FaultArgs {
    /// Probability of losing a datagram.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Probability of duplicating a datagram.
    #[arg(long, default_value_t = 0.0)]
    dup: f64,
    /// One-way delay added, ms.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Random extra delay up to this, ms (reorders).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Probability of also sending a tampered copy.
    #[arg(long, default_value_t = 0.0)]
    tamper: f64,
    /// Probability of replaying a datagram later.
    #[arg(long, default_value_t = 0.0)]
    replay: f64,
}

impl FaultArgs {
    fn faults(&self) -> SimFaults {
        SimFaults {
            net: Faults {
                loss: self.loss,
                duplicate: self.dup,
                delay_ms: self.delay_ms,
                jitter_ms: self.jitter_ms,
            },
            tamper: self.tamper,
            replay: self.replay,
        }
    }
}

#[derive(Args)]
struct LoadArgs {
    /// The hub's (or any CoAP server's) address.
    #[arg(long)]
    hub: SocketAddr,
    /// Sensors.
    #[arg(long, default_value_t = 1000)]
    sensors: u32,
    /// Readings per second in total.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The hub's control socket, to pair sensors first.
    #[arg(long)]
    ctl: Option<PathBuf>,
    /// Flash file to reuse paired sensors.
    #[arg(long)]
    flash: Option<PathBuf>,
    /// The hub's pid, to report its RSS.
    #[arg(long)]
    hub_pid: Option<u32>,
    /// Unprotected CoAP POSTs of the same size (compare with other CoAP servers).
    #[arg(long)]
    plain: bool,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// UDP sockets.
    #[arg(long, default_value_t = 4)]
    sockets: usize,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sensor-sim: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sensor-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Fleet(#[from] fleet::FleetError),
    #[error(transparent)]
    Load(#[from] load::LoadError),
    #[error(transparent)]
    Export(#[from] export::ExportError),
    #[error(transparent)]
    Flash(#[from] flash::FlashError),
    #[error(transparent)]
    Ctl(#[from] ctl::CtlError),
}

async fn run(cmd: Cmd) -> Result<(), Error> {
    match cmd {
        Cmd::Fleet(a) => run_fleet(a).await,
        Cmd::Load(a) => {
            let report = load::run(load::LoadConfig {
                hub: a.hub,
                sensors: a.sensors,
                rate: a.rate,
                duration: a.duration,
                ctl: a.ctl,
                flash: a.flash,
                hub_pid: a.hub_pid,
                plain: a.plain,
                seed: a.seed,
                sockets: a.sockets,
            })
            .await?;
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            Ok(())
        }
        Cmd::ExportContext { sensor, flash: path, aiocoap } => {
            let f = flash::Flash::open(&path)?;
            let serial = export::export_aiocoap(&f, &sensor, &aiocoap)?;
            println!("exported {serial} to {}", aiocoap.display());
            Ok(())
        }
    }
}

async fn run_fleet(a: FleetArgs) -> Result<(), Error> {
    let shutdown = CancellationToken::new();
    let (tx, mut events) = mpsc::unbounded_channel();
    let config = FleetConfig {
        seed: a.seed,
        flash: a.flash,
        report_interval_ms: a.interval_ms,
        faults: a.faults.faults(),
        audit_nonces: a.audit_nonces,
        sockets: a.sockets,
        ..FleetConfig::new(a.hub, a.sensors)
    };
    let fleet = fleet::spawn(config, Some(tx), shutdown.clone()).await?;
    let mut status_tick =
        tokio::time::interval(std::time::Duration::from_millis(a.status_ms.max(1)));
    let status = fleet.status().await?;
    println!("FLEET sensors={} paired={}", status.sensors, status.paired);
    if let Some(sock) = &a.ctl
        && status.paired < a.sensors
    {
        ctl::pair_open(sock, 600).await?;
    }
    if (a.pair || a.ctl.is_some()) && status.paired < a.sensors {
        for i in 0..a.sensors {
            fleet.pair(i);
        }
    }
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Some(FleetEvent::PinShown { serial, pin, index }) => {
                    println!("PIN sensor={index} serial={serial} pin={pin}");
                    if let Some(sock) = a.ctl.clone() {
                        tokio::spawn(async move {
                            if let Err(e) = ctl::pair_pin(&sock, &pin, &serial).await {
                                eprintln!("PIN entry for {serial} failed: {e}");
                            }
                        });
                    }
                }
                Some(FleetEvent::Paired { index, serial, kid }) => println!("PAIRED sensor={index} serial={serial} kid={kid}"),
                Some(FleetEvent::PairingFailed { index }) => println!("PAIRING-FAILED sensor={index}"),
                Some(FleetEvent::Delivered { index, kid, id, time_ms, latency_us }) => {
                    let kid = kid.map(|k| k.to_string()).unwrap_or_default();
                    println!("DELIVERED sensor={index} kid={kid} id={id} time_ms={time_ms} latency_us={latency_us}");
                }
                Some(FleetEvent::Refused { index }) => println!("REFUSED sensor={index}"),
                Some(FleetEvent::UpdateProgress { index, version, done, total }) => {
                    println!("UPDATE-PROGRESS sensor={index} version={version} blocks={done}/{total}");
                }
                Some(FleetEvent::Updated { index, version, running, outcome, reason }) => {
                    println!("UPDATED sensor={index} version={version} running={running} outcome={outcome:?} reason={reason:?}");
                }
                None => return Ok(()),
            },
            _ = status_tick.tick(), if a.status_ms > 0 => {
                let s = fleet.status().await?;
                println!("STATUS {}", serde_json::to_string(&s).unwrap_or_default());
            }
            _ = tokio::signal::ctrl_c() => {
                shutdown.cancel();
                return Ok(());
            }
        }
    }
}
