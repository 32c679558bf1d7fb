//! The hub's update-feed client against the simulated manufacturer's HTTPS server, and against
//! hostile servers: only the pinned certificate is trusted, unsafe paths never leave the hub,
//! size limits hold before and while reading, and a silent server hits the deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hub::feed::{FeedClient, FeedError};
use protocol::time::UnixTime;
use protocol::update::feed::{INDEX_FILE, MAX_FILE_LEN, MAX_INDEX_LEN};
use protocol::update::{SigningKeyPair, TrustAnchors, verify_image, verify_manifest};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sensor_sim::firmware::image::build_image;
use sensor_sim::maker::{self, FeedServer, FeedTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const NOW: UnixTime = UnixTime(1_750_000_000);
const THERMO: &str = "hearth-thermo-1";

struct Fixture {
    _dir: tempfile::TempDir,
    feed_dir: std::path::PathBuf,
    tls: FeedTls,
    key: SigningKeyPair,
    entry: protocol::update::feed::FeedEntry,
    image: Vec<u8>,
    server: FeedServer,
    stop: CancellationToken,
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

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.server.task)
            .await
            .expect("server stops")
            .expect("server task");
    }
}

/// A manufacturer with one published release, serving its feed with a certificate for
/// `hostnames`.
async fn fixture(hostnames: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed_dir = dir.path().join("feed");
    let tls = maker::feed_tls(&dir.path().join("tls"), hostnames).expect("tls");
    maker::keygen(&dir.path().join("keys")).expect("keygen");
    let key = maker::load_key(&dir.path().join("keys")).expect("key");
    let image = build_image(THERMO, 2, 50_000, true);
    let release = maker::Release {
        model: THERMO.into(),
        version: 2,
        min_version: 1,
        expires: UnixTime(NOW.0 + 86_400),
        disruptive: false,
        risks: "Fixes CVE-2099-0001.".into(),
        released: NOW,
    };
    let entry = maker::publish(&feed_dir, &key, &release, &image).expect("publish");
    let stop = CancellationToken::new();
    let bind = SocketAddr::from(([127, 0, 0, 1], 0));
    let server =
        maker::serve_feed(feed_dir.clone(), &tls, bind, stop.clone()).await.expect("serve");
    Fixture { _dir: dir, feed_dir, tls, key, entry, image, server, stop }
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
    anchors.add(THERMO, f.key.public());
    let manifest = verify_manifest(&env, &anchors, NOW).expect("verifies");
    assert!(verify_image(&manifest, &image).is_ok());

    let url = f.url();
    let cert = f.tls.cert_pem.clone();
    f.stop().await;
    let after = FeedClient::new(&url, &cert).expect("client").index().await;
    assert!(matches!(after, Err(FeedError::Connect(_))), "{after:?}");
}

/// A server presenting a certificate other than the pinned one, or the pinned one without the
/// feed URL's IP address among its names, fails the handshake before any request.
#[tokio::test]
async fn only_the_pinned_certificate_for_the_feed_address_is_trusted() {
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = maker::feed_tls(other_dir.path(), &["localhost", "127.0.0.1"]).expect("tls");
    for (hostnames, pin_other) in [(&["localhost", "127.0.0.1"][..], true), (&["localhost"], false)]
    {
        let f = fixture(hostnames).await;
        let pem = if pin_other { &other.cert_pem } else { &f.tls.cert_pem };
        let r = FeedClient::new(&f.url(), pem).expect("client").index().await;
        let tls_refusal = matches!(r, Err(FeedError::Tls(rustls::Error::InvalidCertificate(_))));
        assert!(tls_refusal, "{hostnames:?}, pin other: {pin_other}: {r:?}");
        assert_eq!(f.requests(), 0);
        f.stop().await;
    }
}

#[tokio::test]
async fn unsafe_paths_are_refused_before_any_request() {
    let f = fixture(&["127.0.0.1"]).await;
    let client = f.client();
    for bad in
        ["../x", "%2e%2e/feed.json", "/etc/passwd", "manifests/../feed.json", "a//b", "", "./x"]
    {
        let r = client.get(bad).await;
        assert!(matches!(r, Err(FeedError::InvalidPath(_))), "{bad}: {r:?}");
    }
    assert_eq!(f.requests(), 0, "refused before any request");
    let r = client.get("images/missing.bin").await;
    assert!(matches!(r, Err(FeedError::Status(404))), "{r:?}");
    assert_eq!(f.requests(), 1);
    f.stop().await;
}

#[tokio::test]
async fn oversized_index_is_refused_before_reading_it() {
    let f = fixture(&["127.0.0.1"]).await;
    let big = vec![b' '; 2 * 1024 * 1024];
    std::fs::write(f.feed_dir.join(INDEX_FILE), &big).expect("write");
    let r = f.client().index().await;
    assert!(
        matches!(r, Err(FeedError::TooLarge { len, limit: MAX_INDEX_LEN }) if len == 2 << 20),
        "{r:?}"
    );
    std::fs::write(f.feed_dir.join(INDEX_FILE), b"{\"releases\": 3}").expect("write");
    assert!(matches!(f.client().index().await, Err(FeedError::Index(_))));
    f.stop().await;
}

