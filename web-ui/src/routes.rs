//! The router: first-run setup with the one-time code (EN 303 645 5.1-1), login with throttling
//! (5.1-5), log-out, password change (5.1-4), static assets, and the live-data stream (SSE); the
//! owner's pages are in [`crate::pages`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::auth::{AuthError, MAX_PASSWORD, Vault};
use crate::guard::{
    BODY_LIMIT, ClientAddr, CsrfForm, Owner, PRE_COOKIE, Post, SESSION_COOKIE, cookie, read_cookie,
    unprocessable,
};
use crate::html::{csrf_field, esc, notice, page};
use crate::pages;
use crate::state::{Web, WebEvent};

/// The web UI's routes over `web`.
pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(pages::dashboard))
        .route("/setup", get(setup_page).post(setup))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/account", get(account_page))
        .route("/account/password", post(change_password))
        .route("/pairing", get(pages::pairing))
        .route("/pairing/open", post(pages::pair_open))
        .route("/pairing/close", post(pages::pair_close))
        .route("/pairing/pin", post(pages::pair_pin))
        .route("/devices/{id}", get(pages::device))
        .route("/devices/{id}/remove", post(pages::remove))
        .route("/devices/{id}/label", post(pages::label))
        .route("/updates", get(pages::updates))
        .route("/updates/policy", post(pages::set_policy))
        .route("/updates/approve", post(pages::approve))
        .route("/isolated", get(pages::isolated))
        .route("/security", get(pages::security))
        .route("/events", get(pages::events))
        .route("/privacy", get(pages::privacy))
        .route("/privacy/consent", post(pages::consent))
        .route("/privacy/erase", post(pages::erase))
        .route("/erased", get(erased))
        .route("/live", get(live))
        .route("/static/app.js", get(js))
        .route("/static/app.css", get(css))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::map_response(crate::guard::headers))
        .with_state(web)
}

macro_rules! forms {
    ($($name:ident { $($field:ident : $ty:ty),* $(,)? })*) => {$(
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct $name {
            pub(crate) csrf: String,
            $(pub(crate) $field: $ty,)*
        }
        impl CsrfForm for $name {
            fn csrf(&self) -> &str { &self.csrf }
        }
    )*};
}
pub(crate) use forms;

forms! {
    SetupForm { code: String, user: String, password: String, confirm: String }
    LoginForm { user: String, password: String }
    CsrfOnly {}
    PasswordForm { current: String, password: String, confirm: String }
}

/// A pre-login page: its forms echo the pre-login cookie (set here if the browser has none).
fn public_page(
    web: &Web,
    headers: &axum::http::HeaderMap,
    status: StatusCode,
    title: &str,
    body: impl FnOnce(&str) -> String,
) -> Response {
    let (pre, fresh) = match read_cookie(headers, PRE_COOKIE) {
        Some(p) => (p.to_owned(), false),
        None => (web.token(), true),
    };
    let mut res = (status, Html(page(title, None, false, &body(&pre)))).into_response();
    if fresh {
        res.headers_mut().append(header::SET_COOKIE, cookie(PRE_COOKIE, &pre));
    }
    res
}

fn setup_form(csrf: &str, error: Option<&str>) -> String {
    format!(
        "{err}<p>Welcome. Create the owner account with the one-time setup code the hub printed \
         on its console at first start (also in the file <code>setup-code</code> in its data \
         directory). There is no default password.</p>\
         <form method=\"post\" action=\"/setup\" class=\"card\">{c}\
         <label>Setup code <input name=\"code\" autocomplete=\"off\" required maxlength=\"32\"></label>\
         <label>User name <input name=\"user\" autocomplete=\"username\" required maxlength=\"32\"></label>\
         <label>Password (at least 10 characters) <input type=\"password\" name=\"password\" autocomplete=\"new-password\" required minlength=\"10\" maxlength=\"128\"></label>\
         <label>Repeat it <input type=\"password\" name=\"confirm\" autocomplete=\"new-password\" required maxlength=\"128\"></label>\
         <button>Create the owner account</button></form>",
        err = error.map(|e| notice("error", e)).unwrap_or_default(),
        c = csrf_field(csrf),
    )
}

async fn setup_page(State(web): State<Arc<Web>>, headers: axum::http::HeaderMap) -> Response {
    if !web.lock().vault.needs_setup() {
        return Redirect::to("/login").into_response();
    }
    public_page(&web, &headers, StatusCode::OK, "Set up Hearth", |c| setup_form(c, None))
}

