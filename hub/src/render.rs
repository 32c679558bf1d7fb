//! `hub ctl` output for people: each command's typed answer as aligned tables and short
//! sentences, with units and local times (`--json` prints the answer itself, for scripts).

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::api::{
    Approved, Cancelled, DeviceView, Done, FactoryResetStarted, Paired, PairingState,
    PairingStatus, ReleaseAdded, Removed, Renamed, RoomSet, SecurityReport, Trusted, Unisolated,
    UpdatesAnswer, UpstreamAnswer, UserAdded,
};
use crate::isolation::{Action, AdvisoryRecord};
use crate::store::StoredReading;
use protocol::vocabulary::Unit;
use web_ui::time::{local_date, local_time_ms as local_time, relative, when};

/// An answer laid out for people; `now_ms` is the current time (for "12 s ago").
pub(crate) trait Render {
    /// The text `hub ctl` prints.
    fn render(&self, now_ms: i64) -> String;
}

/// Answers shown as their keys and values.
macro_rules! render_plain {
    ($($t:ty),* $(,)?) => {
        $(
            impl Render for $t {
                fn render(&self, _now_ms: i64) -> String {
                    plain(&to_value(self), 0)
                }
            }
        )*
    };
}

render_plain!(
    Paired,
    FactoryResetStarted,
    Removed<crate::device_id::DeviceId>,
    Removed<String>,
    Renamed,
    RoomSet,
    Unisolated,
    ReleaseAdded,
    Trusted,
    Done,
    Approved,
    Cancelled,
    UserAdded,
    AdvisoryRecord,
);

impl Render for Vec<crate::mqtt::auth::UserView> {
    fn render(&self, now_ms: i64) -> String {
        if self.is_empty() {
            return "No MQTT users: nobody can connect until you add one.\n".into();
        }
        let rows: Vec<Vec<String>> = self
            .iter()
            .map(|u| {
                let role = if u.admin { "admin (bridge requests)" } else { "client" };
                vec![
                    u.name.clone(),
                    role.into(),
                    when(u.created, u64::try_from(now_ms).unwrap_or(0)),
                ]
            })
            .collect();
        table(&["USER", "ROLE", "ADDED"], &rows)
    }
}

fn to_value(t: &impl Serialize) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// A value's wire name (`online`, `backing_off`).
fn label(t: &impl Serialize) -> String {
    match to_value(t) {
        Value::String(s) => s,
        v => v.to_string(),
    }
}

fn value(v: &Value, u: Option<&str>) -> String {
    let number = match v {
        Value::Number(n) => n.as_f64().map(|f| {
            if f.fract() == 0.0 && f.abs() < 1e15 { format!("{f:.0}") } else { format!("{f:.2}") }
        }),
        Value::Bool(b) => return b.to_string(),
        _ => None,
    };
    let n = number.unwrap_or_else(|| v.to_string());
    match u.map(Unit::display) {
        Some("") | None => n,
        Some(u) => format!("{n} {u}"),
    }
}

/// Lays out rows under a header, columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c}{}  ", " ".repeat(w - c.chars().count()));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

fn state_summary(d: &DeviceView) -> String {
    d.device
        .state
        .iter()
        .filter(|(k, _)| *k != "battery" && *k != "buffer_dropped")
        .map(|(k, r)| format!("{k} {}", value(&r.value, r.unit.as_deref())))
        .collect::<Vec<_>>()
        .join(", ")
}

fn battery(b: f64) -> String {
    value(&serde_json::json!(b), Some("%"))
}

impl Render for Vec<DeviceView> {
    fn render(&self, now_ms: i64) -> String {
        if self.is_empty() {
            return "No devices paired. Pair one with `hub ctl pair open`, then `hub ctl pair pin <PIN>`.\n"
                .into();
        }
        let rows: Vec<Vec<String>> = self
            .iter()
            .map(|d| {
                let s = &d.device;
                vec![
                    s.name.clone(),
                    s.room.clone().unwrap_or_else(|| "-".into()),
                    s.info.id.to_string(),
                    s.info.about.model.clone(),
                    label(&s.availability),
                    s.last_seen_ms.map_or_else(|| "never".into(), |t| relative(t, now_ms)),
                    s.battery.map_or_else(|| "-".into(), battery),
                    state_summary(d),
                ]
            })
            .collect();
        table(
            &["NAME", "ROOM", "ID", "MODEL", "AVAILABILITY", "LAST SEEN", "BATTERY", "STATE"],
            &rows,
        )
    }
}

