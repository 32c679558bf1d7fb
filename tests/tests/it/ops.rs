//! Operating the hub as a service: `--version`, one binary per crate (`cargo run -p hub` needs no
//! `--bin`), logs in colour only on a terminal (and never with `NO_COLOR`), and the update feed
//! checker's last check — logged, and shown by `hub ctl updates` (JSON and table).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

use serde_json::Value;
use tests::{Hub, Maker, bin, free_udp_port, root, wait_for, write_config};

/// `version = "…"` of a workspace crate's manifest.
fn crate_version(krate: &str) -> String {
    let manifest =
        std::fs::read_to_string(root().join(krate).join("Cargo.toml")).expect("manifest");
    let line = manifest.lines().find(|l| l.starts_with("version = ")).expect("version line");
    line.trim_start_matches("version = ").trim_matches('"').to_owned()
}

#[test]
fn hub_and_sensor_sim_say_their_version_and_each_crate_has_one_binary() {
    for (name, krate) in [("hub", "hub"), ("sensor-sim", "sensor-sim")] {
        let out = Command::new(bin(name)).arg("--version").output().expect("run");
        assert!(out.status.success());
        let expected = format!("{name} {}\n", crate_version(krate));
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    }
    // `cargo run -p hub -- …` (README) works only while the package has exactly one binary.
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1", "--offline"])
        .current_dir(root())
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    for package in ["hub", "sensor-sim"] {
        let p = meta["packages"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == package))
            .expect("package");
        let bins: Vec<&str> = p["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .filter(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")))
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert_eq!(bins, [package], "the binaries of {package}");
    }
}

/// Runs `hub run` on a pseudo-terminal (`script`), with `NO_COLOR` set or not; returns what
/// it printed up to its `READY` line, then stops it.
fn on_a_terminal(dir: &std::path::Path, no_color: bool) -> String {
    std::fs::create_dir_all(dir).expect("dir");
    let config = write_config(dir, free_udp_port(), "");
    let data = dir.join("hub");
    let hub = format!(
        "'{}' run --data-dir '{}' --config '{}'",
        bin("hub").display(),
        data.display(),
        config.display()
    );
    let mut script = Command::new("script");
    script.args(["-qfec", &hub, "/dev/null"]).env("RUST_LOG", "info");
    if no_color {
        script.env("NO_COLOR", "1");
    } else {
        script.env_remove("NO_COLOR");
    }
    let mut child = script
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut printed = String::new();
    let ready = loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("READY on the terminal");
        if let Some(json) = line.trim_end_matches('\r').strip_prefix("READY ") {
            break serde_json::from_str::<Value>(json).expect("READY json");
        }
        printed.push_str(&line);
        printed.push('\n');
    };
    let pid = ready["pid"].as_u64().expect("pid").to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = wait_for("the hub on the terminal to stop", Duration::from_secs(60), || {
        child.try_wait().ok().flatten()
    });
    assert!(status.success(), "stopped cleanly: {status}");
    printed
}

#[test]
fn logs_are_coloured_only_on_a_terminal_and_never_with_no_color() {
    let tmp = tempfile::tempdir().expect("tmp");
    let coloured = on_a_terminal(&tmp.path().join("tty"), false);
    let line = coloured.lines().find(|l| l.contains("hub running")).expect("the start line");
    assert!(line.contains('\u{1b}'), "colour on a terminal: {line:?}");
    let plain = on_a_terminal(&tmp.path().join("no-color"), true);
    let line = plain.lines().find(|l| l.contains("hub running")).expect("the start line");
    assert!(!line.contains('\u{1b}'), "NO_COLOR: {line:?}");

    // Into a file (journald, a pipe): plain text.
    let dir = tmp.path().join("file");
    std::fs::create_dir_all(&dir).expect("dir");
    let hub = Hub::start(&dir.join("hub"), free_udp_port());
    let log = hub.log.clone();
    hub.stop();
    let logged = std::fs::read_to_string(log).expect("log");
    assert!(logged.contains("hub running"), "{logged}");
    assert!(!logged.contains('\u{1b}'), "no ANSI escapes in a log file: {logged:?}");
}

#[test]
fn feed_checks_are_logged_and_hub_ctl_updates_says_when_it_last_checked() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut maker = Maker::new(tmp.path());
    maker.publish("hearth-thermo-1", 2, 4096, &[]);
    let (url, cert) = maker.serve(tmp.path());
    let extra = format!(
        "[updates]\nfeed_url = \"{url}\"\nfeed_cert = \"{}\"\ncheck_interval_s = 2\n{}",
        cert.display(),
        maker.trust_toml(&["hearth-thermo-1"])
    );
    let hub = Hub::start_with(&tmp.path().join("hub"), free_udp_port(), &extra);
    let feed = |hub: &Hub| hub.ctl(&["updates"])["feed"].clone();
    let ok = wait_for("a successful feed check", Duration::from_secs(60), || {
        let f = feed(&hub);
        f["last_ok_ms"].is_i64().then_some(f)
    });
    assert_eq!(ok["url"], url.as_str());
    assert!(ok["last_error"].is_null(), "{ok}");
    assert_eq!((ok["releases"].as_u64(), ok["advisories"].as_u64()), (Some(1), Some(0)), "{ok}");
    assert!(ok["next_check_ms"].as_i64() > ok["last_checked_ms"].as_i64(), "{ok}");
    let logged = std::fs::read_to_string(&hub.log).expect("log");
    let line = logged.lines().find(|l| l.contains("update feed checked")).expect("logged");
    assert!(line.contains("INFO") && line.contains("new_releases=1"), "{line}");
    let (done, table, _) = hub.ctl_human(&["updates"]);
    assert!(done);
    assert!(table.starts_with(&format!("Update feed: {url}\n")), "{table}");
    assert!(table.contains("last checked: ") && table.contains("1 release(s)"), "{table}");
    assert!(table.contains("next check: "), "{table}");

    // The feed goes away: the next check fails, and both the answer and the table say so.
    drop(maker);
    let failed = wait_for("a failed feed check", Duration::from_secs(60), || {
        let f = feed(&hub);
        f["last_error"].is_string().then_some(f)
    });
    assert!(failed["last_ok_ms"].as_i64() >= ok["last_ok_ms"].as_i64(), "{failed}");
    let (_, table, _) = hub.ctl_human(&["updates"]);
    assert!(table.contains("failed: ") && table.contains("last successful check: "), "{table}");
    hub.stop();
}
