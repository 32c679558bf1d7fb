//! `hub ctl` output for people: the control socket's JSON answers as aligned tables and short
//! sentences, with units and local times (`--json` prints the answer itself, for scripts).

use std::fmt::Write as _;

use serde_json::Value;

/// What was asked, so the answer can be laid out for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The device list.
    Devices,
    /// One device.
    Device,
    /// A device's readings.
    Readings,
    /// Pairing status.
    Pairing,
    /// Security counters.
    Security,
    /// Advisories.
    Advisories,
    /// The upstream bridge.
    Upstream,
    /// Updates: the feed's last check, then releases, refusals and devices.
    Updates,
    /// Anything else: keys and values.
    Plain,
}

/// Renders `answer` for people; `now_ms` is the current time (for "12 s ago").
pub fn render(view: View, answer: &Value, now_ms: i64) -> String {
    match view {
        View::Devices => devices(answer, now_ms),
        View::Device => device(answer, now_ms),
        View::Readings => readings(answer),
        View::Pairing => pairing(answer),
        View::Security => security(answer),
        View::Advisories => advisories(answer),
        View::Upstream => upstream(answer),
        View::Updates => updates(answer, now_ms),
        View::Plain => plain(answer, 0),
    }
}

/// A SenML unit as people write it.
pub fn unit(u: &str) -> &str {
    match u {
        "Cel" => "°C",
        "%RH" => "% RH",
        "%EL" | "%" => "%",
        "count" => "",
        other => other,
    }
}

