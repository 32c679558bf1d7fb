//! Per-sensor limits that keep an unauthenticated sender from spending a legitimate key or
//! silencing its sensor, across any number of restarts (EN 303 645 5.5-1, 5.9-1 resilience to
//! power loss, 5.10-1; RFC 8613 §7.4, B.1.1/B.1.2; RFC 9175 §2.4; the AES-CCM limits in
//! `oscore::usage`).
//!
//! **Failed verifications** are budgeted per *source class*, each a token bucket on the wall
//! clock whose state is part of the sensor's durable checkpoint:
//!
//! - `Known`: the endpoint of the sensor's last authenticated request;
//! - `Others`: every other source that has not proved it can receive at its address;
//! - `Routable(host)`: a source that echoed a fresh return-routability value ([`super::echo`])
//!   minted for its exact endpoint; one small bucket per host: the sensor's own host, and at
//!   most [`ROUTABLE_HOSTS`] others.
//!
//! A datagram is verified only if its class has a token, and the token is taken *before* the
//! tag is checked, whatever the outcome (so the throttle reveals nothing about an outcome). A
//! failure keeps the token spent; a datagram that never reached the tag check (a replay) gives
//! it back at once; a tag that verified gives it back once the checkpoint recording that is
//! durable. Nothing that depends on a verification's outcome leaves the hub before the
//! checkpoint recording the outcome (failure count, bucket) is durable: answers to accepted
//! requests, the 4.00 to a failed tag, the B.1.2 challenge all wait for it. A crash before it
//! therefore loses only verifications nobody learnt anything from — as if never sent — and
//! the durable failure count and buckets always agree: **no number of restarts lets more
//! failures be recorded (or observed) than the running hub allows**, and no restart charges
//! the genuine sensor anything (there are no reservations to forfeit).
//!
//! Sustained, the classes regain 4 + 4 + 9 × 1 failures an hour ([`FAIL_REFILL_MS`],
//! [`ROUTABLE_REFILL_MS`]): the 2^14 hard limit is at least 40 days of continuous attack away,
//! and the re-key warning (7/8) comes 5 days before it. A blind spoofer of the sensor's endpoint
//! drains `Known`; a flood from other hosts drains `Others`; the sensor then proves it is
//! reachable (one round trip) and is verified from its host's `Routable` bucket, which an
//! off-path attacker cannot reach.
//!
//! **Encryptions** are reserved exactly: a checkpoint raises the durable ceiling by the answers
//! that wait for it, so a restart forfeits at most answers that were due anyway (never a fixed
//! headroom per start).

use std::collections::VecDeque;

use crate::oscore::KeyUsage;
use crate::oscore::{ENCRYPTION_LIMIT, FAILED_DECRYPTION_LIMIT};
use crate::time::Millis;

use super::Endpoint;

/// Failed verifications the `Known` and `Others` classes may each absorb at once.
pub const FAIL_BURST: u32 = 32;
/// One failed verification is regained by `Known` and `Others` every this many ms (15 min).
pub const FAIL_REFILL_MS: u64 = 15 * 60 * 1000;
/// Failed verifications one routable host may absorb at once.
pub const ROUTABLE_BURST: u32 = 4;
/// One failed verification is regained per routable host every this many ms (1 h).
pub const ROUTABLE_REFILL_MS: u64 = 60 * 60 * 1000;
/// Routable hosts with a budget per sensor besides the sensor's own host (which always has
/// one); further hosts wait for one to be idle again.
pub const ROUTABLE_HOSTS: usize = 8;
/// Minimum spacing of B.1.2 Echo challenges (protected, one encryption each) to one source.
pub const ECHO_INTERVAL_MS: u64 = 250;
/// B.1.2 challenges to sources other than the sensor's known endpoint: burst, then one per
/// [`ECHO_REFILL_MS`].
pub const ECHO_BURST: u32 = 8;
/// See [`ECHO_BURST`].
pub const ECHO_REFILL_MS: u64 = 1_000;
/// Source endpoints remembered for B.1.2 challenge spacing.
const ECHO_SOURCES: usize = 8;

/// A bucket as persisted: tokens left and the wall-clock time (Unix ms) from which the next
/// token is earned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketState {
    /// Tokens left.
    pub tokens: u32,
    /// Refill reference, Unix milliseconds.
    pub at: u64,
}

