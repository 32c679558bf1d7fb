//! The pairing page: window, countdown, PIN entry, warnings and back-off.

use super::*;

#[tokio::test]
async fn pairing_shows_the_back_off_and_warnings_and_needs_the_owner_to_accept_the_risk() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    app.post("/pairing/open", &s, &format!("csrf={csrf}&seconds=120")).await;
    {
        let mut st = app.fake.s();
        st.pairing.open = false;
        st.pairing.backoff_s = 4;
        st.pairing.warnings =
            vec![("SN-9".into(), "it will be isolated as soon as it pairs".into())];
    }
    let p = app.get("/pairing", &s).await;
    assert!(p.body.contains("PINs are taken again in 4 s"), "{}", p.body);
    assert!(!p.body.contains("Pairing is <strong>closed</strong>"));
    assert!(p.body.contains("⚠ it will be isolated as soon as it pairs"));
    assert!(p.body.contains("name=\"accept\""));
    let r =
        app.post("/pairing/pin", &s, &format!("csrf={csrf}&pin=12345&serial=SN-9&replaces=")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("To pair it anyway"));
    let r = app
        .post(
            "/pairing/pin",
            &s,
            &format!("csrf={csrf}&pin=12345&serial=SN-9&replaces=&accept=yes"),
        )
        .await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/pairing?m=paired"));
}

#[tokio::test]
async fn pairing_opens_counts_down_takes_a_pin_and_closes() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    let p = app.get("/pairing", &s).await;
    assert!(
        p.body.contains("Pairing is <strong>closed</strong>") && p.body.contains("1 in 32,768")
    );
    app.post("/pairing/open", &s, &format!("csrf={csrf}&seconds=120")).await;
    let p = app.get("/pairing?m=opened", &s).await;
    for want in
        ["data-countdown=\"120\"", "<span data-attempts>3</span>", "SN-9", "Pairing window open."]
    {
        assert!(p.body.contains(want), "pairing page lacks {want}");
    }
    let r =
        app.post("/pairing/pin", &s, &format!("csrf={csrf}&pin=11111&serial=SN-9&replaces=")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.body.contains("Not paired: the sensor did not confirm")
            && r.body.contains("<span data-attempts>2</span>")
    );
    let r = app.post("/pairing/pin", &s, &format!("csrf={csrf}&pin=12345&serial=&replaces=")).await;
    assert_eq!((r.status, r.location()), (StatusCode::SEE_OTHER, "/pairing?m=paired"));
    assert_eq!(app.fake.s().pins, ["11111", "12345"]);
    assert!(app.get("/", &s).await.body.contains("data-reading=\"0a\""));
    let r = app.post("/pairing/close", &s, &format!("csrf={csrf}")).await;
    assert_eq!(r.location(), "/pairing?m=closed");
    assert!(!app.fake.s().pairing.open);

    // Naming, and a replacement for the isolated sensor that takes over its name.
    let r = app
        .post("/devices/02/label", &s, &format!("csrf={csrf}&name=Hall+thermostat&room=Hall"))
        .await;
    assert_eq!(r.location(), "/devices/02?m=labelled");
    let d = app.get("/devices/02?m=labelled", &s).await;
    assert!(
        d.body.contains("Name and room saved.") && d.body.contains("Hall thermostat (Hall)"),
        "{}",
        d.body
    );
    assert!(d.body.contains("href=\"/pairing?replaces=02\""));
    let p = app.get("/pairing?replaces=02", &s).await;
    assert!(
        p.body.contains("<option value=\"02\" selected>Hall thermostat (Hall) (isolated)</option>"),
        "{}",
        p.body
    );
    assert!(!app.get("/pairing?replaces=%3Cb%3E", &s).await.body.contains("<b>"));
    let r =
        app.post("/pairing/pin", &s, &format!("csrf={csrf}&pin=12345&serial=&replaces=02")).await;
    assert_eq!(r.location(), "/pairing?m=paired");
    let devices = app.fake.s().devices.clone();
    assert!(devices.iter().all(|d| d.id != "02"));
    assert!(devices.iter().any(|d| d.name.as_deref() == Some("Hall thermostat")));
    let r = app.post("/devices/0f/label", &s, &format!("csrf={csrf}&name=x&room=")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
