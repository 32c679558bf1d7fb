//! `hub`: run the daemon, or control a running one.

use hub::device_id::DeviceId;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hub::api::Request;
use hub::config::{self, Config};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "hub", version, about = "Hearth, a security-first smart-home hub")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the hub.
    Run {
        /// Data directory (default: $HEARTH_DATA_DIR or ~/.local/state/hearth).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Configuration file (TOML); every setting has a default.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Control a running hub through its socket.
    Ctl {
        /// Data directory of the hub (its control socket is `control.sock` there).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The control socket itself.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the hub's JSON answer (for scripts) instead of tables.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        cmd: CtlCmd,
    },
}

#[derive(Subcommand)]
enum CtlCmd {
    /// Pairing: open a window, type a PIN, or show the status.
    Pair {
        #[command(subcommand)]
        cmd: PairCmd,
    },
    /// List devices.
    Devices,
    /// Show one device.
    Device {
        /// Device id.
        id: DeviceId,
    },
    /// Show a device's newest readings.
    Readings {
        /// Device id.
        id: DeviceId,
        /// How many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Remove a device and erase its data.
    Remove {
        /// Device id.
        id: DeviceId,
    },
    /// Name a device.
    Rename {
        /// Device id.
        id: DeviceId,
        /// New name (1 to 64 characters).
        name: String,
    },
    /// Put a device in a room (no room: `--clear`).
    Room {
        /// Device id.
        id: DeviceId,
        /// Room.
        #[arg(required_unless_present = "clear")]
        room: Option<String>,
        /// Take it out of any room.
        #[arg(long)]
        clear: bool,
    },
    /// Security advisories and what the hub did about each affected device.
    Advisories,
    /// Add a signed security advisory from a file (verified like the feed's).
    Advisory {
        /// The advisory (COSE_Sign1).
        file: PathBuf,
    },
    /// Factory reset: erase everything the owner set up (devices, keys, readings, MQTT users,
    /// trust keys, releases, policy, web account) and restart as a new hub with a new
    /// key-encryption key, certificate and setup code.
    FactoryReset {
        /// Type ERASE to confirm.
        #[arg(long)]
        confirm: String,
    },
    /// Override a device's isolation (explicit and logged: its data leaves the hub again).
    Unisolate {
        /// Device id.
        id: DeviceId,
    },
    /// Security-event counters.
    Security,
    /// Updates: releases, refused ones with reasons, devices waiting or updating.
    Updates,
    /// Act on updates.
    Update {
        #[command(subcommand)]
        cmd: UpdateCmd,
    },
    /// The upstream bridge: connected, outbox lag (pending), forwarded, dropped.
    Upstream,
    /// MQTT users (there is no default one; every MQTT client logs in as one).
    MqttUser {
        #[command(subcommand)]
        cmd: MqttUserCmd,
    },
    /// Pin a manufacturer's public key for a model.
    Trust {
        /// Model designation.
        #[arg(long)]
        model: String,
        /// Hex SEC1 public key.
        #[arg(long)]
        key: String,
    },
}

#[derive(Subcommand)]
enum MqttUserCmd {
    /// Add a user: the password is read from standard input (first line) when it is not a
    /// terminal and not empty; otherwise one is generated and printed once.
    Add {
        /// User name (A-Z a-z 0-9 . _ -).
        name: String,
    },
    /// Remove a user.
    Remove {
        /// User name.
        name: String,
    },
    /// List the users.
    List,
}

#[derive(Subcommand)]
enum UpdateCmd {
    /// Add a release from files (verified like the feed's).
    Add {
        /// Signed manifest (COSE_Sign1).
        #[arg(long)]
        manifest: PathBuf,
        /// Firmware image.
        #[arg(long)]
        image: PathBuf,
    },
    /// Set the policy for the hub, or for one device.
    Policy {
        /// auto, notify, disabled, postpone, or follow (a device follows the hub).
        mode: String,
        /// Postpone until this local date or time: `2026-12-24`, `2026-12-24 18:00`, an RFC 3339
        /// time with offset, or Unix seconds.
        #[arg(long)]
        until: Option<String>,
        /// One device.
        #[arg(long)]
        device: Option<DeviceId>,
    },
    /// Approve a version (disruptive or notify-only).
    Approve {
        /// Version.
        #[arg(long)]
        version: u32,
        /// One device.
        #[arg(long)]
        device: Option<DeviceId>,
        /// Or every device of this model.
        #[arg(long)]
        model: Option<String>,
    },
    /// Cancel delivery to a device.
    Cancel {
        /// Device.
        #[arg(long)]
        device: DeviceId,
    },
    /// Retry a device's update now.
    Retry {
        /// Device.
        #[arg(long)]
        device: DeviceId,
    },
}

#[derive(Subcommand)]
enum PairCmd {
    /// Open the pairing window.
    Open {
        /// Seconds.
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Close it.
    Close,
    /// Type the PIN a sensor's display shows.
    Pin {
        /// The digits.
        digits: String,
        /// The sensor's serial (when several wait).
        #[arg(long)]
        serial: Option<String>,
        /// Or its device id.
        #[arg(long)]
        device: Option<DeviceId>,
        /// A device the new sensor replaces — isolated, moved or broken (name, room and
        /// history carry over; the old sensor's keys are erased).
        #[arg(long)]
        replaces: Option<DeviceId>,
        /// Pair a sensor the hub warns about (past its support period, under a known
        /// advisory) anyway: see the warning with `hub ctl pair status`.
        #[arg(long)]
        accept_risk: bool,
    },
    /// Window and waiting sensors.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.cmd {
        // rumqttd logs every connection at info and refused logins as errors; the fronts
        // count and log those (rate-limited) themselves.
        Cmd::Run { .. } => "info,rumqttd=warn,rumqttd::server::broker=off",
        Cmd::Ctl { .. } => "warn",
    };
    hub::logs::init("hub", default_level);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hub: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async move {
        match cli.cmd {
            Cmd::Run { data_dir, config } => run(data_dir, config).await,
            Cmd::Ctl { data_dir, socket, json, cmd } => ctl(data_dir, socket, json, cmd).await,
        }
    });
    // Blocking work still running (a password hash) is not waited for long.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn run(data_dir: Option<PathBuf>, config: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hub: {e}");
            return ExitCode::from(2);
        }
    };
    let data_dir = data_dir.unwrap_or_else(config::default_data_dir);
    let shutdown = CancellationToken::new();
    let running = match hub::daemon::start(config, &data_dir, shutdown.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hub: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(p) = &running.moved_aside {
        eprintln!(
            "hub: the store was corrupt and was moved aside to {}; starting empty",
            p.display()
        );
    }
    // One machine-readable line for supervisors and tests.
    let ready = serde_json::json!({
        "coap": running.coap.to_string(),
        "control": running.control.display().to_string(),
        "devices": running.devices,
        "mqtt": running.mqtt.map(|(plain, _)| plain.to_string()),
        "mqtt_tls": running.mqtt.and_then(|(_, tls)| tls).map(|a| a.to_string()),
        "web": running.web.to_string(),
        "pid": std::process::id(),
    });
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        coap = %running.coap,
        web = %running.web,
        devices = running.devices,
        "hub running"
    );
    // SIGTERM/SIGINT are taken on a thread of their own, which also bounds the stop: a stuck
    // subsystem on this runtime cannot keep the process alive. Installed before READY, so a
    // supervisor that stops the hub as soon as it is ready gets a clean stop.
    if let Err(e) = hub::daemon::stop_on_signal(shutdown.clone(), running.link_stopped()) {
        eprintln!("hub: {e}");
        return ExitCode::FAILURE;
    }
    println!("READY {ready}");
    let reset = running.reset.clone();
    let factory_reset = tokio::select! {
        () = shutdown.cancelled() => false,
        () = reset.cancelled() => true,
    };
    if !factory_reset {
        running.join().await;
        return ExitCode::SUCCESS;
    }
    // Factory reset: recorded durably first (a stop that does not finish is completed by the
    // next start), then the hub stops, its data directory is erased and it starts anew in this
    // process (same pid and arguments: a supervisor sees one service).
    if let Err(e) = hub::daemon::mark_factory_reset(&data_dir) {
        eprintln!("hub: factory reset not started: {e}");
        return ExitCode::FAILURE;
    }
    shutdown.cancel();
    running.join().await;
    if let Err(e) = hub::daemon::erase_data_dir(&data_dir) {
        eprintln!("hub: factory reset: {e}; the next start completes the erase");
        return ExitCode::FAILURE;
    }
    tracing::warn!("factory reset: the data directory was erased; starting as a new hub");
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("hub: factory reset done; start the hub again ({e})");
            return ExitCode::FAILURE;
        }
    };
    use std::os::unix::process::CommandExt as _;
    let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec();
    eprintln!(
        "hub: factory reset done, but the hub could not start itself again ({err}); start it"
    );
    ExitCode::FAILURE
}