impl Render for DeviceView {
    fn render(&self, now_ms: i64) -> String {
        let (s, info) = (&self.device, &self.device.info);
        let mut out = String::new();
        let mut kv = |k: &str, v: String| {
            let _ = writeln!(out, "{:<18}{v}", format!("{k}:"));
        };
        kv("Name", s.name.clone());
        kv("Room", s.room.clone().unwrap_or_else(|| "-".into()));
        kv("Device id", info.id.to_string());
        kv("Model", info.about.model.clone());
        kv("Serial", info.about.serial.clone());
        kv("Firmware", info.about.firmware_version.to_string());
        kv(
            "Updatable",
            if info.about.updatable { "yes".into() } else { "no (cannot be updated)".into() },
        );
        let over = secs_to_ms(info.about.support_end.0) <= now_ms;
        kv(
            "Support period",
            format!(
                "{} {}",
                if over { "ended" } else { "until" },
                local_date(info.about.support_end.0)
            ),
        );
        kv("Senses", info.about.capabilities.join(", "));
        kv("Availability", label(&s.availability));
        kv(
            "Last seen",
            s.last_seen_ms.map_or_else(
                || "never".into(),
                |t| format!("{} ({})", local_time(t), relative(t, now_ms)),
            ),
        );
        kv("Reporting every", format!("{} s", s.period_ms / 1000));
        if let Some(b) = s.battery {
            kv("Battery", battery(b));
        }
        kv("Readings stored", self.readings.to_string());
        if let Some(i) = &s.isolation {
            kv(if i.active() { "ISOLATED" } else { "Isolation" }, i.reason.clone());
            if let Some(a) = &i.advisory {
                kv("Advisory", a.clone());
            }
            kv("Since", local_time(secs_to_ms(i.since)));
            match i.overridden_at {
                Some(t) => {
                    kv("Overridden", format!("by the owner at {}", local_time(secs_to_ms(t))))
                }
                None => kv("What to do", i.replacement.clone()),
            }
        }
        if !s.state.is_empty() {
            let _ = writeln!(out, "\nCurrent state:");
            let rows: Vec<Vec<String>> = s
                .state
                .iter()
                .map(|(k, r)| {
                    vec![k.clone(), value(&r.value, r.unit.as_deref()), local_time(r.time_ms)]
                })
                .collect();
            out += &indent(&table(&["QUANTITY", "VALUE", "MEASURED"], &rows));
        }
        if !s.transitions.is_empty() {
            let _ = writeln!(out, "\nAvailability history:");
            let rows: Vec<Vec<String>> = s
                .transitions
                .iter()
                .map(|t| vec![local_time(t.at_ms), label(&t.to), t.why.clone()])
                .collect();
            out += &indent(&table(&["WHEN", "NOW", "WHY"], &rows));
        }
        if let Some(u) = &self.update {
            let _ = writeln!(out, "\nUpdates:");
            out += &plain(&to_value(u), 1);
        }
        out
    }
}

fn secs_to_ms(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000)
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

impl Render for Vec<StoredReading> {
    fn render(&self, _now_ms: i64) -> String {
        if self.is_empty() {
            return "No readings stored.\n".into();
        }
        let rows: Vec<Vec<String>> = self
            .iter()
            .map(|r| {
                vec![
                    local_time(r.time_ms),
                    protocol::vocabulary::short_name(&r.name).into(),
                    value(&r.value, r.unit.as_deref()),
                ]
            })
            .collect();
        table(&["MEASURED", "QUANTITY", "VALUE"], &rows)
    }
}

