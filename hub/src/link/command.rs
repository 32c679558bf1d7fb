//! The link driver's own messages: a command is a closure run on the link's thread with the
//! driver in hand (so each owner command is written once, in the API's handler, and nothing
//! here grows with the API), the driver's methods those handlers call, and why the link
//! refuses one ([`LinkError`], in `error`).

use protocol::oscore::Kid;

use super::Driver;
use super::error::LinkError;
use super::pairing::{PairingStatus, PinEntry};
use crate::clock::{unix_now, unix_now_ms};
use crate::device_id::DeviceId;
use crate::store::Write;

/// A message to the link driver: work to do on its thread, with the driver in hand.
pub(crate) struct LinkCommand(Box<dyn FnOnce(&mut Driver) + Send>);

impl LinkCommand {
    /// A command running `f` on the link's thread.
    pub(crate) fn new(f: impl FnOnce(&mut Driver) + Send + 'static) -> Self {
        Self(Box::new(f))
    }

    pub(super) fn run(self, driver: &mut Driver) {
        (self.0)(driver);
    }
}

impl std::fmt::Debug for LinkCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkCommand")
    }
}

impl Driver {
    /// Arms pairing for `seconds` (default from the configuration).
    pub(crate) fn pair_open(&mut self, seconds: Option<u64>) -> PairingStatus {
        let now = self.now();
        self.link.open_pairing(now, self.config.window(seconds));
        self.pin_window_changed("re-opened");
        tracing::info!(
            seconds = seconds.unwrap_or(self.config.pairing.window_seconds),
            "pairing window opened"
        );
        self.pairing_status()
    }

    /// Disarms pairing.
    pub(crate) fn pair_close(&mut self) -> PairingStatus {
        self.link.close_pairing();
        self.pin_window_changed("closed");
        self.pairing_status()
    }

    /// Queues a typed PIN; its reply is sent when its attempt ends.
    pub(crate) fn queue_pin(&mut self, entry: PinEntry) {
        self.pins.push_back(entry);
        self.next_pin();
    }

    /// Removes a device: keys, link state and readings are erased. False: no such device.
    pub(crate) fn remove(&mut self, kid: Kid) -> bool {
        let existed = self.link.remove_peer(&kid);
        if existed {
            self.updates.forget(&kid);
            tracing::info!(device = %kid, "device removed; erasing its keys and readings");
            self.pending.readings.remove(&kid);
            self.pending.states.remove(&kid);
            self.pending.writes.push(Write::Remove { kid });
            self.directory.removed(&kid.into());
        }
        existed
    }

    /// The update manager, for reading.
    pub(crate) fn updates(&self) -> &crate::updates::Updates {
        &self.updates
    }

    /// Changes the update manager's state (`f` returns what the owner is told); deliveries are
    /// re-planned after it.
    pub(crate) fn change_updates<T>(
        &mut self,
        f: impl FnOnce(&mut crate::updates::Updates) -> T,
    ) -> T {
        self.replan = true;
        f(&mut self.updates)
    }

    /// Adds a verified release; affected devices under an advisory get their fix.
    pub(crate) fn update_add(
        &mut self,
        manifest: Vec<u8>,
        image: Vec<u8>,
        source: &'static str,
    ) -> Result<(String, u32), LinkError> {
        let r = self.change_updates(|u| u.add_release(manifest, image, source, unix_now()));
        if r.is_ok() {
            self.apply_advisories(None);
        }
        Ok(r?)
    }

    /// Cancels delivery to a device (its offer is withdrawn now); the version cancelled.
    pub(crate) fn update_cancel(&mut self, device: Kid) -> Option<u32> {
        let v = self.change_updates(|u| u.cancel(&device, unix_now()));
        self.link.set_offer(&device, None);
        v
    }

    /// Queues a command for an actuator's next request (MQTT `…/set`); false: no such device.
    pub(crate) fn actuate(
        &mut self,
        device: Kid,
        command: protocol::link::command::Command,
    ) -> bool {
        self.link.queue_command(&device, command)
    }

    /// Security advisories, oldest first.
    pub(crate) fn advisories(&self) -> &[crate::isolation::AdvisoryRecord] {
        self.advisories.records()
    }

    /// Verifies a signed advisory like a manifest (trusted key for its model, EN 303 645
    /// 5.3-10) and acts on it.
    pub(crate) fn add_advisory(
        &mut self,
        signed: &[u8],
        source: &'static str,
    ) -> Result<crate::isolation::AdvisoryRecord, LinkError> {
        let now = unix_now();
        let verified = protocol::update::verify_advisory(signed, self.updates.anchors(), now)
            .map_err(crate::isolation::AdvisoryError::from)?;
        let index = self.advisories.add(&verified, source, now.0)?;
        tracing::warn!(advisory = %self.advisories.records()[index].summary(), source, "security advisory received");
        self.apply_advisories(None);
        Ok(self.advisories.records()[index].clone())
    }

    /// The owner's explicit override of an isolation (logged).
    pub(crate) fn unisolate(&mut self, device: DeviceId) -> Result<(), LinkError> {
        self.directory.override_isolation(&device, unix_now_ms())?;
        tracing::warn!(%device, "the owner overrode the isolation of a vulnerable device; its data leaves the hub again");
        self.persist_directory(false);
        Ok(())
    }

    /// `new` takes the place of `old`: the old sensor's keys and link state are erased; its
    /// readings stay as the new sensor's history (TR 103 621 6.23 example 1). Any device can be
    /// replaced: isolated, moved, broken.
    pub(crate) fn replace(&mut self, old: DeviceId, new: DeviceId) -> Result<(), LinkError> {
        self.directory.replaceable(&old)?;
        let kid = old.kid();
        self.link.remove_peer(&kid);
        self.updates.forget(&kid);
        self.pending.readings.remove(&kid);
        self.pending.states.remove(&kid);
        self.pending.writes.push(Write::Retire { kid });
        self.directory.replace(&old, &new, unix_now_ms());
        self.persist_directory(false);
        tracing::info!(%old, %new, "device replaced; the old sensor's keys are erased");
        Ok(())
    }

    /// Applies every advisory to every device (or `only` one that paired) and carries out the
    /// decisions on the link (`isolation::apply`).
    pub(super) fn apply_advisories(&mut self, only: Option<&DeviceId>) {
        let applied =
            crate::isolation::apply(&mut self.advisories, &self.directory, &mut self.updates, only);
        for kid in applied.isolated {
            self.link.set_offer(&kid, None);
        }
        self.replan |= applied.fix_scheduled;
    }
}
