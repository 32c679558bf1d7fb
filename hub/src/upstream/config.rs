//! `[upstream]` settings: where the bridge forwards readings (none: the hub works fully locally,
//! EN 303 645 5.9-2), how it authenticates, and the outbox bound. Secrets stay in a 0600 file.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The upstream broker and how to reach it.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `mqtts://host:port` (TLS), or `mqtt://` to a loopback host only.
    pub url: String,
    /// User name, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// A file (mode 0600) holding the password; the secret itself is never in the TOML.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM certificate(s) to trust for the broker (the only trust anchors: a pin).
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Topic prefix (default `hearth/<hub name>`); readings go to `<prefix>/<device>/reading`.
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// MQTT client id (default `hearth-<hub name>`); the broker keeps the session under it.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Readings the outbox holds for the broker at most; older ones are dropped and counted.
    #[serde(default = "default_max_pending")]
    pub max_pending: u64,
    /// Longest wait between reconnection attempts, milliseconds (jittered exponential back-off).
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// QoS 2 publishes in flight at most. It must not exceed what the broker accepts from one
    /// client (mosquitto's `max_inflight_messages`, default 20): MQTT 3.1.1 has no way to say
    /// so, and mosquitto 2.0 silently discards a publish beyond it.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u16,
}

fn default_max_in_flight() -> u16 {
    16
}

fn default_max_pending() -> u64 {
    1_000_000
}

