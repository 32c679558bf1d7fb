//! Isolating vulnerable sensors (EN 303 645 5.3-13/5.3-14; TR 103 621 6.22, 6.23): the
//! manufacturer's signed advisories, checked like manifests; for each affected device the
//! decision — schedule the fix (updatable and in support) or isolate it (not updatable, or past
//! its support period) — applied by [`apply`] (the link driver carries out what it returns);
//! and the warning the owner sees before pairing such a sensor. Enforcement lives where data
//! leaves: `devices::Directory`.

use std::collections::BTreeMap;

use protocol::update::{Severity, VerifiedAdvisory};
use serde::{Deserialize, Serialize};

use crate::device_id::DeviceId;

/// Key of the advisories document in the store's meta table.
pub(crate) const META_KEY: &str = "advisories";
/// Advisories kept (the oldest are forgotten beyond this; their isolations stay).
const MAX_ADVISORIES: usize = 256;

/// A verified advisory and what the hub did about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvisoryRecord {
    /// Short id: the first 8 bytes of SHA-256 of the signed envelope, hex.
    pub id: String,
    /// Affected model.
    pub model: String,
    /// Lowest affected version.
    pub affected_low: u32,
    /// Highest affected version.
    pub affected_high: u32,
    /// `low`, `medium`, `high` or `critical`.
    pub severity: String,
    /// The version that fixes it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_in: Option<u32>,
    /// The manufacturer's text.
    pub text: String,
    /// Issued, Unix seconds.
    pub issued: u64,
    /// Received, Unix seconds.
    pub received: u64,
    /// `feed` or `owner`.
    pub source: String,
    /// Per affected device.
    #[serde(default)]
    pub actions: BTreeMap<DeviceId, Action>,
}

impl AdvisoryRecord {
    fn new(a: &VerifiedAdvisory, source: &str, now: u64) -> Self {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(a.signed_bytes());
        let range = a.affected();
        Self {
            id: protocol::hex::encode(&digest[..8]),
            model: a.model().to_owned(),
            affected_low: *range.start(),
            affected_high: *range.end(),
            severity: severity(a.severity()).into(),
            fixed_in: a.fixed_in(),
            text: a.text().to_owned(),
            issued: a.issued().0,
            received: now,
            source: source.to_owned(),
            actions: BTreeMap::new(),
        }
    }

    /// One line for people: `hearth-button-1 v1–3 (critical): text`.
    pub fn summary(&self) -> String {
        format!(
            "{} v{}–{} ({}): {}",
            self.model, self.affected_low, self.affected_high, self.severity, self.text
        )
    }
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

/// What the hub did for one affected device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// Cut off from everything beyond the hub.
    Isolated {
        /// Why.
        reason: String,
    },
    /// The fix is approved for it (`version`), or awaited from the manufacturer (`None`).
    FixScheduled {
        /// The release approved.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u32>,
    },
}

/// What a device is, for the decision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subject<'a> {
    /// Model designation.
    pub model: &'a str,
    /// Installed firmware.
    pub installed: u32,
    /// Whether it can be updated at all.
    pub updatable: bool,
    /// End of its support period, Unix seconds.
    pub support_end: u64,
}

/// The decision for one device and one advisory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Not affected (other model, or a version outside the range).
    Unaffected,
    /// Updatable and in support: install the fix.
    ScheduleFix,
    /// Isolate it, for this reason.
    Isolate(String),
}

/// Decides for one device (TR 103 621 6.23): affected and updatable within its support period
/// → the fix; affected and not updatable, or past support, or with no fix announced → isolate.
pub(crate) fn decide(device: Subject<'_>, a: &AdvisoryRecord, now: u64) -> Decision {
    if device.model != a.model || !(a.affected_low..=a.affected_high).contains(&device.installed) {
        return Decision::Unaffected;
    }
    let what =
        format!("firmware {} is affected by a {} vulnerability", device.installed, a.severity);
    if !device.updatable {
        return Decision::Isolate(format!("{what} and this model cannot be updated"));
    }
    if device.support_end <= now {
        return Decision::Isolate(format!(
            "{what} and its security-update support period has ended"
        ));
    }
    if a.fixed_in.is_none() {
        return Decision::Isolate(format!("{what} and the manufacturer announced no fix"));
    }
    Decision::ScheduleFix
}

