//! The owner's pages: dashboard with live readings and SVG charts, pairing (TR 103 621 6.29),
//! device detail (EN 303 645 5.3-16, 5.8-3, 5.3-13), updates (5.3-6/-11/-12), isolated devices
//! (5.3-13/14), the live EN 303 645 self-check (5.12-3), security events with anomaly flags
//! (5.10-1), and privacy: what is processed (6-1), telemetry consent (6-2/6-3) and erase (5.11-1).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::api::{ApiError, Availability, Check, Device, Policy, Updates};
use crate::guard::{CsrfForm, Owner, Post, SESSION_COOKIE, cookie, unprocessable};
use crate::html::{
    chart_of, csrf_field, date, datetime, esc, notice, page, reading_text, readings_text,
};
use crate::routes::{CsrfOnly, forms};
use crate::state::{Web, WebEvent};

forms! {
    PairOpenForm { seconds: u64 }
    PinForm { pin: String, serial: String, replaces: String, accept: Option<String> }
    LabelForm { name: String, room: String }
    PolicyForm { mode: String, days: String }
    ApproveForm { model: String, version: u32 }
    ConsentForm { consent: String }
    EraseForm { confirm: String }
}

/// What the owner must type to erase everything.
pub const ERASE_WORD: &str = "ERASE";

/// `?m=` codes for notices after a redirect (fixed texts: nothing from the URL is shown).
#[derive(Debug, Deserialize)]
pub struct MsgQuery {
    m: Option<String>,
    /// On the pairing page: the device the new sensor will replace (preselected if it exists).
    replaces: Option<String>,
}

impl MsgQuery {
    /// The notice for the code, if it is one of ours.
    pub fn notice(&self) -> Option<String> {
        let text = match self.m.as_deref()? {
            "paired" => "Paired. The new device is on the dashboard.",
            "removed" => "Device removed; its keys and readings were erased.",
            "policy" => "Update policy saved.",
            "approved" => "Update approved; delivery starts now.",
            "consent" => "Your choice was saved.",
            "password" => "Password changed; other sessions were ended.",
            "opened" => "Pairing window open.",
            "labelled" => "Name and room saved.",
            "closed" => "Pairing window closed.",
            _ => return None,
        };
        Some(notice("ok", text))
    }
}

fn api_failure(owner: &Owner, title: &str, e: &ApiError) -> Response {
    let status = match e {
        ApiError::NotFound => StatusCode::NOT_FOUND,
        ApiError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Html(page(title, Some(&owner.csrf), false, &notice("error", &e.to_string()))))
        .into_response()
}

fn device_name(d: &Device) -> String {
    match (&d.name, &d.room) {
        (Some(n), Some(r)) => format!("{n} ({r})"),
        (Some(n), None) => n.clone(),
        _ => format!("{} {}", d.model, d.serial),
    }
}

fn availability(a: &Availability) -> (&'static str, &'static str) {
    match a {
        Availability::Online => ("online", "online"),
        Availability::Offline => ("offline", "offline"),
        Availability::Isolated { .. } => ("isolated", "isolated"),
    }
}

fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn bad_id(web: &Web) -> Response {
    web.event(WebEvent::Malformed);
    (StatusCode::BAD_REQUEST, "malformed device id\n").into_response()
}

/// The dashboard: every device with its state, availability, last reading and a chart.
pub async fn dashboard(State(web): State<Arc<Web>>, owner: Owner) -> Response {
    let devices = match web.api.devices().await {
        Ok(d) => d,
        Err(e) => return api_failure(&owner, "Dashboard", &e),
    };
    let mut body = String::new();
    if devices.is_empty() {
        body.push_str("<p>No devices yet. <a href=\"/pairing\">Pair a sensor</a>.</p>");
    }
    let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
    let _ = write!(
        body,
        "<table class=\"devices\" data-ids=\"{}\"><thead><tr><th>Device</th><th>Availability</th>\
         <th>Last reading</th><th>Recent readings</th></tr></thead><tbody>",
        esc(&ids.join(","))
    );
    for (i, d) in devices.iter().enumerate() {
        let history =
            if i < 50 { web.api.readings(&d.id, 40).await.unwrap_or_default() } else { Vec::new() };
        let (class, text) = availability(&d.availability);
        let last = readings_text(&d.last);
        let _ = write!(
            body,
            "<tr><td><a href=\"/devices/{id}\">{name}</a><br><span class=\"muted\">{model}</span></td>\
             <td><span class=\"badge {class}\" data-availability=\"{id}\">{text}</span></td>\
             <td class=\"reading\" data-reading=\"{id}\">{last}</td><td>{chart}</td></tr>",
            id = esc(&d.id),
            name = esc(&device_name(d)),
            model = esc(&d.model),
            last = esc(&last),
            chart = chart_of(&history, &d.last, 240, 48),
        );
    }
    body.push_str("</tbody></table>");
    Html(page("Dashboard", Some(&owner.csrf), true, &body)).into_response()
}

