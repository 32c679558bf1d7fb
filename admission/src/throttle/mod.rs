//! One login throttle for the web UI and MQTT (EN 303 645 5.1-5: brute force made
//! impracticable, by a back-off that always expires; OWASP Authentication Cheat Sheet, "device
//! cookies"). What it guarantees:
//!
//! - **A failure slot is taken before the costly check** ([`Throttle::admit`]), as a provisional
//!   failure that a success or a cancellation gives back: N concurrent guesses are checked at
//!   most `free_failures` times, then the back-off refuses the rest unchecked.
//! - **Live back-offs are never evicted**: accounts have records only if they exist (a bounded
//!   set the owner controls) and every unknown name shares one record; per-address records are
//!   bounded, and addresses beyond the bound share one overflow record instead of pushing out
//!   another. A record is forgotten only `forget_ms` after its last failure, once its back-off
//!   has ended.
//! - **Back-offs always end**: a wait is never longer than `max_ms`, even if the clock jumps back.
//! - **Per-account records survive restarts** ([`Throttle::snapshot`], [`Throttle::restore`]);
//!   the owner of the throttle persists them whenever [`Throttle::urgent_version`] moves. What
//!   survives is the settled failures: an attempt still being checked when the hub stops was
//!   never answered (its owner settles it before answering), so it taught its client nothing,
//!   and counting it after a restart would only refuse the next legitimate logins.
//! - **A client that succeeded before is not refused by someone else's back-off**: a trusted
//!   client (a web device cookie, a remembered MQTT client) bypasses the account's and the
//!   address's back-offs but has its own `free_failures`, after which it is revoked.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The throttle's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures allowed before a back-off starts (typos happen); at least 1.
    pub free_failures: u32,
    /// The first back-off, ms; it doubles with each further failure.
    pub base_ms: u64,
    /// The longest back-off, ms: nobody is refused for longer (5.1-5).
    pub max_ms: u64,
    /// A record is forgotten this long after its last failure, ms (at least `max_ms`).
    pub forget_ms: u64,
    /// Addresses with their own record at most; further ones share the overflow record.
    pub max_addresses: usize,
    /// Trusted clients remembered per account at most (the least recently used one goes).
    pub trusted_per_account: usize,
    /// A trusted client unused for this long is forgotten, ms.
    pub trusted_ttl_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            free_failures: 3,
            base_ms: 1_000,
            max_ms: 5 * 60_000,
            forget_ms: 60 * 60_000,
            max_addresses: 4096,
            trusted_per_account: 16,
            trusted_ttl_ms: 180 * 24 * 60 * 60_000,
        }
    }
}

impl Policy {
    /// The back-off after `beyond` failures past the free ones (0: the first back-off).
    pub fn backoff_ms(&self, beyond: u32) -> u64 {
        self.base_ms.saturating_mul(1u64 << beyond.min(40)).min(self.max_ms)
    }
}

/// Who a login attempt claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim<'a> {
    /// A user name (an account's record if the account exists, else the shared unknown one).
    Name(&'a str),
    /// No account at all (a setup code, a client without credentials): the address only.
    Nobody,
}

/// Refused unchecked: try again after `wait_ms` (never more than the policy's `max_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Milliseconds until the next attempt is checked.
    pub wait_ms: u64,
}

/// An admitted attempt holding its provisional failure; settle it with
/// [`Throttle::succeed`], [`Throttle::fail`] or [`Throttle::cancel`]. One that is never
/// settled stays a failure.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an attempt is settled with succeed, fail or cancel"]
pub struct Attempt {
    path: Path,
}