fn default_reconnect_max_ms() -> u64 {
    30_000
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// TLS (`mqtts://`).
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// Why the upstream cannot be used (the key is named).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamConfigError {
    /// A setting is wrong.
    #[error("`upstream.{key}` {reason}")]
    Invalid {
        /// The key below `[upstream]`.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A file named by a setting cannot be used.
    #[error("`upstream.{key}` ({path}): {reason}")]
    File {
        /// The key below `[upstream]`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> UpstreamConfigError {
    UpstreamConfigError::Invalid { key, reason: reason.into() }
}

impl UpstreamConfig {
    /// Checks every setting that needs no file; the error names the key.
    pub fn validate(&self) -> Result<Endpoint, UpstreamConfigError> {
        let endpoint = parse_url(&self.url)?;
        if endpoint.tls && self.ca_cert.is_none() {
            return Err(invalid("ca_cert", "is required with mqtts:// (the broker's CA to pin)"));
        }
        if self.password_file.is_some() && self.username.is_none() {
            return Err(invalid("username", "is required with upstream.password_file"));
        }
        if let Some(u) = &self.username
            && (u.is_empty() || u.len() > 256 || u.chars().any(char::is_control))
        {
            return Err(invalid("username", "must be 1 to 256 printable characters"));
        }
        if let Some(p) = &self.topic_prefix {
            check_prefix(p)?;
        }
        if let Some(c) = &self.client_id
            && (c.is_empty() || c.len() > 64 || !c.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err(invalid("client_id", "must be 1 to 64 printable ASCII characters"));
        }
        if !(1..=1_000_000_000).contains(&self.max_pending) {
            return Err(invalid("max_pending", "must be 1 to 1000000000"));
        }
        if !(100..=3_600_000).contains(&self.reconnect_max_ms) {
            return Err(invalid("reconnect_max_ms", "must be 100 to 3600000"));
        }
        if !(1..=1000).contains(&self.max_in_flight) {
            return Err(invalid("max_in_flight", "must be 1 to 1000"));
        }
        Ok(endpoint)
    }

    /// The password from `password_file`, which must be private to its owner (0600).
    pub fn password(&self) -> Result<Option<String>, UpstreamConfigError> {
        let Some(path) = &self.password_file else { return Ok(None) };
        let file_err = |reason: String| UpstreamConfigError::File {
            key: "password_file",
            path: path.clone(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| file_err(e.to_string()))?;
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(file_err("must not be readable by others (chmod 600)".into()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        let password = text.trim_end_matches(['\n', '\r']).to_string();
        if password.is_empty() {
            return Err(file_err("is empty".into()));
        }
        Ok(Some(password))
    }

    /// The CA certificate(s) PEM, if configured.
    pub fn ca_pem(&self) -> Result<Option<String>, UpstreamConfigError> {
        let Some(path) = &self.ca_cert else { return Ok(None) };
        std::fs::read_to_string(path).map(Some).map_err(|e| UpstreamConfigError::File {
            key: "ca_cert",
            path: path.clone(),
            reason: e.to_string(),
        })
    }

    /// The topic prefix (configured, or `hearth/<hub name>`).
    pub fn prefix(&self, hub_name: &str) -> String {
        self.topic_prefix.clone().unwrap_or_else(|| format!("hearth/{hub_name}"))
    }

    /// The client id (configured, or `hearth-<hub name>`).
    pub fn client_id(&self, hub_name: &str) -> String {
        self.client_id.clone().unwrap_or_else(|| format!("hearth-{hub_name}"))
    }
}

/// The hub's name for default topics: the host name, made topic-safe.
pub(crate) fn hub_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(48)
        .collect();
    if name.is_empty() { "hub".into() } else { name }
}

fn check_prefix(p: &str) -> Result<(), UpstreamConfigError> {
    let bad = p.is_empty()
        || p.len() > 128
        || p.starts_with('$')
        || p.starts_with('/')
        || p.ends_with('/')
        || p.contains(['+', '#', '\0'])
        || p.split('/').any(str::is_empty);
    if bad {
        return Err(invalid(
            "topic_prefix",
            "must be 1 to 128 characters of topic levels, without wildcards, `$` or empty levels",
        ));
    }
    Ok(())
}

/// Parses `mqtts://host[:port]` or `mqtt://loopback[:port]`.
fn parse_url(url: &str) -> Result<Endpoint, UpstreamConfigError> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(invalid("url", "must start with mqtts:// (or mqtt:// for a loopback host)"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) =
            v6.split_once(']').ok_or_else(|| invalid("url", "has an unclosed `[` in its host"))?;
        (h, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
        return Err(invalid("url", "must name a host (no user, path or query)"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid("url", "has a bad port (1 to 65535)"))?,
        None if tls => 8883,
        None => 1883,
    };
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !tls && !loopback {
        return Err(invalid("url", "must be mqtts:// unless the broker is on loopback"));
    }
    Ok(Endpoint { tls, host: host.to_string(), port })
}

/// Where the outbox cursor is kept in the data directory.
pub(crate) fn cursor_path(data_dir: &Path) -> PathBuf {
    data_dir.join("upstream.cursor")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> UpstreamConfig {
        UpstreamConfig {
            url: url.into(),
            username: None,
            password_file: None,
            ca_cert: Some("ca.pem".into()),
            topic_prefix: None,
            client_id: None,
            max_pending: 10,
            reconnect_max_ms: 1000,
            max_in_flight: 16,
        }
    }

    fn key(r: Result<Endpoint, UpstreamConfigError>) -> &'static str {
        match r {
            Err(UpstreamConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn urls_parse_and_plain_mqtt_is_loopback_only() {
        let e = cfg("mqtts://broker.example:8884").validate().expect("valid");
        assert_eq!(e, Endpoint { tls: true, host: "broker.example".into(), port: 8884 });
        assert_eq!(cfg("mqtts://10.0.0.2").validate().expect("valid").port, 8883);
        let e = cfg("mqtt://[::1]:1884").validate().expect("valid");
        assert_eq!((e.tls, e.host.as_str(), e.port), (false, "::1", 1884));
        assert_eq!(cfg("mqtt://127.0.0.5").validate().expect("valid").port, 1883);
        assert_eq!(key(cfg("mqtt://10.0.0.2:1883").validate()), "url");
        assert_eq!(key(cfg("http://x").validate()), "url");
        assert_eq!(key(cfg("mqtts://x:0").validate()), "url");
        assert_eq!(key(cfg("mqtts://x:99999").validate()), "url");
        assert_eq!(key(cfg("mqtts://u@x").validate()), "url");
        assert_eq!(key(cfg("mqtts://").validate()), "url");
        assert_eq!(key(cfg("mqtts://[::1").validate()), "url");
        let no_ca = UpstreamConfig { ca_cert: None, ..cfg("mqtts://x") };
        assert_eq!(key(no_ca.validate()), "ca_cert");
    }

    #[test]
    fn other_keys_are_checked_and_named() {
        let c = |f: &dyn Fn(&mut UpstreamConfig)| {
            let mut c = cfg("mqtts://x");
            f(&mut c);
            key(c.validate())
        };
        assert_eq!(c(&|c| c.password_file = Some("p".into())), "username");
        assert_eq!(c(&|c| c.topic_prefix = Some("a/+/b".into())), "topic_prefix");
        assert_eq!(c(&|c| c.topic_prefix = Some("a//b".into())), "topic_prefix");
        assert_eq!(c(&|c| c.topic_prefix = Some("$SYS/x".into())), "topic_prefix");
        assert_eq!(c(&|c| c.client_id = Some("a b".into())), "client_id");
        assert_eq!(c(&|c| c.max_pending = 0), "max_pending");
        assert_eq!(c(&|c| c.reconnect_max_ms = 1), "reconnect_max_ms");
        assert_eq!(c(&|c| c.max_in_flight = 0), "max_in_flight");
    }

    #[test]
    fn the_password_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let c = UpstreamConfig {
            username: Some("hub".into()),
            password_file: Some(path.clone()),
            ..cfg("mqtts://x")
        };
        let err = c.password().expect_err("readable by others");
        assert!(matches!(err, UpstreamConfigError::File { key: "password_file", .. }));
        assert!(!err.to_string().contains("s3cret"), "the secret is not in the error");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(c.password().expect("private").as_deref(), Some("s3cret"));
    }
}
