//! A sensor's outage buffer (EN 303 645 5.9; TR 103 621 6.51–6.53): the measurements the hub
//! has not acknowledged yet, bounded (the oldest is dropped first, and counted), and the drain
//! after an outage — a randomized wait once the hub answers again (6.53 example 1), then the
//! backlog in measurement order, several per pack, paced by round-trip time, live readings first.
//!
//! Sans-IO like the link: time and randomness are inputs; the caller persists backlog entries
//! ([`Buffer::take_unpersisted`]) and hands each [`Pack`] to the link.

use std::collections::VecDeque;

use protocol::time::Millis;
use rand_core::Rng;

use crate::model::Sample;

/// The longest pause between two backlog packs that pacing may choose.
pub const MAX_DRAIN_GAP_MS: u64 = 2_000;

/// How a sensor buffers and drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferConfig {
    /// Measurements held at most (at least 2); beyond it the oldest is dropped.
    pub capacity: usize,
    /// No answer to the request in flight for this long: the hub is unreachable.
    pub offline_after_ms: u64,
    /// Once the hub answers again, wait a delay drawn uniformly from `[0, this]` before draining.
    pub drain_jitter_ms: u64,
    /// Drain pacing: a backlog pack whose round trip took longer than this makes the sensor
    /// space its packs further apart (the hub's queue is shared, so every sensor backs off).
    pub target_rtt_ms: u64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self { capacity: 1024, offline_after_ms: 5_000, drain_jitter_ms: 10_000, target_rtt_ms: 20 }
    }
}

/// One buffered measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    /// The sensor's own measurement number (increasing).
    pub id: u64,
    /// What was measured, and when.
    pub sample: Sample,
    /// Measured while the hub was unreachable (or not yet sent when it became so).
    pub backlog: bool,
    /// Written to flash.
    pub persisted: bool,
    /// When it was measured, in the caller's monotonic microseconds (for latency); `None` for
    /// entries restored from flash.
    pub measured_us: Option<u64>,
}

/// A pack to send: measurements in order, plus the drop counter if it changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Pack {
    /// Its id (the link's reading id).
    pub id: u64,
    /// The measurements, oldest first.
    pub entries: Vec<Entry>,
    /// Total measurements dropped so far, when the hub has not been told this value yet.
    pub dropped: Option<u64>,
}

/// What changed in the buffer's view of the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferEvent {
    /// The hub stopped answering; unacknowledged measurements are now backlog.
    Offline {
        /// Backlog size.
        backlog: usize,
    },
    /// The randomized wait is over: the backlog drains now.
    DrainStarts {
        /// Backlog size.
        backlog: usize,
        /// The randomized wait drawn after the hub answered again (TR 103 621 6.53 ex. 1).
        waited_ms: u64,
        /// How much later than that the drain started (the sensor's own scheduling delay).
        late_ms: u64,
    },
    /// The backlog is empty.
    Drained {
        /// Total measurements dropped so far.
        dropped: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Online,
    Offline,
    Waiting { since: Millis, until: Millis },
    Draining,
}

#[derive(Debug, Clone)]
struct InFlight {
    pack: u64,
    ids: Vec<u64>,
    dropped: Option<u64>,
    sent: Millis,
    backlog: bool,
    /// A live measurement sent during the wait or the drain, ahead of the backlog.
    live: bool,
}

/// The outcome of an answer to a pack.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    /// The pack's measurements, now gone from the buffer.
    pub entries: Vec<Entry>,
    /// A change of mode it caused.
    pub event: Option<BufferEvent>,
}

/// One sensor's buffer.
#[derive(Debug, Clone)]
pub struct Buffer {
    config: BufferConfig,
    entries: VecDeque<Entry>,
    dropped: u64,
    dropped_reported: u64,
    mode: Mode,
    in_flight: Option<InFlight>,
    next_pack: u64,
    gap_ms: u64,
    next_backlog_at: Millis,
    unpersisted: bool,
}

impl Buffer {
    /// An empty buffer, online.
    pub fn new(config: BufferConfig) -> Self {
        Self::restore(config, Vec::new(), 0, 0)
    }

    /// A buffer as it boots from flash: the persisted backlog (in id order), the drop counter and
    /// the value of it the hub acknowledged. With a backlog it starts offline, so that it drains
    /// only after the hub has answered and the randomized wait has passed.
    pub fn restore(
        config: BufferConfig,
        mut backlog: Vec<(u64, Sample)>,
        dropped: u64,
        dropped_reported: u64,
    ) -> Self {
        let config = BufferConfig { capacity: config.capacity.max(2), ..config };
        backlog.sort_by_key(|(id, _)| *id);
        let entries: VecDeque<Entry> = backlog
            .into_iter()
            .map(|(id, sample)| Entry {
                id,
                sample,
                backlog: true,
                persisted: true,
                measured_us: None,
            })
            .collect();
        let mode = if entries.is_empty() { Mode::Online } else { Mode::Offline };
        Self {
            config,
            entries,
            dropped,
            dropped_reported: dropped_reported.min(dropped),
            mode,
            in_flight: None,
            next_pack: 0,
            gap_ms: 0,
            next_backlog_at: Millis(0),
            unpersisted: false,
        }
    }

