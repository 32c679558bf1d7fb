//! Router tests: every route through `oneshot` against a fake hub, with an injected clock —
//! success and error paths, authentication, CSRF and cross-site refusals, limits, throttling.
//! This module is the harness (a fake hub, requests, cookies); the tests are one module per page.

mod account;
mod dashboard;
mod device;
mod guard;
mod pairing;
mod privacy;
mod security;
mod updates;

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
    /// The web UI's events as the hub counted them, in `WebEvent::ALL` order.
    web_events: [u64; 9],
    delivering: Option<(u32, u32, u32)>,
    setpoints: Vec<(String, f64)>,
    /// Calls of `devices()` (the live snapshot makes one per tick).
    device_lists: u32,
    /// Calls of `readings()`.
    histories: u32,
    checks: Vec<Check>,
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
        setpoint: None,
    }
}

fn reading(t: i64, v: f64) -> Reading {
    Reading {
        time_ms: t * 1000,
        name: "temp".into(),
        label: "temperature".into(),
        unit: Some("°C".into()),
        value: Some(v),
        text: format!("{v:.1}"),
        kind: ReadingKind::Measure,
    }
}

/// The fake hub's certificate.
const TEST_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

impl OwnerApi for Fake {
    fn devices(&self) -> ApiFuture<'_, Vec<Device>> {
        let mut s = self.s();
        s.device_lists += 1;
        ready(Ok(s.devices.clone()))
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
        let mut s = self.s();
        s.histories += 1;
        let Some(d) = s.devices.iter().find(|d| d.id == id) else {
            return ready(Err(ApiError::NotFound));
        };
        // A history of each quantity the device reports, like its newest ones.
        let r: Vec<Reading> = (0..limit.min(10) as i64)
            .flat_map(|i| {
                d.last.iter().map(move |l| match l.kind {
                    // A door that opens and closes.
                    ReadingKind::State => Reading {
                        time_ms: i * 1000,
                        value: Some((i % 2) as f64),
                        text: if i % 2 == 1 { "open" } else { "closed" }.into(),
                        ..l.clone()
                    },
                    _ => Reading {
                        time_ms: i * 1000,
                        value: l.value.map(|v| v - 1.0 + i as f64 / 4.0),
                        ..l.clone()
                    },
                })
            })
            .collect();
        ready(Ok(r))
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
    fn certificate(&self) -> (String, String) {
        (TEST_CERT_PEM.into(), "AB:CD".into())
    }

    fn set_setpoint(&self, id: &str, value: f64) -> ApiFuture<'_, ()> {
        let mut s = self.s();
        if !s.devices.iter().any(|d| d.id == id && d.setpoint.is_some()) {
            return ready(Err(ApiError::Refused("the device does not take that command".into())));
        }
        s.setpoints.push((id.into(), value));
        ready(Ok(()))
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
        // The web UI's events as the hub reports them; this fake has no window: every event
        // is recent (the hub's window is tested in the hub).
        let s = self.s();
        let mut rows: Vec<Counter> = crate::state::WebEvent::ALL
            .iter()
            .map(|e| {
                let value = s.web_events[e.index()];
                Counter {
                    name: e.name().into(),
                    label: e.name().replace('_', " "),
                    value,
                    recent: value,
                    anomaly: value >= protocol::security::threshold(e.name()),
                }
            })
            .collect();
        rows.extend(s.counters.iter().cloned());
        ready(Ok(rows))
    }
    fn count(&self, event: crate::state::WebEvent) {
        self.s().web_events[event.index()] += 1;
    }
    fn checks(&self) -> ApiFuture<'_, Vec<Check>> {
        let mut checks = vec![Check {
            provision: "5.4-1".into(),
            title: "Secrets at rest".into(),
            ok: true,
            state: "sealed; kek mode 600".into(),
            devices: Vec::new(),
            action: None,
        }];
        checks.extend(self.s().checks.clone());
        ready(Ok(checks))
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
        s.counters = vec![Counter {
            name: "bad_tag".into(),
            label: "Bad tags".into(),
            value: 0,
            recent: 0,
            anomaly: false,
        }];
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

    /// The web UI's events of kind `e` the hub was told of.
    fn total(&self, e: crate::state::WebEvent) -> u64 {
        self.fake.s().web_events[e.index()]
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
