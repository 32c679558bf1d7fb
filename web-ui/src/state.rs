//! The web UI's shared state: the hub API, the cached vault, sessions, the login throttle (its
//! per-account records and device cookies persisted through the hub), the hub's hashing budget,
//! and the web UI's security events (EN 303 645 5.10-1: counted, saved and flagged by the hub;
//! logged here without letting an attacker flood the log). Time comes from an injected clock so
//! tests control it.

use std::sync::{Arc, Mutex, MutexGuard};

use admission::{HashBudget, Throttle};

use crate::api::OwnerApi;
use crate::auth::{Sessions, Vault};

/// Unix milliseconds now (injected: tests move time by hand).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

/// A security event seen by the web UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebEvent {
    /// A wrong user name or password.
    LoginFailed,
    /// A login refused unchecked because its account or address was backing off.
    LoginThrottled,
    /// A wrong one-time setup code.
    SetupCodeRefused,
    /// A state change without the right CSRF token.
    CsrfRefused,
    /// A state change from another site.
    CrossSite,
    /// A malformed request (400/422).
    Malformed,
    /// A request body over the limit (413).
    TooLarge,
    /// A request for a page or data without a session.
    Unauthenticated,
    /// A login or setup not checked because the hub's password hashing was at its limit.
    LoginShed,
}

impl WebEvent {
    /// Every kind.
    pub const ALL: [WebEvent; 9] = [
        WebEvent::LoginFailed,
        WebEvent::LoginThrottled,
        WebEvent::SetupCodeRefused,
        WebEvent::CsrfRefused,
        WebEvent::CrossSite,
        WebEvent::Malformed,
        WebEvent::TooLarge,
        WebEvent::Unauthenticated,
        WebEvent::LoginShed,
    ];

    /// Its position in [`WebEvent::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|e| *e == self).unwrap_or(0)
    }

    /// Machine name.
    pub fn name(self) -> &'static str {
        match self {
            WebEvent::LoginFailed => "web_login_failed",
            WebEvent::LoginThrottled => "web_login_throttled",
            WebEvent::SetupCodeRefused => "web_setup_code_refused",
            WebEvent::CsrfRefused => "web_csrf_refused",
            WebEvent::CrossSite => "web_cross_site_refused",
            WebEvent::Malformed => "web_malformed",
            WebEvent::TooLarge => "web_too_large",
            WebEvent::Unauthenticated => "web_unauthenticated",
            WebEvent::LoginShed => "web_login_shed",
        }
    }
}

/// Per kind: the log interval's start, events logged in it, events not logged.
#[derive(Debug, Default)]
struct Events {
    logged: [(u64, u32, u64); 9],
}

/// Security events of one kind logged one by one per interval at most (all are counted); the
/// rest are summarized, so an attacker cannot flood the log.
const LOG_PER_INTERVAL: u32 = 5;
const LOG_INTERVAL_MS: u64 = 10_000;

/// Everything behind the lock.
#[derive(Debug)]
pub struct Inner {
    /// The vault as last stored.
    pub vault: Vault,
    /// Sessions.
    pub sessions: Sessions,
    /// Login throttling (owner account, unknown names, addresses, device cookies).
    pub throttle: Throttle,
    events: Events,
}

/// The web UI.
pub struct Web {
    /// The hub.
    pub api: Arc<dyn OwnerApi>,
    /// The hub's one budget for password hashing (shared with MQTT).
    pub budget: HashBudget,
    /// Held while the account changes (setup, password change, erase): one at a time.
    pub account_lock: tokio::sync::Mutex<()>,
    /// The hub's state once per tick, for the dashboard and the live streams.
    pub live: Arc<crate::live::Live>,
    /// The throttle version last written to the hub (held while writing: writes stay in order).
    saved: tokio::sync::Mutex<u64>,
    clock: Clock,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web").finish_non_exhaustive()
    }
}