fn pairing_body(
    owner: &Owner,
    p: &crate::api::Pairing,
    devices: &[Device],
    replaces: Option<&str>,
    msg: Option<String>,
) -> String {
    let c = csrf_field(&owner.csrf);
    let mut b = msg.unwrap_or_default();
    b.push_str(
        "<p class=\"explain\">Each PIN typed is one guess for an attacker in range: a 5-digit PIN \
         lets a guess succeed with a probability of about 1 in 32,768, so the hub accepts PINs \
         only while this window is open and allows just a few failed attempts per window, with a \
         growing pause after each.</p>",
    );
    if p.backoff_s > 0 {
        let _ = write!(
            b,
            "<p class=\"status open\" data-backoff=\"{w}\">Pairing is <strong>open</strong>, \
             pausing after a failed attempt: PINs are taken again in {w} s; closes in \
             <span data-countdown=\"{s}\">{s}</span> s; <span data-attempts>{a}</span> failed \
             attempt(s) left.</p>\
             <form method=\"post\" action=\"/pairing/close\" class=\"inline\">{c}<button>Close the window</button></form>",
            w = p.backoff_s,
            s = p.closes_in_s,
            a = p.attempts_left,
        );
    } else if p.open {
        let _ = write!(
            b,
            "<p class=\"status open\">Pairing is <strong>open</strong>: closes in \
             <span data-countdown=\"{s}\">{s}</span> s; <span data-attempts>{a}</span> failed \
             attempt(s) left.</p>\
             <form method=\"post\" action=\"/pairing/close\" class=\"inline\">{c}<button>Close the window</button></form>",
            s = p.closes_in_s,
            a = p.attempts_left,
        );
    } else {
        let _ = write!(
            b,
            "<p class=\"status\">Pairing is <strong>closed</strong>.</p>\
             <form method=\"post\" action=\"/pairing/open\" class=\"card\">{c}\
             <label>Window <select name=\"seconds\"><option value=\"120\">2 minutes</option>\
             <option value=\"300\">5 minutes</option><option value=\"60\">1 minute</option></select></label>\
             <button>Open pairing</button></form>"
        );
    }
    let _ = write!(
        b,
        "<h2>Sensors waiting for their PIN</h2><ul data-waiting=\"{}\">",
        p.waiting.len()
    );
    if p.waiting.is_empty() {
        b.push_str("<li class=\"muted\">none yet — start pairing on the sensor</li>");
    }
    let replacing = replace_options(devices, replaces);
    let mut options = String::from("<option value=\"\">the only one waiting</option>");
    for (serial, model) in &p.waiting {
        let _ = write!(b, "<li>{} — serial {}", esc(model), esc(serial));
        for (_, warning) in p.warnings.iter().filter(|(s, _)| s == serial) {
            let _ = write!(b, "<p class=\"warning\" data-warning>⚠ {}</p>", esc(warning));
        }
        b.push_str("</li>");
        let _ = write!(options, "<option value=\"{s}\">{s}</option>", s = esc(serial));
    }
    b.push_str("</ul>");
    let accept = if p.warnings.is_empty() {
        ""
    } else {
        "<label><input type=\"checkbox\" name=\"accept\" value=\"yes\"> Pair anyway: I have \
         read the warning above</label>"
    };
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/pairing/pin\" class=\"card\">{c}\
         <label>PIN shown on the sensor <input name=\"pin\" inputmode=\"numeric\" autocomplete=\"off\" \
         pattern=\"[0-9]{{4,10}}\" required maxlength=\"10\"></label>\
         <label>Sensor <select name=\"serial\">{options}</select></label>\
         <label>Replaces (takes over its name, room and history; its keys are erased) \
         <select name=\"replaces\">{replacing}</select></label>{accept}\
         <button>Pair</button></form>"
    );
    b
}

fn replace_options(devices: &[Device], chosen: Option<&str>) -> String {
    let mut out = String::from("<option value=\"\">nothing — a new device</option>");
    for d in devices {
        let selected = if chosen == Some(d.id.as_str()) { " selected" } else { "" };
        let isolated = if matches!(d.availability, Availability::Isolated { .. }) {
            " (isolated)"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<option value=\"{id}\"{selected}>{name}{isolated}</option>",
            id = esc(&d.id),
            name = esc(&device_name(d)),
        );
    }
    out
}

