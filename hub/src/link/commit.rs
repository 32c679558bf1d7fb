//! The link's group commits: what a batch writes (readings, checkpoints, devices, leases, the
//! security counters and the device profiles), the one batch in flight on the store's writer
//! thread, and what is released once it is durable (acknowledgements, refusals, leases,
//! pairings).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use coap_lite::ResponseType;
use protocol::link::{AckTicket, PeerState, SecurityCounters};
use protocol::oscore::{Kid, Lease};
use protocol::senml::Reading;
use serde::{Deserialize, Serialize};

use super::Driver;
use crate::clock::unix_now_ms;
use crate::security::COUNTERS_KEY;
use crate::store::{StoreError, Write};

/// The link's security counters, as persisted and reported (EN 303 645 5.10-1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LinkCounters {
    /// The sans-IO link's counters (malformed, replays, bad tags, throttled, pairing, ...).
    #[serde(flatten)]
    pub(crate) link: SecurityCounters,
    /// Readings refused for breaking a limit (SenML).
    #[serde(default)]
    pub(crate) bad_payload: u64,
}

/// Every security counter, as the link saves them: its own and the monitor's others (one
/// document, one path: [`crate::security`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedCounters {
    #[serde(flatten)]
    pub(super) link: LinkCounters,
    #[serde(flatten)]
    pub(super) others: crate::security::Others,
}

impl LinkCounters {
    /// The security events among them (retransmissions and Echo rate limiting are not).
    pub(crate) fn total(&self) -> u64 {
        self.link.security_total() + self.bad_payload
    }
}

pub(super) type Ticket = AckTicket<SocketAddr>;

/// A group commit: what to write, and what to release once it is durable.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) writes: Vec<Write>,
    pub(super) readings: HashMap<Kid, Vec<Reading>>,
    /// Devices whose checkpoint this batch persists.
    pub(super) states: HashSet<Kid>,
    /// The checkpoints written (reported durable after the commit).
    checkpoints: Vec<(Kid, PeerState<SocketAddr>)>,
    acks: Vec<Ticket>,
    pub(super) rejects: Vec<(Ticket, ResponseType, String)>,
    pub(super) leases: Vec<(Kid, Lease)>,
    pub(super) paired: Vec<Kid>,
    /// Readings in the batch (backpressure counts them).
    pub(super) count: usize,
    /// Failed attempts to make it durable (the retry waits longer after each).
    failures: u32,
}

/// The first retry of a failed commit, and the longest wait between retries: each retry is a
/// probe of the disk; the hub resumes by itself at the first that succeeds.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(8);

impl Batch {
    pub(super) fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.readings.is_empty() && self.states.is_empty()
    }

    /// Answers `ticket` once this batch (with its device's checkpoint) is durable.
    pub(super) fn answer(&mut self, ticket: Ticket) {
        self.states.insert(ticket.kid());
        self.acks.push(ticket);
    }

    /// Replaces any queued write of the meta document `key` with `value`.
    pub(super) fn meta(&mut self, key: &str, value: Vec<u8>) {
        self.writes.retain(|w| !matches!(w, Write::Meta { key: k, .. } if k == key));
        self.writes.push(Write::Meta { key: key.into(), value });
    }
}

/// A batch back from the store's writer thread, with its outcome.
pub(super) struct Done {
    batch: Batch,
    result: Result<(), StoreError>,
}

impl Driver {
    /// Queues the security counters for the next commit if they changed (with every commit,
    /// every second and at shutdown): they are logged with the checkpoints of that commit, so a
    /// failure and its count are durable together (EN 303 645 5.10-1: a crash does not erase
    /// the record of an attack). The counters of MQTT, the listeners and the web UI go with
    /// them, as the security monitor last refreshed them (at most a second old).
    pub(super) fn persist_counters(&mut self) {
        let counters = SavedCounters { link: self.counters(), others: self.monitor.saved_others() };
        if self.persisted_counters == Some(counters) {
            return;
        }
        if let Ok(value) = serde_json::to_vec(&counters) {
            self.pending
                .writes
                .retain(|w| !matches!(w, Write::LogMeta { key, .. } if key == COUNTERS_KEY));
            self.pending.writes.push(Write::LogMeta { key: COUNTERS_KEY.into(), value });
            self.persisted_counters = Some(counters);
        }
    }