impl Web {
    /// The web UI over `api`, hashing under `budget`, throttling logins by `policy`; its vault
    /// and its persisted login records loaded.
    pub async fn new(
        api: Arc<dyn OwnerApi>,
        budget: HashBudget,
        policy: admission::Policy,
        clock: Clock,
    ) -> Arc<Self> {
        let web = Arc::new(Self {
            live: crate::live::Live::new(api.clone()),
            api,
            budget,
            account_lock: tokio::sync::Mutex::new(()),
            saved: tokio::sync::Mutex::new(0),
            clock,
            inner: Mutex::new(Inner {
                vault: Vault::default(),
                sessions: Sessions::default(),
                throttle: Throttle::new(policy),
                events: Events::default(),
            }),
        });
        web.reload_vault().await;
        let durable = match web.api.load_logins().await {
            Ok(Some(bytes)) => serde_json::from_slice::<admission::Durable>(&bytes)
                .map_err(
                    |e| tracing::error!(error = %e, "web login records unreadable; starting empty"),
                )
                .ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "web login records could not be loaded");
                None
            }
        };
        if let Some(d) = durable {
            let now = web.now_ms();
            web.lock().throttle.restore(d, now);
        }
        web
    }

    /// Replaces the cached vault; the throttle's accounts follow it (the owner, or none).
    pub fn set_vault(&self, vault: Vault) {
        let mut inner = self.lock();
        let owner = vault.owner_name().map(str::to_owned);
        inner.throttle.set_accounts(owner.as_deref());
        inner.vault = vault;
    }

    /// Writes the login throttle's durable records (per-account back-offs, device cookies)
    /// through the hub if they changed, in order; call it before answering a failed login, so a
    /// crash cannot forget a failure whose answer the client saw.
    pub async fn save_logins(&self) {
        let mut saved = self.saved.lock().await;
        let (version, doc) = {
            let inner = self.lock();
            (inner.throttle.version(), serde_json::to_vec(&inner.throttle.snapshot()))
        };
        if version == *saved {
            return;
        }
        let Ok(doc) = doc else { return };
        match self.api.store_logins(doc).await {
            Ok(()) => *saved = version,
            Err(e) => tracing::error!(error = %e, "web login records not saved"),
        }
    }

    /// Re-reads the vault from the hub (at start, after an erase).
    pub async fn reload_vault(&self) {
        let vault = match self.api.load_vault().await {
            Ok(Some(bytes)) => Vault::parse(&bytes).unwrap_or_else(|| {
                tracing::error!("web vault unreadable; setup needs a new code (erase)");
                Vault::default()
            }),
            Ok(None) => Vault::default(),
            Err(e) => {
                tracing::error!(error = %e, "web vault could not be loaded");
                Vault::default()
            }
        };
        self.set_vault(vault);
    }

    /// Unix milliseconds now.
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// The state.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A random token (32 bytes, hex) from the hub's CSPRNG.
    pub fn token(&self) -> String {
        let mut b = [0u8; 32];
        self.api.random(&mut b);
        data_encoding::HEXLOWER.encode(&b)
    }

    /// Counts a security event (at the hub) and logs the first few of a kind per interval.
    pub fn event(&self, e: WebEvent) {
        self.api.count(e);
        let now = self.now_ms();
        let mut inner = self.lock();
        let ev = &mut inner.events;
        if !matches!(
            e,
            WebEvent::LoginFailed
                | WebEvent::LoginThrottled
                | WebEvent::CrossSite
                | WebEvent::LoginShed
        ) {
            return;
        }
        let (since, logged, more) = &mut ev.logged[e.index()];
        let mut summary = 0;
        if now.saturating_sub(*since) >= LOG_INTERVAL_MS {
            summary = *more;
            (*since, *logged, *more) = (now, 0, 0);
        }
        let log = *logged < LOG_PER_INTERVAL;
        if log {
            *logged += 1;
        } else {
            *more += 1;
        }
        drop(inner);
        if summary > 0 {
            tracing::warn!(
                event = e.name(),
                more = summary,
                "further web security events not logged one by one (all are counted: Security events page)"
            );
        }
        if log {
            tracing::warn!(event = e.name(), "web security event");
        }
    }
}

#[cfg(test)]
mod catalogue_tests {
    use super::*;

    #[test]
    fn every_web_event_is_in_the_security_catalogue() {
        for e in WebEvent::ALL {
            let c = protocol::security::counter(e.name()).expect("in the catalogue");
            assert!(c.event, "{}", e.name());
        }
    }
}