/// The pairing page.
pub async fn pairing(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Query(q): Query<MsgQuery>,
) -> Response {
    let (p, devices) = match (web.api.pairing().await, web.api.devices().await) {
        (Ok(p), Ok(d)) => (p, d),
        (Err(e), _) | (_, Err(e)) => return api_failure(&owner, "Pairing", &e),
    };
    let body = pairing_body(&owner, &p, &devices, q.replaces.as_deref(), q.notice());
    Html(page("Pairing", Some(&owner.csrf), true, &body)).into_response()
}

/// Opens the window.
pub async fn pair_open(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Post(f): Post<PairOpenForm>,
) -> Response {
    if !(30..=600).contains(&f.seconds) {
        return unprocessable(&web, "the window lasts 30 to 600 seconds");
    }
    match web.api.pair_open(f.seconds).await {
        Ok(_) => Redirect::to("/pairing?m=opened").into_response(),
        Err(e) => api_failure(&owner, "Pairing", &e),
    }
}

/// Closes the window.
pub async fn pair_close(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Post(_): Post<CsrfOnly>,
) -> Response {
    match web.api.pair_close().await {
        Ok(_) => Redirect::to("/pairing?m=closed").into_response(),
        Err(e) => api_failure(&owner, "Pairing", &e),
    }
}

/// Types a PIN.
pub async fn pair_pin(
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
    match web.api.pair_pin(pin.to_owned(), serial, replaces, accept).await {
        Ok(_) => Redirect::to("/pairing?m=paired").into_response(),
        Err(e) => {
            let p = web.api.pairing().await.unwrap_or_default();
            let devices = web.api.devices().await.unwrap_or_default();
            let msg = Some(notice("error", &format!("Not paired: {e}")));
            let body = pairing_body(&owner, &p, &devices, Some(&f.replaces), msg);
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Html(page("Pairing", Some(&owner.csrf), true, &body)),
            )
                .into_response()
        }
    }
}

/// One device.
pub async fn device(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Path(id): Path<String>,
    Query(q): Query<MsgQuery>,
) -> Response {
    if !valid_id(&id) {
        return bad_id(&web);
    }
    let (d, history) = match web.api.device(&id).await {
        Ok(v) => v,
        Err(e) => return api_failure(&owner, "Device", &e),
    };
    let readings = web.api.readings(&id, 50).await.unwrap_or_default();
    let now_s = web.now_ms() / 1000;
    let support = if d.support_end > now_s {
        format!("until {}", date(d.support_end))
    } else {
        format!("<strong>ended {}</strong> — no more security updates", date(d.support_end))
    };
    let (class, avail) = availability(&d.availability);
    let mut b = q.notice().unwrap_or_default();
    let _ = write!(
        b,
        "<dl class=\"facts\"><dt>Model designation</dt><dd>{model}</dd><dt>Serial</dt><dd>{serial}</dd>\
         <dt>Device id</dt><dd><code>{id}</code></dd><dt>Firmware</dt><dd>version {fw}{upd}</dd>\
         <dt>Verifies update signatures itself</dt><dd>{sig}</dd>\
         <dt>Support period</dt><dd>{support}</dd><dt>Sensing capabilities</dt><dd>{caps}</dd>\
         <dt>Availability</dt><dd><span class=\"badge {class}\" data-availability=\"{id}\">{avail}</span></dd>\
         <dt>Paired</dt><dd>{paired}</dd></dl>",
        model = esc(&d.model),
        serial = esc(&d.serial),
        id = esc(&d.id),
        fw = d.firmware,
        upd = if d.updatable { "" } else { " (cannot be updated)" },
        sig = if d.verifies_signatures { "yes" } else { "no (the hub verifies for it)" },
        caps = esc(&d.capabilities.join(", ")),
        paired = datetime(d.paired_at),
    );
    if let Availability::Isolated { reason, replacement } = &d.availability {
        let _ = write!(
            b,
            "{}<p>{}</p>",
            notice("error", &format!("Isolated: {reason}")),
            esc(replacement)
        );
    }
    let _ = write!(
        b,
        "<h2>Recent readings</h2>{}<table><thead><tr><th>Time</th><th>Name</th><th>Value</th></tr></thead><tbody>",
        chart_of(&readings, &d.last, 480, 96)
    );
    for r in readings.iter().rev().take(20) {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            datetime(u64::try_from(r.time_ms / 1000).unwrap_or(0)),
            esc(&r.name),
            esc(&reading_text(r))
        );
    }
    b.push_str("</tbody></table><h2>Update history</h2><ul>");
    if history.is_empty() {
        b.push_str("<li class=\"muted\">no updates yet</li>");
    }
    for h in &history {
        let _ = write!(
            b,
            "<li>{} — version {}: {} {}</li>",
            datetime(h.at),
            h.version,
            esc(&h.event),
            esc(&h.detail)
        );
    }
    let _ = write!(
        b,
        "</ul><h2>Name and room</h2><form method=\"post\" action=\"/devices/{id}/label\" class=\"card\">{c}\
         <label>Name <input name=\"name\" required maxlength=\"64\" value=\"{name}\"></label>\
         <label>Room <input name=\"room\" maxlength=\"64\" value=\"{room}\"></label>\
         <button>Save</button></form>",
        id = esc(&d.id),
        c = csrf_field(&owner.csrf),
        name = esc(d.name.as_deref().unwrap_or(&d.serial)),
        room = esc(d.room.as_deref().unwrap_or("")),
    );
    let _ = write!(
        b,
        "<h2>Remove or replace</h2><p>Removing erases the device's keys and readings from \
         the hub. <a href=\"/pairing?replaces={id}\">Pair a replacement</a> to have a new sensor \
         take over its name, room and history (this one's keys are then erased).</p>\
         <form method=\"post\" action=\"/devices/{id}/remove\" class=\"inline\">{c}\
         <button class=\"danger\">Remove this device</button></form>",
        id = esc(&d.id),
        c = csrf_field(&owner.csrf)
    );
    Html(page(&device_name(&d), Some(&owner.csrf), true, &b)).into_response()
}

