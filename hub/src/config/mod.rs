//! Hub settings: every one has an embedded default; a TOML file may override any of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// All settings.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// CoAP/UDP listen address for sensors.
    pub coap_bind: SocketAddr,
    /// The file these settings were read from (none: defaults); a backup carries it.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// Pairing limits.
    pub pairing: PairingConfig,
    /// Store limits.
    pub store: StoreConfig,
    /// Updates.
    pub updates: UpdatesConfig,
    /// When a sensor counts as offline.
    pub availability: AvailabilityConfig,
    /// The upstream MQTT broker readings are forwarded to (none: the hub stays local).
    pub upstream: Option<crate::upstream::UpstreamConfig>,
    /// The MQTT broker and its listeners.
    pub mqtt: MqttConfig,
    /// The owner's web UI.
    pub web: WebConfig,
    /// Password hashing and login throttling, for the web UI and MQTT together.
    pub login: LoginConfig,
}

/// Logins to the web UI and MQTT (DESIGN "Failure domains and budgets"; EN 303 645 5.1-5): one
/// budget for all password hashing in the hub, and one throttle policy (each service keeps its
/// own records).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct LoginConfig {
    /// Password hashes (argon2id, 19 MiB each) computed at once, web and MQTT together.
    pub hash_slots: usize,
    /// Logins waiting for a hashing slot at most; further ones are refused at once (web 503,
    /// MQTT CONNACK "server unavailable") and counted.
    pub hash_queue: usize,
    /// Failed logins per account or address allowed before back-off starts.
    pub free_failures: u32,
    /// First back-off after that, ms; it doubles with each further failure.
    pub backoff_base_ms: u64,
    /// Longest back-off, ms (nobody waits longer).
    pub backoff_max_ms: u64,
    /// An account's or address's failures are forgotten this long after the last one, s.
    pub forget_after_s: u64,
}

impl Default for LoginConfig {
    fn default() -> Self {
        let budget = admission::Limits::default();
        let policy = admission::Policy::default();
        Self {
            hash_slots: budget.slots,
            hash_queue: budget.queue,
            free_failures: policy.free_failures,
            backoff_base_ms: policy.base_ms,
            backoff_max_ms: policy.max_ms,
            forget_after_s: policy.forget_ms / 1000,
        }
    }
}

impl LoginConfig {
    /// The hashing budget's limits.
    pub fn limits(&self) -> admission::Limits {
        admission::Limits {
            slots: self.hash_slots,
            queue: self.hash_queue,
            ..admission::Limits::default()
        }
    }

    /// The throttle policy.
    pub fn policy(&self) -> admission::Policy {
        admission::Policy {
            free_failures: self.free_failures,
            base_ms: self.backoff_base_ms,
            max_ms: self.backoff_max_ms,
            forget_ms: self.forget_after_s.saturating_mul(1000),
            ..admission::Policy::default()
        }
    }
}

/// MQTT (DESIGN "MQTT"): the embedded broker listens on loopback only; the hub's own fronts
/// take clients — plain on loopback, TLS (the hub certificate) for the LAN — authenticate and
/// throttle them (EN 303 645 5.1-5, 5.5-4) and forward to it.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Whether MQTT runs at all.
    pub enabled: bool,
    /// Plain (unencrypted) listener; must be a loopback address.
    pub plain_bind: SocketAddr,
    /// TLS listener for the LAN (none: no TLS listener).
    pub tls_bind: Option<SocketAddr>,
    /// Port of the embedded broker's own listener on 127.0.0.1 (reached through the fronts).
    pub broker_port: u16,
    /// Extra names (host names, IP addresses) for the hub certificate made at first start.
    pub tls_names: Vec<String>,
    /// Client connections at once (each front; the broker allows twice this).
    pub max_connections: usize,
    /// Client connections at once from one address (each front): beyond it, that address's
    /// oldest connection that has not logged in is closed.
    pub connections_per_address: usize,
    /// Largest MQTT packet accepted, bytes.
    pub max_packet_bytes: usize,
    /// QoS 1/2 messages in flight per client.
    pub max_inflight: usize,
    /// A client must finish TLS and send its CONNECT within this time of connecting, ms.
    pub connect_timeout_ms: u16,
    /// Home Assistant discovery prefix.
    pub discovery_prefix: String,
    /// Discovery is republished for Home Assistant's birth message (`<prefix>/status`
    /// `online`) at most once per this interval, s: births within it are coalesced into one
    /// republication at its end.
    pub republish_interval_s: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            plain_bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
            tls_bind: Some(SocketAddr::from(([0, 0, 0, 0], 8883))),
            broker_port: 18830,
            tls_names: Vec::new(),
            max_connections: 256,
            connections_per_address: 32,
            max_packet_bytes: 256 * 1024,
            max_inflight: 100,
            connect_timeout_ms: 10_000,
            discovery_prefix: "homeassistant".into(),
            republish_interval_s: 10,
        }
    }
}

