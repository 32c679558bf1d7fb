//! What the update manager persists and shows: policy, history, per-device state, views.

use std::collections::BTreeMap;
use std::sync::Arc;

use protocol::link::FirmwareOffer;
use protocol::update::VerifiedManifest;
use serde::{Deserialize, Serialize};

use crate::device_id::DeviceId;

/// The owner's update policy (6.14), for the hub or one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Policy {
    /// Install automatically (the default).
    Auto,
    /// Tell the owner, install nothing.
    NotifyOnly,
    /// Install automatically from this time on (Unix seconds).
    Postponed {
        /// When.
        until: u64,
    },
    /// Never install.
    Disabled,
}

/// A release refused at the hub, with the reason (6.17 example 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// When (Unix seconds).
    pub at: u64,
    /// Where it came from ("feed", "owner").
    pub source: String,
    /// The reason.
    pub reason: String,
}

/// One line of a device's update history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When (Unix seconds).
    pub at: u64,
    /// Version concerned.
    pub version: u32,
    /// What happened.
    pub event: HistoryEvent,
    /// Details (reason).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// What happened in a device's update history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryEvent {
    /// The version was offered to the device.
    Offered,
    /// The device reports it installed and runs the version.
    Installed,
    /// The device tried the version and went back to the previous one.
    RolledBack,
    /// The device refused the version or could not install it.
    Failed,
    /// The owner cancelled the delivery.
    Cancelled,
    /// The delivery made no progress for too long.
    TimedOut,
}

/// Per-device update state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceUpdate {
    /// Model designation.
    pub model: String,
    /// Installed version.
    pub installed: u32,
    /// Whether it can be updated at all.
    pub updatable: bool,
    /// Policy override.
    #[serde(default)]
    pub policy: Option<Policy>,
    /// History, oldest first: the newest [`HISTORY_KEPT`] entries.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// The version being delivered.
    #[serde(default)]
    pub offered: Option<u32>,
    /// Blocks served for it / blocks in the image.
    #[serde(default)]
    pub progress: (u32, u32),
    /// Blocks served in total for the current version (re-sends included).
    #[serde(default)]
    pub blocks_served: u64,
    /// Failed attempts of the current version.
    #[serde(default)]
    pub failures: u32,
    /// No new attempt before this time (back-off).
    #[serde(default)]
    pub retry_at: u64,
    /// The version the failures count for (a newer release starts afresh).
    #[serde(default)]
    pub failed_version: Option<u32>,
    /// When the offer last made progress (offered, or a block served), Unix seconds.
    #[serde(default)]
    pub progress_at: u64,
}

/// A device's history entries kept (its newest).
pub(super) const HISTORY_KEPT: usize = 32;
/// Refused releases kept (the newest): a feed that keeps serving a bad release is recorded,
/// not accumulated.
pub(super) const REFUSALS_KEPT: usize = 64;
/// The owner's approvals and cancellations kept (the newest of each).
pub(super) const DECISIONS_KEPT: usize = 256;
/// Releases kept per model (the newest; one being delivered is kept beyond it until it is
/// not). An older one is a candidate only while a newer one waits for approval or needs a
/// version a device lacks, and each keeps its image (up to 16 MiB) in memory and on disk.
pub(super) const RELEASES_KEPT: usize = 4;

impl DeviceUpdate {
    /// Adds to the history, forgetting the oldest beyond [`HISTORY_KEPT`].
    pub(super) fn record(&mut self, e: HistoryEntry) {
        push_bounded(&mut self.history, e, HISTORY_KEPT);
    }
}

/// Pushes `item`, dropping the oldest entries beyond `max`.
pub(super) fn push_bounded<T>(v: &mut Vec<T>, item: T, max: usize) {
    v.push(item);
    let excess = v.len().saturating_sub(max);
    v.drain(..excess);
}

/// What the manager persists (releases are re-verified from their files at start).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct Persisted {
    pub(super) trust: Vec<(String, String)>,
    /// The releases kept, re-verified from their files at start: at most [`RELEASES_KEPT`]
    /// per model beyond those being delivered, always including the model's newest accepted
    /// (the anti-rollback floor, even once it has expired).
    pub(super) releases: Vec<(String, u32)>,
    pub(super) refused: Vec<Refusal>,
    pub(super) devices: BTreeMap<DeviceId, DeviceUpdate>,
    pub(super) policy: Option<Policy>,
    /// (device id or "*", model, version).
    pub(super) approvals: Vec<(String, String, u32)>,
    pub(super) cancelled: Vec<(DeviceId, u32)>,
}

/// A verified release.
pub(super) struct Release {
    pub(super) manifest: VerifiedManifest,
    pub(super) offer: Arc<FirmwareOffer>,
}

/// Why something could not be done.
#[derive(Debug, thiserror::Error)]
pub enum UpdatesError {
    /// Bad input from the owner.
    #[error("{0}")]
    Bad(String),
    /// The release was refused (and recorded).
    #[error("refused: {0}")]
    Refused(String),
    /// Files.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// A release as shown to the owner (6.19: what it fixes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseView {
    /// Model.
    pub model: String,
    /// Version.
    pub version: u32,
    /// Risks mitigated (5.3-11).
    pub risks_mitigated: String,
    /// Needs the owner's approval (5.3-12 / 6.20).
    pub disruptive: bool,
    /// Manifest expiry.
    pub expires: u64,
    /// Image size.
    pub size: u32,
}

/// The state shown by `hub ctl updates`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdatesView {
    /// Hub-wide policy.
    pub policy: Policy,
    /// Trusted manufacturer keys: (model, key id).
    pub trust: Vec<(String, String)>,
    /// Verified releases.
    pub releases: Vec<ReleaseView>,
    /// Refused releases with their reasons.
    pub refused: Vec<Refusal>,
    /// Devices with an update available or under way.
    pub devices: Vec<UpdateStatus>,
}

/// One device's update status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// Device id.
    pub id: DeviceId,
    /// Model.
    pub model: String,
    /// Installed version.
    pub installed: u32,
    /// Newest applicable release, if any.
    pub available: Option<u32>,
    /// Why it is not being installed, if it is not.
    pub waiting_for: Option<String>,
    /// Version being delivered, with blocks served / total.
    pub delivering: Option<(u32, u32, u32)>,
}
