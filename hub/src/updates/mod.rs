//! The hub's update manager (EN 303 645 5.3; TR 103 621 6.13–6.20): trust anchors per model,
//! releases that passed every check (signature, model, anti-rollback, expiry, digest) — refused
//! ones are kept with their reason and never relayed —, the owner's policy (automatic by
//! default, notify-only, postponed, disabled; disruptive updates wait for approval), bounded
//! concurrent delivery, retries with back-off, and per-device history. `types` holds what is
//! persisted and shown, `releases` the checks a release passes before it is kept.

mod releases;
#[cfg(test)]
mod tests;
mod types;

use crate::device_id::DeviceId;
use types::{DECISIONS_KEPT, Persisted, Release, push_bounded};
pub(crate) use types::{
    DeviceUpdate, HistoryEntry, HistoryEvent, Policy, Refusal, ReleaseView, UpdateStatus,
    UpdatesError, UpdatesView,
};

use std::collections::BTreeMap;
use std::sync::Arc;

use protocol::link::FirmwareOffer;
use protocol::link::fw::{Outcome, UpdateReport};
use protocol::oscore::Kid;
use protocol::time::UnixTime;
use protocol::update::{PublicKey, TrustAnchors};

/// The update manager.
pub(crate) struct Updates {
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
pub(crate) const META_KEY: &str = "updates";

fn kid_id(kid: &Kid) -> DeviceId {
    DeviceId::from(*kid)
}

impl Updates {
    /// Loads the manager from its persisted document; releases are re-verified from the files
    /// in `dir` (an expired or tampered one drops out).
    pub(crate) fn load(
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
        me.prune(now);
        me
    }

    /// The document to persist, if anything changed.
    pub(crate) fn take_dirty(&mut self) -> Option<Vec<u8>> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        serde_json::to_vec(&self.state).ok()
    }

    /// A device paired (or was loaded).
    pub(crate) fn device(&mut self, kid: &Kid, model: &str, installed: u32, updatable: bool) {
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
    pub(crate) fn forget(&mut self, kid: &Kid) {
        self.dirty |= self.state.devices.remove(&kid_id(kid)).is_some();
    }

    /// Sets the hub's policy, or one device's (`None` device).
    pub(crate) fn set_policy(
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
    pub(crate) fn approve(
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
                (kid_id(k).to_string(), d.model.clone())
            }
            (None, Some(m)) => ("*".to_string(), m.to_string()),
            (None, None) => return Err(UpdatesError::Bad("name a device or a model".into())),
        };
        push_bounded(&mut self.state.approvals, (who, model, version), DECISIONS_KEPT);
        self.state
            .cancelled
            .retain(|(d, v)| !(*v == version && device.is_none_or(|k| *d == kid_id(k))));
        self.dirty = true;
        Ok(())
    }

    /// The owner cancels the delivery to a device (until approved again).
    pub(crate) fn cancel(&mut self, device: &Kid, now: UnixTime) -> Option<u32> {
        let d = self.state.devices.get_mut(&kid_id(device))?;
        let v = d.offered.take()?;
        d.record(HistoryEntry {
            at: now.0,
            version: v,
            event: HistoryEvent::Cancelled,
            detail: String::new(),
        });
        push_bounded(&mut self.state.cancelled, (kid_id(device), v), DECISIONS_KEPT);
        self.dirty = true;
        Some(v)
    }

    fn policy_for(&self, d: &DeviceUpdate) -> Policy {
        d.policy.or(self.state.policy).unwrap_or(Policy::Auto)
    }

