//! Privacy: what the hub processes and why (EN 303 645 6-1), the telemetry choice (6-2/6-3)
//! and erasing everything after a typed confirmation (5.11-1/5.11-4).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};

use crate::guard::{Owner, Post, SESSION_COOKIE, cookie, unprocessable};
use crate::html::{csrf_field, notice, page};
use crate::pages::{MsgQuery, api_failure, forms};
use crate::state::{Web, WebEvent};

forms! {
    ConsentForm { consent: String }
    EraseForm { confirm: String }
}

/// What the owner must type to erase everything.
pub(crate) const ERASE_WORD: &str = "ERASE";

/// What is processed and why, consent, and erase.
pub(crate) async fn privacy(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Query(q): Query<MsgQuery>,
) -> Response {
    let consent = web.lock().vault.telemetry_consent;
    privacy_page(&owner, consent, q.notice(), StatusCode::OK)
}

fn privacy_page(owner: &Owner, consent: bool, msg: Option<Markup>, status: StatusCode) -> Response {
    let c = csrf_field(&owner.csrf);
    let now = if consent { "on" } else { "off" };
    let body = html! {
        @if let Some(m) = msg { (m) }
        h2 { "What Hearth processes, and why" }
        ul {
            li { strong { "Sensor readings" } " (values, units, times) — to show them here and \
                 pass them to your home automation over the local MQTT broker. Kept on the hub \
                 only, the newest readings per device up to the configured bound." }
            li { strong { "Device descriptions and link keys" } " (model, serial, firmware, keys) \
                 — to talk to your sensors securely. Keys are stored encrypted." }
            li { strong { "Your account" } " (user name, argon2id password hash) — to let only \
                 you in. Stored encrypted." }
            li { strong { "Security event counters and logs" } " — to detect attacks. No \
                 personal content." }
            li { strong { "A session cookie" } " — strictly necessary to keep you logged in; no \
                 tracking." }
        }
        p { "Nothing leaves your home unless you configure an upstream broker yourself." }
        h2 { "Telemetry" }
        p { "Hearth sends " strong { "no telemetry" } ". This switch records your choice should \
             that ever change; it is off unless you turn it on." }
        form.inline method="post" action="/privacy/consent" {
            (c)
            input type="hidden" name="consent" value=(if consent { "off" } else { "on" });
            span data-consent=(now) { "Telemetry consent: " strong { (now) } } " "
            button { (if consent { "Withdraw consent" } else { "Give consent" }) }
        }
        h2 id="move" { "Moving to a new gateway" }
        p { "A backup holds everything you set up — devices with their names, rooms and keys, \
             readings, MQTT users, trusted keys, releases, update policy, upstream settings, your \
             account and the security counters — encrypted under a passphrase you choose (at \
             least 12 characters; without it the backup cannot be read). Make one while the hub \
             runs, on the gateway:" }
        pre { code data-backup-command { "hub backup /media/usb/home.hearth-backup" } }
        p { "On the new gateway, restore it into an empty data directory and start the hub \
             there, with the configuration the backup carried:" }
        pre { code data-restore-command { "hub restore /media/usb/home.hearth-backup --data-dir /var/lib/hearth\n\
    hub run --data-dir /var/lib/hearth --config /var/lib/hearth/restored-config/hub.toml" } }
        p { "Your sensors follow by themselves, without pairing again: at its first message each \
             one agrees fresh keys with the new hub, so nothing sent to the old hub can be \
             replayed to the new one. Readings the old hub received after the backup are not in \
             it. The new gateway makes its own HTTPS certificate: check its new fingerprint." }
        h2 { "Erase all user data" }
        p { "Deletes every device with its keys and readings, your account and settings, and \
             returns the hub to first-run setup with a new one-time code. This cannot be undone." }
        form.card.danger-zone method="post" action="/privacy/erase" {
            (c)
            label { "Type " code { (ERASE_WORD) } " to confirm "
                input name="confirm" autocomplete="off" required maxlength="16"
                    data-confirm-word=(ERASE_WORD);
            }
            button.danger data-erase { "Erase everything" }
        }
    };
    (status, Html(page("Privacy", Some(&owner.csrf), false, body))).into_response()
}

/// Records the telemetry choice.
pub(crate) async fn consent(
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

/// What an erase did, shown right after it and on `/erased`.
pub(crate) fn erased_text() -> Markup {
    html! {
        (notice("ok", "Erase complete."))
        p {
            "Everything the owner set up was deleted: every device with its keys and readings, \
             the owner account and its sessions, MQTT logins, trusted manufacturer keys, \
             releases, advisories, the update policy and the upstream bridge's queue. The hub \
             now restarts as a new hub with a " strong { "new" } " key-encryption key and a "
            strong { "new" } " certificate (your browser warns again: compare the fingerprint the \
             hub prints at start) and a " strong { "new" } " one-time setup code, written to the \
             file " code { "setup-code" } " in its data directory. Settings in the hub's \
             configuration file stay as they are."
        }
    }
}

/// Erases everything after the typed confirmation.
pub(crate) async fn erase(
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
    web.live.invalidate();
    // The owner's records and device cookies went with the account.
    web.save_logins().await;
    tracing::warn!("all user data erased by the owner; back to first-run setup");
    // Answered here, not by a redirect: the hub restarts as a new one right after this answer.
    let body = html! {
        (erased_text())
        p { a href="/setup" { "Set up again" } " (in a few seconds)" }
    };
    let mut res = Html(page("All data erased", None, false, body)).into_response();
    res.headers_mut().append(header::SET_COOKIE, cookie(SESSION_COOKIE, ""));
    res
}
