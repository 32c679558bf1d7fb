//! The live EN 303 645 self-check (5.12-3) — every check not met names the devices concerned
//! and the action to take — and the security events with their anomaly flags (5.10-1).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use maud::html;

use crate::api::{Action, Check, Counter, Pairing};
use crate::guard::Owner;
use crate::html::page;
use crate::pages::api_failure;
use crate::state::{Web, WebEvent};

/// The web UI's own checks, from its current state (5.10-1, the monitoring of every security
/// event, is the hub's).
fn web_checks(web: &Web, pairing: Option<&Pairing>, rows: &[Counter]) -> Vec<Check> {
    let total = |e: WebEvent| rows.iter().find(|r| r.name == e.name()).map_or(0, |r| r.value);
    let now = web.now_ms();
    let inner = web.lock();
    let account = match &inner.vault.owner {
        Some(a) => format!(
            "Owner account “{}” created with this hub's one-time setup code, which is now void; no default password exists.",
            a.user
        ),
        None => {
            "No account yet: setup needs this hub's one-time code (printed at first start).".into()
        }
    };
    let backing_off = inner.throttle.backing_off(now);
    let policy = *inner.throttle.policy();
    let consent = inner.vault.telemetry_consent;
    drop(inner);
    let pairing = match pairing {
        Some(p) if p.open || p.backoff_s > 0 => {
            format!("pairing window open, {} failed attempt(s) left", p.attempts_left)
        }
        Some(_) => "pairing closed (PINs accepted only in an owner-opened window)".into(),
        None => "pairing state unavailable".into(),
    };
    vec![
        Check::new("5.1-1", "No universal default passwords", true, account),
        Check::new("5.1-4", "The user can change the authentication value", true, "Password change on the Account page; argon2id hash sealed under the hub's key-encryption key.".into()),
        Check::new("5.1-5", "Brute-force protection", true, format!("Web and MQTT logins: back-off after {} failures, doubling up to {} min, always expiring, taken before the password is checked; browsers that logged in before keep their own budget (device cookies); {backing_off} web client(s)/account(s) backing off now. Sensors: {pairing}.", policy.free_failures, policy.max_ms.div_ceil(60_000))),
        Check::new("5.5-1", "Communication is encrypted", true, "This page came over HTTPS (TLS 1.2/1.3 with the hub's own certificate); plain HTTP on this port gets no answer.".into()),
        Check::new("5.6-2", "Nothing disclosed before authentication", true, "Every page and data stream needs a session; the login page names no version or model.".into()),
        Check::new("5.11-1", "User data can be erased", true, "Privacy page: erase every device, key, reading and the account.".into()),
        Check::new("5.13-1", "Input is validated", true, format!("{} malformed and {} oversized web requests refused (HTTP 400/413/422).", total(WebEvent::Malformed), total(WebEvent::TooLarge))),
        Check::new("6-3", "Telemetry only with consent", true, format!("Hearth sends no telemetry; your recorded choice: {}.", if consent { "allowed" } else { "not allowed" })),
    ]
}

fn provision_key(p: &str) -> Vec<u32> {
    p.split(['.', '-']).map(|n| n.parse().unwrap_or(u32::MAX)).collect()
}

