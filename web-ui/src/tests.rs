//! Router tests: every route through `oneshot` against a fake hub, with an injected clock —
//! success and error paths, authentication, CSRF and cross-site refusals, limits, throttling.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

use admission::{Cost, HashBudget, Limits};

use crate::api::*;
use crate::guard::{ClientAddr, DEVICE_COOKIE, SESSION_COOKIE};
use crate::state::{Clock, Web, WebEvent};

const CODE: &str = "ABCD-EFGH-JKLM";
const PASSWORD: &str = "blue tomato 7";
const CHEAP: Cost = Cost { m_kib: 64, t: 1 };

fn budget() -> HashBudget {
    HashBudget::new(Limits::default(), CHEAP).expect("budget")
}

fn first_run(code: &str) -> Vec<u8> {
    budget().run_now(|h| crate::Vault::first_run(code, h)).expect("slot").expect("vault")
}
const MODEL: &str = "hearth-thermo-1";

#[derive(Default)]
struct FakeState {
    devices: Vec<Device>,
    pairing: Pairing,
    policy: Option<Policy>,
    approved: Vec<(String, u32)>,
    pins: Vec<String>,
    removed: Vec<String>,
    vault: Option<Vec<u8>>,
    logins: Option<Vec<u8>>,
    logins_stored: u32,
    setup_done: u32,
    erased: u32,
    counters: Vec<Counter>,
    delivering: Option<(u32, u32, u32)>,
}

#[derive(Default)]
struct Fake {
    s: Mutex<FakeState>,
    n: AtomicU64,
}

impl Fake {
    fn s(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.s.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn ready<T: Send + 'static>(v: Result<T, ApiError>) -> ApiFuture<'static, T> {
    Box::pin(async move { v })
}

fn device(id: &str, availability: Availability) -> Device {
    Device {
        id: id.into(),
        name: None,
        room: None,
        model: MODEL.into(),
        serial: format!("SN-{id}"),
        firmware: 1,
        updatable: true,
        verifies_signatures: false,
        capabilities: vec!["temperature".into(), "humidity".into()],
        support_end: 4_102_444_800,
        paired_at: 1_700_000_000,
        availability,
        last: vec![reading(3, 21.5)],
    }
}

fn reading(t: i64, v: f64) -> Reading {
    Reading {
        time_ms: t * 1000,
        name: "temp".into(),
        unit: Some("Cel".into()),
        value: Some(v),
        text: format!("{v:.1}"),
    }
}

impl OwnerApi for Fake {
    fn devices(&self) -> ApiFuture<'_, Vec<Device>> {
        ready(Ok(self.s().devices.clone()))
    }
    fn device(&self, id: &str) -> ApiFuture<'_, (Device, Vec<HistoryLine>)> {
        let d = self.s().devices.iter().find(|d| d.id == id).cloned();
        let h = vec![HistoryLine {
            at: 1_700_000_100,
            version: 2,
            event: "offered".into(),
            detail: String::new(),
        }];
        ready(d.map(|d| (d, h)).ok_or(ApiError::NotFound))
    }
    fn readings(&self, id: &str, limit: usize) -> ApiFuture<'_, Vec<Reading>> {
        let known = self.s().devices.iter().any(|d| d.id == id);
        let r: Vec<Reading> =
            (0..limit.min(10) as i64).map(|i| reading(i, 20.0 + i as f64 / 2.0)).collect();
        ready(if known { Ok(r) } else { Err(ApiError::NotFound) })
    }
    fn remove(&self, id: &str) -> ApiFuture<'_, ()> {
        let mut s = self.s();
        let before = s.devices.len();
        s.devices.retain(|d| d.id != id);
        let found = s.devices.len() < before;
        s.removed.push(id.into());
        ready(if found { Ok(()) } else { Err(ApiError::NotFound) })
    }
    fn pairing(&self) -> ApiFuture<'_, Pairing> {
        ready(Ok(self.s().pairing.clone()))
    }
    fn pair_open(&self, seconds: u64) -> ApiFuture<'_, Pairing> {
        let mut s = self.s();
        s.pairing = Pairing {
            open: true,
            closes_in_s: seconds,
            attempts_left: 3,
            waiting: vec![("SN-9".into(), MODEL.into())],
            ..Pairing::default()
        };
        ready(Ok(s.pairing.clone()))
    }
    fn pair_close(&self) -> ApiFuture<'_, Pairing> {
        self.s().pairing = Pairing::default();
        ready(Ok(Pairing::default()))
    }
    fn pair_pin(
        &self,
        pin: String,
        _serial: Option<String>,
        replaces: Option<String>,
        accept_risk: bool,
    ) -> ApiFuture<'_, String> {
        let mut s = self.s();
        s.pins.push(pin.clone());
        if !s.pairing.warnings.is_empty() && !accept_risk {
            return ready(Err(ApiError::Refused(
                "sensor SN-9: it will be isolated. To pair it anyway, tick".into(),
            )));
        }
        ready(if pin == "12345" {
            let mut new = device("0a", Availability::Online);
            if let Some(old) = replaces {
                let Some(at) = s.devices.iter().position(|d| d.id == old) else {
                    return ready(Err(ApiError::NotFound));
                };
                new.name = s.devices.remove(at).name.or(Some("inherited".into()));
            }
            s.devices.push(new);
            Ok("0a".into())
        } else {
            s.pairing.attempts_left = s.pairing.attempts_left.saturating_sub(1);
            Err(ApiError::Refused("the sensor did not confirm: wrong PIN".into()))
        })
    }
    fn label(&self, id: &str, name: String, room: Option<String>) -> ApiFuture<'_, ()> {
        let mut s = self.s();
        let Some(d) = s.devices.iter_mut().find(|d| d.id == id) else {
            return ready(Err(ApiError::NotFound));
        };
        d.name = Some(name);
        d.room = room;
        ready(Ok(()))
    }
    fn updates(&self) -> ApiFuture<'_, Updates> {
        let s = self.s();
        ready(Ok(Updates {
            policy: s.policy.unwrap_or(Policy::Auto),
            releases: vec![Release {
                model: MODEL.into(),
                version: 2,
                risks_mitigated: "Fixes CVE-2026-0001 in the CoAP parser.".into(),
                disruptive: true,
                size: 65_536,
            }],
            refused: vec![(1_700_000_000, "feed".into(), "bad signature".into())],
            devices: s
                .devices
                .iter()
                .map(|d| DeviceUpdate {
                    id: d.id.clone(),
                    model: d.model.clone(),
                    installed: d.firmware,
                    available: Some(2),
                    waiting_for: Some("approval".into()),
                    delivering: s.delivering,
                })
                .collect(),
        }))
    }
    fn set_policy(&self, policy: Policy) -> ApiFuture<'_, ()> {
        self.s().policy = Some(policy);
        ready(Ok(()))
    }
    fn approve(&self, model: String, version: u32) -> ApiFuture<'_, ()> {
        if version != 2 {
            return ready(Err(ApiError::Refused(format!("no release {version}"))));
        }
        self.s().approved.push((model, version));
        ready(Ok(()))
    }
    fn counters(&self) -> ApiFuture<'_, Vec<Counter>> {
        ready(Ok(self.s().counters.clone()))
    }
    fn checks(&self) -> ApiFuture<'_, Vec<Check>> {
        ready(Ok(vec![Check {
            provision: "5.4-1".into(),
            title: "Secrets at rest".into(),
            ok: true,
            state: "sealed; kek mode 600".into(),
        }]))
    }
    fn load_vault(&self) -> ApiFuture<'_, Option<Vec<u8>>> {
        ready(Ok(self.s().vault.clone()))
    }
    fn store_vault(&self, doc: Vec<u8>) -> ApiFuture<'_, ()> {
        self.s().vault = Some(doc);
        ready(Ok(()))
    }
    fn load_logins(&self) -> ApiFuture<'_, Option<Vec<u8>>> {
        ready(Ok(self.s().logins.clone()))
    }
    fn store_logins(&self, doc: Vec<u8>) -> ApiFuture<'_, ()> {
        let mut s = self.s();
        s.logins = Some(doc);
        s.logins_stored += 1;
        ready(Ok(()))
    }
    fn setup_done(&self) -> ApiFuture<'_, ()> {
        self.s().setup_done += 1;
        ready(Ok(()))
    }
    fn erase_all(&self) -> ApiFuture<'_, ()> {
        let mut s = self.s();
        s.devices.clear();
        s.erased += 1;
        s.vault = Some(first_run("NEWC-ODEN-EWCO"));
        ready(Ok(()))
    }
    fn random(&self, buf: &mut [u8]) {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> ((i % 8) * 8)) as u8 ^ i as u8;
        }
    }
}

