//! HTML building blocks shared by the pages, written as maud templates (escaped at compile
//! time: no `format!` HTML, no hand-written escaper): the page frame (no inline script or style,
//! so the strict CSP holds), notices, the CSRF field, and how a device and its state read.

use maud::{DOCTYPE, Markup, html};

use crate::api::{Availability, Device, Reading, ReadingKind};

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
pub(crate) fn page(title: &str, csrf: Option<&str>, live: bool, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Hearth" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body data-live=[live.then_some("1")] {
                header {
                    span.brand { "Hearth" }
                    @if let Some(csrf) = csrf {
                        nav {
                            @for (href, label) in NAV { a href=(href) { (label) } }
                            form.inline method="post" action="/logout" {
                                (csrf_field(csrf)) button { "Log out" }
                            }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
    .into_string()
}

/// The hidden CSRF input of a form.
pub(crate) fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// A notice (`ok`, `warning` or `error`).
pub(crate) fn notice(kind: &str, text: &str) -> Markup {
    let role = if kind == "error" { "alert" } else { "status" };
    html! { p.notice.(kind) role=(role) { (text) } }
}

/// The owner's name for a device, with its room, or its model and serial.
pub(crate) fn device_name(d: &Device) -> String {
    match (&d.name, &d.room) {
        (Some(n), Some(r)) => format!("{n} ({r})"),
        (Some(n), None) => n.clone(),
        _ => format!("{} {}", d.model, d.serial),
    }
}

/// The availability as a word (also its badge's class).
pub(crate) fn availability(a: &Availability) -> &'static str {
    match a {
        Availability::Online => "online",
        Availability::Offline => "offline",
        Availability::Isolated { .. } => "isolated",
    }
}

/// A reading as shown: value and unit, or the state in words (`open`, `pressed`).
pub(crate) fn reading_text(r: &Reading) -> String {
    match &r.unit {
        Some(u) if !u.is_empty() && r.kind != ReadingKind::State => format!("{} {u}", r.text),
        _ => r.text.clone(),
    }
}

/// What a reading is called (`temperature`, `door`).
pub(crate) fn reading_label(r: &Reading) -> &str {
    if r.label.is_empty() { &r.name } else { &r.label }
}

/// The newest readings as one line: `temperature 21.3 °C · setpoint 21.0 °C · door open` (or a
/// dash).
pub(crate) fn readings_text(last: &[Reading]) -> String {
    if last.is_empty() {
        return "—".into();
    }
    last.iter()
        .map(|r| format!("{} {}", reading_label(r), reading_text(r)))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// The device's main quantity: the first of its newest readings that is not its battery.
pub(crate) fn main_quantity(last: &[Reading]) -> Option<&Reading> {
    last.iter().find(|r| r.kind != ReadingKind::Battery)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_by_the_template() {
        let page = page("<b>&'\"", None, false, notice("error", "<script>"));
        assert!(page.contains("<title>&lt;b&gt;&amp;'&quot; · Hearth</title>"), "{page}");
        assert!(page.contains("&lt;script&gt;"), "{page}");
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("data-live"), "{page}");
        assert!(page.contains("<body>"), "{page}");
        let live = page_live();
        assert!(live.contains("<body data-live=\"1\">"), "{live}");
    }

    fn page_live() -> String {
        page("x", Some("tok\""), true, html! {})
    }

    #[test]
    fn binary_states_read_as_words_and_the_battery_is_not_the_main_quantity() {
        let r = |name: &str, label: &str, text: &str, unit: Option<&str>, kind| Reading {
            time_ms: 0,
            name: name.into(),
            label: label.into(),
            unit: unit.map(str::to_owned),
            value: Some(1.0),
            text: text.into(),
            kind,
        };
        let last = [
            r("battery", "battery", "87", Some("%"), ReadingKind::Battery),
            r("open", "door", "open", None, ReadingKind::State),
        ];
        assert_eq!(readings_text(&last), "battery 87 % · door open");
        assert_eq!(main_quantity(&last).map(|r| r.name.as_str()), Some("open"));
        assert_eq!(main_quantity(&last[..1]), None);
    }
}
