//! `hub ctl`: the owner's commands on the command line. Each subcommand becomes one typed
//! request ([`crate::api::request`]), goes to the hub's control socket, and its typed answer is
//! printed as JSON (`--json`) or rendered for people (`render::Render`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::api::request::{self as req, Command};
use crate::device_id::DeviceId;
use crate::render::Render;

/// `hub ctl`'s arguments.
#[derive(Debug, Args)]
pub struct CtlArgs {
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
}

#[derive(Debug, Subcommand)]
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
    /// Security-event counters, with their events in the last 5 minutes and anomaly flags.
    Security {
        /// Print the hub's EN 303 645 self-check instead: each provision, whether it is met
        /// now, and what to do when it is not.
        #[arg(long)]
        check: bool,
    },
    /// Updates: releases, refused ones with reasons, devices waiting or updating.
    Updates,
    /// Act on updates.
    Update {
        #[command(subcommand)]
        cmd: UpdateCmd,
    },
    /// The upstream bridge: connected, outbox lag (pending), forwarded, dropped.
    Upstream,
    /// The hub's health: whether its disk can be written, free space and its floor.
    Status,
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

#[derive(Debug, Subcommand)]
enum MqttUserCmd {
    /// Add a user: the password is read from standard input (first line) when it is not a
    /// terminal and not empty; otherwise one is generated and printed once.
    Add {
        /// User name (A-Z a-z 0-9 . _ -).
        name: String,
        /// Let this user make bridge requests over MQTT (`hearth/bridge/request/…`: pairing,
        /// rename, room, remove, list), as the owner could with `hub ctl`.
        #[arg(long)]
        admin: bool,
    },
    /// Remove a user.
    Remove {
        /// User name.
        name: String,
    },
    /// List the users.
    List,
}

#[derive(Debug, Subcommand)]
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

#[derive(Debug, Subcommand)]
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

/// Runs one `hub ctl` command against the hub's control socket.
pub async fn run(args: CtlArgs) -> ExitCode {
    let socket = args.socket.unwrap_or_else(|| {
        args.data_dir.unwrap_or_else(crate::config::default_data_dir).join("control.sock")
    });
    let ctl = Ctl { socket, json: args.json };
    match args.cmd {
        CtlCmd::Pair { cmd: PairCmd::Open { seconds } } => {
            ctl.send(req::PairOpen { seconds }).await
        }
        CtlCmd::Pair { cmd: PairCmd::Close } => ctl.send(req::PairClose {}).await,
        CtlCmd::Pair { cmd: PairCmd::Pin { digits, serial, device, replaces, accept_risk } } => {
            ctl.send(req::PairPin { pin: digits, serial, device, replaces, accept_risk }).await
        }
        CtlCmd::Pair { cmd: PairCmd::Status } => ctl.send(req::Pairing {}).await,
        CtlCmd::Devices => ctl.send(req::Devices {}).await,
        CtlCmd::Device { id } => ctl.send(req::Device { id }).await,
        CtlCmd::Readings { id, limit } => ctl.send(req::Readings { id, limit }).await,
        CtlCmd::Remove { id } => ctl.send(req::Remove { id }).await,
        CtlCmd::Rename { id, name } => ctl.send(req::Rename { id, name }).await,
        CtlCmd::Room { id, room, clear } => {
            ctl.send(req::Room { id, room: if clear { None } else { room } }).await
        }
        CtlCmd::Advisories => ctl.send(req::Advisories {}).await,
        CtlCmd::Advisory { file } => match std::fs::read(&file) {
            Ok(b) => ctl.send(req::AdvisoryAdd { advisory_hex: protocol::hex::encode(&b) }).await,
            Err(e) => {
                eprintln!("hub ctl: {}: {e}", file.display());
                ExitCode::from(2)
            }
        },
        CtlCmd::Unisolate { id } => ctl.send(req::Unisolate { id }).await,
        CtlCmd::FactoryReset { confirm } => ctl.send(req::FactoryReset { confirm }).await,
        CtlCmd::Security { check: false } => ctl.send(req::Security {}).await,
        CtlCmd::Security { check: true } => ctl.send(req::SecurityCheck {}).await,
        CtlCmd::Updates => ctl.send(req::Updates {}).await,
        CtlCmd::Trust { model, key } => ctl.send(req::Trust { model, key }).await,
        CtlCmd::Upstream => ctl.send(req::Upstream {}).await,
        CtlCmd::Status => ctl.send(req::Status {}).await,
        CtlCmd::MqttUser { cmd: MqttUserCmd::Add { name, admin } } => {
            ctl.send(req::MqttUserAdd { name, password: password_from_stdin(), admin }).await
        }
        CtlCmd::MqttUser { cmd: MqttUserCmd::Remove { name } } => {
            ctl.send(req::MqttUserRemove { name }).await
        }
        CtlCmd::MqttUser { cmd: MqttUserCmd::List } => ctl.send(req::MqttUsers {}).await,
        CtlCmd::Update { cmd } => match update_command(&ctl, cmd).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("hub ctl: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// Where and how to send.
struct Ctl {
    socket: PathBuf,
    json: bool,
}

impl Ctl {
    /// Sends `cmd`, then prints its answer (JSON, or rendered from its type) or its refusal.
    async fn send<C: Command>(&self, cmd: C) -> ExitCode
    where
        C::Answer: Render,
    {
        let v = match crate::control::request(&self.socket, &cmd.into()).await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("hub ctl: {}: {e}", self.socket.display());
                let dir = self.socket.parent().map(|d| d.display().to_string()).unwrap_or_default();
                eprintln!("hub ctl: is the hub running? Start it with `hub run --data-dir {dir}`");
                return ExitCode::FAILURE;
            }
        };
        if let Some(e) = v.get("error") {
            let e = e.as_str().unwrap_or("error");
            eprintln!("hub ctl: {e}");
            if let Some(hint) = hint(e) {
                eprintln!("hub ctl: {hint}");
            }
            return ExitCode::FAILURE;
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            return ExitCode::SUCCESS;
        }
        match serde_json::from_value::<C::Answer>(v) {
            Ok(answer) => {
                print!("{}", answer.render(crate::clock::unix_now_ms()));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "hub ctl: the hub's answer is not what this hub ctl expects ({e}): is it the same version?"
                );
                ExitCode::FAILURE
            }
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
    crate::clock::parse_local(text).ok_or_else(|| UpdateArgError::BadUntil(text.to_owned()))
}

async fn update_command(ctl: &Ctl, cmd: UpdateCmd) -> Result<ExitCode, UpdateArgError> {
    use crate::updates::Policy;
    Ok(match cmd {
        UpdateCmd::Add { manifest, image } => {
            let read =
                |p: &PathBuf| std::fs::read(p).map_err(|e| UpdateArgError::Read(p.clone(), e));
            let manifest_hex = protocol::hex::encode(&read(&manifest)?);
            let image_hex = protocol::hex::encode(&read(&image)?);
            ctl.send(req::UpdateAdd { manifest_hex, image_hex }).await
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
            ctl.send(req::UpdatePolicy { device, policy }).await
        }
        UpdateCmd::Approve { version, device, model } => {
            ctl.send(req::UpdateApprove { device, model, version }).await
        }
        UpdateCmd::Cancel { device } => ctl.send(req::UpdateCancel { device }).await,
        UpdateCmd::Retry { device } => ctl.send(req::UpdateRetry { device }).await,
    })
}
