//! The privacy page: consent and erase.

use super::*;

#[tokio::test]
async fn privacy_consent_is_persisted_and_erase_needs_the_typed_word() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    let p = app.get("/privacy", &s).await;
    assert!(
        p.body.contains("Hearth sends <strong>no telemetry</strong>")
            && p.body.contains("data-consent=\"off\"")
    );
    // How to move to a new gateway: the commands, as the hub takes them.
    assert!(p.body.contains("Moving to a new gateway"));
    assert!(p.body.contains("hub backup /media/usb/home.hearth-backup"));
    assert!(
        p.body.contains("hub restore /media/usb/home.hearth-backup --data-dir /var/lib/hearth")
    );
    let r = app.post("/privacy/consent", &s, &format!("csrf={csrf}&consent=on")).await;
    assert_eq!(r.location(), "/privacy?m=consent");
    let stored = crate::Vault::parse(&app.fake.s().vault.clone().expect("vault")).expect("parse");
    assert!(stored.telemetry_consent);
    assert!(app.get("/privacy", &s).await.body.contains("data-consent=\"on\""));
    let r = app.post("/privacy/erase", &s, &format!("csrf={csrf}&confirm=erase+please")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("Nothing was erased"));
    assert_eq!(app.fake.s().erased, 0);
    let r = app.post("/privacy/erase", &s, &format!("csrf={csrf}&confirm=ERASE")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("Erase complete.") && r.body.contains("restarts as a new hub"));
    assert_eq!(app.fake.s().erased, 1);
    let done = app.get("/erased", "").await;
    assert!(done.body.contains("Erase complete.") && done.body.contains("new</strong> one-time"));
    // The old session is gone, the old code void, the new one works.
    assert_eq!(app.get("/", &s).await.location(), "/setup");
    let (cookie, csrf) = app.pre("/setup").await;
    let form = |code: &str| {
        format!("csrf={csrf}&code={code}&user=new&password=green+apple+99&confirm=green+apple+99")
    };
    assert_eq!(app.post("/setup", &cookie, &form(CODE)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.post("/setup", &cookie, &form("NEWC-ODEN-EWCO")).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(app.get("/erased", "").await.location(), "/login");
}
