//! The owner's command API: one implementation behind both fronts (the control socket now, the
//! web UI later). Requests and answers are serde types, so every front speaks the same JSON.

use crate::device_id::DeviceId;
use protocol::oscore::Kid;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::store::{HubStore, Store, StoredReading};

/// A request to the hub.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Arm pairing for a bounded window.
    PairOpen {
        /// Window length (default from the configuration).
        #[serde(default)]
        seconds: Option<u64>,
    },
    /// Disarm pairing.
    PairClose,
    /// Type the PIN shown on a sensor (name it by serial or device id if several wait).
    PairPin {
        /// The digits.
        pin: String,
        /// Serial of the sensor whose display shows the PIN.
        #[serde(default)]
        serial: Option<String>,
        /// Or its device id.
        #[serde(default)]
        device: Option<DeviceId>,
        /// A device the new sensor replaces (it inherits name, room and history; the old
        /// sensor's keys are erased).
        #[serde(default)]
        replaces: Option<DeviceId>,
        /// The owner read the sensor's warning (past its support period, under an advisory)
        /// and pairs it anyway.
        #[serde(default)]
        accept_risk: bool,
    },
    /// Pairing window and waiting sensors.
    Pairing,
    /// Factory reset: everything in the data directory is erased and the hub restarts as a new
    /// hub (new key-encryption key, certificate and setup code). `confirm` must be `ERASE`.
    FactoryReset {
        /// The word that confirms it.
        confirm: String,
    },
    /// All devices.
    Devices,
    /// One device.
    Device {
        /// Device id.
        id: DeviceId,
    },
    /// A device's newest readings.
    Readings {
        /// Device id.
        id: DeviceId,
        /// How many (default 20, at most 10,000).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Remove a device: its keys, state and readings are erased.
    Remove {
        /// Device id.
        id: DeviceId,
    },
    /// Name a device.
    Rename {
        /// Device id.
        id: DeviceId,
        /// New name.
        name: String,
    },
    /// Put a device in a room (none: no room).
    Room {
        /// Device id.
        id: DeviceId,
        /// Room.
        #[serde(default)]
        room: Option<String>,
    },
    /// Security advisories and what the hub did about them.
    Advisories,
    /// Add an advisory given by the owner (COSE_Sign1, hex).
    AdvisoryAdd {
        /// The signed advisory, hex.
        advisory_hex: String,
    },
    /// The owner's explicit override of an isolation (logged).
    Unisolate {
        /// Device id.
        id: DeviceId,
    },
    /// Security-event counters (EN 303 645 5.10-1).
    Security,
    /// Updates: releases, refusals, devices waiting or under way.
    Updates,
    /// Add a release given by the owner (manifest and image as hex).
    UpdateAdd {
        /// COSE_Sign1 manifest, hex.
        manifest_hex: String,
        /// Image, hex.
        image_hex: String,
    },
    /// Pin a manufacturer key for a model.
    Trust {
        /// Model designation.
        model: String,
        /// Hex SEC1 public key.
        key: String,
    },
    /// Set the update policy for the hub or one device.
    UpdatePolicy {
        /// Device (none: the hub's default).
        #[serde(default)]
        device: Option<DeviceId>,
        /// The policy (`null` on a device: follow the hub's).
        policy: Option<crate::updates::Policy>,
    },
    /// Approve a version (disruptive or notify-only) for one device or all.
    UpdateApprove {
        /// One device.
        #[serde(default)]
        device: Option<DeviceId>,
        /// Or every device of this model.
        #[serde(default)]
        model: Option<String>,
        /// Version.
        version: u32,
    },
    /// Cancel delivery to a device.
    UpdateCancel {
        /// Device.
        device: DeviceId,
    },
    /// Retry a device's update now (clears its back-off).
    UpdateRetry {
        /// Device.
        device: DeviceId,
    },
    /// The upstream bridge: connected, outbox lag, forwarded, dropped.
    Upstream,
    /// Add an MQTT user (EN 303 645 5.1-1: there is no default one).
    MqttUserAdd {
        /// User name.
        name: String,
        /// Password (none: one is generated and returned once).
        #[serde(default)]
        password: Option<String>,
    },
    /// Remove an MQTT user.
    MqttUserRemove {
        /// User name.
        name: String,
    },
    /// List the MQTT users.
    MqttUsers,
}

