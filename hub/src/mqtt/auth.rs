//! MQTT users and logins: no default user, users made by the owner (EN 303 645 5.1-1, 5.5-4),
//! argon2id hashes stored sealed under the key-encryption key (5.4-1), failed logins throttled
//! per client address and per user with an exponential back-off that expires (5.1-5), counted
//! and reported as security events (5.10-1).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast;

use crate::store::{HubStore, Kek, Store, StoreError, Write};

/// Key of the sealed users document in the store's meta table.
pub const META_KEY: &str = "mqtt_users";
/// Key of the persisted counters (they survive restarts, like the link's).
pub const COUNTERS_KEY: &str = "mqtt_counters";
/// Associated data binding the sealed document to its purpose.
const SEAL_ID: &[u8] = b"hearth mqtt users";
/// Users at most.
pub const MAX_USERS: usize = 64;
/// Throttle entries kept per kind (addresses, user names) at most.
const MAX_TRACKED: usize = 4096;
/// Shortest and longest password an owner may choose.
const PASSWORD_LEN: std::ops::RangeInclusive<usize> = 12..=256;
/// A front's verdict is reused by the broker's check for this long (one use).
const VERDICT_TTL: Duration = Duration::from_secs(10);

/// Login throttling settings.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    /// Failures allowed before back-off starts.
    pub free_failures: u32,
    /// First back-off.
    pub base: Duration,
    /// Longest back-off.
    pub max: Duration,
    /// Failures are forgotten this long after the last one.
    pub forget_after: Duration,
}

/// Why a user could not be added or removed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A name that is empty, too long, or has characters other than `A-Z a-z 0-9 . _ -`.
    #[error("user name must be 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    BadName,
    /// A password out of bounds.
    #[error("password must be 12 to 256 bytes without control characters")]
    BadPassword,
    /// The name is taken.
    #[error("user {0} exists")]
    Exists(String),
    /// No such user.
    #[error("no user {0}")]
    Unknown(String),
    /// Too many users.
    #[error("at most {MAX_USERS} users")]
    TooMany,
    /// Hashing failed.
    #[error("password hashing failed")]
    Hash,
    /// The random generator failed.
    #[error("random number generator failed")]
    Rng,
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Sealing.
    #[error(transparent)]
    Seal(#[from] crate::store::SealError),
}

/// Counters of MQTT security events (EN 303 645 5.10-1), shown by `hub ctl security` (named
/// `mqtt_*` there, beside the link's counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttCounters {
    /// Logins refused: unknown user, wrong password, or no credentials.
    #[serde(rename = "mqtt_login_failed", default)]
    pub login_failed: u64,
    /// Connections refused unverified during a back-off.
    #[serde(rename = "mqtt_throttled", default)]
    pub throttled: u64,
    /// Malformed MQTT (first packet not CONNECT, bad framing, unsupported protocol).
    #[serde(rename = "mqtt_malformed", default)]
    pub malformed: u64,
    /// Publications refused because the topic is the hub's own (device state, discovery),
    /// as PUBLISH or as a CONNECT's Will.
    #[serde(rename = "mqtt_denied_publish", default)]
    pub denied_publish: u64,
}

impl MqttCounters {
    /// The sum.
    pub fn total(&self) -> u64 {
        self.login_failed + self.throttled + self.malformed + self.denied_publish
    }
}

