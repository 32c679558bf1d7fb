//! The simulated manufacturer: signing-key files, deterministic test firmware, signed manifests
//! and advisories published to a feed directory, and the HTTPS (TLS 1.3) feed server. EN 303 645
//! 5.3-7/5.3-10 (TR 103 621 6.17/6.18: signed updates, delivered over a secure channel), 5.4-1.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use protocol::time::UnixTime;
use protocol::update::{Advisory, Manifest, PublicKey, SigningKeyPair, UpdateError};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

/// Secret signing key file in a key directory: 32 raw bytes, mode 0600.
pub const KEY_FILE: &str = "signing.key";
/// Public key file in a key directory: hex of the 33-byte compressed SEC1 point.
pub const PUB_FILE: &str = "signing.pub";
/// The feed's index, at the feed root.
pub const INDEX_FILE: &str = "feed.json";
/// Feed TLS certificate (PEM) in a TLS directory.
pub const TLS_CERT_FILE: &str = "feed.crt";
/// Feed TLS private key (PEM, mode 0600) in a TLS directory.
pub const TLS_KEY_FILE: &str = "feed.key";
/// Length of the firmware header written by [`build_image`].
pub const IMAGE_HEADER_LEN: usize = 16;
/// Magic bytes that start every simulated firmware image.
pub const IMAGE_MAGIC: &[u8; 8] = b"HEARTHFW";
/// Header flag bit: the image fails its post-boot health check.
pub const FLAG_FAILS_HEALTH_CHECK: u32 = 1;
/// Largest request line plus headers the feed server reads.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Largest file the feed server sends.
pub const MAX_BODY: u64 = 32 * 1024 * 1024;

/// Connections served at once; further ones are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// Deadline for the TLS handshake and the request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for sending a response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

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

// ---------------------------------------------------------------------------------------------
// Signing keys
// ---------------------------------------------------------------------------------------------

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

fn check_secret_mode(path: &Path, meta: &fs::Metadata) -> Result<(), MakerError> {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(MakerError::KeyPermissions { path: path.to_owned(), mode });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Firmware images
// ---------------------------------------------------------------------------------------------

/// Builds a deterministic pseudo-random firmware image of `size` bytes (at least the 16-byte
/// header) for `model` at `version`: `HEARTHFW`, version (u32 BE), flags (u32 BE; bit 0 set when
/// `!healthy`: the sensor's post-boot health check fails), then bytes seeded from (model, version).
pub fn build_image(model: &str, version: u32, size: usize, healthy: bool) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(b"hearth simulated firmware\0");
    hasher.update((model.len() as u64).to_be_bytes());
    hasher.update(model.as_bytes());
    hasher.update(version.to_be_bytes());
    let seed: [u8; 32] = hasher.finalize().into();
    let mut image = vec![0u8; size.max(IMAGE_HEADER_LEN)];
    ChaCha20Rng::from_seed(seed).fill_bytes(&mut image);
    let flags = if healthy { 0 } else { FLAG_FAILS_HEALTH_CHECK };
    let mut header = [0u8; IMAGE_HEADER_LEN];
    header[..8].copy_from_slice(IMAGE_MAGIC);
    header[8..12].copy_from_slice(&version.to_be_bytes());
    header[12..].copy_from_slice(&flags.to_be_bytes());
    image[..IMAGE_HEADER_LEN].copy_from_slice(&header);
    image
}

/// Whether a simulated sensor booting `image` fails its health check: the flag is set, or the
/// image has no valid header.
pub fn image_fails_health_check(image: &[u8]) -> bool {
    let Some(header) = image.get(..IMAGE_HEADER_LEN) else { return true };
    if &header[..8] != IMAGE_MAGIC {
        return true;
    }
    let flags = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
    flags & FLAG_FAILS_HEALTH_CHECK != 0
}

// ---------------------------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------------------------

/// What the manufacturer states about a release; the image size and digest come from the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub model: String,
    pub version: u32,
    /// Lowest installed version the update applies to.
    pub min_version: u32,
    /// Freeze protection: the manifest is refused after this time.
    pub expires: UnixTime,
    /// Installing interrupts the device (5.3-12).
    pub disruptive: bool,
    /// Risks mitigated, shown to the owner (5.3-11).
    pub risks: String,
    pub released: UnixTime,
}