/// Unix milliseconds in the local time zone (`2026-12-04 19:30:05`).
pub fn local_time(ms: i64) -> String {
    let Ok(ts) = jiff::Timestamp::from_millisecond(ms) else { return ms.to_string() };
    ts.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// Unix seconds as a local date.
pub fn local_date(s: u64) -> String {
    let Ok(ts) = jiff::Timestamp::from_second(s as i64) else { return s.to_string() };
    ts.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d").to_string()
}

/// `5 s ago`, `3 min ago`, `2 h ago`, `4 d ago`.
pub fn ago(then_ms: i64, now_ms: i64) -> String {
    let s = (now_ms - then_ms).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
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
    match u.map(unit) {
        Some("") | None => n,
        Some(u) => format!("{n} {u}"),
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
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

fn state_summary(d: &Value) -> String {
    let Some(state) = d.get("state").and_then(Value::as_object) else { return String::new() };
    state
        .iter()
        .filter(|(k, _)| *k != "battery" && *k != "buffer_dropped")
        .map(|(k, r)| format!("{k} {}", value(&r["value"], r.get("unit").and_then(Value::as_str))))
        .collect::<Vec<_>>()
        .join(", ")
}

fn devices(answer: &Value, now_ms: i64) -> String {
    let Some(list) = answer.as_array() else { return plain(answer, 0) };
    if list.is_empty() {
        return "No devices paired. Pair one with `hub ctl pair open`, then `hub ctl pair pin <PIN>`.\n"
            .into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            vec![
                text(d, "name").into(),
                d.get("room").and_then(Value::as_str).unwrap_or("-").into(),
                text(d, "id").into(),
                text(d, "model").into(),
                text(d, "availability").into(),
                d.get("last_seen_ms")
                    .and_then(Value::as_i64)
                    .map_or_else(|| "never".into(), |t| ago(t, now_ms)),
                d.get("battery").map_or_else(|| "-".into(), |b| value(b, Some("%"))),
                state_summary(d),
            ]
        })
        .collect();
    table(&["NAME", "ROOM", "ID", "MODEL", "AVAILABILITY", "LAST SEEN", "BATTERY", "STATE"], &rows)
}

fn device(d: &Value, now_ms: i64) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(out, "{:<18}{v}", format!("{k}:"));
    };
    kv("Name", text(d, "name").into());
    kv("Room", d.get("room").and_then(Value::as_str).unwrap_or("-").into());
    kv("Device id", text(d, "id").into());
    kv("Model", text(d, "model").into());
    kv("Serial", text(d, "serial").into());
    kv("Firmware", d["firmware_version"].to_string());
    let updatable = d["updatable"].as_bool().unwrap_or(false);
    kv("Updatable", if updatable { "yes".into() } else { "no (cannot be updated)".into() });
    if let Some(end) = d["support_end"].as_u64() {
        let over = (end as i64) * 1000 <= now_ms;
        kv(
            "Support period",
            format!("{} {}", if over { "ended" } else { "until" }, local_date(end)),
        );
    }
    let caps: Vec<&str> = d["capabilities"]
        .as_array()
        .map_or(vec![], |c| c.iter().filter_map(Value::as_str).collect());
    kv("Senses", caps.join(", "));
    kv("Availability", text(d, "availability").into());
    kv(
        "Last seen",
        d.get("last_seen_ms")
            .and_then(Value::as_i64)
            .map_or_else(|| "never".into(), |t| format!("{} ({})", local_time(t), ago(t, now_ms))),
    );
    kv("Reporting every", format!("{} s", d["period_ms"].as_u64().unwrap_or(0) / 1000));
    if let Some(b) = d.get("battery") {
        kv("Battery", value(b, Some("%")));
    }
    if let Some(r) = d.get("readings") {
        kv("Readings stored", r.to_string());
    }
    if let Some(i) = d.get("isolation") {
        let overridden = i.get("overridden_at").and_then(Value::as_u64);
        let head = match overridden {
            Some(_) => "Isolation",
            None => "ISOLATED",
        };
        kv(head, text(i, "reason").into());
        if let Some(a) = i.get("advisory").and_then(Value::as_str) {
            kv("Advisory", a.into());
        }
        if let Some(t) = i.get("since").and_then(Value::as_u64) {
            kv("Since", local_time(t as i64 * 1000));
        }
        match overridden {
            Some(t) => kv("Overridden", format!("by the owner at {}", local_time(t as i64 * 1000))),
            None => kv("What to do", text(i, "replacement").into()),
        }
    }
    if let Some(state) = d.get("state").and_then(Value::as_object).filter(|s| !s.is_empty()) {
        let _ = writeln!(out, "\nCurrent state:");
        let rows: Vec<Vec<String>> = state
            .iter()
            .map(|(k, r)| {
                vec![
                    k.clone(),
                    value(&r["value"], r.get("unit").and_then(Value::as_str)),
                    r["time_ms"].as_i64().map(local_time).unwrap_or_default(),
                ]
            })
            .collect();
        out += &indent(&table(&["QUANTITY", "VALUE", "MEASURED"], &rows));
    }
    if let Some(t) = d.get("transitions").and_then(Value::as_array).filter(|t| !t.is_empty()) {
        let _ = writeln!(out, "\nAvailability history:");
        let rows: Vec<Vec<String>> = t
            .iter()
            .map(|t| {
                vec![
                    t["at_ms"].as_i64().map(local_time).unwrap_or_default(),
                    text(t, "to").into(),
                    text(t, "why").into(),
                ]
            })
            .collect();
        out += &indent(&table(&["WHEN", "NOW", "WHY"], &rows));
    }
    if let Some(u) = d.get("update").filter(|u| !u.is_null()) {
        let _ = writeln!(out, "\nUpdates:");
        out += &plain(u, 1);
    }
    out
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

fn readings(answer: &Value) -> String {
    let Some(list) = answer.as_array() else { return plain(answer, 0) };
    if list.is_empty() {
        return "No readings stored.\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let name = text(r, "name");
            vec![
                r["time_ms"].as_i64().map(local_time).unwrap_or_default(),
                name.rsplit(':').next().unwrap_or(name).into(),
                value(&r["value"], r.get("unit").and_then(Value::as_str)),
            ]
        })
        .collect();
    table(&["MEASURED", "QUANTITY", "VALUE"], &rows)
}

fn pairing(p: &Value) -> String {
    let (closes, left) = (&p["closes_in_s"], &p["attempts_left"]);
    let mut out = match p["state"].as_str() {
        Some("backing_off") => format!(
            "Pairing window open, pausing after a failed attempt: PINs are taken again in {} s \
             (closes in {closes} s, {left} failed attempt(s) left).\n",
            p["backoff_s"]
        ),
        Some("no_attempts_left") => "Pairing window closed after its failed attempts. Open a new \
             one with `hub ctl pair open`.\n"
            .into(),
        _ if p["open"].as_bool().unwrap_or(false) => {
            format!("Pairing window open: closes in {closes} s, {left} failed attempt(s) left.\n")
        }
        _ => "Pairing window closed. Open it with `hub ctl pair open`.\n".into(),
    };
    if let Some(w) = p["waiting"].as_array().filter(|w| !w.is_empty()) {
        out += "\nWaiting for their PIN:\n";
        let rows: Vec<Vec<String>> = w
            .iter()
            .map(|s| {
                vec![
                    text(s, "serial").into(),
                    text(s, "model").into(),
                    s["firmware_version"].as_u64().map_or_else(String::new, |v| v.to_string()),
                    text(s, "device").into(),
                ]
            })
            .collect();
        out += &indent(&table(&["SERIAL", "MODEL", "FIRMWARE", "FUTURE ID"], &rows));
        for s in w {
            if let Some(warning) = s["warning"].as_str() {
                out += &format!("\nWarning for {}: {warning}.\n", text(s, "serial"));
            }
        }
    }
    out
}