async fn ctl(
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    json: bool,
    cmd: CtlCmd,
) -> ExitCode {
    use hub::render::View;
    let socket = socket
        .unwrap_or_else(|| data_dir.unwrap_or_else(config::default_data_dir).join("control.sock"));
    let (req, view) = match cmd {
        CtlCmd::Pair { cmd: PairCmd::Open { seconds } } => {
            (Request::PairOpen { seconds }, View::Pairing)
        }
        CtlCmd::Pair { cmd: PairCmd::Close } => (Request::PairClose, View::Pairing),
        CtlCmd::Pair { cmd: PairCmd::Pin { digits, serial, device, replaces, accept_risk } } => {
            (Request::PairPin { pin: digits, serial, device, replaces, accept_risk }, View::Plain)
        }
        CtlCmd::Pair { cmd: PairCmd::Status } => (Request::Pairing, View::Pairing),
        CtlCmd::Devices => (Request::Devices, View::Devices),
        CtlCmd::Device { id } => (Request::Device { id }, View::Device),
        CtlCmd::Readings { id, limit } => (Request::Readings { id, limit }, View::Readings),
        CtlCmd::Remove { id } => (Request::Remove { id }, View::Plain),
        CtlCmd::Rename { id, name } => (Request::Rename { id, name }, View::Plain),
        CtlCmd::Room { id, room, clear } => {
            (Request::Room { id, room: if clear { None } else { room } }, View::Plain)
        }
        CtlCmd::Advisories => (Request::Advisories, View::Advisories),
        CtlCmd::Advisory { file } => match std::fs::read(&file) {
            Ok(b) => {
                (Request::AdvisoryAdd { advisory_hex: protocol::hex::encode(&b) }, View::Plain)
            }
            Err(e) => {
                eprintln!("hub ctl: {}: {e}", file.display());
                return ExitCode::from(2);
            }
        },
        CtlCmd::Unisolate { id } => (Request::Unisolate { id }, View::Plain),
        CtlCmd::FactoryReset { confirm } => (Request::FactoryReset { confirm }, View::Plain),
        CtlCmd::Security => (Request::Security, View::Security),
        CtlCmd::Updates => (Request::Updates, View::Updates),
        CtlCmd::Trust { model, key } => (Request::Trust { model, key }, View::Plain),
        CtlCmd::Upstream => (Request::Upstream, View::Upstream),
        CtlCmd::MqttUser { cmd: MqttUserCmd::Add { name } } => {
            (Request::MqttUserAdd { name, password: password_from_stdin() }, View::Plain)
        }
        CtlCmd::MqttUser { cmd: MqttUserCmd::Remove { name } } => {
            (Request::MqttUserRemove { name }, View::Plain)
        }
        CtlCmd::MqttUser { cmd: MqttUserCmd::List } => (Request::MqttUsers, View::Plain),
        CtlCmd::Update { cmd } => match update_request(cmd) {
            Ok(r) => (r, View::Plain),
            Err(e) => {
                eprintln!("hub ctl: {e}");
                return ExitCode::from(2);
            }
        },
    };
    match hub::control::request(&socket, &req).await {
        Ok(v) => {
            if let Some(e) = v.get("error") {
                eprintln!("hub ctl: {}", e.as_str().unwrap_or("error"));
                if let Some(hint) = hint(e.as_str().unwrap_or("")) {
                    eprintln!("hub ctl: {hint}");
                }
                ExitCode::FAILURE
            } else if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                ExitCode::SUCCESS
            } else {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                print!("{}", hub::render::render(view, &v, now_ms));
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("hub ctl: {}: {e}", socket.display());
            let dir = socket.parent().map(|d| d.display().to_string()).unwrap_or_default();
            eprintln!("hub ctl: is the hub running? Start it with `hub run --data-dir {dir}`");
            ExitCode::FAILURE
        }
    }
}