/// Availability (DESIGN capability 5): offline after `missed_periods` reporting periods without
/// a report; each sensor's period is learned, `default_period_s` is assumed until then.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct AvailabilityConfig {
    /// Periods without a report before a sensor is offline.
    pub missed_periods: u32,
    /// Reporting period assumed until one is learned, seconds.
    pub default_period_s: u64,
}

impl Default for AvailabilityConfig {
    fn default() -> Self {
        Self { missed_periods: 3, default_period_s: 60 }
    }
}

impl AvailabilityConfig {
    /// The directory's settings.
    pub fn availability_rules(&self) -> crate::devices::AvailabilityRules {
        crate::devices::AvailabilityRules {
            default_period_ms: self.default_period_s.saturating_mul(1000),
            missed_periods: self.missed_periods,
        }
    }
}

/// The owner's web UI over HTTPS (EN 303 645 5.5-1).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Listen address (HTTPS only; plain HTTP on it gets no answer).
    pub bind: SocketAddr,
    /// Host names and addresses the certificate names besides localhost, loopback and the host
    /// name (used when the certificate is first made). State changes are accepted only from
    /// pages served under one of these names (the `Origin` check).
    pub names: Vec<String>,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one address: beyond it, that address's oldest connection
    /// without a session is closed.
    pub connections_per_address: usize,
    /// A TLS handshake must finish within this time of connecting, ms.
    pub handshake_timeout_ms: u64,
    /// A request's headers must arrive within this time; a kept-alive connection that sends no
    /// request for this long is closed, ms.
    pub header_timeout_ms: u64,
    /// A request's body must arrive within this time of its headers, ms.
    pub body_timeout_ms: u64,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 8443)),
            names: Vec::new(),
            max_connections: 256,
            connections_per_address: 32,
            handshake_timeout_ms: 10_000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
        }
    }
}

/// A manufacturer key the hub trusts for a model (pinned at installation).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    /// Model designation.
    pub model: String,
    /// The key, written as hex SEC1 P-256 (parsed when the configuration is read: a bad key
    /// refuses the start, naming it).
    #[serde(deserialize_with = "sec1_key")]
    #[cfg_attr(test, serde(serialize_with = "sec1_hex"))]
    pub key: protocol::update::PublicKey,
}

fn sec1_key<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<protocol::update::PublicKey, D::Error> {
    let text = String::deserialize(d)?;
    protocol::hex::decode(&text)
        .and_then(|b| protocol::update::PublicKey::from_sec1(&b).ok())
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "the trusted key {text:?} is not a hex SEC1 P-256 public key"
            ))
        })
}

#[cfg(test)]
fn sec1_hex<S: serde::Serializer>(
    key: &protocol::update::PublicKey,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&protocol::hex::encode(&key.to_sec1_compressed()))
}

/// Update settings (EN 303 645 5.3, TR 103 621 6.13).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct UpdatesConfig {
    /// Devices updated at once.
    pub max_concurrent: usize,
    /// Manufacturer keys to pin at start.
    pub trust: Vec<TrustedKey>,
    /// The manufacturer's update feed (`https://host:port/`), if any.
    pub feed_url: Option<String>,
    /// The feed server's certificate (PEM file) to pin.
    pub feed_cert: Option<PathBuf>,
    /// Mean seconds between feed checks (each check is at a random time around it).
    pub check_interval_s: u64,
    /// Back-off after a failed attempt on a device: this many seconds, doubling.
    pub retry_base_s: u64,
}

impl Default for UpdatesConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 10,
            trust: Vec::new(),
            feed_url: None,
            feed_cert: None,
            check_interval_s: 6 * 3600,
            retry_base_s: 30,
        }
    }
}