/// One release in the feed index; paths are relative to the feed root.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FeedEntry {
    pub model: String,
    pub version: u32,
    /// e.g. `manifests/hearth-thermo-1-2.cose`.
    pub manifest: String,
    /// e.g. `images/hearth-thermo-1-2.bin`.
    pub image: String,
    /// Image size in bytes.
    pub size: u64,
}

/// The feed's `feed.json`: every published release and advisory (relative paths).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FeedIndex {
    pub releases: Vec<FeedEntry>,
    pub advisories: Vec<String>,
}

/// Signs and publishes a release: writes `images/<model>-<version>.bin` and
/// `manifests/<model>-<version>.cose` under `feed_dir`, then atomically rewrites `feed.json`.
/// Republishing the same model and version replaces the earlier entry.
pub fn publish(
    feed_dir: &Path,
    key: &SigningKeyPair,
    release: &Release,
    image: &[u8],
) -> Result<FeedEntry, MakerError> {
    if !is_safe_name(&release.model) {
        return Err(MakerError::UnsafeModel(release.model.clone()));
    }
    let image_size =
        u32::try_from(image.len()).map_err(|_| MakerError::ImageTooLarge(image.len()))?;
    let manifest = Manifest {
        model: release.model.clone(),
        version: release.version,
        min_version: release.min_version,
        image_size,
        image_sha256: Sha256::digest(image).into(),
        expires: release.expires,
        disruptive: release.disruptive,
        risks_mitigated: release.risks.clone(),
        released: release.released,
    };
    manifest.validate().map_err(MakerError::Invalid)?;
    let stem = format!("{}-{}", release.model, release.version);
    let entry = FeedEntry {
        model: release.model.clone(),
        version: release.version,
        manifest: format!("manifests/{stem}.cose"),
        image: format!("images/{stem}.bin"),
        size: image.len() as u64,
    };
    // Image before manifest before index: the index never lists a file that is not there.
    write_feed_file(feed_dir, &entry.image, image)?;
    write_feed_file(feed_dir, &entry.manifest, &manifest.sign(key))?;
    let mut index = read_index(feed_dir)?;
    index.releases.retain(|e| !(e.model == entry.model && e.version == entry.version));
    index.releases.push(entry.clone());
    index.releases.sort_by(|a, b| (&a.model, a.version).cmp(&(&b.model, b.version)));
    write_index(feed_dir, &index)?;
    tracing::info!(model = %entry.model, version = entry.version, "published release");
    Ok(entry)
}

/// Signs and publishes an advisory as `advisories/<n>.cose` (next free number) and lists it in
/// `feed.json`. Returns its path relative to the feed root.
pub fn publish_advisory(
    feed_dir: &Path,
    key: &SigningKeyPair,
    advisory: &Advisory,
) -> Result<String, MakerError> {
    advisory.validate().map_err(MakerError::Invalid)?;
    let mut index = read_index(feed_dir)?;
    let mut n = index.advisories.len() + 1;
    let rel = loop {
        let rel = format!("advisories/{n}.cose");
        if !index.advisories.contains(&rel) && !feed_dir.join(&rel).exists() {
            break rel;
        }
        n += 1;
    };
    write_feed_file(feed_dir, &rel, &advisory.sign(key))?;
    index.advisories.push(rel.clone());
    write_index(feed_dir, &index)?;
    tracing::info!(model = %advisory.model, path = %rel, "published advisory");
    Ok(rel)
}

/// Reads `feed.json`, or an empty index when there is none yet.
pub fn read_index(feed_dir: &Path) -> Result<FeedIndex, MakerError> {
    let path = feed_dir.join(INDEX_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|source| MakerError::FeedIndex { path, source })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FeedIndex::default()),
        Err(source) => Err(MakerError::Io { path, source }),
    }
}

fn write_index(feed_dir: &Path, index: &FeedIndex) -> Result<(), MakerError> {
    let path = feed_dir.join(INDEX_FILE);
    let mut json = serde_json::to_vec_pretty(index)
        .map_err(|source| MakerError::FeedIndex { path: path.clone(), source })?;
    json.push(b'\n');
    write_atomic(&path, &json)
}

