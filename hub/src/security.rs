//! The hub's security monitor (EN 303 645 5.10-1): the counters of every source beside the
//! link (MQTT, the listeners, the upstream bridge, the web UI) continued across restarts, saved
//! in one document with the link's own counters by the link's commits (one path: a count is
//! durable with the commit that saw it), and the anomaly flags computed continuously over a
//! sliding window from the catalogue's thresholds (`api::security` reports them and keeps the
//! monitor current).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use web_ui::state::WebEvent;

use crate::connections::{ConnectionCounters, Listeners};
use crate::mqtt::auth::{Auth, MqttCounters};
use crate::store::HubStore;
use crate::upstream::UpstreamHandle;

/// Key of the one persisted document of security counters (the link's and [`Others`]).
pub(crate) const COUNTERS_KEY: &str = "security_counters";
/// Where earlier versions kept the MQTT and the connection counters (read once, at upgrade).
const LEGACY_KEYS: [&str; 2] = [crate::mqtt::auth::COUNTERS_KEY, "connection_counters"];
/// How far back the anomaly flags look.
pub(crate) const WINDOW: Duration = Duration::from_secs(5 * 60);
/// How often [`Others`] is refreshed for the link to save.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How often the counters are sampled for the anomaly window.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// The web UI's security events (EN 303 645 5.10-1), counted by the hub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebCounters {
    /// Wrong user names or passwords.
    #[serde(default)]
    pub web_login_failed: u64,
    /// Logins refused unchecked during a back-off.
    #[serde(default)]
    pub web_login_throttled: u64,
    /// Wrong one-time setup codes.
    #[serde(default)]
    pub web_setup_code_refused: u64,
    /// State changes without the right CSRF token.
    #[serde(default)]
    pub web_csrf_refused: u64,
    /// State changes from another site.
    #[serde(default)]
    pub web_cross_site_refused: u64,
    /// Malformed requests.
    #[serde(default)]
    pub web_malformed: u64,
    /// Oversized requests.
    #[serde(default)]
    pub web_too_large: u64,
    /// Requests without a session.
    #[serde(default)]
    pub web_unauthenticated: u64,
    /// Logins refused unchecked while password hashing was busy.
    #[serde(default)]
    pub web_login_shed: u64,
}

impl WebCounters {
    /// The counter of `e`.
    fn field(&mut self, e: WebEvent) -> &mut u64 {
        match e {
            WebEvent::LoginFailed => &mut self.web_login_failed,
            WebEvent::LoginThrottled => &mut self.web_login_throttled,
            WebEvent::SetupCodeRefused => &mut self.web_setup_code_refused,
            WebEvent::CsrfRefused => &mut self.web_csrf_refused,
            WebEvent::CrossSite => &mut self.web_cross_site_refused,
            WebEvent::Malformed => &mut self.web_malformed,
            WebEvent::TooLarge => &mut self.web_too_large,
            WebEvent::Unauthenticated => &mut self.web_unauthenticated,
            WebEvent::LoginShed => &mut self.web_login_shed,
        }
    }

    /// The sum.
    pub fn total(&self) -> u64 {
        counts(self).values().sum()
    }
}

/// The counters of every source beside the link, as saved and reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Others {
    #[serde(flatten)]
    pub(crate) mqtt: MqttCounters,
    #[serde(flatten)]
    pub(crate) connections: ConnectionCounters,
    #[serde(flatten)]
    pub(crate) web: WebCounters,
}

/// Where the counters beside the link come from.
pub(crate) struct Sources {
    /// MQTT logins and packets (none with MQTT off).
    pub(crate) mqtt: Option<Arc<Auth>>,
    /// The listeners' slots.
    pub(crate) listeners: Listeners,
    /// The upstream bridge (its refused certificates).
    pub(crate) upstream: Option<UpstreamHandle>,
}