/// Pairing status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PairingStatus {
    /// Whether pairing requests and PINs are accepted now (not while backing off).
    pub open: bool,
    /// `open`, `backing_off` (the window is open but takes no PIN for `backoff_s` after a
    /// failed attempt), `no_attempts_left` (closed after its failures) or `closed`.
    #[serde(default)]
    pub state: PairingState,
    /// Seconds until PINs are taken again (while backing off).
    #[serde(default)]
    pub backoff_s: u64,
    /// Seconds until the window closes.
    pub closes_in_s: u64,
    /// Failed attempts left in this window.
    pub attempts_left: u32,
    /// Sensors waiting for their PIN.
    pub waiting: Vec<Waiting>,
    /// The device whose typed PIN is being confirmed (one attempt at a time).
    pub confirming: Option<String>,
    /// PINs typed meanwhile, waiting for that attempt to end.
    pub pins_queued: usize,
}

/// Where the pairing window stands.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PairingState {
    /// PINs are taken now.
    Open,
    /// Open, but waiting out the pause after a failed attempt.
    BackingOff,
    /// Closed after its failed attempts.
    NoAttemptsLeft,
    /// Not open (never opened, timed out or closed by the owner).
    #[default]
    Closed,
}

/// A sensor waiting for its PIN.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Waiting {
    /// Future device id.
    pub device: String,
    /// Serial.
    pub serial: String,
    /// Model designation.
    pub model: String,
    /// Installed firmware.
    #[serde(default)]
    pub firmware_version: u32,
    /// What the owner should know before typing its PIN (past its support period, under a
    /// known advisory, a serial already paired); a PIN for it needs `accept_risk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Counters of rejected input and security events (EN 303 645 5.10-1).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecurityReport {
    /// The link's counters (malformed, replays, bad tags, throttled, pairing, ...).
    #[serde(flatten)]
    pub link: protocol::link::SecurityCounters,
    /// Readings refused for breaking a limit (SenML).
    pub bad_payload: u64,
    /// MQTT logins refused or throttled, malformed MQTT, forged publications.
    #[serde(flatten)]
    pub mqtt: crate::mqtt::auth::MqttCounters,
    /// Connections shed or cut for being slow, fronts bypassed, upstream certificates refused.
    #[serde(flatten)]
    pub connections: crate::connections::ConnectionCounters,
    /// Total of the security-relevant counters (retransmissions and Echo rate limiting are
    /// not security events).
    pub total: u64,
}

/// A device with its live state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceView {
    /// Pairing record, name, room, availability, isolation, last seen, current state.
    #[serde(flatten)]
    pub device: crate::devices::DeviceSnapshot,
    /// Readings stored.
    pub readings: u64,
    /// Update state and history (in `device` answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<crate::updates::DeviceUpdate>,
}

