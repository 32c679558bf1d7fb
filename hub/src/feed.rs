//! The hub's client for the manufacturer's update feed: strict HTTP/1.1 GETs over TLS 1.3 to a
//! pinned certificate, with size limits, and the randomized check schedule. EN 303 645 5.3-5 and
//! 5.3-7 (TR 103 621 6.13: update checks at a randomized time), 5.13-1 (bounded input parsing).

pub use maker::{FeedEntry, FeedIndex};
use sensor_sim::maker;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rand_core::CryptoRng;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response status line plus headers.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;
/// Largest `feed.json` accepted.
pub const MAX_INDEX_LEN: u64 = 1024 * 1024;
/// Largest manifest, advisory or image accepted.
pub const MAX_BODY_LEN: u64 = 32 * 1024 * 1024;
/// Default deadline for one whole request (connect, handshake, response).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest check interval honoured by [`next_check_delay`] (about 34 000 years).
const MAX_INTERVAL_SECS: u64 = 1 << 40;

/// Why a feed request failed.
#[derive(Debug, thiserror::Error)]
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
    /// The relative path is empty, absolute, has `..`/empty/hidden segments or odd characters.
    #[error("refusing feed path {0:?}")]
    InvalidPath(String),
    /// The TCP connection failed.
    #[error("connecting to the feed: {0}")]
    Connect(io::Error),
    /// TLS failed: handshake (e.g. certificate not the pinned one) or record layer.
    #[error("feed TLS: {0}")]
    Tls(rustls::Error),
    /// Reading or writing the connection failed.
    #[error("feed I/O: {0}")]
    Io(io::Error),
    /// The whole request took longer than the deadline.
    #[error("feed did not answer within {0:?}")]
    Timeout(Duration),
    /// The response status line and headers exceed [`MAX_RESPONSE_HEAD`].
    #[error("response head exceeds {MAX_RESPONSE_HEAD} bytes")]
    HeadTooLarge,
    /// The response is not strict HTTP/1.1 with a Content-Length body.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// The feed answered with a status other than 200.
    #[error("feed answered HTTP {0}")]
    Status(u16),
    /// The announced body is larger than allowed for this request.
    #[error("response body of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge { len: u64, limit: u64 },
    /// The connection ended before the announced body was complete.
    #[error("response truncated: {received} of {expected} bytes")]
    Truncated { received: u64, expected: u64 },
    /// `feed.json` is not a valid index.
    #[error("feed index: {0}")]
    Index(serde_json::Error),
}

/// The feed base URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BaseUrl {
    /// Host to connect to (IPv6 without brackets).
    host: String,
    port: u16,
    /// `host[:port]` as written, for the Host header.
    authority: String,
    /// Starts and ends with `/`.
    path: String,
    server_name: ServerName<'static>,
}

/// A client for one manufacturer feed, trusting only the pinned certificate.
#[derive(Clone)]
pub struct FeedClient {
    base: BaseUrl,
    connector: tokio_rustls::TlsConnector,
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
    /// against the certificate's IP SANs) trusting only the certificate(s) in `trusted_cert_pem`.
    pub fn new(base_url: &str, trusted_cert_pem: &str) -> Result<Self, FeedError> {
        let base = parse_base_url(base_url)?;
        let mut roots = rustls::RootCertStore::empty();
        let mut any = false;
        for cert in CertificateDer::pem_slice_iter(trusted_cert_pem.as_bytes()) {
            roots.add(cert?).map_err(FeedError::TlsConfig)?;
            any = true;
        }
        if !any {
            return Err(FeedError::NoCertificate);
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(FeedError::TlsConfig)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        Ok(FeedClient { base, connector, timeout: DEFAULT_TIMEOUT })
    }

    /// Replaces the per-request deadline (default 60 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Fetches and parses `feed.json` (at most 1 MiB).
    pub async fn index(&self) -> Result<FeedIndex, FeedError> {
        let bytes = self.fetch("GET", "feed.json", MAX_INDEX_LEN).await?;
        serde_json::from_slice(&bytes).map_err(FeedError::Index)
    }

    /// Fetches `rel_path` under the base URL (at most 32 MiB). The path must be relative, made
    /// of `[A-Za-z0-9._-]` segments separated by single slashes, none empty or starting with `.`.
    pub async fn get(&self, rel_path: &str) -> Result<Vec<u8>, FeedError> {
        validate_rel_path(rel_path)?;
        self.fetch("GET", rel_path, MAX_BODY_LEN).await
    }

    async fn fetch(&self, method: &str, rel: &str, limit: u64) -> Result<Vec<u8>, FeedError> {
        let target = format!("{}{rel}", self.base.path);
        tokio::time::timeout(self.timeout, self.exchange(method, &target, limit))
            .await
            .map_err(|_| FeedError::Timeout(self.timeout))?
    }

    /// One request on a fresh connection; `target` is sent as is (tests use it unvalidated).
    async fn exchange(&self, method: &str, target: &str, limit: u64) -> Result<Vec<u8>, FeedError> {
        let tcp = TcpStream::connect((self.base.host.as_str(), self.base.port))
            .await
            .map_err(FeedError::Connect)?;
        let mut tls =
            self.connector.connect(self.base.server_name.clone(), tcp).await.map_err(tls_or_io)?;
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hearth-hub\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n",
            self.base.authority
        );
        tls.write_all(request.as_bytes()).await.map_err(tls_or_io)?;
        tls.flush().await.map_err(tls_or_io)?;
        read_response(&mut tls, limit).await
    }
}

