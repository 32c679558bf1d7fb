//! The README runs as written (issue 19 item 1): every `sh` block of README.md, in order, each
//! line verbatim through `bash -c` from the repository root — the demo, installing the two
//! programs with `cargo install`, starting the hub, pairing five sensors by their PINs, the
//! firmware updates (one automatic, one disruptive and approved), an advisory isolating a sensor
//! that cannot be updated, a sensor replaced by a new one, an outage of the hub the sensors ride
//! out while an upstream broker is set up, and MQTT users with a `mosquitto_sub` that must receive states. Only what the README allows is substituted: the data paths `./hearth-*` (into a temporary
//! directory), the ports (through `hub run --config`, a flag the README names, and the same
//! ports in the commands that use them) and the `<pin of SERIAL>` / `<id of SERIAL>` blanks a
//! person fills in from what the fleet and the hub printed. The shell's job control is the
//! test's: a line ending in `&` is a job it keeps, and `kill %N` stops its Nth job (SIGTERM). `bash scripts/test` is the one block
//! not run here: it is what runs this.
//!
//! The builds are real release builds of the README's commands, in their own target directory
//! (`target/readme`) with the release profile's optimisation turned down through cargo's
//! environment (`CARGO_PROFILE_RELEASE_OPT_LEVEL=0`), so that CI pays for one cheap build, not
//! an optimised one; the commands are unchanged. `scripts/test` builds them first with the same
//! variables, so the build does not compete with the timing of the other tests.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{free_tcp_port, free_udp_port, root, wait_for};

/// One `sh` block: the heading it is under and its command lines (continuations joined).
#[derive(Debug)]
struct Block {
    heading: String,
    lines: Vec<String>,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut current: Option<Vec<String>> = None;
    for line in readme.lines() {
        match &mut current {
            None if line.starts_with('#') => heading = line.trim_start_matches('#').trim().into(),
            None if line.trim() == "```sh" => current = Some(Vec::new()),
            None => {}
            Some(lines) if line.trim() == "```" => {
                out.push(Block { heading: heading.clone(), lines: std::mem::take(lines) });
                current = None;
            }
            Some(lines) => match lines.last_mut() {
                Some(last) if last.ends_with('\\') => {
                    last.pop();
                    last.push_str(line.trim_start());
                }
                _ if line.trim().is_empty() => {}
                _ => lines.push(line.to_owned()),
            },
        }
    }
    assert!(current.is_none(), "README.md has an unclosed ```sh block");
    out
}

/// A command left running (a line ending in `&`) and what it has printed.
struct Background {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Walk {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    coap: u16,
    mqtt_tls: u16,
    /// The upstream broker's port (8884 in the README).
    upstream: u16,
    background: Vec<Background>,
}

impl Walk {
    fn new() -> Walk {
        let dir = tempfile::tempdir().expect("tmp");
        let bin = dir.path().join("cargo/bin");
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let env = vec![
            ("PATH".into(), path),
            ("CARGO_INSTALL_ROOT".into(), dir.path().join("cargo").display().to_string()),
            ("CARGO_TARGET_DIR".into(), root().join("target/readme").display().to_string()),
            ("CARGO_PROFILE_RELEASE_OPT_LEVEL".into(), "0".into()),
            ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS".into(), "256".into()),
            ("CARGO_PROFILE_RELEASE_INCREMENTAL".into(), "true".into()),
            ("NO_COLOR".into(), "1".into()),
        ];
        let (coap, mqtt_tls) = (free_udp_port(), free_tcp_port());
        let config = format!(
            "coap_bind = \"127.0.0.1:{coap}\"\n[web]\nbind = \"127.0.0.1:0\"\n[mqtt]\n\
             plain_bind = \"127.0.0.1:{}\"\ntls_bind = \"127.0.0.1:{mqtt_tls}\"\nbroker_port = {}\n",
            free_tcp_port(),
            free_tcp_port()
        );
        std::fs::write(dir.path().join("ports.toml"), config).expect("ports.toml");
        Walk { dir, env, coap, mqtt_tls, upstream: free_tcp_port(), background: Vec::new() }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("hearth-data")
    }