/// A sensor's failure budgets as persisted in its checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuardState<H> {
    /// The `Known` class.
    pub known: BucketState,
    /// The `Others` class.
    pub others: BucketState,
    /// `Routable` hosts that are not full (a full bucket needs no record).
    pub routable: Vec<(H, BucketState)>,
}

/// Which budget a datagram is verified under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class<H> {
    /// From the sensor's last authenticated endpoint.
    Known,
    /// From anywhere else, unproven.
    Others,
    /// From a source that proved it receives at its endpoint on this host.
    Routable(H),
}

/// What may happen to a datagram for a known kid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit<H> {
    /// Verify it; a token of this class is taken (settle it with [`Guard::settle`]).
    Verify(Class<H>),
    /// Its class has no token: drop it unverified.
    Throttled,
    /// The hard limit of failed decryptions is reached: the key is retired (re-pair).
    KeyRetired,
}

/// How a verification that took a token ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The tag failed: the token stays spent.
    Failed,
    /// The tag verified: the token comes back once that is durable.
    Verified,
    /// The tag was never checked (replay, key limit, malformed): the token comes back now.
    Unchecked,
}

/// A token bucket with durable state; `refund` counts verified tags not yet in a checkpoint,
/// `refund_inflight` those in the checkpoint being written.
#[derive(Debug, Clone)]
struct Budget {
    tokens: u32,
    at: u64,
    refund: u32,
    refund_inflight: u32,
}

impl Budget {
    fn full(burst: u32) -> Self {
        Self { tokens: burst, at: 0, refund: 0, refund_inflight: 0 }
    }

    fn restored(s: BucketState, burst: u32) -> Self {
        Self { tokens: s.tokens.min(burst), at: s.at, refund: 0, refund_inflight: 0 }
    }

    /// Earns the tokens due by `wall`. A clock that went back earns nothing until it passes
    /// the reference again.
    fn refill(&mut self, wall: u64, burst: u32, every_ms: u64) {
        if self.tokens >= burst {
            self.at = wall;
            return;
        }
        let gained = wall.saturating_sub(self.at) / every_ms;
        if gained > 0 {
            self.tokens = (u64::from(self.tokens) + gained).min(u64::from(burst)) as u32;
            self.at = self.at.saturating_add(gained * every_ms);
        }
    }

    fn take(&mut self, wall: u64, burst: u32, every_ms: u64) -> bool {
        self.refill(wall, burst, every_ms);
        if self.tokens == 0 {
            return false;
        }
        if self.tokens == burst {
            self.at = wall; // regain time counts from the first token spent
        }
        self.tokens -= 1;
        true
    }

    fn give_back(&mut self, n: u32, burst: u32) {
        self.tokens = self.tokens.saturating_add(n).min(burst);
    }

    /// The durable view: verified tags are not charged.
    fn state(&self, burst: u32) -> BucketState {
        let tokens = self.tokens.saturating_add(self.refund).saturating_add(self.refund_inflight);
        BucketState { tokens: tokens.min(burst), at: self.at }
    }

    /// Full and with nothing owed back: it carries no information.
    fn idle(&mut self, wall: u64, burst: u32, every_ms: u64) -> bool {
        self.refill(wall, burst, every_ms);
        self.tokens >= burst && self.refund == 0 && self.refund_inflight == 0
    }
}

/// One sensor's budgets.
#[derive(Debug, Clone)]
pub struct Guard<A: Endpoint> {
    /// The endpoint of the last authenticated request whose checkpoint is durable.
    known: Option<A>,
    /// A newer authenticated endpoint, not yet in a checkpoint / in the one being written
    /// (classifying by it before then would reveal that a tag verified).
    known_pending: Option<A>,
    known_inflight: Option<A>,
    known_budget: Budget,
    others: Budget,
    routable: Vec<(A::Host, Budget)>,
    /// Durable encryption ceiling.
    encryptions: u64,
    /// B.1.2 challenge spacing, made at the sensor's first challenge (boxed: most sensors
    /// never need one, and inline it took 56 of every peer's bytes).
    echo: Option<Box<EchoSpacing<A>>>,
}

/// Challenges to sources other than the known endpoint, and the recent ones per endpoint.
#[derive(Debug, Clone)]
struct EchoSpacing<A> {
    others: Budget,
    sent: VecDeque<(A, Millis)>,
}

