//! The owner's journey in headless Debian Chromium driven by playwright-core
//! (`tests/browser/owner-journey.mjs`): this test runs the real hub, the simulated sensor and the
//! manufacturer, answers the script's questions (a sensor's PIN, the setpoint the sensor applied,
//! a published update, an isolated button, whether it is still paired before and after the
//! removal's confirmation) and checks
//! the hub's state afterwards. Screenshots land in `tests/screenshots-out/` (CI artifacts).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::{Hub, Maker, Sim, field, free_udp_port, root, wait_for};

const THERMO: &str = "hearth-thermo-1";
const BUTTON: &str = "hearth-button-1";

#[test]
fn the_owner_sets_up_pairs_watches_a_reading_approves_an_update_and_erases_in_a_browser() {
    let browser = root().join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").exists()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "run `bash scripts/test`: it installs Debian chromium and playwright-core (npm ci in tests/browser)"
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let maker = Maker::new(tmp.path());
    // The web UI keeps its port across the factory reset at the end (a fixed one).
    let extra = format!(
        "[web]\nbind = \"127.0.0.1:{}\"\n[updates]\nmax_concurrent = 4\n{}",
        tests::free_tcp_port(),
        maker.trust_toml(&[THERMO, BUTTON])
    );
    let mut hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &extra);

    // The browser skips its own certificate check; this pins the served certificate to the
    // fingerprint the hub printed (the client refuses any other).
    let web = super::web::Client::new(&hub);
    assert_eq!(web.get("/", "").status, 303);
    let code = super::web::setup_code(&hub);

    let shots = root().join("tests/screenshots-out");
    let mut node = Command::new("node")
        .arg(browser.join("owner-journey.mjs"))
        .current_dir(&browser)
        .env("HEARTH_URL", format!("https://{}/", hub.web))
        .env("HEARTH_SETUP_CODE", &code)
        .env("HEARTH_SCREENSHOTS", &shots)
        .envs(std::env::var_os("HEARTH_DOCS").map(|d| ("HEARTH_DOCS", d)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node");
    let mut to_node = node.stdin.take().expect("stdin");
    let lines = tests::stdout_lines(&mut node);

    let deadline = Instant::now() + Duration::from_secs(300);
    let mut sim: Option<Sim> = None;
    let mut buttons: Option<Sim> = None;
    let mut button: Option<String> = None;
    let mut steps = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| {
            let _ = node.kill();
            panic!("the browser script stopped answering after {steps:?}")
        });
        match line.split_once(' ').unwrap_or((line.as_str(), "")) {
            ("STEP", name) => steps.push(name.to_owned()),
            ("ASK", "pin") => {
                // The owner opened the window in the browser; the sensor starts pairing and shows
                // its PIN, which the owner reads off its display.
                let flash = tmp.path().join("flash.redb");
                let mut s = Sim::start(&[
                    "fleet",
                    "--hub",
                    &hub.coap.to_string(),
                    "--sensors",
                    "1",
                    "--pair",
                    "--models",
                    "thermostat",
                    "--interval-ms",
                    "400",
                    "--maker-keys",
                    maker.keys.to_str().expect("utf-8"),
                    "--flash",
                    flash.to_str().expect("utf-8"),
                ]);
                let pin = s.until("the sensor's PIN", Duration::from_secs(60), |l| {
                    l.starts_with("PIN").then(|| field(l, "pin").map(str::to_owned)).flatten()
                });
                wait_for("the sensor to wait for its PIN", Duration::from_secs(30), || {
                    hub.ctl(&["pair", "status"])["waiting"]
                        .as_array()
                        .is_some_and(|w| !w.is_empty())
                        .then_some(())
                });
                writeln!(to_node, "{pin}").expect("answer");
                sim = Some(s);
            }
            ("ASK", "setpoint") => {
                // The owner set 23.5 °C in the browser: the thermostat applies it with its next
                // report (the hub relays it as MQTT's `…/set` would).
                let s = sim.as_mut().expect("the thermostat paired");
                s.until("the thermostat to apply the setpoint", Duration::from_secs(30), |l| {
                    (l.starts_with("COMMAND")
                        && field(l, "name") == Some("setpoint")
                        && field(l, "applied") == Some("23.5"))
                    .then_some(())
                });
                writeln!(to_node, "ok").expect("answer");
            }
            ("ASK", what @ ("still-paired" | "removed")) => {
                let kid = button.clone().expect("the button paired");
                let paired = hub
                    .ctl(&["devices"])
                    .as_array()
                    .is_some_and(|d| d.iter().any(|d| d["id"] == kid.as_str()));
                let want = what == "still-paired";
                writeln!(to_node, "{}", if paired == want { "yes" } else { "no" }).expect("answer");
            }
            ("ASK", "update") => {
                maker.publish(
                    THERMO,
                    2,
                    48 * 1024,
                    &[
                        "--disruptive",
                        "--risks",
                        "Fixes CVE-2026-0002 in the firmware's CoAP parser.",
                    ],
                );
                let (m, i) = maker.files(THERMO, 2);
                hub.update_add(&m, &i).expect("the hub takes the release");
                writeln!(to_node, "ok").expect("answer");
            }
            ("ASK", "isolated") => {
                // A button (not updatable) pairs; the maker's advisory makes the hub isolate it.
                let flash = tmp.path().join("buttons.redb");
                let mut b = Sim::fleet(
                    &hub.coap.to_string(),
                    &hub,
                    &flash,
                    &[
                        "--sensors",
                        "1",
                        "--models",
                        "button",
                        "--seed",
                        "7",
                        "--interval-ms",
                        "400",
                    ],
                );
                let kid = b.paired(1, Duration::from_secs(60)).remove(0);
                maker.advisory(
                    BUTTON,
                    1,
                    1,
                    None,
                    "The radio stack accepts unauthenticated frames.",
                );
                let file = maker.feed.join("advisories/1.cose");
                hub.ctl(&["advisory", file.to_str().expect("utf-8")]);
                wait_for("the button to be isolated", Duration::from_secs(30), || {
                    (hub.ctl(&["device", &kid])["availability"] == "isolated").then_some(())
                });
                writeln!(to_node, "cannot be updated").expect("answer");
                buttons = Some(b);
                button = Some(kid);
            }
            ("DONE", _) => break,
            ("FAIL", why) => {
                let _ = node.kill();
                let _ = node.wait();
                panic!(
                    "browser journey failed after {steps:?}: {why}\n(screenshots in {})",
                    shots.display()
                );
            }
            _ => {}
        }
    }
    assert!(node.wait().expect("node").success());
    assert_eq!(
        steps,
        [
            "setup",
            "login",
            "pairing",
            "dashboard",
            "setpoint",
            "update",
            "isolated",
            "remove",
            "security",
            "erase"
        ]
    );

    // The hub agrees: the sensor had installed version 2 before the erase, nothing is left, and
    // a new setup code replaced the used one.
    let mut sim = sim.expect("a sensor paired");
    sim.until("the sensor running version 2", Duration::from_secs(10), |l| {
        (l.starts_with("UPDATED") && field(l, "outcome") == Some("Installed")).then_some(())
    });
    drop(buttons);
    // The erase was a factory reset: the hub started again as a new hub.
    hub.restarted(Duration::from_secs(60));
    assert!(hub.ctl(&["devices"]).as_array().is_some_and(Vec::is_empty));
    let new_code = super::web::setup_code(&hub);
    assert_ne!(new_code, code);
    for shot in
        ["03-dashboard.png", "05-update-done.png", "07-security-status.png", "09-erased.png"]
    {
        assert!(shots.join(shot).exists(), "{shot}");
    }
}
