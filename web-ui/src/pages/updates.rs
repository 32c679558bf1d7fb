//! The updates page (EN 303 645 5.3-6, 5.3-11, 5.3-12; TR 103 621 6.14): the owner's policy,
//! verified releases with what they fix and whether they interrupt the device, approval,
//! progress per device, and releases the hub refused with the reason.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;

use crate::api::{Device, Policy, Updates};
use crate::guard::{Owner, Post, unprocessable};
use crate::html::{csrf_field, device_name, notice, page};
use crate::pages::{MsgQuery, api_failure, forms};
use crate::state::Web;
use crate::time::when;

forms! {
    PolicyForm { mode: String, days: String }
    ApproveForm { model: String, version: u32 }
}

/// One device's update progress: a bar at `pct` (100: installed) and a label.
pub(crate) struct Progress {
    pub(crate) id: String,
    pub(crate) pct: Option<u32>,
    pub(crate) label: String,
}

/// Each device's update progress.
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

fn policy_text(p: Policy, now_ms: u64) -> String {
    match p {
        Policy::Auto => "install automatically".into(),
        Policy::NotifyOnly => "tell me, install only what I approve".into(),
        Policy::Postponed(t) => format!("postponed until {}", when(t, now_ms)),
        Policy::Disabled => "never install".into(),
    }
}

/// The updates page.
pub(crate) async fn updates(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Query(q): Query<MsgQuery>,
) -> Response {
    let (u, devices) = match (web.api.updates().await, web.api.devices().await) {
        (Ok(u), Ok(d)) => (u, d),
        (Err(e), _) | (_, Err(e)) => return api_failure(&owner, "Updates", &e),
    };
    let now_ms = web.now_ms();
    let c = csrf_field(&owner.csrf);
    let checked = |m: &str| {
        matches!(
            (m, u.policy),
            ("auto", Policy::Auto)
                | ("notify_only", Policy::NotifyOnly)
                | ("postponed", Policy::Postponed(_))
                | ("disabled", Policy::Disabled)
        )
    };
    let choice =
        |mode: &str| html! { input type="radio" name="mode" value=(mode) checked[checked(mode)]; };
    let body = html! {
        @if let Some(n) = q.notice() { (n) }
        h2 { "Policy" }
        p {
            "Now: " strong { (policy_text(u.policy, now_ms)) } ". Security updates install \
             automatically unless you choose otherwise; updates that interrupt a device always \
             wait for your approval."
        }
        form.card method="post" action="/updates/policy" {
            (c)
            label.choice { (choice("auto")) " Install automatically" }
            label.choice { (choice("notify_only")) " Tell me; install what I approve" }
            label.choice { (choice("postponed")) " Postpone by "
                input name="days" inputmode="numeric" size="3" maxlength="2" value="7";
                " days" }
            label.choice { (choice("disabled")) " Never install (not recommended)" }
            button { "Save the policy" }
        }
        h2 { "Available releases" }
        @if u.releases.is_empty() { p.muted { "No verified releases." } }
        @for r in &u.releases {
            section.card.release {
                h3 { (r.model) " version " (r.version) }
                p { strong { "What it fixes:" } " " (r.risks_mitigated) }
                @if r.disruptive {
                    (notice("warning", "Disruptive: the device stops working for a short time \
                        while it installs and restarts. It waits for your approval."))
                }
                p.muted { (r.size) " bytes, signature verified by the hub." }
                form.inline method="post" action="/updates/approve" {
                    (c)
                    input type="hidden" name="model" value=(r.model);
                    input type="hidden" name="version" value=(r.version);
                    button data-approve={ (r.model) "-" (r.version) } {
                        "Approve version " (r.version) " for every " (r.model)
                    }
                }
            }
        }
        h2 { "Devices" }
        table {
            thead { tr { th { "Device" } th { "Progress" } } }
            tbody {
                @for p in progress(&devices, &u) {
                    @let d = devices.iter().find(|d| d.id == p.id);
                    tr {
                        td { a href={ "/devices/" (p.id) } { (d.map(device_name).unwrap_or_default()) } }
                        td {
                            @if let Some(pct) = p.pct {
                                progress max="100" value=(pct) data-progress=(p.id) {} " "
                            }
                            span data-progress-label=(p.id) { (p.label) }
                        }
                    }
                }
            }
        }
        @if !u.refused.is_empty() {
            h2 { "Refused releases" }
            ul {
                @for (at, source, reason) in &u.refused {
                    li { (when(*at, now_ms)) " from " (source) ": " (reason) }
                }
            }
        }
    };
    Html(page("Updates", Some(&owner.csrf), true, body)).into_response()
}

/// Sets the policy.
pub(crate) async fn set_policy(
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
pub(crate) async fn approve(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Post(f): Post<ApproveForm>,
) -> Response {
    if f.model.is_empty() || f.model.len() > 64 {
        return unprocessable(&web, "malformed model");
    }
    let approved = web.api.approve(f.model, f.version).await;
    web.live.invalidate();
    match approved {
        Ok(()) => Redirect::to("/updates?m=approved").into_response(),
        Err(e) => api_failure(&owner, "Updates", &e),
    }
}
