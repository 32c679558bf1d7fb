//! A device's page for the owner (issue 19 item 7): the setpoint control with MQTT's range,
//! removal only after a confirmation step, the replacement link worded for any device, states in
//! words, charts of the main quantity (never the battery), local times with seconds, and the
//! isolated page saying what the hub really does.

use super::*;

fn thermostat(app: &App) {
    let mut s = app.fake.s();
    let d = &mut s.devices[0];
    d.capabilities = vec!["temperature".into(), "setpoint".into()];
    d.setpoint = Some(Setpoint { min: 5.0, max: 35.0, unit: "°C".into(), current: Some(21.0) });
}

#[tokio::test]
async fn a_thermostat_page_sets_the_setpoint_within_the_hubs_range() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    // No control on a device that takes no setpoint, and the form is refused for it.
    assert!(!app.get("/devices/01", &s).await.body.contains("data-setpoint"));
    let r = app.post("/devices/01/setpoint", &s, &format!("csrf={csrf}&value=21")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    thermostat(&app);
    let page = app.get("/devices/01", &s).await;
    for want in [
        "data-setpoint=\"01\"",
        "action=\"/devices/01/setpoint\"",
        "min=\"5\"",
        "max=\"35\"",
        "value=\"21.0\"",
        "Target (5 to 35 °C)",
    ] {
        assert!(page.body.contains(want), "setpoint control lacks {want}: {}", page.body);
    }
    let r = app.post("/devices/01/setpoint", &s, &format!("csrf={csrf}&value=22.5")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/devices/01?m=setpoint"));
    assert_eq!(app.fake.s().setpoints, [("01".to_owned(), 22.5)]);
    assert!(app.get("/devices/01?m=setpoint", &s).await.body.contains("Setpoint sent"));
    // Out of range, not a number: refused with MQTT's words, counted, nothing sent.
    let malformed = app.total(WebEvent::Malformed);
    for bad in ["36", "4.5", "NaN", "warm", "inf"] {
        let r = app.post("/devices/01/setpoint", &s, &format!("csrf={csrf}&value={bad}")).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        if bad == "36" {
            assert!(r.body.contains("setpoint must be 5 to 35 °C"), "{}", r.body);
        }
    }
    assert_eq!(app.total(WebEvent::Malformed), malformed + 5);
    assert_eq!(app.fake.s().setpoints.len(), 1);
    // Without the session's token: refused before anything is sent.
    let r = app.post("/devices/01/setpoint", &s, "csrf=nope&value=20").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(app.fake.s().setpoints.len(), 1);
}

#[tokio::test]
async fn removing_a_device_asks_for_confirmation_first() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    let page = app.get("/devices/01", &s).await;
    assert!(page.body.contains("Remove this device"));
    // The first click only asks.
    let ask = app.post("/devices/01/remove", &s, &format!("csrf={csrf}")).await;
    assert_eq!(ask.status, StatusCode::OK, "{}", ask.body);
    assert!(ask.body.contains("Remove this device?"), "{}", ask.body);
    assert!(ask.body.contains("data-confirm-remove=\"01\""));
    assert!(ask.body.contains("name=\"confirm\" value=\"yes\""));
    assert!(ask.body.contains("href=\"/devices/01\""), "a way back");
    assert!(app.fake.s().removed.is_empty(), "nothing removed before the confirmation");
    assert!(app.fake.s().devices.iter().any(|d| d.id == "01"));
    // Anything but yes is refused.
    let r = app.post("/devices/01/remove", &s, &format!("csrf={csrf}&confirm=sure")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(app.fake.s().removed.is_empty());
    // The confirmation removes it.
    let r = app.post("/devices/01/remove", &s, &format!("csrf={csrf}&confirm=yes")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/?m=removed"));
    assert_eq!(app.fake.s().removed, ["01"]);
    assert!(app.get("/?m=removed", &s).await.body.contains("Device removed"));
}

#[tokio::test]
async fn states_read_in_words_the_battery_is_not_charted_and_times_are_local_with_seconds() {
    let app = app().await;
    let (s, _) = app.owner().await;
    {
        let mut st = app.fake.s();
        let d = &mut st.devices[0];
        d.model = "hearth-door-1".into();
        d.capabilities = vec!["contact".into(), "battery".into()];
        let r = |name: &str, label: &str, text: &str, unit: Option<&str>, v: f64, kind| Reading {
            time_ms: 9_000,
            name: name.into(),
            label: label.into(),
            unit: unit.map(str::to_owned),
            value: Some(v),
            text: text.into(),
            kind,
        };
        d.last = vec![
            r("open", "contact", "open", None, 1.0, ReadingKind::State),
            r("battery", "battery", "87", Some("%"), 87.0, ReadingKind::Battery),
        ];
    }
    let dash = app.get("/", &s).await;
    assert!(dash.body.contains("data-reading=\"01\">contact open · battery 87 %"), "{}", dash.body);
    assert!(!dash.body.contains("open on") && !dash.body.contains("open 1"));
    assert!(dash.body.contains("data-chart=\"contact\""), "{}", dash.body);
    assert!(!dash.body.contains("data-chart=\"battery\""), "no battery chart: {}", dash.body);
    let page = app.get("/devices/01", &s).await;
    assert!(page.body.contains("data-chart=\"contact\""));
    assert!(page.body.contains(">closed<") && page.body.contains(">open<"), "{}", page.body);
    // Paired at 1_700_000_000: local time to the second, and how long ago.
    let paired = crate::time::local_time(1_700_000_000);
    assert!(paired.len() >= 19 && paired.as_bytes()[16] == b':', "{paired}");
    assert!(page.body.contains(&paired), "{paired} in {}", page.body);
    assert!(page.body.contains(" d ago)"), "{}", page.body);
    // Any device can be replaced, and the page says for what.
    assert!(page.body.contains("data-replace=\"01\""));
    assert!(page.body.contains("Moved it, broken, or isolated?"));
}

#[tokio::test]
async fn the_isolated_page_says_what_the_hub_does() {
    let app = app().await;
    let (s, _) = app.owner().await;
    let iso = app.get("/isolated", &s).await;
    // What `hub::isolation` and the link really do.
    assert!(
        iso.body.contains("refuses the sensor&#39;s readings")
            || iso.body.contains("refuses the sensor's readings"),
        "{}",
        iso.body
    );
    assert!(iso.body.contains("signed advisory"));
    // The two false sentences are gone.
    assert!(!iso.body.contains("records its readings"), "{}", iso.body);
    assert!(!iso.body.contains("or whose support period has ended, is isolated"));
}