/// Removes a device.
pub async fn remove(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Path(id): Path<String>,
    Post(_): Post<CsrfOnly>,
) -> Response {
    if !valid_id(&id) {
        return bad_id(&web);
    }
    match web.api.remove(&id).await {
        Ok(()) => Redirect::to("/?m=removed").into_response(),
        Err(e) => api_failure(&owner, "Device", &e),
    }
}

/// Names a device and puts it in a room.
pub async fn label(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Path(id): Path<String>,
    Post(f): Post<LabelForm>,
) -> Response {
    if !valid_id(&id) {
        return bad_id(&web);
    }
    let (name, room) = (f.name.trim(), f.room.trim());
    let ok = |s: &str| s.chars().count() <= 64 && !s.chars().any(char::is_control);
    if name.is_empty() || !ok(name) || !ok(room) {
        return unprocessable(&web, "name and room are 1 to 64 printable characters");
    }
    let room = (!room.is_empty()).then(|| room.to_owned());
    match web.api.label(&id, name.to_owned(), room).await {
        Ok(()) => Redirect::to(&format!("/devices/{id}?m=labelled")).into_response(),
        Err(e) => api_failure(&owner, "Device", &e),
    }
}

/// One device's update progress: a bar at `pct` (100: installed) and a label.
pub(crate) struct Progress {
    pub(crate) id: String,
    pub(crate) pct: Option<u32>,
    pub(crate) label: String,
}

pub(crate) fn progress(devices: &[Device], u: &Updates) -> Vec<Progress> {
    devices
        .iter()
        .map(|d| {
            let newest = u.releases.iter().filter(|r| r.model == d.model).map(|r| r.version).max();
            let state = u.devices.iter().find(|s| s.id == d.id);
            let (pct, label) = if let Some((v, done, total)) = state.and_then(|s| s.delivering) {
                let pct = (u64::from(done) * 100 / u64::from(total.max(1))).min(99) as u32;
                (Some(pct), format!("installing version {v}: {pct} %"))
            } else if newest.is_some_and(|n| d.firmware >= n) {
                (Some(100), format!("version {} installed: 100 %", d.firmware))
            } else if let Some(a) = state.and_then(|s| s.available) {
                let why = state.and_then(|s| s.waiting_for.clone()).unwrap_or_default();
                (Some(0), format!("version {a} available {why}"))
            } else {
                (None, format!("version {}: no update available", d.firmware))
            };
            Progress { id: d.id.clone(), pct, label }
        })
        .collect()
}

fn policy_text(p: Policy) -> String {
    match p {
        Policy::Auto => "install automatically".into(),
        Policy::NotifyOnly => "tell me, install only what I approve".into(),
        Policy::Postponed(t) => format!("postponed until {}", datetime(t)),
        Policy::Disabled => "never install".into(),
    }
}

