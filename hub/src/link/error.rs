//! Why the link driver refuses an owner's command, in the owner's words (the same text in
//! `hub ctl` and the web UI).

use crate::device_id::DeviceId;

/// Why the link driver refused a command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The PIN was not used (no such session, window closed, backing off, wrong length, ...).
    #[error(transparent)]
    Pin(#[from] protocol::link::PinError),
    /// No waiting sensor has that serial.
    #[error("no sensor with serial {0} is waiting for a PIN")]
    NoSuchSerial(String),
    /// Several waiting sensors claim that serial: someone may pose as one of them.
    #[error("several sensors claim serial {0}; choose one with --device")]
    AmbiguousSerial(String),
    /// The attempt ended without pairing (a failed attempt: counted in the window).
    #[error("{}", failed_attempt(reason, *attempts_left, *backoff_s))]
    PairingFailed {
        /// What failed.
        reason: protocol::pairing::PairingError,
        /// Failed attempts the window still allows.
        attempts_left: u32,
        /// Seconds before the next PIN is taken.
        backoff_s: u64,
    },
    /// The typed text cannot be a PIN of this sensor (not counted as an attempt).
    #[error(
        "a PIN of this sensor is {digits} digits from {zero} to {max}: check the digits on its \
         display and type them again (not counted as a failed attempt)",
        zero = "0".repeat(*digits), max = max_pin(*digits)
    )]
    PinFormat {
        /// Digits of this sensor's PINs.
        digits: usize,
    },
    /// Another device is paired with the same serial (not counted as an attempt).
    #[error(
        "a device with serial {serial} is already paired ({name}, id {device}). If this sensor \
         takes its place, type the PIN again with `--replaces {device}` (web: choose it under \
         “Replaces”): it keeps the name, room and history; otherwise remove that device first \
         (not counted as a failed attempt)"
    )]
    SerialPaired {
        /// The serial.
        serial: String,
        /// The paired device with it.
        device: DeviceId,
        /// Its name.
        name: String,
    },
    /// The sensor needs the owner's acknowledgement before its PIN is tried.
    #[error(
        "sensor {serial}: {warning}. To pair it anyway, type the PIN again accepting the risk \
         (hub ctl: add --accept-risk; web: tick “Pair anyway”; not counted as a failed attempt)"
    )]
    NeedsAcceptance {
        /// The sensor's serial.
        serial: String,
        /// Why.
        warning: String,
    },
    /// The window was closed or re-opened before the attempt was made.
    #[error("the pairing window was {0} before this PIN was tried")]
    WindowChanged(&'static str),
    /// The update manager refused.
    #[error(transparent)]
    Updates(#[from] crate::updates::UpdatesError),
    /// An advisory was refused or is known.
    #[error(transparent)]
    Advisory(#[from] crate::isolation::AdvisoryError),
    /// The device directory refused (bad name, not isolated, ...).
    #[error(transparent)]
    Directory(#[from] crate::devices::DirectoryError),
}

/// The largest PIN of `digits` digits (2, 3 or 4 masked bytes).
fn max_pin(digits: usize) -> u64 {
    match digits {
        0..=5 => 65_535,
        6..=8 => 16_777_215,
        _ => 4_294_967_295,
    }
}

/// A failed attempt in the owner's words: what happened, and what they can do now (the same
/// text in `hub ctl` and the web UI).
fn failed_attempt(
    reason: &protocol::pairing::PairingError,
    attempts_left: u32,
    backoff_s: u64,
) -> String {
    use protocol::pairing::PairingError as E;
    let what = match reason {
        E::OffCurve | E::HubProofInvalid | E::SensorProofInvalid | E::ReflectedKey => {
            "the PIN did not match this sensor's display".to_owned()
        }
        E::Abandoned => "the sensor did not finish pairing after its PIN was typed (is it still \
             on and in range?)"
            .to_owned(),
        other => format!("pairing failed ({other})"),
    };
    match attempts_left {
        0 => format!(
            "{what}; no attempts left: the pairing window is closed. Open a new one (`hub ctl \
             pair open`, or the Pairing page) and type the new PIN the sensor shows"
        ),
        n => {
            let wait = match backoff_s {
                0 => String::new(),
                s => format!(" in {s} s"),
            };
            let s = if n == 1 { "" } else { "s" };
            format!(
                "{what}; {n} attempt{s} left in this window. The sensor shows a new PIN after a \
                 failure: type that one{wait}"
            )
        }
    }
}
