//! The pairing page (TR 103 621 6.29): the window with its countdown and attempts left, the
//! sensors waiting for their PIN with the hub's warnings, PIN entry, and the device a new sensor
//! replaces (any device: moved, broken or isolated).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};

use crate::api::{Availability, Device, Pairing};
use crate::guard::{Owner, Post, unprocessable};
use crate::html::{csrf_field, device_name, notice, page};
use crate::pages::{CsrfOnly, MsgQuery, api_failure, bad_id, forms, valid_id};
use crate::state::Web;

forms! {
    PairOpenForm { seconds: u64 }
    PinForm { pin: String, serial: String, replaces: String, accept: Option<String> }
}

fn body(
    owner: &Owner,
    p: &Pairing,
    devices: &[Device],
    replaces: Option<&str>,
    msg: Option<Markup>,
) -> Markup {
    let c = csrf_field(&owner.csrf);
    let close = html! {
        form.inline method="post" action="/pairing/close" { (c) button { "Close the window" } }
    };
    html! {
        @if let Some(m) = msg { (m) }
        p.explain {
            "Each PIN typed is one guess for an attacker in range: a 5-digit PIN lets a guess \
             succeed with a probability of about 1 in 32,768, so the hub accepts PINs only while \
             this window is open and allows just a few failed attempts per window, with a \
             growing pause after each."
        }
        @if p.backoff_s > 0 {
            p.status.open data-backoff=(p.backoff_s) {
                "Pairing is " strong { "open" } ", pausing after a failed attempt: PINs are taken \
                 again in " (p.backoff_s) " s; closes in "
                span data-countdown=(p.closes_in_s) { (p.closes_in_s) } " s; "
                span data-attempts { (p.attempts_left) } " failed attempt(s) left."
            }
            (close)
        } @else if p.open {
            p.status.open {
                "Pairing is " strong { "open" } ": closes in "
                span data-countdown=(p.closes_in_s) { (p.closes_in_s) } " s; "
                span data-attempts { (p.attempts_left) } " failed attempt(s) left."
            }
            (close)
        } @else {
            p.status { "Pairing is " strong { "closed" } "." }
            form.card method="post" action="/pairing/open" {
                (c)
                label { "Window "
                    select name="seconds" {
                        option value="120" { "2 minutes" }
                        option value="300" { "5 minutes" }
                        option value="60" { "1 minute" }
                    }
                }
                button { "Open pairing" }
            }
        }
        h2 { "Sensors waiting for their PIN" }
        ul data-waiting=(p.waiting.len()) {
            @if p.waiting.is_empty() {
                li.muted { "none yet — start pairing on the sensor" }
            }
            @for (serial, model) in &p.waiting {
                li {
                    (model) " — serial " (serial)
                    @for (_, warning) in p.warnings.iter().filter(|(s, _)| s == serial) {
                        p.warning data-warning { "⚠ " (warning) }
                    }
                }
            }
        }
        form.card method="post" action="/pairing/pin" {
            (c)
            label { "PIN shown on the sensor "
                input name="pin" inputmode="numeric" autocomplete="off" pattern="[0-9]{4,10}"
                    required maxlength="10";
            }
            label { "Sensor "
                select name="serial" {
                    option value="" { "the only one waiting" }
                    @for (serial, _) in &p.waiting { option value=(serial) { (serial) } }
                }
            }
            label { "Replaces (a moved, broken or isolated device: the new sensor takes over its \
                     name, room and history; the old one's keys are erased) "
                select name="replaces" {
                    option value="" { "nothing — a new device" }
                    @for d in devices {
                        option value=(d.id) selected[replaces == Some(d.id.as_str())] {
                            (device_name(d))
                            @if matches!(d.availability, Availability::Isolated { .. }) { " (isolated)" }
                        }
                    }
                }
            }
            @if !p.warnings.is_empty() {
                label {
                    input type="checkbox" name="accept" value="yes";
                    " Pair anyway: I have read the warning above"
                }
            }
            button { "Pair" }
        }
    }
}

/// The pairing page.
pub(crate) async fn pairing(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Query(q): Query<MsgQuery>,
) -> Response {
    let (p, devices) = match (web.api.pairing().await, web.api.devices().await) {
        (Ok(p), Ok(d)) => (p, d),
        (Err(e), _) | (_, Err(e)) => return api_failure(&owner, "Pairing", &e),
    };
    let body = body(&owner, &p, &devices, q.replaces.as_deref(), q.notice());
    Html(page("Pairing", Some(&owner.csrf), true, body)).into_response()
}

/// Opens the window.
pub(crate) async fn open(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Post(f): Post<PairOpenForm>,
) -> Response {
    if !(30..=600).contains(&f.seconds) {
        return unprocessable(&web, "the window lasts 30 to 600 seconds");
    }
    web.live.invalidate();
    match web.api.pair_open(f.seconds).await {
        Ok(_) => Redirect::to("/pairing?m=opened").into_response(),
        Err(e) => api_failure(&owner, "Pairing", &e),
    }
}

/// Closes the window.
pub(crate) async fn close(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Post(_): Post<CsrfOnly>,
) -> Response {
    web.live.invalidate();
    match web.api.pair_close().await {
        Ok(_) => Redirect::to("/pairing?m=closed").into_response(),
        Err(e) => api_failure(&owner, "Pairing", &e),
    }
}

/// Types a PIN.
pub(crate) async fn pin(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Post(f): Post<PinForm>,
) -> Response {
    let pin = f.pin.trim();
    if !(4..=10).contains(&pin.len()) || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return unprocessable(&web, "the PIN is 4 to 10 digits");
    }
    if f.serial.len() > 64 || f.serial.chars().any(char::is_control) {
        return unprocessable(&web, "malformed serial");
    }
    if !f.replaces.is_empty() && !valid_id(&f.replaces) {
        return bad_id(&web);
    }
    let serial = (!f.serial.is_empty()).then(|| f.serial.clone());
    let replaces = (!f.replaces.is_empty()).then(|| f.replaces.clone());
    let accept = f.accept.as_deref() == Some("yes");
    let paired = web.api.pair_pin(pin.to_owned(), serial, replaces, accept).await;
    web.live.invalidate();
    match paired {
        Ok(_) => Redirect::to("/pairing?m=paired").into_response(),
        Err(e) => {
            let p = web.api.pairing().await.unwrap_or_default();
            let devices = web.api.devices().await.unwrap_or_default();
            let msg = Some(notice("error", &format!("Not paired: {e}")));
            let body = body(&owner, &p, &devices, Some(&f.replaces), msg);
            (StatusCode::UNPROCESSABLE_ENTITY, Html(page("Pairing", Some(&owner.csrf), true, body)))
                .into_response()
        }
    }
}
