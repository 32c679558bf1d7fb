//! Connection slots of one listener (EN 303 645 5.6-1 and 5.13-1 applied to connections; DESIGN
//! "Failure domains and budgets"): a bounded number of connections, a cap per client address,
//! and room always made for a newcomer by evicting a connection that has not authenticated.
//!
//! A connection starts *pending* (no valid web session, no accepted MQTT CONNECT yet) and
//! becomes *established* once its client proved who it is; established connections are never
//! evicted. When a new connection arrives:
//!
//! 1. if its address already holds `per_address` connections, that address's oldest pending
//!    connection is evicted (so one address can neither exceed its cap nor keep its own newer
//!    connections — e.g. the owner behind the same NAT — out by holding old idle ones); if all of
//!    them are established, the newcomer is refused;
//! 2. if the listener holds `capacity` connections, the oldest pending connection of the address
//!    holding the most pending connections is evicted (an attacker using few addresses loses its
//!    own connections first; a client with one pending connection is only chosen when every
//!    address holds just one); if every slot is established, the newcomer is refused.
//!
//! So every slot an unauthenticated client can hold is one a newcomer can take back, and the
//! slots of clients with a live session are kept for them. Every eviction and refusal is
//! counted (`shed`), as are connections the listener cut for being too slow (`slow`, reported
//! by the listener's own timeouts).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Sheds are summarized in the log at most this often per listener.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once (pending and established).
    pub capacity: usize,
    /// Connections at once from one client address.
    pub per_address: usize,
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every slot is held by an established connection.
    #[error("every connection slot is held by an authenticated client")]
    Full,
    /// The address holds its cap of established connections.
    #[error("this address holds its cap of authenticated connections")]
    AddressFull,
}

/// What the listener counted since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotCounters {
    /// Connections evicted or refused for lack of a slot.
    pub shed: u64,
    /// Connections cut by the listener for being too slow (handshake, request, body).
    pub slow: u64,
    /// Connections open now.
    pub open: usize,
    /// Of those, pending (not authenticated).
    pub pending: usize,
}

/// A pending connection, in arrival order within its address.
#[derive(Debug)]
struct Pending {
    id: u64,
    evict: CancellationToken,
}

#[derive(Debug, Default)]
struct Address {
    pending: VecDeque<Pending>,
    established: usize,
}

impl Address {
    fn len(&self) -> usize {
        self.pending.len() + self.established
    }
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    open: usize,
    pending: usize,
    by_address: HashMap<IpAddr, Address>,
}

impl State {
    /// Evicts the oldest pending connection of `addr`; false if it has none.
    fn evict_from(&mut self, addr: &IpAddr) -> bool {
        let Some(a) = self.by_address.get_mut(addr) else { return false };
        let Some(victim) = a.pending.pop_front() else { return false };
        victim.evict.cancel();
        if a.len() == 0 {
            self.by_address.remove(addr);
        }
        self.open -= 1;
        self.pending -= 1;
        true
    }

    /// The address to evict from when the listener is full: the one holding the most pending
    /// connections, and among those the one whose oldest is oldest.
    fn heaviest(&self) -> Option<IpAddr> {
        self.by_address
            .iter()
            .filter_map(|(ip, a)| a.pending.front().map(|p| (*ip, a.pending.len(), p.id)))
            .max_by(|x, y| x.1.cmp(&y.1).then(y.2.cmp(&x.2)))
            .map(|(ip, _, _)| ip)
    }
}

/// The slots of one listener (shared by its accept loop and its connections).
#[derive(Debug)]
pub struct Slots {
    name: &'static str,
    limits: Limits,
    state: Mutex<State>,
    shed: AtomicU64,
    slow: AtomicU64,
    /// When sheds were last logged, and how many since.
    log: Mutex<(Option<Instant>, u64)>,
}

