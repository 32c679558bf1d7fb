//! The simulated manufacturer: keys, signed releases and advisories, and its HTTPS feed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::bin;

/// The simulated manufacturer: a key pair, a feed directory, and (optionally) its HTTPS server.
#[derive(Debug)]
pub struct Maker {
    /// Key directory.
    pub keys: PathBuf,
    /// Feed directory.
    pub feed: PathBuf,
    /// Public key, hex.
    pub public: String,
    server: Option<Child>,
}

impl Maker {
    /// Generates a key pair under `dir`.
    pub fn new(dir: &Path) -> Maker {
        let keys = dir.join("maker-keys");
        let out = Command::new(bin("sensor-sim"))
            .args(["maker", "keygen", "--keys"])
            .arg(&keys)
            .output()
            .expect("keygen");
        assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let public = text.trim().strip_prefix("KEY ").expect("KEY line").to_string();
        Maker { keys, feed: dir.join("feed"), public, server: None }
    }

    /// Publishes a release; `extra` are further `maker publish` flags.
    pub fn publish(&self, model: &str, version: u32, size: usize, extra: &[&str]) {
        let out = Command::new(bin("sensor-sim"))
            .args(["maker", "publish", "--keys"])
            .arg(&self.keys)
            .arg("--feed")
            .arg(&self.feed)
            .args([
                "--model",
                model,
                "--version",
                &version.to_string(),
                "--size",
                &size.to_string(),
            ])
            .args(extra)
            .output()
            .expect("publish");
        assert!(out.status.success(), "publish: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Signs and publishes an advisory for `model` versions `low..=high`.
    pub fn advisory(&self, model: &str, low: u32, high: u32, fixed_in: Option<u32>, text: &str) {
        let (low, high) = (low.to_string(), high.to_string());
        let fixed = fixed_in.map(|v| v.to_string());
        let mut args = vec!["--model", model, "--low", &low, "--high", &high, "--text", text];
        if let Some(f) = &fixed {
            args.extend(["--fixed-in", f.as_str()]);
        }
        let out = Command::new(bin("sensor-sim"))
            .args(["maker", "advisory", "--keys"])
            .arg(&self.keys)
            .arg("--feed")
            .arg(&self.feed)
            .args(["--severity", "critical"])
            .args(&args)
            .output()
            .expect("advisory");
        assert!(out.status.success(), "advisory: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Paths of a published release's manifest and image.
    pub fn files(&self, model: &str, version: u32) -> (PathBuf, PathBuf) {
        let index: Value =
            serde_json::from_slice(&std::fs::read(self.feed.join("feed.json")).expect("feed.json"))
                .expect("json");
        let e = index["releases"]
            .as_array()
            .and_then(|r| r.iter().find(|e| e["model"] == model && e["version"] == version))
            .expect("release in feed");
        (
            self.feed.join(e["manifest"].as_str().expect("m")),
            self.feed.join(e["image"].as_str().expect("i")),
        )
    }

    /// Serves the feed over HTTPS; returns (url, certificate file).
    pub fn serve(&mut self, dir: &Path) -> (String, PathBuf) {
        std::fs::create_dir_all(&self.feed).expect("feed dir");
        let mut child = Command::new(bin("sensor-sim"))
            .args(["maker", "serve", "--feed"])
            .arg(&self.feed)
            .arg("--tls")
            .arg(dir.join("feed-tls"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("FEED line");
        self.server = Some(child);
        let mut parts = line.split_whitespace().skip(1);
        let url = parts.next().expect("url").to_string();
        let cert = PathBuf::from(parts.next().expect("cert"));
        (url, cert)
    }

    /// The `[updates]` trust entries for `models`.
    pub fn trust_toml(&self, models: &[&str]) -> String {
        models
            .iter()
            .map(|m| format!("[[updates.trust]]\nmodel = \"{m}\"\nkey = \"{}\"\n", self.public))
            .collect()
    }
}

impl Drop for Maker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.server {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