/// Pairing window limits (EN 303 645 5.1-5 applied to pairing).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct PairingConfig {
    /// Default window length.
    pub window_seconds: u64,
    /// Failed confirmations before the window closes.
    pub max_failures: u32,
    /// First back-off after a failure, doubling.
    pub backoff_base_ms: u64,
    /// Sensors that may wait for their PIN at once.
    pub max_sessions: usize,
    /// Of those, from one source host (IP address, whatever its ports). Sized for a person
    /// pairing a batch of sensors from one host (a fleet simulator, sensors behind one
    /// gateway): a session lives `session_max_s` (180 s) and typing a PIN takes about 10 s, so
    /// about 16 are the most one person gets through before the first ones expire.
    pub sessions_per_source: usize,
    /// A session that hears nothing from its sensor for this long ends (an attempt whose PIN
    /// was typed counts as failed).
    pub session_idle_s: u64,
    /// A session waiting for its PIN ends this long after it started, however active.
    pub session_max_s: u64,
    /// Key generations per second for pairing hellos, all hosts together (the P-256 budget;
    /// the excess is dropped unanswered and counted).
    pub hello_rate: u32,
    /// Key generations saved up (half of them kept for hosts not served recently).
    pub hello_burst: u32,
    /// Shortest interval between two key generations for one host (longer while more ask).
    pub host_hello_interval_ms: u64,
    /// Key generations one host can save up.
    pub host_hello_burst: u32,
    /// Unprotected datagrams (pairing requests, anything not OSCORE) one host may send per
    /// second; the excess is dropped unread and counted.
    pub host_request_rate: u32,
    /// Unprotected datagrams one host can save up.
    pub host_request_burst: u32,
}

impl PairingConfig {
    /// The hello budget in the protocol's terms.
    pub fn hello_limits(&self) -> protocol::pairing::HelloLimits {
        protocol::pairing::HelloLimits {
            rate_per_s: self.hello_rate,
            burst: self.hello_burst,
            reserve: self.hello_burst / 2,
            host_interval_ms: self.host_hello_interval_ms,
            host_burst: self.host_hello_burst,
            request_rate: self.host_request_rate,
            request_burst: self.host_request_burst,
            ..protocol::pairing::HelloLimits::default()
        }
    }
}

/// Store limits. Readings are kept in log segments that are dropped whole, oldest first
/// (README, "Storage"), so both bounds are approximate: up to one segment more is kept.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Readings kept per device at least: an old segment is dropped once every device in it
    /// has this many newer readings.
    pub max_readings_per_device: u64,
    /// Readings per group commit at most.
    pub max_batch: usize,
    /// Size of one readings log segment, MiB.
    pub segment_mb: u64,
    /// Size bound of the readings log, MiB: the oldest segments are dropped beyond it.
    pub max_log_mb: u64,
    /// Size of one segment in KiB instead of `segment_mb` (at least 4): small segments make
    /// seals and retention frequent, for the crash campaign.
    pub segment_kb: Option<u64>,
    /// Free space kept on the data directory's file system, MiB: below it the oldest readings
    /// are dropped (and counted) before the disk is full (0: no floor).
    pub min_free_mb: u64,
}

impl StoreConfig {
    /// The store's settings.
    pub fn store_limits(&self) -> crate::store::StoreLimits {
        crate::store::StoreLimits {
            max_readings_per_device: self.max_readings_per_device,
            segment_bytes: self
                .segment_kb
                .map_or(self.segment_mb.clamp(1, 1024) << 20, |kb| kb.clamp(4, 1 << 20) << 10),
            max_log_bytes: self.max_log_mb.max(1) << 20,
            min_free_bytes: self.min_free_mb.min(1 << 30) << 20,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            coap_bind: SocketAddr::from(([0, 0, 0, 0], 5683)),
            source: None,
            pairing: PairingConfig::default(),
            store: StoreConfig::default(),
            updates: UpdatesConfig::default(),
            availability: AvailabilityConfig::default(),
            upstream: None,
            mqtt: MqttConfig::default(),
            web: WebConfig::default(),
            login: LoginConfig::default(),
        }
    }
}