/// A TLS server holding the feed's certificate that answers each connection with the next of
/// `replies` (raw bytes after the request head), or never answers when a reply is `None`.
async fn hostile_server(tls: &FeedTls, replies: Vec<Option<Vec<u8>>>) -> SocketAddr {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("cert");
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut silent = Vec::new();
        for reply in replies {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut stream = acceptor.accept(tcp).await.expect("handshake");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            match reply {
                Some(bytes) => {
                    let _ = stream.write_all(&bytes).await;
                    let _ = stream.shutdown().await;
                }
                None => silent.push(stream),
            }
        }
        // Keep silent connections open until the test ends.
        std::future::pending::<()>().await;
    });
    addr
}

#[tokio::test]
async fn hostile_responses_are_errors_within_the_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = maker::feed_tls(dir.path(), &["127.0.0.1"]).expect("tls");
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
    let endless_chunked = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(20)
    );
    type Case = (&'static str, Option<Vec<u8>>, fn(&FeedError) -> bool);
    let replies: Vec<Case> = vec![
        (
            "index announced over 1 MiB",
            Some(b"HTTP/1.1 200 OK\r\nContent-Length: 1048577\r\n\r\n".to_vec()),
            |e| matches!(e, FeedError::TooLarge { len: 1_048_577, limit: MAX_INDEX_LEN }),
        ),
        ("chunked index growing past 1 MiB", Some(endless_chunked.into_bytes()), |e| {
            matches!(e, FeedError::BodyTooLarge { limit: MAX_INDEX_LEN })
        }),
        (
            "body shorter than announced",
            Some(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello".to_vec()),
            |e| matches!(e, FeedError::Body(_)),
        ),
        ("not HTTP", Some(b"\x16\x03\x01garbage\r\n\r\n".to_vec()), |e| {
            matches!(e, FeedError::Request(_))
        }),
        (
            "two Content-Lengths",
            Some(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".to_vec(),
            ),
            |e| matches!(e, FeedError::Request(_)),
        ),
        (
            "response head over 16 KiB",
            Some(format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(17 * 1024)).into_bytes()),
            |e| matches!(e, FeedError::Request(_)),
        ),
        (
            "more than 32 header fields",
            Some(
                format!("HTTP/1.1 200 OK\r\n{}Content-Length: 0\r\n\r\n", "X: a\r\n".repeat(40))
                    .into_bytes(),
            ),
            |e| matches!(e, FeedError::Request(_)),
        ),
        ("not found", Some(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()), |e| {
            matches!(e, FeedError::Status(404))
        }),
        (
            "redirect (never followed)",
            Some(
                b"HTTP/1.1 302 Found\r\nLocation: https://127.0.0.1/x\r\nContent-Length: 0\r\n\r\n"
                    .to_vec(),
            ),
            |e| matches!(e, FeedError::Status(302)),
        ),
        ("silence", None, |e| matches!(e, FeedError::Timeout(_))),
    ];
    let addr = hostile_server(&tls, replies.iter().map(|(_, r, _)| r.clone()).collect()).await;
    let client = FeedClient::new(&format!("https://{addr}/"), &tls.cert_pem)
        .expect("client")
        .with_timeout(Duration::from_millis(500));
    for (what, _, expected) in &replies {
        let r = client.index().await;
        match r {
            Err(ref e) if expected(e) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn image_announced_over_32_mib_is_refused_before_reading_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = maker::feed_tls(dir.path(), &["127.0.0.1"]).expect("tls");
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_FILE_LEN + 1);
    let addr = hostile_server(&tls, vec![Some(head.into_bytes())]).await;
    let client = FeedClient::new(&format!("https://{addr}/"), &tls.cert_pem).expect("client");
    let r = client.get("images/x.bin").await;
    assert!(
        matches!(r, Err(FeedError::TooLarge { len, limit: MAX_FILE_LEN }) if len == MAX_FILE_LEN + 1),
        "{r:?}"
    );
}

#[tokio::test]
async fn plain_tcp_garbage_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        for reply in [&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"[..], &[0x16; 300], b""] {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            let _ = tcp.write_all(reply).await;
            let _ = tcp.shutdown().await;
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = maker::feed_tls(dir.path(), &["127.0.0.1"]).expect("tls").cert_pem;
    let client = FeedClient::new(&format!("https://127.0.0.1:{port}/"), &pem).expect("client");
    for _ in 0..3 {
        let r = client.index().await;
        assert!(matches!(r, Err(FeedError::Tls(_) | FeedError::Connect(_))), "{r:?}");
    }
    server.await.expect("server");
}
