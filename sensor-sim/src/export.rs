//! Exports a paired sensor's OSCORE context in aiocoap's credentials format (a directory with
//! `settings.json` and `sequence.json`), so a real OSCORE stack can speak as that sensor. The
//! sensor is marked exported in flash and never used by the simulator again: two endpoints
//! sharing one context would reuse nonces.

use std::fs;
use std::path::Path;

use crate::flash::{Flash, FlashError};

/// Why the export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Flash failed.
    #[error(transparent)]
    Flash(#[from] FlashError),
    /// No such sensor, or not paired.
    #[error("sensor {0} is not paired in this flash file")]
    NotPaired(String),
    /// Already exported once.
    #[error("sensor {0} was already exported; its context must not be used twice")]
    AlreadyExported(String),
    /// Writing the directory failed.
    #[error("writing {0}: {1}")]
    Io(String, std::io::Error),
}

/// Exports sensor `which` (index or serial) from `flash` into `dir`.
pub fn export_aiocoap(flash: &Flash, which: &str, dir: &Path) -> Result<String, ExportError> {
    let Some((index, mut rec)) = flash.find(which)? else {
        return Err(ExportError::NotPaired(which.into()));
    };
    if rec.exported {
        return Err(ExportError::AlreadyExported(rec.serial));
    }
    let Some(ctx) = rec.context.clone() else { return Err(ExportError::NotPaired(rec.serial)) };
    let io = |e| ExportError::Io(dir.display().to_string(), e);
    fs::create_dir_all(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    let settings = serde_json::json!({
        "sender-id_hex": ctx.sender_id,
        "recipient-id_hex": ctx.recipient_id,
        "secret_hex": ctx.secret,
        "salt_hex": ctx.salt,
        "algorithm": "AES-CCM-16-64-128",
        "kdf-hashfun": "sha256",
    });
    // Every number below the durable lease may have been used: aiocoap starts above it.
    let sequence = serde_json::json!({
        "next-to-send": rec.lease,
        "received": { "index": 0, "bitfield": 0 },
    });
    let write =
        |name: &str, v: &serde_json::Value| fs::write(dir.join(name), v.to_string()).map_err(io);
    write("settings.json", &settings)?;
    write("sequence.json", &sequence)?;
    rec.exported = true;
    let serial = rec.serial.clone();
    flash.write(&[(index, rec)])?;
    Ok(serial)
}
