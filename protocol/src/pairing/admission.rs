//! Admission of pairing hellos: what an unauthenticated host can make the hub do before the
//! owner types a PIN is budgeted (EN 303 645 5.6-6 and 5.1-5 applied to pairing; DESIGN.md
//! "Failure domains and budgets"). Four pieces, each small and tested at its edges:
//!
//! 0. **Unprotected datagrams per host** ([`RequestFilter`]). Before anything is parsed, a
//!    datagram without an OSCORE option (pairing, junk) is admitted only within its host's
//!    share (`request_rate` per second, `request_burst` saved); the rest is dropped at the cost
//!    of a table lookup, so a flood from a few hosts cannot take the link's time from the
//!    sensors' readings, which share the socket. Hosts beyond the bounded table share one
//!    overflow bucket.
//! 1. **Return routability** ([`hello_cookie_key`]). A hello is served only with an Echo option
//!    (RFC 9175 §2.2, used for reachability as in §2.4) that the hub minted for that very source
//!    endpoint within the last one to two minutes: a stateless MAC, like DTLS's
//!    HelloVerifyRequest (RFC 6347 §4.2.1). A hello from a spoofed address costs one HMAC and a
//!    small answer — no state, no P-256, no session — and every host counted below is one that
//!    receives at its address.
//! 2. **The P-256 budget** ([`HelloBudget`]). Each new session costs an ephemeral key
//!    generation. Grants come from a global bucket (`rate_per_s`, `burst`) and from a share per
//!    host: one grant per `max(host_interval_ms, 2 × active hosts / rate_per_s)`, up to
//!    `host_burst` saved, so hosts that keep asking use about half the global rate together,
//!    however many they are. Active hosts (granted within `active_window_ms`) may take from the
//!    global bucket only above `reserve`; the reserve is for hosts that have not been granted
//!    anything recently — a sensor that starts pairing — so a flood from hosts that are already
//!    served never keeps a new one waiting longer than the flooders' own first grants take
//!    (their number divided by `rate_per_s`). The host table is bounded (`max_hosts`); what is
//!    refused costs a hash lookup and is counted by the caller.
//! 3. **Fair sessions** ([`seat`]). A full session table makes room for a host's new session
//!    by evicting the oldest session of the host holding the most — never of a host holding no
//!    more than the newcomer — so sessions held by others cannot keep a new host out. A session
//!    whose PIN was typed is never evicted.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use rand_core::CryptoRng;

use crate::echo::EchoKey;
use crate::time::Millis;

/// Limits on the pairing hellos the hub serves (its P-256 work).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloLimits {
    /// Key generations per second, for all hosts together.
    pub rate_per_s: u32,
    /// Key generations the global bucket saves up.
    pub burst: u32,
    /// Of those, kept for hosts that were not granted one within the active window.
    pub reserve: u32,
    /// Shortest interval between two key generations for one host (its share grows longer
    /// while more hosts ask).
    pub host_interval_ms: u64,
    /// Grants a host can save up.
    pub host_burst: u32,
    /// A host that was granted a key generation this recently counts as active.
    pub active_window_ms: u64,
    /// Hosts remembered at most.
    pub max_hosts: usize,
    /// Unprotected datagrams one host may send per second (pairing requests, anything that is
    /// not OSCORE).
    pub request_rate: u32,
    /// Unprotected datagrams one host can save up.
    pub request_burst: u32,
}

impl Default for HelloLimits {
    fn default() -> Self {
        Self {
            rate_per_s: 20,
            burst: 20,
            reserve: 10,
            host_interval_ms: 1_000,
            host_burst: 4,
            active_window_ms: 60_000,
            max_hosts: 1_024,
            request_rate: 20,
            request_burst: 40,
        }
    }
}

/// Why a hello was not granted a key generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// This host's share is used up until `retry_at`.
    HostShare {
        /// When its next grant is due.
        retry_at: Millis,
    },
    /// The global budget is used up until `retry_at`.
    Global {
        /// When the next grant is due.
        retry_at: Millis,
    },
}

// ------------------------------------------------------------------------------------------
// Unprotected datagrams per host

/// Hosts the request filter remembers at most (beyond them, one shared overflow bucket).
pub const FILTER_HOSTS: usize = 4_096;

/// A token bucket in microseconds of refill time.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    credit_us: u64,
    at: Millis,
}

impl Bucket {
    fn take(&mut self, now: Millis, cost_us: u64, cap_us: u64) -> bool {
        let elapsed = now.0.saturating_sub(self.at.0);
        self.credit_us = (self.credit_us + elapsed.saturating_mul(1000)).min(cap_us);
        self.at = self.at.max(now);
        if self.credit_us < cost_us {
            return false;
        }
        self.credit_us -= cost_us;
        true
    }

    fn full(&self, now: Millis, cap_us: u64) -> bool {
        self.credit_us + now.0.saturating_sub(self.at.0).saturating_mul(1000) >= cap_us
    }
}

