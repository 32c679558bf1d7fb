//! What every request passes before a handler sees it: security headers and a strict CSP on every
//! answer, the session check (nothing before login, EN 303 645 5.6-2; a valid session also marks
//! its connection as one never evicted to make room), and for state changes a same-origin check
//! against the hub's own names and port (not the request's own `Host`), a CSRF token and typed,
//! size-limited form parsing (5.13-1), each refusal counted as a security event (5.10-1).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use axum::extract::{Form, FromRequest, FromRequestParts, Request};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::state::{Web, WebEvent};

/// Largest request body accepted (forms are small; firmware uploads go through `hub ctl`).
pub const BODY_LIMIT: usize = 8 * 1024;
/// The session cookie (`__Host-`: Secure, no Domain, Path=/ enforced by the browser).
pub const SESSION_COOKIE: &str = "__Host-hearth";
/// The pre-login cookie whose value the login and setup forms echo (login CSRF).
pub const PRE_COOKIE: &str = "__Host-hearth-pre";
/// The device cookie: this browser logged in as the owner before (OWASP "device cookies"); a
/// login with it is not refused by a back-off someone else caused.
pub const DEVICE_COOKIE: &str = "__Host-hearth-device";
/// How long a browser keeps its device cookie (the hub forgets an unused one as long after).
pub const DEVICE_COOKIE_S: u64 = 180 * 24 * 60 * 60;
/// The Content-Security-Policy of every answer.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                       frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Adds the security headers to every answer.
pub async fn headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, "content-security-policy", CSP);
    set(h, "strict-transport-security", "max-age=31536000");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    set(h, "x-frame-options", "DENY");
    set(h, "cross-origin-opener-policy", "same-origin");
    set(h, "cross-origin-resource-policy", "same-origin");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    res
}

/// A `Set-Cookie` value for `name` (empty `value`: delete it).
pub fn cookie(name: &str, value: &str) -> HeaderValue {
    let age = if value.is_empty() { "; Max-Age=0" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Secure; HttpOnly; SameSite=Strict; Path=/{age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// A `Set-Cookie` value for the device cookie (kept by the browser for [`DEVICE_COOKIE_S`]).
pub fn device_cookie(value: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{DEVICE_COOKIE}={value}; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age={DEVICE_COOKIE_S}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// The device cookie's value in the request, if it has one of the right shape (hex digits; the
/// MAC is checked by [`crate::auth::Vault::device_id`]).
pub fn read_device_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie_values(headers, DEVICE_COOKIE)
        .find(|v| (97..=256).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The value of cookie `name` in the request, if it looks like one of our tokens.
pub fn read_cookie<'a>(headers: &'a HeaderMap, name: &'a str) -> Option<&'a str> {
    cookie_values(headers, name)
        .next()
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The origins the hub's pages are served from: `https://<name>:<port>` for each name the hub's
/// certificate carries (`[web] names`, `[mqtt] tls_names`, the host name, `localhost`,
/// loopback) on the port the web UI serves (set by the TLS server as a request extension).
/// A state change whose `Origin` is none of them is refused, whatever its `Host` says: a
/// request's own `Host` is the attacker's to choose (DNS rebinding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origins(Vec<String>);

impl Origins {
    /// The origins of `names` on `port`.
    pub fn new(names: &[String], port: u16) -> Self {
        let mut out = Vec::new();
        for name in names {
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty() || name.contains(['/', '*', ' ']) {
                continue; // not a name a browser shows in an origin
            }
            let host = if name.contains(':') { format!("[{name}]") } else { name };
            // Browsers leave the default port out of an origin.
            let origin = if port == 443 {
                format!("https://{host}")
            } else {
                format!("https://{host}:{port}")
            };
            if !out.contains(&origin) {
                out.push(origin);
            }
        }
        Self(out)
    }

    /// Whether `origin` (an `Origin` header's value) is one of them.
    pub fn allows(&self, origin: &[u8]) -> bool {
        self.0.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(origin))
    }
}

/// The client's address (set by the TLS server for each connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientAddr>()
            .copied()
            .unwrap_or(ClientAddr(IpAddr::V4(Ipv4Addr::UNSPECIFIED))))
    }
}

/// A logged-in owner: the session's cookie token and CSRF token.
#[derive(Debug, Clone)]
pub struct Owner {
    /// Session token (cookie).
    pub token: String,
    /// CSRF token for this session's forms.
    pub csrf: String,
}

impl FromRequestParts<Arc<Web>> for Owner {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Arc<Web>) -> Result<Self, Response> {
        let now = web.now_ms();
        // The state's lock is released before the connection's slot is marked.
        let session = read_cookie(&parts.headers, SESSION_COOKIE)
            .and_then(|token| Some((token, web.lock().sessions.touch(token, now)?)));
        if let Some((token, s)) = session {
            established(&parts.extensions);
            return Ok(Owner { token: token.to_owned(), csrf: s.csrf });
        }
        web.event(WebEvent::Unauthenticated);
        let to = if web.lock().vault.needs_setup() { "/setup" } else { "/login" };
        if parts.method == Method::GET && parts.uri.path() != "/live" {
            Err(Redirect::to(to).into_response())
        } else {
            Err((StatusCode::UNAUTHORIZED, "log in first\n").into_response())
        }
    }
}

/// Marks the request's connection as one with a live session (never evicted to make room).
fn established(extensions: &axum::http::Extensions) {
    if let Some(c) = extensions.get::<crate::serve::Connection>() {
        c.established();
    }
}

/// Why a state change is refused as coming from elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrossSite {
    /// The browser says it comes from another site.
    OtherSite,
    /// Same-origin as far as the browser knows, but the page was not served under one of the
    /// hub's names and port (an address the owner typed that the configuration does not name,
    /// or a name rebound to the hub by DNS).
    UnknownOrigin,
}

