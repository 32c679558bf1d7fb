//! The updates page: risks, disruption, policy, approval and progress.

use super::*;

#[tokio::test]
async fn updates_show_risks_and_disruption_take_policy_and_approval_and_report_progress() {
    let app = app().await;
    let (s, csrf) = app.owner().await;
    let u = app.get("/updates", &s).await;
    for want in [
        "CVE-2026-0001",
        "Disruptive:",
        "Approve version 2",
        "bad signature",
        "install automatically",
        "value=\"0\" data-progress=\"01\"",
        "version 2 available approval",
    ] {
        assert!(u.body.contains(want), "updates page lacks {want}");
    }
    let r = app.post("/updates/policy", &s, &format!("csrf={csrf}&mode=postponed&days=7")).await;
    assert_eq!(r.location(), "/updates?m=policy");
    let now_s = app.web.now_ms() / 1000;
    assert_eq!(app.fake.s().policy, Some(Policy::Postponed(now_s + 7 * 86_400)));
    app.post("/updates/policy", &s, &format!("csrf={csrf}&mode=notify_only&days=")).await;
    assert_eq!(app.fake.s().policy, Some(Policy::NotifyOnly));
    let r = app.post("/updates/approve", &s, &format!("csrf={csrf}&model={MODEL}&version=2")).await;
    assert_eq!(r.location(), "/updates?m=approved");
    assert_eq!(app.fake.s().approved, [(MODEL.to_owned(), 2)]);
    let r = app.post("/updates/approve", &s, &format!("csrf={csrf}&model={MODEL}&version=3")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("no release 3"));
    app.fake.s().delivering = Some((2, 5, 10));
    assert!(app.get("/updates", &s).await.body.contains("value=\"50\" data-progress=\"01\""));
    {
        let mut f = app.fake.s();
        f.delivering = None;
        f.devices.iter_mut().for_each(|d| d.firmware = 2);
    }
    let u = app.get("/updates", &s).await;
    assert!(
        u.body.contains("value=\"100\" data-progress=\"01\"")
            && u.body.contains("version 2 installed: 100 %")
    );
}
