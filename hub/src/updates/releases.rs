//! Releases (EN 303 645 5.3-9/5.3-10; TR 103 621 6.17/6.18): pinned manufacturer keys per
//! model, and every check a release passes — signature, model, anti-rollback, expiry, image
//! digest — before it is kept; a refusal is recorded with its reason and nothing is relayed.

use std::sync::Arc;

use protocol::link::FirmwareOffer;
use protocol::link::fw::DEFAULT_SZX;
use protocol::time::UnixTime;
use protocol::update::{PublicKey, UpdateError, verify_image, verify_manifest};

use super::types::{REFUSALS_KEPT, RELEASES_KEPT, push_bounded};
use super::{Refusal, Release, Updates, UpdatesError};
use crate::device_id::DeviceId;
use protocol::oscore::Kid;

impl Updates {
    pub(super) fn paths(
        &self,
        model: &str,
        version: u32,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let base = self.dir.join(format!("{model}-{version}"));
        (base.with_extension("cose"), base.with_extension("bin"))
    }

    /// Pins a manufacturer key for a model (the owner's or the installer's decision).
    pub(crate) fn trust(&mut self, model: &str, key_hex: &str) -> Result<String, UpdatesError> {
        let key =
            protocol::hex::decode(key_hex).and_then(|b| PublicKey::from_sec1(&b).ok()).ok_or_else(
                || UpdatesError::Bad("the key must be a hex SEC1 P-256 public key".into()),
            )?;
        Ok(self.trust_key(model, key))
    }

    /// Pins a parsed manufacturer key for `model`; returns its key id.
    pub(crate) fn trust_key(&mut self, model: &str, key: PublicKey) -> String {
        let kid = protocol::hex::encode(&key.kid().0);
        let entry = (model.to_string(), protocol::hex::encode(&key.to_sec1_compressed()));
        if !self.state.trust.contains(&entry) {
            self.state.trust.push(entry);
            self.anchors.add(model, key);
            self.dirty = true;
        }
        kid
    }

    pub(super) fn verify_and_keep(
        &mut self,
        manifest: Vec<u8>,
        image: Vec<u8>,
        now: UnixTime,
    ) -> Result<(String, u32), UpdateError> {
        let verified = verify_manifest(&manifest, &self.anchors, now)?;
        let checked = verify_image(&verified, &image)?;
        let key = (verified.model().to_string(), verified.version());
        let fw = FirmwareOffer::new(&verified, checked, DEFAULT_SZX)
            .ok_or(UpdateError::Malformed("image verified against another manifest"))?;
        let fw = Arc::new(fw);
        self.releases.insert(key.clone(), Release { manifest: verified, offer: fw });
        Ok(key)
    }

    /// Checks a release (from the feed or the owner) and keeps it, or records the refusal.
    pub(crate) fn add_release(
        &mut self,
        manifest: Vec<u8>,
        image: Vec<u8>,
        source: &str,
        now: UnixTime,
    ) -> Result<(String, u32), UpdatesError> {
        let refuse = |me: &mut Self, reason: String| {
            tracing::warn!(source, %reason, "update refused; it will not reach any sensor");
            let refusal = Refusal { at: now.0, source: source.into(), reason: reason.clone() };
            push_bounded(&mut me.state.refused, refusal, REFUSALS_KEPT);
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
        // already accepted for this model (kept in the list even once expired or unreadable).
        let newest_known = self
            .state
            .releases
            .iter()
            .filter(|(m, _)| *m == model)
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(0);
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
        let key = self
            .verify_and_keep(manifest, image, now)
            .map_err(|e| UpdatesError::Refused(e.to_string()))?;
        self.state.releases.push(key.clone());
        self.dirty = true;
        tracing::info!(model = %key.0, version = key.1, risks = %verified.risks_mitigated(), "update verified and available");
        self.prune(now);
        Ok(key)
    }

    /// Bounds the releases kept (README "Updates"): an expired one leaves memory (it can never
    /// be offered again), and beyond a model's newest [`RELEASES_KEPT`] the oldest leave the
    /// list, memory and disk — never one being delivered, and never the model's newest, which
    /// is the anti-rollback floor. Files are removed only when a release is dropped: after a new
    /// one is accepted, or once a delivery of a superseded one ends.
    pub(super) fn prune(&mut self, now: UnixTime) {
        let delivering: Vec<(&str, u32)> = (self.state.devices.values())
            .filter_map(|d| Some((d.model.as_str(), d.offered?)))
            .collect();
        let mut listed = self.state.releases.clone();
        listed.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut drop = Vec::new();
        let mut rank = 0;
        for (i, (model, version)) in listed.iter().enumerate() {
            rank = if i > 0 && listed[i - 1].0 == *model { rank + 1 } else { 0 };
            if rank >= RELEASES_KEPT && !delivering.contains(&(model.as_str(), *version)) {
                drop.push((model.clone(), *version));
            }
        }
        let expired: Vec<(String, u32)> = (self.releases.iter())
            .filter(|((m, v), r)| {
                r.manifest.expires() < now && !delivering.contains(&(m.as_str(), *v))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in &expired {
            self.releases.remove(key);
            tracing::info!(model = %key.0, version = key.1, "expired release no longer kept in memory");
        }
        for key in drop {
            self.releases.remove(&key);
            self.state.releases.retain(|k| *k != key);
            self.dirty = true;
            for p in <[_; 2]>::from(self.paths(&key.0, key.1)) {
                if let Err(e) = std::fs::remove_file(&p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %p.display(), error = %e, "superseded release file not removed");
                }
            }
            tracing::info!(model = %key.0, version = key.1, "superseded release removed");
        }
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
    pub(crate) fn knows(&self, model: &str, version: u32) -> bool {
        self.releases.contains_key(&(model.to_string(), version))
    }
}

impl Updates {
    /// The trust anchors (manufacturer keys per model), for checking advisories like manifests.
    pub(crate) fn anchors(&self) -> &protocol::update::TrustAnchors {
        &self.anchors
    }

    /// The newest known release of `model`.
    pub(crate) fn newest_release(&self, model: &str) -> Option<u32> {
        self.releases.keys().filter(|(m, _)| m == model).map(|(_, v)| *v).max()
    }

    /// A device's installed version, as the manager knows it.
    pub(crate) fn installed(&self, kid: &Kid) -> Option<u32> {
        self.state.devices.get(&DeviceId::from(*kid)).map(|d| d.installed)
    }

    /// Whether `version` is approved for the device (or its whole model).
    pub(crate) fn approved(&self, kid: &Kid, model: &str, version: u32) -> bool {
        let id = DeviceId::from(*kid).to_string();
        self.state
            .approvals
            .iter()
            .any(|(who, m, v)| *v == version && m == model && (*who == id || who == "*"))
    }
}
