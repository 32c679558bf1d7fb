//! The manufacturer's signing-key files: generated with the OS RNG, the secret written 0600 and
//! never printed or logged, loads refused when the file is accessible to others (EN 303 645 5.4-1).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use protocol::update::{PublicKey, SigningKeyPair, UpdateError};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::{MakerError, io_err, write_atomic};

/// Secret signing key file in a key directory: 32 raw bytes, mode 0600.
pub const KEY_FILE: &str = "signing.key";
/// Public key file in a key directory: hex of the 33-byte compressed SEC1 point.
pub const PUB_FILE: &str = "signing.pub";

/// Generates a signing key into `dir` (created if needed): `signing.key` (32 raw secret bytes,
/// created 0600, never overwritten) and `signing.pub` (hex). Returns the public key. The secret
/// is never printed or logged.
pub fn keygen(dir: &Path) -> Result<PublicKey, MakerError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let key_path = dir.join(KEY_FILE);
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(MakerError::Rng)?;
    let key = SigningKeyPair::generate(&mut ChaCha20Rng::from_seed(seed));
    seed.fill(0);
    let mut file = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key_path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(MakerError::KeyExists(key_path));
        }
        Err(e) => return Err(MakerError::Io { path: key_path, source: e }),
    };
    let mut secret = key.to_bytes();
    let written = file.write_all(&secret).and_then(|()| file.sync_all());
    secret.fill(0);
    if let Err(source) = written {
        drop(file);
        let _ = fs::remove_file(&key_path);
        return Err(MakerError::Io { path: key_path, source });
    }
    let public = key.public();
    let pub_path = dir.join(PUB_FILE);
    let text = format!("{}\n", protocol::hex::encode(&public.to_sec1_compressed()));
    write_atomic(&pub_path, text.as_bytes())?;
    tracing::info!(kid = ?public.kid(), dir = %dir.display(), "generated manufacturer signing key");
    Ok(public)
}

/// Loads the signing key from `dir/signing.key`, refusing a file accessible to group or others.
pub fn load_key(dir: &Path) -> Result<SigningKeyPair, MakerError> {
    let path = dir.join(KEY_FILE);
    let mut secret = read_secret_file(&path, 32)?;
    let mut bytes = [0u8; 32];
    bytes.iter_mut().zip(&secret).for_each(|(b, s)| *b = *s);
    secret.fill(0);
    let key = SigningKeyPair::from_bytes(&bytes).map_err(MakerError::InvalidKey);
    bytes.fill(0);
    key
}

/// Reads the public key written by [`keygen`] from `dir/signing.pub`.
pub fn load_public_key(dir: &Path) -> Result<PublicKey, MakerError> {
    let path = dir.join(PUB_FILE);
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    let bytes = protocol::hex::decode(text.trim())
        .ok_or(MakerError::InvalidKey(UpdateError::InvalidKey))?;
    PublicKey::from_sec1(&bytes).map_err(MakerError::InvalidKey)
}

/// Reads a secret file of exactly `len` bytes that group and others cannot access.
fn read_secret_file(path: &Path, len: u64) -> Result<Vec<u8>, MakerError> {
    let file = File::open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    check_secret_mode(path, &meta)?;
    if meta.len() != len {
        return Err(MakerError::KeyLength { path: path.to_owned(), len: meta.len() });
    }
    let mut out = Vec::with_capacity(32);
    file.take(len + 1).read_to_end(&mut out).map_err(io_err(path))?;
    if out.len() as u64 != len {
        return Err(MakerError::KeyLength { path: path.to_owned(), len: out.len() as u64 });
    }
    Ok(out)
}

/// Reads a secret text file (at most 64 KiB) that group and others cannot access.
pub(super) fn read_secret_text(path: &Path) -> Result<Vec<u8>, MakerError> {
    let file = File::open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    check_secret_mode(path, &meta)?;
    let mut out = Vec::new();
    file.take(64 * 1024).read_to_end(&mut out).map_err(io_err(path))?;
    Ok(out)
}

fn check_secret_mode(path: &Path, meta: &fs::Metadata) -> Result<(), MakerError> {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(MakerError::KeyPermissions { path: path.to_owned(), mode });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maker::mode;

    #[test]
    fn keygen_writes_0600_refuses_overwrite_and_keeps_secret_out_of_pub() {
        let dir = tempfile::tempdir().expect("tempdir");
        let public = keygen(dir.path()).expect("keygen");
        let key_path = dir.path().join(KEY_FILE);
        assert_eq!(mode(&key_path), 0o600);
        let secret = fs::read(&key_path).expect("key");
        assert_eq!(secret.len(), 32);
        let pub_text = fs::read_to_string(dir.path().join(PUB_FILE)).expect("pub");
        assert_eq!(pub_text.trim(), protocol::hex::encode(&public.to_sec1_compressed()));
        assert!(!pub_text.contains(&protocol::hex::encode(&secret)));
        assert!(!pub_text.as_bytes().windows(32).any(|w| w == secret.as_slice()));
        assert_eq!(load_public_key(dir.path()).expect("pub loads"), public);

        let loaded = load_key(dir.path()).expect("loads");
        assert_eq!(loaded.public(), public);
        assert!(!format!("{loaded:?}").contains(&protocol::hex::encode(&secret)));

        assert!(matches!(keygen(dir.path()), Err(MakerError::KeyExists(p)) if p == key_path));
        assert_eq!(fs::read(&key_path).expect("key"), secret, "key unchanged");
    }

    #[test]
    fn load_key_refuses_loose_permissions_and_bad_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        keygen(dir.path()).expect("keygen");
        let key_path = dir.path().join(KEY_FILE);
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(matches!(
            load_key(dir.path()),
            Err(MakerError::KeyPermissions { mode: 0o640, .. })
        ));
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o604)).expect("chmod");
        assert!(matches!(load_key(dir.path()), Err(MakerError::KeyPermissions { .. })));
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(&key_path, [1u8; 31]).expect("write");
        assert!(matches!(load_key(dir.path()), Err(MakerError::KeyLength { len: 31, .. })));
        fs::write(&key_path, [0u8; 32]).expect("write");
        assert!(matches!(load_key(dir.path()), Err(MakerError::InvalidKey(_))));
        let missing = tempfile::tempdir().expect("tempdir");
        assert!(matches!(load_key(missing.path()), Err(MakerError::Io { .. })));
    }
}