/// What the owner can do with an isolated device (EN 303 645 5.3-14).
pub(crate) fn replacement_path(id: &DeviceId) -> String {
    format!(
        "Replace it: open pairing and type the new sensor's PIN with `hub ctl pair pin <PIN> \
         --replaces {id}`; the new sensor takes over its name, room and history and this \
         sensor's keys are erased. Or remove it with `hub ctl remove {id}`."
    )
}

/// Why an advisory was not taken.
#[derive(Debug, thiserror::Error)]
pub enum AdvisoryError {
    /// Not hex, not a valid envelope, not signed by a key trusted for its model, or issued in
    /// the future.
    #[error("advisory refused: {0}")]
    Refused(#[from] protocol::update::UpdateError),
    /// Already known.
    #[error("advisory {0} is already known")]
    Known(String),
}

/// The advisories the hub holds.
#[derive(Debug, Default)]
pub(crate) struct Advisories {
    records: Vec<AdvisoryRecord>,
    dirty: bool,
}

impl Advisories {
    /// From the persisted document (an unreadable one starts empty; isolations themselves are
    /// in the device profiles and stay).
    pub(crate) fn load(doc: Option<&[u8]>) -> Self {
        let records = doc.and_then(|d| serde_json::from_slice(d).ok()).unwrap_or_default();
        Self { records, dirty: false }
    }

    /// Adds a verified advisory; returns its index.
    pub(crate) fn add(
        &mut self,
        a: &VerifiedAdvisory,
        source: &str,
        now: u64,
    ) -> Result<usize, AdvisoryError> {
        let record = AdvisoryRecord::new(a, source, now);
        if self.records.iter().any(|r| r.id == record.id) {
            return Err(AdvisoryError::Known(record.id));
        }
        if self.records.len() == MAX_ADVISORIES {
            self.records.remove(0);
        }
        self.records.push(record);
        self.dirty = true;
        Ok(self.records.len() - 1)
    }

    /// All, oldest first.
    pub(crate) fn records(&self) -> &[AdvisoryRecord] {
        &self.records
    }

    /// Records `action` for `device` under advisory `index`.
    pub(crate) fn act(&mut self, index: usize, device: DeviceId, action: Action) {
        if let Some(r) = self.records.get_mut(index)
            && r.actions.get(&device) != Some(&action)
        {
            r.actions.insert(device, action);
            self.dirty = true;
        }
    }

    /// The document, if anything changed.
    pub(crate) fn take_dirty(&mut self) -> Option<Vec<u8>> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        serde_json::to_vec(&self.records).ok()
    }
}

/// What the owner should know before pairing a sensor with this descriptor (TR 103 621
/// 6.22/6.23, EN 303 645 5.3-13/14): under a known advisory (it will be isolated, or its fix
/// installed), or past its support period.
pub(crate) fn pairing_warning(
    advisories: &Advisories,
    d: &protocol::pairing::Descriptor,
    replaces: Option<&DeviceId>,
) -> Option<String> {
    let now = crate::clock::unix_now().0;
    let subject = Subject {
        model: &d.model,
        installed: d.firmware_version,
        updatable: d.updatable,
        support_end: d.support_end.0,
    };
    let mut out = Vec::new();
    for a in advisories.records() {
        match decide(subject, a, now) {
            Decision::Unaffected => {}
            Decision::ScheduleFix => out.push(format!(
                "firmware {} is affected by advisory {} ({} severity: {}); the hub will install \
                 the fix right after pairing",
                d.firmware_version, a.id, a.severity, a.text
            )),
            Decision::Isolate(reason) => {
                let again = match replaces {
                    Some(old) => format!(
                        "it replaces {old} but is itself affected: it will be isolated again as \
                         soon as it pairs"
                    ),
                    None => "it will be isolated as soon as it pairs".to_owned(),
                };
                out.push(format!("{again}: {reason} (advisory {}: {})", a.id, a.text));
            }
        }
    }
    if out.is_empty() && d.support_end.0 <= now {
        out.push(format!(
            "its security-update support period ended on {}: the manufacturer no longer fixes \
             its vulnerabilities",
            web_ui::time::local_date(d.support_end.0)
        ));
    }
    (!out.is_empty()).then(|| out.join("; "))
}

/// What [`apply`] decided that the link must carry out.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Devices isolated now: their update offers are withdrawn.
    pub(crate) isolated: Vec<protocol::oscore::Kid>,
    /// A fix was approved: deliveries must be re-planned.
    pub(crate) fix_scheduled: bool,
}

