//! Firmware updates in the fleet: takes offers from the hub, verifies the manifest on models
//! that can (TR 103 621 6.18 example 5) or trusts the authenticated link (example 4), writes the
//! inactive slot block by block (resuming from flash after a power cut), switches, boots,
//! health-checks and reports.

use protocol::link::SensorEvent;
use protocol::link::fw::{LinkOffer, Outcome, UpdateReport};
use protocol::time::Millis;
use protocol::update::{ImageAssembler, verify_manifest};

use super::{FleetEvent, FleetTask};
use crate::clock;
use crate::firmware::{Boot, Download, Slots, fails_health_check};

/// Where to cut a sensor's power during an update (tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutPoint {
    /// After this many blocks were written to the inactive slot.
    MidWrite(u32),
    /// During the trial boot of the new version, before it confirms.
    MidSwitch,
}

/// One sensor's update state.
#[derive(Debug, Default)]
pub(super) struct Fw {
    pub slots: Option<Slots>,
    offer: Option<LinkOffer>,
    assembler: Option<ImageAssembler>,
    /// The inactive slot's bytes as written (mirrors flash).
    pub slot: Vec<u8>,
    busy: bool,
    written_blocks: u32,
    pub cut: Option<CutPoint>,
    reported: u32,
    /// Blocks received per version (kept across power cuts: the observer's count, not flash).
    pub received: std::collections::HashMap<u32, u32>,
}

impl Fw {
    pub(super) fn new(slots: Slots) -> Self {
        Self { slots: Some(slots), ..Self::default() }
    }

    pub(super) fn running(&self) -> u32 {
        self.slots.as_ref().map_or(1, Slots::running)
    }
}

impl FleetTask {
    pub(super) fn on_firmware(&mut self, index: u32, e: SensorEvent, now: Millis) {
        let i = index as usize;
        match e {
            SensorEvent::UpdateOffered(offer) => {
                let s = &self.sensors[i];
                let updatable = s.model.spec().updatable;
                let (version, running) = (offer.offer().version, s.fw.running());
                if !updatable || s.fw.busy {
                    return;
                }
                if version <= running {
                    // Already there (e.g. the report was lost in a power cut): say so once, so
                    // the hub closes the delivery instead of offering it forever.
                    if s.fw.reported != version {
                        self.sensors[i].fw.reported = version;
                        let report = UpdateReport {
                            version,
                            running,
                            outcome: Outcome::Installed,
                            reason: "already running".into(),
                        };
                        self.finish_update(index, report, now);
                    }
                    return;
                }
                let version = offer.offer().version;
                let verifies = s.model.spec().verifies_signatures;
                let s = &mut self.sensors[i];
                s.fw.busy = true;
                s.fw.offer = Some(offer);
                if verifies {
                    s.link.fetch_manifest(now, &mut self.rng, version);
                } else {
                    self.start_blocks(index, now);
                }
            }
            SensorEvent::Manifest { bytes, .. } => {
                let Some(offer) = self.sensors[i].fw.offer.clone() else { return };
                let o = offer.offer();
                // The sensor's own trust anchor: the manufacturer key built into it.
                let verdict = match &self.config.trust {
                    Some(anchors) => verify_manifest(&bytes, anchors, clock::unix_now())
                        .map_err(|e| e.to_string()),
                    None => Err("no manufacturer key built in".into()),
                };
                let model = self.sensors[i].model.designation();
                let running = self.sensors[i].fw.running();
                let verdict = verdict.and_then(|m| match m.check_applicable(model, running) {
                    Ok(()) => Ok(m),
                    Err(e) => Err(e.to_string()),
                });
                let matches = verdict.as_ref().is_ok_and(|m| {
                    m.version() == o.version
                        && *m.image_sha256() == o.sha256
                        && m.image_size() == o.size
                });
                match (verdict, matches) {
                    (Ok(_), true) => self.start_blocks(index, now),
                    (Ok(_), false) => {
                        self.fail(index, o.version, "manifest does not match the offer".into(), now)
                    }
                    (Err(why), _) => {
                        self.fail(index, o.version, format!("manifest refused: {why}"), now)
                    }
                }
            }
            SensorEvent::Block { offset, data, more, version } => {
                self.on_block(index, version, offset, &data, more, now)
            }
            SensorEvent::FirmwareRefused { .. } => {
                // Cancelled or withdrawn at the hub: stop; the slot keeps what it has.
                let s = &mut self.sensors[i];
                s.fw.busy = false;
                s.fw.assembler = None;
            }
            SensorEvent::ReportDelivered { version } => {
                let s = &mut self.sensors[i];
                s.fw.busy = false;
                s.fw.reported = version;
            }
            _ => {}
        }
    }