/// The updates page.
pub async fn updates(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Query(q): Query<MsgQuery>,
) -> Response {
    let (u, devices) = match (web.api.updates().await, web.api.devices().await) {
        (Ok(u), Ok(d)) => (u, d),
        (Err(e), _) | (_, Err(e)) => return api_failure(&owner, "Updates", &e),
    };
    let c = csrf_field(&owner.csrf);
    let mut b = q.notice().unwrap_or_default();
    let checked = |m: &str| {
        let on = matches!(
            (m, u.policy),
            ("auto", Policy::Auto)
                | ("notify_only", Policy::NotifyOnly)
                | ("postponed", Policy::Postponed(_))
                | ("disabled", Policy::Disabled)
        );
        if on { " checked" } else { "" }
    };
    let _ = write!(
        b,
        "<h2>Policy</h2><p>Now: <strong>{now}</strong>. Security updates install automatically \
         unless you choose otherwise; updates that interrupt a device always wait for your approval.</p>\
         <form method=\"post\" action=\"/updates/policy\" class=\"card\">{c}\
         <label class=\"choice\"><input type=\"radio\" name=\"mode\" value=\"auto\"{a}> Install automatically</label>\
         <label class=\"choice\"><input type=\"radio\" name=\"mode\" value=\"notify_only\"{n}> Tell me; install what I approve</label>\
         <label class=\"choice\"><input type=\"radio\" name=\"mode\" value=\"postponed\"{p}> Postpone by \
         <input name=\"days\" inputmode=\"numeric\" size=\"3\" maxlength=\"2\" value=\"7\"> days</label>\
         <label class=\"choice\"><input type=\"radio\" name=\"mode\" value=\"disabled\"{d}> Never install (not recommended)</label>\
         <button>Save the policy</button></form><h2>Available releases</h2>",
        now = esc(&policy_text(u.policy)),
        a = checked("auto"),
        n = checked("notify_only"),
        p = checked("postponed"),
        d = checked("disabled"),
    );
    if u.releases.is_empty() {
        b.push_str("<p class=\"muted\">No verified releases.</p>");
    }
    for r in &u.releases {
        let _ = write!(
            b,
            "<section class=\"card release\"><h3>{m} version {v}</h3><p><strong>What it fixes:</strong> {risks}</p>{warn}\
             <p class=\"muted\">{size} bytes, signature verified by the hub.</p>\
             <form method=\"post\" action=\"/updates/approve\" class=\"inline\">{c}\
             <input type=\"hidden\" name=\"model\" value=\"{m}\"><input type=\"hidden\" name=\"version\" value=\"{v}\">\
             <button data-approve=\"{m}-{v}\">Approve version {v} for every {m}</button></form></section>",
            m = esc(&r.model),
            v = r.version,
            risks = esc(&r.risks_mitigated),
            size = r.size,
            warn = if r.disruptive {
                notice(
                    "warning",
                    "Disruptive: the device stops working for a short time while it installs and restarts. It waits for your approval.",
                )
            } else {
                String::new()
            },
        );
    }
    b.push_str(
        "<h2>Devices</h2><table><thead><tr><th>Device</th><th>Progress</th></tr></thead><tbody>",
    );
    for p in progress(&devices, &u) {
        let d = devices.iter().find(|d| d.id == p.id);
        let bar = match p.pct {
            Some(pct) => format!(
                "<progress max=\"100\" value=\"{pct}\" data-progress=\"{id}\"></progress> ",
                id = esc(&p.id)
            ),
            None => String::new(),
        };
        let _ = write!(
            b,
            "<tr><td><a href=\"/devices/{id}\">{name}</a></td><td>{bar}<span data-progress-label=\"{id}\">{label}</span></td></tr>",
            id = esc(&p.id),
            name = esc(&d.map(device_name).unwrap_or_default()),
            label = esc(&p.label),
        );
    }
    b.push_str("</tbody></table>");
    if !u.refused.is_empty() {
        b.push_str("<h2>Refused releases</h2><ul>");
        for (at, source, reason) in &u.refused {
            let _ = write!(b, "<li>{} from {}: {}</li>", datetime(*at), esc(source), esc(reason));
        }
        b.push_str("</ul>");
    }
    Html(page("Updates", Some(&owner.csrf), true, &b)).into_response()
}

/// Sets the policy.
pub async fn set_policy(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Post(f): Post<PolicyForm>,
) -> Response {
    let policy = match f.mode.as_str() {
        "auto" => Policy::Auto,
        "notify_only" => Policy::NotifyOnly,
        "disabled" => Policy::Disabled,
        "postponed" => match f.days.trim().parse::<u64>() {
            Ok(days @ 1..=90) => Policy::Postponed(web.now_ms() / 1000 + days * 86_400),
            _ => return unprocessable(&web, "postpone by 1 to 90 days"),
        },
        _ => return unprocessable(&web, "unknown policy"),
    };
    match web.api.set_policy(policy).await {
        Ok(()) => Redirect::to("/updates?m=policy").into_response(),
        Err(e) => api_failure(&owner, "Updates", &e),
    }
}

