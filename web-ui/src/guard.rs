//! What every request passes before a handler sees it: security headers and a strict CSP on every
//! answer, the session check (nothing before login, EN 303 645 5.6-2), and for state changes a
//! same-origin check, a CSRF token and typed, size-limited form parsing (5.13-1), each refusal
//! counted as a security event (5.10-1).

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
        if let Some(token) = read_cookie(&parts.headers, SESSION_COOKIE)
            && let Some(s) = web.lock().sessions.touch(token, now)
        {
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

/// Whether a state change comes from another site: a `Sec-Fetch-Site` other than
/// `same-origin`, or an `Origin` naming another host. Browsers send `Origin: null` on a
/// same-origin form POST under `Referrer-Policy: no-referrer`, so `null` passes only when
/// `Sec-Fetch-Site` vouches for the request.
fn cross_site(headers: &HeaderMap) -> bool {
    let fetch_site = headers.get("sec-fetch-site");
    if fetch_site.is_some_and(|site| site.as_bytes() != b"same-origin") {
        return true;
    }
    match headers.get(header::ORIGIN).map(HeaderValue::as_bytes) {
        None => false,
        Some(b"null") => fetch_site.is_none(),
        Some(origin) => {
            let host = headers.get(header::HOST).map_or(&b""[..], HeaderValue::as_bytes);
            host.is_empty() || origin != [&b"https://"[..], host].concat().as_slice()
        }
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
        if cross_site(req.headers()) {
            web.event(WebEvent::CrossSite);
            return Err((StatusCode::FORBIDDEN, "cross-site request refused\n").into_response());
        }
        let now = web.now_ms();
        let expected = match read_cookie(req.headers(), SESSION_COOKIE)
            .and_then(|t| web.lock().sessions.touch(t, now))
        {
            Some(s) => Some(s.csrf),
            None => read_cookie(req.headers(), PRE_COOKIE).map(str::to_owned),
        };
        let form = match Form::<T>::from_request(req, web).await {
            Ok(Form(f)) => f,
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