/// The security monitor, shared by the link (which saves [`Monitor::saved_others`] with its
/// commits), the owner API and the web UI.
pub(crate) struct Monitor {
    sources: Sources,
    /// The web UI's events since this start, in [`WebEvent`] order.
    web: [AtomicU64; WebEvent::ALL.len()],
    /// What earlier starts counted.
    before: Others,
    /// The newest [`Others`] for the link to save (refreshed off the link's thread, so the link
    /// never waits on another subsystem's lock; this lock is held for a copy only).
    latest: Mutex<Others>,
    /// Samples of every counter, oldest first: one at least [`WINDOW`] old is the baseline.
    samples: Mutex<VecDeque<(Instant, BTreeMap<String, u64>)>>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").field("before", &self.before).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every number field of `value` by name (a flat counter struct as a map).
pub(crate) fn counts<T: Serialize>(value: &T) -> BTreeMap<String, u64> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(m)) => {
            m.into_iter().filter_map(|(k, v)| Some((k, v.as_u64()?))).collect()
        }
        _ => BTreeMap::new(),
    }
}

/// `a + b`, field by field, for flat counter structs.
fn sum<T: Serialize + DeserializeOwned + Default>(a: &T, b: &T) -> T {
    let mut m = counts(a);
    for (k, v) in counts(b) {
        *m.entry(k).or_default() += v;
    }
    serde_json::to_value(m).ok().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default()
}

impl Monitor {
    /// The monitor over `sources`, continuing what the store saved (the one document, or at the
    /// first start after an upgrade the older per-source documents). Unreadable counters start
    /// at 0 (and the log says so): they must not stop the hub.
    pub(crate) fn load(store: &HubStore, sources: Sources) -> Arc<Self> {
        let read = |key: &str| -> Option<serde_json::Value> {
            let bytes = store.meta(key).ok().flatten()?;
            serde_json::from_slice(&bytes)
                .map_err(|e| tracing::error!(key, error = %e, "security counters unreadable"))
                .ok()
        };
        let mut doc = read(COUNTERS_KEY).unwrap_or_else(|| serde_json::json!({}));
        // Upgrade: a document without a source's counters takes that source's old document.
        for key in LEGACY_KEYS {
            if let (Some(serde_json::Value::Object(old)), Some(new)) =
                (read(key), doc.as_object_mut())
            {
                for (k, v) in old {
                    new.entry(k).or_insert(v);
                }
            }
        }
        let before: Others = serde_json::from_value(doc).unwrap_or_default();
        Arc::new(Self {
            sources,
            web: Default::default(),
            before,
            latest: Mutex::new(before),
            samples: Mutex::new(VecDeque::new()),
        })
    }

