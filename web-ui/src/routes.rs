//! The router: first-run setup with the one-time code (EN 303 645 5.1-1), login with throttling
//! (5.1-5: a failure slot taken before the hash, device cookies past others' back-offs) under the
//! hub's hashing budget (excess shed with 503), log-out, password change (5.1-4), static assets,
//! and the live-data stream (SSE); the owner's pages are in [`crate::pages`].

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

use admission::password::{MAX_CHARS, MAX_LOGIN_BYTES};
use admission::{Attempt, Claim, Refused};

use crate::auth::{AuthError, DEVICE_ID_HEX, Vault, password_problem, valid_user};
use crate::guard::{
    BODY_LIMIT, ClientAddr, CsrfForm, Owner, PRE_COOKIE, Post, SESSION_COOKIE, cookie,
    device_cookie, read_cookie, read_device_cookie, unprocessable,
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
         <label>Password (at least 12 characters) <input type=\"password\" name=\"password\" autocomplete=\"new-password\" required minlength=\"12\" maxlength=\"128\"></label>\
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
        || f.password.len() > 4 * MAX_CHARS
        || f.confirm.len() > 4 * MAX_CHARS
    {
        return unprocessable(&web, "field too long");
    }
    let _one_at_a_time = web.account_lock.lock().await;
    if !web.lock().vault.needs_setup() {
        return Redirect::to("/login").into_response();
    }
    let refuse = |status, text: &str| {
        public_page(&web, &headers, status, "Set up Hearth", |c| setup_form(c, Some(text)))
    };
    // What needs no hash is refused before any: the code is checked only for an acceptable
    // account.
    let problem = if f.password != f.confirm {
        Some("The two passwords differ.".to_owned())
    } else if !valid_user(&f.user) {
        Some(AuthError::BadUser.to_string())
    } else {
        password_problem(&f.password, &f.user, Some(&f.code))
            .map(|why| AuthError::WeakPassword(why).to_string())
    };
    if let Some(problem) = problem {
        web.event(WebEvent::Malformed);
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, &problem);
    }
    // Wrong codes back the address off (the code has 60 bits: the throttle guards the hashing,
    // not the code).
    let now = web.now_ms();
    let admitted = web.lock().throttle.admit(now, Claim::Nobody, ip, None);
    let attempt = match admitted {
        Ok(a) => a,
        Err(b) => {
            web.event(WebEvent::LoginThrottled);
            return throttled(&web, &headers, b.wait_ms, "Set up Hearth", |c| {
                setup_form(c, Some("Too many wrong setup codes."))
            });
        }
    };
    let mut vault = web.lock().vault.clone();
    let user = f.user.clone();
    let created = web
        .budget
        .run(move |h| vault.create_owner(&f.code, &f.user, &f.password, h).map(|()| vault))
        .await;
    let vault = match created {
        Ok(Ok(v)) => v,
        Ok(Err(AuthError::BadCode)) => {
            web.lock().throttle.fail(attempt, now);
            web.event(WebEvent::SetupCodeRefused);
            return refuse(StatusCode::FORBIDDEN, &AuthError::BadCode.to_string());
        }
        Ok(Err(e)) => {
            web.lock().throttle.cancel(attempt);
            web.event(WebEvent::Malformed);
            return refuse(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string());
        }
        Err(refused) => {
            return shed(&web, &headers, attempt, refused, "Set up Hearth", |c| {
                setup_form(c, None)
            });
        }
    };
    if let Err(e) = web.api.store_vault(vault.to_bytes()).await {
        web.lock().throttle.cancel(attempt);
        return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    }
    if let Err(e) = web.api.setup_done().await {
        tracing::error!(error = %e, "could not remove the used setup code file");
    }
    web.set_vault(vault);
    web.lock().throttle.succeed(attempt, now);
    tracing::info!("owner account created; the setup code is void");
    let mut res = start_session(&web, "/");
    trust_device(&web, &user, None, now, &mut res).await;
    res
}

/// Remembers this browser as the owner's (`known`: the id of its valid device cookie) and sets
/// its device cookie; saves the throttle's records.
async fn trust_device(web: &Web, user: &str, known: Option<String>, now: u64, res: &mut Response) {
    let id = known.unwrap_or_else(|| web.token()[..DEVICE_ID_HEX].to_owned());
    let value = {
        let mut inner = web.lock();
        let trusted = inner.throttle.trust(user, &id, now);
        trusted.then(|| inner.vault.device_cookie(&id)).flatten()
    };
    web.save_logins().await;
    if let Some(v) = value {
        res.headers_mut().append(header::SET_COOKIE, device_cookie(&v));
    }
}

/// The id of the request's device cookie if it is valid for `user`.
fn device_for(web: &Web, headers: &axum::http::HeaderMap, user: &str) -> Option<String> {
    let value = read_device_cookie(headers)?;
    let (named, id) = web.lock().vault.device_id(value)?;
    (named == user).then_some(id)
}