    /// Measurements held (sent or not) that the hub has not acknowledged.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Backlog measurements held.
    pub fn backlog(&self) -> usize {
        self.entries.iter().filter(|e| e.backlog).count()
    }

    /// Total measurements dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The drop counter's value the hub has acknowledged.
    pub fn dropped_reported(&self) -> u64 {
        self.dropped_reported
    }

    /// The hub is considered unreachable.
    pub fn is_offline(&self) -> bool {
        self.mode == Mode::Offline
    }

    /// The hub answered again and the backlog is waiting or draining.
    pub fn is_draining(&self) -> bool {
        matches!(self.mode, Mode::Waiting { .. } | Mode::Draining)
    }

    /// Where measurement `id` is: entries are in id order (restored sorted, pushed with
    /// increasing ids), so a binary search.
    fn index_of(&self, id: u64) -> Option<usize> {
        self.entries.binary_search_by_key(&id, |e| e.id).ok()
    }

    /// Adds a measurement taken at `measured_us`; ids increase from one push to the next. When
    /// full, the oldest measurement not in flight is dropped, counted, and returned (so that the
    /// caller can erase it from flash).
    pub fn push(&mut self, id: u64, sample: Sample, measured_us: u64) -> Option<Entry> {
        let mut dropped = None;
        if self.entries.len() >= self.config.capacity {
            let in_flight =
                |e: &Entry| self.in_flight.as_ref().is_some_and(|f| f.ids.contains(&e.id));
            if let Some(at) = self.entries.iter().position(|e| !in_flight(e)) {
                dropped = self.entries.remove(at);
                self.dropped += 1;
            }
        }
        debug_assert!(self.entries.back().is_none_or(|e| e.id < id), "ids must increase");
        let backlog = self.mode == Mode::Offline;
        self.unpersisted |= backlog;
        let measured_us = Some(measured_us);
        self.entries.push_back(Entry { id, sample, backlog, persisted: false, measured_us });
        dropped
    }

    /// Notices time passing: the hub has not answered for too long (`heard` is when the link
    /// last had an authenticated answer to anything), or the randomized wait ended.
    pub fn check(&mut self, now: Millis, heard: Millis) -> Option<BufferEvent> {
        match self.mode {
            Mode::Waiting { since, until } if now >= until => {
                let backlog = self.backlog();
                if backlog == 0 {
                    self.mode = Mode::Online;
                    return Some(BufferEvent::Drained { dropped: self.dropped });
                }
                self.mode = Mode::Draining;
                self.next_backlog_at = now;
                Some(BufferEvent::DrainStarts {
                    backlog,
                    waited_ms: until.0.saturating_sub(since.0),
                    late_ms: now.0.saturating_sub(until.0),
                })
            }
            Mode::Offline => None,
            _ => {
                let since = self.in_flight.as_ref()?.sent.max(heard);
                if now.0.saturating_sub(since.0) < self.config.offline_after_ms {
                    return None;
                }
                self.mode = Mode::Offline;
                for e in &mut self.entries {
                    e.backlog = true;
                }
                self.unpersisted = true;
                Some(BufferEvent::Offline { backlog: self.entries.len() })
            }
        }
    }

    /// The next pack to send, if nothing is in flight and something is due. `max` bounds the
    /// measurements in a backlog pack (what fits in one datagram); live ones go one per pack.
    pub fn poll_pack(&mut self, now: Millis, max: usize) -> Option<Pack> {
        if self.in_flight.is_some() {
            return None;
        }
        let live = self.entries.iter().position(|e| !e.backlog);
        let (ids, backlog): (Vec<u64>, bool) = match self.mode {
            // Online nothing is backlog; offline this is the probe that finds the hub again.
            Mode::Online | Mode::Offline => {
                (vec![self.entries.front()?.id], self.mode == Mode::Offline)
            }
            Mode::Waiting { .. } => (vec![self.entries.get(live?)?.id], false),
            Mode::Draining => match live {
                Some(at) => (vec![self.entries[at].id], false),
                None if now >= self.next_backlog_at && !self.entries.is_empty() => {
                    let max = max.clamp(1, self.config.capacity - 1);
                    (self.entries.iter().take(max).map(|e| e.id).collect(), true)
                }
                None => return None,
            },
        };
        let entries: Vec<Entry> =
            ids.iter().filter_map(|&id| self.index_of(id).map(|at| self.entries[at])).collect();
        let dropped = (self.dropped > self.dropped_reported).then_some(self.dropped);
        let pack = self.next_pack;
        self.next_pack += 1;
        let live = !backlog && self.is_draining();
        self.in_flight = Some(InFlight { pack, ids, dropped, sent: now, backlog, live });
        Some(Pack { id: pack, entries, dropped })
    }

