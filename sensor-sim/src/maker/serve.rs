//! The manufacturer's update feed server: the feed directory over HTTPS (TLS 1.3 only, rustls
//! with ring) with axum routes on hyper HTTP/1.1 connections. It serves only feed files, bounds
//! connections, request heads, handshakes and responses, and closes each connection after one
//! response (EN 303 645 5.3-7: updates over a secure channel; 5.13-1: bounded input).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use protocol::update::feed::{INDEX_FILE, MAX_FILE_LEN, is_safe_segment};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::MakerError;
use super::tls::{FeedTls, parse_tls};

/// Largest request line plus headers the server reads (hyper answers 431 beyond it; 8 KiB is
/// also the smallest buffer hyper accepts).
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Connections served at once; further ones are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// Deadline for the TLS handshake, and again for the request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a whole connection once the handshake is done.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(130);
/// The feed's top-level directories.
const FEED_DIRS: [&str; 3] = ["manifests", "images", "advisories"];

/// A running feed server.
#[derive(Debug)]
pub struct FeedServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// HTTP requests answered so far (any status), counted before the response is sent.
    pub requests: Arc<AtomicU64>,
    /// Ends after shutdown, dropping open connections.
    pub task: JoinHandle<()>,
}

/// Serves `feed_dir` over HTTPS (TLS 1.3 only) on `bind`: `GET /feed.json`,
/// `/manifests/<name>`, `/images/<name>`, `/advisories/<name>` with `<name>` a safe feed path
/// segment (`[A-Za-z0-9._-]+`, no leading dot, no `..`). Anything else is 404, other methods on
/// a feed file 405, requests hyper cannot parse 400, heads over 8 KiB 431. Stops when
/// `shutdown` is cancelled.
pub async fn serve_feed(
    feed_dir: PathBuf,
    tls: &FeedTls,
    bind: SocketAddr,
    shutdown: CancellationToken,
) -> Result<FeedServer, MakerError> {
    let (certs, key) = parse_tls(tls)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener =
        TcpListener::bind(bind).await.map_err(|source| MakerError::Bind { addr: bind, source })?;
    let addr = listener.local_addr().map_err(|source| MakerError::Bind { addr: bind, source })?;
    let requests = Arc::new(AtomicU64::new(0));
    let app = router(Arc::new(feed_dir), requests.clone());
    let task = tokio::spawn(async move {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
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
                    let (acceptor, app) = (acceptor.clone(), app.clone());
                    connections.spawn(async move {
                        if let Err(e) = serve_connection(acceptor, tcp, app).await {
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
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
}

/// One connection: the TLS handshake, then one HTTP/1.1 exchange, all under deadlines.
async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    app: Router,
) -> Result<(), ConnError> {
    let stream = tokio::time::timeout(REQUEST_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| ConnError::Timeout)?
        .map_err(ConnError::Handshake)?;
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::time::timeout(CONNECTION_TIMEOUT, connection)
        .await
        .map_err(|_| ConnError::Timeout)??;
    Ok(())
}

/// The feed's routes; every request that reaches them is counted in `requests`.
fn router(root: Arc<PathBuf>, requests: Arc<AtomicU64>) -> Router {
    Router::new()
        .route("/feed.json", get(index))
        .route("/{dir}/{name}", get(feed_file))
        .fallback(|| async { status(StatusCode::NOT_FOUND) })
        .with_state(root)
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            requests.fetch_add(1, Ordering::SeqCst);
            next.run(request)
        }))
}

async fn index(State(root): State<Arc<PathBuf>>) -> Response {
    respond(&root, INDEX_FILE).await
}

/// `/<dir>/<name>`; axum has percent-decoded both, so `%2e%2e` arrives as `..` and is refused.
async fn feed_file(
    State(root): State<Arc<PathBuf>>,
    UrlPath((dir, name)): UrlPath<(String, String)>,
) -> Response {
    if !FEED_DIRS.contains(&dir.as_str()) || !is_safe_segment(&name) {
        return status(StatusCode::NOT_FOUND);
    }
    respond(&root, &format!("{dir}/{name}")).await
}

/// A plain-text answer with only a status.
fn status(code: StatusCode) -> Response {
    let text = format!("{code}\n");
    let mut response = (code, text).into_response();
    no_store(&mut response);
    response
}

fn no_store(response: &mut Response) {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

async fn respond(root: &Path, rel: &str) -> Response {
    let path = root.join(rel);
    match read_feed_file(&path).await {
        Ok(Some(body)) => {
            let content_type = if rel.ends_with(".json") {
                "application/json"
            } else if rel.ends_with(".cose") {
                "application/cose"
            } else {
                "application/octet-stream"
            };
            tracing::debug!(path = %rel, len = body.len(), "feed GET");
            let mut response = Response::new(Body::from(body));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            no_store(&mut response);
            response
        }
        Ok(None) => status(StatusCode::NOT_FOUND),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "feed file unreadable");
            status(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// Reads a regular file (not a symlink) of at most [`MAX_FILE_LEN`] bytes; `None` if absent.
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
    file.take(MAX_FILE_LEN + 1).read_to_end(&mut body).await?;
    if body.len() as u64 > MAX_FILE_LEN {
        return Err(io::Error::new(io::ErrorKind::FileTooLarge, "feed file exceeds 32 MiB"));
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio::io::AsyncWriteExt;

    struct Fixture {
        _dir: tempfile::TempDir,
        feed: PathBuf,
        tls: FeedTls,
        server: FeedServer,
        stop: CancellationToken,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let feed = dir.path().join("feed");
        std::fs::create_dir_all(feed.join("manifests")).expect("mkdir");
        std::fs::write(feed.join(INDEX_FILE), b"{\"releases\": [], \"advisories\": []}\n")
            .expect("write");
        std::fs::write(feed.join("manifests/m-2.cose"), b"signed").expect("write");
        std::fs::write(feed.join("manifests/.m-2.cose.tmp-1-0"), b"partial").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", feed.join("manifests/link.cose"))
            .expect("symlink");
        let tls = super::super::feed_tls(&dir.path().join("tls"), &["127.0.0.1"]).expect("tls");
        let stop = CancellationToken::new();
        let bind = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = serve_feed(feed.clone(), &tls, bind, stop.clone()).await.expect("serve");
        Fixture { _dir: dir, feed, tls, server, stop }
    }

    /// Sends `request` as raw bytes over TLS and returns the status code and the whole answer.
    async fn raw(f: &Fixture, request: &[u8]) -> (u16, String) {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(f.tls.cert_pem.as_bytes()) {
            roots.add(cert.expect("pem")).expect("root");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(f.server.addr).await.expect("connect");
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        tls.write_all(request).await.expect("write");
        let mut answer = Vec::new();
        // The server closes after one response; a close without close_notify is fine here.
        let _ = tls.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let code = answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, answer)
    }

    fn get(target: &str) -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: feed\r\n\r\n").into_bytes()
    }

    #[tokio::test]
    async fn serves_feed_files_only() {
        let f = fixture().await;
        let (code, answer) = raw(&f, &get("/feed.json")).await;
        assert_eq!(code, 200, "{answer}");
        assert!(answer.contains("content-type: application/json"), "{answer}");
        assert!(answer.contains("cache-control: no-store"), "{answer}");
        assert!(answer.ends_with("{\"releases\": [], \"advisories\": []}\n"), "{answer}");
        let (code, answer) = raw(&f, &get("/manifests/m-2.cose")).await;
        assert_eq!(code, 200, "{answer}");
        assert!(answer.ends_with("\r\n\r\nsigned"), "{answer}");
        for bad in [
            "/../feed.json",
            "/manifests/../feed.json",
            "/manifests/..",
            "/manifests/.m-2.cose.tmp-1-0",
            "/manifests/link.cose",
            "/%2e%2e/feed.json",
            "/manifests/%2e%2e",
            "/manifests/%2e%2e%2ffeed.json",
            "/manifests/a%2fb",
            "/etc/passwd",
            "/images/a/b",
            "/images/",
            "/images/missing.bin",
            "/",
            "//feed.json",
            "/keys/signing.key",
            "/tls/feed.key",
        ] {
            let (code, answer) = raw(&f, &get(bad)).await;
            assert_eq!(code, 404, "{bad}: {answer}");
        }
        assert_eq!(f.server.requests.load(Ordering::SeqCst), 19);
        stop(f).await;
    }

    #[tokio::test]
    async fn refuses_other_methods_malformed_requests_and_large_heads() {
        let f = fixture().await;
        let (code, answer) = raw(&f, b"POST /feed.json HTTP/1.1\r\nHost: f\r\n\r\n").await;
        assert_eq!(code, 405, "{answer}");
        assert!(answer.to_ascii_lowercase().contains("allow: get"), "{answer}");
        // A target without the leading slash is not a feed path.
        let (code, answer) = raw(&f, b"GET feed.json HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(code, 404, "{answer}");
        for bad in [
            &b"GET /feed.json HTTP/2\r\nHost: a\r\n\r\n"[..],
            b"\x16\x03\x01garbage\r\n\r\n",
            b"GET /feed.json HTTP/1.1\r\n Host: a\r\n\r\n",
        ] {
            let (code, answer) = raw(&f, bad).await;
            assert_eq!(code, 400, "{:?}: {answer}", bad.escape_ascii().to_string());
        }
        let mut big = b"GET /feed.json HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        big.extend(vec![b'a'; MAX_REQUEST_HEAD + 10]);
        big.extend_from_slice(b"\r\n\r\n");
        let (code, answer) = raw(&f, &big).await;
        assert_eq!(code, 431, "{answer}");
        assert!(f.feed.join(INDEX_FILE).exists());
        stop(f).await;
    }

    #[tokio::test]
    async fn stops_on_shutdown() {
        let f = fixture().await;
        let addr = f.server.addr;
        stop(f).await;
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }

    async fn stop(f: Fixture) {
        f.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), f.server.task)
            .await
            .expect("server stops")
            .expect("server task");
    }
}