    /// Starts (or resumes) fetching blocks for the current offer.
    fn start_blocks(&mut self, index: u32, now: Millis) {
        let i = index as usize;
        let Some(offer) = self.sensors[i].fw.offer.clone() else { return };
        let o = offer.offer().clone();
        let model = self.sensors[i].model.designation();
        let sha = protocol::hex::encode(&o.sha256);
        let mut asm = ImageAssembler::for_link_offer(&offer, model);
        let s = &mut self.sensors[i];
        let slots = s.fw.slots.get_or_insert_with(|| Slots::factory(1));
        let resumable =
            slots.download.as_ref().is_some_and(|d| d.version == o.version && d.sha256 == sha);
        if resumable && asm.push(0, &s.fw.slot).is_ok() {
            s.fw.written_blocks = (asm.offset() / u64::from(o.block_size())) as u32;
        } else {
            // A new download: erase the inactive slot first.
            slots.download = Some(Download { version: o.version, size: o.size, sha256: sha });
            s.fw.slot.clear();
            s.fw.written_blocks = 0;
            asm = ImageAssembler::for_link_offer(&offer, model);
            // Blocks of an earlier download still queued for flash must not land after the erase.
            self.staged.blocks.retain(|(s, _, _)| *s != index);
            self.staged.erase.push(index);
            self.pending_flash.push(index);
        }
        let num = (asm.offset() / u64::from(o.block_size())) as u32;
        let s = &mut self.sensors[i];
        s.fw.assembler = Some(asm);
        s.link.fetch_block(now, &mut self.rng, o.version, num, o.szx);
    }

    fn on_block(
        &mut self,
        index: u32,
        version: u32,
        offset: u64,
        data: &[u8],
        more: bool,
        now: Millis,
    ) {
        let i = index as usize;
        let Some(o) = self.sensors[i].fw.offer.as_ref().map(|o| o.offer().clone()) else { return };
        let Some(asm) = self.sensors[i].fw.assembler.as_mut() else { return };
        if let Err(e) = asm.push(offset, data) {
            return self.fail(index, version, format!("bad block: {e}"), now);
        }
        let done = asm.offset();
        let num = (offset / u64::from(o.block_size())) as u32;
        let s = &mut self.sensors[i];
        *s.fw.received.entry(version).or_default() += 1;
        s.fw.slot.extend_from_slice(data);
        s.fw.written_blocks = num + 1;
        self.staged.blocks.push((index, num, data.to_vec()));
        let total = o.blocks();
        if num.is_multiple_of(16) || !more {
            self.emit(FleetEvent::UpdateProgress { index, version, done: num + 1, total });
        }
        if self.sensors[i].fw.cut == Some(super::update::CutPoint::MidWrite(num + 1)) {
            self.sensors[i].fw.cut = None;
            return self.power_cut(index);
        }
        if more {
            let next = (done / u64::from(o.block_size())) as u32;
            self.sensors[i].link.fetch_block(now, &mut self.rng, version, next, o.szx);
            return;
        }
        let Some(asm) = self.sensors[i].fw.assembler.take() else { return };
        match asm.finish() {
            Ok(image) => {
                let healthy = !fails_health_check(image.bytes());
                let s = &mut self.sensors[i];
                let slots = s.fw.slots.get_or_insert_with(|| Slots::factory(1));
                slots.request_switch(version);
                // Reboot into the trial: its start is persisted before it runs.
                let boot = slots.begin_boot();
                self.pending_flash.push(index);
                if self.sensors[i].fw.cut == Some(super::update::CutPoint::MidSwitch) {
                    self.sensors[i].fw.cut = None;
                    // Power lost during the trial boot, before the health check confirmed it.
                    self.flush_flash();
                    return self.power_cut(index);
                }
                if let Boot::Trial { .. } = boot {
                    let report =
                        self.sensors[i].fw.slots.as_mut().map(|sl| sl.finish_trial(healthy));
                    if let Some(r) = report {
                        self.pending_flash.push(index);
                        self.finish_update(index, r, now);
                    }
                }
            }
            Err(e) => self.fail(index, version, format!("image refused: {e}"), now),
        }
    }

    /// Boots after a power cut: a pending image whose trial died falls back (and is reported).
    pub(super) fn boot_after_power_cut(&mut self, index: u32, now: Millis) {
        let i = index as usize;
        let Some(slots) = self.sensors[i].fw.slots.as_mut() else { return };
        match slots.begin_boot() {
            Boot::Normal => {}
            Boot::Fallback { report } => {
                self.pending_flash.push(index);
                self.finish_update(index, report, now);
            }
            Boot::Trial { .. } => {
                // The switch was persisted but its trial had not started: run it now.
                let healthy = !fails_health_check(&self.sensors[i].fw.slot);
                let report = self.sensors[i].fw.slots.as_mut().map(|sl| sl.finish_trial(healthy));
                self.pending_flash.push(index);
                if let Some(r) = report {
                    self.finish_update(index, r, now);
                }
            }
        }
    }

    fn fail(&mut self, index: u32, version: u32, reason: String, now: Millis) {
        let running = self.sensors[index as usize].fw.running();
        self.sensors[index as usize].fw.assembler = None;
        self.finish_update(
            index,
            UpdateReport { version, running, outcome: Outcome::Failed, reason },
            now,
        );
    }

    fn finish_update(&mut self, index: u32, report: UpdateReport, now: Millis) {
        let i = index as usize;
        let blocks = self.sensors[i].fw.received.get(&report.version).copied().unwrap_or(0);
        self.emit(FleetEvent::Updated {
            index,
            version: report.version,
            running: report.running,
            outcome: report.outcome,
            reason: report.reason.clone(),
            blocks,
        });
        let s = &mut self.sensors[i];
        s.fw.busy = true; // until the report is delivered
        s.fw.offer = None;
        s.link.report(now, &mut self.rng, report);
        self.service(index);
    }
}
