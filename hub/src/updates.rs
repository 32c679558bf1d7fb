//! The hub's update manager (EN 303 645 5.3; TR 103 621 6.13–6.20): trust anchors per model,
//! releases that passed every check (signature, model, anti-rollback, expiry, digest) — refused
//! ones are kept with their reason and never relayed —, the owner's policy (automatic by
//! default, notify-only, postponed, disabled; disruptive updates wait for approval), bounded
//! concurrent delivery, retries with back-off, and per-device history.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use protocol::link::FirmwareOffer;
use protocol::link::fw::{DEFAULT_SZX, Outcome, UpdateOffer, UpdateReport};
use protocol::oscore::Kid;
use protocol::time::UnixTime;
use protocol::update::{PublicKey, TrustAnchors, VerifiedManifest, verify_image, verify_manifest};
use serde::{Deserialize, Serialize};

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
    /// What happened: offered, installed, rolled_back, failed, cancelled.
    pub event: String,
    /// Details (reason).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
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
    /// History, oldest first.
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

/// What the manager persists (releases are re-verified from their files at start).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Persisted {
    trust: Vec<(String, String)>,
    releases: Vec<(String, u32)>,
    refused: Vec<Refusal>,
    devices: BTreeMap<String, DeviceUpdate>,
    policy: Option<Policy>,
    /// (device id or "*", model, version).
    approvals: Vec<(String, String, u32)>,
    cancelled: Vec<(String, u32)>,
}

/// A verified release.
struct Release {
    manifest: VerifiedManifest,
    offer: Arc<FirmwareOffer>,
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
    pub devices: Vec<DeviceView>,
}

/// One device's update status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceView {
    /// Device id.
    pub id: String,
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

/// The update manager.
pub struct Updates {
    dir: std::path::PathBuf,
    state: Persisted,
    anchors: TrustAnchors,
    releases: BTreeMap<(String, u32), Release>,
    max_concurrent: usize,
    retry_base_s: u64,
    dirty: bool,
}

impl std::fmt::Debug for Updates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updates").field("releases", &self.releases.len()).finish_non_exhaustive()
    }
}

const MAX_FAILURES: u32 = 5;
/// An offer that made no progress for this long is withdrawn (the device is offline or stuck),
/// freeing its delivery slot; it counts as a failed attempt.
const OFFER_TIMEOUT_S: u64 = 600;
/// Key of the manager's document in the store.
pub const META_KEY: &str = "updates";

fn kid_id(kid: &Kid) -> String {
    kid.to_string()
}