impl Render for PairingStatus {
    fn render(&self, _now_ms: i64) -> String {
        let (closes, left) = (self.closes_in_s, self.attempts_left);
        let mut out = match self.state {
            PairingState::BackingOff => format!(
                "Pairing window open, pausing after a failed attempt: PINs are taken again in {} s \
                 (closes in {closes} s, {left} failed attempt(s) left).\n",
                self.backoff_s
            ),
            PairingState::NoAttemptsLeft => "Pairing window closed after its failed attempts. \
                 Open a new one with `hub ctl pair open`.\n"
                .into(),
            _ if self.open => format!(
                "Pairing window open: closes in {closes} s, {left} failed attempt(s) left.\n"
            ),
            _ => "Pairing window closed. Open it with `hub ctl pair open`.\n".into(),
        };
        if !self.waiting.is_empty() {
            out += "\nWaiting for their PIN:\n";
            let rows: Vec<Vec<String>> = self
                .waiting
                .iter()
                .map(|s| {
                    vec![
                        s.serial.clone(),
                        s.model.clone(),
                        s.firmware_version.to_string(),
                        s.device.clone(),
                    ]
                })
                .collect();
            out += &indent(&table(&["SERIAL", "MODEL", "FIRMWARE", "FUTURE ID"], &rows));
            for s in &self.waiting {
                if let Some(warning) = &s.warning {
                    out += &format!("\nWarning for {}: {warning}.\n", s.serial);
                }
            }
        }
        out
    }
}

impl Render for SecurityReport {
    fn render(&self, _now_ms: i64) -> String {
        // Every counter, whatever its name (the report is a flat map of counts), in the
        // catalogue's order; names this `hub ctl` does not know last.
        let counts = crate::security::counts(self);
        let order = |name: &str| {
            protocol::security::COUNTERS.iter().position(|c| c.name == name).unwrap_or(usize::MAX)
        };
        let mut names: Vec<&String> = counts.keys().filter(|k| *k != "total").collect();
        names.sort_by_key(|n| order(n));
        let rows: Vec<Vec<String>> = names
            .iter()
            .map(|name| {
                let recent = self.recent.get(*name).map_or("-".into(), u64::to_string);
                let flag = if self.anomalies.contains(name) { "ANOMALY" } else { "" };
                vec![
                    protocol::security::label(name),
                    recent,
                    counts[*name].to_string(),
                    flag.to_owned(),
                ]
            })
            .collect();
        let mut out = table(&["EVENT", "LAST 5 MIN", "TOTAL", "FLAG"], &rows);
        let _ = writeln!(out, "\nSecurity events in total: {}", self.total);
        match self.anomalies.len() {
            0 => out += "No anomaly now.\n",
            n => {
                let _ = writeln!(
                    out,
                    "{n} anomaly flag(s): these came unusually often within 5 minutes."
                );
            }
        }
        out
    }
}

impl Render for Vec<web_ui::api::Check> {
    fn render(&self, _now_ms: i64) -> String {
        let rows: Vec<Vec<String>> = self
            .iter()
            .map(|c| {
                let met = if c.ok { "yes" } else { "NO" };
                vec![c.provision.clone(), c.title.clone(), met.into(), c.state.clone()]
            })
            .collect();
        let mut out = table(&["PROVISION", "REQUIREMENT", "MET", "CURRENT STATE"], &rows);
        for c in self.iter().filter(|c| !c.ok) {
            let _ = write!(out, "\n{} {} is not met.", c.provision, c.title);
            if !c.devices.is_empty() {
                let names: Vec<String> =
                    c.devices.iter().map(|(id, name)| format!("{name} ({id})")).collect();
                let _ = write!(out, " Devices: {}.", names.join(", "));
            }
            if let Some(a) = &c.action {
                let _ = write!(out, " What to do: {}", a.text);
            }
            out.push('\n');
        }
        let met = self.iter().filter(|c| c.ok).count();
        let _ = writeln!(
            out,
            "\n{met} of {} met now (the web UI's security page adds its own checks).",
            self.len()
        );
        out
    }
}

