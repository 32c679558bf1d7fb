//! `sensor-sim`: run a simulated fleet, generate load, benchmark an outage's drain, read a
//! sensor's physical interface, export a sensor's context for aiocoap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use protocol::netsim::Faults;
use sensor_sim::buffer::BufferConfig;
use sensor_sim::fleet::{self, FleetConfig, FleetEvent, FleetHandle, SimFaults};
use sensor_sim::model::Model;
use sensor_sim::{ctl, export, flash, load, maker, outage, physical};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// jemalloc, as the hub: with glibc's malloc, allocation was an eighth of the load generator's
/// CPU, which the hub it measures then did not get.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "sensor-sim", version, about = "Simulated Hearth sensors and the load generator")]
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
    /// Benchmark an outage: run the hub (the command after `--`), kill it while the sensors
    /// buffer, restart it, and print one JSON line with the drain rate and live latency.
    Outage(OutageArgs),
    /// The simulated manufacturer: keys, firmware releases, the HTTPS update feed.
    Maker {
        #[command(subcommand)]
        cmd: MakerCmd,
    },
    /// What a sensor recorded locally, as its display or USB port would show it (reads the
    /// flash file of a stopped fleet; needs neither the hub nor the sensor's keys).
    Physical {
        /// Sensor index or serial.
        sensor: String,
        #[command(subcommand)]
        cmd: PhysicalCmd,
    },
    /// MQTT publish→subscribe latency through a running hub (`scripts/bench-mqtt`): prints one
    /// `RESULT {json}` line.
    MqttBench(sensor_sim::mqtt_bench::BenchArgs),
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