    /// Queues the device profiles (names, rooms, availability, isolation) for the next commit
    /// when they changed, or whole with last-seen times at shutdown.
    pub(super) fn persist_directory(&mut self, shutdown: bool) {
        let doc =
            if shutdown { Some(self.directory.document()) } else { self.directory.take_dirty() };
        if let Some(value) = self.advisories.take_dirty() {
            self.pending.meta(crate::isolation::META_KEY, value);
        }
        if let Some(value) = doc {
            self.pending.meta(crate::devices::META_KEY, value);
        }
    }

    /// The link's security counters now.
    pub(crate) fn counters(&self) -> LinkCounters {
        LinkCounters { link: self.link.counters(), bad_payload: self.bad_payload }
    }

    /// Lets the commit in flight and the pending batch finish, so nothing received is lost.
    pub(super) async fn drain_on_shutdown(&mut self) {
        self.monitor.refresh();
        self.persist_counters();
        self.persist_directory(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while (self.in_flight || !self.pending.is_empty()) && tokio::time::Instant::now() < deadline
        {
            self.maybe_commit();
            match tokio::time::timeout_at(deadline, self.done_rx.recv()).await {
                Ok(Some(done)) => self.committed(done),
                _ => break,
            }
            self.events();
            self.transmit().await;
        }
    }

    pub(super) fn maybe_commit(&mut self) {
        if self.in_flight || self.failed.is_some() || self.pending.is_empty() {
            return;
        }
        self.persist_counters();
        let mut batch = std::mem::take(&mut self.pending);
        for (kid, readings) in std::mem::take(&mut batch.readings) {
            batch.states.insert(kid);
            batch.writes.push(Write::Readings { kid, readings });
        }
        // Each device's checkpoint (the replay window that accepted its requests, fresh usage
        // ceilings) is durable in the same commit as what it accepted.
        for kid in &batch.states {
            if let Some(state) = self.link.checkpoint(kid) {
                batch.writes.push(Write::State { kid: *kid, state: state.clone() });
                batch.checkpoints.push((*kid, state));
            }
        }
        self.send_batch(batch);
    }

    /// Hands `batch` to the store's writer thread; its outcome comes back as a [`Done`].
    pub(super) fn send_batch(&mut self, mut batch: Batch) {
        let writes = std::mem::take(&mut batch.writes);
        let done = self.done_tx.clone();
        self.store.submit(
            writes,
            Box::new(move |writes, result| {
                batch.writes = writes;
                let _ = done.send(Done { batch, result });
            }),
        );
        self.in_flight = true;
    }

    pub(super) fn committed(&mut self, done: Done) {
        self.in_flight = false;
        let mut batch = done.batch;
        if let Err(e) = done.result {
            // Nothing is acknowledged, no lease is used and no window counts as durable; the same
            // batch is retried with back-off (the sensors keep their readings and retransmit the
            // same requests, and are answered from the retry's acknowledgements). The store
            // says once, in words, that the disk is full or failing (`HubStore::status`).
            let wait = RETRY_FIRST.saturating_mul(1 << batch.failures.min(8)).min(RETRY_MAX);
            batch.failures += 1;
            tracing::debug!(error = %e, attempt = batch.failures, retry_ms = wait.as_millis() as u64, "group commit failed");
            self.failed = Some(batch);
            self.retry_at = Some(tokio::time::Instant::now() + wait);
            return;
        }
        for (kid, state) in &batch.checkpoints {
            self.link.checkpoint_durable(kid, state);
        }
        for t in batch.acks {
            self.link.acknowledge(t);
        }
        for (t, code, why) in batch.rejects {
            self.link.reject(t, code, &why);
        }
        for (kid, lease) in batch.leases {
            self.link.lease_durable(&kid, lease);
        }
        let now = self.now();
        let now_ms = unix_now_ms();
        for kid in batch.paired {
            kill_point!("paired");
            self.link.paired_durable(now, &kid);
        }
        // Pairings before readings (a device's first readings may be in the same commit);
        // the readings of the whole commit go to the directory at once.
        let mut reports = Vec::new();
        for w in batch.writes {
            match w {
                Write::Device { info, .. } => {
                    let id = info.id;
                    self.directory.paired(info, now_ms);
                    self.apply_advisories(Some(&id));
                }
                Write::Readings { kid, readings } => reports.push((kid.into(), readings)),
                _ => {}
            }
        }
        if !reports.is_empty() {
            self.directory.readings(reports, now_ms);
        }
    }
}