fn write_feed_file(feed_dir: &Path, rel: &str, bytes: &[u8]) -> Result<(), MakerError> {
    let path = feed_dir.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    write_atomic(&path, bytes)
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

/// A feed file name: `[A-Za-z0-9._-]+`, not starting with a dot (no `.`, `..`, hidden files).
fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

// ---------------------------------------------------------------------------------------------
// Feed TLS certificate
// ---------------------------------------------------------------------------------------------

/// The feed server's self-signed certificate and key, in PEM. The hub pins `cert_pem`.
#[derive(Clone)]
pub struct FeedTls {
    pub cert_pem: String,
    /// **Secret.**
    pub key_pem: String,
}

impl fmt::Debug for FeedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedTls").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// Loads `dir/feed.crt` and `dir/feed.key`, or creates a self-signed certificate for `hostnames`
/// (DNS names or IP addresses, which become IP SANs) when neither exists. The key is 0600.
pub fn feed_tls(dir: &Path, hostnames: &[&str]) -> Result<FeedTls, MakerError> {
    let cert_path = dir.join(TLS_CERT_FILE);
    let key_path = dir.join(TLS_KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
            let key_bytes = read_secret_text(&key_path)?;
            let key_pem =
                String::from_utf8(key_bytes).map_err(|_| MakerError::NotPem(key_path.clone()))?;
            let tls = FeedTls { cert_pem, key_pem };
            parse_tls(&tls)?;
            Ok(tls)
        }
        (true, false) => Err(MakerError::TlsIncomplete(key_path)),
        (false, true) => Err(MakerError::TlsIncomplete(cert_path)),
        (false, false) => {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            let names: Vec<String> = hostnames.iter().map(|h| (*h).to_owned()).collect();
            let mut params = rcgen::CertificateParams::new(names)?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "Hearth simulated manufacturer update feed");
            let key = rcgen::KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            let tls = FeedTls { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)
                .map_err(io_err(&key_path))?;
            file.write_all(tls.key_pem.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_err(&key_path))?;
            write_atomic(&cert_path, tls.cert_pem.as_bytes())?;
            tracing::info!(path = %cert_path.display(), "generated feed TLS certificate");
            Ok(tls)
        }
    }
}

fn read_secret_text(path: &Path) -> Result<Vec<u8>, MakerError> {
    let file = File::open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    check_secret_mode(path, &meta)?;
    let mut out = Vec::new();
    file.take(64 * 1024).read_to_end(&mut out).map_err(io_err(path))?;
    Ok(out)
}

fn parse_tls(
    tls: &FeedTls,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), MakerError> {
    let certs =
        CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(MakerError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())?;
    Ok((certs, key))
}

// ---------------------------------------------------------------------------------------------
// Feed server
// ---------------------------------------------------------------------------------------------

/// A running feed server.
#[derive(Debug)]
pub struct FeedServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Requests answered so far (any status), counted before the response is sent.
    pub requests: Arc<AtomicU64>,
    /// Ends after shutdown; dropping open connections.
    pub task: JoinHandle<()>,
}

/// Serves `feed_dir` over HTTPS (TLS 1.3 only) on `bind`: `GET /feed.json`,
/// `/manifests/<name>`, `/images/<name>`, `/advisories/<name>` with `<name>` in
/// `[A-Za-z0-9._-]+` (no leading dot). Anything else is 404, other methods 405, malformed
/// requests 400. Stops when `shutdown` turns true or its sender is dropped.
pub async fn serve_feed(
    feed_dir: PathBuf,
    tls: &FeedTls,
    bind: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) -> Result<FeedServer, MakerError> {
    let (certs, key) = parse_tls(tls)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener =
        TcpListener::bind(bind).await.map_err(|source| MakerError::Bind { addr: bind, source })?;
    let addr = listener.local_addr().map_err(|source| MakerError::Bind { addr: bind, source })?;
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    let root = Arc::new(feed_dir);
    let task = tokio::spawn(async move {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|&stop| stop) => break,
                Some(_) = connections.join_next() => {}
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "feed server accept failed");
                            continue;
                        }
                    };
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "feed server busy; closing connection");
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let root = root.clone();
                    let counter = counter.clone();
                    connections.spawn(async move {
                        if let Err(e) = serve_connection(acceptor, tcp, &root, &counter).await {
                            tracing::debug!(%peer, error = %e, "feed connection ended");
                        }
                        drop(permit);
                    });
                }
            }
        }
        tracing::info!(%addr, "feed server stopped");
    });
    tracing::info!(%addr, "feed server listening");
    Ok(FeedServer { addr, requests, task })
}