struct App {
    router: Router,
    web: Arc<Web>,
    fake: Arc<Fake>,
    now: Arc<AtomicU64>,
}

async fn app() -> App {
    app_with(Arc::new(Fake::default()), budget()).await
}

fn policy() -> admission::Policy {
    admission::Policy::default()
}

async fn app_with(fake: Arc<Fake>, budget: HashBudget) -> App {
    if fake.s().vault.is_none() {
        let mut s = fake.s();
        s.vault = Some(first_run(CODE));
        s.devices = vec![
            device("01", Availability::Online),
            device(
                "02",
                Availability::Isolated {
                    reason: "vulnerable (advisory HA-1) and cannot be updated".into(),
                    replacement: "Replace it with a hearth-thermo-2.".into(),
                },
            ),
        ];
        s.counters = vec![Counter { name: "bad_tag".into(), label: "Bad tags".into(), value: 0 }];
    }
    let now = Arc::new(AtomicU64::new(1_800_000_000_000));
    let n = now.clone();
    let clock: Clock = Arc::new(move || n.load(Ordering::Relaxed));
    let web = Web::new(fake.clone(), budget, policy(), clock).await;
    App { router: crate::router(web.clone()), web, fake, now }
}

struct Res {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Res {
    fn cookie(&self, name: &str) -> Option<String> {
        self.headers.get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(
            |c| {
                let (kv, _) = c.split_once(';')?;
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.to_owned())
            },
        )
    }
    fn location(&self) -> &str {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").expect("a form with a csrf field") + 19;
        self.body[at..at + 64].to_owned()
    }
}