impl Render for UpstreamAnswer {
    fn render(&self, _now_ms: i64) -> String {
        let Some(u) = self.status.as_ref().filter(|_| self.configured) else {
            return "No upstream broker configured: the hub works locally only.\n".into();
        };
        let state = if u.connected { "connected" } else { "disconnected" };
        let mut out =
            format!("Upstream {} ({state}), topics {}/<device>/reading\n", u.url, u.topic_prefix);
        let rows = [
            ("pending (not yet acknowledged)", u.pending),
            ("in flight", u.in_flight as u64),
            ("forwarded", u.forwarded),
            ("dropped (outbox full or retention)", u.dropped),
            ("withheld (isolated devices)", u.withheld),
        ];
        let rows: Vec<Vec<String>> =
            rows.iter().map(|(k, v)| vec![(*k).into(), v.to_string()]).collect();
        out.push_str(&table(&["OUTBOX", "READINGS"], &rows));
        let _ = writeln!(out, "Connections since start: {}", u.connections);
        if u.tls_refused > 0 {
            let _ = writeln!(
                out,
                "Broker certificate refused {} time(s) since start: a possible man in the middle (see the log)",
                u.tls_refused
            );
        }
        if let Some(e) = &u.last_error {
            let _ = writeln!(out, "Last connection error: {e}");
        }
        out
    }
}

/// The feed's line: when it was last checked and how that went, and the next check.
fn feed(f: Option<&crate::feed::FeedStatus>, now_ms: i64) -> String {
    let Some(f) = f else {
        return "Update feed: none configured (`[updates] feed_url`); releases come from \
                `hub ctl update add`\n"
            .into();
    };
    let mut out = format!("Update feed: {}\n", f.url);
    let when =
        |ms: Option<i64>| ms.map(|ms| format!("{} ({})", local_time(ms), relative(ms, now_ms)));
    match (when(f.last_checked_ms), &f.last_error) {
        (None, _) => out.push_str("  last checked: not yet\n"),
        (Some(at), None) => {
            let _ = writeln!(
                out,
                "  last checked: {at}, it lists {} release(s) and {} advisory(ies)",
                f.releases, f.advisories
            );
        }
        (Some(at), Some(e)) => {
            let _ = writeln!(out, "  last checked: {at}, failed: {e}");
            let ok = when(f.last_ok_ms).unwrap_or_else(|| "never".into());
            let _ = writeln!(out, "  last successful check: {ok}");
        }
    }
    if let Some(next) = f.next_check_ms {
        let _ = writeln!(out, "  next check: {} ({})", local_time(next), relative(next, now_ms));
    }
    out
}

impl Render for UpdatesAnswer {
    fn render(&self, now_ms: i64) -> String {
        let v = &self.view;
        let now = u64::try_from(now_ms).unwrap_or(0);
        let mut out = feed(self.feed.as_ref(), now_ms);
        let _ = writeln!(out, "Policy: {}", policy(v.policy, now_ms));
        if v.trust.is_empty() {
            out.push_str("Trusted manufacturer keys: none (no release can be verified)\n");
        } else {
            out.push_str("Trusted manufacturer keys:\n");
            for (model, key) in &v.trust {
                let _ = writeln!(out, "  {model}: key {key}");
            }
        }
        if v.releases.is_empty() {
            out.push_str("Releases: none\n");
        } else {
            out.push_str("Releases:\n");
            for r in &v.releases {
                let approval = if r.disruptive { ", disruptive: needs your approval" } else { "" };
                let _ = writeln!(
                    out,
                    "  {} v{} ({} KiB{approval}; valid until {}): {}",
                    r.model,
                    r.version,
                    r.size.div_ceil(1024),
                    when(r.expires, now),
                    r.risks_mitigated
                );
            }
        }
        if !v.refused.is_empty() {
            out.push_str("Refused:\n");
            for r in &v.refused {
                let _ = writeln!(out, "  {} from the {}: {}", when(r.at, now), r.source, r.reason);
            }
        }
        if v.devices.is_empty() {
            out.push_str("Devices: all up to date\n");
        } else {
            out.push_str("Devices:\n");
            for d in &v.devices {
                let target = d.available.map_or_else(String::new, |a| format!(" → v{a}"));
                let state = match (d.delivering, &d.waiting_for) {
                    (Some((version, done, total)), _) => format!(
                        "delivering v{version}: {}% ({done} of {total} blocks)",
                        u64::from(done) * 100 / u64::from(total.max(1))
                    ),
                    (None, Some(why)) => format!("waiting: {why}"),
                    (None, None) => "starting".into(),
                };
                let _ = writeln!(out, "  {} {} v{}{target}: {state}", d.id, d.model, d.installed);
            }
        }
        out
    }
}