    /// The hub answered pack `pack` (accepted or, authenticated, refused: either way it is
    /// reachable and the pack's measurements leave the buffer).
    pub fn on_answer<R: Rng + ?Sized>(&mut self, now: Millis, rng: &mut R, pack: u64) -> Answered {
        let Some(f) = self.in_flight.take_if(|f| f.pack == pack) else {
            return Answered { entries: Vec::new(), event: None };
        };
        // A lookup per sent measurement, not a pass over the buffer: under load a full buffer
        // holds 1,024 and is answered hundreds of times a second.
        let mut entries = Vec::with_capacity(f.ids.len());
        for &id in &f.ids {
            if let Some(e) = self.index_of(id).and_then(|at| self.entries.remove(at)) {
                entries.push(e);
            }
        }
        if let Some(d) = f.dropped {
            self.dropped_reported = self.dropped_reported.max(d);
        }
        if f.live {
            // Sent live during a drain, ahead of the backlog by design; an outage noticed
            // while it was in flight (which made it backlog, to be kept in flash) does not
            // make it part of the backlog's order.
            for e in &mut entries {
                e.backlog = false;
            }
        }
        if f.backlog && self.mode == Mode::Draining {
            self.pace(now, rng, now.0.saturating_sub(f.sent.0));
        }
        let event = match self.mode {
            Mode::Offline => {
                let wait = rng.next_u64() % (self.config.drain_jitter_ms + 1);
                self.mode = Mode::Waiting { since: now, until: now.plus(wait) };
                self.check(now, now)
            }
            Mode::Draining if !self.entries.iter().any(|e| e.backlog) => {
                self.mode = Mode::Online;
                Some(BufferEvent::Drained { dropped: self.dropped })
            }
            _ => None,
        };
        Answered { entries, event }
    }

    /// Delay-based pacing (like LEDBAT): a round trip above the target doubles the gap between
    /// backlog packs, one below it shrinks the gap; a random factor keeps sensors out of step.
    fn pace<R: Rng + ?Sized>(&mut self, now: Millis, rng: &mut R, rtt: u64) {
        let target = self.config.target_rtt_ms.max(1);
        self.gap_ms = if rtt > target {
            (self.gap_ms * 2).max(rtt).min(MAX_DRAIN_GAP_MS)
        } else {
            self.gap_ms * 3 / 4
        };
        let spread = self.gap_ms / 2 + rng.next_u64() % (self.gap_ms + 1);
        self.next_backlog_at = now.plus(spread);
    }

    /// When [`Buffer::check`] or [`Buffer::poll_pack`] next has something to do (`heard` as for
    /// [`Buffer::check`]); it may lie in the past.
    pub fn poll_timeout(&self, heard: Millis) -> Option<Millis> {
        match (self.mode, &self.in_flight) {
            (Mode::Waiting { until, .. }, _) => Some(until),
            (Mode::Offline, _) => None,
            (_, Some(f)) => Some(f.sent.max(heard).plus(self.config.offline_after_ms)),
            (Mode::Draining, None) if self.next_backlog_at > Millis(0) => {
                Some(self.next_backlog_at)
            }
            _ => None,
        }
    }

    /// Backlog measurements not written to flash yet; they count as written from now on.
    pub fn take_unpersisted(&mut self) -> Vec<(u64, Sample)> {
        if !std::mem::take(&mut self.unpersisted) {
            return Vec::new();
        }
        self.entries
            .iter_mut()
            .filter(|e| e.backlog && !e.persisted)
            .map(|e| {
                e.persisted = true;
                (e.id, e.sample)
            })
            .collect()
    }

    /// A power cut: RAM is gone (the pack in flight and what was never persisted); the persisted
    /// backlog stays and drains once the hub has answered again.
    pub fn power_cut(&mut self) {
        self.entries.retain(|e| e.persisted);
        self.in_flight = None;
        self.gap_ms = 0;
        self.mode = if self.entries.is_empty() { Mode::Online } else { Mode::Offline };
    }

    /// Makes every held measurement backlog (before a shutdown: it is drained after the restart).
    pub fn keep_all(&mut self) {
        for e in &mut self.entries {
            e.backlog = true;
        }
        self.unpersisted = !self.entries.is_empty();
    }
}

#[cfg(test)]
mod tests;