/// Classifies an I/O error from tokio-rustls: a wrapped `rustls::Error` is a TLS failure.
fn tls_or_io(e: io::Error) -> FeedError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => FeedError::Tls(tls.clone()),
        None => FeedError::Io(e),
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
    let path_ok = path.bytes().all(is_path_byte) && !path.contains("..") && !path.contains("//");
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
    let port = match port {
        None => 443,
        Some(p) if (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u16>().ok().filter(|&p| p != 0).ok_or(FeedError::InvalidUrl("port"))?
        }
        Some(_) => return Err(FeedError::InvalidUrl("port")),
    };
    let server_name = ServerName::try_from(host)
        .map(|name| name.to_owned())
        .map_err(|_| FeedError::InvalidUrl("host is neither a DNS name nor an IP address"))?;
    Ok(BaseUrl { host: host.to_owned(), port, authority: authority.to_owned(), path, server_name })
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/')
}

fn validate_rel_path(rel: &str) -> Result<(), FeedError> {
    let ok = !rel.is_empty()
        && rel.len() <= 512
        && rel.bytes().all(is_path_byte)
        && !rel.contains("..")
        && rel.split('/').all(|seg| !seg.is_empty() && !seg.starts_with('.'));
    if ok { Ok(()) } else { Err(FeedError::InvalidPath(rel.to_owned())) }
}

