//! The Debian package as an owner installs it (root only; CI runs as root): `scripts/package`
//! builds it, `dpkg -i` installs it, `systemd-analyze` verifies the installed unit and rates its
//! sandbox, and the hub starts from the unit's own `ExecStart` line as its `User=`, with the
//! state directory, umask, capability bounding set, no-new-privileges and environment that
//! systemd would give it (no systemd runs here) — in a network namespace of its own, so the
//! packaged defaults (0.0.0.0:8443, …) collide with nothing on the machine. Then `hub ctl` as
//! that user, a clean stop on SIGTERM, and `dpkg --purge`, which leaves nothing running or
//! installed (so a second run starts from the same state).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{bin, root, wait_for};

/// Where the package puts the unit.
const UNIT: &str = "/lib/systemd/system/hearth.service";
/// Left by this test in the state directory it makes, so that a later run knows the data
/// there is its own (and never erases an owner's).
const MARKER: &str = ".made-by-hearth-tests";

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The `[Service]` settings of a unit file, in order (a key may repeat).
struct Unit(Vec<(String, String)>);

impl Unit {
    fn read(path: &str) -> Unit {
        let body = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut section = String::new();
        let mut service = Vec::new();
        let mut pending = String::new();
        for raw in body.lines() {
            let line = raw.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
                continue;
            }
            // A trailing backslash continues the line (systemd.syntax(7)).
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if line.starts_with('[') {
                section = line.trim_matches(['[', ']']).to_owned();
            } else if let Some((k, v)) = line.split_once('=')
                && section == "Service"
            {
                service.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        Unit(service)
    }

    /// The value in force (the last assignment).
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// `ExecStart=` as systemd runs it (systemd.service(5), "Command lines"): the special prefixes
/// dropped, words split on whitespace with quotes, `$NAME` and `${NAME}` replaced from the
/// service's environment.
fn command_line(exec: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    let exec = exec.trim_start_matches(['@', '-', ':', '+', '!']);
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut chars = exec.chars().peekable();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '"' | '\'') => (quote, in_word) = (Some(c), true),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (_, '$') => {
                let braced = chars.peek() == Some(&'{');
                if braced {
                    chars.next();
                }
                let mut name = String::new();
                while let Some(&n) = chars.peek() {
                    if braced && n == '}' {
                        chars.next();
                        break;
                    }
                    if !(braced || n.is_ascii_alphanumeric() || n == '_') {
                        break;
                    }
                    name.push(n);
                    chars.next();
                }
                let value = env.get(&name).unwrap_or_else(|| panic!("ExecStart uses ${name}"));
                word.push_str(value);
                in_word = true;
            }
            (_, '\\') => {
                word.extend(chars.next());
                in_word = true;
            }
            (_, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// `getent passwd NAME`: (uid, gid, home, shell).
fn passwd(name: &str) -> Option<(u32, u32, String, String)> {
    let out = run("getent", &["passwd", name]);
    let line = text(&out.stdout);
    let f: Vec<&str> = line.trim().split(':').collect();
    match f.as_slice() {
        [_, _, uid, gid, _, home, shell] => {
            Some((uid.parse().ok()?, gid.parse().ok()?, (*home).into(), (*shell).into()))
        }
        _ => None,
    }
}

/// `dpkg ARGS`, waiting while another dpkg or apt holds the lock.
fn dpkg(args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = run("dpkg", args);
        let locked = !out.status.success() && text(&out.stderr).contains("lock");
        if !locked || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Everything this test installs or starts goes again, however it ends.
struct Installed {
    hub: Option<Child>,
}

impl Installed {
    fn purge(&mut self) -> Output {
        if let Some(mut c) = self.hub.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        dpkg(&["--purge", "hearth"])
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        self.purge();
    }
}

#[test]
fn the_debian_package_installs_and_its_unit_runs_the_hub() {
    if !is_root() {
        eprintln!(
            "package:: skipped: installing the Debian package (dpkg -i) and running the hub as \
             its service user need root; CI runs as root"
        );
        return;
    }
    // One run at a time on this machine (another worktree's tests may run now too).
    let lock = std::fs::File::create("/run/lock/hearth-package-test.lock").expect("lock file");
    lock.lock().expect("lock");
    let state_root = Path::new("/var/lib/hearth");
    assert!(
        !state_root.exists() || state_root.join(MARKER).exists(),
        "/var/lib/hearth holds a Hearth installation's data that these tests did not make; \
         they install and purge the hearth package, so run them on another machine (or \
         `dpkg --purge hearth` first if that data can go)"
    );

    // Build the package from the hub the tests use (the release build is the same code).
    let tmp = tempfile::tempdir().expect("tmp");
    let hub_bin = bin("hub");
    let built = Command::new("bash")
        .arg(root().join("scripts/package"))
        .arg("--binary")
        .arg(&hub_bin)
        .arg("--out")
        .arg(tmp.path())
        .arg("--fast")
        .output()
        .expect("scripts/package");
    assert!(built.status.success(), "scripts/package: {}", text(&built.stderr));
    let deb = text(&built.stdout).lines().last().map(PathBuf::from).expect("package path");
    assert!(deb.is_file(), "{}", deb.display());

    let mut installed = Installed { hub: None };
    let out = dpkg(&["-i", deb.to_str().expect("utf-8")]);
    assert!(out.status.success(), "dpkg -i: {}{}", text(&out.stdout), text(&out.stderr));

    // What it installed: the binary, the conffile, the unit, the service user.
    let version = |b: &Path| text(&Command::new(b).arg("--version").output().expect("run").stdout);
    assert_eq!(version(Path::new("/usr/bin/hub")), version(&hub_bin));
    assert!(version(&hub_bin).starts_with("hub "), "hub --version: {}", version(&hub_bin));
    let example = std::fs::read_to_string(root().join("hearth.example.toml")).expect("example");
    assert_eq!(std::fs::read_to_string("/etc/hearth/hearth.toml").expect("config"), example);
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", "hearth"]);
    assert!(text(&conffiles.stdout).contains("/etc/hearth/hearth.toml"), "a conffile");
    assert!(!Path::new("/usr/bin/sensor-sim").exists(), "the simulator is not in the package");

    // The unit as installed: systemd-analyze finds nothing to say, and rates its sandbox.
    let verify = run("systemd-analyze", &["verify", UNIT]);
    let said = text(&verify.stdout) + &text(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    let security = run(
        "systemd-analyze",
        &["security", "--offline=yes", "--threshold=20", "--no-pager", UNIT],
    );
    let rating = text(&security.stdout);
    assert!(
        security.status.success(),
        "exposure above 2.0: {}",
        rating.lines().last().unwrap_or_default()
    );
    let unit = Unit::read(UNIT);
    for (key, value) in [
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("Restart", "on-failure"),
        ("StateDirectory", "hearth"),
    ] {
        assert_eq!(unit.get(key), Some(value), "{key}= in the unit");
    }
    let user = unit.get("User").expect("User=");
    let group = unit.get("Group").unwrap_or(user);
    let (uid, gid, home, shell) = passwd(user).expect("the package made the service user");
    assert!(uid < 1000 && uid != 0, "a system user, not root: uid {uid}");
    assert!(shell.ends_with("nologin") || shell.ends_with("false"), "no login shell: {shell}");

    // The state directory as systemd makes it (StateDirectory=, StateDirectoryMode=).
    let state = Path::new("/var/lib").join(unit.get("StateDirectory").expect("StateDirectory"));
    std::fs::create_dir_all(&state).expect("state dir");
    // The marker is private like everything there (the hub tightens anything more open).
    let marker = state.join(MARKER);
    std::fs::write(&marker, "").expect("marker");
    std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let owner = format!("{user}:{group}");
    for path in [&state, &marker] {
        let chown = run("chown", &[&owner, path.to_str().expect("utf-8")]);
        assert!(chown.status.success(), "chown {owner} {}", path.display());
    }
    let mode = unit.get("StateDirectoryMode").map_or(Ok(0o755), |m| u32::from_str_radix(m, 8));
    let mode = mode.expect("octal StateDirectoryMode");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(mode)).expect("chmod");

    // The environment systemd gives a service with User= (systemd.exec(5), "Environment").
    let mut env: BTreeMap<String, String> = [
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        ("HOME", home.as_str()),
        ("SHELL", shell.as_str()),
        ("USER", user),
        ("LOGNAME", user),
        ("STATE_DIRECTORY", state.to_str().expect("utf-8")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (_, v) in unit.0.iter().filter(|(k, _)| k == "Environment") {
        for word in command_line(v, &env) {
            let (name, value) = word.split_once('=').expect("Environment=NAME=value");
            env.insert(name.into(), value.into());
        }
    }
    let argv = command_line(unit.get("ExecStart").expect("ExecStart"), &env);
    assert_eq!(argv.first().map(String::as_str), Some("/usr/bin/hub"), "{argv:?}");

    // systemd's switch to the service user, by setpriv: its uid, gid and groups, an empty
    // capability bounding set, no new privileges, the umask, only that environment, cwd `/`.
    let mut setpriv = vec![
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--init-groups".into(),
        "--inh-caps=-all".into(),
    ];
    if unit.get("CapabilityBoundingSet") == Some("") {
        setpriv.push("--bounding-set=-all".into());
    }
    if unit.get("NoNewPrivileges") == Some("yes") {
        setpriv.push("--no-new-privs".into());
    }
    let umask = unit.get("UMask").unwrap_or("0022");
    let log = tmp.path().join("hub.log");
    let mut command = Command::new("unshare");
    command
        .args(["--net", "--", "sh", "-c"])
        .arg(format!("ip link set lo up && umask {umask} && exec \"$@\""))
        .arg("sh")
        .arg("setpriv")
        .args(&setpriv)
        .args(["--", "env", "-i"])
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .args(&argv)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"));
    let mut child = command.spawn().expect("start the service's command line");
    let stdout = child.stdout.take().expect("stdout");
    let pid = child.id();
    installed.hub = Some(child);
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.starts_with("READY ") => break l,
            Ok(_) => {}
            Err(_) => panic!("the service's hub did not print READY; log:\n{}", log_text()),
        }
    };
    let ready: Value = serde_json::from_str(&ready["READY ".len()..]).expect("READY json");
    // The packaged configuration is the defaults, and this is what it serves.
    assert_eq!(ready["coap"], "0.0.0.0:5683", "{ready}");
    assert_eq!(ready["web"], "0.0.0.0:8443", "{ready}");
    assert_eq!(ready["mqtt"], "127.0.0.1:1883", "{ready}");
    assert_eq!(ready["mqtt_tls"], "0.0.0.0:8883", "{ready}");
    let control = state.join("control.sock");
    assert_eq!(ready["control"], control.to_str().expect("utf-8"), "{ready}");

    // The owner's `hub ctl`, as the service user (the socket admits only the hub's own user).
    let ctl = |as_service_user: bool, args: &[&str]| {
        let mut c = Command::new("setpriv");
        if as_service_user {
            c.arg(format!("--reuid={uid}")).arg(format!("--regid={gid}")).arg("--init-groups");
        }
        c.args(["--", "/usr/bin/hub", "ctl", "--data-dir", state.to_str().expect("utf-8")])
            .arg("--json")
            .args(args)
            .output()
            .expect("hub ctl")
    };
    let opened = ctl(true, &["pair", "open", "--seconds", "60"]);
    assert!(opened.status.success(), "hub ctl pair open: {}", text(&opened.stderr));
    let status = ctl(true, &["pair", "status"]);
    let status: Value = serde_json::from_slice(&status.stdout).expect("pair status json");
    assert_eq!(status["open"], true, "{status}");
    let devices: Value = serde_json::from_slice(&ctl(true, &["devices"]).stdout).expect("json");
    assert_eq!(devices, serde_json::json!([]));
    let as_root = ctl(false, &["devices"]);
    assert!(!as_root.status.success(), "root is not the hub's user: refused");

    // Its data belongs to the service user and is private to it.
    for entry in std::fs::read_dir(&state).expect("state dir").map_while(Result::ok) {
        if entry.file_name() == MARKER {
            continue;
        }
        let meta = entry.metadata().expect("metadata");
        assert_eq!(meta.uid(), uid, "{} belongs to the service user", entry.path().display());
        assert_eq!(meta.mode() & 0o077, 0, "{} is private", entry.path().display());
    }
    assert!(state.join("setup-code").is_file(), "the first start's setup code");

    // SIGTERM (what systemctl stop sends) stops it cleanly.
    let term = run("kill", &["-TERM", &pid.to_string()]);
    assert!(term.status.success());
    let exit = wait_for("the hub to stop", Duration::from_secs(60), || {
        installed.hub.as_mut().and_then(|c| c.try_wait().ok().flatten())
    });
    assert!(exit.success(), "a clean stop exits 0: {exit}; log:\n{}", log_text());
    installed.hub = None;

    // Its log (journald's view) is plain text: no colour codes off a terminal.
    let logged = log_text();
    assert!(logged.contains("INFO"), "the hub logged at info: {logged}");
    assert!(!logged.contains('\u{1b}'), "no ANSI escapes in the log: {logged:?}");

    // Purged, nothing of it is left but the user (Debian keeps system users).
    let purged = installed.purge();
    assert!(purged.status.success(), "dpkg --purge: {}", text(&purged.stderr));
    for gone in ["/usr/bin/hub", UNIT, "/etc/hearth/hearth.toml", "/var/lib/hearth"] {
        assert!(!Path::new(gone).exists(), "{gone} is gone after the purge");
    }
    assert!(passwd(user).is_some(), "the service user stays");
}
