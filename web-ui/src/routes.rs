//! The router: every page and form of [`crate::pages`], the live stream ([`crate::live`]), the
//! static assets, and the answers for unknown paths; the body limit and the security headers
//! ([`crate::guard`]) around all of them.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::html;

use crate::guard::{BODY_LIMIT, Owner};
use crate::html::page;
use crate::pages::{account, dashboard, device, isolated, pairing, privacy, security, updates};
use crate::state::Web;

/// The web UI's routes over `web`.
pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(dashboard::dashboard))
        .route("/setup", get(account::setup_page).post(account::setup))
        .route("/login", get(account::login_page).post(account::login))
        .route("/logout", post(account::logout))
        .route("/account", get(account::account_page))
        .route("/account/password", post(account::change_password))
        .route("/pairing", get(pairing::pairing))
        .route("/pairing/open", post(pairing::open))
        .route("/pairing/close", post(pairing::close))
        .route("/pairing/pin", post(pairing::pin))
        .route("/devices/{id}", get(device::device))
        .route("/devices/{id}/remove", post(device::remove))
        .route("/devices/{id}/label", post(device::label))
        .route("/devices/{id}/setpoint", post(device::setpoint))
        .route("/updates", get(updates::updates))
        .route("/updates/policy", post(updates::set_policy))
        .route("/updates/approve", post(updates::approve))
        .route("/isolated", get(isolated::isolated))
        .route("/security", get(security::status))
        .route("/security/hub-cert.pem", get(security::certificate))
        .route("/events", get(security::events))
        .route("/privacy", get(privacy::privacy))
        .route("/privacy/consent", post(privacy::consent))
        .route("/privacy/erase", post(privacy::erase))
        .route("/erased", get(erased))
        .route("/live", get(crate::live::stream))
        .route("/static/app.js", get(js))
        .route("/static/app.css", get(css))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::map_response(crate::guard::headers))
        .with_state(web)
}

/// Shown after an erase (only while the hub waits for setup: it says nothing about anyone's data).
async fn erased(State(web): State<Arc<Web>>) -> Response {
    if !web.lock().vault.needs_setup() {
        return Redirect::to("/login").into_response();
    }
    let body = html! {
        (privacy::erased_text())
        p { a href="/setup" { "Set up again" } }
    };
    Html(page("All data erased", None, false, body)).into_response()
}

const APP_JS: &str = include_str!("../static/app.js");
const APP_CSS: &str = include_str!("../static/app.css");

async fn js() -> Response {
    static_asset("text/javascript; charset=utf-8", APP_JS)
}

async fn css() -> Response {
    static_asset("text/css; charset=utf-8", APP_CSS)
}

fn static_asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "private, max-age=300")], body)
        .into_response()
}

async fn not_found(_owner: Owner) -> Response {
    let body = html! { p { "There is no such page. " a href="/" { "Dashboard" } } };
    (StatusCode::NOT_FOUND, Html(page("Not found", None, false, body))).into_response()
}