impl Default for PairingConfig {
    fn default() -> Self {
        Self {
            window_seconds: 120,
            max_failures: 3,
            backoff_base_ms: 2000,
            max_sessions: 128,
            sessions_per_source: 16,
            session_idle_s: 60,
            session_max_s: 180,
            hello_rate: 20,
            hello_burst: 20,
            host_hello_interval_ms: 1_000,
            host_hello_burst: 4,
            host_request_rate: 20,
            host_request_burst: 40,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_readings_per_device: 100_000,
            max_batch: 4096,
            segment_mb: 32,
            max_log_mb: 4096,
            segment_kb: None,
            min_free_mb: 64,
        }
    }
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file is not valid.
    #[error("{0}: {1}")]
    Parse(PathBuf, toml::de::Error),
    /// A setting is out of range or inconsistent with another.
    #[error("{path}: `{key}` {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The setting, as written in the file (e.g. `updates.feed_cert`).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Config {
    /// Extra names for the one hub certificate (HTTPS and MQTT over TLS), from both sections:
    /// whichever starts first makes the certificate.
    pub fn certificate_names(&self) -> Vec<String> {
        let mut names = self.web.names.clone();
        names.extend(self.mqtt.tls_names.iter().filter(|n| !self.web.names.contains(n)).cloned());
        names
    }