/// The update policy in words.
fn policy(p: crate::updates::Policy, now_ms: i64) -> String {
    use crate::updates::Policy;
    let now = u64::try_from(now_ms).unwrap_or(0);
    match p {
        Policy::Auto => {
            "auto (releases install by themselves; disruptive ones wait for you)".into()
        }
        Policy::NotifyOnly => "notify only (nothing installs until you approve it)".into(),
        Policy::Postponed { until } => format!("postponed until {}", when(until, now)),
        Policy::Disabled => "disabled (nothing installs)".into(),
    }
}

impl Render for Vec<AdvisoryRecord> {
    fn render(&self, _now_ms: i64) -> String {
        if self.is_empty() {
            return "No security advisories received.\n".into();
        }
        let mut out = String::new();
        for a in self {
            let _ = writeln!(
                out,
                "{} {} v{}–{} ({}), fixed in {}: {}",
                a.id,
                a.model,
                a.affected_low,
                a.affected_high,
                a.severity,
                a.fixed_in.map_or_else(|| "no version yet".into(), |v| v.to_string()),
                a.text
            );
            for (device, act) in &a.actions {
                let what = match act {
                    Action::Isolated { reason } => format!("isolated: {reason}"),
                    Action::FixScheduled { version: Some(v) } => {
                        format!("fix scheduled: version {v}")
                    }
                    Action::FixScheduled { version: None } => {
                        "waiting for the manufacturer's fix".into()
                    }
                };
                let _ = writeln!(out, "  {device}  {what}");
            }
        }
        out
    }
}

