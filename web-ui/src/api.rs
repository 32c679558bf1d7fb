//! The web UI's view of the hub: the [`OwnerApi`] trait (implemented by the hub on its one command
//! API, and by a fake in tests) and the plain types it answers with. `web-ui` never links `hub`.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// A boxed future answering `T` or an [`ApiError`].
pub type ApiFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

/// Why the hub refused or failed a command (the text is shown to the logged-in owner).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request was understood but refused (wrong PIN, window closed, unknown version...).
    #[error("{0}")]
    Refused(String),
    /// No such device.
    #[error("no such device")]
    NotFound,
    /// The hub is stopping or its store failed.
    #[error("the hub could not do this now: {0}")]
    Unavailable(String),
}

/// Whether a device is reachable, and if not why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Availability {
    /// Heard from recently.
    Online,
    /// Not heard from for a while.
    Offline,
    /// Cut off from everything beyond the hub (EN 303 645 5.3-13/14, TR 103 621 6.23).
    Isolated {
        /// Why (advisory, end of support).
        reason: String,
        /// What the owner can do (replace it with ...).
        replacement: String,
    },
}

/// What kind of quantity a reading is (how it is shown and charted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReadingKind {
    /// A measurement (temperature, humidity, setpoint): a line chart.
    #[default]
    Measure,
    /// A state or event shown in words (`open`/`closed`, `pressed`): a step chart.
    State,
    /// The device's battery: shown as a value, never as the device's chart.
    Battery,
}

/// One reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Unix milliseconds.
    pub time_ms: i64,
    /// The quantity's short SenML name (`temp`, `open`).
    pub name: String,
    /// What the owner calls it (`temperature`, `door`); empty: the name.
    #[serde(default)]
    pub label: String,
    /// Unit, if any.
    pub unit: Option<String>,
    /// Numeric value (states as 0/1), if it has one.
    pub value: Option<f64>,
    /// The value as shown (`21.3`, `open`, `pressed`).
    pub text: String,
    /// What kind of quantity it is.
    #[serde(default)]
    pub kind: ReadingKind,
}

/// A settable target the owner can change from the device's page (a thermostat's setpoint):
/// the same range the hub enforces for MQTT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setpoint {
    /// Lowest value accepted.
    pub min: f64,
    /// Highest value accepted.
    pub max: f64,
    /// Unit as shown (`°C`).
    pub unit: String,
    /// The value the device last reported, if any.
    pub current: Option<f64>,
}

/// A paired device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// Device id (hex).
    pub id: String,
    /// The owner's name for it, if any.
    pub name: Option<String>,
    /// Room, if any.
    pub room: Option<String>,
    /// Model designation (5.3-16).
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Installed firmware version.
    pub firmware: u32,
    /// Whether it can be updated at all.
    pub updatable: bool,
    /// Whether it verifies update signatures itself.
    pub verifies_signatures: bool,
    /// Sensing capabilities (5.8-3).
    pub capabilities: Vec<String>,
    /// End of the support period, Unix seconds (5.3-13).
    pub support_end: u64,
    /// When it paired, Unix seconds.
    pub paired_at: u64,
    /// Reachability.
    pub availability: Availability,
    /// Newest reading of each quantity it reports (temperature, humidity, ...), its main
    /// quantity first and its battery last.
    pub last: Vec<Reading>,
    /// The setpoint the owner can set, if the device takes one (and is not isolated).
    #[serde(default)]
    pub setpoint: Option<Setpoint>,
}

/// One line of a device's update history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryLine {
    /// Unix seconds.
    pub at: u64,
    /// Version.
    pub version: u32,
    /// What happened.
    pub event: String,
    /// Details.
    pub detail: String,
}

/// The pairing window (TR 103 621 6.29).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pairing {
    /// Whether sensors may pair now.
    pub open: bool,
    /// Seconds until the window closes.
    pub closes_in_s: u64,
    /// Failed attempts left in this window.
    pub attempts_left: u32,
    /// Sensors waiting for their PIN: (serial, model).
    pub waiting: Vec<(String, String)>,
    /// Seconds until PINs are taken again after a failed attempt (0: not backing off; the
    /// window is open meanwhile).
    #[serde(default)]
    pub backoff_s: u64,
    /// Warnings about waiting sensors, to read before typing their PIN: (serial, warning).
    #[serde(default)]
    pub warnings: Vec<(String, String)>,
}

/// The owner's update policy (5.3-6, TR 103 621 6.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Install automatically.
    Auto,
    /// Tell the owner; install only what is approved.
    NotifyOnly,
    /// Install automatically from this Unix time on.
    Postponed(u64),
    /// Never install.
    Disabled,
}

/// A verified release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Model.
    pub model: String,
    /// Version.
    pub version: u32,
    /// What it fixes (5.3-11).
    pub risks_mitigated: String,
    /// Interrupts the device's function while it installs (5.3-12): needs approval.
    pub disruptive: bool,
    /// Image size in bytes.
    pub size: u32,
}

/// One device's update state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceUpdate {
    /// Device id.
    pub id: String,
    /// Model.
    pub model: String,
    /// Installed version.
    pub installed: u32,
    /// Newest applicable release.
    pub available: Option<u32>,
    /// Why it is not being installed.
    pub waiting_for: Option<String>,
    /// (version, blocks served, blocks in the image) while delivering.
    pub delivering: Option<(u32, u32, u32)>,
}

/// The update overview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Updates {
    /// Hub-wide policy.
    pub policy: Policy,
    /// Verified releases.
    pub releases: Vec<Release>,
    /// Refused releases: (when, source, reason).
    pub refused: Vec<(u64, String, String)>,
    /// Devices with an update available or under way, or just installed.
    pub devices: Vec<DeviceUpdate>,
}

