//! The hub's client for the manufacturer's update feed: HTTP/1.1 GETs (hyper) over TLS 1.3
//! (rustls with ring) trusting only the pinned certificate, with size limits and deadlines, the
//! randomized check schedule and the checker's status (its loop is in `check`). EN 303 645
//! 5.3-5 and 5.3-7 (TR 103 621 6.13: update checks at a randomized time), 5.13-1 (bounded input
//! parsing).

pub(crate) mod check;

use std::error::Error as _;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Body as _, Bytes};
use hyper::header::{HeaderValue, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use protocol::update::feed::{FeedIndex, INDEX_FILE, MAX_FILE_LEN, MAX_INDEX_LEN, is_safe_path};
use rand_core::CryptoRng;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;

/// Largest response status line plus headers (hyper's read buffer; it refuses a longer head).
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Most response header fields.
const MAX_RESPONSE_HEADERS: usize = 32;
/// Default deadline for one whole request (connect, handshake, response, body).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest check interval honoured by [`next_check_delay`] (about 34 000 years).
const MAX_INTERVAL_SECS: u64 = 1 << 40;

/// What the owner sees of the feed checker (`hub ctl updates`): when the feed was last checked
/// and with what outcome, and when the next check is due.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FeedStatus {
    /// The feed's URL.
    pub url: String,
    /// When the last check ended, whatever its outcome (Unix ms; none: not checked yet).
    pub last_checked_ms: Option<i64>,
    /// When a check last succeeded (Unix ms).
    pub last_ok_ms: Option<i64>,
    /// Why the last check failed (none: it succeeded, or there was none yet).
    pub last_error: Option<String>,
    /// Releases the feed listed at the last successful check.
    pub releases: usize,
    /// Advisories the feed listed at the last successful check.
    pub advisories: usize,
    /// When the next check is due (Unix ms; none: the checker is not running).
    pub next_check_ms: Option<i64>,
}

/// The feed checker's status, shared between the checker and the owner's API (none: no feed is
/// configured). The lock is held only to copy or update the status.
#[derive(Debug, Clone, Default)]
pub struct FeedState(Arc<std::sync::Mutex<Option<FeedStatus>>>);

impl FeedState {
    /// The current status (none: no feed configured).
    pub fn get(&self) -> Option<FeedStatus> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn update(&self, f: impl FnOnce(&mut FeedStatus)) {
        let mut guard = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(guard.get_or_insert_with(FeedStatus::default));
    }

    /// The checker starts for `url`.
    pub fn configured(&self, url: &str) {
        self.update(|s| s.url = url.to_owned());
    }

    /// A check ended at `now_ms`: the feed's index with `releases` and `advisories`, or why
    /// it failed; the next is due at `next_ms` (none: the checker gave up).
    pub fn checked(
        &self,
        outcome: Result<(usize, usize), String>,
        now_ms: i64,
        next_ms: Option<i64>,
    ) {
        self.update(|s| {
            s.last_checked_ms = Some(now_ms);
            s.next_check_ms = next_ms;
            match outcome {
                Ok((releases, advisories)) => {
                    s.last_ok_ms = Some(now_ms);
                    s.last_error = None;
                    s.releases = releases;
                    s.advisories = advisories;
                }
                Err(e) => s.last_error = Some(e),
            }
        });
    }
}