/// Approves a release for every device of its model.
pub async fn approve(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Post(f): Post<ApproveForm>,
) -> Response {
    if f.model.is_empty() || f.model.len() > 64 {
        return unprocessable(&web, "malformed model");
    }
    match web.api.approve(f.model, f.version).await {
        Ok(()) => Redirect::to("/updates?m=approved").into_response(),
        Err(e) => api_failure(&owner, "Updates", &e),
    }
}

/// Isolated devices with the reason and the way out.
pub async fn isolated(State(web): State<Arc<Web>>, owner: Owner) -> Response {
    let devices = match web.api.devices().await {
        Ok(d) => d,
        Err(e) => return api_failure(&owner, "Isolated devices", &e),
    };
    let mut b = String::from(
        "<p>A device that is vulnerable and cannot be updated, or whose support period has \
         ended, is isolated: the hub keeps it paired and records its readings, but relays \
         nothing from or to it beyond the hub.</p>",
    );
    let mut any = false;
    let now_ms = web.now_ms();
    for d in &devices {
        if let Availability::Isolated { reason, replacement } = &d.availability {
            any = true;
            let _ = write!(
                b,
                "<section class=\"card isolated\" data-isolated=\"{id}\"><h3><a href=\"/devices/{id}\">{name}</a></h3>\
                 <p><strong>Why:</strong> <span class=\"reason\">{reason}</span></p>\
                 <p><strong>Support period:</strong> {end}</p><p><strong>What to do:</strong> {repl} \
                 <a href=\"/pairing?replaces={id}\">Pair a replacement</a></p></section>",
                id = esc(&d.id),
                name = esc(&device_name(d)),
                reason = esc(reason),
                end = if d.support_end * 1000 > now_ms {
                    format!("until {}", date(d.support_end))
                } else {
                    format!("ended {}", date(d.support_end))
                },
                repl = esc(replacement),
            );
        }
    }
    if !any {
        b.push_str("<p class=\"muted\">No device is isolated.</p>");
    }
    Html(page("Isolated devices", Some(&owner.csrf), false, &b)).into_response()
}

/// The web UI's own checks, from its current state.
fn web_checks(
    web: &Web,
    pairing: Option<&crate::api::Pairing>,
    anomalies: usize,
    events: u64,
) -> Vec<Check> {
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
    let c = |provision: &str, title: &str, ok: bool, state: String| Check {
        provision: provision.into(),
        title: title.into(),
        ok,
        state,
    };
    vec![
        c("5.1-1", "No universal default passwords", true, account),
        c("5.1-4", "The user can change the authentication value", true, "Password change on the Account page; argon2id hash sealed under the hub's key-encryption key.".into()),
        c("5.1-5", "Brute-force protection", true, format!("Web login: back-off after {} failures, doubling up to {} min, always expiring, taken before the password is checked; browsers that logged in before keep their own budget (device cookies); {backing_off} client(s)/account(s) backing off now. Sensors: {pairing}.", policy.free_failures, policy.max_ms.div_ceil(60_000))),
        c("5.5-1", "Communication is encrypted", true, "This page came over HTTPS (TLS 1.2/1.3 with the hub's own certificate); plain HTTP on this port gets no answer.".into()),
        c("5.6-2", "Nothing disclosed before authentication", true, "Every page and data stream needs a session; the login page names no version or model.".into()),
        c("5.10-1", "Security events are monitored", anomalies == 0, format!("{events} security events counted; {anomalies} anomaly flag(s) in the last 5 minutes.")),
        c("5.11-1", "User data can be erased", true, "Privacy page: erase every device, key, reading and the account.".into()),
        c("5.13-1", "Input is validated", true, format!("{} malformed and {} oversized web requests refused (HTTP 400/413/422).", web.total(WebEvent::Malformed), web.total(WebEvent::TooLarge))),
        c("6-3", "Telemetry only with consent", true, format!("Hearth sends no telemetry; your recorded choice: {}.", if consent { "allowed" } else { "not allowed" })),
    ]
}