/// What the link driver is asked to do.
#[derive(Debug)]
pub(crate) enum LinkCommand {
    PairOpen {
        seconds: Option<u64>,
        reply: oneshot::Sender<PairingStatus>,
    },
    PairClose {
        reply: oneshot::Sender<PairingStatus>,
    },
    PairPin {
        pin: String,
        serial: Option<String>,
        device: Option<Kid>,
        replaces: Option<DeviceId>,
        accept_risk: bool,
        reply: oneshot::Sender<Result<Kid, CommandError>>,
    },
    Pairing {
        reply: oneshot::Sender<PairingStatus>,
    },
    Remove {
        kid: Kid,
        reply: oneshot::Sender<bool>,
    },
    Security {
        reply: oneshot::Sender<SecurityReport>,
    },
    Updates {
        reply: oneshot::Sender<crate::updates::UpdatesView>,
    },
    UpdateAdd {
        manifest: Vec<u8>,
        image: Vec<u8>,
        source: &'static str,
        reply: oneshot::Sender<Result<(String, u32), CommandError>>,
    },
    Trust {
        model: String,
        key: String,
        reply: oneshot::Sender<Result<String, CommandError>>,
    },
    UpdatePolicy {
        device: Option<Kid>,
        policy: Option<crate::updates::Policy>,
        reply: oneshot::Sender<Result<(), CommandError>>,
    },
    UpdateApprove {
        device: Option<Kid>,
        model: Option<String>,
        version: u32,
        reply: oneshot::Sender<Result<(), CommandError>>,
    },
    UpdateCancel {
        device: Kid,
        reply: oneshot::Sender<Option<u32>>,
    },
    UpdateRetry {
        device: Kid,
        reply: oneshot::Sender<()>,
    },
    History {
        device: Kid,
        reply: oneshot::Sender<Option<crate::updates::DeviceUpdate>>,
    },
    /// Queue a command for an actuator's next request (MQTT `…/set`).
    Command {
        device: Kid,
        command: protocol::link::command::Command,
        reply: oneshot::Sender<bool>,
    },
    Advisory {
        signed: Vec<u8>,
        source: &'static str,
        reply: oneshot::Sender<Result<crate::isolation::AdvisoryRecord, CommandError>>,
    },
    Advisories {
        reply: oneshot::Sender<Vec<crate::isolation::AdvisoryRecord>>,
    },
    Unisolate {
        device: DeviceId,
        reply: oneshot::Sender<Result<(), CommandError>>,
    },
    Replace {
        old: DeviceId,
        new: DeviceId,
        reply: oneshot::Sender<Result<(), CommandError>>,
    },
}