/// Hashing was at its limit: the attempt gives its failure slot back, is counted, and the
/// client is asked to come back (503 with Retry-After).
fn shed(
    web: &Web,
    headers: &axum::http::HeaderMap,
    attempt: Attempt,
    refused: Refused,
    title: &str,
    form: impl FnOnce(&str) -> String,
) -> Response {
    web.lock().throttle.cancel(attempt);
    if refused == Refused::Shed {
        web.event(WebEvent::LoginShed);
    }
    let mut res = public_page(web, headers, StatusCode::SERVICE_UNAVAILABLE, title, |c| {
        format!(
            "{}{}",
            notice(
                "error",
                "The hub is busy checking other passwords; nothing was checked. Try again in a few seconds."
            ),
            form(c)
        )
    });
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    res
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
    let max_min = web.lock().throttle.policy().max_ms.div_ceil(60_000);
    let mut res = public_page(web, headers, StatusCode::TOO_MANY_REQUESTS, title, |c| {
        format!(
            "{}{}",
            notice(
                "error",
                &format!(
                    "Too many failed attempts: wait {secs} s before the next one (the wait doubles with each failure, up to {max_min} minutes, and always ends; a browser that logged in here before is not held back)."
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
    if f.user.len() > 64 || f.password.len() > MAX_LOGIN_BYTES {
        return unprocessable(&web, "field too long");
    }
    if web.lock().vault.needs_setup() {
        return Redirect::to("/setup").into_response();
    }
    let now = web.now_ms();
    let device = device_for(&web, &headers, &f.user);
    // The failure slot is taken before the hash: concurrent guesses cannot outrun the back-off.
    let admitted = web.lock().throttle.admit(now, Claim::Name(&f.user), ip, device.as_deref());
    let attempt = match admitted {
        Ok(a) => a,
        Err(b) => {
            web.event(WebEvent::LoginThrottled);
            return throttled(&web, &headers, b.wait_ms, "Log in", |c| login_form(c, None));
        }
    };
    let vault = web.lock().vault.clone();
    let user = f.user.clone();
    let checked = web.budget.run(move |h| vault.login(&f.user, &f.password, h)).await;
    let ok = match checked {
        Ok(ok) => ok,
        Err(refused) => {
            return shed(&web, &headers, attempt, refused, "Log in", |c| login_form(c, None));
        }
    };
    if !ok {
        web.lock().throttle.fail(attempt, now);
        web.event(WebEvent::LoginFailed);
        web.save_logins().await;
        return public_page(&web, &headers, StatusCode::UNAUTHORIZED, "Log in", |c| {
            login_form(c, Some("Wrong user name or password."))
        });
    }
    let known = device.filter(|_| attempt.trusted());
    web.lock().throttle.succeed(attempt, now);
    let mut res = start_session(&web, "/");
    trust_device(&web, &user, known, now, &mut res).await;
    res
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
         <label>New password (at least 12 characters) <input type=\"password\" name=\"password\" autocomplete=\"new-password\" required minlength=\"12\" maxlength=\"128\"></label>\
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
    ClientAddr(ip): ClientAddr,
    headers: axum::http::HeaderMap,
    owner: Owner,
    Post(f): Post<PasswordForm>,
) -> Response {
    if f.current.len() > MAX_LOGIN_BYTES
        || f.password.len() > 4 * MAX_CHARS
        || f.confirm.len() > 4 * MAX_CHARS
    {
        return unprocessable(&web, "field too long");
    }
    let _one_at_a_time = web.account_lock.lock().await;
    let user = web.lock().vault.owner_name().map(str::to_owned).unwrap_or_default();
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
    let problem = if f.password != f.confirm {
        Some("The two new passwords differ.".to_owned())
    } else if f.password == f.current {
        Some(AuthError::WeakPassword("the new password must differ from the old one").to_string())
    } else {
        password_problem(&f.password, &user, None)
            .map(|why| AuthError::WeakPassword(why).to_string())
    };
    if let Some(problem) = problem {
        web.event(WebEvent::Malformed);
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, &problem);
    }
    // The current password is checked like a login (a stolen session cannot guess it faster).
    let now = web.now_ms();
    let device = device_for(&web, &headers, &user);
    let admitted = web.lock().throttle.admit(now, Claim::Name(&user), ip, device.as_deref());
    let attempt = match admitted {
        Ok(a) => a,
        Err(b) => {
            web.event(WebEvent::LoginThrottled);
            let secs = b.wait_ms.div_ceil(1000);
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Too many failed attempts: wait {secs} s before the next one."),
            );
        }
    };
    let mut vault: Vault = web.lock().vault.clone();
    let result = web
        .budget
        .run(move |h| vault.change_password(&f.current, &f.password, h).map(|()| vault))
        .await;
    let vault = match result {
        Ok(Ok(vault)) => vault,
        Ok(Err(AuthError::WrongPassword)) => {
            web.lock().throttle.fail(attempt, now);
            web.event(WebEvent::LoginFailed);
            web.save_logins().await;
            return refuse(StatusCode::FORBIDDEN, &AuthError::WrongPassword.to_string());
        }
        Ok(Err(e)) => {
            web.lock().throttle.cancel(attempt);
            web.event(WebEvent::Malformed);
            return refuse(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string());
        }
        Err(refused) => {
            web.lock().throttle.cancel(attempt);
            if refused == Refused::Shed {
                web.event(WebEvent::LoginShed);
            }
            return refuse(StatusCode::SERVICE_UNAVAILABLE, &refused.to_string());
        }
    };
    if let Err(e) = web.api.store_vault(vault.to_bytes()).await {
        web.lock().throttle.cancel(attempt);
        return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    }
    {
        let mut inner = web.lock();
        inner.throttle.succeed(attempt, now);
        // Every device cookie dies with the old password (their MAC key changed too).
        inner.throttle.revoke_all(&user);
        inner.vault = vault;
        inner.sessions.retain_only(Some(&owner.token));
    }
    tracing::info!("owner password changed; other sessions and device cookies ended");
    let mut res = Redirect::to("/account?m=password").into_response();
    trust_device(&web, &user, None, now, &mut res).await;
    res
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