impl<A: Endpoint> Guard<A> {
    /// Budgets for a newly paired sensor (full) whose encryption ceiling `usage` is durable.
    pub fn new(known: Option<A>, usage: KeyUsage) -> Self {
        Self::restore(known, usage, None)
    }

    /// Budgets restored from a durable checkpoint (`None`: a checkpoint written before budgets
    /// were persisted, which starts full).
    pub fn restore(known: Option<A>, usage: KeyUsage, state: Option<&GuardState<A::Host>>) -> Self {
        let (known_budget, others, routable) = match state {
            Some(s) => (
                Budget::restored(s.known, FAIL_BURST),
                Budget::restored(s.others, FAIL_BURST),
                s.routable
                    .iter()
                    .take(ROUTABLE_HOSTS + 1)
                    .map(|(h, b)| (*h, Budget::restored(*b, ROUTABLE_BURST)))
                    .collect(),
            ),
            None => (Budget::full(FAIL_BURST), Budget::full(FAIL_BURST), Vec::new()),
        };
        Self {
            known,
            known_pending: None,
            known_inflight: None,
            known_budget,
            others,
            routable,
            encryptions: usage.encryptions,
            echo: None,
        }
    }

    /// The endpoint of the last authenticated request, as durable.
    pub fn known(&self) -> Option<A> {
        self.known
    }

    /// The endpoint to persist: the newest authenticated one.
    pub fn newest_known(&self) -> Option<A> {
        self.known_pending.or(self.known_inflight).or(self.known)
    }

    /// May a datagram from `from` be verified now (`wall`: Unix ms)? `routable` says it carried
    /// a valid return-routability value for `from`. Takes a token of the class chosen: the
    /// source's routable host if it proved itself and that host has a token, else its
    /// unproven class.
    pub fn admit(&mut self, wall: u64, from: A, routable: bool, used: KeyUsage) -> Admit<A::Host> {
        if used.failed_decryptions >= FAILED_DECRYPTION_LIMIT {
            return Admit::KeyRetired;
        }
        if routable
            && let Some(b) = self.routable_budget(wall, from.host())
            && b.take(wall, ROUTABLE_BURST, ROUTABLE_REFILL_MS)
        {
            return Admit::Verify(Class::Routable(from.host()));
        }
        let class = if self.known == Some(from) { Class::Known } else { Class::Others };
        let taken = self.budget(class).is_some_and(|b| b.take(wall, FAIL_BURST, FAIL_REFILL_MS));
        if taken { Admit::Verify(class) } else { Admit::Throttled }
    }

    /// Settles the token [`Guard::admit`] took for `class`.
    pub fn settle(&mut self, class: Class<A::Host>, outcome: Outcome) {
        let burst = burst(&class);
        let Some(b) = self.budget(class) else { return };
        match outcome {
            Outcome::Failed => {}
            Outcome::Verified => b.refund = b.refund.saturating_add(1),
            Outcome::Unchecked => b.give_back(1, burst),
        }
    }

    /// A fresh request from `from` authenticated: it becomes the sensor's known endpoint once
    /// a checkpoint recording it is durable.
    pub fn authenticated(&mut self, from: A) {
        self.known_pending = Some(from);
    }

    /// May an encryption be made now (below the durable ceiling)?
    pub fn may_encrypt(&self, used: KeyUsage) -> bool {
        used.encryptions < self.encryptions
    }

    /// Whether an encryption could still be reserved (the hard limit is not reached).
    pub fn can_reserve(&self, used: KeyUsage) -> bool {
        used.encryptions < ENCRYPTION_LIMIT
    }

