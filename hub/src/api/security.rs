//! The owner's view of security (EN 303 645 5.10-1, 5.12-3): every counter with its events in
//! the anomaly window and the flags (from [`crate::security::Monitor`], kept current here by
//! [`watch`]), and the hub's part of the live self-check — each provision it implements with the
//! current state that shows it, the devices concerned and the action to take when a check is not
//! met (`hub ctl security --check`; the web UI's security page adds its own).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use web_ui::api::{Action, Check};

use super::{ApiError, HubApi, SecurityReport};
use crate::security::{REFRESH_EVERY, SAMPLE_EVERY, counts};

impl HubApi {
    /// Every security counter (EN 303 645 5.10-1) with its events in the anomaly window and
    /// the anomaly flags (the same for `hub ctl`, MQTT and the web UI: the monitor samples
    /// them whether anyone looks or not).
    pub async fn security(&self) -> Result<SecurityReport, ApiError> {
        let link = self.on_link(|d| d.counters()).await?;
        let others = self.monitor.others();
        let mut report = SecurityReport {
            link: link.link,
            bad_payload: link.bad_payload,
            mqtt: others.mqtt,
            connections: others.connections,
            web: others.web,
            total: link.total()
                + others.mqtt.total()
                + others.connections.total()
                + others.web.total(),
            ..SecurityReport::default()
        };
        let recent = self.monitor.window(&counts(&report));
        (report.recent, report.anomalies) = (recent.recent, recent.anomalies);
        Ok(report)
    }

    /// The hub's part of the EN 303 645 self-check (5.12-3).
    pub async fn security_check(&self) -> Result<Vec<Check>, ApiError> {
        checks(self, None).await
    }
}

/// Keeps the monitor current until `shutdown`: refreshes what the link saves every
/// [`REFRESH_EVERY`] and samples every counter for the anomaly window every [`SAMPLE_EVERY`],
/// whether or not anyone looks (the flags are the same for `hub ctl`, MQTT and the web UI).
pub(crate) async fn watch(api: HubApi, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampled: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        api.monitor.refresh();
        let now = Instant::now();
        if sampled.is_some_and(|t| now.duration_since(t) < SAMPLE_EVERY) {
            continue;
        }
        if let Ok(report) = api.security().await {
            api.monitor.sample(now, counts(&report));
            sampled = Some(now);
        }
    }
}

/// The hub's checks now (`fingerprint`: the certificate the web UI serves, if it runs).
pub(crate) async fn checks(
    api: &HubApi,
    fingerprint: Option<&str>,
) -> Result<Vec<Check>, ApiError> {
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).ok();
    let kek_mode = mode(&api.data_dir.join("kek"));
    let dir_mode = mode(&api.data_dir);
    let devices = api.devices().await?;
    let updates = api.updates().await?;
    let security = api.security().await?;
    let now = crate::clock::unix_now().0;
    let expired: Vec<(String, String)> = devices
        .iter()
        .filter(|d| d.device.info.about.support_end.0 <= now)
        .map(|d| (d.device.info.id.to_string(), d.device.name.clone()))
        .collect();
    let c = Check::new;
    let act =
        |text: String, href: Option<&str>| Some(Action { text, href: href.map(str::to_owned) });
    let kek = api.data_dir.join("kek");
    let mut checks = vec![
        Check {
            devices: if updates.trust.is_empty() {
                devices
                    .iter()
                    .map(|d| (d.device.info.id.to_string(), d.device.name.clone()))
                    .collect()
            } else {
                Vec::new()
            },
            action: act(
                "Pin each model's manufacturer key with `hub ctl update trust <model> \
                 <key>` (or `[[updates.trusted_keys]]` in the configuration), so the hub \
                 can verify their updates."
                    .into(),
                None,
            ),
            ..c(
                "5.3-2",
                "Updates are verified and installed securely",
                !updates.trust.is_empty() || devices.is_empty(),
                format!(
                    "{} trusted manufacturer key(s); {} verified release(s); {} refused; policy {:?}.",
                    updates.trust.len(),
                    updates.releases.len(),
                    updates.refused.len(),
                    updates.policy
                ),
            )
        },
        Check {
            devices: expired.clone(),
            action: act(
                "Its manufacturer no longer fixes its vulnerabilities: replace it (the \
                 new sensor takes over its name, room and history) or remove it."
                    .into(),
                Some("/pairing"),
            ),
            ..c(
                "5.3-13",
                "Support period published; devices past it are named",
                expired.is_empty(),
                format!(
                    "{} device(s), {} past the end of their support period.",
                    devices.len(),
                    expired.len()
                ),
            )
        },
        Check {
            action: act(format!("Make the key file private: chmod 600 {}", kek.display()), None),
            ..c(
                "5.4-1",
                "Secrets at rest are protected",
                kek_mode == Some(0o600),
                format!(
                    "Link keys, the TLS key and the owner account are sealed with AES-256-CCM under a key-encryption key in a file with mode {}.",
                    kek_mode.map_or("missing".into(), |m| format!("{m:o}"))
                ),
            )
        },
        c(
            "5.4-3",
            "No hard-coded secrets",
            true,
            format!(
                "The TLS key, key-encryption key and setup code were generated on this hub{}.",
                fingerprint.map_or(String::new(), |f| format!("; certificate SHA-256 {f}"))
            ),
        ),
        c(
            "5.5-1",
            "Sensor links are encrypted and authenticated",
            true,
            format!(
                "{} device(s) on OSCORE (AES-CCM, per-device keys from PIN-authenticated ECDH).",
                devices.len()
            ),
        ),
        Check {
            action: act(
                format!("Make the data directory private: chmod 700 {}", api.data_dir.display()),
                None,
            ),
            ..c(
                "5.6-1",
                "The hub's data is private to it",
                dir_mode == Some(0o700),
                format!(
                    "Data directory mode {}.",
                    dir_mode.map_or("missing".into(), |m| format!("{m:o}"))
                ),
            )
        },
        c(
            "5.13-1",
            "Sensor input is validated",
            true,
            format!(
                "{} malformed datagrams, {} bad OSCORE messages and {} oversized readings refused.",
                security.link.malformed, security.link.bad_oscore, security.bad_payload
            ),
        ),
    ];
    checks.push(monitored(&security));
    checks.push(storage(&api.store.status()));
    Ok(checks)
}