/// Why a feed request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The feed base URL is not `https://host[:port][/path/]`.
    #[error("invalid feed URL: {0}")]
    InvalidUrl(&'static str),
    /// The pinned certificate is not valid PEM.
    #[error("pinned feed certificate: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    /// The pinned certificate PEM holds no certificate.
    #[error("pinned feed certificate PEM holds no certificate")]
    NoCertificate,
    /// rustls refused the pinned certificate or the configuration.
    #[error("feed TLS configuration: {0}")]
    TlsConfig(rustls::Error),
    /// The relative path is not a safe feed path (see `protocol::update::feed::is_safe_path`).
    #[error("refusing feed path {0:?}")]
    InvalidPath(String),
    /// The TCP connection failed.
    #[error("connecting to the feed: {0}")]
    Connect(#[source] hyper_util::client::legacy::Error),
    /// TLS failed: handshake (e.g. certificate not the pinned one) or record layer.
    #[error("feed TLS: {0}")]
    Tls(rustls::Error),
    /// The request failed after connecting (malformed or missing response).
    #[error("feed request: {0}")]
    Request(#[source] hyper_util::client::legacy::Error),
    /// Reading the response body failed (connection lost, body shorter than announced, …).
    #[error("reading the feed response: {0}")]
    Body(#[source] hyper::Error),
    /// The whole request took longer than the deadline.
    #[error("feed did not answer within {0:?}")]
    Timeout(Duration),
    /// The feed answered with a status other than 200.
    #[error("feed answered HTTP {0}")]
    Status(u16),
    /// The announced body is larger than allowed for this request (refused before reading it).
    #[error("response body of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge { len: u64, limit: u64 },
    /// A body without a length grew past the limit while being read.
    #[error("response body exceeds the {limit}-byte limit")]
    BodyTooLarge { limit: u64 },
    /// `feed.json` is not a valid index.
    #[error("feed index: {0}")]
    Index(serde_json::Error),
}

/// The feed base URL, parsed: `https://` + authority + a path that starts and ends with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BaseUrl {
    authority: hyper::http::uri::Authority,
    path: String,
}

impl BaseUrl {
    /// The URL of `rel` (already checked, or a test's raw target) under the base path.
    fn join(&self, rel: &str) -> Result<Uri, FeedError> {
        Uri::builder()
            .scheme("https")
            .authority(self.authority.clone())
            .path_and_query(format!("{}{rel}", self.path))
            .build()
            .map_err(|_| FeedError::InvalidPath(rel.to_owned()))
    }
}

/// A client for one manufacturer feed, trusting only the pinned certificate.
#[derive(Clone)]
pub struct FeedClient {
    base: BaseUrl,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
}

impl fmt::Debug for FeedClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedClient")
            .field("host", &self.base.authority)
            .field("path", &self.base.path)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl FeedClient {
    /// A client for `base_url` (`https://host[:port][/path/]`; an IP address host is checked
    /// against the certificate's IP SANs) trusting only the certificate(s) in `trusted_cert_pem`:
    /// they are the only trust anchors, so a server presenting any other certificate fails.
    pub fn new(base_url: &str, trusted_cert_pem: &str) -> Result<Self, FeedError> {
        let base = parse_base_url(base_url)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(trusted_cert_pem.as_bytes()) {
            roots.add(cert?).map_err(FeedError::TlsConfig)?;
        }
        if roots.is_empty() {
            return Err(FeedError::NoCertificate);
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(FeedError::TlsConfig)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        // One request per connection, as the feed server closes after each response.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .http1_max_buf_size(MAX_RESPONSE_HEAD)
            .http1_max_headers(MAX_RESPONSE_HEADERS)
            .build(https);
        Ok(FeedClient { base, client, timeout: DEFAULT_TIMEOUT })
    }

    /// Replaces the per-request deadline (default 60 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Fetches and parses `feed.json` (at most 1 MiB).
    pub async fn index(&self) -> Result<FeedIndex, FeedError> {
        let bytes = self.fetch(INDEX_FILE, MAX_INDEX_LEN).await?;
        serde_json::from_slice(&bytes).map_err(FeedError::Index)
    }

    /// Fetches `rel_path` under the base URL (at most 32 MiB). The path must be a safe feed path
    /// (refused before any request otherwise): relative, `[A-Za-z0-9._-]` segments separated by
    /// single slashes, none of them empty, starting with `.` or containing `..`.
    pub async fn get(&self, rel_path: &str) -> Result<Vec<u8>, FeedError> {
        if !is_safe_path(rel_path) {
            return Err(FeedError::InvalidPath(rel_path.to_owned()));
        }
        self.fetch(rel_path, MAX_FILE_LEN).await
    }

    /// One GET of `rel` under the base path within the deadline, its body at most `limit` bytes.
    async fn fetch(&self, rel: &str, limit: u64) -> Result<Vec<u8>, FeedError> {
        let mut request = Request::get(self.base.join(rel)?)
            .body(Empty::new())
            .map_err(|_| FeedError::InvalidPath(rel.to_owned()))?;
        request.headers_mut().insert(USER_AGENT, HeaderValue::from_static("hearth-hub"));
        tokio::time::timeout(self.timeout, async {
            let response = self.client.request(request).await.map_err(classify)?;
            if response.status() != StatusCode::OK {
                return Err(FeedError::Status(response.status().as_u16()));
            }
            read_body(response.into_body(), limit).await
        })
        .await
        .map_err(|_| FeedError::Timeout(self.timeout))?
    }
}

/// Reads a body of at most `limit` bytes: an announced length is checked before reading, an
/// unannounced one while reading.
async fn read_body(mut body: hyper::body::Incoming, limit: u64) -> Result<Vec<u8>, FeedError> {
    if let Some(len) = body.size_hint().exact()
        && len > limit
    {
        return Err(FeedError::TooLarge { len, limit });
    }
    let capacity = body.size_hint().lower().min(1024 * 1024);
    let mut out = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(FeedError::Body)?.into_data() else { continue };
        if (out.len() + data.len()) as u64 > limit {
            return Err(FeedError::BodyTooLarge { limit });
        }
        out.extend_from_slice(&data);
    }
    Ok(out)
}

/// Sorts a client error into a TLS failure (a `rustls::Error` anywhere in its causes), a
/// connection failure, or a failed exchange.
fn classify(e: hyper_util::client::legacy::Error) -> FeedError {
    match e.source().and_then(find_tls_error) {
        Some(tls) => FeedError::Tls(tls.clone()),
        None if e.is_connect() => FeedError::Connect(e),
        None => FeedError::Request(e),
    }
}

/// The `rustls::Error` in `e`'s causes, looking inside `io::Error`s (whose `source()` skips
/// the error they wrap).
fn find_tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
        return find_tls_error(inner);
    }
    e.source().and_then(find_tls_error)
}