fn security(s: &Value) -> String {
    let Some(map) = s.as_object() else { return plain(s, 0) };
    let rows: Vec<Vec<String>> = map
        .iter()
        .filter(|(k, _)| *k != "total")
        .map(|(k, v)| vec![k.replace('_', " "), v.to_string()])
        .collect();
    let mut out = table(&["EVENT", "COUNT"], &rows);
    let _ = writeln!(out, "\nSecurity events in total: {}", s["total"]);
    out
}

fn upstream(u: &Value) -> String {
    if u["configured"] != true {
        return "No upstream broker configured: the hub works locally only.\n".into();
    }
    let state = if u["connected"] == true { "connected" } else { "disconnected" };
    let mut out = format!(
        "Upstream {} ({state}), topics {}/<device>/reading\n",
        text(u, "url"),
        text(u, "topic_prefix")
    );
    let rows = [
        ("pending (not yet acknowledged)", &u["pending"]),
        ("in flight", &u["in_flight"]),
        ("forwarded", &u["forwarded"]),
        ("dropped (outbox full or retention)", &u["dropped"]),
        ("withheld (isolated devices)", &u["withheld"]),
    ];
    let rows: Vec<Vec<String>> =
        rows.iter().map(|(k, v)| vec![(*k).into(), v.to_string()]).collect();
    out.push_str(&table(&["OUTBOX", "READINGS"], &rows));
    let _ = writeln!(out, "Connections since start: {}", u["connections"]);
    if u["tls_refused"].as_u64().is_some_and(|n| n > 0) {
        let _ = writeln!(
            out,
            "Broker certificate refused {} time(s) since start: a possible man in the middle (see the log)",
            u["tls_refused"]
        );
    }
    if let Some(e) = u["last_error"].as_str() {
        let _ = writeln!(out, "Last connection error: {e}");
    }
    out
}