/// The first line of standard input, unless it is a terminal or empty (then the hub generates a
/// password).
fn password_from_stdin() -> Option<String> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return None;
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line).ok()?;
    let p = line.trim_end_matches(['\r', '\n']);
    (!p.is_empty()).then(|| p.to_owned())
}

/// What to do about a refusal, when there is something to say.
fn hint(error: &str) -> Option<&'static str> {
    if error.starts_with("no device") {
        Some("list the device ids with `hub ctl devices`")
    } else if error.contains("no sensor with serial")
        || error.contains("no sensor is waiting")
        || error.contains("several sensors")
    {
        Some("see which sensors wait for a PIN with `hub ctl pair status`")
    } else if error.contains("window") && error.contains("closed") {
        Some("open the pairing window with `hub ctl pair open`")
    } else {
        None
    }
}

/// Why a `hub ctl update` command could not be sent.
#[derive(Debug, thiserror::Error)]
enum UpdateArgError {
    #[error("{0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("postpone needs --until DATE (2026-12-24, or 2026-12-24 18:00 local time)")]
    PostponeNeedsUntil,
    #[error(
        "--until {0:?} is not a date or time: write 2026-12-24 (midnight, local time), \
         2026-12-24 18:00 (local time), 2026-12-24T18:00:00+01:00, or Unix seconds"
    )]
    BadUntil(String),
    #[error("unknown policy {0:?} (auto, notify, disabled, postpone, or follow with --device)")]
    UnknownPolicy(String),
}