#[derive(Subcommand)]
enum PhysicalCmd {
    /// Print the local log and the outage backlog, oldest first.
    Dump {
        /// The fleet's flash file.
        #[arg(long)]
        flash: PathBuf,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum MakerCmd {
    /// Generate the signing key pair (the private key file is 0600 and never printed).
    Keygen {
        /// Key directory.
        #[arg(long)]
        keys: PathBuf,
    },
    /// Build a firmware image, sign its manifest, and publish both in the feed directory.
    Publish {
        /// The maker's keys, the feed directory and the model.
        #[command(flatten)]
        to: FeedTarget,
        /// Version.
        #[arg(long)]
        version: u32,
        /// Image size in bytes.
        #[arg(long, default_value_t = 256 * 1024)]
        size: usize,
        /// Lowest installed version it applies to.
        #[arg(long, default_value_t = 1)]
        min_version: u32,
        /// Days until the manifest expires.
        #[arg(long, default_value_t = 90)]
        expires_days: u64,
        /// Needs the owner's approval (disruptive).
        #[arg(long)]
        disruptive: bool,
        /// Build an image that fails its health check after boot (tests).
        #[arg(long)]
        unhealthy: bool,
        /// Sign a manifest that has already expired (tests).
        #[arg(long)]
        expired: bool,
        /// What it fixes (shown to the owner).
        #[arg(long, default_value = "Security fixes.")]
        risks: String,
    },
    /// Sign a security advisory and publish it in the feed directory.
    Advisory {
        /// The maker's keys, the feed directory and the affected model.
        #[command(flatten)]
        to: FeedTarget,
        /// Lowest affected version.
        #[arg(long)]
        low: u32,
        /// Highest affected version.
        #[arg(long)]
        high: u32,
        /// low, medium, high or critical.
        #[arg(long, default_value = "high")]
        severity: String,
        /// Version that fixes it, if any.
        #[arg(long)]
        fixed_in: Option<u32>,
        /// Description.
        #[arg(long)]
        text: String,
    },
    /// Serve the feed directory over HTTPS until Ctrl-C (prints `FEED <url> <cert file>`).
    Serve {
        /// Feed directory.
        #[arg(long)]
        feed: PathBuf,
        /// Directory for the server's self-signed certificate.
        #[arg(long)]
        tls: PathBuf,
        /// Address.
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: SocketAddr,
    },
}

/// Where a signed release or advisory goes, signed with which keys, for which model.
#[derive(Args)]
struct FeedTarget {
    /// Key directory.
    #[arg(long)]
    keys: PathBuf,
    /// Feed directory.
    #[arg(long)]
    feed: PathBuf,
    /// Model designation.
    #[arg(long)]
    model: String,
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
    /// Local address to send from, `IP` or `IP:PORT` (default: the hub's address on loopback,
    /// any address otherwise; ports chosen by the system).
    #[arg(long, value_parser = parse_bind)]
    bind: Option<SocketAddr>,
    /// Manufacturer key directory whose public key is built into sensors that verify update
    /// signatures themselves (all models).
    #[arg(long)]
    maker_keys: Option<PathBuf>,
    /// Models to cycle through, by name: thermostat, climate, door, button, or an example
    /// model such as co2 (an unknown name lists them all). Default: every model but the
    /// examples.
    #[arg(long, value_delimiter = ',', value_parser = parse_model)]
    models: Vec<Model>,
    /// Serial number of the first sensor (`TH-00000` for 0): a second fleet paired with the
    /// same hub takes other serials, as other real sensors would have.
    #[arg(long, default_value_t = 0)]
    first_serial: u32,
    /// Cut a sensor's power during its next update: `INDEX:write:BLOCKS` or `INDEX:switch`.
    #[arg(long)]
    cut: Vec<String>,
    /// Print a `STATUS` JSON line this often (0: never).
    #[arg(long, default_value_t = 0)]
    status_ms: u64,
    #[command(flatten)]
    buffer: BufferArgs,
    #[command(flatten)]
    faults: FaultArgs,
}

/// Outage buffering (TR 103 621 6.53) and retries.
#[derive(Args)]
struct BufferArgs {
    /// Measurements each sensor buffers while its hub is unreachable (oldest dropped first).
    #[arg(long = "buffer", default_value_t = 1024)]
    capacity: usize,
    /// No answer for this long: the hub is unreachable and the sensor buffers in flash.
    #[arg(long, default_value_t = 5000)]
    offline_after_ms: u64,
    /// Once the hub answers again, wait a random delay up to this before draining.
    #[arg(long, default_value_t = 10_000)]
    drain_jitter_ms: u64,
    /// Drain pacing: back off while round trips exceed this.
    #[arg(long, default_value_t = 20)]
    drain_target_rtt_ms: u64,
    /// Measurements each sensor keeps in its local log (the physical interface; 0: none).
    #[arg(long, default_value_t = 256)]
    local_log: u64,
    /// Longest retransmission interval, i.e. how often an offline sensor probes (≥ 2000).
    #[arg(long, default_value_t = protocol::link::coap::MAX_BACKOFF_MS)]
    probe_max_ms: u64,
    /// Retry refused or failed pairing with a fresh PIN, back-off up to this (0: never).
    #[arg(long, default_value_t = 16_000)]
    pair_retry_max_ms: u64,
}

impl BufferArgs {
    fn apply(&self, config: FleetConfig) -> FleetConfig {
        FleetConfig {
            buffer: BufferConfig {
                capacity: self.capacity,
                offline_after_ms: self.offline_after_ms,
                drain_jitter_ms: self.drain_jitter_ms,
                target_rtt_ms: self.drain_target_rtt_ms,
            },
            local_log: self.local_log,
            probe_max_ms: self.probe_max_ms,
            pair_retry_max_ms: self.pair_retry_max_ms,
            ..config
        }
    }
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

#[derive(Args)]
struct OutageArgs {
    /// The hub's CoAP address (its `coap_bind`).
    #[arg(long)]
    hub: SocketAddr,
    /// The hub's control socket.
    #[arg(long)]
    ctl: PathBuf,
    /// Flash file (reuse it to skip pairing).
    #[arg(long)]
    flash: PathBuf,
    /// Sensors.
    #[arg(long, default_value_t = 1000)]
    sensors: u32,
    /// Live measurement interval of each sensor.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Backlog per sensor to build during the outage (720: an hour at one reading per 5 s).
    #[arg(long, default_value_t = 720)]
    backlog: u64,
    /// Extra measurements per second while the hub is down (compresses the outage in time).
    #[arg(long, default_value_t = 20_000.0)]
    outage_rate: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    buffer: BufferArgs,
    /// The hub's command line, e.g. `-- target/release/hub run --data-dir D --config C`.
    #[arg(last = true, required = true)]
    hub_cmd: Vec<String>,
}

fn main() -> ExitCode {
    // Colour only on a terminal, never with NO_COLOR set (as the hub's logs).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // The load generator shares the machine with the server it measures: one thread, so its
    // tasks never wake each other across threads (with tokio's worker threads it spent about
    // 30 % more CPU per reading). Everything else keeps the multi-threaded runtime.
    let rt = if matches!(cli.cmd, Cmd::Load(_)) {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Runtime::new()
    };
    let rt = match rt {
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
    #[error(transparent)]
    Maker(#[from] maker::MakerError),
    #[error(transparent)]
    Physical(#[from] physical::PhysicalError),
    #[error(transparent)]
    Outage(#[from] outage::OutageError),
    #[error("{0}")]
    Usage(String),
    #[error("mqtt-bench: {0}")]
    MqttBench(sensor_sim::mqtt_bench::BenchError),
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
        Cmd::Outage(a) => {
            let fleet = FleetConfig {
                flash: Some(a.flash),
                report_interval_ms: a.interval_ms,
                seed: a.seed,
                ..a.buffer.apply(FleetConfig::new(a.hub, a.sensors))
            };
            let report = outage::run(outage::OutageConfig {
                hub_cmd: a.hub_cmd,
                ctl: a.ctl,
                backlog: a.backlog,
                outage_rate: a.outage_rate,
                fleet,
            })
            .await?;
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            Ok(())
        }
        Cmd::Maker { cmd } => run_maker(cmd).await,
        Cmd::MqttBench(a) => {
            let report = sensor_sim::mqtt_bench::run(a).await.map_err(Error::MqttBench)?;
            println!("RESULT {report}");
            Ok(())
        }
        Cmd::Physical { sensor, cmd: PhysicalCmd::Dump { flash: path, json } } => {
            let f = flash::Flash::open_existing(&path)?;
            let dump = physical::dump(&f, &sensor)?;
            print!("{}", if json { dump.json_lines() } else { dump.table() });
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
    let trust = match &a.maker_keys {
        Some(dir) => {
            let key = maker::load_public_key(dir)?;
            let mut anchors = protocol::update::TrustAnchors::default();
            for m in Model::ALL {
                anchors.add(m.designation(), key.clone());
            }
            Some(anchors)
        }
        None => None,
    };
    let (tx, mut events) = mpsc::unbounded_channel();
    let config = FleetConfig {
        seed: a.seed,
        flash: a.flash,
        report_interval_ms: a.interval_ms,
        faults: a.faults.faults(),
        audit_nonces: a.audit_nonces,
        sockets: a.sockets,
        bind: a.bind,
        first_serial: a.first_serial,
        trust,
        models: a.models,
        ..a.buffer.apply(FleetConfig::new(a.hub, a.sensors))
    };
    let fleet = fleet::spawn(config, Some(tx), shutdown.clone()).await?;
    for c in &a.cut {
        let parts: Vec<&str> = c.split(':').collect();
        let at = match parts.as_slice() {
            [i, "write", n] => {
                i.parse().ok().zip(n.parse().ok()).map(|(i, n)| (i, fleet::CutPoint::MidWrite(n)))
            }
            [i, "switch"] => i.parse().ok().map(|i| (i, fleet::CutPoint::MidSwitch)),
            _ => None,
        };
        let Some((index, point)) = at else { return Err(Error::Usage(format!("bad --cut {c:?}"))) };
        fleet.cut_power_at(index, point);
    }
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
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(fleet::FleetError::Io)?;
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Some(e) => print_event(e, a.ctl.as_ref()),
                None => return Ok(()),
            },
            _ = status_tick.tick(), if a.status_ms > 0 => {
                let s = fleet.status().await?;
                println!("STATUS {}", serde_json::to_string(&s).unwrap_or_default());
            }
            _ = tokio::signal::ctrl_c() => return stop_fleet(&fleet, &shutdown).await,
            _ = term.recv() => return stop_fleet(&fleet, &shutdown).await,
        }
    }
}

/// `IP` (any port) or `IP:PORT`.
/// A model by its name in the vocabulary (`thermostat`, `co2`).
fn parse_model(s: &str) -> Result<Model, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        let names: Vec<String> = Model::ALL
            .iter()
            .filter_map(|m| serde_json::to_value(m).ok())
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        format!("unknown model {s:?}; the models are {}", names.join(", "))
    })
}

fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 0)))
        .map_err(|_| format!("{s:?} is neither IP nor IP:PORT"))
}