impl Updates {
    /// Loads the manager from its persisted document; releases are re-verified from the files
    /// in `dir` (an expired or tampered one drops out).
    pub fn load(
        dir: &std::path::Path,
        persisted: Option<&[u8]>,
        max_concurrent: usize,
        retry_base_s: u64,
        now: UnixTime,
    ) -> Self {
        let state: Persisted = match persisted.map(serde_json::from_slice::<Persisted>) {
            None => Persisted::default(),
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                // Never fall back to automatic installs when the owner's settings are unreadable.
                tracing::error!(error = %e, "update settings unreadable; updates set to notify-only");
                Persisted { policy: Some(Policy::NotifyOnly), ..Persisted::default() }
            }
        };
        let mut me = Self {
            dir: dir.to_path_buf(),
            state,
            anchors: TrustAnchors::default(),
            releases: BTreeMap::new(),
            max_concurrent: max_concurrent.max(1),
            retry_base_s,
            dirty: false,
        };
        for (model, key) in me.state.trust.clone() {
            if let Some(k) = protocol::hex::decode(&key).and_then(|b| PublicKey::from_sec1(&b).ok())
            {
                me.anchors.add(&model, k);
            }
        }
        for (model, version) in me.state.releases.clone() {
            let (m, i) = me.paths(&model, version);
            match (std::fs::read(&m), std::fs::read(&i)) {
                (Ok(manifest), Ok(image)) => {
                    if let Err(e) = me.verify_and_keep(manifest, image, now) {
                        tracing::warn!(%model, version, reason = %e, "stored release no longer valid");
                    }
                }
                _ => tracing::warn!(%model, version, "stored release files missing"),
            }
        }
        me
    }

    fn paths(&self, model: &str, version: u32) -> (std::path::PathBuf, std::path::PathBuf) {
        let base = self.dir.join(format!("{model}-{version}"));
        (base.with_extension("cose"), base.with_extension("bin"))
    }

    /// The document to persist, if anything changed.
    pub fn take_dirty(&mut self) -> Option<Vec<u8>> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        serde_json::to_vec(&self.state).ok()
    }

    /// Pins a manufacturer key for a model (the owner's or the installer's decision).
    pub fn trust(&mut self, model: &str, key_hex: &str) -> Result<String, UpdatesError> {
        let key =
            protocol::hex::decode(key_hex).and_then(|b| PublicKey::from_sec1(&b).ok()).ok_or_else(
                || UpdatesError::Bad("the key must be a hex SEC1 P-256 public key".into()),
            )?;
        let kid = protocol::hex::encode(&key.kid().0);
        let entry = (model.to_string(), protocol::hex::encode(&key.to_sec1_compressed()));
        if !self.state.trust.contains(&entry) {
            self.state.trust.push(entry);
            self.anchors.add(model, key);
            self.dirty = true;
        }
        Ok(kid)
    }

    fn verify_and_keep(
        &mut self,
        manifest: Vec<u8>,
        image: Vec<u8>,
        now: UnixTime,
    ) -> Result<(String, u32), String> {
        let verified = verify_manifest(&manifest, &self.anchors, now).map_err(|e| e.to_string())?;
        let checked = verify_image(&verified, &image).map_err(|e| e.to_string())?;
        let offer = UpdateOffer {
            version: verified.version(),
            size: verified.image_size(),
            sha256: *checked.sha256(),
            szx: DEFAULT_SZX,
        };
        let key = (verified.model().to_string(), verified.version());
        let fw = Arc::new(FirmwareOffer { offer, manifest, image: checked.into_bytes() });
        self.releases.insert(key.clone(), Release { manifest: verified, offer: fw });
        Ok(key)
    }

    /// Checks a release (from the feed or the owner) and keeps it, or records the refusal.
    pub fn add_release(
        &mut self,
        manifest: Vec<u8>,
        image: Vec<u8>,
        source: &str,
        now: UnixTime,
    ) -> Result<(String, u32), UpdatesError> {
        let refuse = |me: &mut Self, reason: String| {
            tracing::warn!(source, %reason, "update refused; it will not reach any sensor");
            me.state.refused.push(Refusal {
                at: now.0,
                source: source.into(),
                reason: reason.clone(),
            });
            me.dirty = true;
            UpdatesError::Refused(reason)
        };
        let verified = match verify_manifest(&manifest, &self.anchors, now) {
            Ok(v) => v,
            Err(protocol::update::UpdateError::UnknownKey)
                if self.key_of_another_model(&manifest) =>
            {
                return Err(refuse(
                    self,
                    "manifest: wrong model (signed with the key of another model)".into(),
                ));
            }
            Err(e) => return Err(refuse(self, format!("manifest: {e}"))),
        };
        let (model, version) = (verified.model().to_string(), verified.version());
        if self.releases.contains_key(&(model.clone(), version)) {
            return Ok((model, version));
        }
        // Anti-rollback (6.17 ex. 3): never accept a release not newer than what runs or was
        // already accepted for this model.
        let newest_known =
            self.releases.keys().filter(|(m, _)| *m == model).map(|(_, v)| *v).max().unwrap_or(0);
        let newest_installed = self
            .state
            .devices
            .values()
            .filter(|d| d.model == model)
            .map(|d| d.installed)
            .max()
            .unwrap_or(0);
        let floor = newest_known.max(newest_installed);
        if version <= floor {
            return Err(refuse(
                self,
                format!("{model} v{version}: not newer than v{floor} (anti-rollback)"),
            ));
        }
        if let Err(e) = verify_image(&verified, &image) {
            return Err(refuse(self, format!("{model} v{version}: image: {e}")));
        }
        let (m, i) = self.paths(&model, version);
        let write = |p: &std::path::Path, b: &[u8]| -> Result<(), UpdatesError> {
            crate::private_fs::write(p, b).map_err(|e| UpdatesError::Io(p.display().to_string(), e))
        };
        crate::private_fs::create_dir(&self.dir)
            .map_err(|e| UpdatesError::Io(self.dir.display().to_string(), e))?;
        write(&m, &manifest)?;
        write(&i, &image)?;
        let key = self.verify_and_keep(manifest, image, now).map_err(UpdatesError::Refused)?;
        self.state.releases.push(key.clone());
        self.dirty = true;
        tracing::info!(model = %key.0, version = key.1, risks = %verified.risks_mitigated(), "update verified and available");
        Ok(key)
    }

    /// Whether the manifest names a signing key that is pinned — for another model.
    fn key_of_another_model(&self, manifest: &[u8]) -> bool {
        let Ok(kid) = protocol::update::signer_kid(manifest) else { return false };
        self.state.trust.iter().any(|(_, key)| {
            protocol::hex::decode(key)
                .and_then(|b| PublicKey::from_sec1(&b).ok())
                .is_some_and(|k| k.kid() == kid)
        })
    }

    /// Whether a release for (model, version) is known.
    pub fn knows(&self, model: &str, version: u32) -> bool {
        self.releases.contains_key(&(model.to_string(), version))
    }

    /// A device paired (or was loaded).
    pub fn device(&mut self, kid: &Kid, model: &str, installed: u32, updatable: bool) {
        let d = self.state.devices.entry(kid_id(kid)).or_default();
        if d.model.is_empty() {
            *d = DeviceUpdate {
                model: model.into(),
                installed,
                updatable,
                ..DeviceUpdate::default()
            };
            self.dirty = true;
        }
    }

    /// A device was removed.
    pub fn forget(&mut self, kid: &Kid) {
        self.dirty |= self.state.devices.remove(&kid_id(kid)).is_some();
    }

    /// Sets the hub's policy, or one device's (`None` device).
    pub fn set_policy(
        &mut self,
        device: Option<&Kid>,
        policy: Option<Policy>,
    ) -> Result<(), UpdatesError> {
        match device {
            None => self.state.policy = policy,
            Some(k) => {
                let d = self
                    .state
                    .devices
                    .get_mut(&kid_id(k))
                    .ok_or_else(|| UpdatesError::Bad("no such device".into()))?;
                d.policy = policy;
            }
        }
        self.dirty = true;
        Ok(())
    }

    /// The owner approves a model's (disruptive or notify-only) version for one device, or for
    /// every device of `model`.
    pub fn approve(
        &mut self,
        device: Option<&Kid>,
        model: Option<&str>,
        version: u32,
    ) -> Result<(), UpdatesError> {
        let (who, model) = match (device, model) {
            (Some(k), _) => {
                let d = self
                    .state
                    .devices
                    .get(&kid_id(k))
                    .ok_or_else(|| UpdatesError::Bad("no such device".into()))?;
                (kid_id(k), d.model.clone())
            }
            (None, Some(m)) => ("*".to_string(), m.to_string()),
            (None, None) => return Err(UpdatesError::Bad("name a device or a model".into())),
        };
        self.state.approvals.push((who, model, version));
        self.state
            .cancelled
            .retain(|(d, v)| !(*v == version && device.is_none_or(|k| *d == kid_id(k))));
        self.dirty = true;
        Ok(())
    }

    /// The owner cancels the delivery to a device (until approved again).
    pub fn cancel(&mut self, device: &Kid, now: UnixTime) -> Option<u32> {
        let d = self.state.devices.get_mut(&kid_id(device))?;
        let v = d.offered.take()?;
        d.history.push(HistoryEntry {
            at: now.0,
            version: v,
            event: "cancelled".into(),
            detail: String::new(),
        });
        self.state.cancelled.push((kid_id(device), v));
        self.dirty = true;
        Some(v)
    }

    fn policy_for(&self, d: &DeviceUpdate) -> Policy {
        d.policy.or(self.state.policy).unwrap_or(Policy::Auto)
    }

    /// The newest release applicable to a device, and why it is not being installed (if not).
    fn candidate(
        &self,
        id: &str,
        d: &DeviceUpdate,
        now: UnixTime,
    ) -> Option<(&Release, Option<String>)> {
        let applicable: Vec<&Release> = self
            .releases
            .iter()
            .filter(|((m, v), r)| {
                *m == d.model
                    && *v > d.installed
                    && r.manifest.min_version() <= d.installed
                    && r.manifest.expires() >= now
            })
            .map(|(_, r)| r)
            .collect();
        // The newest release that may go now; else the newest, with the reason it waits (a
        // disruptive release awaiting approval must not hide a newer-than-installed safe one).
        let judged: Vec<(&Release, Option<String>)> =
            applicable.iter().rev().map(|r| (*r, self.why_not(id, d, r, now))).collect();
        judged.iter().find(|(_, why)| why.is_none()).cloned().or_else(|| judged.first().cloned())
    }

    fn why_not(&self, id: &str, d: &DeviceUpdate, r: &Release, now: UnixTime) -> Option<String> {
        let v = r.manifest.version();
        let approved = self
            .state
            .approvals
            .iter()
            .any(|(who, am, av)| *av == v && *am == d.model && (who == "*" || who == id));
        let cancelled = self.state.cancelled.iter().any(|(who, cv)| *cv == v && who == id);
        let failures = if d.failed_version == Some(v) { d.failures } else { 0 };
        if !d.updatable {
            return Some("the device cannot be updated".into());
        }
        if cancelled {
            return Some("cancelled by the owner".into());
        }
        match self.policy_for(d) {
            Policy::Disabled => Some("updates are disabled".into()),
            Policy::NotifyOnly if !approved => Some("notify-only: approve to install".into()),
            Policy::Postponed { until } if now.0 < until && !approved => {
                Some(format!("postponed until {until}"))
            }
            _ if r.manifest.disruptive() && !approved => {
                Some("disruptive: waiting for the owner's approval".into())
            }
            _ if failures >= MAX_FAILURES => Some(format!("{failures} failed attempts")),
            _ if failures > 0 && now.0 < d.retry_at => Some(format!("retrying at {}", d.retry_at)),
            _ => None,
        }
    }

    /// Decides which devices get which offer now (bounded concurrency); returns the changes.
    pub fn plan(&mut self, now: UnixTime) -> Vec<(Kid, Option<Arc<FirmwareOffer>>)> {
        let mut changes = Vec::new();
        let mut active = self.state.devices.values().filter(|d| d.offered.is_some()).count();
        let ids: Vec<String> = self.state.devices.keys().cloned().collect();
        for id in &ids {
            let Some(d) = self.state.devices.get_mut(id) else { continue };
            if let Some(v) = d.offered
                && now.0 > d.progress_at.saturating_add(OFFER_TIMEOUT_S)
            {
                d.history.push(HistoryEntry {
                    at: now.0,
                    version: v,
                    event: "timed_out".into(),
                    detail: "no progress".into(),
                });
                Self::count_failure(d, v, now, self.retry_base_s);
                // Left offered; the comparison below withdraws it (the back-off forbids it).
            }
        }
        for id in ids {
            let Some(d) = self.state.devices.get(&id) else { continue };
            let want = self
                .candidate(&id, d, now)
                .and_then(|(r, why)| why.is_none().then(|| r.offer.clone()));
            let Some(kid) = protocol::hex::decode(&id).and_then(|b| Kid::new(&b).ok()) else {
                continue;
            };
            let current = d.offered;
            match (current, want) {
                (Some(c), Some(w)) if c == w.offer.version => {}
                (Some(_), None) => {
                    if let Some(d) = self.state.devices.get_mut(&id) {
                        d.offered = None;
                    }
                    active -= 1;
                    changes.push((kid, None));
                    self.dirty = true;
                }
                (None, Some(w)) if active < self.max_concurrent => {
                    active += 1;
                    if let Some(d) = self.state.devices.get_mut(&id) {
                        d.offered = Some(w.offer.version);
                        d.progress = (0, w.offer.blocks());
                        d.progress_at = now.0;
                        d.blocks_served = 0;
                        d.history.push(HistoryEntry {
                            at: now.0,
                            version: w.offer.version,
                            event: "offered".into(),
                            detail: String::new(),
                        });
                    }
                    changes.push((kid, Some(w)));
                    self.dirty = true;
                }
                (Some(_), Some(w)) => {
                    if let Some(d) = self.state.devices.get_mut(&id) {
                        d.offered = Some(w.offer.version);
                        d.progress = (0, w.offer.blocks());
                    }
                    changes.push((kid, Some(w)));
                    self.dirty = true;
                }
                _ => {}
            }
        }
        changes
    }

    /// The offers to restore into the link after a restart.
    pub fn active_offers(&self) -> Vec<(Kid, Arc<FirmwareOffer>)> {
        self.state
            .devices
            .iter()
            .filter_map(|(id, d)| {
                let v = d.offered?;
                let r = self.releases.get(&(d.model.clone(), v))?;
                let kid = protocol::hex::decode(id).and_then(|b| Kid::new(&b).ok())?;
                Some((kid, r.offer.clone()))
            })
            .collect()
    }

    /// A block was served (progress, and counts re-sends).
    pub fn block_served(&mut self, kid: &Kid, version: u32, num: u32, total: u32, now: UnixTime) {
        if let Some(d) = self.state.devices.get_mut(&kid_id(kid))
            && d.offered == Some(version)
        {
            d.blocks_served += 1;
            d.progress = (d.progress.0.max(num.saturating_add(1)), total);
            d.progress_at = now.0;
        }
    }

    fn count_failure(d: &mut DeviceUpdate, version: u32, now: UnixTime, base: u64) {
        if d.failed_version != Some(version) {
            d.failed_version = Some(version);
            d.failures = 0;
        }
        d.failures += 1;
        let wait = base.saturating_mul(1u64 << (d.failures - 1).min(20));
        d.retry_at = now.0.saturating_add(wait);
    }

    /// A sensor reported an outcome. Returns whether its offer ended with it: the caller must
    /// then withdraw the offer from the link too, or it would ride on every acknowledgement
    /// (a refused update would be retried at once, ignoring the back-off).
    pub fn report(&mut self, kid: &Kid, r: &UpdateReport, now: UnixTime) -> bool {
        let id = kid_id(kid);
        let Some(model) = self.state.devices.get(&id).map(|d| d.model.clone()) else {
            return false;
        };
        let known = self.knows(&model, r.version);
        let Some(d) = self.state.devices.get_mut(&id) else { return false };
        let event = match r.outcome {
            Outcome::Installed => "installed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Failed => "failed",
        };
        d.history.push(HistoryEntry {
            at: now.0,
            version: r.version,
            event: event.into(),
            detail: r.reason.clone(),
        });
        // Only versions the hub knows it could be running are believed (a buggy or hostile
        // sensor must not raise the anti-rollback floor of its whole model).
        if r.running == d.installed
            || Some(r.running) == d.offered
            || (r.running == r.version && known)
        {
            d.installed = r.running;
        }
        if r.outcome == Outcome::Installed {
            d.failures = 0;
            d.failed_version = None;
            d.retry_at = 0;
        } else {
            Self::count_failure(d, r.version, now, self.retry_base_s);
        }
        let ended = d.offered == Some(r.version);
        if ended {
            d.offered = None;
        }
        self.dirty = true;
        ended
    }

    /// Per-device history.
    pub fn history(&self, kid: &Kid) -> Option<DeviceUpdate> {
        self.state.devices.get(&kid_id(kid)).cloned()
    }

    /// Resets the back-off of a device (the owner asks to retry now).
    pub fn retry_now(&mut self, kid: &Kid) {
        if let Some(d) = self.state.devices.get_mut(&kid_id(kid)) {
            d.retry_at = 0;
            d.failures = 0;
            self.dirty = true;
        }
    }

    /// What `hub ctl updates` shows.
    pub fn view(&self, now: UnixTime) -> UpdatesView {
        let releases = self
            .releases
            .values()
            .map(|r| ReleaseView {
                model: r.manifest.model().into(),
                version: r.manifest.version(),
                risks_mitigated: r.manifest.risks_mitigated().into(),
                disruptive: r.manifest.disruptive(),
                expires: r.manifest.expires().0,
                size: r.manifest.image_size(),
            })
            .collect();
        let devices = self
            .state
            .devices
            .iter()
            .filter_map(|(id, d)| {
                let cand = self.candidate(id, d, now);
                if cand.is_none() && d.offered.is_none() {
                    return None;
                }
                Some(DeviceView {
                    id: id.clone(),
                    model: d.model.clone(),
                    installed: d.installed,
                    available: cand.as_ref().map(|(r, _)| r.manifest.version()),
                    waiting_for: cand.and_then(|(_, why)| why),
                    delivering: d.offered.map(|v| (v, d.progress.0, d.progress.1)),
                })
            })
            .collect();
        let trust = self.state.trust.iter().map(|(m, k)| {
            let kid = protocol::hex::decode(k)
                .and_then(|b| PublicKey::from_sec1(&b).ok())
                .map(|p| protocol::hex::encode(&p.kid().0))
                .unwrap_or_default();
            (m.clone(), kid)
        });
        UpdatesView {
            policy: self.state.policy.unwrap_or(Policy::Auto),
            trust: trust.collect(),
            releases,
            refused: self.state.refused.clone(),
            devices,
        }
    }

    /// Known (model, version) pairs, to skip feed entries already handled.
    pub fn seen(&self) -> HashSet<(String, u32)> {
        self.releases.keys().cloned().collect()
    }

    /// Devices' installed versions by id (for the device view).
    pub fn installed(&self) -> HashMap<String, u32> {
        self.state.devices.iter().map(|(k, d)| (k.clone(), d.installed)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::update::{Manifest, SigningKeyPair};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const MODEL: &str = "hearth-climate-1";
    const T0: UnixTime = UnixTime(1_800_000_000);

    struct Fixture {
        _dir: tempfile::TempDir,
        updates: Updates,
        key: SigningKeyPair,
        kids: Vec<Kid>,
    }

    fn fixture(devices: u8, max_concurrent: usize) -> Fixture {
        let dir = tempfile::tempdir().expect("tmp");
        let mut updates = Updates::load(dir.path(), None, max_concurrent, 10, T0);
        let key = SigningKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(7));
        updates
            .trust(MODEL, &protocol::hex::encode(&key.public().to_sec1_compressed()))
            .expect("trust");
        let kids: Vec<Kid> = (1..=devices).map(|i| Kid::new(&[i, 0, 0, 1]).expect("kid")).collect();
        for k in &kids {
            updates.device(k, MODEL, 1, true);
        }
        Fixture { _dir: dir, updates, key, kids }
    }

    fn release(f: &mut Fixture, version: u32, disruptive: bool) {
        let image = vec![version as u8; 3000];
        let sha256 = {
            use sha2::Digest;
            sha2::Sha256::digest(&image).into()
        };
        let manifest = Manifest {
            model: MODEL.into(),
            version,
            min_version: 1,
            image_size: image.len() as u32,
            image_sha256: sha256,
            expires: UnixTime(T0.0 + 86_400 * 365),
            disruptive,
            risks_mitigated: "test".into(),
            released: T0,
        }
        .sign(&f.key);
        f.updates.add_release(manifest, image, "owner", T0).expect("accepted");
    }

    fn offered(changes: &[(Kid, Option<Arc<FirmwareOffer>>)]) -> usize {
        changes.iter().filter(|(_, o)| o.is_some()).count()
    }

    #[test]
    fn automatic_by_default_and_disabled_when_the_owner_says_so() {
        let mut f = fixture(1, 10);
        f.updates.set_policy(None, Some(Policy::Disabled)).expect("policy");
        release(&mut f, 2, false);
        assert_eq!(offered(&f.updates.plan(T0)), 0, "disabled: nothing offered");
        let view = f.updates.view(T0);
        assert_eq!(view.devices[0].waiting_for.as_deref(), Some("updates are disabled"));
        f.updates.set_policy(None, Some(Policy::Auto)).expect("policy");
        assert_eq!(offered(&f.updates.plan(T0)), 1, "auto: offered");
        // A per-device override wins over the hub's policy; turning auto off withdraws the offer.
        f.updates.set_policy(Some(&f.kids[0]), Some(Policy::Disabled)).expect("policy");
        let changes = f.updates.plan(T0);
        assert_eq!(changes.len(), 1);
        assert!(changes[0].1.is_none(), "offer withdrawn");
    }

    #[test]
    fn postponed_until_a_time_by_a_controllable_clock() {
        let mut f = fixture(1, 10);
        let until = T0.0 + 3600;
        f.updates.set_policy(None, Some(Policy::Postponed { until })).expect("policy");
        release(&mut f, 2, false);
        assert_eq!(offered(&f.updates.plan(UnixTime(until - 1))), 0);
        assert_eq!(offered(&f.updates.plan(UnixTime(until))), 1);
    }

    #[test]
    fn disruptive_and_notify_only_updates_wait_for_the_owners_approval() {
        let mut f = fixture(2, 10);
        release(&mut f, 2, true);
        assert_eq!(offered(&f.updates.plan(T0)), 0);
        assert_eq!(
            f.updates.view(T0).devices[0].waiting_for.as_deref(),
            Some("disruptive: waiting for the owner's approval")
        );
        f.updates.approve(Some(&f.kids[0]), None, 2).expect("approve");
        let changes = f.updates.plan(T0);
        assert_eq!(offered(&changes), 1);
        assert_eq!(changes[0].0, f.kids[0], "only the approved device");
        f.updates.set_policy(None, Some(Policy::NotifyOnly)).expect("policy");
        release(&mut f, 3, false);
        let changes = f.updates.plan(T0);
        assert!(
            changes.iter().all(|(_, o)| o.is_none()),
            "notify-only offers nothing: {}",
            changes.len()
        );
        assert!(f.updates.approve(None, None, 3).is_err(), "all devices of which model?");
        f.updates.approve(None, Some("hearth-thermo-1"), 3).expect("approve");
        assert_eq!(offered(&f.updates.plan(T0)), 0, "another model's v3 approves nothing here");
        f.updates.approve(None, Some(MODEL), 3).expect("approve");
        assert_eq!(offered(&f.updates.plan(T0)), 2, "approved for all");
    }

    #[test]
    fn delivery_is_bounded_and_failures_back_off_then_give_up() {
        let mut f = fixture(5, 2);
        release(&mut f, 2, false);
        assert_eq!(offered(&f.updates.plan(T0)), 2, "at most two at once");
        let first = f
            .kids
            .iter()
            .find(|k| f.updates.history(k).is_some_and(|d| d.offered.is_some()))
            .copied()
            .expect("one");
        let ok = UpdateReport {
            version: 2,
            running: 2,
            outcome: Outcome::Installed,
            reason: String::new(),
        };
        f.updates.report(&first, &ok, T0);
        assert_eq!(offered(&f.updates.plan(T0)), 1, "a slot freed");
        // Failures back off (doubling) and stop after the limit.
        let mut f = fixture(1, 2);
        release(&mut f, 2, false);
        let second = f.kids[0];
        assert_eq!(offered(&f.updates.plan(T0)), 1);
        let failed = UpdateReport {
            version: 2,
            running: 1,
            outcome: Outcome::RolledBack,
            reason: "health".into(),
        };
        let mut now = T0;
        let mut last_wait = 0;
        for attempt in 1..=MAX_FAILURES {
            f.updates.report(&second, &failed, now);
            let retry_at = f.updates.history(&second).expect("device").retry_at;
            assert!(retry_at - now.0 > last_wait, "attempt {attempt}: the back-off grows");
            last_wait = retry_at - now.0;
            assert!(
                !f.updates
                    .plan(UnixTime(retry_at - 1))
                    .iter()
                    .any(|(k, o)| *k == second && o.is_some())
            );
            now = UnixTime(retry_at);
            let again = f.updates.plan(now).iter().any(|(k, o)| *k == second && o.is_some());
            assert_eq!(again, attempt < MAX_FAILURES, "attempt {attempt}");
        }
        let history = f.updates.history(&second).expect("device").history;
        assert_eq!(
            history.iter().filter(|h| h.event == "rolled_back").count(),
            MAX_FAILURES as usize
        );
    }

    #[test]
    fn a_waiting_disruptive_release_does_not_hide_an_allowed_one() {
        let mut f = fixture(1, 10);
        release(&mut f, 2, false);
        release(&mut f, 3, true);
        let changes = f.updates.plan(T0);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            changes[0].1.as_ref().map(|o| o.offer.version),
            Some(2),
            "v2 goes while v3 waits"
        );
    }

    #[test]
    fn failures_count_per_version_and_stale_offers_free_their_slot() {
        let mut f = fixture(2, 1);
        release(&mut f, 2, false);
        assert_eq!(offered(&f.updates.plan(T0)), 1);
        let stuck = f
            .kids
            .iter()
            .find(|k| f.updates.history(k).is_some_and(|d| d.offered.is_some()))
            .copied()
            .expect("one");
        // No progress for longer than the timeout: withdrawn, and the other device gets the slot.
        let later = UnixTime(T0.0 + OFFER_TIMEOUT_S + 1);
        let changes = f.updates.plan(later);
        assert!(changes.iter().any(|(k, o)| *k == stuck && o.is_none()), "stale offer withdrawn");
        assert!(changes.iter().any(|(k, o)| *k != stuck && o.is_some()), "slot reused");
        // Failures of v2 do not hold back v3.
        let failed =
            UpdateReport { version: 2, running: 1, outcome: Outcome::Failed, reason: "x".into() };
        for _ in 0..MAX_FAILURES {
            f.updates.report(&stuck, &failed, later);
        }
        release(&mut f, 3, false);
        let d = f.updates.history(&stuck).expect("device");
        assert!(
            f.updates
                .why_not(
                    &protocol::hex::encode(stuck.as_bytes()),
                    &d,
                    f.updates.releases.values().last().expect("v3"),
                    later
                )
                .is_none()
        );
    }

    #[test]
    fn a_sensor_cannot_claim_a_version_the_hub_never_offered() {
        let mut f = fixture(1, 10);
        release(&mut f, 2, false);
        let lie = UpdateReport {
            version: 9,
            running: u32::MAX,
            outcome: Outcome::Installed,
            reason: String::new(),
        };
        f.updates.report(&f.kids[0], &lie, T0);
        assert_eq!(f.updates.history(&f.kids[0]).map(|d| d.installed), Some(1));
        release(&mut f, 3, false); // still accepted: the floor did not move
    }
}