/// 5.9-1 (issue 20): the hub's disk can be written — a full or failing disk, in the words
/// `hub ctl status` uses.
fn storage(s: &crate::store::StorageStatus) -> Check {
    let free = s.free_mb.map_or_else(|| "not measured yet".into(), |mb| format!("{mb} MiB"));
    let state = match &s.problem {
        Some(problem) => format!("Storage problem: {problem}. Free space: {free}."),
        None => format!(
            "Readings are stored and acknowledged. Free space: {free} (floor {} MiB); {} oldest readings dropped to keep it.",
            s.min_free_mb, s.dropped_for_space
        ),
    };
    Check::new("5.9-1", "The hub's disk can be written", s.ok, state)
}

/// 5.10-1: security events are monitored, and none came unusually often within the window.
fn monitored(report: &SecurityReport) -> Check {
    let flagged: Vec<String> =
        report.anomalies.iter().map(|n| protocol::security::label(n)).collect();
    let mut check = Check::new(
        "5.10-1",
        "Security events are monitored",
        flagged.is_empty(),
        format!(
            "{} security events counted; {} anomaly flag(s) in the last 5 minutes{}.",
            report.total,
            flagged.len(),
            if flagged.is_empty() { String::new() } else { format!(": {}", flagged.join("; ")) }
        ),
    );
    if !flagged.is_empty() {
        check.action = Some(Action {
            text: "See which events are flagged and where they come from; if they are not \
                   yours, check who can reach the hub and change the passwords concerned."
                .into(),
            href: Some("/events".into()),
        });
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monitoring_check_fails_with_the_flagged_events_named_and_an_action() {
        let quiet = SecurityReport { total: 7, ..SecurityReport::default() };
        let c = monitored(&quiet);
        assert!(c.ok && c.action.is_none(), "{c:?}");
        assert!(c.state.starts_with("7 security events counted; 0 anomaly flag(s)"), "{c:?}");
        let loud = SecurityReport {
            total: 40,
            anomalies: vec!["bad_tag".into(), "web_login_failed".into()],
            ..SecurityReport::default()
        };
        let c = monitored(&loud);
        assert!(!c.ok, "{c:?}");
        assert!(
            c.state.ends_with(": Messages failing authentication (bad tags); Failed web logins."),
            "{c:?}"
        );
        assert_eq!(c.action.and_then(|a| a.href).as_deref(), Some("/events"));
    }
}
