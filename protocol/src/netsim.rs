//! A seeded, lossy, duplicating, reordering datagram network on a virtual clock (in the spirit
//! of smoltcp's and quinn's test networks), for the link harness and the simulator's fault
//! injection. Deterministic for a given seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand_core::Rng;

use crate::time::Millis;

/// Fault rates and delays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Probability a datagram is dropped.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Base one-way delay.
    pub delay_ms: u64,
    /// Extra random delay in [0, jitter_ms]: datagrams overtake each other (reordering).
    pub jitter_ms: u64,
}

impl Faults {
    /// A perfect network with a fixed delay.
    pub fn none(delay_ms: u64) -> Self {
        Self { loss: 0.0, duplicate: 0.0, delay_ms, jitter_ms: 0 }
    }
}

/// A datagram in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram<A> {
    /// Sender.
    pub from: A,
    /// Receiver.
    pub to: A,
    /// Contents.
    pub bytes: Vec<u8>,
}

/// Statistics of what the network did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams offered.
    pub sent: u64,
    /// Dropped.
    pub lost: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
}

/// The network.
#[derive(Debug)]
pub struct NetSim<A> {
    faults: Faults,
    queue: BinaryHeap<Reverse<(Millis, u64, usize)>>,
    slots: Vec<Option<Datagram<A>>>,
    free: Vec<usize>,
    seq: u64,
    stats: NetStats,
}

impl<A: Clone> NetSim<A> {
    /// A network with the given faults.
    pub fn new(faults: Faults) -> Self {
        Self {
            faults,
            queue: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            seq: 0,
            stats: NetStats::default(),
        }
    }

    /// Changes the faults from now on.
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// What happened so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Offers a datagram at `now`.
    pub fn send<R: Rng + ?Sized>(&mut self, now: Millis, rng: &mut R, d: Datagram<A>) {
        self.stats.sent += 1;
        if chance(rng, self.faults.loss) {
            self.stats.lost += 1;
            return;
        }
        if chance(rng, self.faults.duplicate) {
            self.stats.duplicated += 1;
            let at = self.arrival(now, rng);
            self.push(at, d.clone());
        }
        let at = self.arrival(now, rng);
        self.push(at, d);
    }

    /// When the next datagram arrives, if any is in flight.
    pub fn next_arrival(&self) -> Option<Millis> {
        self.queue.peek().map(|Reverse((t, _, _))| *t)
    }

    /// The next datagram due at or before `now`.
    pub fn pop_due(&mut self, now: Millis) -> Option<Datagram<A>> {
        let Reverse((t, _, slot)) = *self.queue.peek()?;
        if t > now {
            return None;
        }
        self.queue.pop();
        self.free.push(slot);
        self.slots.get_mut(slot).and_then(Option::take)
    }

    /// Drops everything in flight (a link outage or a power cut of the receiver).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.slots.clear();
        self.free.clear();
    }

    fn arrival<R: Rng + ?Sized>(&self, now: Millis, rng: &mut R) -> Millis {
        let jitter = if self.faults.jitter_ms == 0 {
            0
        } else {
            rng.next_u64() % (self.faults.jitter_ms + 1)
        };
        now.plus(self.faults.delay_ms + jitter)
    }

    fn push(&mut self, at: Millis, d: Datagram<A>) {
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(d);
                i
            }
            None => {
                self.slots.push(Some(d));
                self.slots.len() - 1
            }
        };
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, slot)));
    }
}

fn chance<R: Rng + ?Sized>(rng: &mut R, p: f64) -> bool {
    p > 0.0 && (rng.next_u64() as f64 / u64::MAX as f64) < p
}
