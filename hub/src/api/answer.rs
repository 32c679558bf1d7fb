//! The owner commands' typed answers: what the control socket sends (as JSON), what `hub ctl`
//! reads back and renders, and what the web UI is given.

use serde::{Deserialize, Serialize};

use crate::device_id::DeviceId;

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
    /// The web UI's events (failed logins, CSRF, malformed requests, ...).
    #[serde(flatten)]
    pub web: crate::security::WebCounters,
    /// Total of the security-relevant counters (retransmissions and Echo rate limiting are
    /// not security events).
    pub total: u64,
    /// Events of each security-event counter within the anomaly window (the last 5 minutes).
    #[serde(default)]
    pub recent: std::collections::BTreeMap<String, u64>,
    /// The counters whose recent events reached their threshold (catalogue order): anomalies.
    #[serde(default)]
    pub anomalies: Vec<String>,
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

/// A PIN's attempt succeeded: the new device, and the device it replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paired {
    /// The new device's id.
    pub pairing: String,
    /// The device it took the place of.
    pub replaces: Option<DeviceId>,
}

/// The factory reset has started (the hub stops, erases its data and starts anew).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactoryResetStarted {
    /// Always true.
    pub factory_reset: bool,
}

/// Something was removed (a device by id, an MQTT user by name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed<T> {
    /// What.
    pub removed: T,
}

/// A device was named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renamed {
    /// The device.
    pub renamed: DeviceId,
}

/// A device was put in a room (or taken out of any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSet {
    /// The room now.
    pub room: Option<String>,
}

/// An isolation was overridden.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unisolated {
    /// The device.
    pub unisolated: DeviceId,
}

/// The update overview, with the feed checker's last and next check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdatesAnswer {
    /// Policy, trust, releases, refusals, devices.
    #[serde(flatten)]
    pub view: crate::updates::UpdatesView,
    /// The feed checker (none: no feed configured).
    pub feed: Option<crate::feed::FeedStatus>,
}

/// A release was verified and added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseAdded {
    /// Its model.
    pub model: String,
    /// Its version.
    pub version: u32,
}

/// A manufacturer key was pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trusted {
    /// Its key id.
    pub trusted: String,
}

/// Done, nothing more to say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Always true.
    pub ok: bool,
}

/// A version was approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approved {
    /// The version.
    pub approved: u32,
}

/// A delivery was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    /// The version whose delivery was cancelled (none: nothing was under way).
    pub cancelled: Option<u32>,
}

/// The upstream bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamAnswer {
    /// Whether one is configured (otherwise the hub is local only).
    pub configured: bool,
    /// Its status, when configured.
    #[serde(flatten)]
    pub status: Option<crate::upstream::UpstreamStatus>,
}

/// An MQTT user was added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAdded {
    /// The user.
    pub added: String,
    /// The generated password, shown this once (none: the owner gave one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// The hub's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusAnswer {
    /// Whether the store can write (a full or failing disk), free space and its floor.
    pub storage: crate::store::StorageStatus,
    /// The process's memory as its allocator counts it.
    #[serde(default)]
    pub memory: Option<crate::memory::MemoryStatus>,
}