/// Stops gracefully: unacknowledged measurements are written to flash first.
async fn stop_fleet(fleet: &FleetHandle, shutdown: &CancellationToken) -> Result<(), Error> {
    let result = fleet.shutdown().await;
    shutdown.cancel();
    println!("STOPPED");
    Ok(result?)
}

/// Prints one fleet event as a line (`KIND key=value ...`); types the PIN shown if playing the
/// owner through the hub's control socket.
fn print_event(e: FleetEvent, ctl: Option<&PathBuf>) {
    let at = sensor_sim::clock::now().0;
    match e {
        FleetEvent::PinShown { serial, pin, index } => {
            println!("PIN sensor={index} serial={serial} pin={pin}");
            if let Some(sock) = ctl.cloned() {
                tokio::spawn(async move {
                    if let Err(e) = ctl::pair_pin(&sock, &pin, &serial).await {
                        eprintln!("PIN entry for {serial} failed: {e}");
                    }
                });
            }
        }
        FleetEvent::Paired { index, serial, kid } => {
            println!("PAIRED sensor={index} serial={serial} kid={kid}");
        }
        FleetEvent::PairingFailed { index, reason } => {
            println!("PAIRING-FAILED sensor={index} reason={reason:?}");
        }
        FleetEvent::PairingRetry { index, in_ms } => {
            println!("PAIRING-RETRY sensor={index} in_ms={in_ms}");
        }
        FleetEvent::Delivered { index, kid, id, time_ms, latency_us, backlog } => {
            let kid = kid.map(|k| k.to_string()).unwrap_or_default();
            println!(
                "DELIVERED sensor={index} kid={kid} id={id} time_ms={time_ms} \
                 latency_us={latency_us} backlog={backlog}"
            );
        }
        FleetEvent::Refused { index } => println!("REFUSED sensor={index}"),
        FleetEvent::Renewed { index, renewed } => {
            println!("RENEWED sensor={index} renewed={renewed}");
        }
        FleetEvent::Command { index, setting, value, applied } => {
            let applied = applied.map(|v| v.to_string()).unwrap_or_else(|| "none".into());
            let name = setting.name();
            println!("COMMAND sensor={index} name={name} value={value} applied={applied}");
        }
        FleetEvent::Offline { index, backlog } => {
            println!("OFFLINE sensor={index} backlog={backlog} at_ms={at}");
        }
        FleetEvent::DrainStarted { index, backlog, waited_ms, late_ms } => {
            println!(
                "DRAIN sensor={index} backlog={backlog} waited_ms={waited_ms} late_ms={late_ms} at_ms={at}"
            );
        }
        FleetEvent::Drained { index, dropped } => {
            println!("DRAINED sensor={index} dropped={dropped} at_ms={at}");
        }
        FleetEvent::UpdateProgress { index, version, done, total } => {
            println!("UPDATE-PROGRESS sensor={index} version={version} blocks={done}/{total}");
        }
        FleetEvent::Updated { index, version, running, outcome, reason, blocks } => {
            println!(
                "UPDATED sensor={index} version={version} running={running} \
                 outcome={outcome:?} blocks={blocks} reason={reason:?}"
            );
        }
    }
}