/// Keys and values, nested by indentation.
fn plain(v: &Value, depth: usize) -> String {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::Object(_) | Value::Array(_) => {
                    format!("{pad}{}:\n{}", k.replace('_', " "), plain(v, depth + 1))
                }
                v => format!("{pad}{}: {}\n", k.replace('_', " "), scalar(v)),
            })
            .collect(),
        Value::Array(a) if a.is_empty() => format!("{pad}(none)\n"),
        Value::Array(a) => a
            .iter()
            .map(|v| match v {
                Value::Object(_) | Value::Array(_) => format!("{pad}-\n{}", plain(v, depth + 1)),
                v => format!("{pad}- {}\n", scalar(v)),
            })
            .collect(),
        v => format!("{pad}{}\n", scalar(v)),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::{advisory, device_view, pairing_status};
    use crate::feed::FeedStatus;

    fn updates(feed: Option<FeedStatus>) -> UpdatesAnswer {
        UpdatesAnswer {
            view: crate::updates::UpdatesView {
                policy: crate::updates::Policy::Auto,
                trust: Vec::new(),
                releases: Vec::new(),
                refused: Vec::new(),
                devices: Vec::new(),
            },
            feed,
        }
    }

    #[test]
    fn updates_read_as_progress_times_and_reasons() {
        let now = 1_800_000_000_000;
        let mut u = updates(None);
        u.view.policy = crate::updates::Policy::Postponed { until: 1_800_000_600 };
        u.view.releases.push(crate::updates::ReleaseView {
            model: "hearth-thermo-1".into(),
            version: 3,
            risks_mitigated: "Fixes a radio buffer overflow.".into(),
            disruptive: true,
            expires: 1_800_086_400,
            size: 65_536,
        });
        let id = |s: &str| s.parse().expect("device id");
        for (device, delivering, waiting_for) in [
            ("0a0b0c0d", Some((3, 16, 64)), None),
            ("01020304", None, Some("disruptive: waiting for the owner's approval".to_owned())),
        ] {
            u.view.devices.push(crate::updates::UpdateStatus {
                id: id(device),
                model: "hearth-thermo-1".into(),
                installed: 2,
                available: Some(3),
                waiting_for,
                delivering,
            });
        }
        let out = u.render(now);
        assert!(out.contains("Policy: postponed until ") && out.contains("(in 10 min)"), "{out}");
        assert!(
            out.contains(
                "hearth-thermo-1 v3 (64 KiB, disruptive: needs your approval; valid until "
            )
        );
        assert!(out.contains("(in 1 d)): Fixes a radio buffer overflow."), "{out}");
        assert!(
            out.contains("0a0b0c0d hearth-thermo-1 v2 → v3: delivering v3: 25% (16 of 64 blocks)")
        );
        assert!(out.contains("v2 → v3: waiting: disruptive: waiting for the owner's approval"));
        assert!(!out.contains("1800000"), "an epoch time is shown: {out}");
    }

    #[test]
    fn updates_say_when_the_feed_was_last_checked() {
        let now = 1_800_000_000_000;
        let mut feed = FeedStatus {
            url: "https://feed.example/".into(),
            last_checked_ms: Some(now - 180_000),
            last_ok_ms: Some(now - 180_000),
            last_error: None,
            releases: 4,
            advisories: 1,
            next_check_ms: Some(now + 7_500_000),
        };
        let out = updates(Some(feed.clone())).render(now);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "Update feed: https://feed.example/", "{out}");
        assert!(lines[1].contains("last checked: ") && lines[1].contains("(3 min ago)"), "{out}");
        assert!(lines[1].ends_with("4 release(s) and 1 advisory(ies)"), "{out}");
        assert!(lines[2].contains("next check: ") && lines[2].ends_with("(in 2 h)"), "{out}");
        assert!(out.contains("Policy: auto (") && !out.contains("next check ms"), "{out}");

        feed.last_error = Some("connecting to the feed: refused".into());
        feed.last_checked_ms = Some(now - 5_000);
        let out = updates(Some(feed.clone())).render(now);
        assert!(out.contains("(5 s ago), failed: connecting to the feed: refused"), "{out}");
        assert!(out.contains("last successful check: ") && out.contains("(3 min ago)"), "{out}");

        let not_yet = FeedStatus { url: feed.url, ..FeedStatus::default() };
        assert!(updates(Some(not_yet)).render(now).contains("last checked: not yet"));
        assert!(updates(None).render(now).contains("none configured"));
    }

    #[test]
    fn device_table_has_units_names_and_relative_times() {
        let mut d = device_view();
        d.device.availability = crate::devices::Availability::Online;
        let out = vec![d].render(1_012_000);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAME") && lines[0].contains("AVAILABILITY"), "{out}");
        assert!(lines[1].contains("Hall thermostat") && lines[1].contains("12 s ago"), "{out}");
        assert!(lines[1].contains("temp 21.50 °C") && lines[1].contains("87 %"), "{out}");
        // Columns line up: AVAILABILITY starts where "online" starts.
        assert_eq!(lines[0].find("AVAILABILITY"), lines[1].find("online"));
        assert!(Vec::<DeviceView>::new().render(0).contains("hub ctl pair open"));
    }

    #[test]
    fn isolated_device_shows_reason_support_and_replacement_path() {
        let mut d = device_view();
        d.device.info.about.updatable = false;
        let out = d.render(1_800_000_100_000);
        assert!(out.contains("ISOLATED:") && out.contains("firmware 3 is affected"), "{out}");
        assert!(out.contains("Support period:   ended 2023-11-1"), "{out}");
        assert!(out.contains("What to do:") && out.contains("Replace it"), "{out}");
        assert!(out.contains("no (cannot be updated)"), "{out}");
        assert!(out.contains("Readings stored:  42") && out.contains("Updates:"), "{out}");
        // Overridden: no longer shouting, and when.
        if let Some(i) = d.device.isolation.as_mut() {
            i.overridden_at = Some(1_800_000_050);
        }
        let out = d.render(1_800_000_100_000);
        assert!(out.contains("Isolation:") && out.contains("Overridden:"), "{out}");
    }

    #[test]
    fn pairing_advisories_and_upstream_read_their_fields() {
        let mut status = pairing_status();
        status.confirming = None;
        let out = status.render(0);
        assert!(out.contains("again in 4 s (closes in 100 s, 2 failed attempt(s) left)"), "{out}");
        assert!(out.contains("TH1") && out.contains("Warning for TH1: past its support"), "{out}");
        let out = vec![advisory()].render(0);
        assert!(out.starts_with("00112233 hearth-button-1 v1–3 (critical), fixed in 4"), "{out}");
        assert!(out.contains("01  isolated: not updatable"), "{out}");
        assert!(out.contains("02  fix scheduled: version 4"), "{out}");
        let off = UpstreamAnswer { configured: false, status: None };
        assert!(off.render(0).contains("locally only"));
        let on = UpstreamAnswer {
            configured: true,
            status: Some(crate::upstream::UpstreamStatus {
                url: "mqtts://broker:8883".into(),
                topic_prefix: "hearth".into(),
                pending: 5,
                tls_refused: 1,
                ..Default::default()
            }),
        };
        let out = on.render(0);
        assert!(out.starts_with("Upstream mqtts://broker:8883 (disconnected), topics hearth/"));
        assert!(out.contains("pending (not yet acknowledged)      5"), "{out}");
        assert!(out.contains("refused 1 time(s)"), "{out}");
        let report = SecurityReport { bad_payload: 3, total: 3, ..SecurityReport::default() };
        let out = report.render(0);
        assert!(
            out.contains("Readings refused for breaking a limit")
                && out.ends_with("Security events in total: 3\nNo anomaly now.\n"),
            "{out}"
        );
        let mut report = report;
        report.link.bad_tag = 40;
        report.recent.insert("bad_tag".into(), 12);
        report.anomalies.push("bad_tag".into());
        let out = report.render(0);
        let row = out.lines().find(|l| l.contains("bad tags")).unwrap_or_default();
        assert_eq!(
            row.split_whitespace().rev().take(3).collect::<Vec<_>>(),
            ["ANOMALY", "40", "12"],
            "{out}"
        );
        // Bookkeeping has no window; the link's counters come first, in catalogue order.
        let dup = out.lines().find(|l| l.contains("Retransmissions")).unwrap_or_default();
        assert!(dup.contains(" - "), "{dup}");
        assert!(out.find("Malformed CoAP") < out.find("Failed MQTT logins"), "{out}");
        assert!(out.contains("1 anomaly flag(s)"), "{out}");
    }

    #[test]
    fn the_self_check_names_what_is_not_met_and_what_to_do() {
        use web_ui::api::{Action, Check};
        let mut bad = Check::new("5.3-13", "Support period published", false, "1 past".into());
        bad.devices = vec![("0a".into(), "Hall".into())];
        bad.action = Some(Action { text: "Replace it.".into(), href: None });
        let checks = vec![Check::new("5.1-1", "No default passwords", true, "none".into()), bad];
        let out = checks.render(0);
        assert!(out.contains("5.3-13 Support period published is not met. Devices: Hall (0a). What to do: Replace it."), "{out}");
        assert!(out.contains("1 of 2 met now"), "{out}");
    }

    #[test]
    fn times_and_units() {
        assert_eq!(relative(0, 59_999), "59 s ago");
        assert_eq!(relative(0, 7_200_000), "2 h ago");
        assert_eq!(Unit::display("Cel"), "°C");
        assert_eq!(value(&serde_json::json!(true), None), "true");
        assert_eq!(value(&serde_json::json!(3.0), Some("count")), "3");
        // Local time uses the system zone; the date part is always there.
        assert!(local_time(0).starts_with("19"), "{}", local_time(0));
    }
}