/// The live EN 303 645 self-check (5.12-3).
pub async fn security(State(web): State<Arc<Web>>, owner: Owner) -> Response {
    let pairing = web.api.pairing().await.ok();
    let counters = web.api.counters().await.unwrap_or_default();
    web.sample_hub(counters.clone());
    let rows = web.event_rows(&counters);
    let anomalies = rows.iter().filter(|r| r.anomaly).count();
    let events: u64 =
        rows.iter().filter(|r| r.name != "web_unauthenticated").map(|r| r.total).sum();
    let mut checks = web_checks(&web, pairing.as_ref(), anomalies, events);
    match web.api.checks().await {
        Ok(hub) => checks.extend(hub),
        Err(e) => checks.push(Check {
            provision: "—".into(),
            title: "Hub checks".into(),
            ok: false,
            state: e.to_string(),
        }),
    }
    checks.sort_by_key(|c| provision_key(&c.provision));
    let ok = checks.iter().filter(|c| c.ok).count();
    let mut b = format!(
        "<p>A live self-check against ETSI EN 303 645: each provision Hearth implements, with the \
         current state that shows it. <strong data-checks-ok>{ok} of {} met now.</strong></p>\
         <table class=\"checks\"><thead><tr><th>Provision</th><th>Requirement</th><th>Current state</th><th>Met</th></tr></thead><tbody>",
        checks.len()
    );
    for c in &checks {
        let _ = write!(
            b,
            "<tr class=\"{cls}\"><td>{p}</td><td>{t}</td><td>{s}</td><td>{m}</td></tr>",
            cls = if c.ok { "ok" } else { "bad" },
            p = esc(&c.provision),
            t = esc(&c.title),
            s = esc(&c.state),
            m = if c.ok { "✓ yes" } else { "✗ no" },
        );
    }
    b.push_str("</tbody></table>");
    Html(page("Security status", Some(&owner.csrf), false, &b)).into_response()
}

fn provision_key(p: &str) -> Vec<u32> {
    p.split(['.', '-']).map(|n| n.parse().unwrap_or(u32::MAX)).collect()
}

/// Security events with anomaly flags (5.10-1).
pub async fn events(State(web): State<Arc<Web>>, owner: Owner) -> Response {
    let counters = match web.api.counters().await {
        Ok(c) => c,
        Err(e) => return api_failure(&owner, "Security events", &e),
    };
    web.sample_hub(counters.clone());
    let rows = web.event_rows(&counters);
    let flagged = rows.iter().filter(|r| r.anomaly).count();
    let mut b = format!(
        "<p>Every security-relevant event is counted. A kind is flagged when it happens unusually \
         often within 5 minutes (for example repeated failed logins or messages failing \
         authentication). {}</p><table class=\"events\"><thead><tr><th>Event</th><th>Last 5 min</th>\
         <th>Total</th><th>Flag</th></tr></thead><tbody>",
        if flagged == 0 {
            "No anomaly now.".to_string()
        } else {
            format!("<strong class=\"alert\">{flagged} anomaly flag(s).</strong>")
        }
    );
    for r in &rows {
        let _ = write!(
            b,
            "<tr class=\"{cls}\" data-event=\"{n}\"><td>{l}<br><code class=\"muted\">{n}</code></td><td>{recent}</td><td>{total}</td><td>{flag}</td></tr>",
            cls = if r.anomaly { "anomaly" } else { "" },
            n = esc(&r.name),
            l = esc(&r.label),
            recent = r.recent,
            total = r.total,
            flag = if r.anomaly { "⚠ anomaly" } else { "" },
        );
    }
    b.push_str("</tbody></table>");
    Html(page("Security events", Some(&owner.csrf), false, &b)).into_response()
}

/// What is processed and why, consent, and erase.
pub async fn privacy(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Query(q): Query<MsgQuery>,
) -> Response {
    let consent = web.lock().vault.telemetry_consent;
    privacy_page(&owner, consent, q.notice(), StatusCode::OK)
}

fn privacy_page(owner: &Owner, consent: bool, msg: Option<String>, status: StatusCode) -> Response {
    let c = csrf_field(&owner.csrf);
    let b = format!(
        "{msg}<h2>What Hearth processes, and why</h2><ul>\
         <li><strong>Sensor readings</strong> (values, units, times) — to show them here and pass \
         them to your home automation over the local MQTT broker. Kept on the hub only, the newest \
         readings per device up to the configured bound.</li>\
         <li><strong>Device descriptions and link keys</strong> (model, serial, firmware, keys) — \
         to talk to your sensors securely. Keys are stored encrypted.</li>\
         <li><strong>Your account</strong> (user name, argon2id password hash) — to let only you in. \
         Stored encrypted.</li>\
         <li><strong>Security event counters and logs</strong> — to detect attacks. No personal content.</li>\
         <li><strong>A session cookie</strong> — strictly necessary to keep you logged in; no tracking.</li>\
         </ul><p>Nothing leaves your home unless you configure an upstream broker yourself.</p>\
         <h2>Telemetry</h2><p>Hearth sends <strong>no telemetry</strong>. This switch records your \
         choice should that ever change; it is off unless you turn it on.</p>\
         <form method=\"post\" action=\"/privacy/consent\" class=\"inline\">{c}\
         <input type=\"hidden\" name=\"consent\" value=\"{next}\">\
         <span data-consent=\"{now}\">Telemetry consent: <strong>{now}</strong></span> \
         <button>{button}</button></form>\
         <h2>Erase all user data</h2><p>Deletes every device with its keys and readings, your \
         account and settings, and returns the hub to first-run setup with a new one-time code. \
         This cannot be undone.</p>\
         <form method=\"post\" action=\"/privacy/erase\" class=\"card danger-zone\">{c}\
         <label>Type <code>{word}</code> to confirm <input name=\"confirm\" autocomplete=\"off\" required maxlength=\"16\" data-confirm-word=\"{word}\"></label>\
         <button class=\"danger\" data-erase>Erase everything</button></form>",
        msg = msg.unwrap_or_default(),
        next = if consent { "off" } else { "on" },
        now = if consent { "on" } else { "off" },
        button = if consent { "Withdraw consent" } else { "Give consent" },
        word = ERASE_WORD,
    );
    (status, Html(page("Privacy", Some(&owner.csrf), false, &b))).into_response()
}

