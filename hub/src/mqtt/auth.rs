//! MQTT users and logins: no default user, users made by the owner (EN 303 645 5.1-1, 5.5-4)
//! under the hub's one password policy, argon2id hashes stored sealed under the key-encryption
//! key (5.4-1) and checked under the hub's one hashing budget (excess refused with CONNACK
//! "server unavailable"), failed logins throttled by the hub's one login throttle — a failure
//! slot taken before the hash, per user (unknown names together) and per address, with an
//! exponential back-off that expires (5.1-5), records persisted in the store, and remembered
//! clients (user, client id and address that logged in before) past back-offs others caused —
//! all counted and reported as security events (5.10-1).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use admission::password::MAX_LOGIN_BYTES;
use admission::{Backoff, Claim, HashBudget, Policy, Refused, Throttle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::store::{HubStore, Kek, StoreError, Write};

/// Key of the sealed users document in the store's meta table.
pub(crate) const META_KEY: &str = "mqtt_users";
/// Key of the counters as earlier versions saved them (the security monitor reads it once).
pub(crate) const COUNTERS_KEY: &str = "mqtt_counters";
/// Key of the sealed login records (per-user back-offs, remembered clients).
pub(crate) const LOGINS_KEY: &str = "mqtt_logins";
/// Associated data binding the sealed document to its purpose.
const SEAL_ID: &[u8] = b"hearth mqtt users";
/// Associated data of the sealed login records.
const LOGINS_SEAL_ID: &[u8] = b"hearth mqtt logins";
/// Users at most.
pub(crate) const MAX_USERS: usize = 64;

/// Why a user could not be added or removed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A name that is empty, too long, or has characters other than `A-Z a-z 0-9 . _ -`.
    #[error("user name must be 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    BadName,
    /// A password the hub's policy refuses.
    #[error("password refused: {0}")]
    BadPassword(&'static str),
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
    /// The hashing budget is full.
    #[error(transparent)]
    Busy(#[from] Refused),
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
    /// Logins refused unverified because the hub's password hashing was at its limit.
    #[serde(rename = "mqtt_login_shed", default)]
    pub login_shed: u64,
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
        self.login_failed + self.throttled + self.login_shed + self.malformed + self.denied_publish
    }
}

/// A security event, published on `hearth/hub/security` and logged (rate-limited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum MqttEvent {
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
    /// A login was refused unchecked: password hashing was at its limit.
    LoginShed {
        /// The client's address.
        address: String,
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
    /// The owner lets this user make bridge requests (`hearth/bridge/request/…`).
    #[serde(default)]
    admin: bool,
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
    /// May make bridge requests (pairing, rename, room, remove, list) over MQTT.
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug)]
struct Inner {
    users: Vec<UserRecord>,
    throttle: Throttle,
    counters: MqttCounters,
}

/// Users, throttles and counters (shared by the fronts and the API).
pub(crate) struct Auth {
    inner: Mutex<Inner>,
    kek: Kek,
    store: HubStore,
    budget: HashBudget,
    /// Hash compared against for unknown users, so that they take as long as known ones.
    dummy: String,
    events: broadcast::Sender<MqttEvent>,
    log: Mutex<LogLimit>,
    /// The login records' (version, urgent version) as last written (held while writing).
    logins_saved: Mutex<(u64, u64)>,
}

impl core::fmt::Debug for Auth {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Auth").field("budget", &self.budget).finish_non_exhaustive()
    }
}

/// The outcome of checking a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Accepted.
    Accepted,
    /// Wrong user or password (counted).
    Refused,
    /// Backing off: not even checked (counted).
    Throttled(Duration),
    /// Password hashing is at its limit: not checked (counted); try again shortly.
    Busy,
}

/// The remembered-client id of `client_id` from `address` (none for an empty client id): a
/// digest, so ids of any length fit and the store holds no client ids.
fn remembered_id(client_id: &str, address: IpAddr) -> Option<String> {
    if client_id.is_empty() {
        return None;
    }
    let mut d = Sha256::new();
    d.update(b"hearth mqtt remembered client v1\0");
    d.update(client_id.as_bytes());
    d.update([0]);
    d.update(address.to_string().as_bytes());
    let digest: [u8; 32] = d.finalize().into();
    Some(protocol::hex::encode(&digest[..16]))
}