async fn setup(
    State(web): State<Arc<Web>>,
    ClientAddr(ip): ClientAddr,
    headers: axum::http::HeaderMap,
    Post(f): Post<SetupForm>,
) -> Response {
    if f.code.len() > 32
        || f.user.len() > 64
        || f.password.len() > 4 * MAX_PASSWORD
        || f.confirm.len() > 4 * MAX_PASSWORD
    {
        return unprocessable(&web, "field too long");
    }
    let _one_at_a_time = web.account_lock.lock().await;
    if !web.lock().vault.needs_setup() {
        return Redirect::to("/login").into_response();
    }
    let key = format!("setup:{ip}");
    let now = web.now_ms();
    let wait = web.lock().throttle.wait_ms(&key, now);
    if let Some(wait) = wait {
        web.event(WebEvent::LoginThrottled);
        return throttled(&web, &headers, wait, "Set up Hearth", |c| {
            setup_form(c, Some("Too many wrong setup codes."))
        });
    }
    let refuse = |status, text: &str| {
        public_page(&web, &headers, status, "Set up Hearth", |c| setup_form(c, Some(text)))
    };
    if f.password != f.confirm {
        web.event(WebEvent::Malformed);
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, "The two passwords differ.");
    }
    let mut vault = web.lock().vault.clone();
    let cost = web.cost;
    let result = tokio::task::spawn_blocking(move || {
        vault.create_owner(&f.code, &f.user, &f.password, cost).map(|()| vault)
    })
    .await
    .unwrap_or(Err(AuthError::Hash));
    let vault = match result {
        Ok(v) => v,
        Err(AuthError::BadCode) => {
            web.event(WebEvent::SetupCodeRefused);
            web.lock().throttle.fail(&key, now);
            return refuse(StatusCode::FORBIDDEN, &AuthError::BadCode.to_string());
        }
        Err(e) => {
            web.event(WebEvent::Malformed);
            return refuse(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string());
        }
    };
    if let Err(e) = web.api.store_vault(vault.to_bytes()).await {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    }
    if let Err(e) = web.api.setup_done().await {
        tracing::error!(error = %e, "could not remove the used setup code file");
    }
    web.lock().vault = vault;
    web.lock().throttle.succeed(&key);
    tracing::info!("owner account created; the setup code is void");
    start_session(&web, "/")
}

fn start_session(web: &Web, to: &str) -> Response {
    let (token, csrf) = (web.token(), web.token());
    web.lock().sessions.insert(token.clone(), csrf, web.now_ms());
    let mut res = Redirect::to(to).into_response();
    res.headers_mut().append(header::SET_COOKIE, cookie(SESSION_COOKIE, &token));
    res.headers_mut().append(header::SET_COOKIE, cookie(PRE_COOKIE, ""));
    res
}

fn login_form(csrf: &str, error: Option<&str>) -> String {
    format!(
        "{err}<form method=\"post\" action=\"/login\" class=\"card\">{c}\
         <label>User name <input name=\"user\" autocomplete=\"username\" required maxlength=\"32\"></label>\
         <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required maxlength=\"128\"></label>\
         <button>Log in</button></form>",
        err = error.map(|e| notice("error", e)).unwrap_or_default(),
        c = csrf_field(csrf),
    )
}

async fn login_page(State(web): State<Arc<Web>>, headers: axum::http::HeaderMap) -> Response {
    if web.lock().vault.needs_setup() {
        return Redirect::to("/setup").into_response();
    }
    public_page(&web, &headers, StatusCode::OK, "Log in", |c| login_form(c, None))
}

