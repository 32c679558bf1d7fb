//! Wrong setup codes freeze nothing (issue 15 finding 1): while no owner account exists — at
//! first start and again after "erase everything" — 20 wrong codes from one address and 40 more
//! from five addresses at once are refused (403, or 429 once throttled) while a fleet reports;
//! its deliveries stay at ≥ 95 % of normal, `hub ctl` and the web UI answer throughout, every
//! acknowledged reading is stored, the right code still works from an address that did not
//! fail, and SIGTERM ends the hub cleanly.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use tests::meter::assert_all_stored;
use tests::{Hub, Meter, free_tcp_port, free_udp_port, wait_for};

use crate::web::{Client, setup_code};

const SENSORS: usize = 8;
const WINDOW: Duration = Duration::from_secs(12);
const PASSWORD: &str = "quiet harbour 42";
const WRONG: &str = "AAAA-BBBB-CCCC";

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// 20 wrong codes from `one`, then 8 from each of five other addresses at once, while the
/// owner's tools are checked to answer; runs for at least `WINDOW`. Returns the statuses.
fn wrong_codes(hub: &Hub, web: &Client, one: u8, others: u8) -> Vec<u16> {
    let started = Instant::now();
    let mut statuses = Vec::new();
    let single = web.from(ip(one));
    for _ in 0..20 {
        statuses.push(single.setup(WRONG, "owner", PASSWORD).status);
        // Nothing froze: the owner's other tools answer between the attempts.
        assert!(hub.ctl(&["security"])["total"].is_u64());
    }
    let threads: Vec<_> = (0..5u8)
        .map(|i| {
            let c = web.from(ip(others + i));
            std::thread::spawn(move || {
                (0..8).map(|_| c.setup(WRONG, "owner", PASSWORD).status).collect::<Vec<_>>()
            })
        })
        .collect();
    while started.elapsed() < WINDOW {
        let page = web.try_get("/setup", Duration::from_secs(5));
        assert_eq!(page.map(|p| p.status), Some(200), "the web UI answers during the attack");
        assert_eq!(hub.ctl(&["devices"]).as_array().map(Vec::len), Some(SENSORS));
        std::thread::sleep(Duration::from_millis(300));
    }
    for t in threads {
        statuses.extend(t.join().expect("attacker thread"));
    }
    statuses
}

fn check(statuses: &[u16]) {
    assert_eq!(statuses.len(), 60);
    assert!(statuses.iter().all(|s| *s == 403 || *s == 429), "{statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s == 403).count() >= 4,
        "wrong codes are refused as such: {statuses:?}"
    );
}

/// A fleet paired and reporting from every sensor.
fn reporting(hub: &Hub, flash: &std::path::Path) -> Meter {
    let fleet = Meter::fleet(hub, flash, SENSORS, 250, &[]);
    let kids = fleet.paired(SENSORS, Duration::from_secs(120));
    wait_for("readings from every sensor", Duration::from_secs(60), || {
        let acked = fleet.acknowledged();
        kids.iter().all(|k| acked.get(k).is_some_and(|t| t.len() >= 3)).then_some(())
    });
    fleet
}

#[test]
fn wrong_setup_codes_before_and_after_an_erase_freeze_nothing() {
    let _one_at_a_time = tests::exclusive();
    let tmp = tempfile::tempdir().expect("tmp");
    // The web UI keeps its port across the factory reset (a fixed one, as a real hub has).
    let extra = format!("[web]\nbind = \"127.0.0.1:{}\"\n", free_tcp_port());
    let mut hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &extra);
    let web = Client::new(&hub);

    // Factory state: no owner yet.
    let fleet = reporting(&hub, &tmp.path().join("flash-1.redb"));
    let (ratio, statuses) = fleet.during(WINDOW, || wrong_codes(&hub, &web, 2, 10));
    println!(
        "before any owner: deliveries {} before, {} during; answers {statuses:?}",
        ratio.normal, ratio.attacked
    );
    check(&statuses);
    assert!(ratio.value() >= 0.95, "deliveries fell to {:.3}: {ratio:?}", ratio.value());
    assert_all_stored(&hub, &fleet.acknowledged());

    // The owner sets up from an address that did not fail, logs in, and erases everything on
    // the privacy page (with its CSRF token).
    let owner = web.from(ip(60));
    let code = setup_code(&hub);
    let made = owner.setup(&code, "owner", PASSWORD);
    assert_eq!((made.status, made.header("location")), (303, Some("/")), "{}", made.body);
    let session = format!("__Host-hearth={}", made.cookie("__Host-hearth").expect("session"));
    let privacy = owner.get("/privacy", &session);
    assert_eq!(privacy.status, 200);
    let erased =
        owner.post("/privacy/erase", &session, &format!("csrf={}&confirm=ERASE", privacy.csrf()));
    assert_eq!(erased.status, 200, "{}", erased.body);
    assert!(erased.body.contains("Erase complete."), "{}", erased.body);
    fleet.terminate();
    // A factory reset: the hub starts again as a new hub (new certificate, new setup code).
    hub.restarted(Duration::from_secs(60));
    let web = Client::new(&hub);
    assert!(hub.ctl(&["devices"]).as_array().is_some_and(Vec::is_empty));
    let new_code = setup_code(&hub);
    assert_ne!(new_code, code, "a new setup code after the erase");

    // First-run state again, with a new fleet: the same attack.
    let fleet = reporting(&hub, &tmp.path().join("flash-2.redb"));
    let (ratio, statuses) = fleet.during(WINDOW, || wrong_codes(&hub, &web, 3, 20));
    println!(
        "after the erase: deliveries {} before, {} during; answers {statuses:?}",
        ratio.normal, ratio.attacked
    );
    check(&statuses);
    assert!(ratio.value() >= 0.95, "deliveries fell to {:.3}: {ratio:?}", ratio.value());
    let again = web.from(ip(61)).setup(&new_code, "owner", PASSWORD);
    assert_eq!(again.status, 303, "the right code works: {}", again.body);
    let checked = assert_all_stored(&hub, &fleet.acknowledged());
    assert!(checked >= ratio.normal + ratio.attacked);
    fleet.terminate();
    let status = hub.terminate_within(Duration::from_secs(15)).expect("SIGTERM ends the hub");
    assert!(status.success(), "{status:?}");
}
