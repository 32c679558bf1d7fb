//! The README's demo runs to its end by itself and shows its four acts: pairing, readings,
//! refused releases with their reasons, and an update delivered with progress; it says how long
//! its web UI lives, and with `--keep-running` keeps the web UI and its setup code valid until
//! Ctrl-C.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::bin;

#[test]
fn the_demo_shows_its_four_acts_and_ends_by_itself() {
    let out = Command::new(bin("demo"))
        .args(["--sensors", "4", "--timeout-s", "120"])
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for expected in [
        "[4/4]",
        "All 4 sensors paired",
        "readings acknowledged",
        "TH-00000 (hearth-thermo-1): temp = ",
        "refused a release from the feed: hearth-climate-1 v2: image: image digest does not match",
        "refused a release from the feed: hearth-thermo-1 v1: not newer than v1 (anti-rollback)",
        "[hub] verified hearth-thermo-1 v2",
        "TH-00000: writing v2 to its inactive slot (Block2 over OSCORE): 256/256 blocks (100%)",
        "TH-00000: update to v2: Installed, now running v2",
        "live only until then (the data is temporary); run `demo --keep-running`",
        "Demo finished",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}\n{stderr}");
    }
}

#[test]
fn with_keep_running_the_demos_web_ui_and_setup_code_stay_valid_until_ctrl_c() {
    let mut demo = Command::new(bin("demo"))
        .args(["--sensors", "2", "--timeout-s", "120", "--keep-running"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run the demo");
    let lines = tests::stdout_lines(&mut demo);
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut seen = Vec::new();
    let kept = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            let _ = demo.kill();
            panic!("the demo did not say it keeps running:\n{}", seen.join("\n"));
        };
        seen.push(line.clone());
        if line.contains("keep running. Web UI: https://") {
            break line;
        }
    };
    // The acts are over; the web UI answers with the certificate the hub printed, and the setup
    // code file it names is there.
    let fingerprint = seen
        .iter()
        .find_map(|l| l.split("fingerprint ").nth(1))
        .expect("the hub printed its fingerprint")
        .trim()
        .to_owned();
    let addr = kept
        .split("https://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("the web address");
    let code_file = kept
        .split("setup code in ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .map(std::path::PathBuf::from)
        .expect("the setup code's file");
    assert!(seen.iter().any(|l| l.contains("stay valid until then")), "{seen:?}");
    let web = super::web::Client::at(addr, fingerprint);
    let setup = web.get("/setup", "");
    assert_eq!(setup.status, 200, "the web UI still answers after the acts");
    let code = std::fs::read_to_string(&code_file).expect("the setup code file");
    assert_eq!(code.trim().len(), 14, "{code}");
    // Ctrl-C ends it cleanly and removes its temporary data.
    let pid = demo.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
    let status = tests::wait_for("the demo to stop", Duration::from_secs(30), || {
        demo.try_wait().expect("wait")
    });
    assert!(status.success(), "{status:?}");
    assert!(!code_file.exists(), "temporary data removed");
}