    /// What the next checkpoint persists: the exact failure count and an encryption ceiling
    /// raised by the `answers` waiting for it (never below what is durable, never above the
    /// hard limit), and the buckets as they stand with verified tags uncharged. Verified tags
    /// recorded here are given back once it is durable ([`Guard::durable`]). Call it again only
    /// after the previous checkpoint was reported durable.
    pub fn checkpoint(
        &mut self,
        wall: u64,
        used: KeyUsage,
        answers: u64,
    ) -> (KeyUsage, GuardState<A::Host>) {
        let ceiling = KeyUsage {
            encryptions: used
                .encryptions
                .saturating_add(answers)
                .min(ENCRYPTION_LIMIT)
                .max(self.encryptions),
            failed_decryptions: used.failed_decryptions,
        };
        if let Some(k) = self.known_pending.take() {
            self.known_inflight = Some(k);
        }
        self.routable.retain_mut(|(_, b)| !b.idle(wall, ROUTABLE_BURST, ROUTABLE_REFILL_MS));
        let mut all = self.budgets();
        for b in &mut all {
            b.refund_inflight = b.refund_inflight.saturating_add(std::mem::take(&mut b.refund));
        }
        let state = GuardState {
            known: self.known_budget.state(FAIL_BURST),
            others: self.others.state(FAIL_BURST),
            routable: self.routable.iter().map(|(h, b)| (*h, b.state(ROUTABLE_BURST))).collect(),
        };
        (ceiling, state)
    }

    /// The checkpoint with `ceiling` is durable: its encryptions may be used, the tokens of the
    /// tags it recorded as verified come back, and the endpoint it recorded is the known one.
    pub fn durable(&mut self, ceiling: KeyUsage) {
        self.encryptions = self.encryptions.max(ceiling.encryptions);
        if let Some(k) = self.known_inflight.take() {
            self.known = Some(k);
        }
        let give = |b: &mut Budget, burst| {
            let n = std::mem::take(&mut b.refund_inflight);
            b.give_back(n, burst);
        };
        give(&mut self.known_budget, FAIL_BURST);
        give(&mut self.others, FAIL_BURST);
        for (_, b) in &mut self.routable {
            give(b, ROUTABLE_BURST);
        }
    }

    /// May a B.1.2 Echo challenge go to `from` now? Records it if so.
    pub fn echo(&mut self, now: Millis, from: A) -> bool {
        let known = self.known == Some(from);
        let e = self.echo.get_or_insert_with(|| {
            Box::new(EchoSpacing { others: Budget::full(ECHO_BURST), sent: VecDeque::new() })
        });
        e.sent.retain(|(_, at)| now < at.plus(ECHO_INTERVAL_MS));
        if e.sent.iter().any(|(a, _)| *a == from) {
            return false;
        }
        if !known && !e.others.take(now.0, ECHO_BURST, ECHO_REFILL_MS) {
            return false;
        }
        if e.sent.len() >= ECHO_SOURCES {
            e.sent.pop_front();
        }
        e.sent.push_back((from, now));
        true
    }

    fn budget(&mut self, class: Class<A::Host>) -> Option<&mut Budget> {
        match class {
            Class::Known => Some(&mut self.known_budget),
            Class::Others => Some(&mut self.others),
            Class::Routable(h) => self.routable.iter_mut().find(|(x, _)| *x == h).map(|(_, b)| b),
        }
    }

    fn budgets(&mut self) -> Vec<&mut Budget> {
        let mut v = vec![&mut self.known_budget, &mut self.others];
        v.extend(self.routable.iter_mut().map(|(_, b)| b));
        v
    }

    /// `host`'s routable budget, made if there is room: [`ROUTABLE_HOSTS`] hosts besides the
    /// sensor's own (whose slot attackers elsewhere cannot take); a full, settled one may be
    /// replaced.
    fn routable_budget(&mut self, wall: u64, host: A::Host) -> Option<&mut Budget> {
        if let Some(i) = self.routable.iter().position(|(h, _)| *h == host) {
            return self.routable.get_mut(i).map(|(_, b)| b);
        }
        let own = self.known.map(|k| k.host());
        let others = self.routable.iter().filter(|(h, _)| Some(*h) != own).count();
        let full = if Some(host) == own {
            self.routable.len() > ROUTABLE_HOSTS
        } else {
            others >= ROUTABLE_HOSTS
        };
        if full {
            let idle = self.routable.iter_mut().position(|(h, b)| {
                Some(*h) != own && b.idle(wall, ROUTABLE_BURST, ROUTABLE_REFILL_MS)
            })?;
            self.routable.swap_remove(idle);
        }
        self.routable.push((host, Budget::full(ROUTABLE_BURST)));
        self.routable.last_mut().map(|(_, b)| b)
    }
}

fn burst<H>(class: &Class<H>) -> u32 {
    match class {
        Class::Routable(_) => ROUTABLE_BURST,
        _ => FAIL_BURST,
    }
}

#[cfg(test)]
mod tests;