/// `--until` as people write it: a local date (midnight), a local date and time, an RFC 3339
/// time with its offset, or Unix seconds; as Unix seconds.
fn parse_until(text: &str) -> Result<u64, UpdateArgError> {
    let t = text.trim();
    let bad = || UpdateArgError::BadUntil(text.to_owned());
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| bad());
    }
    let tz = jiff::tz::TimeZone::system();
    let at = if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        ts
    } else if let Ok(dt) = t.parse::<jiff::civil::DateTime>() {
        dt.to_zoned(tz).map_err(|_| bad())?.timestamp()
    } else if let Ok(d) = t.parse::<jiff::civil::Date>() {
        d.to_zoned(tz).map_err(|_| bad())?.timestamp()
    } else {
        return Err(bad());
    };
    u64::try_from(at.as_second()).map_err(|_| bad())
}

fn update_request(cmd: UpdateCmd) -> Result<Request, UpdateArgError> {
    use hub::updates::Policy;
    Ok(match cmd {
        UpdateCmd::Add { manifest, image } => {
            let read =
                |p: &PathBuf| std::fs::read(p).map_err(|e| UpdateArgError::Read(p.clone(), e));
            Request::UpdateAdd {
                manifest_hex: protocol::hex::encode(&read(&manifest)?),
                image_hex: protocol::hex::encode(&read(&image)?),
            }
        }
        UpdateCmd::Policy { mode, until, device } => {
            let policy = match (mode.as_str(), until) {
                ("auto", _) => Some(Policy::Auto),
                ("notify", _) => Some(Policy::NotifyOnly),
                ("disabled", _) => Some(Policy::Disabled),
                ("postpone", Some(until)) => {
                    Some(Policy::Postponed { until: parse_until(&until)? })
                }
                ("postpone", None) => return Err(UpdateArgError::PostponeNeedsUntil),
                ("follow", _) if device.is_some() => None,
                _ => return Err(UpdateArgError::UnknownPolicy(mode)),
            };
            Request::UpdatePolicy { device, policy }
        }
        UpdateCmd::Approve { version, device, model } => {
            Request::UpdateApprove { device, model, version }
        }
        UpdateCmd::Cancel { device } => Request::UpdateCancel { device },
        UpdateCmd::Retry { device } => Request::UpdateRetry { device },
    })
}

#[cfg(test)]
mod tests {
    use super::parse_until;

    #[test]
    fn until_takes_dates_times_offsets_and_unix_seconds() {
        assert_eq!(parse_until("1800000000").ok(), Some(1_800_000_000));
        assert_eq!(parse_until("2027-01-15T08:30:00Z").ok(), Some(1_800_001_800));
        assert_eq!(parse_until("2027-01-15T09:30:00+01:00").ok(), Some(1_800_001_800));
        // Local times: a date is its midnight, a time is that minute (here, in whatever zone).
        let date = parse_until("2027-01-15").expect("date");
        let time = parse_until("2027-01-15 18:00").expect("time");
        assert_eq!(time - date, 18 * 3600);
        assert!(parse_until("next tuesday").is_err());
        assert!(parse_until("2027-13-01").is_err());
    }
}