fn throttled(
    web: &Web,
    headers: &axum::http::HeaderMap,
    wait_ms: u64,
    title: &str,
    form: impl FnOnce(&str) -> String,
) -> Response {
    let secs = wait_ms.div_ceil(1000);
    let mut res = public_page(web, headers, StatusCode::TOO_MANY_REQUESTS, title, |c| {
        format!(
            "{}{}",
            notice(
                "error",
                &format!(
                    "Too many failed attempts: wait {secs} s before the next one (the wait doubles with each failure, up to 5 minutes, and always ends)."
                )
            ),
            form(c)
        )
    });
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

async fn login(
    State(web): State<Arc<Web>>,
    ClientAddr(ip): ClientAddr,
    headers: axum::http::HeaderMap,
    Post(f): Post<LoginForm>,
) -> Response {
    if f.user.len() > 64 || f.password.len() > 4 * MAX_PASSWORD {
        return unprocessable(&web, "field too long");
    }
    if web.lock().vault.needs_setup() {
        return Redirect::to("/setup").into_response();
    }
    let now = web.now_ms();
    let (account, addr) = (format!("user:{}", f.user.to_lowercase()), format!("ip:{ip}"));
    let wait = {
        let inner = web.lock();
        inner.throttle.wait_ms(&account, now).max(inner.throttle.wait_ms(&addr, now))
    };
    if let Some(wait) = wait {
        web.event(WebEvent::LoginThrottled);
        return throttled(&web, &headers, wait, "Log in", |c| login_form(c, None));
    }
    let vault = web.lock().vault.clone();
    let ok = tokio::task::spawn_blocking(move || vault.login(&f.user, &f.password))
        .await
        .unwrap_or(false);
    if !ok {
        web.event(WebEvent::LoginFailed);
        {
            let mut inner = web.lock();
            inner.throttle.fail(&account, now);
            inner.throttle.fail(&addr, now);
        }
        return public_page(&web, &headers, StatusCode::UNAUTHORIZED, "Log in", |c| {
            login_form(c, Some("Wrong user name or password."))
        });
    }
    {
        let mut inner = web.lock();
        inner.throttle.succeed(&account);
        inner.throttle.succeed(&addr);
    }
    start_session(&web, "/")
}

async fn logout(State(web): State<Arc<Web>>, owner: Owner, Post(_): Post<CsrfOnly>) -> Response {
    web.lock().sessions.remove(&owner.token);
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut().append(header::SET_COOKIE, cookie(SESSION_COOKIE, ""));
    res
}

fn account_body(owner: &Owner, user: &str, msg: Option<&str>) -> String {
    format!(
        "{msg}<p>Signed in as <strong>{u}</strong>.</p>\
         <h2>Change the password</h2>\
         <form method=\"post\" action=\"/account/password\" class=\"card\">{c}\
         <label>Current password <input type=\"password\" name=\"current\" autocomplete=\"current-password\" required maxlength=\"128\"></label>\
         <label>New password (at least 10 characters) <input type=\"password\" name=\"password\" autocomplete=\"new-password\" required minlength=\"10\" maxlength=\"128\"></label>\
         <label>Repeat it <input type=\"password\" name=\"confirm\" autocomplete=\"new-password\" required maxlength=\"128\"></label>\
         <button>Change the password</button></form>\
         <p class=\"muted\">Changing it ends every other session.</p>",
        msg = msg.unwrap_or_default(),
        u = esc(user),
        c = csrf_field(&owner.csrf),
    )
}

async fn account_page(
    State(web): State<Arc<Web>>,
    owner: Owner,
    axum::extract::Query(q): axum::extract::Query<pages::MsgQuery>,
) -> Response {
    let user = web.lock().vault.owner.as_ref().map(|a| a.user.clone()).unwrap_or_default();
    let msg = q.notice();
    Html(page("Account", Some(&owner.csrf), false, &account_body(&owner, &user, msg.as_deref())))
        .into_response()
}

async fn change_password(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Post(f): Post<PasswordForm>,
) -> Response {
    if f.current.len() > 4 * MAX_PASSWORD
        || f.password.len() > 4 * MAX_PASSWORD
        || f.confirm.len() > 4 * MAX_PASSWORD
    {
        return unprocessable(&web, "field too long");
    }
    let _one_at_a_time = web.account_lock.lock().await;
    let user = web.lock().vault.owner.as_ref().map(|a| a.user.clone()).unwrap_or_default();
    let refuse = |status: StatusCode, text: &str| {
        (
            status,
            Html(page(
                "Account",
                Some(&owner.csrf),
                false,
                &account_body(&owner, &user, Some(&notice("error", text))),
            )),
        )
            .into_response()
    };
    if f.password != f.confirm {
        web.event(WebEvent::Malformed);
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, "The two new passwords differ.");
    }
    let mut vault: Vault = web.lock().vault.clone();
    let cost = web.cost;
    let result = tokio::task::spawn_blocking(move || {
        vault.change_password(&f.current, &f.password, cost).map(|()| vault)
    })
    .await
    .unwrap_or(Err(AuthError::Hash));
    match result {
        Ok(vault) => {
            if let Err(e) = web.api.store_vault(vault.to_bytes()).await {
                return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
            }
            let mut inner = web.lock();
            inner.vault = vault;
            inner.sessions.retain_only(Some(&owner.token));
            drop(inner);
            tracing::info!("owner password changed; other sessions ended");
            Redirect::to("/account?m=password").into_response()
        }
        Err(AuthError::WrongPassword) => {
            web.event(WebEvent::LoginFailed);
            refuse(StatusCode::FORBIDDEN, &AuthError::WrongPassword.to_string())
        }
        Err(e) => {
            web.event(WebEvent::Malformed);
            refuse(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string())
        }
    }
}

/// Shown after an erase (only while the hub waits for setup: it says nothing about anyone's data).
async fn erased(State(web): State<Arc<Web>>) -> Response {
    if !web.lock().vault.needs_setup() {
        return Redirect::to("/login").into_response();
    }
    Html(page(
        "All data erased",
        None,
        false,
        &format!(
            "{}<p>Every device with its keys and readings, the owner account and the settings \
             were deleted. The hub is back at first-run setup: a <strong>new</strong> one-time \
             setup code was printed on the hub's console and written to the file \
             <code>setup-code</code> in its data directory.</p><p><a href=\"/setup\">Set up again</a></p>",
            notice("ok", "Erase complete.")
        ),
    ))
    .into_response()
}

/// Live state for the open page, once a second, while the session lasts.
async fn live(State(web): State<Arc<Web>>, owner: Owner) -> Response {
    let stream =
        futures_util::stream::unfold((web, owner.token, true), |(web, token, first)| async move {
            if !first {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if !web.lock().sessions.valid(&token, web.now_ms()) {
                return None;
            }
            let snapshot = pages::live_snapshot(&web).await;
            let event = Event::default().data(snapshot.to_string());
            Some((Ok::<_, std::convert::Infallible>(event), (web, token, false)))
        });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
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
    (
        StatusCode::NOT_FOUND,
        Html(page(
            "Not found",
            None,
            false,
            "<p>There is no such page. <a href=\"/\">Dashboard</a></p>",
        )),
    )
        .into_response()
}