    /// Reads `path`, or returns the defaults when there is none.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else { return Ok(Self::default()) };
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        let mut config: Self =
            toml::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), e))?;
        config.source = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
        config.validate().map_err(|(key, reason)| ConfigError::Invalid {
            path: path.into(),
            key,
            reason,
        })?;
        Ok(config)
    }

    /// Checks ranges and combinations; the error names the offending key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: &str| Err((key.to_string(), reason.to_string()));
        let p = &self.pairing;
        if !(1..=3600).contains(&p.window_seconds) {
            return bad("pairing.window_seconds", "must be 1 to 3600");
        }
        if !(1..=10).contains(&p.max_failures) {
            return bad("pairing.max_failures", "must be 1 to 10");
        }
        if p.max_sessions == 0 || p.max_sessions > 65_536 {
            return bad("pairing.max_sessions", "must be 1 to 65536");
        }
        if p.sessions_per_source == 0 || p.sessions_per_source > p.max_sessions {
            return bad("pairing.sessions_per_source", "must be 1 to pairing.max_sessions");
        }
        if !(1..=3600).contains(&p.session_idle_s) {
            return bad("pairing.session_idle_s", "must be 1 to 3600");
        }
        if !(1..=3600).contains(&p.session_max_s) {
            return bad("pairing.session_max_s", "must be 1 to 3600");
        }
        if !(1..=1_000_000).contains(&p.hello_rate) {
            return bad("pairing.hello_rate", "must be 1 to 1000000");
        }
        if !(1..=1_000_000).contains(&p.hello_burst) {
            return bad("pairing.hello_burst", "must be 1 to 1000000");
        }
        if !(1..=3_600_000).contains(&p.host_hello_interval_ms) {
            return bad("pairing.host_hello_interval_ms", "must be 1 to 3600000");
        }
        if !(1..=1_000_000).contains(&p.host_hello_burst) {
            return bad("pairing.host_hello_burst", "must be 1 to 1000000");
        }
        if !(1..=1_000_000).contains(&p.host_request_rate) {
            return bad("pairing.host_request_rate", "must be 1 to 1000000");
        }
        if !(1..=1_000_000).contains(&p.host_request_burst) {
            return bad("pairing.host_request_burst", "must be 1 to 1000000");
        }
        if p.backoff_base_ms > 600_000 {
            return bad("pairing.backoff_base_ms", "must be at most 600000");
        }
        if self.store.max_readings_per_device == 0 {
            return bad("store.max_readings_per_device", "must be at least 1");
        }
        if self.store.max_batch == 0 {
            return bad("store.max_batch", "must be at least 1");
        }
        if !(1..=100).contains(&self.availability.missed_periods) {
            return bad("availability.missed_periods", "must be 1 to 100");
        }
        if !(1..=86_400).contains(&self.availability.default_period_s) {
            return bad("availability.default_period_s", "must be 1 to 86400");
        }
        let m = &self.mqtt;
        if !m.plain_bind.ip().is_loopback() {
            return bad("mqtt.plain_bind", "must be a loopback address (use tls_bind for the LAN)");
        }
        if m.broker_port == 0 || m.broker_port == m.plain_bind.port() {
            return bad("mqtt.broker_port", "must be a port other than plain_bind's");
        }
        if !(1..=65_536).contains(&m.max_connections) {
            return bad("mqtt.max_connections", "must be 1 to 65536");
        }
        if !(1..=m.max_connections).contains(&m.connections_per_address) {
            return bad("mqtt.connections_per_address", "must be 1 to mqtt.max_connections");
        }
        if !(1..=3600).contains(&m.republish_interval_s) {
            return bad("mqtt.republish_interval_s", "must be 1 to 3600");
        }
        if !(1024..=16 << 20).contains(&m.max_packet_bytes) {
            return bad("mqtt.max_packet_bytes", "must be 1024 to 16777216");
        }
        if !(1..=65_535).contains(&m.max_inflight) {
            return bad("mqtt.max_inflight", "must be 1 to 65535");
        }
        if m.connect_timeout_ms < 100 {
            return bad("mqtt.connect_timeout_ms", "must be at least 100");
        }
        let l = &self.login;
        if !(1..=16).contains(&l.hash_slots) {
            return bad("login.hash_slots", "must be 1 to 16");
        }
        if l.hash_queue > 1024 {
            return bad("login.hash_queue", "must be at most 1024");
        }
        if !(1..=100).contains(&l.free_failures) {
            return bad("login.free_failures", "must be 1 to 100");
        }
        if l.backoff_base_ms == 0 || l.backoff_max_ms < l.backoff_base_ms {
            return bad(
                "login.backoff_max_ms",
                "must be at least backoff_base_ms (and that at least 1)",
            );
        }
        if l.backoff_max_ms > 3_600_000 {
            return bad("login.backoff_max_ms", "must be at most 3600000 (back-offs always end)");
        }
        if l.forget_after_s.saturating_mul(1000) < l.backoff_max_ms {
            return bad("login.forget_after_s", "must be at least backoff_max_ms");
        }
        let prefix_ok = !m.discovery_prefix.is_empty()
            && m.discovery_prefix.len() <= 64
            && !m.discovery_prefix.contains(['+', '#', '\0']);
        if !prefix_ok {
            return bad("mqtt.discovery_prefix", "must be 1 to 64 characters without + # or NUL");
        }
        let w = &self.web;
        if !(1..=65_536).contains(&w.max_connections) {
            return bad("web.max_connections", "must be 1 to 65536");
        }
        if !(1..=w.max_connections).contains(&w.connections_per_address) {
            return bad("web.connections_per_address", "must be 1 to web.max_connections");
        }
        for (key, ms) in [
            ("web.handshake_timeout_ms", w.handshake_timeout_ms),
            ("web.header_timeout_ms", w.header_timeout_ms),
            ("web.body_timeout_ms", w.body_timeout_ms),
        ] {
            if !(100..=600_000).contains(&ms) {
                return bad(key, "must be 100 to 600000");
            }
        }
        let u = &self.updates;
        match (&u.feed_url, &u.feed_cert) {
            (Some(url), Some(cert)) => {
                if let Err(e) = crate::feed::check_base_url(url) {
                    return bad("updates.feed_url", &e.to_string());
                }
                if let Err(e) = crate::feed::check_pinned_cert(cert) {
                    return bad("updates.feed_cert", &e);
                }
            }
            (Some(_), None) => {
                return bad(
                    "updates.feed_cert",
                    "is required with updates.feed_url (the feed's certificate to pin)",
                );
            }
            (None, Some(_)) => {
                return bad("updates.feed_url", "is required with updates.feed_cert");
            }
            _ => {}
        }
        if let Some(up) = &self.upstream
            && let Err(crate::upstream::UpstreamConfigError::Invalid { key, reason }) =
                up.validate()
        {
            return bad(&format!("upstream.{key}"), &reason);
        }
        if u.max_concurrent == 0 {
            return bad("updates.max_concurrent", "must be at least 1");
        }
        if u.check_interval_s == 0 {
            return bad("updates.check_interval_s", "must be at least 1");
        }
        for (i, t) in u.trust.iter().enumerate() {
            if t.model.is_empty() {
                return bad(&format!("updates.trust[{i}].model"), "must not be empty");
            }
        }
        Ok(())
    }

    /// The pairing window settings for `seconds` (or the default length).
    pub fn window(&self, seconds: Option<u64>) -> protocol::pairing::WindowConfig {
        protocol::pairing::WindowConfig {
            duration_ms: seconds.unwrap_or(self.pairing.window_seconds).saturating_mul(1000),
            max_failures: self.pairing.max_failures,
            backoff_base_ms: self.pairing.backoff_base_ms,
        }
    }
}

/// The default data directory: `$HEARTH_DATA_DIR`, else `$XDG_STATE_HOME/hearth`, else
/// `~/.local/state/hearth`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HEARTH_DATA_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("hearth");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/state/hearth")
}

#[cfg(test)]
mod tests;
