//! The simulated sensor's firmware: two slots (A/B, TR 103 621 6.51 example 1). An update is
//! written to the inactive slot, its digest checked, then marked pending; the next boot tries it
//! once, runs a health check and confirms it — or rolls back. Because the trial is recorded
//! before it starts, a power cut at any step leaves a sensor that boots a known-good version.
//! [`image`] is the image format it boots.

pub mod image;

use protocol::link::fw::{Outcome, UpdateReport};
use serde::{Deserialize, Serialize};

pub use image::fails_health_check;

/// A slot switch that has been asked for but not confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The slot holding the new image.
    pub slot: u8,
    /// Its version.
    pub version: u32,
    /// A trial boot of it has started (a second boot with this set means the trial died).
    pub tried: bool,
}

/// A download into the inactive slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    /// Version being fetched.
    pub version: u32,
    /// Image size.
    pub size: u32,
    /// Image SHA-256 (hex): a later offer must match it to resume.
    pub sha256: String,
}

/// The persisted slot state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slots {
    /// The slot that boots normally.
    pub active: u8,
    /// Version held by each slot (0: empty).
    pub versions: [u32; 2],
    /// A switch waiting for its trial boot.
    pub pending: Option<Pending>,
    /// A download in progress.
    pub download: Option<Download>,
}

impl Slots {
    /// A factory-fresh sensor running `version` from slot A.
    pub fn factory(version: u32) -> Self {
        Self { active: 0, versions: [version, 0], pending: None, download: None }
    }

    /// The version that runs now.
    pub fn running(&self) -> u32 {
        self.versions[usize::from(self.active & 1)]
    }

    /// The slot an update is written to.
    pub fn inactive(&self) -> u8 {
        1 - (self.active & 1)
    }

    /// Records a verified image in the inactive slot and asks for the switch. Persist before
    /// rebooting.
    pub fn request_switch(&mut self, version: u32) {
        let slot = self.inactive();
        self.versions[usize::from(slot)] = version;
        self.pending = Some(Pending { slot, version, tried: false });
        self.download = None;
    }

    /// Starts a boot: returns the slot to run. A first boot of a pending image is its trial
    /// (persist the returned state before running it); a pending image whose trial already
    /// started never confirmed, so the old slot boots and the switch is dropped.
    pub fn begin_boot(&mut self) -> Boot {
        match self.pending {
            Some(p) if !p.tried => {
                self.pending = Some(Pending { tried: true, ..p });
                Boot::Trial { slot: p.slot, version: p.version }
            }
            Some(p) => {
                self.pending = None;
                Boot::Fallback {
                    report: UpdateReport {
                        version: p.version,
                        running: self.running(),
                        outcome: Outcome::RolledBack,
                        reason:
                            "the new version did not confirm (power lost during its trial boot)"
                                .into(),
                    },
                }
            }
            None => Boot::Normal,
        }
    }

    /// Ends a trial boot: confirms the new slot if its health check passed, else rolls back.
    pub fn finish_trial(&mut self, healthy: bool) -> UpdateReport {
        let Some(p) = self.pending.take() else {
            return UpdateReport {
                version: self.running(),
                running: self.running(),
                outcome: Outcome::Installed,
                reason: String::new(),
            };
        };
        if healthy {
            self.active = p.slot;
            UpdateReport {
                version: p.version,
                running: p.version,
                outcome: Outcome::Installed,
                reason: String::new(),
            }
        } else {
            UpdateReport {
                version: p.version,
                running: self.running(),
                outcome: Outcome::RolledBack,
                reason: "health check failed after boot".into(),
            }
        }
    }
}

/// What a boot does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Run the active slot.
    Normal,
    /// Try the pending slot once.
    Trial {
        /// Slot.
        slot: u8,
        /// Version.
        version: u32,
    },
    /// The pending slot's trial died: the active slot runs, report the rollback.
    Fallback {
        /// The report to send.
        report: UpdateReport,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(healthy: bool) -> Vec<u8> {
        image::build_image("hearth-thermo-1", 2, 4096, healthy)
    }

    #[test]
    fn healthy_update_switches_and_confirms() {
        let mut s = Slots::factory(1);
        s.request_switch(2);
        assert_eq!(s.running(), 1, "nothing changes before the reboot");
        assert_eq!(s.begin_boot(), Boot::Trial { slot: 1, version: 2 });
        let r = s.finish_trial(!fails_health_check(&sample(true)));
        assert_eq!((r.outcome, r.running, s.running()), (Outcome::Installed, 2, 2));
        assert_eq!(s.begin_boot(), Boot::Normal);
        assert_eq!(s.inactive(), 0, "the next update goes to the old slot");
    }

    #[test]
    fn failed_health_check_rolls_back() {
        let mut s = Slots::factory(1);
        s.request_switch(2);
        assert!(matches!(s.begin_boot(), Boot::Trial { .. }));
        let r = s.finish_trial(!fails_health_check(&sample(false)));
        assert_eq!((r.outcome, r.running, s.running()), (Outcome::RolledBack, 1, 1));
        assert_eq!(s.begin_boot(), Boot::Normal);
    }

    #[test]
    fn a_power_cut_at_any_step_boots_a_known_good_version() {
        // Cut before the switch was persisted: the old version, nothing pending.
        let s = Slots::factory(1);
        assert_eq!(s.running(), 1);
        // Cut after the switch was requested, before the trial: the trial happens next boot.
        let mut s = Slots::factory(1);
        s.request_switch(2);
        let persisted = s.clone();
        let mut after = persisted.clone();
        assert!(matches!(after.begin_boot(), Boot::Trial { .. }));
        // Cut during the trial (its start was persisted, no confirmation): the old version.
        let mut s = after.clone();
        match s.begin_boot() {
            Boot::Fallback { report } => {
                assert_eq!((report.outcome, report.running), (Outcome::RolledBack, 1))
            }
            other => panic!("expected a fallback, got {other:?}"),
        }
        assert_eq!(s.running(), 1);
        assert_eq!(s.begin_boot(), Boot::Normal);
        assert!(fails_health_check(b"not firmware"));
    }
}