/// A security-event counter of the hub (5.10-1), the web UI's own included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// Machine name (`bad_tag`).
    pub name: String,
    /// What it counts.
    pub label: String,
    /// Value since the hub was first started.
    pub value: u64,
    /// Events within the hub's anomaly window (the last 5 minutes).
    pub recent: u64,
    /// Whether `recent` reached the counter's threshold: an anomaly.
    pub anomaly: bool,
}

/// A fact the hub states about itself for the EN 303 645 self-check (5.12-3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Provision, e.g. `5.4-1`.
    pub provision: String,
    /// What it asks for.
    pub title: String,
    /// Whether Hearth meets it right now.
    pub ok: bool,
    /// The current state that shows it.
    pub state: String,
    /// The devices it is about (for a check not met: the ones to act on), as (id, name).
    #[serde(default)]
    pub devices: Vec<(String, String)>,
    /// What the owner can do to meet it, if it is not met.
    #[serde(default)]
    pub action: Option<Action>,
}

impl Check {
    /// A check about no device in particular, with no action.
    pub fn new(provision: &str, title: &str, ok: bool, state: String) -> Self {
        Self {
            provision: provision.into(),
            title: title.into(),
            ok,
            state,
            devices: Vec::new(),
            action: None,
        }
    }
}

/// What the owner can do about a check that is not met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// In words.
    pub text: String,
    /// The page of the web UI where it is done, if it is done there.
    pub href: Option<String>,
}

/// The hub as the web UI uses it: the same command API as `hub ctl`, plus the web UI's sealed
/// vault (the owner account, EN 303 645 5.4-1) and randomness from the hub's CSPRNG.
pub trait OwnerApi: Send + Sync + 'static {
    /// Every device.
    fn devices(&self) -> ApiFuture<'_, Vec<Device>>;
    /// One device with its update history.
    fn device(&self, id: &str) -> ApiFuture<'_, (Device, Vec<HistoryLine>)>;
    /// A device's newest `limit` readings, oldest first.
    fn readings(&self, id: &str, limit: usize) -> ApiFuture<'_, Vec<Reading>>;
    /// Removes a device and erases its keys and readings.
    fn remove(&self, id: &str) -> ApiFuture<'_, ()>;
    /// Pairing status.
    fn pairing(&self) -> ApiFuture<'_, Pairing>;
    /// Opens the pairing window.
    fn pair_open(&self, seconds: u64) -> ApiFuture<'_, Pairing>;
    /// Closes it.
    fn pair_close(&self) -> ApiFuture<'_, Pairing>;
    /// Types a PIN (for the sensor with `serial` if several wait); the new device takes over
    /// the name, room and history of `replaces`, whose keys are erased. `accept_risk`: the
    /// owner read the sensor's warning and pairs it anyway. Answers the new id.
    fn pair_pin(
        &self,
        pin: String,
        serial: Option<String>,
        replaces: Option<String>,
        accept_risk: bool,
    ) -> ApiFuture<'_, String>;
    /// The hub's TLS certificate (PEM) and its SHA-256 fingerprint: what the web UI, the MQTT
    /// TLS front and its clients (Home Assistant, mosquitto) trust it by.
    fn certificate(&self) -> (String, String);
    /// Sets a device's setpoint (the same command, range and refusals as MQTT's `…/set`):
    /// queued for the device's next report.
    fn set_setpoint(&self, id: &str, value: f64) -> ApiFuture<'_, ()>;
    /// Names a device and puts it in a room (`None`: no room).
    fn label(&self, id: &str, name: String, room: Option<String>) -> ApiFuture<'_, ()>;
    /// The update overview.
    fn updates(&self) -> ApiFuture<'_, Updates>;
    /// Sets the hub-wide update policy.
    fn set_policy(&self, policy: Policy) -> ApiFuture<'_, ()>;
    /// Approves `version` for every device of `model`.
    fn approve(&self, model: String, version: u32) -> ApiFuture<'_, ()>;
    /// The hub's security-event counters, with their anomaly flags (the hub computes them
    /// continuously; the web UI shows what it says).
    fn counters(&self) -> ApiFuture<'_, Vec<Counter>>;
    /// Counts one of the web UI's security events (kept, saved and flagged by the hub with
    /// the others).
    fn count(&self, event: crate::state::WebEvent);
    /// The hub's own checks for the self-check page.
    fn checks(&self) -> ApiFuture<'_, Vec<Check>>;
    /// The sealed vault's contents, if any.
    fn load_vault(&self) -> ApiFuture<'_, Option<Vec<u8>>>;
    /// Replaces the vault (sealed under the key-encryption key before it is written).
    fn store_vault(&self, doc: Vec<u8>) -> ApiFuture<'_, ()>;
    /// The web login throttle's durable records (per-account back-offs, device cookies), if any.
    fn load_logins(&self) -> ApiFuture<'_, Option<Vec<u8>>>;
    /// Replaces them (sealed and made durable before it answers: a restart must not reset a
    /// back-off).
    fn store_logins(&self, doc: Vec<u8>) -> ApiFuture<'_, ()>;
    /// The one-time setup code was used: the sticker file goes.
    fn setup_done(&self) -> ApiFuture<'_, ()>;
    /// Factory reset: erases everything the owner set up (devices with their keys and readings,
    /// the account, MQTT logins, trust keys, releases, policy, ...) and returns to first-run
    /// setup with a new one-time code (the vault then holds only its hash, as made with
    /// [`crate::Vault::first_run`]). The hub may restart as a new hub right after answering.
    fn erase_all(&self) -> ApiFuture<'_, ()>;
    /// Fills `buf` from the hub's CSPRNG.
    fn random(&self, buf: &mut [u8]);
}