/// A security event, published on `hearth/hub/security` and logged (rate-limited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum MqttEvent {
    /// A login failed.
    LoginFailed {
        /// The client's address (the front's peer; 127.0.0.1 for the broker's own listener).
        address: String,
        /// The user name tried (none without credentials).
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// A connection was refused during a back-off.
    Throttled {
        /// The client's address.
        address: String,
        /// Seconds until attempts are accepted again.
        retry_after_s: u64,
    },
    /// Malformed MQTT.
    Malformed {
        /// The client's address.
        address: String,
        /// What was wrong.
        what: String,
    },
    /// A publication to a topic that belongs to the hub was dropped.
    DeniedPublish {
        /// The user.
        user: String,
        /// The topic.
        topic: String,
    },
    /// A CONNECT whose Will goes to a topic that belongs to the hub was refused.
    DeniedWill {
        /// The user.
        user: String,
        /// The Will's topic.
        topic: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserRecord {
    name: String,
    /// PHC string (argon2id, its parameters and salt).
    hash: String,
    created: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UsersDoc {
    users: Vec<UserRecord>,
}

/// A user as listed (no hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    /// Name.
    pub name: String,
    /// Created, Unix seconds.
    pub created: u64,
}

/// Failures of one address or user name.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    until: Option<Instant>,
}

/// Failure records with an exponential back-off that expires.
#[derive(Debug)]
struct Ledger<K> {
    entries: HashMap<K, Failures>,
}

impl<K: std::hash::Hash + Eq + Clone> Ledger<K> {
    fn new() -> Self {
        Self { entries: HashMap::new() }
    }

    /// `Err(wait)` while `key` is backing off.
    fn admit(&mut self, key: &K, now: Instant, t: &Throttle) -> Result<(), Duration> {
        let Some(f) = self.entries.get(key) else { return Ok(()) };
        if now.duration_since(f.last) >= t.forget_after {
            self.entries.remove(key);
            return Ok(());
        }
        match f.until {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    fn fail(&mut self, key: K, now: Instant, t: &Throttle) {
        if self.entries.len() >= MAX_TRACKED && !self.entries.contains_key(&key) {
            self.entries.retain(|_, f| now.duration_since(f.last) < t.forget_after);
            if self.entries.len() >= MAX_TRACKED {
                // Full of fresh entries (a spray of names or addresses): drop the oldest.
                if let Some(oldest) =
                    self.entries.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| k.clone())
                {
                    self.entries.remove(&oldest);
                }
            }
        }
        let f = self.entries.entry(key).or_insert(Failures { count: 0, last: now, until: None });
        if now.duration_since(f.last) >= t.forget_after {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count > t.free_failures {
            let doublings = (f.count - t.free_failures - 1).min(30);
            let wait = t.base.saturating_mul(1u32 << doublings).min(t.max);
            f.until = Some(now + wait);
        }
    }

    fn succeed(&mut self, key: &K) {
        self.entries.remove(key);
    }
}

#[derive(Debug)]
struct Inner {
    users: Vec<UserRecord>,
    by_address: Ledger<IpAddr>,
    by_user: Ledger<String>,
    counters: MqttCounters,
    /// Logins the front verified, by (user, SHA-256 of the password), for the broker's check.
    verdicts: Vec<(String, [u8; 32], Instant)>,
}

/// Users, throttles and counters (shared by the fronts, the broker's check and the API).
pub struct Auth {
    inner: Mutex<Inner>,
    kek: Kek,
    store: HubStore,
    throttle: Throttle,
    /// Hash compared against for unknown users, so that they take as long as known ones.
    dummy: String,
    events: broadcast::Sender<MqttEvent>,
    log: Mutex<LogLimit>,
    /// The counters as last written to the store.
    saved: Mutex<MqttCounters>,
}

impl core::fmt::Debug for Auth {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Auth").field("throttle", &self.throttle).finish_non_exhaustive()
    }
}

/// The outcome of checking a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted.
    Accepted,
    /// Wrong user or password (counted).
    Refused,
    /// Backing off: not even checked (counted).
    Throttled(Duration),
}

impl Auth {
    /// Loads the users sealed in `store` (none at first start: there is no default user).
    pub fn load(store: HubStore, kek: Kek, throttle: Throttle) -> Result<Self, UserError> {
        let users = match store.meta(META_KEY)? {
            Some(sealed) => {
                let doc = kek.open(SEAL_ID, &sealed)?;
                serde_json::from_slice::<UsersDoc>(&doc)
                    .map_err(|_| StoreError::Corrupt("mqtt users"))?
                    .users
            }
            None => Vec::new(),
        };
        // Counters survive restarts (EN 303 645 5.10-1); unreadable ones start at 0.
        let counters: MqttCounters = store
            .meta(COUNTERS_KEY)?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut salt = [0u8; 16];
        crate::rng::fill(&mut salt).map_err(|_| UserError::Rng)?;
        let dummy = Argon2::default()
            .hash_password_with_salt(b"not a password of anyone", &salt)
            .map_err(|_| UserError::Hash)?
            .to_string();
        let (events, _) = broadcast::channel(256);
        Ok(Self {
            inner: Mutex::new(Inner {
                users,
                by_address: Ledger::new(),
                by_user: Ledger::new(),
                counters,
                verdicts: Vec::new(),
            }),
            kek,
            store,
            throttle,
            dummy,
            events,
            log: Mutex::new(LogLimit::default()),
            saved: Mutex::new(counters),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Security events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MqttEvent> {
        self.events.subscribe()
    }

    /// The counters.
    pub fn counters(&self) -> MqttCounters {
        self.lock().counters
    }

    /// Writes the counters to the store if they changed since the last call (blocking: an
    /// fsync).
    pub fn save_counters(&self) -> Result<(), StoreError> {
        let now = self.counters();
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        if *saved == now {
            return Ok(());
        }
        let value = serde_json::to_vec(&now).map_err(|_| StoreError::Corrupt("mqtt counters"))?;
        self.store.commit(&[Write::Meta { key: COUNTERS_KEY.into(), value }])?;
        *saved = now;
        Ok(())
    }

    /// The users, by name.
    pub fn users(&self) -> Vec<UserView> {
        let mut v: Vec<UserView> = self
            .lock()
            .users
            .iter()
            .map(|u| UserView { name: u.name.clone(), created: u.created })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Adds a user with `password`, or a generated one (returned: shown once, never stored).
    /// Blocking (argon2 and an fsync): call it off the async threads.
    pub fn add_user(
        &self,
        name: &str,
        password: Option<&str>,
    ) -> Result<Option<String>, UserError> {
        valid_name(name)?;
        let generated = match password {
            Some(p) => {
                let ok = PASSWORD_LEN.contains(&p.len()) && !p.chars().any(char::is_control);
                if !ok {
                    return Err(UserError::BadPassword);
                }
                None
            }
            None => {
                let mut raw = [0u8; 18];
                crate::rng::fill(&mut raw).map_err(|_| UserError::Rng)?;
                Some(protocol::hex::encode(&raw))
            }
        };
        let password = generated.as_deref().or(password).unwrap_or_default();
        {
            let inner = self.lock();
            if inner.users.iter().any(|u| u.name == name) {
                return Err(UserError::Exists(name.into()));
            }
            if inner.users.len() >= MAX_USERS {
                return Err(UserError::TooMany);
            }
        }
        let hash = Argon2::default()
            .hash_password(password.as_bytes())
            .map_err(|_| UserError::Hash)?
            .to_string();
        let created = crate::link::unix_now().0;
        let mut users = self.lock().users.clone();
        if users.iter().any(|u| u.name == name) {
            return Err(UserError::Exists(name.into()));
        }
        users.push(UserRecord { name: name.into(), hash, created });
        self.persist(&users)?;
        self.lock().users = users;
        tracing::info!(user = name, "MQTT user added");
        Ok(generated)
    }

    /// Removes a user (existing sessions of that user are not cut; new logins fail).
    pub fn remove_user(&self, name: &str) -> Result<(), UserError> {
        let mut users = self.lock().users.clone();
        let before = users.len();
        users.retain(|u| u.name != name);
        if users.len() == before {
            return Err(UserError::Unknown(name.into()));
        }
        self.persist(&users)?;
        self.lock().users = users;
        tracing::info!(user = name, "MQTT user removed");
        Ok(())
    }

    fn persist(&self, users: &[UserRecord]) -> Result<(), UserError> {
        let doc = serde_json::to_vec(&UsersDoc { users: users.to_vec() })
            .map_err(|_| StoreError::Corrupt("mqtt users"))?;
        let sealed = self.kek.seal(SEAL_ID, &doc)?;
        self.store.commit(&[Write::Meta { key: META_KEY.into(), value: sealed }])?;
        Ok(())
    }

    /// Whether `address` may try to log in as `user` now (before any password is checked).
    pub fn admit(&self, address: IpAddr, user: Option<&str>) -> Result<(), Duration> {
        let now = Instant::now();
        let t = self.throttle;
        let mut inner = self.lock();
        let by_address = inner.by_address.admit(&address, now, &t);
        let by_user = match user {
            Some(u) => inner.by_user.admit(&u.to_owned(), now, &t),
            None => Ok(()),
        };
        match (by_address, by_user) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(w), _) | (_, Err(w)) => Err(w),
        }
    }

    /// Checks a login from `address` (throttled first, then argon2id; blocking). Records
    /// the outcome for both the address and the user.
    pub fn login(&self, address: IpAddr, user: Option<&str>, password: &[u8]) -> Verdict {
        if let Err(wait) = self.admit(address, user) {
            self.throttled(address, wait);
            return Verdict::Throttled(wait);
        }
        let ok = user.is_some_and(|u| self.verify(u, password));
        let now = Instant::now();
        let t = self.throttle;
        let mut inner = self.lock();
        if ok {
            let user = user.unwrap_or_default().to_owned();
            inner.by_address.succeed(&address);
            inner.by_user.succeed(&user);
            let digest: [u8; 32] = Sha256::digest(password).into();
            inner.verdicts.retain(|(_, _, at)| now.duration_since(*at) < VERDICT_TTL);
            if inner.verdicts.len() < MAX_TRACKED {
                inner.verdicts.push((user, digest, now));
            }
            return Verdict::Accepted;
        }
        inner.by_address.fail(address, now, &t);
        if let Some(u) = user {
            inner.by_user.fail(u.to_owned(), now, &t);
        }
        inner.counters.login_failed += 1;
        drop(inner);
        self.event(MqttEvent::LoginFailed {
            address: address.to_string(),
            user: user.map(|u| truncate(u, 64)),
        });
        Verdict::Refused
    }

    /// The broker's own check (its listener is on loopback; the fronts forward logins they
    /// accepted, whose verdict is reused once, so argon2 runs once per login).
    pub fn broker_login(&self, user: &str, password: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(password).into();
        {
            let now = Instant::now();
            let mut inner = self.lock();
            let found = inner.verdicts.iter().position(|(u, d, at)| {
                u == user && bool::from(d.ct_eq(&digest)) && now.duration_since(*at) < VERDICT_TTL
            });
            if let Some(i) = found {
                inner.verdicts.swap_remove(i);
                return true;
            }
        }
        self.login(IpAddr::from([127, 0, 0, 1]), Some(user), password) == Verdict::Accepted
    }

    fn verify(&self, user: &str, password: &[u8]) -> bool {
        let hash = self.lock().users.iter().find(|u| u.name == user).map(|u| u.hash.clone());
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.clone());
        let ok = Argon2::default().verify_password(password, hash.as_str()).is_ok();
        ok && known
    }

    /// A connection refused during a back-off.
    pub fn throttled(&self, address: IpAddr, wait: Duration) {
        self.lock().counters.throttled += 1;
        let retry_after_s = wait.as_secs() + 1;
        self.event(MqttEvent::Throttled { address: address.to_string(), retry_after_s });
    }

    /// A client sent malformed MQTT (counted; its address's failures grow as for a bad login).
    pub fn malformed(&self, address: IpAddr, what: &str) {
        let now = Instant::now();
        let t = self.throttle;
        let mut inner = self.lock();
        inner.counters.malformed += 1;
        inner.by_address.fail(address, now, &t);
        drop(inner);
        self.event(MqttEvent::Malformed { address: address.to_string(), what: truncate(what, 80) });
    }

    /// A publication to one of the hub's own topics was dropped.
    pub fn denied_publish(&self, user: &str, topic: &str) {
        self.lock().counters.denied_publish += 1;
        self.event(MqttEvent::DeniedPublish {
            user: truncate(user, 64),
            topic: truncate(topic, 128),
        });
    }

    /// A CONNECT was refused for its Will's topic (counted with the refused publications: a
    /// Will is a publication made on the client's behalf).
    pub fn denied_will(&self, user: &str, topic: &str) {
        self.lock().counters.denied_publish += 1;
        self.event(MqttEvent::DeniedWill { user: truncate(user, 64), topic: truncate(topic, 128) });
    }

    fn event(&self, e: MqttEvent) {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner()).allow(kind(&e));
        if log {
            tracing::warn!(event = ?e, "MQTT security event");
        }
        let _ = self.events.send(e);
    }
}

/// Logs the first few events of each kind per interval one by one and summarizes the rest
/// (as `seclog` does for the link): an attacker cannot flood the log.
#[derive(Debug, Default)]
struct LogLimit {
    since: Option<Instant>,
    kinds: HashMap<&'static str, (u32, u64)>,
}

impl LogLimit {
    fn allow(&mut self, kind: &'static str) -> bool {
        let now = Instant::now();
        if self.since.is_none_or(|s| now.duration_since(s) >= crate::seclog::INTERVAL) {
            for (kind, (_, more)) in self.kinds.drain() {
                if more > 0 {
                    tracing::warn!(
                        kind,
                        more,
                        "further MQTT security events not logged one by one (all are counted: hub ctl security)"
                    );
                }
            }
            self.since = Some(now);
        }
        let (logged, more) = self.kinds.entry(kind).or_default();
        if *logged >= crate::seclog::PER_INTERVAL {
            *more += 1;
            return false;
        }
        *logged += 1;
        true
    }
}

fn kind(e: &MqttEvent) -> &'static str {
    match e {
        MqttEvent::LoginFailed { .. } => "mqtt_login_failed",
        MqttEvent::Throttled { .. } => "mqtt_throttled",
        MqttEvent::Malformed { .. } => "mqtt_malformed",
        MqttEvent::DeniedPublish { .. } | MqttEvent::DeniedWill { .. } => "mqtt_denied_publish",
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

fn valid_name(name: &str) -> Result<(), UserError> {
    let ok = (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok { Ok(()) } else { Err(UserError::BadName) }
}

/// Shared handle.
pub type SharedAuth = Arc<Auth>;

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> Throttle {
        Throttle {
            free_failures: 2,
            base: Duration::from_millis(100),
            max: Duration::from_millis(400),
            forget_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn back_off_starts_after_the_free_failures_doubles_caps_and_expires() {
        let t = throttle();
        let mut l: Ledger<u8> = Ledger::new();
        let now = Instant::now();
        l.fail(1, now, &t);
        l.fail(1, now, &t);
        assert_eq!(l.admit(&1, now, &t), Ok(()), "two free failures");
        l.fail(1, now, &t);
        assert_eq!(l.admit(&1, now, &t), Err(Duration::from_millis(100)));
        l.fail(1, now, &t);
        assert_eq!(l.admit(&1, now, &t), Err(Duration::from_millis(200)));
        for _ in 0..10 {
            l.fail(1, now, &t);
        }
        assert_eq!(l.admit(&1, now, &t), Err(Duration::from_millis(400)), "capped");
        assert_eq!(l.admit(&1, now + Duration::from_millis(400), &t), Ok(()), "back-off ends");
        assert_eq!(l.admit(&2, now, &t), Ok(()), "others are not affected");
        // Forgotten after a quiet period: the free failures are free again.
        let later = now + Duration::from_secs(61);
        assert_eq!(l.admit(&1, later, &t), Ok(()));
        l.fail(1, later, &t);
        assert_eq!(l.admit(&1, later, &t), Ok(()));
        l.succeed(&1);
        assert!(l.entries.is_empty());
    }

    #[test]
    fn the_ledger_stays_bounded_under_a_spray() {
        let t = throttle();
        let mut l: Ledger<u32> = Ledger::new();
        let now = Instant::now();
        for k in 0..(MAX_TRACKED as u32 + 100) {
            l.fail(k, now, &t);
        }
        assert!(l.entries.len() <= MAX_TRACKED);
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("ha").is_ok());
        assert!(valid_name("node-red_1.x").is_ok());
        assert!(valid_name("").is_err());
        assert!(valid_name("a b").is_err());
        assert!(valid_name(&"x".repeat(65)).is_err());
    }
}