impl Slots {
    /// Slots for the listener `name` (used in log lines), within `limits` (each at least 1).
    pub fn new(name: &'static str, limits: Limits) -> Arc<Self> {
        let limits =
            Limits { capacity: limits.capacity.max(1), per_address: limits.per_address.max(1) };
        Arc::new(Self {
            name,
            limits,
            state: Mutex::new(State::default()),
            shed: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            log: Mutex::new((None, 0)),
        })
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection from `addr`, evicting a pending connection if that is what
    /// it takes (see the module documentation).
    pub fn acquire(self: &Arc<Self>, addr: IpAddr) -> Result<Slot, Refused> {
        let addr = addr.to_canonical();
        let mut shed = 0u64;
        let mut s = self.lock();
        let held = s.by_address.get(&addr).map_or(0, Address::len);
        if held >= self.limits.per_address {
            if !s.evict_from(&addr) {
                drop(s);
                self.shed(1, "an address holds its cap of authenticated connections");
                return Err(Refused::AddressFull);
            }
            shed += 1;
        }
        if s.open >= self.limits.capacity {
            let evicted = s.heaviest().is_some_and(|victim| s.evict_from(&victim));
            if !evicted {
                drop(s);
                self.shed(1, "every slot is held by an authenticated client");
                return Err(Refused::Full);
            }
            shed += 1;
        }
        let id = s.next_id;
        s.next_id += 1;
        let evict = CancellationToken::new();
        s.by_address
            .entry(addr)
            .or_default()
            .pending
            .push_back(Pending { id, evict: evict.clone() });
        s.open += 1;
        s.pending += 1;
        drop(s);
        if shed > 0 {
            self.shed(shed, "a newcomer took the slot of a connection that had not logged in");
        }
        Ok(Slot { slots: self.clone(), addr, id, evict, established: AtomicBool::new(false) })
    }

    /// Counts `n` connections shed and logs a summary at most every [`LOG_EVERY`].
    fn shed(&self, n: u64, why: &'static str) {
        let total = self.shed.fetch_add(n, Ordering::Relaxed) + n;
        let now = Instant::now();
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.1 += n;
        if log.0.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return;
        }
        let since = std::mem::take(&mut log.1);
        log.0 = Some(now);
        drop(log);
        tracing::warn!(
            listener = self.name,
            shed = since,
            total,
            capacity = self.limits.capacity,
            per_address = self.limits.per_address,
            last = why,
            "connections closed or refused to make room: a client holds connections without \
             logging in (all are counted: hub ctl security)"
        );
    }

    /// Counts a connection the listener cut for being too slow.
    pub fn count_slow(&self) {
        self.slow.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters.
    pub fn counters(&self) -> SlotCounters {
        let s = self.lock();
        SlotCounters {
            shed: self.shed.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
            open: s.open,
            pending: s.pending,
        }
    }
}

/// One connection's slot: released when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    addr: IpAddr,
    id: u64,
    evict: CancellationToken,
    established: AtomicBool,
}

impl Slot {
    /// Marks the connection established (its client authenticated): it is never evicted from
    /// now on. False if it was evicted before.
    pub fn establish(&self) -> bool {
        if self.established.load(Ordering::Acquire) {
            return true;
        }
        let mut guard = self.slots.lock();
        let s = &mut *guard;
        let Some(a) = s.by_address.get_mut(&self.addr) else { return false };
        let Some(i) = a.pending.iter().position(|p| p.id == self.id) else { return false };
        a.pending.remove(i);
        a.established += 1;
        s.pending -= 1;
        self.established.store(true, Ordering::Release);
        true
    }

    /// Whether the connection is established.
    pub fn is_established(&self) -> bool {
        self.established.load(Ordering::Acquire)
    }

