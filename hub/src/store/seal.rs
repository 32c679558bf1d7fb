//! Secrets at rest (EN 303 645 5.4-1): link keys are sealed with AES-256-CCM under a
//! key-encryption key kept in a separate 0600 file, outside the database (replaceable by a TPM
//! or an OS credential store). The device id is bound as associated data.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use aes::Aes256;
use ccm::Ccm;
use ccm::aead::{AeadInOut, KeyInit};
use ccm::consts::{U13, U16};
use zeroize::Zeroizing;

type Aead = Ccm<Aes256, U16, U13>;
const NONCE: usize = 13;
const TAG: usize = 16;

/// Sealing failures.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or created.
    #[error("key-encryption key {0}: {1}")]
    KeyFile(String, std::io::Error),
    /// The key file has the wrong size or is readable by others.
    #[error("key-encryption key {0} is invalid: {1}")]
    BadKeyFile(String, &'static str),
    /// A sealed value did not authenticate (tampered, or sealed under another key).
    #[error("a sealed secret did not authenticate: wrong key-encryption key or tampered store")]
    Open,
    /// The OS random generator failed.
    #[error("random number generator failed")]
    Rng,
}

/// The key-encryption key.
pub struct Kek {
    aead: Aead,
}

impl core::fmt::Debug for Kek {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

impl Kek {
    /// Loads `path`, creating a fresh random key (0600) at first start.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        let name = path.display().to_string();
        if !path.exists() {
            let mut key = Zeroizing::new([0u8; 32]);
            crate::rng::fill(key.as_mut()).map_err(|_| SealError::Rng)?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| SealError::KeyFile(name.clone(), e))?;
            f.write_all(key.as_ref())
                .and_then(|()| f.sync_all())
                .map_err(|e| SealError::KeyFile(name.clone(), e))?;
        }
        let meta = fs::metadata(path).map_err(|e| SealError::KeyFile(name.clone(), e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(SealError::BadKeyFile(name, "readable by group or others (must be 0600)"));
        }
        let bytes =
            Zeroizing::new(fs::read(path).map_err(|e| SealError::KeyFile(name.clone(), e))?);
        let key: [u8; 32] =
            bytes.as_slice().try_into().map_err(|_| SealError::BadKeyFile(name, "not 32 bytes"))?;
        let key = Zeroizing::new(key);
        Ok(Self { aead: Aead::new(&(*key).into()) })
    }

    /// Seals `plaintext` for record `id`: random nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE];
        crate::rng::fill(&mut nonce).map_err(|_| SealError::Rng)?;
        let mut out = Vec::with_capacity(NONCE + plaintext.len() + TAG);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .aead
            .encrypt_inout_detached(&nonce.into(), id, out[NONCE..].as_mut().into())
            .map_err(|_| SealError::Open)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a value sealed for `id`.
    pub fn open(&self, id: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < NONCE + TAG {
            return Err(SealError::Open);
        }
        let (nonce, rest) = sealed.split_at(NONCE);
        let (ct, tag) = rest.split_at(rest.len() - TAG);
        let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| SealError::Open)?;
        let tag = ccm::aead::Tag::<Aead>::try_from(tag).map_err(|_| SealError::Open)?;
        let mut buf = Zeroizing::new(ct.to_vec());
        self.aead
            .decrypt_inout_detached(&nonce.into(), id, buf.as_mut_slice().into(), &tag)
            .map_err(|_| SealError::Open)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_refusals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kek");
        let kek = Kek::load_or_create(&path).expect("kek");
        assert_eq!(fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        let sealed = kek.seal(b"dev1", b"master secret").expect("seal");
        assert!(!sealed.windows(6).any(|w| w == b"master"), "plaintext visible");
        assert_eq!(kek.open(b"dev1", &sealed).expect("open").as_slice(), b"master secret");
        assert!(matches!(kek.open(b"dev2", &sealed), Err(SealError::Open)), "bound to the id");
        let mut t = sealed.clone();
        t[NONCE] ^= 1;
        assert!(matches!(kek.open(b"dev1", &t), Err(SealError::Open)));
        // Reloading the same file gives the same key.
        let again = Kek::load_or_create(&path).expect("reload");
        assert_eq!(again.open(b"dev1", &sealed).expect("open").as_slice(), b"master secret");
        // A world-readable key file is refused.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(Kek::load_or_create(&path), Err(SealError::BadKeyFile(..))));
    }
}
