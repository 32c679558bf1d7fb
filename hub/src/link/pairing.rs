//! Pairing as the owner drives it: PINs typed wait in a queue and are tried one at a time
//! (the window's failure count is up to date before the next), what the owner must decide
//! before a PIN is tried (a serial already paired, a sensor under an advisory or past its
//! support period), and the window's status.

use protocol::link::PinError;
use protocol::oscore::Kid;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::Driver;
use super::error::LinkError;
use crate::device_id::DeviceId;

/// A PIN the owner typed, waiting for the attempt before it to end (one at a time).
pub(crate) struct PinEntry {
    pub(crate) pin: String,
    pub(crate) serial: Option<String>,
    pub(crate) device: Option<Kid>,
    pub(crate) replaces: Option<DeviceId>,
    pub(crate) accept_risk: bool,
    pub(crate) reply: oneshot::Sender<Result<Kid, LinkError>>,
}

/// Pairing status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PairingStatus {
    /// Whether pairing requests and PINs are accepted now (not while backing off).
    pub open: bool,
    /// `open`, `backing_off` (the window is open but takes no PIN for `backoff_s` after a
    /// failed attempt), `no_attempts_left` (closed after its failures) or `closed`.
    #[serde(default)]
    pub state: PairingState,
    /// Seconds until PINs are taken again (while backing off).
    #[serde(default)]
    pub backoff_s: u64,
    /// Seconds until the window closes.
    pub closes_in_s: u64,
    /// Failed attempts left in this window.
    pub attempts_left: u32,
    /// Sensors waiting for their PIN.
    pub waiting: Vec<Waiting>,
    /// The device whose typed PIN is being confirmed (one attempt at a time).
    pub confirming: Option<String>,
    /// PINs typed meanwhile, waiting for that attempt to end.
    pub pins_queued: usize,
}

/// Where the pairing window stands.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PairingState {
    /// PINs are taken now.
    Open,
    /// Open, but waiting out the pause after a failed attempt.
    BackingOff,
    /// Closed after its failed attempts.
    NoAttemptsLeft,
    /// Not open (never opened, timed out or closed by the owner).
    #[default]
    Closed,
}