impl Auth {
    /// Loads the users sealed in `store` (none at first start: there is no default user) and
    /// the login records of the last run; logins are throttled by `policy` and hashed under
    /// `budget`.
    pub(crate) fn load(
        store: HubStore,
        kek: Kek,
        policy: Policy,
        budget: HashBudget,
    ) -> Result<Self, UserError> {
        let users = match store.meta(META_KEY)? {
            Some(sealed) => {
                let doc = kek.open(SEAL_ID, &sealed)?;
                serde_json::from_slice::<UsersDoc>(&doc)
                    .map_err(|_| StoreError::Corrupt("mqtt users"))?
                    .users
            }
            None => Vec::new(),
        };
        let mut throttle = Throttle::new(policy);
        throttle.set_accounts(users.iter().map(|u| u.name.as_str()));
        // Back-offs survive restarts too; unreadable records start empty (and say so).
        if let Some(sealed) = store.meta(LOGINS_KEY)? {
            let durable = kek
                .open(LOGINS_SEAL_ID, &sealed)
                .ok()
                .and_then(|doc| serde_json::from_slice::<admission::Durable>(&doc).ok());
            match durable {
                Some(d) => throttle.restore(d, now_ms()),
                None => tracing::error!("MQTT login records unreadable; starting empty"),
            }
        }
        let dummy = budget.decoy().map_err(|_| UserError::Rng)?;
        let (events, _) = broadcast::channel(256);
        let versions = (throttle.version(), throttle.urgent_version());
        Ok(Self {
            inner: Mutex::new(Inner { users, throttle, counters: MqttCounters::default() }),
            kek,
            store,
            budget,
            dummy,
            events,
            log: Mutex::new(LogLimit::default()),
            logins_saved: Mutex::new(versions),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Security events from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<MqttEvent> {
        self.events.subscribe()
    }

    /// The counters.
    pub(crate) fn counters(&self) -> MqttCounters {
        self.lock().counters
    }

    /// Writes the login records if they changed (blocking; writes stay in order; remembered
    /// clients are written lazily, here).
    pub(crate) fn save_logins(&self) -> Result<(), StoreError> {
        let mut saved = self.logins_saved.lock().unwrap_or_else(|e| e.into_inner());
        let (versions, doc) = {
            let inner = self.lock();
            let t = &inner.throttle;
            ((t.version(), t.urgent_version()), serde_json::to_vec(&t.snapshot()))
        };
        if versions.0 == saved.0 {
            return Ok(());
        }
        let doc = doc.map_err(|_| StoreError::Corrupt("mqtt logins"))?;
        let value = self
            .kek
            .seal(LOGINS_SEAL_ID, &doc)
            .map_err(|_| StoreError::Corrupt("mqtt logins sealing"))?;
        self.store.commit(&[Write::Meta { key: LOGINS_KEY.into(), value }])?;
        *saved = versions;
        Ok(())
    }

    /// Writes the login records now if a change must not wait (a failure, a revocation): a
    /// restart must not reset a back-off, and a crash must not forget a failure whose answer
    /// the client saw.
    async fn save_urgent(self: &Arc<Self>) {
        let urgent = self.lock().throttle.urgent_version();
        let saved = self.logins_saved.lock().unwrap_or_else(|e| e.into_inner()).1;
        if urgent == saved {
            return;
        }
        let this = self.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || this.save_logins()).await {
            tracing::warn!(error = %e, "MQTT login records not saved");
        }
    }

    /// The users, by name.
    pub(crate) fn users(&self) -> Vec<UserView> {
        let mut v: Vec<UserView> = self
            .lock()
            .users
            .iter()
            .map(|u| UserView { name: u.name.clone(), created: u.created, admin: u.admin })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Adds a user with `password` (checked against the hub's password policy), or a generated
    /// one (returned: shown once, never stored); an `admin` may make bridge requests. The hash
    /// waits for the hashing budget.
    pub(crate) async fn add_user(
        self: &Arc<Self>,
        name: &str,
        password: Option<&str>,
        admin: bool,
    ) -> Result<Option<String>, UserError> {
        valid_name(name)?;
        let generated = match password {
            Some(p) => {
                if let Some(why) = admission::password::problem(p, name) {
                    return Err(UserError::BadPassword(why));
                }
                None
            }
            None => Some(generate_password(name)?),
        };
        let password = zeroize::Zeroizing::new(
            generated.as_deref().or(password).unwrap_or_default().to_owned(),
        );
        {
            let inner = self.lock();
            if inner.users.iter().any(|u| u.name == name) {
                return Err(UserError::Exists(name.into()));
            }
            if inner.users.len() >= MAX_USERS {
                return Err(UserError::TooMany);
            }
        }
        let hash = self
            .budget
            .run(move |h| h.hash(password.as_bytes()))
            .await?
            .map_err(|_| UserError::Hash)?;
        let (this, name) = (self.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || this.insert_user(name, hash, admin))
            .await
            .map_err(|_| UserError::Busy(Refused::Interrupted))??;
        Ok(generated)
    }

    fn insert_user(&self, name: String, hash: String, admin: bool) -> Result<(), UserError> {
        let created = crate::clock::unix_now().0;
        let mut users = self.lock().users.clone();
        if users.iter().any(|u| u.name == name) {
            return Err(UserError::Exists(name));
        }
        users.push(UserRecord { name: name.clone(), hash, created, admin });
        self.persist(&users)?;
        self.set_users(users);
        tracing::info!(user = name, admin, "MQTT user added");
        Ok(())
    }

    /// Removes a user (existing sessions of that user are not cut; new logins fail). Its
    /// records and remembered clients go too. Blocking (an fsync).
    pub(crate) fn remove_user(&self, name: &str) -> Result<(), UserError> {
        let mut users = self.lock().users.clone();
        let before = users.len();
        users.retain(|u| u.name != name);
        if users.len() == before {
            return Err(UserError::Unknown(name.into()));
        }
        self.persist(&users)?;
        self.set_users(users);
        self.save_logins()?;
        tracing::info!(user = name, "MQTT user removed");
        Ok(())
    }

    /// Whether `name` is a user the owner marked admin (may make bridge requests).
    pub(crate) fn is_admin(&self, name: &str) -> bool {
        self.lock().users.iter().any(|u| u.name == name && u.admin)
    }

    fn set_users(&self, users: Vec<UserRecord>) {
        let mut inner = self.lock();
        inner.throttle.set_accounts(users.iter().map(|u| u.name.as_str()));
        inner.users = users;
    }

    fn persist(&self, users: &[UserRecord]) -> Result<(), UserError> {
        let doc = serde_json::to_vec(&UsersDoc { users: users.to_vec() })
            .map_err(|_| StoreError::Corrupt("mqtt users"))?;
        let sealed = self.kek.seal(SEAL_ID, &doc)?;
        self.store.commit(&[Write::Meta { key: META_KEY.into(), value: sealed }])?;
        Ok(())
    }

    /// Checks a login of `client_id` from `address`: the throttle takes a failure slot first
    /// (refused unchecked while backing off, unless this client logged in before), then
    /// argon2id under the hashing budget; records the outcome.
    pub(crate) async fn login(
        self: &Arc<Self>,
        address: IpAddr,
        user: Option<&str>,
        client_id: &str,
        password: &[u8],
    ) -> Verdict {
        let now = now_ms();
        let Some(user) = user.filter(|u| !u.is_empty()) else {
            // Nothing to check (no hash): refused, and the address's failures grow.
            let admitted = self.lock().throttle.admit(now, Claim::Nobody, address, None);
            return match admitted {
                Err(b) => self.throttled(address, b),
                Ok(a) => {
                    self.lock().throttle.fail(a, now);
                    self.refused(address, None)
                }
            };
        };
        let client = remembered_id(client_id, address);
        let admitted =
            self.lock().throttle.admit(now, Claim::Name(user), address, client.as_deref());
        let attempt = match admitted {
            Ok(a) => a,
            Err(b) => return self.throttled(address, b),
        };
        let stored = self.lock().users.iter().find(|u| u.name == user).map(|u| u.hash.clone());
        let ok = if password.len() > MAX_LOGIN_BYTES {
            false // no password of this hub is that long: refused without hashing it
        } else {
            let known = stored.is_some();
            let hash = stored.unwrap_or_else(|| self.dummy.clone());
            let secret = zeroize::Zeroizing::new(password.to_vec());
            match self.budget.run(move |h| h.verify(&secret, &hash)).await {
                Ok(ok) => ok && known,
                Err(refused) => {
                    self.lock().throttle.cancel(attempt);
                    return self.shed(address, refused);
                }
            }
        };
        if !ok {
            self.lock().throttle.fail(attempt, now);
            self.save_urgent().await;
            return self.refused(address, Some(user));
        }
        {
            let mut inner = self.lock();
            inner.throttle.succeed(attempt, now);
            if let Some(c) = &client {
                inner.throttle.trust(user, c, now);
            }
        }
        self.save_urgent().await;
        Verdict::Accepted
    }

    /// A connection refused during a back-off.
    fn throttled(&self, address: IpAddr, b: Backoff) -> Verdict {
        self.lock().counters.throttled += 1;
        let retry_after_s = b.wait_ms.div_ceil(1000);
        self.event(MqttEvent::Throttled { address: address.to_string(), retry_after_s });
        Verdict::Throttled(Duration::from_millis(b.wait_ms))
    }

    /// A login refused after its check (or without credentials).
    fn refused(&self, address: IpAddr, user: Option<&str>) -> Verdict {
        self.lock().counters.login_failed += 1;
        self.event(MqttEvent::LoginFailed {
            address: address.to_string(),
            user: user.map(|u| truncate(u, 64)),
        });
        Verdict::Refused
    }

    /// A login not checked: the hashing budget was full.
    fn shed(&self, address: IpAddr, refused: Refused) -> Verdict {
        if refused == Refused::Shed {
            self.lock().counters.login_shed += 1;
            self.event(MqttEvent::LoginShed { address: address.to_string() });
        }
        Verdict::Busy
    }

    /// A client sent malformed MQTT (counted; its address's failures grow as for a bad login).
    pub(crate) fn malformed(&self, address: IpAddr, what: &str) {
        let now = now_ms();
        let mut inner = self.lock();
        inner.counters.malformed += 1;
        inner.throttle.note_failure(address, now);
        drop(inner);
        self.event(MqttEvent::Malformed { address: address.to_string(), what: truncate(what, 80) });
    }

    /// A publication to one of the hub's own topics was dropped.
    pub(crate) fn denied_publish(&self, user: &str, topic: &str) {
        self.lock().counters.denied_publish += 1;
        self.event(MqttEvent::DeniedPublish {
            user: truncate(user, 64),
            topic: truncate(topic, 128),
        });
    }

    /// A CONNECT was refused for its Will's topic (counted with the refused publications: a
    /// Will is a publication made on the client's behalf).
    pub(crate) fn denied_will(&self, user: &str, topic: &str) {
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

/// Unix milliseconds now (the throttle's clock: its records outlive the process).
fn now_ms() -> u64 {
    u64::try_from(crate::clock::unix_now_ms()).unwrap_or(0)
}

/// A generated password (18 random bytes as hex) that passes the hub's password policy.
fn generate_password(name: &str) -> Result<String, UserError> {
    loop {
        let mut raw = [0u8; 18];
        crate::rng::fill(&mut raw).map_err(|_| UserError::Rng)?;
        let p = protocol::hex::encode(&raw);
        if admission::password::problem(&p, name).is_none() {
            return Ok(p);
        }
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
        MqttEvent::LoginShed { .. } => "mqtt_login_shed",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("ha").is_ok());
        assert!(valid_name("node-red_1.x").is_ok());
        assert!(valid_name("").is_err());
        assert!(valid_name("a b").is_err());
        assert!(valid_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn generated_passwords_pass_the_policy_and_remembered_ids_bind_client_and_address() {
        let p = generate_password("ha").expect("rng");
        assert_eq!(p.len(), 36);
        assert_eq!(admission::password::problem(&p, "ha"), None);
        let here = IpAddr::from([192, 168, 1, 20]);
        let id = remembered_id("ha-client", here).expect("id");
        assert_eq!(id.len(), 32);
        assert_eq!(remembered_id("ha-client", here), Some(id.clone()));
        assert_ne!(remembered_id("ha-client2", here), Some(id.clone()));
        assert_ne!(remembered_id("ha-client", IpAddr::from([192, 168, 1, 21])), Some(id));
        assert_eq!(remembered_id("", here), None, "an empty client id is never remembered");
    }
}
