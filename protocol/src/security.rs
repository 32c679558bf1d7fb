//! The catalogue of security counters (EN 303 645 5.10-1): every counter the hub keeps — the
//! link's, MQTT's, the listeners', the web UI's — with what it counts in words, whether it is a
//! security event (or bookkeeping such as retransmissions), and how many within the anomaly
//! window raise a flag. `hub ctl security`, the web UI and the tests read it from here.

/// One counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Machine name (the field in `hub ctl --json security`).
    pub name: &'static str,
    /// What it counts, for people.
    pub label: &'static str,
    /// Whether it counts security events (summed in the total; flagged when frequent).
    pub event: bool,
    /// Events within the anomaly window that raise a flag.
    pub threshold: u64,
}

const fn event(name: &'static str, label: &'static str, threshold: u64) -> Counter {
    Counter { name, label, event: true, threshold }
}

const fn bookkeeping(name: &'static str, label: &'static str) -> Counter {
    Counter { name, label, event: false, threshold: u64::MAX }
}

/// Events within the window that raise a flag when the catalogue says nothing else.
const USUAL: u64 = 20;

/// Every counter, in the order people read them.
pub const COUNTERS: &[Counter] = &[
    // The sensor link.
    event("malformed", "Malformed CoAP datagrams", USUAL),
    event("unknown_kid", "OSCORE messages for an unknown device", USUAL),
    event("replays", "Replayed messages refused", 10),
    event("bad_tag", "Messages failing authentication (bad tags)", 10),
    event("throttled", "Forged-looking datagrams dropped unverified", 10),
    event("bad_oscore", "Malformed OSCORE messages", USUAL),
    event("pairing_refused", "Pairing requests refused (no window, back-off, limits)", USUAL),
    event("pairing_throttled", "Pairing hellos dropped over a host's or the hub's budget", USUAL),
    event("unprotected_throttled", "Unprotected datagrams dropped over their host's share", USUAL),
    event("pairing_failed", "Failed pairing attempts (wrong PIN)", 5),
    event("bad_request", "Requests for missing or unprotected resources", USUAL),
    event("key_limit", "Requests refused at a key-usage limit", 3),
    event("bad_payload", "Readings refused for breaking a limit", USUAL),
    bookkeeping("duplicates", "Retransmissions answered again"),
    bookkeeping("echo_limited", "Return-routability challenges not repeated (rate limit)"),
    bookkeeping("echo_challenges", "Return-routability challenges sent"),
    bookkeeping("routable", "Requests verified after a return-routability challenge"),
    // MQTT.
    event("mqtt_login_failed", "Failed MQTT logins", USUAL),
    event("mqtt_throttled", "MQTT logins refused during back-off", USUAL),
    event(
        "mqtt_login_shed",
        "MQTT logins refused unchecked while password hashing was busy",
        USUAL,
    ),
    event("mqtt_malformed", "Malformed MQTT packets", USUAL),
    event(
        "mqtt_denied_publish",
        "MQTT publications and subscriptions the topic rules refused",
        USUAL,
    ),
    // The listeners.
    event(
        "web_connections_shed",
        "Web connections closed or refused to make room (per-address cap, full)",
        USUAL,
    ),
    event("web_slow_requests", "Web connections cut for a late handshake, headers or body", USUAL),
    event(
        "mqtt_connections_shed",
        "MQTT connections closed or refused to make room (per-address cap, full)",
        USUAL,
    ),
    event("mqtt_slow_connects", "MQTT connections without TLS and CONNECT in time", USUAL),
    event("mqtt_bypass_refused", "Connections to the MQTT broker that skipped the fronts", USUAL),
    event("upstream_tls_refused", "Upstream broker certificates refused (possible MITM)", USUAL),
    // The web UI.
    event("web_login_failed", "Failed web logins", 5),
    event("web_login_throttled", "Web logins refused during back-off", 10),
    event("web_setup_code_refused", "Wrong setup codes", 5),
    event("web_csrf_refused", "State changes without a valid CSRF token", 3),
    event("web_cross_site_refused", "State changes from another site", 3),
    event("web_malformed", "Malformed web requests", USUAL),
    event("web_too_large", "Oversized web requests", 3),
    event("web_unauthenticated", "Requests without a session", 100),
    event("web_login_shed", "Logins refused unchecked while password hashing was busy", 10),
];

/// The catalogue's entry for `name`.
pub fn counter(name: &str) -> Option<&'static Counter> {
    COUNTERS.iter().find(|c| c.name == name)
}

/// What `name` counts, for people (its name in words if the catalogue lacks it).
pub fn label(name: &str) -> String {
    counter(name).map_or_else(|| name.replace('_', " "), |c| c.label.to_owned())
}

/// Events of `name` within the anomaly window that raise a flag.
pub fn threshold(name: &str) -> u64 {
    counter(name).map_or(USUAL, |c| c.threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_machine_readable() {
        let mut names: Vec<&str> = COUNTERS.iter().map(|c| c.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a counter is listed twice");
        for c in COUNTERS {
            assert!(c.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", c.name);
            assert!(!c.label.is_empty() && c.threshold > 0, "{c:?}");
            assert_eq!(c.event, c.threshold != u64::MAX, "{c:?}");
        }
    }

    #[test]
    fn lookups_fall_back_for_unknown_names() {
        assert_eq!(label("bad_tag"), "Messages failing authentication (bad tags)");
        assert_eq!(label("some_new_thing"), "some new thing");
        assert_eq!(threshold("key_limit"), 3);
        assert_eq!(threshold("some_new_thing"), USUAL);
    }
}
