//! A real Home Assistant Core for interop tests: started in a temporary config directory on a
//! free loopback port, onboarded and given the MQTT integration through its own HTTP API (the
//! steps its frontend takes; `tests/ha/driver.py` makes the requests), then read through
//! `/api/states` and driven through `/api/services`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The venv Home Assistant runs from: `HEARTH_HA_VENV`, else `.ha-venv/` in the repository
/// (`bash scripts/test` creates it).
pub fn venv() -> PathBuf {
    std::env::var_os("HEARTH_HA_VENV").map_or_else(|| crate::root().join(".ha-venv"), PathBuf::from)
}

fn driver() -> PathBuf {
    crate::root().join("tests/ha/driver.py")
}

/// A running Home Assistant Core.
#[derive(Debug)]
pub struct HomeAssistant {
    child: Option<Child>,
    /// Its config directory.
    pub dir: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The owner's access token (after [`HomeAssistant::onboard`]).
    pub token: String,
}

impl HomeAssistant {
    /// Starts Home Assistant with a fresh config in `dir` and waits until its HTTP API answers.
    pub fn start(dir: &Path) -> HomeAssistant {
        let hass = venv().join("bin/hass");
        assert!(
            hass.exists(),
            "no Home Assistant at {} (bash scripts/test installs it; or set HEARTH_HA_VENV)",
            hass.display()
        );
        std::fs::create_dir_all(dir).expect("HA config dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let base = format!("http://127.0.0.1:{port}");
        // Only what the test needs: no default_config (it reaches for the internet).
        let config = format!(
            "homeassistant:\n  name: Hearth test\n  unit_system: metric\n  time_zone: UTC\n  \
             latitude: 0\n  longitude: 0\n  elevation: 0\n  currency: EUR\n  country: DE\n  \
             internal_url: \"{base}\"\nhttp:\n  server_host: 127.0.0.1\n  server_port: {port}\n\
             api:\nconfig:\nonboarding:\nauth:\nlogger:\n  default: warning\n"
        );
        std::fs::write(dir.join("configuration.yaml"), config).expect("HA configuration");
        let mut ha = HomeAssistant { child: None, dir: dir.to_owned(), base, token: String::new() };
        ha.spawn();
        ha
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("ha-stdout.log"))
            .expect("HA log");
        let err = log.try_clone().expect("HA log");
        let child = Command::new(venv().join("bin/hass"))
            .arg("-c")
            .arg(&self.dir)
            // paho-mqtt is installed in the venv already; HA would otherwise reach for PyPI.
            .args(["--skip-pip-packages", "paho-mqtt"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start Home Assistant");
        self.child = Some(child);
        let out = self.run(&["ready", &self.base.clone(), "180"]);
        assert!(out.is_ok(), "Home Assistant did not come up: {out:?}\n{}", self.log_tail());
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(venv().join("bin/python"))
            .arg(driver())
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Onboards it (creates the owner) and keeps the owner's access token.
    pub fn onboard(&mut self) {
        let token = self.run(&["onboard", &self.base.clone()]);
        self.token = token.unwrap_or_else(|e| panic!("HA onboarding failed: {e}"));
        assert!(!self.token.is_empty());
    }

    /// Adds the MQTT integration through its config flow (plain MQTT on `port` of 127.0.0.1).
    pub fn add_mqtt(&self, port: u16, user: &str, password: &str) -> Value {
        let out = self.run(&[
            "mqtt",
            &self.base,
            &self.token,
            "127.0.0.1",
            &port.to_string(),
            user,
            password,
        ]);
        let out = out.unwrap_or_else(|e| panic!("adding MQTT to HA failed: {e}"));
        serde_json::from_str(&out).expect("config entry JSON")
    }

    /// Every entity's state (`/api/states`), by entity id.
    pub fn states(&self) -> std::collections::BTreeMap<String, Value> {
        let out = self.run(&["states", &self.base, &self.token]);
        let out = out.unwrap_or_else(|e| panic!("reading HA states failed: {e}"));
        let all: Vec<Value> = serde_json::from_str(&out).expect("states JSON");
        all.into_iter().filter_map(|s| Some((s["entity_id"].as_str()?.to_owned(), s))).collect()
    }

    /// Calls a service (`POST /api/services/<domain>/<service>`).
    pub fn call(&self, domain: &str, service: &str, body: &Value) -> Result<Value, String> {
        let out =
            self.run(&["call", &self.base, &self.token, domain, service, &body.to_string()])?;
        serde_json::from_str(&out).map_err(|e| e.to_string())
    }

    /// Stops it cleanly (SIGTERM) and waits, then starts it again on the same config and port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops it cleanly (SIGTERM), killing it if it takes over a minute.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The end of HA's own log (`home-assistant.log`) and its stdout/stderr.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        for f in ["home-assistant.log", "ha-stdout.log"] {
            let t = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            text.push_str(&lines[lines.len().saturating_sub(40)..].join("\n"));
            text.push('\n');
        }
        text
    }

    /// HA's log so far (`home-assistant.log`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("home-assistant.log")).unwrap_or_default()
    }
}

impl Drop for HomeAssistant {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
