//! The dashboard, a device's page and the isolated devices, from the fake hub's state.

use super::*;

#[tokio::test]
async fn dashboard_device_and_isolated_pages_show_the_hubs_state() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    let dash = app.get("/", &s).await;
    assert_eq!(dash.status, StatusCode::OK);
    for want in [
        "data-ids=\"01,02\"",
        "data-reading=\"01\">temperature 21.5 °C",
        "data-chart=\"temperature\"",
        "<svg class=\"chart\"",
        "<polyline",
        "badge isolated",
        "data-live=\"1\"",
    ] {
        assert!(dash.body.contains(want), "dashboard lacks {want}");
    }
    let d = app.get("/devices/01", &s).await;
    for want in [
        MODEL,
        "SN-01",
        "version 1",
        "until 2100-01-01",
        "temperature, humidity",
        "offered",
        "Remove this device",
    ] {
        assert!(d.body.contains(want), "device page lacks {want}");
    }
    assert_eq!(app.get("/devices/0f", &s).await.status, StatusCode::NOT_FOUND);
    let iso = app.get("/isolated", &s).await;
    assert!(
        iso.body.contains("data-isolated=\"02\"")
            && iso.body.contains("vulnerable (advisory HA-1)"),
        "{}",
        iso.body
    );
    assert!(iso.body.contains("Replace it with a hearth-thermo-2."));
    assert!(!iso.body.contains("data-isolated=\"01\""));
    let r = app.post("/devices/01/remove", &s, &format!("csrf={csrf}&confirm=yes")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/?m=removed"));
    assert_eq!(
        app.post("/devices/01/remove", &s, &format!("csrf={csrf}&confirm=yes")).await.status,
        StatusCode::NOT_FOUND
    );
    let dash = app.get("/?m=removed", &s).await;
    assert!(!dash.body.contains("data-reading=\"01\""));
    app.fake.s().devices.clear();
    app.web.live.invalidate(); // as a tick would
    assert!(app.get("/", &s).await.body.contains("No devices yet"));
}

/// Opens the live stream and returns its first event.
async fn first_event(app: &App, session: &str) -> serde_json::Value {
    let res = app
        .router
        .clone()
        .oneshot(
            Request::get("/live").header(header::COOKIE, session).body(Body::empty()).expect("req"),
        )
        .await
        .expect("live");
    assert_eq!(res.status(), StatusCode::OK);
    let frame =
        res.into_body().frame().await.expect("a frame").expect("ok").into_data().expect("data");
    let text = String::from_utf8_lossy(&frame).into_owned();
    serde_json::from_str(text.trim().strip_prefix("data: ").expect("data line")).expect("json")
}

#[tokio::test]
async fn every_open_tab_and_the_dashboard_read_one_snapshot_per_tick() {
    let app = app().await;
    let (s, _) = app.owner().await;
    let before = app.fake.s().device_lists;
    // Eight tabs open the live stream and the dashboard at the same moment.
    let tabs = (0..8).map(|_| first_event(&app, &s));
    let events = futures_util::future::join_all(tabs).await;
    assert!(events.iter().all(|e| e["ids"] == "01,02"), "{events:?}");
    assert!(app.get("/", &s).await.body.contains("data-reading=\"01\""));
    // One snapshot for all of them: one device list, one chart history per device.
    assert_eq!(app.fake.s().device_lists - before, 1, "one device list for 8 streams and a page");
    assert_eq!(app.web.live.builds(), 1);
    // A change the owner makes is shown at once (the snapshot is rebuilt).
    app.web.live.invalidate();
    first_event(&app, &s).await;
    assert_eq!(app.fake.s().device_lists - before, 2);
    // Chart histories: fetched again only for a device whose newest readings changed.
    let histories = app.fake.s().histories;
    app.get("/", &s).await;
    assert_eq!(app.fake.s().histories, histories, "both charts cached");
    app.fake.s().devices[0].last = vec![reading(4, 22.0)];
    app.web.live.invalidate();
    assert!(app.get("/", &s).await.body.contains("temperature 22.0 °C"));
    assert_eq!(app.fake.s().histories, histories + 1, "only the changed device's chart");
}
