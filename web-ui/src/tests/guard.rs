//! Nothing before login, the security headers, CSRF and same-origin checks, and input limits.

use super::*;

#[tokio::test]
async fn nothing_is_served_before_login_and_every_answer_has_the_security_headers() {
    let app = app().await;
    for path in PAGES {
        let r = app.get(path, "").await;
        assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/setup"), "{path}");
        assert!(!r.body.contains(MODEL), "{path} leaks");
    }
    app.owner().await;
    for path in PAGES {
        let r = app
            .get(
                path,
                "__Host-hearth=ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            )
            .await;
        assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/login"), "{path}");
        assert!(r.body.is_empty());
    }
    for path in POSTS {
        let r = app.post(path, "", "csrf=x").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(!r.body.contains(MODEL));
    }
    let live = app.get("/live", "").await;
    assert_eq!(live.status, StatusCode::UNAUTHORIZED);
    let login = app.get("/login", "").await;
    for word in [MODEL, "version", "firmware", env!("CARGO_PKG_VERSION")] {
        assert!(
            !login.body.to_lowercase().contains(&word.to_lowercase()),
            "login page shows {word}"
        );
    }
    for r in [&live, &login] {
        let h = |k: &str| r.headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        assert_eq!(h("content-security-policy"), crate::guard::CSP);
        assert!(h("content-security-policy").contains("frame-ancestors 'none'"));
        assert!(h("strict-transport-security").starts_with("max-age="));
        assert_eq!(h("x-content-type-options"), "nosniff");
        assert_eq!(h("referrer-policy"), "no-referrer");
    }
    assert!(
        !login.body.contains("<script>") && !login.body.contains("style=\""),
        "no inline script or style"
    );
    let js = app.get("/static/app.js", "").await;
    assert_eq!(js.status, StatusCode::OK);
    assert_eq!(js.headers[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    assert!(js.body.contains("EventSource"));
    let css = app.get("/static/app.css", "").await;
    assert_eq!(css.headers[header::CONTENT_TYPE], "text/css; charset=utf-8");
    assert!(app.total(crate::state::WebEvent::Unauthenticated) >= 20);
}

#[tokio::test]
async fn state_changes_need_the_session_token_and_the_same_origin() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    let r = app.post("/pairing/open", &s, "seconds=120").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "a missing token field is malformed");
    let r = app.post("/pairing/open", &s, &format!("csrf={}&seconds=120", "0".repeat(64))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(app.total(crate::state::WebEvent::CsrfRefused), 1);
    // Another session's token does not do.
    let (_, csrf2) = app.session(&app.login([10, 0, 0, 1], "owner", PASSWORD).await).await;
    assert_ne!(csrf, csrf2);
    assert_eq!(
        app.post("/pairing/open", &s, &format!("csrf={csrf2}&seconds=120")).await.status,
        StatusCode::FORBIDDEN
    );
    let body = format!("csrf={csrf}&seconds=120");
    let refused: [&[(&str, &str)]; 5] = [
        &[("sec-fetch-site", "cross-site")],
        &[("sec-fetch-site", "same-site")],
        &[("sec-fetch-site", "none")],
        &[("origin", "https://evil.example")],
        &[("origin", "https://hub.local:8444")],
    ];
    for headers in refused {
        let mut req =
            App::post_req("/pairing/open", &s, &body).body(Body::from(body.clone())).expect("req");
        for (k, v) in headers {
            req.headers_mut().insert(*k, v.parse().expect("value"));
        }
        let r = app.send(req).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    // `Origin: null` (sent under no-referrer) passes only with Sec-Fetch-Site: same-origin.
    let mut req =
        App::post_req("/pairing/open", &s, &body).body(Body::from(body.clone())).expect("req");
    req.headers_mut().insert("origin", "null".parse().expect("value"));
    req.headers_mut().remove("sec-fetch-site");
    assert_eq!(app.send(req).await.status, StatusCode::FORBIDDEN, "null origin alone");
    assert_eq!(app.total(crate::state::WebEvent::CrossSite), 6);
    assert!(!app.fake.s().pairing.open, "nothing refused took effect");
    // Login forms need the pre-login token too.
    let r = app.post("/login", "", "csrf=abc&user=owner&password=blue+tomato+7").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let mut req =
        App::post_req("/pairing/open", &s, &body).body(Body::from(body.clone())).expect("req");
    req.headers_mut().insert("origin", "null".parse().expect("value"));
    let r = app.send(req).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/pairing?m=opened"));
    assert!(app.fake.s().pairing.open);
}

#[tokio::test]
async fn oversized_and_malformed_input_is_refused_and_counted() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    use crate::state::WebEvent::{Malformed, TooLarge};
    let big = format!("csrf={csrf}&pin={}&serial=", "1".repeat(crate::guard::BODY_LIMIT));
    assert_eq!(app.post("/pairing/pin", &s, &big).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.total(TooLarge), 1);
    let before = app.total(Malformed);
    let cases = [
        (
            "/updates/approve",
            format!("csrf={csrf}&model=m&version=two"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("/updates/approve", format!("csrf={csrf}&model=m"), StatusCode::UNPROCESSABLE_ENTITY),
        (
            "/updates/approve",
            format!("csrf={csrf}&model=m&version=2&extra=1"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/pairing/pin",
            format!("csrf={csrf}&pin=12a45&serial=&replaces="),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/pairing/pin",
            format!("csrf={csrf}&pin=123&serial=&replaces="),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("/pairing/open", format!("csrf={csrf}&seconds=999999"), StatusCode::UNPROCESSABLE_ENTITY),
        (
            "/updates/policy",
            format!("csrf={csrf}&mode=sometimes&days="),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/updates/policy",
            format!("csrf={csrf}&mode=postponed&days=900"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/privacy/consent",
            format!("csrf={csrf}&consent=maybe"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("/devices/zz/remove", format!("csrf={csrf}"), StatusCode::BAD_REQUEST),
        (
            "/pairing/pin",
            format!("csrf={csrf}&pin=12345&serial=&replaces=../x"),
            StatusCode::BAD_REQUEST,
        ),
        ("/devices/01/label", format!("csrf={csrf}&name=&room="), StatusCode::UNPROCESSABLE_ENTITY),
        (
            "/devices/01/label",
            format!("csrf={csrf}&name={}&room=", "n".repeat(65)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (path, body, status) in &cases {
        let r = app.post(path, &s, body).await;
        assert_eq!(r.status, *status, "{path} {body}: {}", r.body);
    }
    let r = app.get("/devices/not-hex", &s).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let mut req = Request::post("/privacy/consent")
        .header(header::COOKIE, &s)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .expect("req");
    req.headers_mut().insert(header::HOST, "h".parse().expect("h"));
    assert_eq!(app.send(req).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(app.total(Malformed), before + cases.len() as u64 + 2);
    assert!(app.fake.s().pins.is_empty() && app.fake.s().approved.is_empty());
}