/// A sensor waiting for its PIN.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Waiting {
    /// Future device id.
    pub device: String,
    /// Serial.
    pub serial: String,
    /// Model designation.
    pub model: String,
    /// Installed firmware.
    #[serde(default)]
    pub firmware_version: u32,
    /// What the owner should know before typing its PIN (past its support period, under a
    /// known advisory, a serial already paired); a PIN for it needs `accept_risk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl Driver {
    /// Types the next queued PIN if no attempt is being confirmed (one attempt at a time: the
    /// window's failure count is always up to date before another PIN is tried).
    pub(super) fn next_pin(&mut self) {
        while self.pin_attempt.is_none() && !self.link.pin_unresolved() {
            let Some(entry) = self.pins.pop_front() else { return };
            let now = self.now();
            let kid = match (entry.device, &entry.serial) {
                (Some(k), _) => Some(k),
                (None, Some(serial)) => {
                    let matches: Vec<Kid> = self
                        .link
                        .waiting_for_pin()
                        .into_iter()
                        .filter(|(_, d)| &d.serial == serial)
                        .map(|(k, _)| k)
                        .collect();
                    let why = match matches.as_slice() {
                        [k] => Ok(*k),
                        [] => Err(LinkError::NoSuchSerial(serial.clone())),
                        // A second sensor claims the same serial: someone may pose as it. The
                        // owner picks by device id (`hub ctl pair status`).
                        _ => Err(LinkError::AmbiguousSerial(serial.clone())),
                    };
                    match why {
                        Ok(k) => Some(k),
                        Err(why) => {
                            let _ = entry.reply.send(Err(why));
                            continue;
                        }
                    }
                }
                (None, None) => None,
            };
            // Before anything is tried: what the owner must know or decide (not attempts).
            if let Err(why) = self.pin_precheck(kid, entry.replaces.as_ref(), entry.accept_risk) {
                tracing::info!(error = %why, "PIN not tried");
                let _ = entry.reply.send(Err(why));
                continue;
            }
            match self.link.enter_pin(now, kid, &entry.pin) {
                Ok(kid) => self.pin_attempt = Some((kid, entry.reply)),
                Err(e) => {
                    if !matches!(e, PinError::Unresolved) {
                        tracing::warn!(error = %e, "PIN entry refused");
                    }
                    let why = match e {
                        PinError::Pairing(protocol::pairing::PairingError::BadPin(digits)) => {
                            LinkError::PinFormat { digits }
                        }
                        PinError::Pairing(reason) => self.failed_attempt(reason),
                        e => e.into(),
                    };
                    let _ = entry.reply.send(Err(why));
                }
            }
        }
    }

    /// The attempt for `kid` ended: tell whoever typed its PIN, and take the next PIN.
    pub(super) fn pin_resolved(&mut self, kid: &Kid, outcome: Result<Kid, LinkError>) {
        if self.pin_attempt.as_ref().is_some_and(|(k, _)| k == kid)
            && let Some((_, reply)) = self.pin_attempt.take()
        {
            let _ = reply.send(outcome);
        }
        self.next_pin();
    }

    /// The window was closed or re-opened: PINs not yet typed are refused; an attempt the link
    /// dropped with its sessions ends (one already confirmed keeps waiting to be durable).
    pub(super) fn pin_window_changed(&mut self, why: &'static str) {
        for entry in self.pins.drain(..) {
            let _ = entry.reply.send(Err(LinkError::WindowChanged(why)));
        }
        if !self.link.pin_unresolved()
            && let Some((_, reply)) = self.pin_attempt.take()
        {
            let _ = reply.send(Err(LinkError::WindowChanged(why)));
        }
    }

    /// A failed attempt, with what the window still allows (attempts left, pause).
    pub(super) fn failed_attempt(&self, reason: protocol::pairing::PairingError) -> LinkError {
        let now = self.now();
        let (attempts_left, backoff_s) = self.link.pairing_window().map_or((0, 0), |w| {
            let backoff = match w.admit(now) {
                Err(protocol::pairing::PairingRefused::BackingOff { retry_at }) => {
                    retry_at.0.saturating_sub(now.0).div_ceil(1000)
                }
                _ => 0,
            };
            (w.attempts_left(), backoff)
        });
        LinkError::PairingFailed { reason, attempts_left, backoff_s }
    }

    /// What the owner must decide before a PIN is tried for the waiting sensor `kid` (`None`:
    /// the only one waiting): a serial paired already needs `--replaces`; a sensor past its
    /// support period or under a known advisory needs the owner's acceptance.
    pub(super) fn pin_precheck(
        &self,
        kid: Option<Kid>,
        replaces: Option<&DeviceId>,
        accept_risk: bool,
    ) -> Result<(), LinkError> {
        let waiting = self.link.waiting_for_pin();
        let found = match kid {
            Some(k) => waiting.iter().find(|(w, _)| *w == k),
            None if waiting.len() == 1 => waiting.first(),
            None => None,
        };
        let Some((_, d)) = found else { return Ok(()) }; // the link explains what is wrong
        if let Some((device, name)) = self.directory.by_serial(&d.serial)
            && replaces != Some(&device)
        {
            return Err(LinkError::SerialPaired { serial: d.serial.clone(), device, name });
        }
        match crate::isolation::pairing_warning(&self.advisories, d, replaces) {
            Some(warning) if !accept_risk => {
                Err(LinkError::NeedsAcceptance { serial: d.serial.clone(), warning })
            }
            _ => Ok(()),
        }
    }

    /// The pairing window and the sensors waiting for their PIN.
    pub(crate) fn pairing_status(&self) -> PairingStatus {
        use protocol::pairing::PairingRefused;
        let now = self.now();
        let Some(w) = self.link.pairing_window() else { return PairingStatus::default() };
        let admitted = w.admit(now);
        let (state, backoff_s) = match admitted {
            Ok(()) => (PairingState::Open, 0),
            Err(PairingRefused::BackingOff { retry_at }) => {
                (PairingState::BackingOff, retry_at.0.saturating_sub(now.0).div_ceil(1000))
            }
            Err(PairingRefused::TooManyFailures) => (PairingState::NoAttemptsLeft, 0),
            Err(_) => (PairingState::Closed, 0),
        };
        PairingStatus {
            confirming: self.pin_attempt.as_ref().map(|(k, _)| k.to_string()),
            pins_queued: self.pins.len(),
            open: admitted.is_ok(),
            state,
            backoff_s,
            closes_in_s: w.closes_at().0.saturating_sub(now.0) / 1000,
            attempts_left: w.attempts_left(),
            waiting: self
                .link
                .waiting_for_pin()
                .into_iter()
                .map(|(kid, d)| {
                    let paired = self.directory.by_serial(&d.serial).map(|(id, name)| {
                        format!(
                            "a device with this serial is already paired ({name}, id {id}): \
                             pair this one with `--replaces {id}` if it takes its place"
                        )
                    });
                    let warning = match (
                        paired,
                        crate::isolation::pairing_warning(&self.advisories, &d, None),
                    ) {
                        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                        (a, b) => a.or(b),
                    };
                    Waiting {
                        device: kid.to_string(),
                        firmware_version: d.firmware_version,
                        serial: d.serial,
                        model: d.model,
                        warning,
                    }
                })
                .collect(),
        }
    }
}
