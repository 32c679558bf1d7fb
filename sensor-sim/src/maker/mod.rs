//! The simulated manufacturer: signing-key files ([`keys`]), signed manifests and advisories
//! published to a feed directory ([`mod@publish`]), the feed's TLS certificate ([`tls`]) and its
//! HTTPS server ([`serve`]). EN 303 645 5.3-7/5.3-10 (TR 103 621 6.17/6.18: signed updates,
//! delivered over a secure channel), 5.4-1.

pub mod keys;
pub mod publish;
pub mod serve;
pub mod tls;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::update::UpdateError;

pub use keys::{KEY_FILE, PUB_FILE, keygen, load_key, load_public_key};
pub use publish::{Release, publish, publish_advisory, publish_signed, read_index, sign_release};
pub use serve::{FeedServer, serve_feed};
pub use tls::{FeedTls, TLS_CERT_FILE, TLS_KEY_FILE, feed_tls};

/// Why a manufacturer operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MakerError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// `keygen` found a key already there.
    #[error("{0} already exists; refusing to overwrite a signing key")]
    KeyExists(PathBuf),
    /// A secret key file is readable or writable by group or others.
    #[error(
        "{path} has mode {mode:o}; a secret key file must not be accessible to group or others"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    /// The key file is not exactly 32 bytes.
    #[error("{path} is {len} bytes, not a 32-byte signing key")]
    KeyLength { path: PathBuf, len: u64 },
    /// The 32 bytes are not a valid P-256 scalar.
    #[error("invalid signing key: {0}")]
    InvalidKey(UpdateError),
    /// The operating system's random number generator failed.
    #[error("operating system random number generator: {0}")]
    Rng(getrandom::Error),
    /// The model designation cannot name a feed file.
    #[error("model designation {0:?} cannot name a feed file (allowed: A-Z a-z 0-9 . _ -)")]
    UnsafeModel(String),
    /// The image does not fit in a manifest.
    #[error("image of {0} bytes is larger than a manifest can describe")]
    ImageTooLarge(usize),
    /// The manifest or advisory breaks a field limit; receivers would refuse it.
    #[error("refusing to publish: {0}")]
    Invalid(UpdateError),
    /// The feed index could not be read or written as JSON.
    #[error("feed index {path}: {source}")]
    FeedIndex { path: PathBuf, source: serde_json::Error },
    /// Only one of the TLS certificate and key files exists.
    #[error("{0} is missing; the feed needs both {TLS_CERT_FILE} and {TLS_KEY_FILE}")]
    TlsIncomplete(PathBuf),
    /// The certificate could not be generated.
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The TLS certificate or key is not valid PEM.
    #[error("feed TLS PEM: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    /// A TLS file is not text.
    #[error("{0} is not a PEM file")]
    NotPem(PathBuf),
    /// The certificate PEM holds no certificate.
    #[error("feed TLS PEM holds no certificate")]
    NoCertificate,
    /// rustls refused the certificate or key.
    #[error("feed TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The server socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MakerError + '_ {
    move |source| MakerError::Io { path: path.to_owned(), source }
}

/// Writes `path` atomically: a hidden temporary file in the same directory (never served: the
/// server refuses names starting with a dot), fsync, rename, fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), MakerError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let unique = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{unique}", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    written.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        MakerError::Io { path: path.to_owned(), source }
    })
}

#[cfg(test)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}