/// Why a connection ended without a complete exchange (logged only).
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Io(#[from] io::Error),
}

async fn serve_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    root: &Path,
    counter: &AtomicU64,
) -> Result<(), ConnError> {
    let (mut stream, head) = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut stream = acceptor.accept(tcp).await?;
        let head = read_request_head(&mut stream).await;
        Ok::<_, io::Error>((stream, head))
    })
    .await
    .map_err(|_| ConnError::Timeout)??;
    let response = match head {
        Ok(head) => match parse_request(&head) {
            Ok(route) => respond(root, route).await,
            Err(e) => {
                tracing::debug!(error = %e, "malformed request");
                Response::status(e.status())
            }
        },
        Err(HeadError::TooLarge) => Response::status(Status::HeadersTooLarge),
        Err(HeadError::Eof) => return Ok(()),
        Err(HeadError::Io(e)) => return Err(e.into()),
    };
    counter.fetch_add(1, Ordering::SeqCst);
    tokio::time::timeout(RESPONSE_TIMEOUT, async {
        stream.write_all(&response.head()).await?;
        stream.write_all(&response.body).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| ConnError::Timeout)??;
    Ok(())
}

#[derive(Debug)]
enum HeadError {
    TooLarge,
    Eof,
    Io(io::Error),
}

/// Reads up to and including the blank line ending the request head (at most 8 KiB).
async fn read_request_head<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = r.read(&mut chunk).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Eof);
        }
        let searched = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = searched + at + 4;
            if end > MAX_REQUEST_HEAD {
                return Err(HeadError::TooLarge);
            }
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() >= MAX_REQUEST_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// An HTTP status the feed server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    HeadersTooLarge,
    Internal,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::Ok => "200 OK",
            Status::BadRequest => "400 Bad Request",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::HeadersTooLarge => "431 Request Header Fields Too Large",
            Status::Internal => "500 Internal Server Error",
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("method not allowed")]
    Method,
    #[error("no such feed file")]
    NotFound,
}

impl RequestError {
    fn status(self) -> Status {
        match self {
            RequestError::Malformed(_) => Status::BadRequest,
            RequestError::Method => Status::MethodNotAllowed,
            RequestError::NotFound => Status::NotFound,
        }
    }
}

/// A file the feed serves, relative to the feed root; only [`parse_request`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route(String);

/// Parses a request head (through the blank line) into the file to serve. Strict: CRLF line
/// ends, `GET <target> HTTP/1.x`, token header names, exactly one Host for HTTP/1.1, no body.
pub(crate) fn parse_request(head: &[u8]) -> Result<Route, RequestError> {
    let text = std::str::from_utf8(head).map_err(|_| RequestError::Malformed("not ASCII"))?;
    let text = text.strip_suffix("\r\n\r\n").ok_or(RequestError::Malformed("unterminated head"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Malformed("request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(RequestError::Malformed("method"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(RequestError::Malformed("HTTP version"));
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RequestError::Malformed("request target"));
    }
    let mut hosts = 0;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(RequestError::Malformed("header line"))?;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(RequestError::Malformed("header name"));
        }
        if !value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
            return Err(RequestError::Malformed("header value"));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && value != "0")
        {
            return Err(RequestError::Malformed("request body"));
        }
    }
    if hosts > 1 || (hosts == 0 && version == "HTTP/1.1") {
        return Err(RequestError::Malformed("Host header"));
    }
    if method != "GET" {
        return Err(RequestError::Method);
    }
    route(target).ok_or(RequestError::NotFound)
}

