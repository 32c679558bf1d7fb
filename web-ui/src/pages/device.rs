//! One device's page: model designation (EN 303 645 5.3-16), firmware, support period
//! (5.3-13), sensing capabilities (5.8-3), readings with a chart of its main quantity, update
//! history; the setpoint control (the same command and range as MQTT's `…/set`), name and
//! room, replacement, and removal after a confirmation step.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};

use crate::api::{Availability, Device, HistoryLine, Reading, Setpoint};
use crate::chart::chart_of;
use crate::guard::{Owner, Post, unprocessable};
use crate::html::{
    availability, csrf_field, device_name, notice, page, reading_label, reading_text,
};
use crate::pages::{DevicePath, MsgQuery, api_failure, forms};
use crate::state::Web;
use crate::time::{local_date, local_time_ms, when};

forms! {
    LabelForm { name: String, room: String }
    SetpointForm { value: String }
    RemoveForm { confirm: Option<String> }
}

/// Readings shown under the chart.
const TABLE_ROWS: usize = 20;

/// One device.
pub(crate) async fn device(
    State(web): State<Arc<Web>>,
    owner: Owner,
    DevicePath(id): DevicePath,
    Query(q): Query<MsgQuery>,
) -> Response {
    let (d, history) = match web.api.device(&id).await {
        Ok(v) => v,
        Err(e) => return api_failure(&owner, "Device", &e),
    };
    let readings = web.api.readings(&id, 50).await.unwrap_or_default();
    let body = body(&web, &owner, &d, &history, &readings, q.notice());
    Html(page(&device_name(&d), Some(&owner.csrf), true, body)).into_response()
}

fn body(
    web: &Web,
    owner: &Owner,
    d: &Device,
    history: &[HistoryLine],
    readings: &[Reading],
    msg: Option<Markup>,
) -> Markup {
    let now_ms = web.now_ms();
    let c = csrf_field(&owner.csrf);
    let class = availability(&d.availability);
    html! {
        @if let Some(m) = msg { (m) }
        dl.facts {
            dt { "Model designation" } dd { (d.model) }
            dt { "Serial" } dd { (d.serial) }
            dt { "Device id" } dd { code { (d.id) } }
            dt { "Firmware" } dd { "version " (d.firmware) @if !d.updatable { " (cannot be updated)" } }
            dt { "Verifies update signatures itself" }
            dd { @if d.verifies_signatures { "yes" } @else { "no (the hub verifies for it)" } }
            dt { "Support period" }
            dd {
                @if d.support_end.saturating_mul(1000) > now_ms {
                    "until " (local_date(d.support_end))
                } @else {
                    strong { "ended " (local_date(d.support_end)) } " — no more security updates"
                }
            }
            dt { "Sensing capabilities" } dd { (d.capabilities.join(", ")) }
            dt { "Availability" }
            dd { span.badge.(class) data-availability=(d.id) { (class) } }
            dt { "Paired" } dd { (when(d.paired_at, now_ms)) }
        }
        @if let Availability::Isolated { reason, replacement } = &d.availability {
            (notice("error", &format!("Isolated: {reason}")))
            p { (replacement) }
        }
        @if let Some(s) = &d.setpoint { (setpoint_form(d, s, &c)) }
        h2 { "Recent readings" }
        (chart_of(readings, &d.last, 480, 110))
        table {
            thead { tr { th { "Time" } th { "Name" } th { "Value" } } }
            tbody {
                @for r in readings.iter().rev().take(TABLE_ROWS) {
                    tr {
                        td { (local_time_ms(r.time_ms)) }
                        td { (reading_label(r)) }
                        td { (reading_text(r)) }
                    }
                }
            }
        }
        h2 { "Update history" }
        ul {
            @if history.is_empty() { li.muted { "no updates yet" } }
            @for h in history {
                li { (when(h.at, now_ms)) " — version " (h.version) ": " (h.event) " " (h.detail) }
            }
        }
        h2 { "Name and room" }
        form.card method="post" action={ "/devices/" (d.id) "/label" } {
            (c)
            label { "Name " input name="name" required maxlength="64"
                value=(d.name.as_deref().unwrap_or(&d.serial)); }
            label { "Room " input name="room" maxlength="64" value=(d.room.as_deref().unwrap_or("")); }
            button { "Save" }
        }
        h2 { "Replace or remove" }
        p {
            "Moved it, broken, or isolated? "
            a href={ "/pairing?replaces=" (d.id) } data-replace=(d.id) { "Pair a replacement sensor" }
            ": the new sensor takes over this device's name, room and history, and this device's \
             keys are erased."
        }
        p { "Removing erases the device's keys and readings from the hub; you are asked to confirm." }
        form.inline method="post" action={ "/devices/" (d.id) "/remove" } {
            (c) button.danger { "Remove this device" }
        }
    }
}