/// In how long `then_ms` comes ("in 5 min").
fn until(then_ms: i64, now_ms: i64) -> String {
    let s = (then_ms - now_ms).max(0) / 1000;
    match s {
        0..60 => format!("in {s} s"),
        60..3600 => format!("in {} min", s / 60),
        3600..86_400 => format!("in {} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("in {} d", s / 86_400),
    }
}

/// The feed's line: when it was last checked and how that went, and the next check.
fn feed(f: &Value, now_ms: i64) -> String {
    let Some(url) = f["url"].as_str() else {
        return "Update feed: none configured (`[updates] feed_url`); releases come from \
                `hub ctl update add`\n"
            .into();
    };
    let mut out = format!("Update feed: {url}\n");
    let when =
        |key: &str| f[key].as_i64().map(|ms| format!("{} ({})", local_time(ms), ago(ms, now_ms)));
    match (when("last_checked_ms"), f["last_error"].as_str()) {
        (None, _) => out.push_str("  last checked: not yet\n"),
        (Some(at), None) => {
            let _ = writeln!(
                out,
                "  last checked: {at}, it lists {} release(s) and {} advisory(ies)",
                f["releases"], f["advisories"]
            );
        }
        (Some(at), Some(e)) => {
            let _ = writeln!(out, "  last checked: {at}, failed: {e}");
            let ok = when("last_ok_ms").unwrap_or_else(|| "never".into());
            let _ = writeln!(out, "  last successful check: {ok}");
        }
    }
    if let Some(next) = f["next_check_ms"].as_i64() {
        let _ = writeln!(out, "  next check: {} ({})", local_time(next), until(next, now_ms));
    }
    out
}

fn updates(answer: &Value, now_ms: i64) -> String {
    let mut out = feed(&answer["feed"], now_ms);
    let mut rest = answer.clone();
    if let Some(m) = rest.as_object_mut() {
        m.remove("feed");
    }
    out.push_str(&plain(&rest, 0));
    out
}

fn advisories(answer: &Value) -> String {
    let Some(list) = answer.as_array() else { return plain(answer, 0) };
    if list.is_empty() {
        return "No security advisories received.\n".into();
    }
    let mut out = String::new();
    for a in list {
        let _ = writeln!(
            out,
            "{} {} v{}–{} ({}), fixed in {}: {}",
            text(a, "id"),
            text(a, "model"),
            a["affected_low"],
            a["affected_high"],
            text(a, "severity"),
            a.get("fixed_in").map_or_else(|| "no version yet".into(), |v| v.to_string()),
            text(a, "text")
        );
        if let Some(actions) = a["actions"].as_object() {
            for (device, act) in actions {
                let what = match text(act, "action") {
                    "isolated" => format!("isolated: {}", text(act, "reason")),
                    "fix_scheduled" => match act.get("version") {
                        Some(v) => format!("fix scheduled: version {v}"),
                        None => "waiting for the manufacturer's fix".into(),
                    },
                    other => other.into(),
                };
                let _ = writeln!(out, "  {device}  {what}");
            }
        }
    }
    out
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
    use serde_json::json;

    #[test]
    fn updates_say_when_the_feed_was_last_checked() {
        let now = 1_800_000_000_000;
        let mut answer = json!({"policy": "auto", "releases": [], "feed": {
            "url": "https://feed.example/", "last_checked_ms": now - 180_000,
            "last_ok_ms": now - 180_000, "last_error": null, "releases": 4, "advisories": 1,
            "next_check_ms": now + 7_500_000
        }});
        let out = render(View::Updates, &answer, now);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "Update feed: https://feed.example/", "{out}");
        assert!(lines[1].contains("last checked: ") && lines[1].contains("(3 min ago)"), "{out}");
        assert!(lines[1].ends_with("4 release(s) and 1 advisory(ies)"), "{out}");
        assert!(lines[2].contains("next check: ") && lines[2].ends_with("(in 2 h 5 min)"), "{out}");
        assert!(out.contains("policy: auto") && !out.contains("next check ms"), "{out}");

        answer["feed"]["last_error"] = json!("connecting to the feed: refused");
        answer["feed"]["last_checked_ms"] = json!(now - 5_000);
        let out = render(View::Updates, &answer, now);
        assert!(out.contains("(5 s ago), failed: connecting to the feed: refused"), "{out}");
        assert!(out.contains("last successful check: ") && out.contains("(3 min ago)"), "{out}");

        answer["feed"] = json!({"url": "https://feed.example/", "last_checked_ms": null});
        assert!(render(View::Updates, &answer, now).contains("last checked: not yet"));
        answer["feed"] = Value::Null;
        assert!(render(View::Updates, &answer, now).contains("none configured"));
    }

    #[test]
    fn device_table_has_units_names_and_relative_times() {
        let list = json!([{
            "id": "0a0b0c0d", "name": "Hall thermostat", "room": "Hall", "model": "hearth-thermo-1",
            "availability": "online", "last_seen_ms": 1_000_000, "battery": 87.0,
            "state": {"temp": {"time_ms": 1, "name": "urn:dev:TH1:temp", "unit": "Cel", "value": 21.5}}
        }]);
        let out = render(View::Devices, &list, 1_012_000);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAME") && lines[0].contains("AVAILABILITY"), "{out}");
        assert!(lines[1].contains("Hall thermostat") && lines[1].contains("12 s ago"), "{out}");
        assert!(lines[1].contains("temp 21.50 °C") && lines[1].contains("87 %"), "{out}");
        // Columns line up: AVAILABILITY starts where "online" starts.
        assert_eq!(lines[0].find("AVAILABILITY"), lines[1].find("online"));
        assert!(render(View::Devices, &json!([]), 0).contains("hub ctl pair open"));
    }

    #[test]
    fn isolated_device_shows_reason_support_and_replacement_path() {
        let d = json!({
            "id": "01", "name": "Button", "model": "hearth-button-1", "serial": "BT1",
            "firmware_version": 1, "updatable": false, "support_end": 1_700_000_000u64,
            "capabilities": ["button"], "availability": "isolated", "period_ms": 60_000,
            "isolation": {"reason": "firmware 1 is affected", "since": 1_800_000_000u64,
                          "replacement": "Replace it: ...", "advisory": "hearth-button-1 v1–1"},
            "state": {}, "transitions": []
        });
        let out = render(View::Device, &d, 1_800_000_100_000);
        assert!(out.contains("ISOLATED:") && out.contains("firmware 1 is affected"), "{out}");
        assert!(out.contains("Support period:   ended 2023-11-1"), "{out}");
        assert!(out.contains("What to do:") && out.contains("Replace it"), "{out}");
        assert!(out.contains("no (cannot be updated)"), "{out}");
    }

    #[test]
    fn times_and_units() {
        assert_eq!(ago(0, 59_999), "59 s ago");
        assert_eq!(ago(0, 7_200_000), "2 h ago");
        assert_eq!(unit("Cel"), "°C");
        assert_eq!(value(&json!(true), None), "true");
        assert_eq!(value(&json!(3.0), Some("count")), "3");
        // Local time uses the system zone; the date part is always there.
        assert_eq!(local_time(0).len(), "1970-01-01 00:00:00".len());
    }
}