async fn to_res(r: Response<Body>) -> Res {
    let (parts, body) = r.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    Res {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

impl App {
    async fn send(&self, mut req: Request<Body>) -> Res {
        // The server tells the guards where the hub's pages are served from.
        if req.extensions().get::<Arc<crate::guard::Origins>>().is_none() {
            let origins = crate::guard::Origins::new(&["hub.local".into()], 8443);
            req.extensions_mut().insert(Arc::new(origins));
        }
        to_res(self.router.clone().oneshot(req).await.expect("infallible")).await
    }

    async fn get(&self, path: &str, cookie: &str) -> Res {
        let req =
            Request::get(path).header(header::COOKIE, cookie).body(Body::empty()).expect("req");
        self.send(req).await
    }

    fn post_req(path: &str, cookie: &str, body: &str) -> axum::http::request::Builder {
        let _ = body;
        Request::post(path)
            .header(header::COOKIE, cookie)
            .header(header::HOST, "hub.local:8443")
            .header(header::ORIGIN, "https://hub.local:8443")
            .header("sec-fetch-site", "same-origin")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
    }

    async fn post(&self, path: &str, cookie: &str, body: &str) -> Res {
        let req =
            Self::post_req(path, cookie, body).body(Body::from(body.to_owned())).expect("req");
        self.send(req).await
    }

    async fn post_from(&self, ip: [u8; 4], path: &str, cookie: &str, body: &str) -> Res {
        let mut req =
            Self::post_req(path, cookie, body).body(Body::from(body.to_owned())).expect("req");
        req.extensions_mut().insert(ClientAddr(std::net::IpAddr::from(ip)));
        self.send(req).await
    }

    /// The pre-login cookie and the form token of a public page.
    async fn pre(&self, path: &str) -> (String, String) {
        let page = self.get(path, "").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let pre = page.cookie("__Host-hearth-pre").expect("pre cookie");
        (format!("__Host-hearth-pre={pre}"), page.csrf())
    }

    /// Sets up the owner; returns the session cookie and its CSRF token.
    async fn owner(&self) -> (String, String) {
        let (cookie, csrf) = self.pre("/setup").await;
        let body = format!(
            "csrf={csrf}&code={CODE}&user=owner&password=blue+tomato+7&confirm=blue+tomato+7"
        );
        let r = self.post("/setup", &cookie, &body).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
        self.session(&r).await
    }

    async fn session(&self, r: &Res) -> (String, String) {
        let cookie =
            format!("{SESSION_COOKIE}={}", r.cookie(SESSION_COOKIE).expect("session cookie"));
        let page = self.get("/account", &cookie).await;
        assert_eq!(page.status, StatusCode::OK);
        (cookie.clone(), page.csrf())
    }

    async fn login(&self, ip: [u8; 4], user: &str, password: &str) -> Res {
        self.login_with(ip, user, password, "").await
    }

    /// Logs in from a browser that also sends `device` (`__Host-hearth-device=...`, or empty).
    async fn login_with(&self, ip: [u8; 4], user: &str, password: &str, device: &str) -> Res {
        let (cookie, csrf) = self.pre("/login").await;
        let cookie = if device.is_empty() { cookie } else { format!("{cookie}; {device}") };
        let body = format!("csrf={csrf}&user={user}&password={}", password.replace(' ', "+"));
        self.post_from(ip, "/login", &cookie, &body).await
    }

    fn advance(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::Relaxed);
    }

    fn total(&self, e: crate::state::WebEvent) -> u64 {
        self.web.total(e)
    }
}

const PAGES: &[&str] = &[
    "/",
    "/pairing",
    "/devices/01",
    "/updates",
    "/isolated",
    "/security",
    "/events",
    "/privacy",
    "/account",
    "/nowhere",
];
const POSTS: &[&str] = &[
    "/logout",
    "/account/password",
    "/pairing/open",
    "/pairing/close",
    "/pairing/pin",
    "/devices/01/remove",
    "/updates/policy",
    "/updates/approve",
    "/privacy/consent",
    "/privacy/erase",
];

#[tokio::test]
async fn nothing_is_served_before_login_and_every_answer_has_the_security_headers() {
    let app = app().await;
    for path in PAGES {
        let r = app.get(path, "").await;
        assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/setup"), "{path}");
        assert!(!r.body.contains(MODEL), "{path} leaks");
    }
    app.owner().await;
    for path in PAGES {
        let r = app
            .get(
                path,
                "__Host-hearth=ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            )
            .await;
        assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/login"), "{path}");
        assert!(r.body.is_empty());
    }
    for path in POSTS {
        let r = app.post(path, "", "csrf=x").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(!r.body.contains(MODEL));
    }
    let live = app.get("/live", "").await;
    assert_eq!(live.status, StatusCode::UNAUTHORIZED);
    let login = app.get("/login", "").await;
    for word in [MODEL, "version", "firmware", env!("CARGO_PKG_VERSION")] {
        assert!(
            !login.body.to_lowercase().contains(&word.to_lowercase()),
            "login page shows {word}"
        );
    }
    for r in [&live, &login] {
        let h = |k: &str| r.headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        assert_eq!(h("content-security-policy"), crate::guard::CSP);
        assert!(h("content-security-policy").contains("frame-ancestors 'none'"));
        assert!(h("strict-transport-security").starts_with("max-age="));
        assert_eq!(h("x-content-type-options"), "nosniff");
        assert_eq!(h("referrer-policy"), "no-referrer");
    }
    assert!(
        !login.body.contains("<script>") && !login.body.contains("style=\""),
        "no inline script or style"
    );
    let js = app.get("/static/app.js", "").await;
    assert_eq!(js.status, StatusCode::OK);
    assert_eq!(js.headers[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    assert!(js.body.contains("EventSource"));
    let css = app.get("/static/app.css", "").await;
    assert_eq!(css.headers[header::CONTENT_TYPE], "text/css; charset=utf-8");
    assert!(app.total(crate::state::WebEvent::Unauthenticated) >= 20);
}

#[tokio::test]
async fn the_setup_code_creates_the_owner_once_with_a_real_password() {
    let app = app().await;
    assert_eq!(app.get("/login", "").await.location(), "/setup");
    let (cookie, csrf) = app.pre("/setup").await;
    let form = |code: &str, pw: &str, confirm: &str| {
        format!("csrf={csrf}&code={code}&user=owner&password={pw}&confirm={confirm}")
    };
    let r = app
        .post("/setup", &cookie, &form("ABCD-EFGH-JKLN", "blue+tomato+7", "blue+tomato+7"))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("setup code is not valid"));
    assert_eq!(app.total(crate::state::WebEvent::SetupCodeRefused), 1);
    for (pw, confirm) in [
        ("short", "short"),
        ("password123", "password123"),
        ("abcdefghijk", "abcdefghijx"),
        ("abcd-efgh-jklm", "abcd-efgh-jklm"),
    ] {
        let r = app.post("/setup", &cookie, &form(CODE, pw, confirm)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{pw}: {}", r.body);
    }
    assert!(
        app.fake
            .s()
            .vault
            .as_ref()
            .is_some_and(|v| crate::Vault::parse(v).is_some_and(|v| v.needs_setup()))
    );
    // Lower case and without dashes works too.
    let r =
        app.post("/setup", &cookie, &form("abcdefghjklm", "blue+tomato+7", "blue+tomato+7")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/"), "{}", r.body);
    let set = r
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .collect::<Vec<_>>();
    let session = set.iter().find(|c| c.starts_with("__Host-hearth=")).expect("session cookie");
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(session.contains(flag), "{session}");
    }
    assert_eq!(app.fake.s().setup_done, 1);
    let vault = app.fake.s().vault.clone().expect("stored");
    assert!(!String::from_utf8_lossy(&vault).contains("tomato"), "password stored in clear");
    assert!(String::from_utf8_lossy(&vault).contains("$argon2id$"));
    // The code is void now.
    let r =
        app.post("/setup", &cookie, &form(CODE, "another+password+8", "another+password+8")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/login"));
    assert_eq!(app.get("/setup", "").await.location(), "/login");
    let (s, _) = app.session(&r_with_cookie(session)).await;
    assert_eq!(app.get("/", &s).await.status, StatusCode::OK);
}

fn r_with_cookie(set_cookie: &str) -> Res {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(header::SET_COOKIE, set_cookie.parse().expect("header"));
    Res { status: StatusCode::OK, headers, body: String::new() }
}

#[tokio::test]
async fn wrong_passwords_back_off_exponentially_per_account_and_address_and_the_wait_expires() {
    let app = app().await;
    app.owner().await;
    let ip = [192, 0, 2, 7];
    for _ in 0..3 {
        assert_eq!(app.login(ip, "owner", "wrong password").await.status, StatusCode::UNAUTHORIZED);
    }
    // Backing off: even the right password is not checked.
    let r = app.login(ip, "owner", PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers[header::RETRY_AFTER], "1");
    // Per account: another address is refused too.
    assert_eq!(
        app.login([192, 0, 2, 8], "owner", PASSWORD).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    app.advance(1_000);
    assert_eq!(app.login(ip, "owner", "wrong again!").await.status, StatusCode::UNAUTHORIZED);
    let r = app.login(ip, "owner", PASSWORD).await;
    assert_eq!(
        (r.status, r.headers[header::RETRY_AFTER].to_str().ok()),
        (StatusCode::TOO_MANY_REQUESTS, Some("2"))
    );
    app.advance(2_000);
    let r = app.login(ip, "owner", PASSWORD).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/"), "the back-off expired");
    assert_eq!(app.total(crate::state::WebEvent::LoginFailed), 4);
    assert_eq!(app.total(crate::state::WebEvent::LoginThrottled), 3);
    // Per address: guessing user names from one address backs off that address.
    let other = [198, 51, 100, 1];
    for user in ["a", "b", "c"] {
        assert_eq!(app.login(other, user, "whatever12").await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(app.login(other, "d", "whatever12").await.status, StatusCode::TOO_MANY_REQUESTS);
    let ok = app.login(ip, "owner", PASSWORD).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "others are not locked out");
    // The events page flags the spike of failed logins.
    let (s, _) = app.session(&ok).await;
    let events = app.get("/events", &s).await;
    assert!(events.body.contains("anomaly flag"), "{}", events.body);
    assert!(
        events.body.contains("class=\"anomaly\" data-event=\"web_login_failed\""),
        "{}",
        events.body
    );
    // Never permanent: after many failures the wait is capped at five minutes.
    for _ in 0..40 {
        app.login(other, "e", "whatever12").await;
        app.advance(policy().max_ms);
    }
    assert_eq!(app.login(other, "owner", PASSWORD).await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn state_changes_need_the_session_token_and_the_same_origin() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    let r = app.post("/pairing/open", &s, "seconds=120").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "a missing token field is malformed");
    let r = app.post("/pairing/open", &s, &format!("csrf={}&seconds=120", "0".repeat(64))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(app.total(crate::state::WebEvent::CsrfRefused), 1);
    // Another session's token does not do.
    let (_, csrf2) = app.session(&app.login([10, 0, 0, 1], "owner", PASSWORD).await).await;
    assert_ne!(csrf, csrf2);
    assert_eq!(
        app.post("/pairing/open", &s, &format!("csrf={csrf2}&seconds=120")).await.status,
        StatusCode::FORBIDDEN
    );
    let body = format!("csrf={csrf}&seconds=120");
    let refused: [&[(&str, &str)]; 5] = [
        &[("sec-fetch-site", "cross-site")],
        &[("sec-fetch-site", "same-site")],
        &[("sec-fetch-site", "none")],
        &[("origin", "https://evil.example")],
        &[("origin", "https://hub.local:8444")],
    ];
    for headers in refused {
        let mut req =
            App::post_req("/pairing/open", &s, &body).body(Body::from(body.clone())).expect("req");
        for (k, v) in headers {
            req.headers_mut().insert(*k, v.parse().expect("value"));
        }
        let r = app.send(req).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    // `Origin: null` (sent under no-referrer) passes only with Sec-Fetch-Site: same-origin.
    let mut req =
        App::post_req("/pairing/open", &s, &body).body(Body::from(body.clone())).expect("req");
    req.headers_mut().insert("origin", "null".parse().expect("value"));
    req.headers_mut().remove("sec-fetch-site");
    assert_eq!(app.send(req).await.status, StatusCode::FORBIDDEN, "null origin alone");
    assert_eq!(app.total(crate::state::WebEvent::CrossSite), 6);
    assert!(!app.fake.s().pairing.open, "nothing refused took effect");
    // Login forms need the pre-login token too.
    let r = app.post("/login", "", "csrf=abc&user=owner&password=blue+tomato+7").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let mut req =
        App::post_req("/pairing/open", &s, &body).body(Body::from(body.clone())).expect("req");
    req.headers_mut().insert("origin", "null".parse().expect("value"));
    let r = app.send(req).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/pairing?m=opened"));
    assert!(app.fake.s().pairing.open);
}

#[tokio::test]
async fn oversized_and_malformed_input_is_refused_and_counted() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    use crate::state::WebEvent::{Malformed, TooLarge};
    let big = format!("csrf={csrf}&pin={}&serial=", "1".repeat(crate::guard::BODY_LIMIT));
    assert_eq!(app.post("/pairing/pin", &s, &big).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.total(TooLarge), 1);
    let before = app.total(Malformed);
    let cases = [
        (
            "/updates/approve",
            format!("csrf={csrf}&model=m&version=two"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("/updates/approve", format!("csrf={csrf}&model=m"), StatusCode::UNPROCESSABLE_ENTITY),
        (
            "/updates/approve",
            format!("csrf={csrf}&model=m&version=2&extra=1"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/pairing/pin",
            format!("csrf={csrf}&pin=12a45&serial=&replaces="),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/pairing/pin",
            format!("csrf={csrf}&pin=123&serial=&replaces="),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("/pairing/open", format!("csrf={csrf}&seconds=999999"), StatusCode::UNPROCESSABLE_ENTITY),
        (
            "/updates/policy",
            format!("csrf={csrf}&mode=sometimes&days="),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/updates/policy",
            format!("csrf={csrf}&mode=postponed&days=900"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/privacy/consent",
            format!("csrf={csrf}&consent=maybe"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("/devices/zz/remove", format!("csrf={csrf}"), StatusCode::BAD_REQUEST),
        (
            "/pairing/pin",
            format!("csrf={csrf}&pin=12345&serial=&replaces=../x"),
            StatusCode::BAD_REQUEST,
        ),
        ("/devices/01/label", format!("csrf={csrf}&name=&room="), StatusCode::UNPROCESSABLE_ENTITY),
        (
            "/devices/01/label",
            format!("csrf={csrf}&name={}&room=", "n".repeat(65)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (path, body, status) in &cases {
        let r = app.post(path, &s, body).await;
        assert_eq!(r.status, *status, "{path} {body}: {}", r.body);
    }
    let r = app.get("/devices/not-hex", &s).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let mut req = Request::post("/privacy/consent")
        .header(header::COOKIE, &s)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .expect("req");
    req.headers_mut().insert(header::HOST, "h".parse().expect("h"));
    assert_eq!(app.send(req).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(app.total(Malformed), before + cases.len() as u64 + 2);
    assert!(app.fake.s().pins.is_empty() && app.fake.s().approved.is_empty());
}

#[tokio::test]
async fn dashboard_device_and_isolated_pages_show_the_hubs_state() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    let dash = app.get("/", &s).await;
    assert_eq!(dash.status, StatusCode::OK);
    for want in [
        "data-ids=\"01,02\"",
        "data-reading=\"01\">temp 21.5 Cel",
        "<svg class=\"chart\"",
        "<polyline",
        "badge isolated",
        "data-live=\"1\"",
    ] {
        assert!(dash.body.contains(want), "dashboard lacks {want}");
    }
    let d = app.get("/devices/01", &s).await;
    for want in [
        MODEL,
        "SN-01",
        "version 1",
        "until 2100-01-01",
        "temperature, humidity",
        "offered",
        "Remove this device",
    ] {
        assert!(d.body.contains(want), "device page lacks {want}");
    }
    assert_eq!(app.get("/devices/0f", &s).await.status, StatusCode::NOT_FOUND);
    let iso = app.get("/isolated", &s).await;
    assert!(
        iso.body.contains("data-isolated=\"02\"")
            && iso.body.contains("vulnerable (advisory HA-1)"),
        "{}",
        iso.body
    );
    assert!(iso.body.contains("Replace it with a hearth-thermo-2."));
    assert!(!iso.body.contains("data-isolated=\"01\""));
    let r = app.post("/devices/01/remove", &s, &format!("csrf={csrf}")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/?m=removed"));
    assert_eq!(
        app.post("/devices/01/remove", &s, &format!("csrf={csrf}")).await.status,
        StatusCode::NOT_FOUND
    );
    let dash = app.get("/?m=removed", &s).await;
    assert!(!dash.body.contains("data-reading=\"01\""));
    app.fake.s().devices.clear();
    assert!(app.get("/", &s).await.body.contains("No devices yet"));
}

#[tokio::test]
async fn pairing_shows_the_back_off_and_warnings_and_needs_the_owner_to_accept_the_risk() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    app.post("/pairing/open", &s, &format!("csrf={csrf}&seconds=120")).await;
    {
        let mut st = app.fake.s();
        st.pairing.open = false;
        st.pairing.backoff_s = 4;
        st.pairing.warnings =
            vec![("SN-9".into(), "it will be isolated as soon as it pairs".into())];
    }
    let p = app.get("/pairing", &s).await;
    assert!(p.body.contains("PINs are taken again in 4 s"), "{}", p.body);
    assert!(!p.body.contains("Pairing is <strong>closed</strong>"));
    assert!(p.body.contains("⚠ it will be isolated as soon as it pairs"));
    assert!(p.body.contains("name=\"accept\""));
    let r =
        app.post("/pairing/pin", &s, &format!("csrf={csrf}&pin=12345&serial=SN-9&replaces=")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("To pair it anyway"));
    let r = app
        .post(
            "/pairing/pin",
            &s,
            &format!("csrf={csrf}&pin=12345&serial=SN-9&replaces=&accept=yes"),
        )
        .await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/pairing?m=paired"));
}

#[tokio::test]
async fn pairing_opens_counts_down_takes_a_pin_and_closes() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    let p = app.get("/pairing", &s).await;
    assert!(
        p.body.contains("Pairing is <strong>closed</strong>") && p.body.contains("1 in 32,768")
    );
    app.post("/pairing/open", &s, &format!("csrf={csrf}&seconds=120")).await;
    let p = app.get("/pairing?m=opened", &s).await;
    for want in
        ["data-countdown=\"120\"", "<span data-attempts>3</span>", "SN-9", "Pairing window open."]
    {
        assert!(p.body.contains(want), "pairing page lacks {want}");
    }
    let r =
        app.post("/pairing/pin", &s, &format!("csrf={csrf}&pin=11111&serial=SN-9&replaces=")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.body.contains("Not paired: the sensor did not confirm")
            && r.body.contains("<span data-attempts>2</span>")
    );
    let r = app.post("/pairing/pin", &s, &format!("csrf={csrf}&pin=12345&serial=&replaces=")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/pairing?m=paired"));
    assert_eq!(app.fake.s().pins, ["11111", "12345"]);
    assert!(app.get("/", &s).await.body.contains("data-reading=\"0a\""));
    let r = app.post("/pairing/close", &s, &format!("csrf={csrf}")).await;
    assert_eq!(r.location(), "/pairing?m=closed");
    assert!(!app.fake.s().pairing.open);

    // Naming, and a replacement for the isolated sensor that takes over its name.
    let r = app
        .post("/devices/02/label", &s, &format!("csrf={csrf}&name=Hall+thermostat&room=Hall"))
        .await;
    assert_eq!(r.location(), "/devices/02?m=labelled");
    let d = app.get("/devices/02?m=labelled", &s).await;
    assert!(
        d.body.contains("Name and room saved.") && d.body.contains("Hall thermostat (Hall)"),
        "{}",
        d.body
    );
    assert!(d.body.contains("href=\"/pairing?replaces=02\""));
    let p = app.get("/pairing?replaces=02", &s).await;
    assert!(
        p.body.contains("<option value=\"02\" selected>Hall thermostat (Hall) (isolated)</option>"),
        "{}",
        p.body
    );
    assert!(!app.get("/pairing?replaces=%3Cb%3E", &s).await.body.contains("<b>"));
    let r =
        app.post("/pairing/pin", &s, &format!("csrf={csrf}&pin=12345&serial=&replaces=02")).await;
    assert_eq!(r.location(), "/pairing?m=paired");
    let devices = app.fake.s().devices.clone();
    assert!(devices.iter().all(|d| d.id != "02"));
    assert!(devices.iter().any(|d| d.name.as_deref() == Some("Hall thermostat")));
    let r = app.post("/devices/0f/label", &s, &format!("csrf={csrf}&name=x&room=")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn updates_show_risks_and_disruption_take_policy_and_approval_and_report_progress() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    let u = app.get("/updates", &s).await;
    for want in [
        "CVE-2026-0001",
        "Disruptive:",
        "Approve version 2",
        "bad signature",
        "install automatically",
        "value=\"0\" data-progress=\"01\"",
        "version 2 available approval",
    ] {
        assert!(u.body.contains(want), "updates page lacks {want}");
    }
    let r = app.post("/updates/policy", &s, &format!("csrf={csrf}&mode=postponed&days=7")).await;
    assert_eq!(r.location(), "/updates?m=policy");
    let now_s = app.web.now_ms() / 1000;
    assert_eq!(app.fake.s().policy, Some(Policy::Postponed(now_s + 7 * 86_400)));
    app.post("/updates/policy", &s, &format!("csrf={csrf}&mode=notify_only&days=")).await;
    assert_eq!(app.fake.s().policy, Some(Policy::NotifyOnly));
    let r = app.post("/updates/approve", &s, &format!("csrf={csrf}&model={MODEL}&version=2")).await;
    assert_eq!(r.location(), "/updates?m=approved");
    assert_eq!(app.fake.s().approved, [(MODEL.to_owned(), 2)]);
    let r = app.post("/updates/approve", &s, &format!("csrf={csrf}&model={MODEL}&version=3")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("no release 3"));
    app.fake.s().delivering = Some((2, 5, 10));
    assert!(app.get("/updates", &s).await.body.contains("value=\"50\" data-progress=\"01\""));
    {
        let mut f = app.fake.s();
        f.delivering = None;
        f.devices.iter_mut().for_each(|d| d.firmware = 2);
    }
    let u = app.get("/updates", &s).await;
    assert!(
        u.body.contains("value=\"100\" data-progress=\"01\"")
            && u.body.contains("version 2 installed: 100 %")
    );
}

#[tokio::test]
async fn security_status_and_events_are_computed_from_current_state() {
    let app = app().await;
    let (s, _) = app.owner().await;
    let page = app.get("/security", &s).await;
    for want in [
        "5.1-1",
        "Owner account “owner”",
        "5.1-5",
        "5.4-1",
        "sealed; kek mode 600",
        "5.6-2",
        "5.10-1",
        "5.11-1",
        "5.13-1",
        "6-3",
        "10 of 10 met now",
    ] {
        assert!(page.body.contains(want), "self-check lacks {want}: {}", page.body);
    }
    assert!(page.body.find("5.1-5") < page.body.find("5.4-1"), "sorted by provision");
    // A spike of bad tags within five minutes raises a flag, and the self-check shows it.
    app.advance(6 * 60_000);
    app.fake.s().counters[0].value = 50;
    let events = app.get("/events", &s).await;
    assert!(events.body.contains("class=\"anomaly\" data-event=\"bad_tag\""), "{}", events.body);
    let page = app.get("/security", &s).await;
    assert!(
        page.body.contains("9 of 10 met now") && page.body.contains("1 anomaly flag(s)"),
        "{}",
        page.body
    );
    // Five quiet minutes later the flag is gone.
    app.advance(6 * 60_000);
    app.get("/events", &s).await;
    app.advance(6 * 60_000);
    let events = app.get("/events", &s).await;
    assert!(events.body.contains("No anomaly now."), "{}", events.body);
}

#[tokio::test]
async fn privacy_consent_is_persisted_and_erase_needs_the_typed_word() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    let p = app.get("/privacy", &s).await;
    assert!(
        p.body.contains("Hearth sends <strong>no telemetry</strong>")
            && p.body.contains("data-consent=\"off\"")
    );
    let r = app.post("/privacy/consent", &s, &format!("csrf={csrf}&consent=on")).await;
    assert_eq!(r.location(), "/privacy?m=consent");
    let stored = crate::Vault::parse(&app.fake.s().vault.clone().expect("vault")).expect("parse");
    assert!(stored.telemetry_consent);
    assert!(app.get("/privacy", &s).await.body.contains("data-consent=\"on\""));
    let r = app.post("/privacy/erase", &s, &format!("csrf={csrf}&confirm=erase+please")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("Nothing was erased"));
    assert_eq!(app.fake.s().erased, 0);
    let r = app.post("/privacy/erase", &s, &format!("csrf={csrf}&confirm=ERASE")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("Erase complete.") && r.body.contains("restarts as a new hub"));
    assert_eq!(app.fake.s().erased, 1);
    let done = app.get("/erased", "").await;
    assert!(done.body.contains("Erase complete.") && done.body.contains("new</strong> one-time"));
    // The old session is gone, the old code void, the new one works.
    assert_eq!(app.get("/", &s).await.location(), "/setup");
    let (cookie, csrf) = app.pre("/setup").await;
    let form = |code: &str| {
        format!("csrf={csrf}&code={code}&user=new&password=green+apple+99&confirm=green+apple+99")
    };
    assert_eq!(app.post("/setup", &cookie, &form(CODE)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.post("/setup", &cookie, &form("NEWC-ODEN-EWCO")).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(app.get("/erased", "").await.location(), "/login");
}

#[tokio::test]
async fn password_change_logout_and_the_live_stream() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    let (other, _) = app.session(&app.login([10, 0, 0, 2], "owner", PASSWORD).await).await;
    let form = |cur: &str, new: &str, confirm: &str| {
        format!("csrf={csrf}&current={cur}&password={new}&confirm={confirm}")
    };
    assert_eq!(
        app.post(
            "/account/password",
            &s,
            &form("nope+nope+nope", "red+kettle+42", "red+kettle+42")
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.post("/account/password", &s, &form("blue+tomato+7", "1234567890", "1234567890"))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.post("/account/password", &s, &form("blue+tomato+7", "red+kettle+42", "red+kettle+43"))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let r = app
        .post("/account/password", &s, &form("blue+tomato+7", "red+kettle+42", "red+kettle+42"))
        .await;
    assert_eq!(r.location(), "/account?m=password");
    assert!(app.get("/account?m=password", &s).await.body.contains("Password changed"));
    assert_eq!(app.get("/", &other).await.location(), "/login", "other sessions ended");
    assert_eq!(app.login([10, 0, 0, 3], "owner", PASSWORD).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.login([10, 0, 0, 3], "owner", "red kettle 42").await.status,
        StatusCode::SEE_OTHER
    );

    // The live stream: an event with every device's reading, availability and progress.
    let res = app
        .router
        .clone()
        .oneshot(Request::get("/live").header(header::COOKIE, &s).body(Body::empty()).expect("req"))
        .await
        .expect("live");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = res.into_body();
    let frame = body.frame().await.expect("a frame").expect("ok").into_data().expect("data");
    let text = String::from_utf8_lossy(&frame);
    let json: serde_json::Value =
        serde_json::from_str(text.trim().strip_prefix("data: ").expect("data line")).expect("json");
    assert_eq!(json["ids"], "01,02");
    assert_eq!(json["devices"]["01"]["reading"], "temp 21.5 Cel");
    assert_eq!(json["devices"]["02"]["availability"], "isolated");
    assert_eq!(json["progress"]["01"]["pct"], 0);

    // Idle sessions end; log-out ends one at once.
    let r = app.post("/logout", &s, &format!("csrf={csrf}")).await;
    assert_eq!(r.location(), "/login");
    assert_eq!(app.get("/", &s).await.location(), "/login");
    let (s2, _) = app.session(&app.login([10, 0, 0, 3], "owner", "red kettle 42").await).await;
    app.advance(crate::auth::SESSION_IDLE_MS);
    assert_eq!(app.get("/", &s2).await.location(), "/login");
}

/// The device cookie an answer set, as a request's `Cookie` pair.
fn device_of(r: &Res) -> String {
    format!("{DEVICE_COOKIE}={}", r.cookie(DEVICE_COOKIE).expect("a device cookie"))
}

#[tokio::test]
async fn fifty_concurrent_wrong_passwords_are_checked_only_free_failures_times() {
    let app = Arc::new(app().await);
    app.owner().await;
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..50u8 {
        let app = app.clone();
        guesses.spawn(async move { app.login([203, 0, 113, i], "owner", "wrong password!").await });
    }
    let mut statuses = Vec::new();
    while let Some(r) = guesses.join_next().await {
        statuses.push(r.expect("task").status);
    }
    let failed = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    let held = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((failed, held), (3, 47), "the slot is taken before the hash");
    assert_eq!(app.total(WebEvent::LoginFailed), 3);
    assert_eq!(app.total(WebEvent::LoginThrottled), 47);
    assert_eq!(app.web.budget.stats().done, 3 + 1, "three guesses and the setup were hashed");
}

#[tokio::test]
async fn a_login_over_the_hashing_budget_is_shed_with_503_and_costs_no_failure() {
    let limits = Limits { slots: 1, queue: 0, max_wait: std::time::Duration::from_secs(30) };
    let budget = HashBudget::new(limits, CHEAP).expect("budget");
    let app = app_with(Arc::new(Fake::default()), budget.clone()).await;
    app.owner().await;
    // Someone else holds the only slot.
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let holder = tokio::spawn({
        let budget = budget.clone();
        async move { budget.run(move |_| gate.recv().is_ok()).await }
    });
    while budget.stats().running == 0 {
        tokio::task::yield_now().await;
    }
    let r = app.login([192, 0, 2, 1], "owner", "wrong password!").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers[header::RETRY_AFTER], "2");
    assert!(r.body.contains("busy") && r.body.contains("name=\"password\""), "{}", r.body);
    assert_eq!((app.total(WebEvent::LoginShed), app.total(WebEvent::LoginFailed)), (1, 0));
    release.send(()).expect("release");
    assert_eq!(holder.await.expect("task"), Ok(true));
    // The shed attempt gave its failure slot back: three free failures remain.
    for _ in 0..3 {
        assert_eq!(
            app.login([192, 0, 2, 1], "owner", "wrong password!").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.login([192, 0, 2, 1], "owner", PASSWORD).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_device_cookie_logs_the_owner_in_through_a_back_off_others_caused() {
    let app = app().await;
    let (cookie, csrf) = app.pre("/setup").await;
    let body =
        format!("csrf={csrf}&code={CODE}&user=owner&password=blue+tomato+7&confirm=blue+tomato+7");
    let made = app.post("/setup", &cookie, &body).await;
    let set = made
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(DEVICE_COOKIE))
        .expect("setup sets a device cookie")
        .to_owned();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(flag), "{set}");
    }
    let device = device_of(&made);
    // An attacker who knows the name backs the account off from rotating addresses.
    for i in 0..20u8 {
        let _ = app.login([198, 18, 0, i], "owner", "guess guess guess").await;
    }
    assert_eq!(
        app.login([10, 1, 1, 1], "owner", PASSWORD).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The owner's browser, first try, right password: in (and its cookie is renewed).
    let r = app.login_with([10, 1, 1, 1], "owner", PASSWORD, &device).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/"), "{}", r.body);
    assert_eq!(device_of(&r), device, "the same device id, renewed");
    // A forged or altered cookie is worth nothing.
    let mut forged = device.clone();
    let last = forged.pop().map_or('0', |c| if c == '0' { '1' } else { '0' });
    forged.push(last);
    assert_eq!(
        app.login_with([10, 1, 1, 1], "owner", PASSWORD, &forged).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The cookie has its own failure budget: a thief who has it gets three guesses, then it
    // is revoked and the back-off applies to it too.
    for _ in 0..3 {
        let r = app.login_with([10, 9, 9, 9], "owner", "thief guessing", &device).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        app.login_with([10, 1, 1, 1], "owner", PASSWORD, &device).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "revoked"
    );
    // Once the back-off ends, the owner logs in and gets a new device cookie.
    app.advance(policy().max_ms);
    let r = app.login_with([10, 1, 1, 1], "owner", PASSWORD, &device).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let renewed = device_of(&r);
    assert_ne!(renewed, device);
    // A password change revokes every device cookie and gives this browser a new one.
    let (s, csrf) = app.session(&r).await;
    let form =
        format!("csrf={csrf}&current=blue+tomato+7&password=red+kettle+42&confirm=red+kettle+42");
    let changed = app
        .send(
            App::post_req("/account/password", &format!("{s}; {renewed}"), "")
                .body(Body::from(form))
                .expect("req"),
        )
        .await;
    assert_eq!(changed.location(), "/account?m=password");
    let after = device_of(&changed);
    for i in 0..20u8 {
        let _ = app.login([198, 18, 1, i], "owner", "guess guess guess").await;
    }
    assert_eq!(
        app.login_with([10, 1, 1, 1], "owner", "red kettle 42", &renewed).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the old cookie died with the old password"
    );
    assert_eq!(
        app.login_with([10, 1, 1, 1], "owner", "red kettle 42", &after).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn back_offs_and_device_cookies_survive_a_restart() {
    let fake = Arc::new(Fake::default());
    let app = app_with(fake.clone(), budget()).await;
    let (cookie, csrf) = app.pre("/setup").await;
    let body =
        format!("csrf={csrf}&code={CODE}&user=owner&password=blue+tomato+7&confirm=blue+tomato+7");
    let device = device_of(&app.post("/setup", &cookie, &body).await);
    for i in 0..8u8 {
        let _ = app.login([198, 18, 2, i], "owner", "guess guess guess").await;
    }
    let stored = fake.s().logins_stored;
    assert!(stored >= 4, "every failure was written before it was answered: {stored}");
    drop(app);
    // The hub restarts: the back-off is still there, and so is the owner's device.
    let app = app_with(fake.clone(), budget()).await;
    let r = app.login([10, 2, 2, 2], "owner", PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "a restart does not reset a back-off");
    let r = app.login_with([10, 2, 2, 2], "owner", PASSWORD, &device).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    // Erasing everything forgets the account's records and devices.
    let (s, csrf) = app.session(&r).await;
    let r = app.post("/privacy/erase", &s, &format!("csrf={csrf}&confirm=ERASE")).await;
    assert!(r.status == StatusCode::OK && r.body.contains("Erase complete."));
    let logins: serde_json::Value =
        serde_json::from_slice(fake.s().logins.as_deref().unwrap_or(b"{}")).expect("json");
    assert_eq!(logins["accounts"], serde_json::json!({}), "{logins}");
    assert_eq!(logins["trusted"], serde_json::json!({}), "{logins}");
}