/// Reads one HTTP/1.1 response: a head of at most 8 KiB, status 200, a `Content-Length` body of
/// at most `limit` bytes (checked before reading it). Anything else is an error.
pub(crate) async fn read_response<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: u64,
) -> Result<Vec<u8>, FeedError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = read_some(r, &mut chunk).await?;
        if n == 0 {
            return Err(FeedError::Malformed(if buf.is_empty() {
                "empty response"
            } else {
                "response head truncated"
            }));
        }
        let searched = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
            break searched + at + 4;
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(FeedError::HeadTooLarge);
        }
    };
    if head_end > MAX_RESPONSE_HEAD {
        return Err(FeedError::HeadTooLarge);
    }
    let len = parse_response_head(&buf[..head_end])?;
    if len > limit {
        return Err(FeedError::TooLarge { len, limit });
    }
    let mut body = buf.split_off(head_end);
    if body.len() as u64 > len {
        return Err(FeedError::Malformed("data after the announced body"));
    }
    let remaining = len - body.len() as u64;
    body.reserve(usize::try_from(remaining.min(1024 * 1024)).unwrap_or(0));
    loop {
        let received = body.len() as u64;
        if received == len {
            return Ok(body);
        }
        let want = usize::try_from(len - received).unwrap_or(usize::MAX).min(chunk.len());
        let n = read_some(r, &mut chunk[..want]).await?;
        if n == 0 {
            return Err(FeedError::Truncated { received, expected: len });
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

/// One read; a TLS peer closing without close_notify counts as end of stream (the body length
/// is checked against Content-Length anyway).
async fn read_some<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<usize, FeedError> {
    match r.read(buf).await {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        Err(e) => Err(tls_or_io(e)),
    }
}

/// Parses a response head (through the blank line): `HTTP/1.x 200 …`, token header names, a
/// single decimal `Content-Length`, no `Transfer-Encoding`. Returns the body length.
pub(crate) fn parse_response_head(head: &[u8]) -> Result<u64, FeedError> {
    let text = std::str::from_utf8(head).map_err(|_| FeedError::Malformed("head is not ASCII"))?;
    let text = text.strip_suffix("\r\n\r\n").ok_or(FeedError::Malformed("unterminated head"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let rest = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .ok_or(FeedError::Malformed("status line"))?;
    let (code, reason) = rest.split_at_checked(3).ok_or(FeedError::Malformed("status code"))?;
    if !code.bytes().all(|b| b.is_ascii_digit()) || !(reason.is_empty() || reason.starts_with(' '))
    {
        return Err(FeedError::Malformed("status code"));
    }
    let code: u16 = code.parse().map_err(|_| FeedError::Malformed("status code"))?;
    let mut content_length = None;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(FeedError::Malformed("header line"))?;
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(FeedError::Malformed("header name"));
        }
        if !value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
            return Err(FeedError::Malformed("header value"));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(FeedError::Malformed("Transfer-Encoding is not supported"));
        }
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(FeedError::Malformed("duplicate Content-Length"));
            }
            let valid =
                (1..=19).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit());
            let len = value.parse::<u64>().ok().filter(|_| valid);
            content_length = Some(len.ok_or(FeedError::Malformed("Content-Length"))?);
        }
    }
    if code != 200 {
        return Err(FeedError::Status(code));
    }
    content_length.ok_or(FeedError::Malformed("missing Content-Length"))
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
    use protocol::time::UnixTime;
    use protocol::update::{TrustAnchors, verify_image, verify_manifest};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use std::sync::atomic::Ordering;
    use tokio::sync::watch;

    const NOW: UnixTime = UnixTime(1_750_000_000);

    struct Fixture {
        _dir: tempfile::TempDir,
        feed_dir: std::path::PathBuf,
        tls: maker::FeedTls,
        key: protocol::update::SigningKeyPair,
        entry: FeedEntry,
        image: Vec<u8>,
        server: maker::FeedServer,
        stop: watch::Sender<bool>,
    }

    impl Fixture {
        fn url(&self) -> String {
            format!("https://127.0.0.1:{}/", self.server.addr.port())
        }

        fn client(&self) -> FeedClient {
            FeedClient::new(&self.url(), &self.tls.cert_pem).expect("client")
        }

        fn requests(&self) -> u64 {
            self.server.requests.load(Ordering::SeqCst)
        }
    }

    async fn fixture(hostnames: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let feed_dir = dir.path().join("feed");
        let tls = maker::feed_tls(&dir.path().join("tls"), hostnames).expect("tls");
        maker::keygen(&dir.path().join("keys")).expect("keygen");
        let key = maker::load_key(&dir.path().join("keys")).expect("key");
        let image = maker::build_image("hearth-thermo-1", 2, 50_000, true);
        let release = maker::Release {
            model: "hearth-thermo-1".into(),
            version: 2,
            min_version: 1,
            expires: UnixTime(NOW.0 + 86_400),
            disruptive: false,
            risks: "Fixes CVE-2099-0001.".into(),
            released: NOW,
        };
        let entry = maker::publish(&feed_dir, &key, &release, &image).expect("publish");
        let (stop, stop_rx) = watch::channel(false);
        let bind = "127.0.0.1:0".parse().expect("addr");
        let server = maker::serve_feed(feed_dir.clone(), &tls, bind, stop_rx).await.expect("serve");
        Fixture { _dir: dir, feed_dir, tls, key, entry, image, server, stop }
    }

    async fn stop(f: Fixture) {
        f.stop.send(true).expect("server listening");
        tokio::time::timeout(Duration::from_secs(10), f.server.task)
            .await
            .expect("server stops")
            .expect("server task");
    }

    #[tokio::test]
    async fn round_trip_over_tls_fetches_index_manifest_and_image() {
        let f = fixture(&["localhost", "127.0.0.1"]).await;
        let client = f.client();
        let index = client.index().await.expect("index");
        assert_eq!(index, maker::read_index(&f.feed_dir).expect("local index"));
        assert_eq!(index.releases, vec![f.entry.clone()]);
        let env = client.get(&index.releases[0].manifest).await.expect("manifest");
        assert_eq!(env, std::fs::read(f.feed_dir.join(&f.entry.manifest)).expect("file"));
        let image = client.get(&index.releases[0].image).await.expect("image");
        assert_eq!(image, f.image);
        assert_eq!(f.requests(), 3);

        let mut anchors = TrustAnchors::new();
        anchors.add("hearth-thermo-1", f.key.public());
        let manifest = verify_manifest(&env, &anchors, NOW).expect("verifies");
        assert!(verify_image(&manifest, &image).is_ok());

        let url = f.url();
        let cert = f.tls.cert_pem.clone();
        stop(f).await;
        let after = FeedClient::new(&url, &cert).expect("client").index().await;
        assert!(matches!(after, Err(FeedError::Connect(_))), "{after:?}");
    }

    #[tokio::test]
    async fn client_pinning_another_certificate_fails_with_tls_error() {
        let f = fixture(&["localhost", "127.0.0.1"]).await;
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other = maker::feed_tls(other_dir.path(), &["localhost", "127.0.0.1"]).expect("tls");
        let client = FeedClient::new(&f.url(), &other.cert_pem).expect("client");
        let r = client.index().await;
        assert!(matches!(r, Err(FeedError::Tls(rustls::Error::InvalidCertificate(_)))), "{r:?}");
        assert_eq!(f.requests(), 0);
        stop(f).await;
    }

    #[tokio::test]
    async fn certificate_without_the_ip_san_is_refused() {
        let f = fixture(&["localhost"]).await;
        let r = f.client().index().await;
        assert!(matches!(r, Err(FeedError::Tls(rustls::Error::InvalidCertificate(_)))), "{r:?}");
        stop(f).await;
    }

    #[tokio::test]
    async fn traversal_is_refused_by_client_and_server() {
        let f = fixture(&["127.0.0.1"]).await;
        let client = f.client();
        for bad in
            ["../x", "%2e%2e/feed.json", "/etc/passwd", "manifests/../feed.json", "a//b", "", "./x"]
        {
            let r = client.get(bad).await;
            assert!(matches!(r, Err(FeedError::InvalidPath(_))), "{bad}: {r:?}");
        }
        assert_eq!(f.requests(), 0, "refused before any request");

        let limit = MAX_BODY_LEN;
        for (method, target, status) in [
            ("GET", "/../feed.json", 404),
            ("GET", "/manifests/../feed.json", 404),
            ("GET", "/%2e%2e/feed.json", 404),
            ("GET", "/manifests/%2e%2e%2ffeed.json", 404),
            ("GET", "/etc/passwd", 404),
            ("GET", "/images/missing.bin", 404),
            ("POST", "/feed.json", 405),
            ("GET", "feed.json", 400),
        ] {
            let r = client.exchange(method, target, limit).await;
            assert!(matches!(r, Err(FeedError::Status(s)) if s == status), "{target}: {r:?}");
        }
        assert_eq!(f.requests(), 8);
        stop(f).await;
    }

    #[tokio::test]
    async fn oversized_index_is_refused_before_reading_it() {
        let f = fixture(&["127.0.0.1"]).await;
        let big = vec![b' '; 2 * 1024 * 1024];
        std::fs::write(f.feed_dir.join(maker::INDEX_FILE), &big).expect("write");
        let r = f.client().index().await;
        assert!(
            matches!(r, Err(FeedError::TooLarge { len, limit: MAX_INDEX_LEN }) if len == 2 << 20),
            "{r:?}"
        );
        std::fs::write(f.feed_dir.join(maker::INDEX_FILE), b"{\"releases\": 3}").expect("write");
        assert!(matches!(f.client().index().await, Err(FeedError::Index(_))));
        stop(f).await;
    }

    #[tokio::test]
    async fn garbage_from_a_raw_tcp_server_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            for reply in [&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"[..], &[0x16; 300], b""]
            {
                let (mut tcp, _) = listener.accept().await.expect("accept");
                let _ = tcp.write_all(reply).await;
                let _ = tcp.shutdown().await;
            }
        });
        let pem = maker::feed_tls(tempfile::tempdir().expect("tempdir").path(), &["127.0.0.1"])
            .expect("tls")
            .cert_pem;
        let client = FeedClient::new(&format!("https://127.0.0.1:{port}/"), &pem).expect("client");
        for _ in 0..3 {
            let r = client.index().await;
            assert!(matches!(r, Err(FeedError::Tls(_) | FeedError::Io(_))), "{r:?}");
        }
        server.await.expect("server");
    }

    async fn parse(bytes: &[u8], limit: u64) -> Result<Vec<u8>, FeedError> {
        read_response(&mut &bytes[..], limit).await
    }

    #[tokio::test]
    async fn response_parser_accepts_strict_responses() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse(ok, 5).await.expect("ok"), b"hello");
        let empty = b"HTTP/1.0 200\r\ncontent-length:0\r\n\r\n";
        assert_eq!(parse(empty, 0).await.expect("ok"), b"");
        let big =
            [&b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"[..], &[7u8; 100_000]].concat();
        assert_eq!(parse(&big, MAX_BODY_LEN).await.expect("ok"), vec![7u8; 100_000]);
    }

    #[tokio::test]
    async fn response_parser_refuses_malformed_and_oversized_responses() {
        let long_header = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(9000));
        let endless = vec![b'a'; 50_000];
        type Check = fn(&FeedError) -> bool;
        let cases: Vec<(&[u8], Check)> = vec![
            (b"", |e| matches!(e, FeedError::Malformed("empty response"))),
            (b"HTTP/1.1 200 OK\r\nContent-Len", |e| matches!(e, FeedError::Malformed(_))),
            (b"\x16\x03\x01garbage\r\n\r\n", |e| matches!(e, FeedError::Malformed("status line"))),
            (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", |e| {
                matches!(e, FeedError::Status(404))
            }),
            (b"HTTP/1.1 20x OK\r\nContent-Length: 0\r\n\r\n", |e| {
                matches!(e, FeedError::Malformed(_))
            }),
            (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", |e| {
                matches!(e, FeedError::Malformed(_))
            }),
            (b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n", |e| {
                matches!(e, FeedError::Malformed(_))
            }),
            (b"HTTP/1.1 200 OK\r\n\r\n", |e| {
                matches!(e, FeedError::Malformed("missing Content-Length"))
            }),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", |e| {
                matches!(e, FeedError::Malformed(_))
            }),
            (b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", |e| {
                matches!(e, FeedError::Malformed(_))
            }),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", |e| {
                matches!(e, FeedError::Malformed(_))
            }),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", |e| {
                matches!(e, FeedError::Malformed("duplicate Content-Length"))
            }),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                |e| matches!(e, FeedError::Malformed(_)),
            ),
            (b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", |e| matches!(e, FeedError::Malformed(_))),
            (b"HTTP/1.1 200 OK\r\n Content-Length: 0\r\n\r\n", |e| {
                matches!(e, FeedError::Malformed(_))
            }),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: \xff\r\n\r\n", |e| {
                matches!(e, FeedError::Malformed(_))
            }),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", |e| {
                matches!(e, FeedError::Truncated { received: 5, expected: 10 })
            }),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello", |e| {
                matches!(e, FeedError::Malformed(_))
            }),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 33554433\r\n\r\n", |e| {
                matches!(e, FeedError::TooLarge { len: 33_554_433, limit: MAX_BODY_LEN })
            }),
            (long_header.as_bytes(), |e| matches!(e, FeedError::HeadTooLarge)),
            (&endless, |e| matches!(e, FeedError::HeadTooLarge)),
        ];
        for (bytes, expected) in cases {
            let r = parse(bytes, MAX_BODY_LEN).await;
            match r {
                Err(ref e) if expected(e) => {}
                other => panic!("{:?}: {other:?}", bytes.escape_ascii().to_string()),
            }
        }
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello!", 5).await;
        assert!(matches!(r, Err(FeedError::TooLarge { len: 6, limit: 5 })));
        // Arbitrary bytes never panic.
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for len in 0..200 {
            let mut junk = vec![0u8; len];
            rand_core::Rng::fill_bytes(&mut rng, &mut junk);
            let _ = parse(&junk, 100).await;
            let _ = parse_response_head(&junk);
        }
    }

    #[test]
    fn base_url_parsing() {
        let u = parse_base_url("https://127.0.0.1:8443/").expect("ip");
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("127.0.0.1", 8443, "/"));
        assert!(matches!(u.server_name, ServerName::IpAddress(_)));
        let u = parse_base_url("HTTPS://[::1]:9/feeds/hearth").expect("v6");
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 9, "/feeds/hearth/"));
        assert_eq!(u.authority, "[::1]:9");
        assert!(matches!(u.server_name, ServerName::IpAddress(_)));
        let u = parse_base_url("https://updates.example.com").expect("dns");
        assert_eq!((u.port, u.path.as_str()), (443, "/"));
        assert!(matches!(u.server_name, ServerName::DnsName(_)));
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
    fn rel_path_validation() {
        for ok in ["feed.json", "manifests/hearth-thermo-1-2.cose", "images/a_b.bin", "a..b"] {
            let expected = !ok.contains("..");
            assert_eq!(validate_rel_path(ok).is_ok(), expected, "{ok}");
        }
        for bad in ["", "/x", "x/", "../x", "x/..", ".hidden", "a/./b", "a//b", "a?b", "a%2fb", "é"]
        {
            assert!(validate_rel_path(bad).is_err(), "{bad}");
        }
        assert!(validate_rel_path(&"a".repeat(513)).is_err());
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