    /// The newest release applicable to a device, and why it is not being installed (if not).
    fn candidate(
        &self,
        id: &DeviceId,
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

    fn why_not(
        &self,
        id: &DeviceId,
        d: &DeviceUpdate,
        r: &Release,
        now: UnixTime,
    ) -> Option<String> {
        let v = r.manifest.version();
        let approved = self.state.approvals.iter().any(|(who, am, av)| {
            *av == v && *am == d.model && (who == "*" || *who == id.to_string())
        });
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
                Some(format!("postponed until {}", web_ui::time::local_time(until)))
            }
            _ if r.manifest.disruptive() && !approved => {
                Some("disruptive: waiting for the owner's approval".into())
            }
            _ if failures >= MAX_FAILURES => Some(format!("{failures} failed attempts")),
            _ if failures > 0 && now.0 < d.retry_at => {
                Some(format!("retrying at {}", web_ui::time::local_time(d.retry_at)))
            }
            _ => None,
        }
    }

    /// Decides which devices get which offer now (bounded concurrency); returns the changes.
    pub(crate) fn plan(&mut self, now: UnixTime) -> Vec<(Kid, Option<Arc<FirmwareOffer>>)> {
        self.prune(now);
        let mut changes = Vec::new();
        let mut active = self.state.devices.values().filter(|d| d.offered.is_some()).count();
        let ids: Vec<DeviceId> = self.state.devices.keys().copied().collect();
        for id in &ids {
            let Some(d) = self.state.devices.get_mut(id) else { continue };
            if let Some(v) = d.offered
                && now.0 > d.progress_at.saturating_add(OFFER_TIMEOUT_S)
            {
                d.record(HistoryEntry {
                    at: now.0,
                    version: v,
                    event: HistoryEvent::TimedOut,
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
            let kid = id.kid();
            let current = d.offered;
            match (current, want) {
                (Some(c), Some(w)) if c == w.offer().version => {}
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
                        d.offered = Some(w.offer().version);
                        d.progress = (0, w.offer().blocks());
                        d.progress_at = now.0;
                        d.blocks_served = 0;
                        d.record(HistoryEntry {
                            at: now.0,
                            version: w.offer().version,
                            event: HistoryEvent::Offered,
                            detail: String::new(),
                        });
                    }
                    changes.push((kid, Some(w)));
                    self.dirty = true;
                }
                (Some(_), Some(w)) => {
                    if let Some(d) = self.state.devices.get_mut(&id) {
                        d.offered = Some(w.offer().version);
                        d.progress = (0, w.offer().blocks());
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
    pub(crate) fn active_offers(&self) -> Vec<(Kid, Arc<FirmwareOffer>)> {
        self.state
            .devices
            .iter()
            .filter_map(|(id, d)| {
                let v = d.offered?;
                let r = self.releases.get(&(d.model.clone(), v))?;
                let kid = id.kid();
                Some((kid, r.offer.clone()))
            })
            .collect()
    }

    /// A block was served (progress, and counts re-sends).
    pub(crate) fn block_served(
        &mut self,
        kid: &Kid,
        version: u32,
        num: u32,
        total: u32,
        now: UnixTime,
    ) {
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
    pub(crate) fn report(&mut self, kid: &Kid, r: &UpdateReport, now: UnixTime) -> bool {
        let id = kid_id(kid);
        let Some(model) = self.state.devices.get(&id).map(|d| d.model.clone()) else {
            return false;
        };
        let known = self.knows(&model, r.version);
        let Some(d) = self.state.devices.get_mut(&id) else { return false };
        let event = match r.outcome {
            Outcome::Installed => HistoryEvent::Installed,
            Outcome::RolledBack => HistoryEvent::RolledBack,
            Outcome::Failed => HistoryEvent::Failed,
        };
        d.record(HistoryEntry { at: now.0, version: r.version, event, detail: r.reason.clone() });
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
    pub(crate) fn history(&self, kid: &Kid) -> Option<DeviceUpdate> {
        self.state.devices.get(&kid_id(kid)).cloned()
    }

    /// Resets the back-off of a device (the owner asks to retry now).
    pub(crate) fn retry_now(&mut self, kid: &Kid) {
        if let Some(d) = self.state.devices.get_mut(&kid_id(kid)) {
            d.retry_at = 0;
            d.failures = 0;
            self.dirty = true;
        }
    }

    /// What `hub ctl updates` shows.
    pub(crate) fn view(&self, now: UnixTime) -> UpdatesView {
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
                Some(UpdateStatus {
                    id: *id,
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
}
