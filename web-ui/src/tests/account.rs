//! The owner account: setup with the one-time code, login throttling, device cookies, the hashing budget, password change and log-out.

use super::*;

#[tokio::test]
async fn the_setup_code_creates_the_owner_once_with_a_real_password() {
    let app = app().await;
    assert_eq!(app.get("/login", "").await.location(), "/setup");
    let (cookie, csrf) = app.pre("/setup").await;
    let form = |code: &str, pw: &str, confirm: &str| {
        format!("csrf={csrf}&code={code}&user=owner&password={pw}&confirm={confirm}")
    };
    let r = app
        .post("/setup", &cookie, &form("ABCD-EFGH-JKLN", "blue+tomato+7", "blue+tomato+7"))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("setup code is not valid"));
    assert_eq!(app.total(crate::state::WebEvent::SetupCodeRefused), 1);
    for (pw, confirm) in [
        ("short", "short"),
        ("password123", "password123"),
        ("abcdefghijk", "abcdefghijx"),
        ("abcd-efgh-jklm", "abcd-efgh-jklm"),
    ] {
        let r = app.post("/setup", &cookie, &form(CODE, pw, confirm)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{pw}: {}", r.body);
    }
    assert!(
        app.fake
            .s()
            .vault
            .as_ref()
            .is_some_and(|v| crate::Vault::parse(v).is_some_and(|v| v.needs_setup()))
    );
    // Lower case and without dashes works too.
    let r =
        app.post("/setup", &cookie, &form("abcdefghjklm", "blue+tomato+7", "blue+tomato+7")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/"), "{}", r.body);
    let set = r
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .collect::<Vec<_>>();
    let session = set.iter().find(|c| c.starts_with("__Host-hearth=")).expect("session cookie");
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(session.contains(flag), "{session}");
    }
    assert_eq!(app.fake.s().setup_done, 1);
    let vault = app.fake.s().vault.clone().expect("stored");
    assert!(!String::from_utf8_lossy(&vault).contains("tomato"), "password stored in clear");
    assert!(String::from_utf8_lossy(&vault).contains("$argon2id$"));
    // The code is void now.
    let r =
        app.post("/setup", &cookie, &form(CODE, "another+password+8", "another+password+8")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/login"));
    assert_eq!(app.get("/setup", "").await.location(), "/login");
    let (s, _) = app.session(&r_with_cookie(session)).await;
    assert_eq!(app.get("/", &s).await.status, StatusCode::OK);
}

fn r_with_cookie(set_cookie: &str) -> Res {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(header::SET_COOKIE, set_cookie.parse().expect("header"));
    Res { status: StatusCode::OK, headers, body: String::new() }
}

#[tokio::test]
async fn wrong_passwords_back_off_exponentially_per_account_and_address_and_the_wait_expires() {
    let app = app().await;
    app.owner().await;
    let ip = [192, 0, 2, 7];
    for _ in 0..3 {
        assert_eq!(app.login(ip, "owner", "wrong password").await.status, StatusCode::UNAUTHORIZED);
    }
    // Backing off: even the right password is not checked.
    let r = app.login(ip, "owner", PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers[header::RETRY_AFTER], "1");
    // Per account: another address is refused too.
    assert_eq!(
        app.login([192, 0, 2, 8], "owner", PASSWORD).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    app.advance(1_000);
    assert_eq!(app.login(ip, "owner", "wrong again!").await.status, StatusCode::UNAUTHORIZED);
    let r = app.login(ip, "owner", PASSWORD).await;
    assert_eq!(
        (r.status, r.headers[header::RETRY_AFTER].to_str().ok()),
        (StatusCode::TOO_MANY_REQUESTS, Some("2"))
    );
    app.advance(2_000);
    let r = app.login(ip, "owner", PASSWORD).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/"), "the back-off expired");
    assert_eq!(app.total(crate::state::WebEvent::LoginFailed), 4);
    assert_eq!(app.total(crate::state::WebEvent::LoginThrottled), 3);
    // Per address: guessing user names from one address backs off that address.
    let other = [198, 51, 100, 1];
    for user in ["a", "b", "c"] {
        assert_eq!(app.login(other, user, "whatever12").await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(app.login(other, "d", "whatever12").await.status, StatusCode::TOO_MANY_REQUESTS);
    let ok = app.login(ip, "owner", PASSWORD).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "others are not locked out");
    // The events page flags the spike of failed logins.
    let (s, _) = app.session(&ok).await;
    let events = app.get("/events", &s).await;
    assert!(events.body.contains("anomaly flag"), "{}", events.body);
    assert!(
        events.body.contains("class=\"anomaly\" data-event=\"web_login_failed\""),
        "{}",
        events.body
    );
    // Never permanent: after many failures the wait is capped at five minutes.
    for _ in 0..40 {
        app.login(other, "e", "whatever12").await;
        app.advance(policy().max_ms);
    }
    assert_eq!(app.login(other, "owner", PASSWORD).await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn password_change_logout_and_the_live_stream() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    let (other, _) = app.session(&app.login([10, 0, 0, 2], "owner", PASSWORD).await).await;
    let form = |cur: &str, new: &str, confirm: &str| {
        format!("csrf={csrf}&current={cur}&password={new}&confirm={confirm}")
    };
    assert_eq!(
        app.post(
            "/account/password",
            &s,
            &form("nope+nope+nope", "red+kettle+42", "red+kettle+42")
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.post("/account/password", &s, &form("blue+tomato+7", "1234567890", "1234567890"))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.post("/account/password", &s, &form("blue+tomato+7", "red+kettle+42", "red+kettle+43"))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let r = app
        .post("/account/password", &s, &form("blue+tomato+7", "red+kettle+42", "red+kettle+42"))
        .await;
    assert_eq!(r.location(), "/account?m=password");
    assert!(app.get("/account?m=password", &s).await.body.contains("Password changed"));
    assert_eq!(app.get("/", &other).await.location(), "/login", "other sessions ended");
    assert_eq!(app.login([10, 0, 0, 3], "owner", PASSWORD).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.login([10, 0, 0, 3], "owner", "red kettle 42").await.status,
        StatusCode::SEE_OTHER
    );

    // The live stream: an event with every device's reading, availability and progress.
    let res = app
        .router
        .clone()
        .oneshot(Request::get("/live").header(header::COOKIE, &s).body(Body::empty()).expect("req"))
        .await
        .expect("live");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = res.into_body();
    let frame = body.frame().await.expect("a frame").expect("ok").into_data().expect("data");
    let text = String::from_utf8_lossy(&frame);
    let json: serde_json::Value =
        serde_json::from_str(text.trim().strip_prefix("data: ").expect("data line")).expect("json");
    assert_eq!(json["ids"], "01,02");
    assert_eq!(json["devices"]["01"]["reading"], "temperature 21.5 °C");
    assert_eq!(json["devices"]["02"]["availability"], "isolated");
    assert_eq!(json["progress"]["01"]["pct"], 0);

    // Idle sessions end; log-out ends one at once.
    let r = app.post("/logout", &s, &format!("csrf={csrf}")).await;
    assert_eq!(r.location(), "/login");
    assert_eq!(app.get("/", &s).await.location(), "/login");
    let (s2, _) = app.session(&app.login([10, 0, 0, 3], "owner", "red kettle 42").await).await;
    app.advance(crate::auth::SESSION_IDLE_MS);
    assert_eq!(app.get("/", &s2).await.location(), "/login");
}

/// The device cookie an answer set, as a request's `Cookie` pair.
fn device_of(r: &Res) -> String {
    format!("{DEVICE_COOKIE}={}", r.cookie(DEVICE_COOKIE).expect("a device cookie"))
}

#[tokio::test]
async fn fifty_concurrent_wrong_passwords_are_checked_only_free_failures_times() {
    let app = Arc::new(app().await);
    app.owner().await;
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..50u8 {
        let app = app.clone();
        guesses.spawn(async move { app.login([203, 0, 113, i], "owner", "wrong password!").await });
    }
    let mut statuses = Vec::new();
    while let Some(r) = guesses.join_next().await {
        statuses.push(r.expect("task").status);
    }
    let failed = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    let held = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((failed, held), (3, 47), "the slot is taken before the hash");
    assert_eq!(app.total(WebEvent::LoginFailed), 3);
    assert_eq!(app.total(WebEvent::LoginThrottled), 47);
    assert_eq!(app.web.budget.stats().done, 3 + 1, "three guesses and the setup were hashed");
}

#[tokio::test]
async fn a_login_over_the_hashing_budget_is_shed_with_503_and_costs_no_failure() {
    let limits = Limits { slots: 1, queue: 0, max_wait: std::time::Duration::from_secs(30) };
    let budget = HashBudget::new(limits, CHEAP).expect("budget");
    let app = app_with(Arc::new(Fake::default()), budget.clone()).await;
    app.owner().await;
    // Someone else holds the only slot.
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let holder = tokio::spawn({
        let budget = budget.clone();
        async move { budget.run(move |_| gate.recv().is_ok()).await }
    });
    while budget.stats().running == 0 {
        tokio::task::yield_now().await;
    }
    let r = app.login([192, 0, 2, 1], "owner", "wrong password!").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers[header::RETRY_AFTER], "2");
    assert!(r.body.contains("busy") && r.body.contains("name=\"password\""), "{}", r.body);
    assert_eq!((app.total(WebEvent::LoginShed), app.total(WebEvent::LoginFailed)), (1, 0));
    release.send(()).expect("release");
    assert_eq!(holder.await.expect("task"), Ok(true));
    // The shed attempt gave its failure slot back: three free failures remain.
    for _ in 0..3 {
        assert_eq!(
            app.login([192, 0, 2, 1], "owner", "wrong password!").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.login([192, 0, 2, 1], "owner", PASSWORD).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_device_cookie_logs_the_owner_in_through_a_back_off_others_caused() {
    let app = app().await;
    let (cookie, csrf) = app.pre("/setup").await;
    let body =
        format!("csrf={csrf}&code={CODE}&user=owner&password=blue+tomato+7&confirm=blue+tomato+7");
    let made = app.post("/setup", &cookie, &body).await;
    let set = made
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(DEVICE_COOKIE))
        .expect("setup sets a device cookie")
        .to_owned();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(flag), "{set}");
    }
    let device = device_of(&made);
    // An attacker who knows the name backs the account off from rotating addresses.
    for i in 0..20u8 {
        let _ = app.login([198, 18, 0, i], "owner", "guess guess guess").await;
    }
    assert_eq!(
        app.login([10, 1, 1, 1], "owner", PASSWORD).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The owner's browser, first try, right password: in (and its cookie is renewed).
    let r = app.login_with([10, 1, 1, 1], "owner", PASSWORD, &device).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/"), "{}", r.body);
    assert_eq!(device_of(&r), device, "the same device id, renewed");
    // A forged or altered cookie is worth nothing.
    let mut forged = device.clone();
    let last = forged.pop().map_or('0', |c| if c == '0' { '1' } else { '0' });
    forged.push(last);
    assert_eq!(
        app.login_with([10, 1, 1, 1], "owner", PASSWORD, &forged).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The cookie has its own failure budget: a thief who has it gets three guesses, then it
    // is revoked and the back-off applies to it too.
    for _ in 0..3 {
        let r = app.login_with([10, 9, 9, 9], "owner", "thief guessing", &device).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        app.login_with([10, 1, 1, 1], "owner", PASSWORD, &device).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "revoked"
    );
    // Once the back-off ends, the owner logs in and gets a new device cookie.
    app.advance(policy().max_ms);
    let r = app.login_with([10, 1, 1, 1], "owner", PASSWORD, &device).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let renewed = device_of(&r);
    assert_ne!(renewed, device);
    // A password change revokes every device cookie and gives this browser a new one.
    let (s, csrf) = app.session(&r).await;
    let form =
        format!("csrf={csrf}&current=blue+tomato+7&password=red+kettle+42&confirm=red+kettle+42");
    let changed = app
        .send(
            App::post_req("/account/password", &format!("{s}; {renewed}"), "")
                .body(Body::from(form))
                .expect("req"),
        )
        .await;
    assert_eq!(changed.location(), "/account?m=password");
    let after = device_of(&changed);
    for i in 0..20u8 {
        let _ = app.login([198, 18, 1, i], "owner", "guess guess guess").await;
    }
    assert_eq!(
        app.login_with([10, 1, 1, 1], "owner", "red kettle 42", &renewed).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the old cookie died with the old password"
    );
    assert_eq!(
        app.login_with([10, 1, 1, 1], "owner", "red kettle 42", &after).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn back_offs_and_device_cookies_survive_a_restart() {
    let fake = Arc::new(Fake::default());
    let app = app_with(fake.clone(), budget()).await;
    let (cookie, csrf) = app.pre("/setup").await;
    let body =
        format!("csrf={csrf}&code={CODE}&user=owner&password=blue+tomato+7&confirm=blue+tomato+7");
    let device = device_of(&app.post("/setup", &cookie, &body).await);
    for i in 0..8u8 {
        let _ = app.login([198, 18, 2, i], "owner", "guess guess guess").await;
    }
    let stored = fake.s().logins_stored;
    assert!(stored >= 4, "every failure was written before it was answered: {stored}");
    drop(app);
    // The hub restarts: the back-off is still there, and so is the owner's device.
    let app = app_with(fake.clone(), budget()).await;
    let r = app.login([10, 2, 2, 2], "owner", PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "a restart does not reset a back-off");
    let r = app.login_with([10, 2, 2, 2], "owner", PASSWORD, &device).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    // Erasing everything forgets the account's records and devices.
    let (s, csrf) = app.session(&r).await;
    let r = app.post("/privacy/erase", &s, &format!("csrf={csrf}&confirm=ERASE")).await;
    assert!(r.status == StatusCode::OK && r.body.contains("Erase complete."));
    let logins: serde_json::Value =
        serde_json::from_slice(fake.s().logins.as_deref().unwrap_or(b"{}")).expect("json");
    assert_eq!(logins["accounts"], serde_json::json!({}), "{logins}");
    assert_eq!(logins["trusted"], serde_json::json!({}), "{logins}");
}
