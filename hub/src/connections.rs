//! The connection budgets of the hub's listeners (DESIGN "Failure domains and budgets";
//! EN 303 645 5.6-1, 5.10-1): the slots of the web UI and of each MQTT front (separately, per
//! listener), made from the configuration, and the counters `hub ctl security` shows for them,
//! for connections that tried to bypass the MQTT fronts, and for refused upstream certificates
//! (counted since this start: the security monitor continues them across restarts).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use admission::slots::{Limits, Slots};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The slots of every listener, and the counters kept beside them.
#[derive(Debug, Clone)]
pub struct Listeners {
    /// The web UI.
    pub web: Arc<Slots>,
    /// The plain MQTT front (loopback).
    pub mqtt_plain: Arc<Slots>,
    /// The TLS MQTT front (LAN).
    pub mqtt_tls: Arc<Slots>,
    /// Connections to the embedded broker's own port that no front prepared (refused).
    pub mqtt_bypass: Arc<AtomicU64>,
}

impl Listeners {
    /// Slots for each listener, as configured.
    pub fn new(config: &Config) -> Self {
        let web = Limits {
            capacity: config.web.max_connections,
            per_address: config.web.connections_per_address,
        };
        let mqtt = Limits {
            capacity: config.mqtt.max_connections,
            per_address: config.mqtt.connections_per_address,
        };
        Self {
            web: Slots::new("web UI", web),
            mqtt_plain: Slots::new("MQTT plain front", mqtt),
            mqtt_tls: Slots::new("MQTT TLS front", mqtt),
            mqtt_bypass: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The counters (upstream refusals since this start come from the upstream bridge).
    pub fn counters(&self, upstream_tls_refused: u64) -> ConnectionCounters {
        let web = self.web.counters();
        let (plain, tls) = (self.mqtt_plain.counters(), self.mqtt_tls.counters());
        ConnectionCounters {
            web_connections_shed: web.shed,
            web_slow_requests: web.slow,
            mqtt_connections_shed: plain.shed + tls.shed,
            mqtt_slow_connects: plain.slow + tls.slow,
            mqtt_bypass_refused: self.mqtt_bypass.load(Ordering::Relaxed),
            upstream_tls_refused,
        }
    }
}

/// Connection-level security events since the hub started (EN 303 645 5.10-1), shown by
/// `hub ctl security` beside the link's and MQTT's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionCounters {
    /// Web connections closed or refused to make room (per-address cap, full listener).
    #[serde(default)]
    pub web_connections_shed: u64,
    /// Web connections cut for being too slow: TLS handshake, request headers or body not
    /// complete in time.
    #[serde(default)]
    pub web_slow_requests: u64,
    /// MQTT connections closed or refused to make room (both fronts).
    #[serde(default)]
    pub mqtt_connections_shed: u64,
    /// MQTT connections that did not finish TLS and CONNECT in time (both fronts).
    #[serde(default)]
    pub mqtt_slow_connects: u64,
    /// Connections to the embedded broker's own port that did not come through a front.
    #[serde(default)]
    pub mqtt_bypass_refused: u64,
    /// Upstream broker certificates refused (unknown issuer, wrong name, expired...): a
    /// possible man in the middle.
    #[serde(default)]
    pub upstream_tls_refused: u64,
}

impl ConnectionCounters {
    /// The sum.
    pub fn total(&self) -> u64 {
        self.web_connections_shed
            + self.web_slow_requests
            + self.mqtt_connections_shed
            + self.mqtt_slow_connects
            + self.mqtt_bypass_refused
            + self.upstream_tls_refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_listener_has_its_own_slots_and_the_counters_add_up() {
        let mut config = Config::default();
        config.mqtt.max_connections = 2;
        config.mqtt.connections_per_address = 2;
        let l = Listeners::new(&config);
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        // Two on the plain front fill it; the TLS front still has room of its own.
        let held: Vec<_> = (0..2).map(|_| l.mqtt_plain.acquire(ip).expect("slot")).collect();
        let tls = l.mqtt_tls.acquire(ip).expect("a slot of its own");
        assert!(held.iter().all(|s| !s.is_evicted()) && !tls.is_evicted());
        let _third = l.mqtt_plain.acquire(ip).expect("room made");
        l.web.count_slow();
        l.mqtt_bypass.fetch_add(1, Ordering::Relaxed);
        let c = l.counters(4);
        assert_eq!(
            c,
            ConnectionCounters {
                web_connections_shed: 0,
                web_slow_requests: 1,
                mqtt_connections_shed: 1,
                mqtt_slow_connects: 0,
                mqtt_bypass_refused: 1,
                upstream_tls_refused: 4,
            }
        );
        assert_eq!(c.total(), 7);
    }
}