/// Decides for every paired device (or `only` one that paired) under every advisory (TR 103
/// 621 6.23): the fix is approved for updatable devices in support, the others are isolated.
pub(crate) fn apply(
    advisories: &mut Advisories,
    directory: &crate::devices::Directory,
    updates: &mut crate::updates::Updates,
    only: Option<&DeviceId>,
) -> Applied {
    let mut applied = Applied::default();
    if advisories.records().is_empty() {
        return applied;
    }
    let now = crate::clock::unix_now();
    let devices = match only {
        Some(id) => directory.get(id).into_iter().collect(),
        None => directory.list(),
    };
    for index in 0..advisories.records().len() {
        for d in &devices {
            let kid = d.info.id.kid();
            let subject = Subject {
                model: &d.info.about.model,
                installed: updates.installed(&kid).unwrap_or(d.info.about.firmware_version),
                updatable: d.info.about.updatable,
                support_end: d.info.about.support_end.0,
            };
            let advisory = &advisories.records()[index];
            match decide(subject, advisory, now.0) {
                Decision::Unaffected => {}
                Decision::ScheduleFix => {
                    let fix = advisory.fixed_in.unwrap_or(u32::MAX);
                    let version = updates.newest_release(&d.info.about.model).filter(|v| *v >= fix);
                    if let Some(v) = version
                        && !updates.approved(&kid, &d.info.about.model, v)
                    {
                        // A security fix is installed even under a notify-only policy (the
                        // owner is told why, EN 303 645 5.3-11).
                        let _ = updates.approve(Some(&kid), None, v);
                        applied.fix_scheduled = true;
                        tracing::warn!(device = %d.info.id, version = v, "vulnerable device: security fix scheduled");
                    }
                    advisories.act(index, d.info.id, Action::FixScheduled { version });
                }
                Decision::Isolate(reason) => {
                    let isolation = crate::devices::Isolation {
                        reason: reason.clone(),
                        advisory: Some(advisory.summary()),
                        since: now.0,
                        replacement: replacement_path(&d.info.id),
                        overridden_at: None,
                    };
                    if directory.isolate(&d.info.id, isolation, crate::clock::unix_now_ms()) {
                        tracing::warn!(device = %d.info.id, %reason, "vulnerable device isolated: its data and commands no longer leave the hub");
                        applied.isolated.push(kid);
                    }
                    advisories.act(index, d.info.id, Action::Isolated { reason });
                }
            }
        }
    }
    // Isolations reach the store with the next tick's profile document (within a second).
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(low: u32, high: u32, fixed_in: Option<u32>) -> AdvisoryRecord {
        AdvisoryRecord {
            id: "x".into(),
            model: "m".into(),
            affected_low: low,
            affected_high: high,
            severity: "high".into(),
            fixed_in,
            text: "t".into(),
            issued: 0,
            received: 0,
            source: "feed".into(),
            actions: BTreeMap::new(),
        }
    }

    fn subject(installed: u32, updatable: bool, support_end: u64) -> Subject<'static> {
        Subject { model: "m", installed, updatable, support_end }
    }

    #[test]
    fn updatable_in_support_gets_the_fix_everything_else_affected_is_isolated() {
        let a = record(1, 3, Some(4));
        assert_eq!(decide(subject(2, true, 100), &a, 50), Decision::ScheduleFix);
        // The range is inclusive at both ends; outside it nothing happens.
        assert_eq!(decide(subject(1, true, 100), &a, 50), Decision::ScheduleFix);
        assert_eq!(decide(subject(3, true, 100), &a, 50), Decision::ScheduleFix);
        assert_eq!(decide(subject(4, false, 0), &a, 50), Decision::Unaffected);
        assert_eq!(decide(subject(0, false, 0), &a, 50), Decision::Unaffected);
        let other = Subject { model: "n", ..subject(2, false, 0) };
        assert_eq!(decide(other, &a, 50), Decision::Unaffected);
        let why = |d| match d {
            Decision::Isolate(w) => w,
            d => panic!("expected isolation, got {d:?}"),
        };
        assert!(why(decide(subject(2, false, 100), &a, 50)).contains("cannot be updated"));
        // Support ends at `support_end`: at that second it is over.
        assert!(why(decide(subject(2, true, 50), &a, 50)).contains("support period has ended"));
        assert!(why(decide(subject(2, true, 100), &record(1, 3, None), 50)).contains("no fix"));
    }
}