/// Whether `url` is a feed base URL the client accepts (checked at start with the config).
pub fn check_base_url(url: &str) -> Result<(), FeedError> {
    parse_base_url(url).map(|_| ())
}

/// Whether the PEM file at `path` can be read and holds at least one certificate to pin.
pub fn check_pinned_cert(path: &std::path::Path) -> Result<(), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut certs = CertificateDer::pem_slice_iter(&pem);
    match certs.next() {
        Some(Ok(_)) if certs.all(|c| c.is_ok()) => Ok(()),
        Some(_) => Err(format!("{} holds a malformed PEM certificate", path.display())),
        None => Err(format!("{} holds no PEM certificate", path.display())),
    }
}

fn parse_base_url(url: &str) -> Result<BaseUrl, FeedError> {
    let rest = url
        .get(..8)
        .filter(|scheme| scheme.eq_ignore_ascii_case("https://"))
        .map(|_| &url[8..])
        .ok_or(FeedError::InvalidUrl("must start with https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(FeedError::InvalidUrl("missing host"));
    }
    if !authority.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)) {
        return Err(FeedError::InvalidUrl("host may not carry user info or odd characters"));
    }
    let path_ok = path.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        && !path.contains("..")
        && !path.contains("//");
    if !path_ok {
        return Err(FeedError::InvalidUrl("path: only [A-Za-z0-9._/-], no query, no '..'"));
    }
    let path = if path.ends_with('/') { path.to_owned() } else { format!("{path}/") };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']').ok_or(FeedError::InvalidUrl("unclosed '['"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(FeedError::InvalidUrl("bad IPv6 address"));
            }
            let port = match rest {
                "" => None,
                _ => Some(rest.strip_prefix(':').ok_or(FeedError::InvalidUrl("after ']'"))?),
            };
            (host, port)
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port_ok = |p: &str| {
        (1..=5).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|p| p != 0)
    };
    if port.is_some_and(|p| !port_ok(p)) {
        return Err(FeedError::InvalidUrl("port"));
    }
    if ServerName::try_from(host).is_err() {
        return Err(FeedError::InvalidUrl("host is neither a DNS name nor an IP address"));
    }
    let authority = authority.parse().map_err(|_| FeedError::InvalidUrl("host"))?;
    Ok(BaseUrl { authority, path })
}

