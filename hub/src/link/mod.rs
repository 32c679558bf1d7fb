//! The link driver: one task owns the CoAP/UDP socket and the sans-IO `HubLink` (sensors are
//! demultiplexed by OSCORE kid, not by address). Readings are validated, handed to the store's
//! writer thread in group commits (one fsync per batch, one batch in flight). Every accepted
//! request is answered only after its batch is durable — together with the checkpoint (replay
//! window, key usage, failure budgets) that accepted it — so no request is answered twice
//! across a restart; the security counters ride in the same commits, so they are durable with
//! the failures they count.
//!
//! **Failure domain** (DESIGN.md): the driver runs on its own OS thread with its own
//! single-threaded runtime (`daemon::start`), so nothing the web UI, MQTT or the control socket does
//! — a deadlock, a busy loop, every worker of the main runtime wedged — can stop readings from
//! being acknowledged. What it shares with them never blocks it: commands arrive on a channel,
//! answers leave on one-shot channels, notices on a broadcast channel; the store's writer
//! thread is the only writer; the device directory's lock is held only inside its own methods
//! for in-memory work (no I/O, no other lock, no `.await`).

mod command;
mod commit;
mod error;
mod pairing;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::ResponseType;
use protocol::link::{HubEvent, HubLink, SecurityEvent};
use protocol::oscore::Kid;
use protocol::senml;
use protocol::time::Millis;
use rand_chacha::ChaCha20Rng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub(crate) use command::LinkCommand;
pub(crate) use error::LinkError;
pub(crate) use pairing::PinEntry;
pub use pairing::{PairingState, PairingStatus, Waiting};

use crate::clock::{unix_now, unix_now_ms};
use crate::config::Config;
use crate::devices::Directory;
use crate::isolation::Advisories;
use crate::seclog::SecurityLog;
use crate::security::COUNTERS_KEY;
use crate::store::{DeviceInfo, HubStore, Write};
use crate::updates::{META_KEY, Updates};
use commit::{Batch, Done, SavedCounters};

/// The answer to an isolated sensor's readings and requests.
const ISOLATED: &str = "isolated by the hub: see the hub's device list";

pub(crate) struct Driver {
    link: HubLink<SocketAddr>,
    socket: Arc<UdpSocket>,
    config: Config,
    rng: ChaCha20Rng,
    origin: Instant,
    pending: Batch,
    in_flight: bool,
    store: HubStore,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    retry_at: Option<tokio::time::Instant>,
    failed: Option<Batch>,
    bad_payload: u64,
    updates: Updates,
    replan: bool,
    seclog: SecurityLog,
    /// The security counters as last queued for the store.
    persisted_counters: Option<SavedCounters>,
    /// The security counters beside the link's, saved with them ([`crate::security`]).
    monitor: Arc<crate::security::Monitor>,
    pins: VecDeque<PinEntry>,
    /// The attempt being confirmed, and who waits for its outcome.
    pin_attempt: Option<(Kid, oneshot::Sender<Result<Kid, LinkError>>)>,
    /// What people and the outgoing paths see of each device.
    directory: Directory,
    /// Security advisories and the actions taken.
    advisories: Advisories,
}

