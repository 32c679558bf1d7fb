//! The owner account: first-run setup with the one-time code (EN 303 645 5.1-1), login with
//! throttling (5.1-5: a failure slot taken before the hash, device cookies past others'
//! back-offs) under the hub's hashing budget (excess shed with 503), log-out, and the account
//! page with the password change (5.1-4).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};

use admission::password::{MAX_CHARS, MAX_LOGIN_BYTES};
use admission::{Attempt, Claim, Refused};

use crate::auth::{AuthError, DEVICE_ID_HEX, Vault, password_problem, valid_user};
use crate::guard::{
    ClientAddr, Owner, PRE_COOKIE, Post, SESSION_COOKIE, cookie, device_cookie, read_cookie,
    read_device_cookie, unprocessable,
};
use crate::html::{csrf_field, notice, page};
use crate::pages::{CsrfOnly, MsgQuery, forms};
use crate::state::{Web, WebEvent};

forms! {
    SetupForm { code: String, user: String, password: String, confirm: String }
    LoginForm { user: String, password: String }
    PasswordForm { current: String, password: String, confirm: String }
}

/// A pre-login page: its forms echo the pre-login cookie (set here if the browser has none).
fn public_page(
    web: &Web,
    headers: &HeaderMap,
    status: StatusCode,
    title: &str,
    body: impl FnOnce(&str) -> Markup,
) -> Response {
    let (pre, fresh) = match read_cookie(headers, PRE_COOKIE) {
        Some(p) => (p.to_owned(), false),
        None => (web.token(), true),
    };
    let mut res = (status, Html(page(title, None, false, body(&pre)))).into_response();
    if fresh {
        res.headers_mut().append(header::SET_COOKIE, cookie(PRE_COOKIE, &pre));
    }
    res
}

fn setup_form(csrf: &str, error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error { (notice("error", e)) }
        p {
            "Welcome. Create the owner account with the one-time setup code: it is in the file "
            code { "setup-code" } " in the hub's data directory, readable by the hub's user only \
             (the hub prints where at first start). There is no default password."
        }
        form.card method="post" action="/setup" {
            (csrf_field(csrf))
            label { "Setup code " input name="code" autocomplete="off" required maxlength="32"; }
            label { "User name " input name="user" autocomplete="username" required maxlength="32"; }
            label { "Password (at least 12 characters) "
                input type="password" name="password" autocomplete="new-password" required
                    minlength="12" maxlength="128"; }
            label { "Repeat it "
                input type="password" name="confirm" autocomplete="new-password" required
                    maxlength="128"; }
            button { "Create the owner account" }
        }
    }
}

pub(crate) async fn setup_page(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if !web.lock().vault.needs_setup() {
        return Redirect::to("/login").into_response();
    }
    public_page(&web, &headers, StatusCode::OK, "Set up Hearth", |c| setup_form(c, None))
}

pub(crate) async fn setup(
    State(web): State<Arc<Web>>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
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
fn device_for(web: &Web, headers: &HeaderMap, user: &str) -> Option<String> {
    let value = read_device_cookie(headers)?;
    let (named, id) = web.lock().vault.device_id(value)?;
    (named == user).then_some(id)
}

/// Hashing was at its limit: the attempt gives its failure slot back, is counted, and the
/// client is asked to come back (503 with Retry-After).
fn shed(
    web: &Web,
    headers: &HeaderMap,
    attempt: Attempt,
    refused: Refused,
    title: &str,
    form: impl FnOnce(&str) -> Markup,
) -> Response {
    web.lock().throttle.cancel(attempt);
    if refused == Refused::Shed {
        web.event(WebEvent::LoginShed);
    }
    let mut res = public_page(web, headers, StatusCode::SERVICE_UNAVAILABLE, title, |c| {
        html! {
            (notice(
                "error",
                "The hub is busy checking other passwords; nothing was checked. Try again in a few seconds.",
            ))
            (form(c))
        }
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

fn login_form(csrf: &str, error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error { (notice("error", e)) }
        form.card method="post" action="/login" {
            (csrf_field(csrf))
            label { "User name " input name="user" autocomplete="username" required maxlength="32"; }
            label { "Password "
                input type="password" name="password" autocomplete="current-password" required
                    maxlength="128"; }
            button { "Log in" }
        }
    }
}

pub(crate) async fn login_page(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if web.lock().vault.needs_setup() {
        return Redirect::to("/setup").into_response();
    }
    public_page(&web, &headers, StatusCode::OK, "Log in", |c| login_form(c, None))
}

fn throttled(
    web: &Web,
    headers: &HeaderMap,
    wait_ms: u64,
    title: &str,
    form: impl FnOnce(&str) -> Markup,
) -> Response {
    let secs = wait_ms.div_ceil(1000);
    let max_min = web.lock().throttle.policy().max_ms.div_ceil(60_000);
    let mut res = public_page(web, headers, StatusCode::TOO_MANY_REQUESTS, title, |c| {
        html! {
            (notice(
                "error",
                &format!(
                    "Too many failed attempts: wait {secs} s before the next one (the wait doubles with each failure, up to {max_min} minutes, and always ends; a browser that logged in here before is not held back)."
                ),
            ))
            (form(c))
        }
    });
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

pub(crate) async fn login(
    State(web): State<Arc<Web>>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
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

pub(crate) async fn logout(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Post(_): Post<CsrfOnly>,
) -> Response {
    web.lock().sessions.remove(&owner.token);
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut().append(header::SET_COOKIE, cookie(SESSION_COOKIE, ""));
    res
}

fn account_body(owner: &Owner, user: &str, msg: Option<Markup>) -> Markup {
    html! {
        @if let Some(m) = msg { (m) }
        p { "Signed in as " strong { (user) } "." }
        h2 { "Change the password" }
        form.card method="post" action="/account/password" {
            (csrf_field(&owner.csrf))
            label { "Current password "
                input type="password" name="current" autocomplete="current-password" required
                    maxlength="128"; }
            label { "New password (at least 12 characters) "
                input type="password" name="password" autocomplete="new-password" required
                    minlength="12" maxlength="128"; }
            label { "Repeat it "
                input type="password" name="confirm" autocomplete="new-password" required
                    maxlength="128"; }
            button { "Change the password" }
        }
        p.muted { "Changing it ends every other session." }
    }
}

pub(crate) async fn account_page(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Query(q): Query<MsgQuery>,
) -> Response {
    let user = web.lock().vault.owner.as_ref().map(|a| a.user.clone()).unwrap_or_default();
    Html(page("Account", Some(&owner.csrf), false, account_body(&owner, &user, q.notice())))
        .into_response()
}

pub(crate) async fn change_password(
    State(web): State<Arc<Web>>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
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
                account_body(&owner, &user, Some(notice("error", text))),
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