/// The delay before the next update check: uniform in `[interval/2, 3·interval/2)` (millisecond
/// resolution) so that fleets do not poll the feed in lockstep (TR 103 621 6.13). Intervals are
/// capped at 2^40 s.
pub fn next_check_delay(interval_secs: u64, rng: &mut impl CryptoRng) -> Duration {
    let interval_ms = u128::from(interval_secs.min(MAX_INTERVAL_SECS)) * 1000;
    // Multiply-shift maps a uniform u64 onto [0, interval_ms); the bias is below 2^-14.
    let offset = (u128::from(rng.next_u64()) * interval_ms) >> 64;
    let ms = interval_ms / 2 + offset;
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn base_url_parsing() {
        let u = parse_base_url("https://127.0.0.1:8443/").expect("ip");
        assert_eq!(
            (u.authority.host(), u.authority.port_u16(), u.path.as_str()),
            ("127.0.0.1", Some(8443), "/")
        );
        let u = parse_base_url("HTTPS://[::1]:9/feeds/hearth").expect("v6");
        assert_eq!((u.authority.as_str(), u.path.as_str()), ("[::1]:9", "/feeds/hearth/"));
        assert_eq!(
            u.join("feed.json").expect("uri").to_string(),
            "https://[::1]:9/feeds/hearth/feed.json"
        );
        let u = parse_base_url("https://updates.example.com").expect("dns");
        assert_eq!((u.authority.port_u16(), u.path.as_str()), (None, "/"));
        for bad in [
            "http://127.0.0.1/",
            "127.0.0.1:443",
            "https://",
            "https:///x",
            "https://user@host/",
            "https://host:0/",
            "https://host:65536/",
            "https://host:/",
            "https://host:12a/",
            "https://a:1:2/",
            "https://[::1/",
            "https://[nope]:1/",
            "https://host/a/../b/",
            "https://host/?q=1",
            "https://host/a b/",
            "https://ho_st!/",
        ] {
            assert!(matches!(parse_base_url(bad), Err(FeedError::InvalidUrl(_))), "{bad}");
        }
    }

    #[test]
    fn client_refuses_unusable_pins() {
        assert!(matches!(FeedClient::new("https://h/", ""), Err(FeedError::NoCertificate)));
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(FeedClient::new("https://h/", garbage).is_err());
        assert!(matches!(FeedClient::new("ftp://h/", garbage), Err(FeedError::InvalidUrl(_))));
    }

    #[test]
    fn check_delay_is_uniform_in_half_to_three_halves_of_the_interval() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let interval = 3600;
        let (lo, hi) = (Duration::from_secs(1800), Duration::from_secs(5400));
        let samples: Vec<Duration> =
            (0..10_000).map(|_| next_check_delay(interval, &mut rng)).collect();
        assert!(samples.iter().all(|d| (lo..hi).contains(d)));
        // Each quarter of the range gets roughly a quarter of the samples.
        let mut buckets = [0u32; 4];
        for d in &samples {
            let i = ((d.as_millis() - lo.as_millis()) * 4 / (hi - lo).as_millis()) as usize;
            buckets[i] += 1;
        }
        assert!(buckets.iter().all(|&n| (2200..2800).contains(&n)), "{buckets:?}");
        assert_eq!(next_check_delay(0, &mut rng), Duration::ZERO);
        assert!(next_check_delay(1, &mut rng) >= Duration::from_millis(500));
        let huge = next_check_delay(u64::MAX, &mut rng);
        assert!(huge >= Duration::from_secs(MAX_INTERVAL_SECS / 2));
    }
}
