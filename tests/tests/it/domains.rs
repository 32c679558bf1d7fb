//! Failure domains (issue 15, DESIGN.md "Failure domains and budgets"): with every worker of the
//! hub's main runtime wedged on purpose (web UI, MQTT, feed checker, upstream bridge: a test
//! build's hidden control command), a fleet's readings keep being acknowledged at the normal
//! rate and are stored, `hub ctl` keeps answering, and SIGTERM still ends the hub within a bound.

use std::time::{Duration, Instant};

use tests::meter::assert_all_stored;
use tests::{Hub, Meter, free_udp_port, wait_for};

use crate::web::Client;

const SENSORS: usize = 8;
const WINDOW: Duration = Duration::from_secs(12);

#[test]
fn the_link_keeps_acknowledging_with_the_main_runtime_wedged_and_sigterm_still_ends_the_hub() {
    let _one_at_a_time = tests::exclusive();
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("hub");
    let port = free_udp_port();
    let mut hub = Hub::start(&dir, port);
    let web = Client::new(&hub);
    assert!(web.try_get("/", Duration::from_secs(10)).is_some(), "the web UI answers at first");
    let fleet = Meter::fleet(&hub, &tmp.path().join("flash.redb"), SENSORS, 250, &[]);
    let kids = fleet.paired(SENSORS, Duration::from_secs(120));
    wait_for("readings from every sensor", Duration::from_secs(60), || {
        let acked = fleet.acknowledged();
        (kids.iter().all(|k| acked.get(k).is_some_and(|t| t.len() >= 3))).then_some(())
    });

    let (ratio, wedged_at) = fleet.during(WINDOW, || {
        let started = Instant::now();
        let answer = hub.fault("wedge_main_runtime");
        assert_eq!(answer["wedged"], 64, "{answer}");
        // The main runtime is really stuck: the web UI no longer answers.
        assert!(web.try_get("/", Duration::from_secs(3)).is_none(), "the web UI still answers");
        // The control socket is a domain of its own: `hub ctl` answers, from the link and the
        // store, while the wedge lasts.
        while started.elapsed() < WINDOW {
            let sec = hub.ctl(&["security"]);
            assert!(sec["total"].is_u64(), "{sec}");
            let devices = hub.ctl(&["devices"]);
            assert_eq!(devices.as_array().map(Vec::len), Some(SENSORS), "{devices}");
            std::thread::sleep(Duration::from_millis(500));
        }
        Instant::now()
    });
    println!(
        "deliveries: {} in the {WINDOW:?} before the wedge, {} during it",
        ratio.normal, ratio.attacked
    );
    assert!(ratio.normal >= 100, "the fleet reported too little to compare: {ratio:?}");
    assert!(ratio.value() >= 0.95, "deliveries fell to {:.3} of normal: {ratio:?}", ratio.value());

    // Readings acknowledged during the wedge are queryable right away (the store is not on the
    // main runtime either).
    let during = fleet.acknowledged();
    let kid = kids.iter().next().expect("a device");
    let stored = hub.ctl(&["readings", kid, "--limit", "10000"]);
    let newest = stored.as_array().and_then(|r| r.last()).and_then(|r| r["time_ms"].as_i64());
    let acked_newest = during[kid].iter().next_back().copied();
    assert!(newest >= acked_newest.map(|t| t - 2_000), "{newest:?} vs {acked_newest:?}");
    assert!(web.try_get("/", Duration::from_secs(1)).is_none(), "still wedged");

    // SIGTERM ends it within the bound, although the web UI's tasks never stop: the link drains
    // first, then the process ends after the grace period, saying why.
    let asked = Instant::now();
    let status = hub.terminate_within(Duration::from_secs(30)).expect("SIGTERM ends a wedged hub");
    println!(
        "stopped {:?} after SIGTERM ({:?} after the wedge)",
        asked.elapsed(),
        wedged_at.elapsed()
    );
    assert_eq!(status.code(), Some(1), "a forced stop says so in its status");
    let log = std::fs::read_to_string(&hub.log).unwrap_or_default();
    assert!(log.contains("did not stop after the shutdown signal"), "{log}");
    let acknowledged = fleet.acknowledged();
    fleet.terminate();

    // Every reading the fleet saw acknowledged, before, during and after the wedge, is stored.
    let hub = Hub::start(&dir, port);
    let checked = assert_all_stored(&hub, &acknowledged);
    assert!(checked >= ratio.normal + ratio.attacked, "{checked}");
    // An ordinary stop is clean and quick.
    let mut hub = hub;
    let status = hub.terminate_within(Duration::from_secs(15)).expect("a clean stop");
    assert!(status.success(), "{status:?}");
}