fn setpoint_form(d: &Device, s: &Setpoint, c: &Markup) -> Markup {
    let current = s.current.map(|v| format!("{v:.1}"));
    html! {
        h2 { "Setpoint" }
        form.card method="post" action={ "/devices/" (d.id) "/setpoint" } data-setpoint=(d.id) {
            (c)
            p.muted {
                "Now: " @match &current { Some(v) => { (v) " " (s.unit) }, None => "not reported yet" }
                ". The device takes a new setpoint with its next report."
            }
            label { "Target (" (format!("{:.0}", s.min)) " to " (format!("{:.0}", s.max)) " " (s.unit) ") "
                input type="number" name="value" step="0.5" min=(s.min) max=(s.max) required
                    value=(current.as_deref().unwrap_or(""));
            }
            button { "Set" }
        }
    }
}

/// Sets the setpoint (checked like MQTT's `…/set`: a finite number within the device's range).
pub(crate) async fn setpoint(
    State(web): State<Arc<Web>>,
    owner: Owner,
    DevicePath(id): DevicePath,
    Post(f): Post<SetpointForm>,
) -> Response {
    let Some(value) = f.value.trim().parse::<f64>().ok().filter(|v| v.is_finite()) else {
        return unprocessable(&web, "the setpoint must be a number");
    };
    let d = match web.api.device(&id).await {
        Ok((d, _)) => d,
        Err(e) => return api_failure(&owner, "Device", &e),
    };
    let Some(range) = d.setpoint else {
        return unprocessable(&web, "this device takes no setpoint");
    };
    if !(range.min..=range.max).contains(&value) {
        return unprocessable(
            &web,
            &format!("setpoint must be {:.0} to {:.0} {}", range.min, range.max, range.unit),
        );
    }
    match web.api.set_setpoint(&id, value).await {
        Ok(()) => Redirect::to(&format!("/devices/{id}?m=setpoint")).into_response(),
        Err(e) => api_failure(&owner, "Device", &e),
    }
}

/// Removes a device: the first post asks for confirmation, the second (with `confirm=yes`)
/// removes it.
pub(crate) async fn remove(
    State(web): State<Arc<Web>>,
    owner: Owner,
    DevicePath(id): DevicePath,
    Post(f): Post<RemoveForm>,
) -> Response {
    match f.confirm.as_deref() {
        None => {}
        Some("yes") => {
            let removed = web.api.remove(&id).await;
            web.live.invalidate();
            return match removed {
                Ok(()) => Redirect::to("/?m=removed").into_response(),
                Err(e) => api_failure(&owner, "Device", &e),
            };
        }
        Some(_) => return unprocessable(&web, "confirm is yes"),
    }
    let d = match web.api.device(&id).await {
        Ok((d, _)) => d,
        Err(e) => return api_failure(&owner, "Device", &e),
    };
    let name = device_name(&d);
    let body = html! {
        (notice("warning", &format!(
            "Remove {name}? Its keys and all its readings are erased from the hub; this cannot be \
             undone. To use it again it must be paired anew."
        )))
        form.inline method="post" action={ "/devices/" (d.id) "/remove" } data-confirm-remove=(d.id) {
            (csrf_field(&owner.csrf))
            input type="hidden" name="confirm" value="yes";
            button.danger { "Yes, remove " (name) }
        }
        " "
        a href={ "/devices/" (d.id) } { "Cancel: keep it" }
    };
    Html(page("Remove this device?", Some(&owner.csrf), false, body)).into_response()
}

/// Names a device and puts it in a room.
pub(crate) async fn label(
    State(web): State<Arc<Web>>,
    owner: Owner,
    DevicePath(id): DevicePath,
    Post(f): Post<LabelForm>,
) -> Response {
    let (name, room) = (f.name.trim(), f.room.trim());
    let ok = |s: &str| s.chars().count() <= 64 && !s.chars().any(char::is_control);
    if name.is_empty() || !ok(name) || !ok(room) {
        return unprocessable(&web, "name and room are 1 to 64 printable characters");
    }
    let room = (!room.is_empty()).then(|| room.to_owned());
    let labelled = web.api.label(&id, name.to_owned(), room).await;
    web.live.invalidate();
    match labelled {
        Ok(()) => Redirect::to(&format!("/devices/{id}?m=labelled")).into_response(),
        Err(e) => api_failure(&owner, "Device", &e),
    }
}