/// Records the telemetry choice.
pub async fn consent(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Post(f): Post<ConsentForm>,
) -> Response {
    let value = match f.consent.as_str() {
        "on" => true,
        "off" => false,
        _ => return unprocessable(&web, "consent is on or off"),
    };
    let _one_at_a_time = web.account_lock.lock().await;
    let mut vault = web.lock().vault.clone();
    vault.telemetry_consent = value;
    if let Err(e) = web.api.store_vault(vault.to_bytes()).await {
        return api_failure(&owner, "Privacy", &e);
    }
    web.lock().vault = vault;
    Redirect::to("/privacy?m=consent").into_response()
}

/// Erases everything after the typed confirmation.
pub async fn erase(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Post(f): Post<EraseForm>,
) -> Response {
    if f.confirm.trim() != ERASE_WORD {
        web.event(WebEvent::Malformed);
        let consent = web.lock().vault.telemetry_consent;
        let msg = notice("error", &format!("Nothing was erased: type {ERASE_WORD} to confirm."));
        return privacy_page(&owner, consent, Some(msg), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let _one_at_a_time = web.account_lock.lock().await;
    if let Err(e) = web.api.erase_all().await {
        return api_failure(&owner, "Privacy", &e);
    }
    web.reload_vault().await;
    web.lock().sessions.retain_only(None);
    // The owner's records and device cookies went with the account.
    web.save_logins().await;
    tracing::warn!("all user data erased by the owner; back to first-run setup");
    // Answered here, not by a redirect: the hub restarts as a new one right after this answer.
    let body = format!(
        "{}<p>Everything the owner set up was deleted: every device with its keys and readings, \
         the owner account and its sessions, MQTT logins, trusted manufacturer keys, releases, \
         advisories, the update policy and the upstream bridge's queue. The hub now restarts as \
         a new hub with a <strong>new</strong> key-encryption key and a <strong>new</strong> \
         certificate (your browser warns again: compare the fingerprint the hub prints at start) \
         and a <strong>new</strong> one-time setup code, printed on the hub's console and \
         written to the file <code>setup-code</code> in its data directory. Settings in the \
         hub's configuration file stay as they are.</p>\
         <p><a href=\"/setup\">Set up again</a> (in a few seconds)</p>",
        notice("ok", "Erase complete.")
    );
    let mut res = Html(page("All data erased", None, false, &body)).into_response();
    res.headers_mut().append(header::SET_COOKIE, cookie(SESSION_COOKIE, ""));
    res
}

/// The live state the open page updates itself from.
pub(crate) async fn live_snapshot(web: &Web) -> serde_json::Value {
    let devices = web.api.devices().await.unwrap_or_default();
    let mut live = serde_json::Map::new();
    for d in &devices {
        let reading = readings_text(&d.last);
        live.insert(
            d.id.clone(),
            serde_json::json!({"reading": reading, "availability": availability(&d.availability).1}),
        );
    }
    let mut bars = serde_json::Map::new();
    if let Ok(u) = web.api.updates().await {
        for p in progress(&devices, &u) {
            bars.insert(p.id, serde_json::json!({"pct": p.pct, "label": p.label}));
        }
    }
    let pairing = web.api.pairing().await.unwrap_or_default();
    serde_json::json!({
        "ids": devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>().join(","),
        "devices": live,
        "progress": bars,
        "pairing": {
            "open": pairing.open,
            "closes_in_s": pairing.closes_in_s,
            "attempts_left": pairing.attempts_left,
            "waiting": pairing.waiting.len(),
        },
    })
}