/// Whether a state change comes from another site: a `Sec-Fetch-Site` other than
/// `same-origin`, or an `Origin` that is not one of `origins` (none known: no `Origin` is
/// accepted). Browsers send `Origin: null` on a same-origin form POST under
/// `Referrer-Policy: no-referrer`, so `null` passes only when `Sec-Fetch-Site` vouches for the
/// request.
fn cross_site(headers: &HeaderMap, origins: Option<&Origins>) -> Option<CrossSite> {
    let fetch_site = headers.get("sec-fetch-site");
    if fetch_site.is_some_and(|site| site.as_bytes() != b"same-origin") {
        return Some(CrossSite::OtherSite);
    }
    match headers.get(header::ORIGIN).map(HeaderValue::as_bytes) {
        None => None,
        Some(b"null") if fetch_site.is_some() => None,
        Some(b"null") => Some(CrossSite::OtherSite),
        Some(origin) if origins.is_some_and(|o| o.allows(origin)) => None,
        Some(_) if fetch_site.is_some() => Some(CrossSite::UnknownOrigin),
        Some(_) => Some(CrossSite::OtherSite),
    }
}

/// A form that carries the CSRF token.
pub trait CsrfForm {
    /// The token sent with the form.
    fn csrf(&self) -> &str;
}

/// A state change: same-origin, carrying the session's (or, before login, the pre-login
/// cookie's) CSRF token, with a well-formed body of at most [`BODY_LIMIT`] bytes.
#[derive(Debug)]
pub struct Post<T>(pub T);

impl<T> FromRequest<Arc<Web>> for Post<T>
where
    T: DeserializeOwned + CsrfForm + Send,
{
    type Rejection = Response;

    async fn from_request(req: Request, web: &Arc<Web>) -> Result<Self, Response> {
        let origins = req.extensions().get::<Arc<Origins>>().cloned();
        match cross_site(req.headers(), origins.as_deref()) {
            None => {}
            Some(CrossSite::OtherSite) => {
                web.event(WebEvent::CrossSite);
                return Err((StatusCode::FORBIDDEN, "cross-site request refused\n").into_response());
            }
            Some(CrossSite::UnknownOrigin) => {
                web.event(WebEvent::CrossSite);
                return Err((
                    StatusCode::FORBIDDEN,
                    "refused: this page was not opened under one of the hub's own names. Open \
                     the hub by a name its certificate carries, or add the name you use to \
                     `[web] names` in the hub's configuration (a new certificate is then \
                     needed for the browser to trust it)\n",
                )
                    .into_response());
            }
        }
        let now = web.now_ms();
        let expected = match read_cookie(req.headers(), SESSION_COOKIE)
            .and_then(|t| web.lock().sessions.touch(t, now))
        {
            Some(s) => {
                established(req.extensions());
                Some(s.csrf)
            }
            None => read_cookie(req.headers(), PRE_COOKIE).map(str::to_owned),
        };
        let connection = req.extensions().get::<crate::serve::Connection>().cloned();
        let form = match Form::<T>::from_request(req, web).await {
            Ok(Form(f)) => f,
            Err(_) if connection.as_ref().is_some_and(crate::serve::Connection::body_late) => {
                // Counted by the server as a slow request, not as malformed input.
                return Err((StatusCode::REQUEST_TIMEOUT, "request body not received in time\n")
                    .into_response());
            }
            Err(rejection) => {
                let status = rejection.status();
                web.event(if status == StatusCode::PAYLOAD_TOO_LARGE {
                    WebEvent::TooLarge
                } else {
                    WebEvent::Malformed
                });
                let text = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "request too large\n"
                } else {
                    "malformed form\n"
                };
                return Err((status, text).into_response());
            }
        };
        let ok = expected.is_some_and(|e| bool::from(e.as_bytes().ct_eq(form.csrf().as_bytes())));
        if !ok {
            web.event(WebEvent::CsrfRefused);
            return Err((
                StatusCode::FORBIDDEN,
                "missing or stale form token: reload the page and try again\n",
            )
                .into_response());
        }
        Ok(Post(form))
    }
}