impl Attempt {
    /// Whether it was admitted as a trusted client (past any back-off of its account).
    pub fn trusted(&self) -> bool {
        matches!(self.path, Path::Trusted { .. })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Path {
    Trusted { account: String, client: String },
    Open { account: AccountKey, address: AddrKey, successes: u64 },
}

#[derive(Debug, PartialEq, Eq)]
enum AccountKey {
    None,
    Known(String),
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddrKey {
    Addr(IpAddr),
    Overflow,
}

/// Failures of one key (an account, the unknown names, an address).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    failures: u32,
    last_ms: u64,
    until_ms: u64,
    /// The throttle's success count when a success last cleared this record (or it was made):
    /// an attempt admitted before that finds its provisional failure gone.
    #[serde(skip)]
    cleared_at: u64,
    /// Of `failures`, the provisional ones of attempts still being checked (not persisted).
    #[serde(skip)]
    pending: u32,
}

impl Record {
    /// Brings times from the future (a clock that went back, a restored record) within reach,
    /// so that every back-off ends at most `max_ms` from now.
    fn clamp(&mut self, now: u64, p: &Policy) {
        self.last_ms = self.last_ms.min(now);
        self.until_ms = self.until_ms.min(now.saturating_add(p.max_ms));
    }

    fn wait(&self, now: u64) -> Option<u64> {
        (self.until_ms > now).then(|| self.until_ms - now)
    }

    fn is_clear(&self) -> bool {
        self.failures == 0 && self.until_ms == 0
    }

    fn forgotten(&self, now: u64, p: &Policy) -> bool {
        self.until_ms <= now && now.saturating_sub(self.last_ms) >= p.forget_ms
    }

    /// A provisional failure (of an attempt now being checked).
    fn take(&mut self, now: u64, p: &Policy) {
        self.count(now, p);
        self.pending = self.pending.saturating_add(1);
    }

    /// A failure that stands at once (no check is pending for it).
    fn count(&mut self, now: u64, p: &Policy) {
        if self.forgotten(now, p) {
            *self =
                Record { cleared_at: self.cleared_at, pending: self.pending, ..Record::default() };
        }
        self.failures = self.failures.saturating_add(1);
        self.last_ms = now;
        if self.failures >= p.free_failures {
            let beyond = self.failures - p.free_failures;
            self.until_ms = now.saturating_add(p.backoff_ms(beyond));
        }
    }

    /// Gives a provisional failure back (the attempt succeeded or was never checked).
    fn give_back(&mut self, p: &Policy) {
        self.settle();
        self.failures = self.failures.saturating_sub(1);
        if self.failures < p.free_failures {
            self.until_ms = 0;
        }
    }

    /// A provisional failure is no longer pending (its check failed: it stands).
    fn settle(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// What a restart keeps: the failures without the pending ones, and a back-off only if
    /// those alone reach it.
    fn settled(&self, p: &Policy) -> Record {
        let failures = self.failures.saturating_sub(self.pending);
        let until_ms = if failures >= p.free_failures { self.until_ms } else { 0 };
        Record { failures, until_ms, pending: 0, ..*self }
    }
}

/// A client that logged in before (a device cookie's id, a remembered MQTT client).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Trusted {
    id: String,
    failures: u32,
    last_ms: u64,
}

/// Longest trusted-client id kept (callers pass random or hashed ids).
pub const MAX_CLIENT_ID: usize = 64;

/// What survives a restart: the per-account records (with the unknown names' one) and the
/// trusted clients. Per-address records do not (they are not a lockout risk for the owner, and
/// an attacker gains `free_failures` guesses per address per restart at most).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Durable {
    accounts: BTreeMap<String, Record>,
    unknown: Record,
    trusted: BTreeMap<String, Vec<Trusted>>,
}

/// The throttle of one service (the web UI, MQTT).
#[derive(Debug)]
pub struct Throttle {
    policy: Policy,
    /// One record per existing account.
    accounts: HashMap<String, Record>,
    /// Every name that is not an account.
    unknown: Record,
    addresses: HashMap<IpAddr, Record>,
    /// Every address beyond `max_addresses`.
    overflow: Record,
    trusted: HashMap<String, Vec<Trusted>>,
    /// Open attempts that succeeded (see [`Record::cleared_at`]).
    successes: u64,
    /// Changes to persist now (failures of accounts, revocations).
    urgent: u64,
    /// Every change to what [`Durable`] holds.
    changes: u64,
}

impl Throttle {
    /// An empty throttle (no accounts).
    pub fn new(policy: Policy) -> Self {
        let policy = Policy {
            free_failures: policy.free_failures.max(1),
            forget_ms: policy.forget_ms.max(policy.max_ms),
            max_addresses: policy.max_addresses.max(1),
            ..policy
        };
        Self {
            policy,
            accounts: HashMap::new(),
            unknown: Record::default(),
            addresses: HashMap::new(),
            overflow: Record::default(),
            trusted: HashMap::new(),
            successes: 0,
            urgent: 0,
            changes: 0,
        }
    }