async fn run_maker(cmd: MakerCmd) -> Result<(), Error> {
    match cmd {
        MakerCmd::Keygen { keys } => {
            let public = maker::keygen(&keys)?;
            println!("KEY {}", protocol::hex::encode(&public.to_sec1_compressed()));
        }
        MakerCmd::Publish {
            to: FeedTarget { keys, feed, model },
            version,
            size,
            min_version,
            expires_days,
            disruptive,
            unhealthy,
            expired,
            risks,
        } => {
            let key = maker::load_key(&keys)?;
            let now = sensor_sim::clock::unix_now();
            let release = maker::Release {
                model: model.clone(),
                version,
                min_version,
                expires: protocol::time::UnixTime(if expired {
                    now.0 - 60
                } else {
                    now.0 + expires_days * 86_400
                }),
                disruptive,
                risks,
                released: if expired { protocol::time::UnixTime(now.0 - 120) } else { now },
            };
            let image = sensor_sim::firmware::image::build_image(&model, version, size, !unhealthy);
            let entry = maker::publish(&feed, &key, &release, &image)?;
            println!(
                "PUBLISHED model={} version={} manifest={} image={}",
                entry.model, entry.version, entry.manifest, entry.image
            );
        }
        MakerCmd::Advisory {
            to: FeedTarget { keys, feed, model },
            low,
            high,
            severity,
            fixed_in,
            text,
        } => {
            use protocol::update::Severity;
            let severity = match severity.as_str() {
                "low" => Severity::Low,
                "medium" => Severity::Medium,
                "high" => Severity::High,
                "critical" => Severity::Critical,
                other => return Err(Error::Usage(format!("unknown severity {other:?}"))),
            };
            let key = maker::load_key(&keys)?;
            let advisory = protocol::update::Advisory {
                model,
                affected_low: low,
                affected_high: high,
                severity,
                fixed_in,
                text,
                issued: sensor_sim::clock::unix_now(),
            };
            let path = maker::publish_advisory(&feed, &key, &advisory)?;
            println!("PUBLISHED advisory={path}");
        }
        MakerCmd::Serve { feed, tls, bind } => {
            let t = maker::feed_tls(&tls, &["localhost", "127.0.0.1"])?;
            let stop = CancellationToken::new();
            let server = maker::serve_feed(feed, &t, bind, stop.clone()).await?;
            println!("FEED https://{}/ {}", server.addr, tls.join(maker::TLS_CERT_FILE).display());
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
            let _ = server.task.await;
        }
    }
    Ok(())
}