fn route(target: &str) -> Option<Route> {
    if target == "/feed.json" {
        return Some(Route(INDEX_FILE.to_owned()));
    }
    let (dir, name) = target.strip_prefix('/')?.split_once('/')?;
    let known = matches!(dir, "manifests" | "images" | "advisories");
    (known && is_safe_name(name)).then(|| Route(format!("{dir}/{name}")))
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

struct Response {
    status: Status,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn status(status: Status) -> Self {
        let body = format!("{}\n", status.line()).into_bytes();
        Response { status, content_type: "text/plain; charset=utf-8", body }
    }

    fn head(&self) -> Vec<u8> {
        let allow = if self.status == Status::MethodNotAllowed { "Allow: GET\r\n" } else { "" };
        format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status.line(),
            self.content_type,
            self.body.len()
        )
        .into_bytes()
    }
}

async fn respond(root: &Path, route: Route) -> Response {
    let path = root.join(&route.0);
    match read_feed_file(&path).await {
        Ok(Some(body)) => {
            let content_type = if route.0.ends_with(".json") {
                "application/json"
            } else if route.0.ends_with(".cose") {
                "application/cose"
            } else {
                "application/octet-stream"
            };
            tracing::debug!(path = %route.0, len = body.len(), "feed GET");
            Response { status: Status::Ok, content_type, body }
        }
        Ok(None) => Response::status(Status::NotFound),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "feed file unreadable");
            Response::status(Status::Internal)
        }
    }
}