    /// Completes when the connection was evicted to make room: close it then.
    pub fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.evict.cancelled()
    }

    /// Whether the connection was evicted.
    pub fn is_evicted(&self) -> bool {
        self.evict.is_cancelled()
    }

    /// Counts this connection as cut by the listener for being too slow.
    pub fn count_slow(&self) {
        self.slots.count_slow();
    }

    /// The client's address (canonical: IPv4-mapped IPv6 addresses as IPv4).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.slots.lock();
        let s = &mut *guard;
        let Some(a) = s.by_address.get_mut(&self.addr) else { return };
        if self.established.load(Ordering::Acquire) {
            a.established -= 1;
        } else if let Some(i) = a.pending.iter().position(|p| p.id == self.id) {
            a.pending.remove(i);
            s.pending -= 1;
        } else {
            return; // evicted: its slot was given away already
        }
        if a.len() == 0 {
            s.by_address.remove(&self.addr);
        }
        s.open -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn slots(capacity: usize, per_address: usize) -> Arc<Slots> {
        Slots::new("test", Limits { capacity, per_address })
    }

    #[test]
    fn an_address_at_its_cap_loses_its_own_oldest_pending_connection() {
        let s = slots(100, 3);
        let a: Vec<Slot> = (0..3).map(|_| s.acquire(ip(1)).expect("slot")).collect();
        let other = s.acquire(ip(2)).expect("slot");
        let newest = s.acquire(ip(1)).expect("room made");
        assert!(a[0].is_evicted(), "the oldest of that address");
        assert!(!a[1].is_evicted() && !a[2].is_evicted() && !other.is_evicted());
        assert!(!newest.is_evicted());
        assert_eq!(s.counters(), SlotCounters { shed: 1, slow: 0, open: 4, pending: 4 });
        // The evicted slot's drop gives nothing back twice.
        drop(a);
        assert_eq!(s.counters().open, 2);
        drop((other, newest));
        assert_eq!(s.counters().open, 0);
        assert!(s.lock().by_address.is_empty());
    }

    #[test]
    fn established_connections_are_never_evicted_and_refuse_beyond_the_cap() {
        let s = slots(100, 2);
        let a = s.acquire(ip(1)).expect("slot");
        let b = s.acquire(ip(1)).expect("slot");
        assert!(a.establish() && b.establish());
        assert_eq!(s.acquire(ip(1)).err(), Some(Refused::AddressFull));
        assert!(!a.is_evicted() && !b.is_evicted());
        assert_eq!(s.counters().shed, 1);
        // One established, one pending: the pending one goes.
        drop(b);
        let c = s.acquire(ip(1)).expect("slot");
        let d = s.acquire(ip(1)).expect("room made");
        assert!(c.is_evicted() && !a.is_evicted() && !d.is_evicted());
        assert!(!c.establish(), "an evicted connection cannot establish itself");
    }

    #[test]
    fn a_full_listener_evicts_from_the_address_holding_the_most() {
        let s = slots(6, 4);
        let owner = s.acquire(ip(9)).expect("slot");
        let attacker: Vec<Slot> = (0..4).map(|_| s.acquire(ip(1)).expect("slot")).collect();
        let other = s.acquire(ip(2)).expect("slot");
        // Full: a newcomer takes the attacker's oldest, not the owner's older connection.
        let newcomer = s.acquire(ip(3)).expect("room made");
        assert!(attacker[0].is_evicted());
        assert!(!owner.is_evicted() && !other.is_evicted() && !newcomer.is_evicted());
        // The attacker keeps losing its oldest while it holds the most; then the address
        // holding the most is the newcomer's own.
        let fourth: Vec<Slot> = (0..3).map(|_| s.acquire(ip(4)).expect("slot")).collect();
        assert!(attacker[1].is_evicted() && attacker[2].is_evicted());
        assert!(fourth[0].is_evicted() && !fourth[1].is_evicted() && !fourth[2].is_evicted());
        assert!(!owner.is_evicted() && !other.is_evicted() && !attacker[3].is_evicted());
        assert!(!newcomer.is_evicted());
        assert_eq!(s.counters().open, 6);
        assert_eq!(s.counters().shed, 4);
    }

    #[test]
    fn a_listener_full_of_sessions_refuses_newcomers() {
        let s = slots(3, 3);
        let held: Vec<Slot> = (1..=3).map(|n| s.acquire(ip(n)).expect("slot")).collect();
        for h in &held {
            assert!(h.establish());
        }
        assert_eq!(s.acquire(ip(7)).err(), Some(Refused::Full));
        assert!(held.iter().all(|h| !h.is_evicted()));
        drop(held);
        assert!(s.acquire(ip(7)).is_ok(), "slots come back");
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_their_ipv4_address() {
        let s = slots(10, 1);
        let v4 = s.acquire(IpAddr::from([192, 0, 2, 1])).expect("slot");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        let m = s.acquire(mapped).expect("slot");
        assert!(v4.is_evicted() && !m.is_evicted());
        assert_eq!(m.addr(), IpAddr::from([192, 0, 2, 1]));
    }

    #[tokio::test]
    async fn an_evicted_connection_is_told() {
        let s = slots(1, 1);
        let first = s.acquire(ip(1)).expect("slot");
        let _second = s.acquire(ip(2)).expect("room made");
        tokio::time::timeout(Duration::from_secs(5), first.evicted()).await.expect("told");
    }

    #[test]
    fn slow_connections_are_counted() {
        let s = slots(1, 1);
        s.count_slow();
        s.count_slow();
        assert_eq!(s.counters().slow, 2);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Connect(u8),
            Establish(usize),
            Close(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0u8..6).prop_map(Op::Connect),
                2 => (0usize..64).prop_map(Op::Establish),
                2 => (0usize..64).prop_map(Op::Close),
            ]
        }

        proptest! {
            /// Whatever clients do: the bounds hold, established connections are never
            /// evicted, a newcomer is refused only when the slots it could take are all
            /// established, and the books balance with what is really open.
            #[test]
            fn bounds_hold_and_sessions_are_kept(
                capacity in 1usize..12,
                per_address in 1usize..6,
                ops in proptest::collection::vec(op(), 1..200),
            ) {
                let s = slots(capacity, per_address);
                let mut open: Vec<Slot> = Vec::new();
                for o in ops {
                    match o {
                        Op::Connect(n) => {
                            let addr = ip(n);
                            let before: Vec<bool> = open.iter().map(Slot::is_established).collect();
                            match s.acquire(addr) {
                                Ok(slot) => open.push(slot),
                                Err(Refused::AddressFull) => {
                                    let mine = open.iter().filter(|x| !x.is_evicted() && x.addr() == addr);
                                    prop_assert!(mine.clone().all(Slot::is_established));
                                    prop_assert_eq!(mine.count(), per_address);
                                }
                                Err(Refused::Full) => {
                                    let live = open.iter().filter(|x| !x.is_evicted());
                                    prop_assert!(live.clone().all(Slot::is_established));
                                    prop_assert_eq!(live.count(), capacity);
                                }
                            }
                            for (slot, was) in open.iter().zip(before) {
                                prop_assert!(!(was && slot.is_evicted()), "a session was evicted");
                            }
                        }
                        Op::Establish(i) if !open.is_empty() => {
                            let slot = &open[i % open.len()];
                            let evicted = slot.is_evicted();
                            prop_assert_eq!(slot.establish(), !evicted);
                        }
                        Op::Close(i) if !open.is_empty() => {
                            let n = open.len();
                            drop(open.swap_remove(i % n));
                        }
                        _ => {}
                    }
                    open.retain(|x| !x.is_evicted());
                    let c = s.counters();
                    prop_assert_eq!(c.open, open.len());
                    prop_assert!(c.open <= capacity);
                    prop_assert_eq!(c.pending, open.iter().filter(|x| !x.is_established()).count());
                    for n in 0..6 {
                        prop_assert!(open.iter().filter(|x| x.addr() == ip(n)).count() <= per_address);
                    }
                }
            }
        }
    }
}