    /// Counts a web UI security event.
    pub(crate) fn web_event(&self, e: WebEvent) {
        self.web[e.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters beside the link now (earlier starts' included).
    pub(crate) fn others(&self) -> Others {
        let mut web = WebCounters::default();
        for (e, n) in WebEvent::ALL.iter().zip(&self.web) {
            *web.field(*e) = n.load(Ordering::Relaxed);
        }
        let upstream = self.sources.upstream.as_ref().map_or(0, |u| u.status().tls_refused);
        let now = Others {
            mqtt: self.sources.mqtt.as_ref().map(|m| m.counters()).unwrap_or_default(),
            connections: self.sources.listeners.counters(upstream),
            web,
        };
        sum(&self.before, &now)
    }

    /// Refreshes what the link saves next ([`Monitor::saved_others`]).
    pub(crate) fn refresh(&self) {
        let now = self.others();
        *lock(&self.latest) = now;
    }

    /// The counters beside the link as last refreshed: the link saves them with its own.
    pub(crate) fn saved_others(&self) -> Others {
        *lock(&self.latest)
    }

    /// Events of each security-event counter within the window, and the names of those at or
    /// above their threshold (`current`: every counter now).
    pub(crate) fn window(&self, current: &BTreeMap<String, u64>) -> Recent {
        let samples = lock(&self.samples);
        window(samples.front().map(|(_, c)| c), current)
    }

    /// Takes a sample of every counter at `now` (every [`SAMPLE_EVERY`]).
    pub(crate) fn sample(&self, now: Instant, current: BTreeMap<String, u64>) {
        let mut samples = lock(&self.samples);
        // Keep one sample at least a window old (the baseline) and nothing older.
        while samples.get(1).is_some_and(|(t, _)| now.duration_since(*t) >= WINDOW) {
            samples.pop_front();
        }
        samples.push_back((now, current));
    }
}

/// Events within the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Recent {
    /// Per security-event counter.
    pub(crate) recent: BTreeMap<String, u64>,
    /// The counters at or above their threshold, in catalogue order.
    pub(crate) anomalies: Vec<String>,
}

/// Events since `base` (none: no sample yet, so nothing is recent) per security-event counter.
fn window(base: Option<&BTreeMap<String, u64>>, current: &BTreeMap<String, u64>) -> Recent {
    let mut out = Recent::default();
    for c in protocol::security::COUNTERS.iter().filter(|c| c.event) {
        let Some(&now) = current.get(c.name) else { continue };
        let before = base.map_or(now, |b| b.get(c.name).copied().unwrap_or(0));
        let recent = now.saturating_sub(before);
        out.recent.insert(c.name.to_owned(), recent);
        if recent >= c.threshold {
            out.anomalies.push(c.name.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A monitor with no MQTT or upstream, continuing from `before`.
    fn monitor(before: Others) -> Monitor {
        Monitor {
            sources: Sources {
                mqtt: None,
                listeners: Listeners::new(&crate::config::Config::default()),
                upstream: None,
            },
            web: Default::default(),
            before,
            latest: Mutex::new(before),
            samples: Mutex::new(VecDeque::new()),
        }
    }

    fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn a_burst_at_the_threshold_is_flagged_below_it_not() {
        let base = map(&[("bad_tag", 3), ("key_limit", 0), ("duplicates", 0)]);
        // bad_tag's threshold is 10, key_limit's 3; retransmissions are no event at all.
        let now = map(&[("bad_tag", 12), ("key_limit", 3), ("duplicates", 5000)]);
        let r = window(Some(&base), &now);
        assert_eq!(r.recent["bad_tag"], 9);
        assert_eq!(r.recent["key_limit"], 3);
        assert!(!r.recent.contains_key("duplicates"));
        assert_eq!(r.anomalies, vec!["key_limit".to_owned()]);
        let now = map(&[("bad_tag", 13), ("key_limit", 3)]);
        assert_eq!(window(Some(&base), &now).anomalies, vec!["bad_tag", "key_limit"]);
        // Before the first sample nothing is recent (a restart does not flag old totals).
        assert!(window(None, &now).anomalies.is_empty());
    }

    #[test]
    fn the_baseline_is_the_newest_sample_a_window_old() {
        let m = monitor(Others::default());
        let t0 = Instant::now();
        let tag = |n| map(&[("bad_tag", n)]);
        m.sample(t0, tag(0));
        m.sample(t0 + Duration::from_secs(60), tag(0));
        // 10 bad tags within the window: flagged.
        let r = m.window(&tag(10));
        assert_eq!(r.anomalies, vec!["bad_tag"]);
        m.sample(t0 + Duration::from_secs(120), tag(10));
        // Once the burst is older than the window, the flag is gone.
        let later = t0 + Duration::from_secs(120) + WINDOW + Duration::from_secs(1);
        m.sample(later, tag(10));
        let r = m.window(&tag(14));
        assert_eq!((r.recent["bad_tag"], r.anomalies.len()), (4, 0));
    }

    #[test]
    fn web_events_are_counted_and_continue_from_earlier_starts() {
        let mut before = Others::default();
        before.web.web_login_failed = 4;
        let m = monitor(before);
        for e in WebEvent::ALL {
            m.web_event(e);
        }
        m.web_event(WebEvent::LoginFailed);
        let o = m.others();
        assert_eq!(o.web.web_login_failed, 6);
        assert_eq!(o.web.total(), 6 + 8);
        // Every web event's name is the report's field of it (and in the catalogue).
        let names = counts(&o.web);
        for e in WebEvent::ALL {
            assert!(names.contains_key(e.name()), "{}", e.name());
            assert!(protocol::security::counter(e.name()).is_some_and(|c| c.event));
        }
        assert_eq!(names.len(), WebEvent::ALL.len());
        // The link saves what was last refreshed.
        assert_eq!(m.saved_others().web.web_login_failed, 4);
        m.refresh();
        assert_eq!(m.saved_others(), o);
    }
}