/// The live EN 303 645 self-check (5.12-3).
pub(crate) async fn status(State(web): State<Arc<Web>>, owner: Owner) -> Response {
    let pairing = web.api.pairing().await.ok();
    let rows = web.api.counters().await.unwrap_or_default();
    let mut checks = web_checks(&web, pairing.as_ref(), &rows);
    match web.api.checks().await {
        Ok(hub) => checks.extend(hub),
        Err(e) => {
            let mut c = Check::new("—", "Hub checks", false, e.to_string());
            c.action = Some(Action {
                text: "The hub did not answer: look at its log (journalctl -u hearth) and \
                       restart it if it stays so."
                    .into(),
                href: None,
            });
            checks.push(c);
        }
    }
    checks.sort_by_key(|c| provision_key(&c.provision));
    let ok = checks.iter().filter(|c| c.ok).count();
    let body = html! {
        p {
            "A live self-check against ETSI EN 303 645: each provision Hearth implements, with \
             the current state that shows it. "
            strong data-checks-ok { (ok) " of " (checks.len()) " met now." }
        }
        table.checks {
            thead { tr { th { "Provision" } th { "Requirement" } th { "Current state" } th { "Met" } } }
            tbody {
                @for c in &checks {
                    tr class=(if c.ok { "ok" } else { "bad" }) data-check=(c.provision) {
                        td { (c.provision) }
                        td { (c.title) }
                        td {
                            (c.state)
                            @if !c.ok && !c.devices.is_empty() {
                                p.devices { "Devices: "
                                    @for (i, (id, name)) in c.devices.iter().enumerate() {
                                        @if i > 0 { ", " }
                                        a href={ "/devices/" (id) } data-device=(id) { (name) }
                                    }
                                }
                            }
                            @if let (false, Some(a)) = (c.ok, &c.action) {
                                p.action { strong { "What to do: " } (a.text)
                                    @if let Some(href) = &a.href { " " a href=(href) { "Go there" } }
                                }
                            }
                        }
                        td { @if c.ok { "✓ yes" } @else { "✗ no" } }
                    }
                }
            }
        }
    };
    let (_, fingerprint) = web.api.certificate();
    let body = html! {
        (body)
        h2 { "This hub's certificate" }
        p {
            "The web UI and MQTT over TLS present the hub's own certificate, SHA-256 \
             fingerprint "
            code data-fingerprint { (fingerprint) }
            ". To connect Home Assistant or mosquitto over TLS, "
            a href="/security/hub-cert.pem" download="hub-cert.pem" { "download hub-cert.pem" }
            " and give it as the CA certificate (Home Assistant: MQTT integration, re-configure, advanced \
             options, “Broker certificate validation: Custom”; mosquitto: "
            code { "--cafile hub-cert.pem" } ")."
        }
    };
    Html(page("Security status", Some(&owner.csrf), false, body)).into_response()
}

/// The hub's certificate as a file (`hub-cert.pem`), for clients that must trust it.
pub(crate) async fn certificate(State(web): State<Arc<Web>>, _owner: Owner) -> Response {
    let (pem, _) = web.api.certificate();
    (
        [
            (axum::http::header::CONTENT_TYPE, "application/x-pem-file"),
            (axum::http::header::CONTENT_DISPOSITION, "attachment; filename=\"hub-cert.pem\""),
        ],
        pem,
    )
        .into_response()
}

/// Security events with anomaly flags (5.10-1).
pub(crate) async fn events(State(web): State<Arc<Web>>, owner: Owner) -> Response {
    let rows = match web.api.counters().await {
        Ok(c) => c,
        Err(e) => return api_failure(&owner, "Security events", &e),
    };
    let flagged = rows.iter().filter(|r| r.anomaly).count();
    let body = html! {
        p {
            "Every security-relevant event is counted. A kind is flagged when it happens \
             unusually often within 5 minutes (for example repeated failed logins or messages \
             failing authentication). "
            @if flagged == 0 { "No anomaly now." }
            @else { strong.alert { (flagged) " anomaly flag(s)." } }
        }
        table.events {
            thead { tr { th { "Event" } th { "Last 5 min" } th { "Total" } th { "Flag" } } }
            tbody {
                @for r in &rows {
                    tr class=[r.anomaly.then_some("anomaly")] data-event=(r.name) {
                        td { (r.label) br; code.muted { (r.name) } }
                        td { (r.recent) }
                        td { (r.value) }
                        td { @if r.anomaly { "⚠ anomaly" } }
                    }
                }
            }
        }
    };
    Html(page("Security events", Some(&owner.csrf), false, body)).into_response()
}