/// Why the link driver refused a command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The PIN was not used (no such session, window closed, backing off, wrong length, ...).
    #[error(transparent)]
    Pin(#[from] protocol::link::PinError),
    /// No waiting sensor has that serial.
    #[error("no sensor with serial {0} is waiting for a PIN")]
    NoSuchSerial(String),
    /// Several waiting sensors claim that serial: someone may pose as one of them.
    #[error("several sensors claim serial {0}; choose one with --device")]
    AmbiguousSerial(String),
    /// The attempt ended without pairing (a failed attempt: counted in the window).
    #[error("{}", failed_attempt(reason, *attempts_left, *backoff_s))]
    PairingFailed {
        /// What failed.
        reason: protocol::pairing::PairingError,
        /// Failed attempts the window still allows.
        attempts_left: u32,
        /// Seconds before the next PIN is taken.
        backoff_s: u64,
    },
    /// The typed text cannot be a PIN of this sensor (not counted as an attempt).
    #[error(
        "a PIN of this sensor is {digits} digits from {zero} to {max}: check the digits on its \
         display and type them again (not counted as a failed attempt)",
        zero = "0".repeat(*digits), max = max_pin(*digits)
    )]
    PinFormat {
        /// Digits of this sensor's PINs.
        digits: usize,
    },
    /// Another device is paired with the same serial (not counted as an attempt).
    #[error(
        "a device with serial {serial} is already paired ({name}, id {device}). If this sensor \
         takes its place, type the PIN again with `--replaces {device}` (web: choose it under \
         “Replaces”): it keeps the name, room and history; otherwise remove that device first \
         (not counted as a failed attempt)"
    )]
    SerialPaired {
        /// The serial.
        serial: String,
        /// The paired device with it.
        device: DeviceId,
        /// Its name.
        name: String,
    },
    /// The sensor needs the owner's acknowledgement before its PIN is tried.
    #[error(
        "sensor {serial}: {warning}. To pair it anyway, type the PIN again accepting the risk \
         (hub ctl: add --accept-risk; web: tick “Pair anyway”; not counted as a failed attempt)"
    )]
    NeedsAcceptance {
        /// The sensor's serial.
        serial: String,
        /// Why.
        warning: String,
    },
    /// The window was closed or re-opened before the attempt was made.
    #[error("the pairing window was {0} before this PIN was tried")]
    WindowChanged(&'static str),
    /// The update manager refused.
    #[error(transparent)]
    Updates(#[from] crate::updates::UpdatesError),
    /// An advisory was refused or is known.
    #[error(transparent)]
    Advisory(#[from] crate::isolation::AdvisoryError),
    /// The device directory refused (bad name, not isolated, ...).
    #[error(transparent)]
    Directory(#[from] crate::devices::DirectoryError),
}

/// Why a request failed (sent to the client as `{"error": "..."}`).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad arguments.
    #[error("{0}")]
    BadRequest(String),
    /// The hub refused the command.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// No such device.
    #[error("no device {0}")]
    NotFound(DeviceId),
    /// The hub is shutting down.
    #[error("the hub is shutting down")]
    Stopped,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The largest PIN of `digits` digits (2, 3 or 4 masked bytes).
fn max_pin(digits: usize) -> u64 {
    match digits {
        0..=5 => 65_535,
        6..=8 => 16_777_215,
        _ => 4_294_967_295,
    }
}

/// A failed attempt in the owner's words: what happened, and what they can do now (the same
/// text in `hub ctl` and the web UI).
fn failed_attempt(
    reason: &protocol::pairing::PairingError,
    attempts_left: u32,
    backoff_s: u64,
) -> String {
    use protocol::pairing::PairingError as E;
    let what = match reason {
        E::OffCurve | E::HubProofInvalid | E::SensorProofInvalid | E::ReflectedKey => {
            "the PIN did not match this sensor's display".to_owned()
        }
        E::Abandoned => "the sensor did not finish pairing after its PIN was typed (is it still \
             on and in range?)"
            .to_owned(),
        other => format!("pairing failed ({other})"),
    };
    match attempts_left {
        0 => format!(
            "{what}; no attempts left: the pairing window is closed. Open a new one (`hub ctl \
             pair open`, or the Pairing page) and type the new PIN the sensor shows"
        ),
        n => {
            let wait = match backoff_s {
                0 => String::new(),
                s => format!(" in {s} s"),
            };
            let s = if n == 1 { "" } else { "s" };
            format!(
                "{what}; {n} attempt{s} left in this window. The sensor shows a new PIN after a \
                 failure: type that one{wait}"
            )
        }
    }
}

fn directory_error(id: DeviceId, e: crate::devices::DirectoryError) -> ApiError {
    match e {
        crate::devices::DirectoryError::Unknown => ApiError::NotFound(id),
        e => ApiError::Command(e.into()),
    }
}

/// Handle to the running hub.
#[derive(Debug, Clone)]
pub struct HubApi {
    pub(crate) link: mpsc::Sender<LinkCommand>,
    pub(crate) store: HubStore,
    /// Names, rooms, availability, isolation and current state of every device; subscribe to
    /// its notices for live data (isolated devices' data is never in them).
    pub directory: crate::devices::Directory,
    /// The upstream bridge, when one is configured.
    pub upstream: Option<crate::upstream::UpstreamHandle>,
    /// MQTT users, login throttling and counters (none when MQTT is disabled).
    pub(crate) mqtt: Option<std::sync::Arc<crate::mqtt::auth::Auth>>,
    /// The listeners' connection slots and counters.
    pub listeners: crate::connections::Listeners,
    /// The update feed checker's last and next check (none: no feed configured).
    pub feed: crate::feed::FeedState,
    /// Fired when the owner asks for a factory reset (whoever runs the hub stops it, erases
    /// its data directory and starts it again: `daemon::start`'s caller).
    pub(crate) reset: tokio_util::sync::CancellationToken,
}

impl HubApi {
    /// Factory reset (EN 303 645 5.11-1): asks whoever runs the hub to stop it, erase its data
    /// directory — devices, keys, readings, MQTT users, trust keys, releases, policy,
    /// advisories, the upstream outbox, web accounts and sessions, the key-encryption key and
    /// the TLS key — and start it again as a new hub.
    pub fn factory_reset(&self) {
        tracing::warn!(
            "factory reset requested by the owner: the hub stops, erases its data directory and starts as a new hub"
        );
        self.reset.cancel();
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> LinkCommand,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.link.send(make(tx)).await.map_err(|_| ApiError::Stopped)?;
        rx.await.map_err(|_| ApiError::Stopped)
    }

    /// Arms pairing.
    pub async fn pair_open(&self, seconds: Option<u64>) -> Result<PairingStatus, ApiError> {
        if seconds.is_some_and(|s| s == 0 || s > 3600) {
            return Err(ApiError::BadRequest("seconds must be 1 to 3600".into()));
        }
        self.ask(|reply| LinkCommand::PairOpen { seconds, reply }).await
    }

    /// Disarms pairing.
    pub async fn pair_close(&self) -> Result<PairingStatus, ApiError> {
        self.ask(|reply| LinkCommand::PairClose { reply }).await
    }

    /// Types a PIN and waits for the attempt to end (one attempt at a time); returns the id of
    /// the paired device, or why the attempt failed.
    pub async fn pair_pin(
        &self,
        pin: String,
        serial: Option<String>,
        device: Option<DeviceId>,
        replaces: Option<DeviceId>,
        accept_risk: bool,
    ) -> Result<String, ApiError> {
        if let Some(old) = &replaces {
            self.directory.replaceable(old).map_err(|e| directory_error(*old, e))?;
        }
        let device = device.map(|d| d.kid());
        let kid = self
            .ask(|reply| LinkCommand::PairPin { pin, serial, device, replaces, accept_risk, reply })
            .await?
            .map_err(ApiError::Command)?;
        if let Some(old) = replaces {
            let new = kid.into();
            self.ask(|reply| LinkCommand::Replace { old, new, reply })
                .await?
                .map_err(ApiError::Command)?;
        }
        Ok(kid.to_string())
    }

    /// Pairing status.
    pub async fn pairing(&self) -> Result<PairingStatus, ApiError> {
        self.ask(|reply| LinkCommand::Pairing { reply }).await
    }

    /// All devices, by name.
    pub async fn devices(&self) -> Result<Vec<DeviceView>, ApiError> {
        let store = self.store.clone();
        let snapshots = self.directory.list();
        let views = tokio::task::spawn_blocking(move || -> Result<Vec<DeviceView>, ApiError> {
            let mut out = Vec::with_capacity(snapshots.len());
            for device in snapshots {
                let kid = device.info.id.kid();
                out.push(DeviceView { readings: store.reading_count(&kid)?, device, update: None });
            }
            Ok(out)
        })
        .await
        .map_err(|_| ApiError::Stopped)??;
        Ok(views)
    }

    /// One device, with its update history.
    pub async fn device(&self, id: DeviceId) -> Result<DeviceView, ApiError> {
        let kid = id.kid();
        let device = self.directory.get(&id).ok_or(ApiError::NotFound(id))?;
        let store = self.store.clone();
        let readings = tokio::task::spawn_blocking(move || store.reading_count(&kid))
            .await
            .map_err(|_| ApiError::Stopped)??;
        let mut d = DeviceView { device, readings, update: None };
        d.update = self.ask(|reply| LinkCommand::History { device: kid, reply }).await?;
        if let Some(u) = &d.update {
            d.device.info.firmware_version = u.installed;
        }
        Ok(d)
    }

    /// The update overview.
    pub async fn updates(&self) -> Result<crate::updates::UpdatesView, ApiError> {
        self.ask(|reply| LinkCommand::Updates { reply }).await
    }

    /// Adds a release (owner upload, or the feed): verified before anything else.
    pub async fn update_add(
        &self,
        manifest: Vec<u8>,
        image: Vec<u8>,
        source: &'static str,
    ) -> Result<(String, u32), ApiError> {
        self.ask(|reply| LinkCommand::UpdateAdd { manifest, image, source, reply })
            .await?
            .map_err(ApiError::Command)
    }

    /// Pins a manufacturer key; returns its key id.
    pub async fn trust(&self, model: String, key: String) -> Result<String, ApiError> {
        self.ask(|reply| LinkCommand::Trust { model, key, reply }).await?.map_err(ApiError::Command)
    }

    /// Sets a policy.
    pub async fn update_policy(
        &self,
        device: Option<DeviceId>,
        policy: Option<crate::updates::Policy>,
    ) -> Result<(), ApiError> {
        let device = device.map(|d| d.kid());
        self.ask(|reply| LinkCommand::UpdatePolicy { device, policy, reply })
            .await?
            .map_err(ApiError::Command)
    }

    /// Approves a version.
    pub async fn update_approve(
        &self,
        device: Option<DeviceId>,
        model: Option<String>,
        version: u32,
    ) -> Result<(), ApiError> {
        let device = device.map(|d| d.kid());
        self.ask(|reply| LinkCommand::UpdateApprove { device, model, version, reply })
            .await?
            .map_err(ApiError::Command)
    }

    /// Cancels delivery to a device.
    pub async fn update_cancel(&self, device: DeviceId) -> Result<Option<u32>, ApiError> {
        let device = device.kid();
        self.ask(|reply| LinkCommand::UpdateCancel { device, reply }).await
    }

    /// Retries now.
    pub async fn update_retry(&self, device: DeviceId) -> Result<(), ApiError> {
        let device = device.kid();
        self.ask(|reply| LinkCommand::UpdateRetry { device, reply }).await
    }

    /// A device's newest readings, oldest first; a replacement's include those of the devices
    /// it replaced (its history, TR 103 621 6.23 example 1).
    pub async fn readings(
        &self,
        id: DeviceId,
        limit: Option<usize>,
    ) -> Result<Vec<StoredReading>, ApiError> {
        let mut kids = vec![id.kid()];
        if let Some(d) = self.directory.get(&id) {
            kids.extend(d.replaces.iter().map(DeviceId::kid));
        }
        let limit = limit.unwrap_or(20).min(10_000);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<StoredReading>, ApiError> {
            let mut all = Vec::new();
            for kid in &kids {
                all.extend(store.readings(kid, limit)?);
            }
            all.sort_by_key(|r| r.time_ms);
            let skip = all.len().saturating_sub(limit);
            Ok(all.split_off(skip))
        })
        .await
        .map_err(|_| ApiError::Stopped)?
    }

    /// Removes a device (EN 303 645 5.11-1: its data is erased with it).
    pub async fn remove(&self, id: DeviceId) -> Result<(), ApiError> {
        let kid = id.kid();
        if self.ask(|reply| LinkCommand::Remove { kid, reply }).await? {
            Ok(())
        } else {
            Err(ApiError::NotFound(id))
        }
    }

    /// Names a device.
    pub async fn rename(&self, id: DeviceId, name: &str) -> Result<(), ApiError> {
        self.directory.rename(&id, name).map_err(|e| directory_error(id, e))
    }

    /// Puts a device in a room.
    pub async fn set_room(&self, id: DeviceId, room: Option<&str>) -> Result<(), ApiError> {
        self.directory.set_room(&id, room).map_err(|e| directory_error(id, e))
    }

    /// Security advisories, oldest first, with the action taken per affected device.
    pub async fn advisories(&self) -> Result<Vec<crate::isolation::AdvisoryRecord>, ApiError> {
        self.ask(|reply| LinkCommand::Advisories { reply }).await
    }

    /// Adds a signed advisory (from the feed or the owner): verified like a manifest, then
    /// every affected device gets its fix scheduled or is isolated.
    pub async fn advisory_add(
        &self,
        signed: Vec<u8>,
        source: &'static str,
    ) -> Result<crate::isolation::AdvisoryRecord, ApiError> {
        self.ask(|reply| LinkCommand::Advisory { signed, source, reply })
            .await?
            .map_err(ApiError::Command)
    }

    /// The owner overrides a device's isolation (explicit and logged, TR 103 621 6.23).
    pub async fn unisolate(&self, id: DeviceId) -> Result<(), ApiError> {
        self.ask(|reply| LinkCommand::Unisolate { device: id, reply }).await?.map_err(|e| match e {
            CommandError::Directory(e) => directory_error(id, e),
            e => ApiError::Command(e),
        })
    }

    /// Security counters.
    pub async fn security(&self) -> Result<SecurityReport, ApiError> {
        let mut report = self.ask(|reply| LinkCommand::Security { reply }).await?;
        if let Some(m) = &self.mqtt {
            report.mqtt = m.counters();
            report.total += report.mqtt.total();
        }
        report.connections = self.connection_counters();
        report.total += report.connections.total();
        Ok(report)
    }

    /// The listeners' connection counters (with the upstream bridge's certificate refusals).
    pub fn connection_counters(&self) -> crate::connections::ConnectionCounters {
        let upstream = self.upstream.as_ref().map_or(0, |u| u.status().tls_refused);
        self.listeners.counters(upstream)
    }

    /// Queues a command for `device` (an actuator that is not isolated), sent with the
    /// acknowledgement of its next report.
    pub async fn command(
        &self,
        device: DeviceId,
        command: protocol::link::command::Command,
    ) -> Result<(), ApiError> {
        if !self.directory.outgoing_allowed(&device) {
            return Err(ApiError::NotFound(device));
        }
        let kid = device.kid();
        if self.ask(|reply| LinkCommand::Command { device: kid, command, reply }).await? {
            Ok(())
        } else {
            Err(ApiError::NotFound(device))
        }
    }

    fn mqtt_auth(&self) -> Result<std::sync::Arc<crate::mqtt::auth::Auth>, ApiError> {
        self.mqtt.clone().ok_or_else(|| ApiError::BadRequest("MQTT is disabled".into()))
    }

    /// Adds an MQTT user; returns the generated password if none was given (shown once).
    pub async fn mqtt_user_add(
        &self,
        name: String,
        password: Option<String>,
    ) -> Result<Option<String>, ApiError> {
        let auth = self.mqtt_auth()?;
        let password = password.map(zeroize::Zeroizing::new);
        auth.add_user(&name, password.as_deref().map(|p| p.as_str()))
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))
    }

    /// Removes an MQTT user.
    pub async fn mqtt_user_remove(&self, name: String) -> Result<(), ApiError> {
        let auth = self.mqtt_auth()?;
        tokio::task::spawn_blocking(move || auth.remove_user(&name))
            .await
            .map_err(|_| ApiError::Stopped)?
            .map_err(|e| ApiError::BadRequest(e.to_string()))
    }

    /// The MQTT users.
    pub fn mqtt_users(&self) -> Result<Vec<crate::mqtt::auth::UserView>, ApiError> {
        Ok(self.mqtt_auth()?.users())
    }

    /// The upstream bridge's status (`configured: false` without one: the hub is local only).
    pub fn upstream(&self) -> serde_json::Value {
        match &self.upstream {
            Some(u) => {
                let mut v = serde_json::json!(u.status());
                v["configured"] = true.into();
                v
            }
            None => serde_json::json!({"configured": false}),
        }
    }

    /// Runs one request and renders the answer as JSON.
    pub async fn handle(&self, req: Request) -> serde_json::Value {
        let result = match req {
            Request::PairOpen { seconds } => {
                self.pair_open(seconds).await.map(|v| serde_json::json!(v))
            }
            Request::PairClose => self.pair_close().await.map(|v| serde_json::json!(v)),
            Request::PairPin { pin, serial, device, replaces, accept_risk } => {
                let r = self.pair_pin(pin, serial, device, replaces, accept_risk).await;
                r.map(|d| serde_json::json!({"pairing": d, "replaces": replaces}))
            }
            Request::Pairing => self.pairing().await.map(|v| serde_json::json!(v)),
            Request::FactoryReset { confirm } if confirm == "ERASE" => {
                self.factory_reset();
                Ok(serde_json::json!({"factory_reset": true}))
            }
            Request::FactoryReset { .. } => {
                Err(ApiError::BadRequest("type ERASE to confirm the factory reset".into()))
            }
            Request::Devices => self.devices().await.map(|v| serde_json::json!(v)),
            Request::Device { id } => self.device(id).await.map(|v| serde_json::json!(v)),
            Request::Readings { id, limit } => {
                self.readings(id, limit).await.map(|v| serde_json::json!(v))
            }
            Request::Remove { id } => {
                self.remove(id).await.map(|()| serde_json::json!({"removed": id}))
            }
            Request::Rename { id, name } => {
                self.rename(id, &name).await.map(|()| serde_json::json!({"renamed": id}))
            }
            Request::Room { id, room } => {
                self.set_room(id, room.as_deref()).await.map(|()| serde_json::json!({"room": room}))
            }
            Request::Advisories => self.advisories().await.map(|v| serde_json::json!(v)),
            Request::AdvisoryAdd { advisory_hex } => match protocol::hex::decode(&advisory_hex) {
                Some(b) => self.advisory_add(b, "owner").await.map(|v| serde_json::json!(v)),
                None => Err(ApiError::BadRequest("the advisory must be hex".into())),
            },
            Request::Unisolate { id } => {
                self.unisolate(id).await.map(|()| serde_json::json!({"unisolated": id}))
            }
            Request::Security => self.security().await.map(|v| serde_json::json!(v)),
            Request::Updates => self.updates().await.map(|v| {
                let mut answer = serde_json::json!(v);
                answer["feed"] = serde_json::json!(self.feed.get());
                answer
            }),
            Request::UpdateAdd { manifest_hex, image_hex } => {
                match (protocol::hex::decode(&manifest_hex), protocol::hex::decode(&image_hex)) {
                    (Some(m), Some(i)) => self.update_add(m, i, "owner").await.map(
                        |(model, version)| serde_json::json!({"model": model, "version": version}),
                    ),
                    _ => Err(ApiError::BadRequest("manifest and image must be hex".into())),
                }
            }
            Request::Trust { model, key } => {
                self.trust(model, key).await.map(|kid| serde_json::json!({"trusted": kid}))
            }
            Request::UpdatePolicy { device, policy } => {
                self.update_policy(device, policy).await.map(|()| serde_json::json!({"ok": true}))
            }
            Request::UpdateApprove { device, model, version } => self
                .update_approve(device, model, version)
                .await
                .map(|()| serde_json::json!({"approved": version})),
            Request::UpdateCancel { device } => {
                self.update_cancel(device).await.map(|v| serde_json::json!({"cancelled": v}))
            }
            Request::UpdateRetry { device } => {
                self.update_retry(device).await.map(|()| serde_json::json!({"ok": true}))
            }
            Request::Upstream => Ok(self.upstream()),
            Request::MqttUserAdd { name, password } => {
                self.mqtt_user_add(name.clone(), password).await.map(|generated| match generated {
                    Some(p) => serde_json::json!({"added": name, "password": p}),
                    None => serde_json::json!({"added": name}),
                })
            }
            Request::MqttUserRemove { name } => self
                .mqtt_user_remove(name.clone())
                .await
                .map(|()| serde_json::json!({"removed": name})),
            Request::MqttUsers => self.mqtt_users().map(|v| serde_json::json!(v)),
        };
        result.unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
    }
}