impl Driver {
    // What the driver owns, each made by `daemon::start` from the store and configuration.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        updates: Updates,
        mut link: HubLink<SocketAddr>,
        socket: Arc<UdpSocket>,
        store: HubStore,
        config: Config,
        directory: Directory,
        advisories: Advisories,
        monitor: Arc<crate::security::Monitor>,
    ) -> Self {
        // Security counters survive restarts (EN 303 645 5.10-1); unreadable ones start at 0.
        let restored: Option<SavedCounters> =
            store.meta(COUNTERS_KEY).ok().flatten().and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(r) = &restored {
            link.restore_counters(r.link.link);
        }
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        // Failure budgets refill on the wall clock (they are persisted with it).
        link.set_clock(Millis(1), unix_now_ms().max(0) as u64);
        Self {
            link,
            socket,
            config,
            rng: crate::rng::os_seeded(),
            origin: Instant::now(),
            pending: Batch::default(),
            in_flight: false,
            store,
            done_tx,
            done_rx,
            retry_at: None,
            failed: None,
            bad_payload: restored.map_or(0, |r| r.link.bad_payload),
            updates,
            replan: true,
            seclog: SecurityLog::default(),
            persisted_counters: restored,
            pins: VecDeque::new(),
            pin_attempt: None,
            directory,
            advisories,
            monitor,
        }
    }

    fn now(&self) -> Millis {
        Millis(self.origin.elapsed().as_millis() as u64 + 1)
    }

    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<LinkCommand>,
        shutdown: CancellationToken,
    ) {
        let mut buf = vec![0u8; 2048];
        // Postponements and back-offs end with time: re-plan deliveries every second.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let retry = self.retry_at;
            // Backpressure: while a full batch waits behind the commit in flight, leave new
            // datagrams in the kernel buffer (memory stays bounded under overload; CoAP
            // retransmission recovers anything the kernel drops).
            let accepting = self.pending.count < self.config.store.max_batch.max(1);
            tokio::select! {
                r = self.socket.recv_from(&mut buf), if accepting => {
                    if let Ok((n, from)) = r {
                        self.datagram(from, &buf[..n]);
                    }
                    // Drain what is already queued before turning to commits and sends.
                    for _ in 0..128 {
                        if self.pending.count >= self.config.store.max_batch {
                            break;
                        }
                        match self.socket.try_recv_from(&mut buf) {
                            Ok((n, from)) => self.datagram(from, &buf[..n]),
                            Err(_) => break,
                        }
                    }
                }
                Some(done) = self.done_rx.recv() => self.committed(done),
                Some(cmd) = commands.recv() => cmd.run(&mut self),
                () = async { if let Some(t) = retry { tokio::time::sleep_until(t).await } else { std::future::pending().await } } => {
                    self.retry_at = None;
                    if let Some(batch) = self.failed.take() {
                        self.send_batch(batch);
                    }
                }
                _ = tick.tick() => {
                    self.replan = true;
                    let now = self.now();
                    self.link.set_clock(now, unix_now_ms().max(0) as u64);
                    self.link.handle_timeout(now);
                    self.next_pin();
                    self.persist_counters();
                    self.directory.tick(unix_now_ms());
                    self.persist_directory(false);
                    self.seclog.flush(Instant::now());
                }
                () = shutdown.cancelled() => break,
            }
            self.events();
            self.plan_updates();
            self.maybe_commit();
            self.transmit().await;
        }
        self.drain_on_shutdown().await;
    }

    fn datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        let now = self.now();
        self.link.handle_datagram(now, from, bytes, &mut self.rng);
    }
    fn events(&mut self) {
        while let Some(e) = self.link.poll_event() {
            match e {
                HubEvent::Reading { ticket, .. } | HubEvent::Request { ticket }
                    if self.directory.isolated(&ticket.kid().into()) =>
                {
                    // Isolated (TR 103 621 6.23 ex. 2): only what erase and replacement need is
                    // accepted; the sensor keeps its data (its physical interface shows it).
                    self.pending.states.insert(ticket.kid());
                    self.pending.rejects.push((ticket, ResponseType::Forbidden, ISOLATED.into()));
                }
                HubEvent::Reading { ticket, payload } => {
                    let now = unix_now();
                    match senml::decode(&payload.0, &senml::Limits::with_now(now), now) {
                        Ok(readings) => {
                            self.pending.count += readings.len();
                            self.pending.readings.entry(ticket.kid()).or_default().extend(readings);
                            self.pending.answer(ticket);
                        }
                        Err(e) => {
                            self.bad_payload += 1;
                            tracing::warn!(device = %ticket.kid(), error = %e, "reading refused");
                            // The refusal goes out after the window that accepted the request is
                            // durable, like an acknowledgement (one answer per request nonce).
                            self.pending.states.insert(ticket.kid());
                            self.pending.rejects.push((
                                ticket,
                                ResponseType::BadRequest,
                                e.to_string(),
                            ));
                        }
                    }
                }
                HubEvent::Paired { kid, params, descriptor } => {
                    self.updates.device(
                        &kid,
                        &descriptor.model,
                        descriptor.firmware_version,
                        descriptor.updatable,
                    );
                    self.replan = true;
                    tracing::info!(device = %kid, model = %descriptor.model, serial = %descriptor.serial, "paired");
                    let info = DeviceInfo::new(&kid, &descriptor, unix_now().0);
                    kill_point!("pairing");
                    self.pending.writes.push(Write::Device { info, params });
                    self.pending.states.insert(kid);
                    self.pending.paired.push(kid);
                }
                HubEvent::Renewed { kid, params } => {
                    // Before the answer to the request that renewed it (it waits for this
                    // commit's checkpoint): the sensor never uses a context the hub can lose.
                    tracing::info!(device = %kid, "security context renewed (RFC 8613 B.2)");
                    self.pending.writes.push(Write::Renew { kid, params });
                    self.pending.states.insert(kid);
                }
                HubEvent::LeaseNeeded { kid, lease } => {
                    self.pending.writes.push(Write::Lease { kid, lease: lease.0 });
                    self.pending.leases.push((kid, lease));
                }
                HubEvent::PairingRequested { kid, descriptor } => {
                    tracing::info!(device = %kid, model = %descriptor.model, serial = %descriptor.serial, "sensor asks to pair; waiting for its PIN");
                }
                HubEvent::NeedsRekey { kid, reason } => {
                    tracing::warn!(device = %kid, ?reason, "key nearing its usage limit: re-pair the device");
                }
                HubEvent::Security(e) => {
                    if let SecurityEvent::PairingFailed { kid, reason } = &e {
                        let failed = self.failed_attempt(*reason);
                        self.pin_resolved(kid, Err(failed));
                    }
                    self.seclog.event(&e);
                }
                HubEvent::PairingConfirmed { kid } => self.pin_resolved(&kid, Ok(kid)),
                HubEvent::CheckpointNeeded { kid } => {
                    self.pending.states.insert(kid);
                }
                // Firmware manifest or block, or an unknown resource: answered after durability.
                HubEvent::Request { ticket } => self.pending.answer(ticket),
                // A report is acknowledged once it is durable (with the window that accepted it).
                HubEvent::Report { ticket, report } => {
                    tracing::info!(device = %ticket.kid(), version = report.version, running = report.running, outcome = ?report.outcome, reason = %report.reason, "update report");
                    if self.updates.report(&ticket.kid(), &report, unix_now()) {
                        // The offer ended (installed, refused or failed): stop carrying it, so
                        // a retry waits for the back-off.
                        self.link.set_offer(&ticket.kid(), None);
                    }
                    self.pending.answer(ticket);
                    self.replan = true;
                }
                HubEvent::BlockServed { kid, version, num, total } => {
                    kill_point!("firmware");
                    self.updates.block_served(&kid, version, num, total, unix_now());
                }
            }
        }
    }

    /// Applies the update manager's decisions to the link and queues its state for the next
    /// group commit.
    fn plan_updates(&mut self) {
        if std::mem::take(&mut self.replan) {
            for (kid, offer) in self.updates.plan(unix_now()) {
                match &offer {
                    Some(o) => {
                        tracing::info!(device = %kid, version = o.offer().version, "offering update")
                    }
                    None => tracing::info!(device = %kid, "update offer withdrawn"),
                }
                self.link.set_offer(&kid, offer);
            }
        }
        if let Some(doc) = self.updates.take_dirty() {
            self.pending.meta(META_KEY, doc);
        }
    }

    async fn transmit(&mut self) {
        while let Some(t) = self.link.poll_transmit() {
            match self.socket.try_send_to(&t.bytes, t.to) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let _ = self.socket.send_to(&t.bytes, t.to).await;
                }
                Err(e) => tracing::debug!(error = %e, to = %t.to, "send failed"),
            }
        }
    }
}