/// The per-host share of unprotected datagrams (see the module documentation).
#[derive(Debug)]
pub struct RequestFilter<H> {
    cost_us: u64,
    cap_us: u64,
    max_hosts: usize,
    hosts: HashMap<H, Bucket>,
    overflow: Bucket,
    pruned_at: Millis,
}

impl<H: Copy + Eq + Hash> RequestFilter<H> {
    /// A filter admitting `rate` datagrams per second per host, `burst` saved up, for at most
    /// `max_hosts` hosts (the others share one bucket of the same size).
    pub fn new(rate: u32, burst: u32, max_hosts: usize) -> Self {
        let cost_us = 1_000_000 / u64::from(rate.max(1));
        let cap_us = cost_us * u64::from(burst.max(1));
        Self {
            cost_us,
            cap_us,
            max_hosts: max_hosts.max(1),
            hosts: HashMap::new(),
            overflow: Bucket { credit_us: cap_us, at: Millis(0) },
            pruned_at: Millis(0),
        }
    }

    /// Whether a datagram from `host` at `now` is admitted (and its share spent).
    pub fn admit(&mut self, now: Millis, host: &H) -> bool {
        let (cost, cap) = (self.cost_us, self.cap_us);
        if let Some(b) = self.hosts.get_mut(host) {
            return b.take(now, cost, cap);
        }
        if self.hosts.len() >= self.max_hosts && now.0 >= self.pruned_at.0.saturating_add(1_000) {
            // At most once a second (a flood of new sources must not make every datagram
            // scan the table): hosts whose bucket is full again are as good as unknown.
            self.pruned_at = now;
            self.hosts.retain(|_, b| !b.full(now, cap));
        }
        if self.hosts.len() >= self.max_hosts {
            return self.overflow.take(now, cost, cap);
        }
        let mut b = Bucket { credit_us: cap, at: now };
        let ok = b.take(now, cost, cap);
        self.hosts.insert(*host, b);
        ok
    }

    /// Hosts remembered.
    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }
}

// ------------------------------------------------------------------------------------------
// Return routability

/// How long one cookie slot lasts: a cookie is accepted in its slot and the next.
pub const COOKIE_SLOT_MS: u64 = 60_000;

/// A fresh key for the stateless hello cookies ([`crate::echo`] values bound to the source
/// endpoint). Make a new one whenever the pairing window opens: cookies of an earlier window
/// are void.
pub fn hello_cookie_key<R: CryptoRng + ?Sized>(rng: &mut R) -> EchoKey {
    EchoKey::new(rng, b"hearth pairing cookie", COOKIE_SLOT_MS)
}

// ------------------------------------------------------------------------------------------
// The P-256 budget

#[derive(Debug, Clone, Copy)]
struct HostShare {
    /// Saved credit, in milliseconds of waiting (a grant costs the current interval).
    credit_ms: u64,
    /// When the credit was last brought up to date.
    at: Millis,
    /// The last grant.
    last_grant: Option<Millis>,
    /// Whether the host counts in [`HelloBudget::active`].
    active: bool,
}

/// The global and per-host budget of key generations for pairing hellos.
#[derive(Debug)]
pub struct HelloBudget<H> {
    limits: HelloLimits,
    /// Global credit in microseconds of refill time (a grant costs `1e6 / rate_per_s`).
    credit_us: u64,
    at: Millis,
    hosts: HashMap<H, HostShare>,
    /// Grants in order, for the active count.
    grants: VecDeque<(Millis, H)>,
    active: usize,
}

impl<H: Copy + Eq + Hash> HelloBudget<H> {
    /// A budget with full buckets.
    pub fn new(limits: HelloLimits) -> Self {
        let limits = HelloLimits {
            rate_per_s: limits.rate_per_s.max(1),
            burst: limits.burst.max(1),
            reserve: limits.reserve.min(limits.burst.saturating_sub(1)),
            host_interval_ms: limits.host_interval_ms.max(1),
            host_burst: limits.host_burst.max(1),
            max_hosts: limits.max_hosts.max(1),
            ..limits
        };
        let mut b = Self {
            limits,
            credit_us: 0,
            at: Millis(0),
            hosts: HashMap::new(),
            grants: VecDeque::new(),
            active: 0,
        };
        b.credit_us = b.capacity_us();
        b
    }

    /// The limits in force.
    pub fn limits(&self) -> HelloLimits {
        self.limits
    }

    fn cost_us(&self) -> u64 {
        1_000_000 / u64::from(self.limits.rate_per_s)
    }

    fn capacity_us(&self) -> u64 {
        self.cost_us() * u64::from(self.limits.burst)
    }

    /// Hosts granted a key generation within the active window.
    pub fn active_hosts(&self) -> usize {
        self.active
    }

    /// Hosts remembered.
    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    /// The current interval between two grants for one host.
    pub fn host_interval_ms(&self) -> u64 {
        let fair = 2_000 * self.active as u64 / u64::from(self.limits.rate_per_s);
        self.limits.host_interval_ms.max(fair)
    }

