//! The README's demo runs to its end by itself and shows its four acts: pairing, readings,
//! refused releases with their reasons, and an update delivered with progress.

use std::process::Command;

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
        "Demo finished",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}\n{stderr}");
    }
}