    /// The settings.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The accounts that exist: each gets its own record; records and trusted clients of names
    /// not in `names` are dropped.
    pub fn set_accounts<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let names: std::collections::HashSet<&str> = names.into_iter().collect();
        let before = (self.accounts.len(), self.trusted.len());
        self.accounts.retain(|n, _| names.contains(n.as_str()));
        self.trusted.retain(|n, _| names.contains(n.as_str()));
        if (self.accounts.len(), self.trusted.len()) != before {
            self.urgent_change();
        }
        let made = Record { cleared_at: self.successes, ..Record::default() };
        for n in names {
            self.accounts.entry(n.to_owned()).or_insert(made);
        }
    }

    /// Takes a failure slot for an attempt by `claim` from `address`, optionally as the trusted
    /// `client` (its id as given to [`Throttle::trust`]); refused unchecked while backing off.
    pub fn admit(
        &mut self,
        now: u64,
        claim: Claim<'_>,
        address: IpAddr,
        client: Option<&str>,
    ) -> Result<Attempt, Backoff> {
        let p = self.policy;
        let account = match claim {
            Claim::Nobody => AccountKey::None,
            Claim::Name(n) if self.accounts.contains_key(n) => AccountKey::Known(n.to_owned()),
            Claim::Name(_) => AccountKey::Unknown,
        };
        if let (AccountKey::Known(name), Some(id)) = (&account, client)
            && let Some(t) = self.trusted_mut(name, id)
            && t.failures < p.free_failures
            && now.saturating_sub(t.last_ms.min(now)) < p.trusted_ttl_ms
        {
            t.failures += 1;
            return Ok(Attempt {
                path: Path::Trusted { account: name.clone(), client: id.to_owned() },
            });
        }
        let address = self.address_key(address, now);
        let mut wait = None;
        if let Some(r) = self.account_mut(&account) {
            r.clamp(now, &p);
            wait = wait.max(r.wait(now));
        }
        if let Some(r) = self.address_mut(address, false) {
            r.clamp(now, &p);
            wait = wait.max(r.wait(now));
        }
        if let Some(wait_ms) = wait {
            return Err(Backoff { wait_ms });
        }
        if let Some(r) = self.account_mut(&account) {
            r.take(now, &p);
        }
        if let Some(r) = self.address_mut(address, true) {
            r.take(now, &p);
        }
        Ok(Attempt { path: Path::Open { account, address, successes: self.successes } })
    }

    /// The attempt's check passed: its provisional failures are given back; an open attempt
    /// clears its account's and address's records (a trusted one leaves them alone: the
    /// back-off someone else caused goes on for everyone else).
    pub fn succeed(&mut self, attempt: Attempt, now: u64) {
        let p = self.policy;
        match attempt.path {
            Path::Trusted { account, client } => {
                if let Some(t) = self.trusted_mut(&account, &client) {
                    t.failures = 0;
                    t.last_ms = now;
                    self.changes += 1;
                }
            }
            Path::Open { account, address, .. } => {
                self.successes += 1;
                let cleared = Record { cleared_at: self.successes, ..Record::default() };
                match account {
                    AccountKey::Known(name) => {
                        if let Some(r) = self.accounts.get_mut(&name) {
                            let had = r.failures > 1;
                            *r = cleared;
                            if had {
                                self.urgent_change();
                            }
                        }
                    }
                    AccountKey::Unknown => self.unknown.give_back(&p),
                    AccountKey::None => {}
                }
                match address {
                    AddrKey::Addr(ip) => {
                        self.addresses.remove(&ip);
                    }
                    AddrKey::Overflow => self.overflow.give_back(&p),
                }
            }
        }
    }