    fn refresh(&mut self, now: Millis) {
        let elapsed = now.0.saturating_sub(self.at.0);
        self.credit_us = (self.credit_us + elapsed.saturating_mul(1000)).min(self.capacity_us());
        self.at = self.at.max(now);
        let window = self.limits.active_window_ms;
        while let Some(&(t, h)) = self.grants.front() {
            if now.0 < t.0.saturating_add(window) {
                break;
            }
            self.grants.pop_front();
            if let Some(s) = self.hosts.get_mut(&h)
                && s.active
                && s.last_grant == Some(t)
            {
                s.active = false;
                self.active -= 1;
            }
        }
    }

    /// A host's share brought up to `now` (a host not in the table has a full one).
    fn share(&self, now: Millis, host: &H) -> HostShare {
        let cap = self.host_interval_ms() * u64::from(self.limits.host_burst);
        match self.hosts.get(host) {
            Some(s) => HostShare {
                credit_ms: (s.credit_ms + now.0.saturating_sub(s.at.0)).min(cap),
                at: now.max(s.at),
                ..*s
            },
            None => HostShare { credit_ms: cap, at: now, last_grant: None, active: false },
        }
    }

    /// Whether `host` would be granted a key generation at `now` (nothing is spent).
    pub fn check(&mut self, now: Millis, host: &H) -> Result<(), Shed> {
        self.refresh(now);
        let interval = self.host_interval_ms();
        let share = self.share(now, host);
        if share.credit_ms < interval {
            let retry_at = now.plus(interval - share.credit_ms);
            return Err(Shed::HostShare { retry_at });
        }
        let cost = self.cost_us();
        let reserve = if share.active { cost * u64::from(self.limits.reserve) } else { 0 };
        if self.credit_us < reserve + cost {
            let retry_at = now.plus((reserve + cost - self.credit_us).div_ceil(1000));
            return Err(Shed::Global { retry_at });
        }
        Ok(())
    }

    /// Spends a key generation for `host` at `now`, if [`HelloBudget::check`] allows it.
    pub fn grant(&mut self, now: Millis, host: &H) -> Result<(), Shed> {
        self.check(now, host)?;
        let interval = self.host_interval_ms();
        let mut share = self.share(now, host);
        if !self.hosts.contains_key(host) {
            self.make_room(now);
        }
        share.credit_ms -= interval;
        share.last_grant = Some(now);
        if !share.active {
            share.active = true;
            self.active += 1;
        }
        self.hosts.insert(*host, share);
        self.grants.push_back((now, *host));
        self.credit_us -= self.cost_us();
        Ok(())
    }

    /// Keeps the table below `max_hosts` before a new host enters: first forgets hosts that
    /// are indistinguishable from unknown ones (full share, not active), then, if every entry
    /// still matters, the one granted longest ago (it is then treated as a host never seen: a
    /// flood from more hosts than the table holds costs fairness, never more than the global
    /// rate).
    fn make_room(&mut self, now: Millis) {
        if self.hosts.len() < self.limits.max_hosts {
            return;
        }
        let cap = self.host_interval_ms() * u64::from(self.limits.host_burst);
        self.hosts.retain(|_, s| s.active || s.credit_ms + now.0.saturating_sub(s.at.0) < cap);
        if self.hosts.len() < self.limits.max_hosts {
            return;
        }
        let oldest = self.hosts.iter().min_by_key(|(_, s)| s.last_grant).map(|(h, s)| (*h, *s));
        if let Some((h, s)) = oldest {
            self.hosts.remove(&h);
            if s.active {
                self.active -= 1;
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Fair sessions

/// A session as [`seat`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Held<K, H> {
    /// The session.
    pub key: K,
    /// Its host.
    pub host: H,
    /// When it started.
    pub created: Millis,
    /// Whether it may be evicted (not once its PIN was typed).
    pub evictable: bool,
}

/// Where a host's new session goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seat<K> {
    /// There is room.
    Free,
    /// Room is made by evicting this session.
    Evict(K),
    /// No room for this host: it holds its share already.
    Full,
}

/// Decides where `host`'s new session goes among `held`, with at most `max_sessions` in all
/// and `per_host` per host: room if there is some; else the oldest evictable session of the
/// host holding the most, if that is more than `host` holds; else none.
pub fn seat<K: Copy, H: Copy + Eq + Hash>(
    held: &[Held<K, H>],
    host: H,
    max_sessions: usize,
    per_host: usize,
) -> Seat<K> {
    let mut count: HashMap<H, usize> = HashMap::new();
    for s in held {
        *count.entry(s.host).or_default() += 1;
    }
    let mine = count.get(&host).copied().unwrap_or(0);
    if mine >= per_host {
        return Seat::Full;
    }
    if held.len() < max_sessions {
        return Seat::Free;
    }
    held.iter()
        .filter(|s| s.evictable && count[&s.host] > mine)
        .max_by(|a, b| count[&a.host].cmp(&count[&b.host]).then(b.created.cmp(&a.created)))
        .map_or(Seat::Full, |s| Seat::Evict(s.key))
}

#[cfg(test)]
mod tests;