/// A well-formed but unacceptable value (422), counted as malformed input.
pub fn unprocessable(web: &Web, what: &str) -> Response {
    web.event(WebEvent::Malformed);
    (StatusCode::UNPROCESSABLE_ENTITY, format!("{what}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    fn origins() -> Origins {
        let names = ["localhost", "127.0.0.1", "::1", "Hub.Local"].map(str::to_owned);
        Origins::new(&names, 8443)
    }

    #[test]
    fn origins_are_the_certificates_names_on_the_served_port() {
        let o = origins();
        for ok in [
            "https://localhost:8443",
            "https://127.0.0.1:8443",
            "https://[::1]:8443",
            "https://hub.local:8443",
            "HTTPS://HUB.LOCAL:8443",
        ] {
            assert!(o.allows(ok.as_bytes()), "{ok}");
        }
        for refused in [
            "https://hub.local:8444",
            "https://hub.local",
            "http://hub.local:8443",
            "https://evil.example:8443",
            "https://hub.local.evil.example:8443",
            "https://::1:8443",
            "",
        ] {
            assert!(!o.allows(refused.as_bytes()), "{refused}");
        }
        // On 443 browsers leave the port out.
        let default = Origins::new(&["hub.local".into()], 443);
        assert!(default.allows(b"https://hub.local") && !default.allows(b"https://hub.local:8443"));
        // Wildcards and junk are not origins.
        assert_eq!(Origins::new(&["*.example".into(), " ".into()], 8443), Origins(Vec::new()));
    }

    #[test]
    fn the_origin_is_checked_against_the_hubs_names_not_the_requests_host() {
        let o = origins();
        let same = ("sec-fetch-site", "same-origin");
        // A rebound name: the attacker's page, same-origin as far as the browser knows, with a
        // Host header to match. The old check (Origin against Host) let it through.
        let rebound = headers(&[
            same,
            ("origin", "https://evil.example:8443"),
            ("host", "evil.example:8443"),
        ]);
        assert_eq!(cross_site(&rebound, Some(&o)), Some(CrossSite::UnknownOrigin));
        let no_fetch_site =
            headers(&[("origin", "https://evil.example:8443"), ("host", "evil.example:8443")]);
        assert_eq!(cross_site(&no_fetch_site, Some(&o)), Some(CrossSite::OtherSite));
        // The hub's own names pass, whatever Host says.
        let own = headers(&[same, ("origin", "https://127.0.0.1:8443"), ("host", "x")]);
        assert_eq!(cross_site(&own, Some(&o)), None);
        // Other sites, null without Sec-Fetch-Site, and any origin when none is known.
        let other =
            headers(&[("sec-fetch-site", "cross-site"), ("origin", "https://127.0.0.1:8443")]);
        assert_eq!(cross_site(&other, Some(&o)), Some(CrossSite::OtherSite));
        assert_eq!(
            cross_site(&headers(&[("origin", "null")]), Some(&o)),
            Some(CrossSite::OtherSite)
        );
        assert_eq!(cross_site(&headers(&[same, ("origin", "null")]), Some(&o)), None);
        assert_eq!(cross_site(&own, None), Some(CrossSite::UnknownOrigin));
        // No Origin at all (not a browser): the CSRF token still has to match.
        assert_eq!(cross_site(&headers(&[]), Some(&o)), None);
    }
}