/// Reads a regular file (not a symlink) of at most [`MAX_BODY`] bytes; `None` if absent.
async fn read_feed_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut body = Vec::new();
    file.take(MAX_BODY + 1).read_to_end(&mut body).await?;
    if body.len() as u64 > MAX_BODY {
        return Err(io::Error::new(io::ErrorKind::FileTooLarge, "feed file exceeds 32 MiB"));
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::update::{
        Severity, TrustAnchors, verify_advisory, verify_image, verify_manifest,
    };

    const NOW: UnixTime = UnixTime(1_750_000_000);

    fn release(version: u32) -> Release {
        Release {
            model: "hearth-thermo-1".into(),
            version,
            min_version: 1,
            expires: UnixTime(NOW.0 + 86_400 * 30),
            disruptive: false,
            risks: "Fixes CVE-2099-0001.".into(),
            released: UnixTime(NOW.0 - 60),
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

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

    #[test]
    fn build_image_is_deterministic_and_health_flag_round_trips() {
        let a = build_image("hearth-thermo-1", 2, 4096, true);
        assert_eq!(a, build_image("hearth-thermo-1", 2, 4096, true));
        assert_eq!(a.len(), 4096);
        assert_eq!(&a[..8], IMAGE_MAGIC);
        assert_eq!(a[8..12], 2u32.to_be_bytes());
        assert!(!image_fails_health_check(&a));
        assert_ne!(a[16..], build_image("hearth-thermo-1", 3, 4096, true)[16..]);
        assert_ne!(a[16..], build_image("hearth-door-1", 2, 4096, true)[16..]);

        let sick = build_image("hearth-thermo-1", 2, 4096, false);
        assert!(image_fails_health_check(&sick));
        assert_eq!(sick[16..], a[16..], "only the flag differs");

        assert!(image_fails_health_check(&a[..15]));
        assert!(image_fails_health_check(&[0u8; 64]));
        assert_eq!(build_image("m", 1, 0, true).len(), IMAGE_HEADER_LEN);
    }

    #[test]
    fn published_manifest_verifies_and_matches_image() {
        let keys = tempfile::tempdir().expect("tempdir");
        let feed = tempfile::tempdir().expect("tempdir");
        keygen(keys.path()).expect("keygen");
        let key = load_key(keys.path()).expect("key");
        let image = build_image("hearth-thermo-1", 2, 10_000, true);
        let entry = publish(feed.path(), &key, &release(2), &image).expect("publish");
        assert_eq!(entry.manifest, "manifests/hearth-thermo-1-2.cose");
        assert_eq!(entry.image, "images/hearth-thermo-1-2.bin");
        assert_eq!(entry.size, 10_000);

        let mut anchors = TrustAnchors::new();
        anchors.add("hearth-thermo-1", key.public());
        let env = fs::read(feed.path().join(&entry.manifest)).expect("manifest");
        let manifest = verify_manifest(&env, &anchors, NOW).expect("manifest verifies");
        assert_eq!(manifest.version(), 2);
        assert_eq!(manifest.risks_mitigated(), "Fixes CVE-2099-0001.");
        let served = fs::read(feed.path().join(&entry.image)).expect("image");
        assert_eq!(verify_image(&manifest, &served).expect("digest matches").bytes(), &image[..]);
        let mut tampered = served.clone();
        tampered[100] ^= 1;
        assert_eq!(verify_image(&manifest, &tampered), Err(UpdateError::DigestMismatch));

        let stranger = SigningKeyPair::from_bytes(&[7u8; 32]).expect("key");
        let mut other = TrustAnchors::new();
        other.add("hearth-thermo-1", stranger.public());
        assert_eq!(verify_manifest(&env, &other, NOW), Err(UpdateError::UnknownKey));

        // A second release is added; republishing version 2 replaces its entry.
        let e3 =
            publish(feed.path(), &key, &release(3), &build_image("hearth-thermo-1", 3, 64, true))
                .expect("publish 3");
        publish(feed.path(), &key, &release(2), &image).expect("republish");
        let index = read_index(feed.path()).expect("index");
        assert_eq!(index.releases, vec![entry, e3]);
        let leftovers: Vec<_> = fs::read_dir(feed.path().join("manifests"))
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "no temporary files left: {leftovers:?}");
    }

    #[test]
    fn publish_refuses_unsafe_names_and_invalid_manifests() {
        let feed = tempfile::tempdir().expect("tempdir");
        let key = SigningKeyPair::from_bytes(&[7u8; 32]).expect("key");
        let image = build_image("x", 1, 64, true);
        for model in ["../evil", "a/b", ".hidden", "with space", ""] {
            let r = Release { model: model.into(), ..release(1) };
            assert!(matches!(
                publish(feed.path(), &key, &r, &image),
                Err(MakerError::UnsafeModel(_))
            ));
        }
        let bad = Release { min_version: 5, ..release(2) };
        assert!(matches!(
            publish(feed.path(), &key, &bad, &image),
            Err(MakerError::Invalid(UpdateError::InvalidVersionRange))
        ));
        assert!(matches!(
            publish(feed.path(), &key, &release(2), &[]),
            Err(MakerError::Invalid(UpdateError::ImageSizeOutOfRange(0)))
        ));
        assert!(!feed.path().join(INDEX_FILE).exists());
    }

    #[test]
    fn advisories_are_signed_and_listed() {
        let feed = tempfile::tempdir().expect("tempdir");
        let key = SigningKeyPair::from_bytes(&[7u8; 32]).expect("key");
        let adv = Advisory {
            model: "hearth-thermo-1".into(),
            affected_low: 1,
            affected_high: 2,
            severity: Severity::High,
            fixed_in: Some(3),
            text: "CoAP parser overflow".into(),
            issued: NOW,
        };
        assert_eq!(publish_advisory(feed.path(), &key, &adv).expect("a1"), "advisories/1.cose");
        assert_eq!(publish_advisory(feed.path(), &key, &adv).expect("a2"), "advisories/2.cose");
        let index = read_index(feed.path()).expect("index");
        assert_eq!(index.advisories, vec!["advisories/1.cose", "advisories/2.cose"]);
        let mut anchors = TrustAnchors::new();
        anchors.add("hearth-thermo-1", key.public());
        let env = fs::read(feed.path().join("advisories/1.cose")).expect("file");
        assert!(verify_advisory(&env, &anchors, NOW).is_ok());
        let bad = Advisory { fixed_in: Some(2), ..adv };
        assert!(matches!(publish_advisory(feed.path(), &key, &bad), Err(MakerError::Invalid(_))));
    }

    #[test]
    fn feed_tls_is_created_0600_reused_and_debug_hides_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = feed_tls(dir.path(), &["localhost", "127.0.0.1"]).expect("tls");
        assert_eq!(mode(&dir.path().join(TLS_KEY_FILE)), 0o600);
        assert!(tls.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(tls.key_pem.contains("PRIVATE KEY"));
        let debug = format!("{tls:?}");
        assert!(!debug.contains(&tls.key_pem) && !debug.contains("PRIVATE KEY"));
        let again = feed_tls(dir.path(), &["localhost"]).expect("reuse");
        assert_eq!(again.cert_pem, tls.cert_pem);
        assert_eq!(again.key_pem, tls.key_pem);
        fs::set_permissions(dir.path().join(TLS_KEY_FILE), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        assert!(matches!(feed_tls(dir.path(), &[]), Err(MakerError::KeyPermissions { .. })));
        fs::remove_file(dir.path().join(TLS_KEY_FILE)).expect("rm");
        assert!(matches!(feed_tls(dir.path(), &[]), Err(MakerError::TlsIncomplete(_))));
    }

    fn req(target: &str) -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: feed\r\nConnection: close\r\n\r\n").into_bytes()
    }

    #[test]
    fn request_parser_routes_only_feed_files() {
        let ok = |t: &str| parse_request(&req(t)).map(|r| r.0);
        assert_eq!(ok("/feed.json"), Ok("feed.json".into()));
        assert_eq!(
            ok("/manifests/hearth-thermo-1-2.cose"),
            Ok("manifests/hearth-thermo-1-2.cose".into())
        );
        assert_eq!(ok("/images/x_1.bin"), Ok("images/x_1.bin".into()));
        assert_eq!(ok("/advisories/1.cose"), Ok("advisories/1.cose".into()));
        for bad in [
            "/../feed.json",
            "/manifests/../feed.json",
            "/manifests/..",
            "/manifests/.feed.json.tmp-1",
            "/%2e%2e/feed.json",
            "/manifests/%2e%2e",
            "/etc/passwd",
            "/images/a/b",
            "/images/",
            "/feed.json?x=1",
            "/",
            "//feed.json",
            "/keys/signing.key",
        ] {
            assert_eq!(ok(bad), Err(RequestError::NotFound), "{bad}");
        }
    }

    #[test]
    fn request_parser_refuses_malformed_and_other_methods() {
        let post = b"POST /feed.json HTTP/1.1\r\nHost: f\r\n\r\n";
        assert_eq!(parse_request(post), Err(RequestError::Method));
        assert_eq!(
            parse_request(post).map_err(RequestError::status),
            Err(Status::MethodNotAllowed)
        );
        let http10 = b"GET /feed.json HTTP/1.0\r\n\r\n";
        assert!(parse_request(http10).is_ok());
        let cases: &[&[u8]] = &[
            b"GET /feed.json HTTP/1.1\r\n\r\n", // no Host
            b"GET /feed.json HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", // two Hosts
            b"GET /feed.json\r\nHost: a\r\n\r\n",
            b"GET  /feed.json HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /feed.json HTTP/2\r\nHost: a\r\n\r\n",
            b"get /feed.json HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET feed.json HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /feed.json HTTP/1.1\nHost: a\n\n",
            b"GET /feed.json HTTP/1.1\r\nHost a\r\n\r\n",
            b"GET /feed.json HTTP/1.1\r\n Host: a\r\n\r\n",
            b"GET /feed.json HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /feed.json HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
            b"GET /feed.json HTTP/1.1\r\nHost: \xff\r\n\r\n",
            b"GET /f\xc3\xa9ed.json HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\n\r\n",
            b"",
        ];
        for case in cases {
            let r = parse_request(case);
            assert!(
                matches!(r, Err(RequestError::Malformed(_))),
                "{:?}: {r:?}",
                case.escape_ascii()
            );
        }
    }

    #[tokio::test]
    async fn request_head_reader_enforces_the_8_kib_limit() {
        let mut ok = &b"GET /feed.json HTTP/1.1\r\nHost: a\r\n\r\nextra"[..];
        let head = read_request_head(&mut ok).await.expect("head");
        assert!(head.ends_with(b"\r\n\r\n") && parse_request(&head).is_ok());
        let mut big = vec![b'a'; MAX_REQUEST_HEAD + 10];
        big.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(read_request_head(&mut &big[..]).await, Err(HeadError::TooLarge)));
        let endless = vec![b'a'; 100_000];
        assert!(matches!(read_request_head(&mut &endless[..]).await, Err(HeadError::TooLarge)));
        assert!(matches!(read_request_head(&mut &b"GET / HT"[..]).await, Err(HeadError::Eof)));
    }
}
