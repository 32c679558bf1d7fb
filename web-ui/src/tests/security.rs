//! The security status and events pages.

use super::*;

#[tokio::test]
async fn security_status_and_events_are_computed_from_current_state() {
    let app = app().await;
    let (s, _) = app.owner().await;
    let page = app.get("/security", &s).await;
    for want in [
        "5.1-1",
        "Owner account “owner”",
        "5.1-5",
        "5.4-1",
        "sealed; kek mode 600",
        "5.6-2",
        "5.11-1",
        "5.13-1",
        "6-3",
        "9 of 9 met now",
    ] {
        assert!(page.body.contains(want), "self-check lacks {want}: {}", page.body);
    }
    assert!(page.body.find("5.1-5") < page.body.find("5.4-1"), "sorted by provision");
    // The events page shows the hub's counters with the hub's flags (the hub computes them
    // over its window; the web UI's own events are counted by the hub too).
    {
        let mut f = app.fake.s();
        f.counters[0].value = 50;
        f.counters[0].recent = 12;
        f.counters[0].anomaly = true;
    }
    let events = app.get("/events", &s).await;
    assert!(events.body.contains("class=\"anomaly\" data-event=\"bad_tag\""), "{}", events.body);
    assert!(events.body.contains("1 anomaly flag(s)."), "{}", events.body);
    assert!(events.body.contains("<td>12</td><td>50</td>"), "{}", events.body);
    app.fake.s().counters[0].anomaly = false;
    let events = app.get("/events", &s).await;
    assert!(events.body.contains("No anomaly now."), "{}", events.body);
}

#[tokio::test]
async fn every_check_not_met_names_the_devices_and_the_action() {
    let app = app().await;
    let (s, _) = app.owner().await;
    app.fake.s().checks.push(Check {
        provision: "5.3-13".into(),
        title: "Support period published; devices past it are named".into(),
        ok: false,
        state: "2 device(s), 1 past the end of their support period.".into(),
        devices: vec![("01".into(), "Hall thermostat".into())],
        action: Some(Action {
            text: "Replace it or remove it.".into(),
            href: Some("/pairing".into()),
        }),
    });
    let page = app.get("/security", &s).await;
    let row = page.body.split("data-check=\"5.3-13\"").nth(1).expect("the 5.3-13 row");
    let row = row.split("</tr>").next().unwrap_or_default();
    assert!(row.contains("✗ no"), "{row}");
    assert!(row.contains("href=\"/devices/01\" data-device=\"01\">Hall thermostat</a>"), "{row}");
    assert!(row.contains("What to do: </strong>Replace it or remove it."), "{row}");
    assert!(row.contains("href=\"/pairing\""), "{row}");
    // A row that is met shows no action.
    let met = page.body.split("data-check=\"5.4-1\"").nth(1).expect("5.4-1");
    assert!(!met.split("</tr>").next().unwrap_or_default().contains("What to do"));
    // The web UI's events are counted by the hub, which flags them (5.10-1 is its check).
    for _ in 0..5 {
        app.web.event(WebEvent::LoginFailed);
    }
    assert_eq!(app.total(WebEvent::LoginFailed), 5);
    let events = app.get("/events", &s).await;
    assert!(
        events.body.contains("class=\"anomaly\" data-event=\"web_login_failed\""),
        "{}",
        events.body
    );
}

#[tokio::test]
async fn the_security_page_offers_the_hubs_certificate_to_its_owner_only() {
    let app = app().await;
    let anonymous = app.get("/security/hub-cert.pem", "").await;
    assert_ne!(anonymous.status, StatusCode::OK, "the certificate without a session");
    assert!(!anonymous.body.contains("BEGIN CERTIFICATE"));
    let (s, _) = app.owner().await;
    let page = app.get("/security", &s).await;
    assert!(page.body.contains("href=\"/security/hub-cert.pem\""), "{}", page.body);
    assert!(page.body.contains("AB:CD"), "the fingerprint: {}", page.body);
    let file = app.get("/security/hub-cert.pem", &s).await;
    assert_eq!(file.status, StatusCode::OK);
    assert_eq!(file.headers[header::CONTENT_TYPE], "application/x-pem-file");
    assert!(
        file.headers[header::CONTENT_DISPOSITION]
            .to_str()
            .is_ok_and(|d| d.contains("hub-cert.pem"))
    );
    assert_eq!(file.body, TEST_CERT_PEM);
}
