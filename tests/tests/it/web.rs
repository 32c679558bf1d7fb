//! The web UI over real HTTPS against a running hub, with a Rust client that pins the certificate
//! fingerprint the hub printed: plain HTTP gets no answer, nothing before login, security headers,
//! the setup code works once, wrong passwords back off and the back-off expires, CSRF-less and
//! cross-site state changes are refused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tests::{Hub, free_udp_port, wait_for};

/// Accepts exactly the certificate whose SHA-256 the hub printed.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "certificate fingerprint differs from the printed one".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// An HTTPS client for one hub's web UI.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    /// The fingerprint the hub printed.
    pub fingerprint: String,
    /// The local address connections come from (none: the system's choice).
    source: Option<std::net::IpAddr>,
}

/// An answer.
#[derive(Debug)]
pub struct Res {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Res {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie")).find_map(
            |(_, v)| v.split(';').next()?.strip_prefix(&format!("{name}=")).map(str::to_owned),
        )
    }

    pub fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").expect("a form") + 19;
        self.body[at..at + 64].to_owned()
    }
}

impl Client {
    /// A client pinned to the fingerprint in the hub's start-up lines.
    pub fn new(hub: &Hub) -> Client {
        let fingerprint = hub
            .printed
            .iter()
            .find_map(|l| l.split("fingerprint ").nth(1))
            .expect("the hub prints its certificate fingerprint")
            .trim()
            .to_owned();
        Client::at(hub.web, fingerprint)
    }

    /// A client of the web UI at `addr` pinned to the certificate `fingerprint` (hex SHA-256).
    pub fn at(addr: SocketAddr, fingerprint: String) -> Client {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            Arc::new(Pinned { fingerprint: fingerprint.clone(), provider: provider.clone() });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Client { addr, config: Arc::new(config), fingerprint, source: None }
    }

    /// The same client, connecting from `source` (any 127.0.0.0/8 address on loopback).
    pub fn from(&self, source: std::net::IpAddr) -> Client {
        Client { source: Some(source), ..self.clone() }
    }

