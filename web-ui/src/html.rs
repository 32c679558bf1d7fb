//! HTML building blocks: escaping, the page frame (no inline script or style, so the strict CSP
//! holds), dates, and server-rendered SVG charts of readings.

use std::fmt::Write as _;

use crate::api::Reading;

/// Escapes text for HTML element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Navigation for a logged-in owner: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/", "Dashboard"),
    ("/pairing", "Pairing"),
    ("/updates", "Updates"),
    ("/isolated", "Isolated"),
    ("/security", "Security status"),
    ("/events", "Security events"),
    ("/privacy", "Privacy"),
    ("/account", "Account"),
];

/// A full page. `csrf` is the session's token (a logged-in page: navigation and log-out shown);
/// `live` makes the script subscribe to live updates.
pub fn page(title: &str, csrf: Option<&str>, live: bool, body: &str) -> String {
    let mut nav = String::new();
    if let Some(csrf) = csrf {
        nav.push_str("<nav>");
        for (href, label) in NAV {
            let _ = write!(nav, "<a href=\"{href}\">{label}</a>");
        }
        let _ = write!(
            nav,
            "<form method=\"post\" action=\"/logout\" class=\"inline\">{}<button>Log out</button></form></nav>",
            csrf_field(csrf)
        );
    }
    let live = if live { " data-live=\"1\"" } else { "" };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · Hearth</title><link rel=\"stylesheet\" href=\"/static/app.css\">\
         <script src=\"/static/app.js\" defer></script></head>\
         <body{live}><header><span class=\"brand\">Hearth</span>{nav}</header>\
         <main><h1>{t}</h1>\n{body}\n</main></body></html>\n",
        t = esc(title)
    )
}

/// The hidden CSRF input of a form.
pub fn csrf_field(csrf: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf))
}

/// A notice (`ok` or `error`).
pub fn notice(kind: &str, text: &str) -> String {
    let role = if kind == "error" { "alert" } else { "status" };
    format!("<p class=\"notice {kind}\" role=\"{role}\">{}</p>", esc(text))
}

/// `YYYY-MM-DD HH:MM UTC` for Unix seconds.
pub fn datetime(unix_s: u64) -> String {
    let days = i64::try_from(unix_s / 86_400).unwrap_or(0);
    let secs = unix_s % 86_400;
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", secs / 3600, secs % 3600 / 60)
}

/// `YYYY-MM-DD` for Unix seconds.
pub fn date(unix_s: u64) -> String {
    let (y, m, d) = civil(i64::try_from(unix_s / 86_400).unwrap_or(0));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A reading as shown: value and unit.
pub fn reading_text(r: &Reading) -> String {
    match &r.unit {
        Some(u) if !u.is_empty() => format!("{} {}", r.text, u),
        _ => r.text.clone(),
    }
}

/// The newest readings as one line: `temperature 21.3 Cel · setpoint 21.0 Cel` (or a dash).
pub fn readings_text(last: &[Reading]) -> String {
    if last.is_empty() {
        return "—".into();
    }
    last.iter().map(|r| format!("{} {}", r.name, reading_text(r))).collect::<Vec<_>>().join(" · ")
}

/// The chart of one quantity: the readings named like the newest of `last`'s first.
pub fn chart_of(readings: &[Reading], last: &[Reading], width: u32, height: u32) -> String {
    let name = last.first().map(|r| r.name.as_str()).unwrap_or("");
    let same: Vec<Reading> = readings.iter().filter(|r| r.name == name).cloned().collect();
    chart(&same, width, height)
}

/// An SVG line chart of the numeric readings (oldest first), or a note when there are none.
pub fn chart(readings: &[Reading], width: u32, height: u32) -> String {
    let points: Vec<(i64, f64)> = readings
        .iter()
        .filter_map(|r| r.value.filter(|v| v.is_finite()).map(|v| (r.time_ms, v)))
        .collect();
    if points.len() < 2 {
        return "<span class=\"muted\">not enough readings for a chart</span>".into();
    }
    let (t0, t1) = (points[0].0, points[points.len() - 1].0);
    let (lo, hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, v)| (lo.min(*v), hi.max(*v)));
    let span_t = (t1 - t0).max(1) as f64;
    let span_v = if hi > lo { hi - lo } else { 1.0 };
    let (w, h, pad) = (f64::from(width), f64::from(height), 4.0);
    let mut path = String::new();
    for (i, (t, v)) in points.iter().enumerate() {
        let x = pad + (*t - t0) as f64 / span_t * (w - 2.0 * pad);
        let y = h - pad - (v - lo) / span_v * (h - 2.0 * pad);
        let _ = write!(path, "{}{x:.1},{y:.1}", if i == 0 { "" } else { " " });
    }
    let unit = readings.last().and_then(|r| r.unit.clone()).unwrap_or_default();
    format!(
        "<svg class=\"chart\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" \
         role=\"img\" aria-label=\"{n} readings from {lo:.1} to {hi:.1} {u}\">\
         <title>{n} readings, {lo:.1} to {hi:.1} {u}</title>\
         <polyline fill=\"none\" stroke=\"#c2410c\" stroke-width=\"1.5\" points=\"{path}\"/>\
         <text x=\"2\" y=\"10\" font-size=\"9\" fill=\"#555\">{hi:.1}</text>\
         <text x=\"2\" y=\"{yb}\" font-size=\"9\" fill=\"#555\">{lo:.1}</text></svg>",
        n = points.len(),
        u = esc(&unit),
        yb = height - 2,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_dates() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(datetime(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(1_709_164_800), "2024-02-29");
        assert_eq!(datetime(4_102_444_799), "2099-12-31 23:59 UTC");
    }

    #[test]
    fn chart_scales_points() {
        let r = |t, v: f64| Reading {
            time_ms: t,
            name: "t".into(),
            unit: Some("Cel".into()),
            value: Some(v),
            text: v.to_string(),
        };
        let svg = chart(&[r(0, 10.0), r(1000, 20.0)], 100, 50);
        assert!(svg.contains("points=\"4.0,46.0 96.0,4.0\""), "{svg}");
        assert!(chart(&[r(0, 1.0)], 100, 50).contains("not enough"));
    }
}