    /// The attempt's check failed: its provisional failures stand. A trusted client that used
    /// up its own free failures is revoked (it logs in as anyone else from now on).
    pub fn fail(&mut self, attempt: Attempt, now: u64) {
        let p = self.policy;
        match attempt.path {
            Path::Trusted { account, client } => {
                if let Some(list) = self.trusted.get_mut(&account) {
                    let before = list.len();
                    list.retain(|t| t.id != client || t.failures < p.free_failures);
                    if list.len() < before {
                        tracing::warn!(account, "trusted client revoked after failed logins");
                    }
                }
                self.urgent_change();
            }
            Path::Open { account, address, successes } => {
                // A success since the admission cleared the record: the failure counts anew.
                // Otherwise its provisional failure stands.
                let cleared = |r: Option<&Record>| r.is_none_or(|r| r.cleared_at > successes);
                let anew = match address {
                    AddrKey::Addr(ip) => cleared(self.addresses.get(&ip)),
                    AddrKey::Overflow => false,
                };
                if let Some(r) = self.address_mut(address, anew) {
                    if anew { r.count(now, &p) } else { r.settle() }
                }
                if let Some(r) = self.account_mut(&account) {
                    if r.cleared_at > successes { r.count(now, &p) } else { r.settle() }
                }
                if account != AccountKey::None {
                    self.urgent_change();
                }
            }
        }
    }

    /// The attempt was never checked (the hashing budget shed it): its slots are given back.
    pub fn cancel(&mut self, attempt: Attempt) {
        let p = self.policy;
        match attempt.path {
            Path::Trusted { account, client } => {
                if let Some(t) = self.trusted_mut(&account, &client) {
                    t.failures = t.failures.saturating_sub(1);
                }
            }
            Path::Open { account, address, successes } => {
                // A record a success cleared since no longer holds this attempt's failure.
                if let Some(r) = self.account_mut(&account)
                    && r.cleared_at <= successes
                {
                    r.give_back(&p);
                }
                if let Some(r) = self.address_mut(address, false)
                    && r.cleared_at <= successes
                {
                    r.give_back(&p);
                }
            }
        }
    }

    /// Counts a failure of `address` that needed no check (malformed input).
    pub fn note_failure(&mut self, address: IpAddr, now: u64) {
        let p = self.policy;
        let key = self.address_key(address, now);
        if let Some(r) = self.address_mut(key, true) {
            r.clamp(now, &p);
            r.count(now, &p);
        }
    }

    /// Remembers `client` (at most [`MAX_CLIENT_ID`] bytes) as trusted for the existing
    /// `account`, or marks it used; the least recently used one goes beyond the policy's bound.
    /// Whether it is trusted now.
    pub fn trust(&mut self, account: &str, client: &str, now: u64) -> bool {
        if !self.accounts.contains_key(account) || client.is_empty() || client.len() > MAX_CLIENT_ID
        {
            return false;
        }
        let (cap, ttl) = (self.policy.trusted_per_account, self.policy.trusted_ttl_ms);
        let list = self.trusted.entry(account.to_owned()).or_default();
        list.retain(|t| now.saturating_sub(t.last_ms) < ttl);
        match list.iter_mut().find(|t| t.id == client) {
            Some(t) => t.last_ms = now,
            None => {
                list.push(Trusted { id: client.to_owned(), failures: 0, last_ms: now });
                while list.len() > cap.max(1) {
                    let Some(oldest) =
                        list.iter().enumerate().min_by_key(|(_, t)| t.last_ms).map(|(i, _)| i)
                    else {
                        break;
                    };
                    list.remove(oldest);
                }
            }
        }
        self.changes += 1;
        list.iter().any(|t| t.id == client)
    }

    /// Whether `client` is trusted for `account` (and has failures left).
    pub fn is_trusted(&self, account: &str, client: &str) -> bool {
        self.trusted.get(account).is_some_and(|l| {
            l.iter().any(|t| t.id == client && t.failures < self.policy.free_failures)
        })
    }

    /// Forgets every trusted client of `account` (password change, erase).
    pub fn revoke_all(&mut self, account: &str) {
        if self.trusted.remove(account).is_some() {
            self.urgent_change();
        }
    }

    /// Records backing off now (accounts, unknown names, addresses, overflow).
    pub fn backing_off(&self, now: u64) -> usize {
        let busy = |r: &Record| r.until_ms > now;
        self.accounts.values().filter(|r| busy(r)).count()
            + self.addresses.values().filter(|r| busy(r)).count()
            + usize::from(busy(&self.unknown))
            + usize::from(busy(&self.overflow))
    }

    /// Milliseconds `claim` must wait from an address that has no failures (0: none).
    pub fn account_wait(&self, now: u64, claim: Claim<'_>) -> u64 {
        let r = match claim {
            Claim::Nobody => return 0,
            Claim::Name(n) => self.accounts.get(n).unwrap_or(&self.unknown),
        };
        r.wait(now).unwrap_or(0).min(self.policy.max_ms)
    }