    /// One request on a fresh connection.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        cookie: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Res {
        self.send_to_host(&self.addr.to_string(), method, path, cookie, headers, body)
    }

    /// The hub's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A fresh connection to the hub (from this client's source address, if it has one).
    fn connect(&self) -> TcpStream {
        match self.source {
            Some(ip) => super::fronts::connect_from(ip, self.addr).expect("connect"),
            None => TcpStream::connect(self.addr).expect("connect"),
        }
    }

    /// One request on a fresh connection, naming `host` in its `Host` header.
    pub fn send_to_host(
        &self,
        host: &str,
        method: &str,
        path: &str,
        cookie: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Res {
        let timeout = Duration::from_secs(60);
        self.request(self.connect(), timeout, host, method, path, cookie, headers, body)
            .expect("an HTTP answer")
    }

    /// One request on `tcp`: the answer, or what went wrong (the hub closed the connection
    /// without an answer, a TLS failure).
    pub fn try_send_on(
        &self,
        tcp: TcpStream,
        method: &str,
        path: &str,
        cookie: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Res, String> {
        let (timeout, host) = (Duration::from_secs(60), self.addr.to_string());
        self.request(tcp, timeout, &host, method, path, cookie, headers, body)
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        tcp: TcpStream,
        timeout: Duration,
        host: &str,
        method: &str,
        path: &str,
        cookie: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Res, String> {
        tcp.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let conn =
            rustls::ClientConnection::new(self.config.clone(), name).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        if !cookie.is_empty() {
            req.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        // The server may close without close_notify once the answer is complete.
        let _ = tls.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or("no status")?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Ok(Res { status, headers, body: body.to_owned() })
    }

    /// A GET on a fresh connection, or `None` if no answer comes within `timeout` (connect,
    /// TLS handshake and the answer together).
    pub fn try_get(&self, path: &str, timeout: Duration) -> Option<Res> {
        let tcp = match self.source {
            Some(ip) => super::fronts::connect_from(ip, self.addr).ok()?,
            None => TcpStream::connect_timeout(&self.addr, timeout).ok()?,
        };
        tcp.set_write_timeout(Some(timeout)).ok()?;
        self.request(tcp, timeout, &self.addr.to_string(), "GET", path, "", &[], "").ok()
    }

    pub fn get(&self, path: &str, cookie: &str) -> Res {
        self.send("GET", path, cookie, &[], "")
    }

    /// A same-origin form POST, as the browser sends it.
    pub fn post(&self, path: &str, cookie: &str, body: &str) -> Res {
        let origin = format!("https://{}", self.addr);
        self.send(
            "POST",
            path,
            cookie,
            &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
            body,
        )
    }

    /// Pre-login cookie and form token of a public page.
    pub fn pre(&self, path: &str) -> (String, String) {
        let r = self.get(path, "");
        assert_eq!(r.status, 200, "{}", r.body);
        (
            format!("__Host-hearth-pre={}", r.cookie("__Host-hearth-pre").expect("pre cookie")),
            r.csrf(),
        )
    }

    /// Creates the owner with `code`; the answer.
    pub fn setup(&self, code: &str, user: &str, password: &str) -> Res {
        let (cookie, csrf) = self.pre("/setup");
        let pw = password.replace(' ', "+");
        self.post(
            "/setup",
            &cookie,
            &format!("csrf={csrf}&code={code}&user={user}&password={pw}&confirm={pw}"),
        )
    }

    /// Logs in; the answer.
    pub fn login(&self, user: &str, password: &str) -> Res {
        let (cookie, csrf) = self.pre("/login");
        self.post(
            "/login",
            &cookie,
            &format!("csrf={csrf}&user={user}&password={}", password.replace(' ', "+")),
        )
    }
}

/// The hub's one-time setup code from its sticker file (checked to be private).
pub fn setup_code(hub: &Hub) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = hub.dir.join("setup-code");
    let mode = std::fs::metadata(&path).expect("setup-code file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the sticker file is private");
    std::fs::read_to_string(&path).expect("read").trim().to_owned()
}

const PASSWORD: &str = "quiet harbour 42";

#[test]
fn https_only_nothing_before_login_setup_once_throttling_and_csrf() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hub = Hub::start(&tmp.path().join("hub"), free_udp_port());
    let web = Client::new(&hub);

    // The served certificate is the one whose fingerprint was printed (the client pins it) and
    // the one in the data directory.
    let root = web.get("/", "");
    let pem = std::fs::read_to_string(hub.dir.join("hub-cert.pem")).expect("cert");
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
    assert_eq!(fingerprint(&der), web.fingerprint);

    // Plain HTTP on the same port gets no HTTP answer.
    let mut plain = TcpStream::connect(hub.web).expect("connect");
    plain.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    plain.write_all(b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n").expect("write");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/"), "plain HTTP was answered");

    // Nothing before login: pages redirect, data is refused, headers everywhere.
    assert_eq!((root.status, root.header("location")), (303, Some("/setup")));
    for path in [
        "/",
        "/pairing",
        "/updates",
        "/security",
        "/events",
        "/privacy",
        "/isolated",
        "/devices/01",
        "/static/../security",
    ] {
        let r = web.get(path, "");
        assert!(r.status == 303 && r.body.is_empty(), "{path}: {} {}", r.status, r.body);
    }
    let live = web.get("/live", "");
    assert_eq!(live.status, 401);
    let setup_page = web.get("/setup", "");
    for r in [&root, &live, &setup_page] {
        let csp = r.header("content-security-policy").expect("CSP");
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert!(r.header("strict-transport-security").is_some_and(|v| v.starts_with("max-age=")));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(r.header("server"), None);
    }
    assert!(
        !setup_page.body.contains("hearth-") && !setup_page.body.to_lowercase().contains("version")
    );

    // The setup code is only in its 0600 file: the console (the journal) says where, never the
    // code, and the log never has it.
    let code = setup_code(&hub);
    assert!(!hub.printed.iter().any(|l| l.contains(&code)), "the code is not printed");
    let sticker = hub.dir.join("setup-code").display().to_string();
    assert!(
        hub.printed.iter().any(|l| l.contains(&sticker)),
        "where the code is: {:?}",
        hub.printed
    );
    assert!(!std::fs::read_to_string(&hub.log).unwrap_or_default().contains(&code), "not logged");

    // The setup code works once; a wrong one is refused and counted.
    assert_eq!(web.setup("AAAA-BBBB-CCCC", "owner", PASSWORD).status, 403);
    assert_eq!(
        web.setup(&code, "owner", "password123").status,
        422,
        "a common password is refused"
    );
    let made = web.setup(&code, "owner", PASSWORD);
    assert_eq!((made.status, made.header("location")), (303, Some("/")));
    let set_cookie = made
        .headers
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case("set-cookie") && v.starts_with("__Host-hearth="))
        .expect("session")
        .1
        .clone();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(flag), "{set_cookie}");
    }
    assert!(!hub.dir.join("setup-code").exists(), "the sticker file goes once used");
    let (pre, token) = web.pre("/login");
    let again = web.post(
        "/setup",
        &pre,
        &format!("csrf={token}&code={code}&user=thief&password=another+password+9&confirm=another+password+9"),
    );
    assert_eq!((again.status, again.header("location")), (303, Some("/login")));
    // The vault is sealed in the store: no file of the data directory holds the password hash.
    let mut files = vec![hub.dir.clone()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).expect("dir").filter_map(|e| Some(e.ok()?.path())));
        } else if let Ok(bytes) = std::fs::read(&p) {
            let found = bytes.windows(7).any(|w| w == b"argon2i");
            assert!(!found, "{} holds a password hash in the clear", p.display());
        }
    }
    assert!(!hub.dir.join("web-vault.sealed").exists(), "the vault is in the store");

    // Logged in, the pages render.
    let session = format!("__Host-hearth={}", made.cookie("__Host-hearth").expect("cookie"));
    let dash = web.get("/", &session);
    assert_eq!(dash.status, 200);
    assert!(dash.body.contains("No devices yet"));
    let security = web.get("/security", &session);
    assert!(
        security.body.contains("5.4-1") && security.body.contains(&web.fingerprint),
        "{}",
        security.body
    );
    let csrf = dash.csrf();

    // State changes: without the token, with a stale one, or from another site: refused.
    assert_eq!(web.post("/pairing/open", &session, "seconds=120").status, 422);
    assert_eq!(
        web.post("/pairing/open", &session, &format!("csrf={}&seconds=120", "a".repeat(64))).status,
        403
    );
    let cross = web.send(
        "POST",
        "/pairing/open",
        &session,
        &[("Origin", "https://evil.example")],
        &format!("csrf={csrf}&seconds=120"),
    );
    assert_eq!(cross.status, 403);
    let cross = web.send(
        "POST",
        "/pairing/open",
        &session,
        &[("Sec-Fetch-Site", "cross-site")],
        &format!("csrf={csrf}&seconds=120"),
    );
    assert_eq!(cross.status, 403);
    // The Origin must be one of the certificate's names on the served port; the request's own
    // Host vouches for nothing (a name rebound to the hub by DNS sends a matching one).
    let port = web.addr.port();
    let body = format!("csrf={csrf}&seconds=120");
    for (host, origin) in [
        (format!("evil.example:{port}"), format!("https://evil.example:{port}")),
        (format!("127.0.0.1:{}", port + 1), format!("https://127.0.0.1:{}", port + 1)),
        (format!("localhost:{port}"), format!("http://localhost:{port}")),
    ] {
        let headers = [("Origin", origin.as_str()), ("Sec-Fetch-Site", "same-origin")];
        let r = web.send_to_host(&host, "POST", "/pairing/open", &session, &headers, &body);
        assert_eq!(r.status, 403, "{origin}: {}", r.body);
    }
    assert_eq!(hub.ctl(&["pair", "status"])["open"], false, "nothing refused took effect");
    let big = format!("csrf={csrf}&pin={}", "1".repeat(20_000));
    assert_eq!(web.post("/pairing/pin", &session, &big).status, 413);
    // Another of the hub's own names passes.
    let own = format!("https://localhost:{port}");
    let headers = [("Origin", own.as_str()), ("Sec-Fetch-Site", "same-origin")];
    let r = web.send("POST", "/pairing/open", &session, &headers, &body);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(hub.ctl(&["pair", "status"])["open"], true);

    // Wrong passwords: counted, then backed off (even the right one is not checked), and the
    // back-off expires by itself.
    for _ in 0..3 {
        assert_eq!(web.login("owner", "not my password").status, 401);
    }
    let held = web.login("owner", PASSWORD);
    assert_eq!(held.status, 429);
    assert_eq!(held.header("retry-after"), Some("1"));
    let back = wait_for("the back-off to expire", Duration::from_secs(30), || {
        let r = web.login("owner", PASSWORD);
        (r.status != 429).then_some(r)
    });
    assert_eq!((back.status, back.header("location")), (303, Some("/")));
    let events = web.get("/events", &session);
    assert!(events.body.contains("data-event=\"web_login_failed\""), "{}", events.body);
    assert!(
        events.body.contains("<td>3</td><td>3</td>"),
        "three failed logins counted: {}",
        events.body
    );
}