    /// Everything the background commands have printed so far.
    fn printed(&self) -> Vec<String> {
        self.background
            .iter()
            .flat_map(|b| b.lines.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// `hub ctl --json ARGS` with the installed hub, against the walkthrough's hub.
    fn ctl(&self, args: &[&str]) -> Value {
        self.ctl_at(&self.data(), args)
    }

    /// `hub ctl --json ARGS` against the hub of data directory `data`.
    fn ctl_at(&self, data: &std::path::Path, args: &[&str]) -> Value {
        let out = Command::new(self.dir.path().join("cargo/bin/hub"))
            .args(["ctl", "--json", "--data-dir"])
            .arg(data)
            .args(args)
            .output()
            .expect("hub ctl");
        assert!(out.status.success(), "hub ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("hub ctl JSON")
    }

    /// The line with the README's substitutions made (data paths, ports, blanks).
    fn substitute(&self, line: &str) -> String {
        let tmp = self.dir.path().display().to_string();
        let mut s = line.replace("./hearth-", &format!("{tmp}/hearth-"));
        // The ports go into the hub's configuration: the test's own, or the README's file with
        // the test's sections first.
        s = match s.strip_prefix("hub run --config ") {
            Some(rest) => {
                let (file, rest) = rest.split_once(' ').unwrap_or((rest, ""));
                let merged = format!("{tmp}/merged.toml");
                let ports = std::fs::read_to_string(format!("{tmp}/ports.toml")).expect("ports");
                let theirs = std::fs::read_to_string(file).expect("the README's config file");
                std::fs::write(&merged, format!("{ports}{theirs}")).expect("merged config");
                format!("hub run --config {merged} {rest}")
            }
            None => s.replace("hub run ", &format!("hub run --config {tmp}/ports.toml ")),
        };
        s = s.replace("8884", &self.upstream.to_string());
        s = s.replace("127.0.0.1:5683", &format!("127.0.0.1:{}", self.coap));
        s = s.replace("-p 8883", &format!("-p {}", self.mqtt_tls));
        while let Some(start) = s.find("<pin of ") {
            let end = start + s[start..].find('>').expect("closing >");
            let serial = s[start + 8..end].to_owned();
            let pin = wait_for(&format!("the PIN of {serial}"), Duration::from_secs(60), || {
                self.printed().iter().rev().find_map(|l| {
                    (l.starts_with("PIN ") && tests::field(l, "serial") == Some(serial.as_str()))
                        .then(|| tests::field(l, "pin").map(str::to_owned))
                        .flatten()
                })
            });
            s.replace_range(start..=end, &pin);
        }
        while let Some(start) = s.find("<id of ") {
            let end = start + s[start..].find('>').expect("closing >");
            let serial = s[start + 7..end].to_owned();
            let id = wait_for(&format!("the id of {serial}"), Duration::from_secs(60), || {
                self.ctl(&["devices"]).as_array()?.iter().find_map(|d| {
                    (d["serial"] == serial.as_str()).then(|| d["id"].as_str().map(str::to_owned))?
                })
            });
            s.replace_range(start..=end, &id);
        }
        s
    }

    fn command(&self, line: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg("-c").arg(line).current_dir(root()).stdin(Stdio::null());
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Runs `line` to its end within `within`: its exit status and output.
    fn run(&self, line: &str, within: Duration) -> (bool, String) {
        let mut child =
            self.command(line).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("bash");
        let mut readers = Vec::new();
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            readers.push(std::thread::spawn(move || {
                let mut text = String::new();
                let _ = BufReader::new(stream).read_to_string(&mut text);
                text
            }));
        }
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let output: String = readers.into_iter().filter_map(|r| r.join().ok()).collect();
        match status {
            Some(s) => (s.success(), output),
            None => panic!("`{line}` did not end within {within:?}:\n{output}"),
        }
    }

    /// Starts `line` in the background (the README's `… &`); a hub is waited for until READY.
    fn start(&mut self, line: &str) {
        let mut child = self
            .command(&format!("exec {line}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("bash");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(l);
            }
        });
        let hub = line.starts_with("hub run");
        self.background.push(Background { child, lines: Arc::clone(&lines) });
        if hub {
            wait_for("the hub's READY line", Duration::from_secs(60), || {
                let seen = lines.lock().unwrap_or_else(|e| e.into_inner());
                seen.iter().any(|l| l.starts_with("READY")).then_some(())
            });
        }
    }

    /// `kill %job`: SIGTERM to the job-th command left running, and waits for it to end.
    fn stop(&mut self, job: usize) {
        let b = &mut self.background[job - 1];
        let pid = b.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        wait_for(&format!("job {job} to end"), Duration::from_secs(30), || {
            b.child.try_wait().ok().flatten().map(drop)
        });
    }

    /// Waits until the fleet printed that sensor `index` runs firmware `version`.
    fn updated(&self, index: usize, version: u32) {
        let prefix = format!("UPDATED sensor={index} version={version} ");
        wait_for(&format!("sensor {index} on v{version}"), Duration::from_secs(240), || {
            self.printed().iter().find(|l| l.starts_with(&prefix)).map(|l| {
                assert_eq!(tests::field(l, "outcome"), Some("Installed"), "{l}");
            })
        });
    }
}

fn is_install(line: &str) -> bool {
    line.starts_with("cargo ")
}

#[test]
fn every_sh_block_of_the_readme_runs_verbatim_in_order() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let blocks = blocks(&readme);
    let mut walk = Walk::new();
    let mut ran = 0;
    for block in &blocks {
        for line in &block.lines {
            if line == "bash scripts/test" {
                continue;
            }
            let line = walk.substitute(line);
            if let Some(background) = line.strip_suffix('&') {
                walk.start(background.trim_end());
            } else if let Some(job) = line.strip_prefix("kill %") {
                walk.stop(job.trim().parse().expect("a job number"));
            } else {
                let within = Duration::from_secs(if is_install(&line) { 3600 } else { 120 });
                let (ok, output) = walk.run(&line, within);
                assert!(ok, "README ({}): `{line}` failed:\n{output}", block.heading);
                if line.ends_with("security --check") {
                    // As the README says: the button past its support period is named.
                    assert!(
                        output.contains("5.3-13 Support period published; devices past it are named is not met. Devices: ")
                            && output.contains("BT-00003"),
                        "{output}"
                    );
                }
            }
            ran += 1;
        }
        // What a person waits to see before going on, checked where the README says it.
        let text = block.lines.join("\n");
        if text.contains("--version 2") {
            // The two thermostats (sensors 0 and 4) install v2 by themselves.
            walk.updated(0, 2);
            walk.updated(4, 2);
        }
        if text.contains("update approve --version 3") {
            walk.updated(0, 3);
            walk.updated(4, 3);
        }
        if text.contains("maker advisory") {
            let devices = walk.ctl(&["devices"]);
            let door = devices
                .as_array()
                .and_then(|d| d.iter().find(|d| d["serial"] == "DR-00002"))
                .expect("the door contact");
            assert!(!door["isolation"].is_null(), "the door is not isolated: {door}");
        }
        if text.contains("[upstream]") {
            // The restarted hub forwards to the broker the README set up.
            wait_for("readings forwarded upstream", Duration::from_secs(60), || {
                let u = walk.ctl(&["upstream"]);
                (u["connected"] == true && u["forwarded"].as_u64() > Some(0)).then_some(())
            });
        }
        if text.contains("kill %1") {
            // The sensors buffered through the outage and delivered it all to the new hub.
            wait_for("a sensor drained its outage buffer", Duration::from_secs(120), || {
                let printed = walk.printed();
                let drains = printed.iter().filter(|l| l.starts_with("DRAIN ")).count();
                let drained = printed.iter().filter(|l| l.starts_with("DRAINED ")).count();
                (drains > 0 && drained >= drains).then_some(())
            });
        }
        if text.contains("--replaces <id of TH-00004>") {
            let devices = walk.ctl(&["devices"]);
            let serials: Vec<&str> = devices
                .as_array()
                .map(|d| d.iter().filter_map(|d| d["serial"].as_str()).collect())
                .unwrap_or_default();
            assert!(
                serials.contains(&"TH-00100") && !serials.contains(&"TH-00004"),
                "the replacement: {serials:?}"
            );
        }
        if text.contains("hub restore") {
            // As the README says: the sensors take the new gateway's keys without pairing
            // again, and it has every device.
            let new = walk.dir.path().join("hearth-new");
            wait_for("sensors renewed with the new gateway", Duration::from_secs(120), || {
                let renewed = walk.printed().iter().filter(|l| l.starts_with("RENEWED ")).count();
                (renewed >= 2).then_some(())
            });
            let devices = walk.ctl_at(&new, &["devices"]);
            assert_eq!(devices.as_array().map(Vec::len), Some(5), "{devices}");
        }
        if text.contains("pair pin <pin of TH-00004>") {
            wait_for("five devices paired", Duration::from_secs(30), || {
                (walk.ctl(&["devices"]).as_array().map(Vec::len) == Some(5)).then_some(())
            });
        }
    }
    for must in ["cargo install", "hub run", "pair pin", "update approve", "mosquitto_sub"] {
        assert!(
            blocks.iter().flat_map(|b| &b.lines).any(|l| l.contains(must)),
            "the README's walkthroughs lost their `{must}` step"
        );
    }
    eprintln!("readme: {ran} commands from {} sh blocks ran as written", blocks.len());
}