    /// Addresses with their own record.
    pub fn addresses(&self) -> usize {
        self.addresses.len()
    }

    /// Moves whenever a change must be persisted at once.
    pub fn urgent_version(&self) -> u64 {
        self.urgent
    }

    /// Moves whenever what [`Throttle::snapshot`] returns changes.
    pub fn version(&self) -> u64 {
        self.changes
    }

    /// What must survive a restart.
    pub fn snapshot(&self) -> Durable {
        Durable {
            accounts: self
                .accounts
                .iter()
                .map(|(n, r)| (n, r.settled(&self.policy)))
                .filter(|(_, r)| !r.is_clear())
                .map(|(n, r)| (n.clone(), r))
                .collect(),
            unknown: self.unknown.settled(&self.policy),
            trusted: self
                .trusted
                .iter()
                .filter(|(_, l)| !l.is_empty())
                .map(|(n, l)| (n.clone(), l.clone()))
                .collect(),
        }
    }

    /// Takes back what [`Throttle::snapshot`] returned before a restart, for the accounts that
    /// exist now (call [`Throttle::set_accounts`] first). Back-offs keep running, but none ends
    /// later than `max_ms` from `now`.
    pub fn restore(&mut self, durable: Durable, now: u64) {
        let p = self.policy;
        for (name, mut r) in durable.accounts {
            if let Some(slot) = self.accounts.get_mut(&name) {
                r.clamp(now, &p);
                *slot = r;
            }
        }
        self.unknown = durable.unknown;
        self.unknown.clamp(now, &p);
        for (name, mut list) in durable.trusted {
            if !self.accounts.contains_key(&name) {
                continue;
            }
            list.retain(|t| {
                t.id.len() <= MAX_CLIENT_ID && now.saturating_sub(t.last_ms) < p.trusted_ttl_ms
            });
            list.sort_by_key(|t| std::cmp::Reverse(t.last_ms));
            list.truncate(p.trusted_per_account.max(1));
            for t in &mut list {
                t.last_ms = t.last_ms.min(now);
            }
            self.trusted.insert(name, list);
        }
    }

    fn urgent_change(&mut self) {
        self.urgent += 1;
        self.changes += 1;
    }

    fn trusted_mut(&mut self, account: &str, client: &str) -> Option<&mut Trusted> {
        self.trusted.get_mut(account)?.iter_mut().find(|t| t.id == client)
    }

    fn account_mut(&mut self, key: &AccountKey) -> Option<&mut Record> {
        match key {
            AccountKey::None => None,
            AccountKey::Known(n) => self.accounts.get_mut(n),
            AccountKey::Unknown => Some(&mut self.unknown),
        }
    }

    /// The record of `key`; with `create`, made for an address that has none yet.
    fn address_mut(&mut self, key: AddrKey, create: bool) -> Option<&mut Record> {
        match key {
            AddrKey::Overflow => Some(&mut self.overflow),
            AddrKey::Addr(ip) if create => {
                let made = Record { cleared_at: self.successes, ..Record::default() };
                Some(self.addresses.entry(ip).or_insert(made))
            }
            AddrKey::Addr(ip) => self.addresses.get_mut(&ip),
        }
    }

    /// The key of `address` (an IPv6 address counts as its /64): its own record if it has one
    /// or there is room for one (after forgetting stale ones), else the overflow record.
    fn address_key(&mut self, address: IpAddr, now: u64) -> AddrKey {
        let ip = group(address);
        if self.addresses.len() < self.policy.max_addresses || self.addresses.contains_key(&ip) {
            return AddrKey::Addr(ip);
        }
        let p = self.policy;
        self.addresses.retain(|_, r| !r.forgotten(now, &p));
        if self.addresses.len() < self.policy.max_addresses {
            AddrKey::Addr(ip)
        } else {
            AddrKey::Overflow
        }
    }
}

/// One key per host: IPv4 addresses as they are (IPv4-mapped IPv6 too), IPv6 by /64 (one
/// host's usual allocation, so a host cannot make a new key per address).
fn group(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
    }
}

#[cfg(test)]
mod tests;
