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

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::ResponseType;
use protocol::link::{AckTicket, HubEvent, HubLink, PeerState, PinError, SecurityEvent};
use protocol::oscore::{Kid, Lease};
use protocol::senml::{self, Reading};
use protocol::time::{Millis, UnixTime};
use rand_chacha::ChaCha20Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{CommandError, LinkCommand, PairingStatus, SecurityReport, Waiting};
use crate::config::Config;
use crate::devices::{Directory, Isolation};
use crate::isolation::{Action, Advisories, Decision};
use crate::seclog::SecurityLog;
use crate::store::{DeviceInfo, HubStore, Store, Write};
use crate::updates::{META_KEY, Updates};

/// The answer to an isolated sensor's readings and requests.
const ISOLATED: &str = "isolated by the hub: see the hub's device list";

/// Key of the persisted security counters in the store's meta table.
pub(crate) const COUNTERS_KEY: &str = "security_counters";

/// A group commit: what to write, and what to release once it is durable.
#[derive(Default)]
struct Batch {
    writes: Vec<Write>,
    readings: HashMap<Kid, Vec<Reading>>,
    /// Devices whose checkpoint this batch persists.
    states: BTreeSet<Kid>,
    /// The checkpoints written (reported durable after the commit).
    checkpoints: Vec<(Kid, PeerState<SocketAddr>)>,
    acks: Vec<Ticket>,
    rejects: Vec<(Ticket, ResponseType, String)>,
    leases: Vec<(Kid, Lease)>,
    paired: Vec<Kid>,
    count: usize,
}

type Ticket = AckTicket<SocketAddr>;

impl Batch {
    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.readings.is_empty() && self.states.is_empty()
    }

    /// Answers `ticket` once this batch (with its device's checkpoint) is durable.
    fn answer(&mut self, ticket: Ticket) {
        self.states.insert(ticket.kid());
        self.acks.push(ticket);
    }
}

/// A PIN the owner typed, waiting for the attempt before it to end (one at a time).
struct PinEntry {
    pin: String,
    serial: Option<String>,
    device: Option<Kid>,
    replaces: Option<crate::device_id::DeviceId>,
    accept_risk: bool,
    reply: tokio::sync::oneshot::Sender<Result<Kid, CommandError>>,
}

struct Done {
    batch: Batch,
    result: Result<(), crate::store::StoreError>,
}

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
    persisted_counters: Option<SecurityReport>,
    pins: VecDeque<PinEntry>,
    /// The attempt being confirmed, and who waits for its outcome.
    pin_attempt: Option<(Kid, tokio::sync::oneshot::Sender<Result<Kid, CommandError>>)>,
    /// What people and the outgoing paths see of each device.
    directory: Directory,
    /// Security advisories and the actions taken.
    advisories: Advisories,
}

impl Driver {
    pub(crate) fn new(
        updates: Updates,
        mut link: HubLink<SocketAddr>,
        socket: Arc<UdpSocket>,
        store: HubStore,
        config: Config,
        directory: Directory,
        advisories: Advisories,
    ) -> Self {
        // Security counters survive restarts (EN 303 645 5.10-1); unreadable ones start at 0.
        let restored: Option<SecurityReport> =
            store.meta(COUNTERS_KEY).ok().flatten().and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(r) = &restored {
            link.restore_counters(r.link);
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
            bad_payload: restored.as_ref().map_or(0, |r| r.bad_payload),
            updates,
            replan: true,
            seclog: SecurityLog::default(),
            persisted_counters: restored,
            pins: VecDeque::new(),
            pin_attempt: None,
            directory,
            advisories,
        }
    }

    fn now(&self) -> Millis {
        Millis(self.origin.elapsed().as_millis() as u64 + 1)
    }

    /// Queues the security counters for the next commit if they changed (with every commit,
    /// every second and at shutdown): they are logged with the checkpoints of that commit, so a
    /// failure and its count are durable together (EN 303 645 5.10-1: a crash does not erase
    /// the record of an attack).
    fn persist_counters(&mut self) {
        let report = self.security_report();
        if self.persisted_counters.as_ref() == Some(&report) {
            return;
        }
        if let Ok(value) = serde_json::to_vec(&report) {
            self.pending
                .writes
                .retain(|w| !matches!(w, Write::LogMeta { key, .. } if key == COUNTERS_KEY));
            self.pending.writes.push(Write::LogMeta { key: COUNTERS_KEY.into(), value });
            self.persisted_counters = Some(report);
        }
    }

    /// Queues the device profiles (names, rooms, availability, isolation) for the next commit
    /// when they changed, or whole with last-seen times at shutdown.
    fn persist_directory(&mut self, shutdown: bool) {
        let doc =
            if shutdown { Some(self.directory.document()) } else { self.directory.take_dirty() };
        if let Some(value) = self.advisories.take_dirty() {
            let key = crate::isolation::META_KEY;
            self.pending.writes.retain(|w| !matches!(w, Write::Meta { key: k, .. } if k == key));
            self.pending.writes.push(Write::Meta { key: key.into(), value });
        }
        if let Some(value) = doc {
            let key = crate::devices::META_KEY;
            self.pending.writes.retain(|w| !matches!(w, Write::Meta { key: k, .. } if k == key));
            self.pending.writes.push(Write::Meta { key: key.into(), value });
        }
    }

    fn security_report(&self) -> SecurityReport {
        let link = self.link.counters();
        let total = link.security_total() + self.bad_payload;
        SecurityReport { link, bad_payload: self.bad_payload, total, ..Default::default() }
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
                Some(cmd) = commands.recv() => self.command(cmd),
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

    /// Lets the commit in flight and the pending batch finish, so nothing received is lost.
    async fn drain_on_shutdown(&mut self) {
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
            self.pending
                .writes
                .retain(|w| !matches!(w, Write::Meta { key, .. } if key == META_KEY));
            self.pending.writes.push(Write::Meta { key: META_KEY.into(), value: doc });
        }
    }

    fn maybe_commit(&mut self) {
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
    fn send_batch(&mut self, mut batch: Batch) {
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

    fn committed(&mut self, done: Done) {
        self.in_flight = false;
        let batch = done.batch;
        if let Err(e) = done.result {
            // Nothing is acknowledged; the same batch is retried (sensors keep retransmitting and
            // are answered from the retry's acknowledgements).
            tracing::error!(error = %e, "group commit failed; retrying in 1 s");
            self.failed = Some(batch);
            self.retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
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
        for w in &batch.writes {
            match w {
                Write::Device { info, .. } => {
                    self.directory.paired(info.clone(), now_ms);
                    self.apply_advisories(Some(&info.id));
                }
                Write::Readings { kid, readings } => {
                    self.directory.readings(&(*kid).into(), readings, now_ms);
                }
                _ => {}
            }
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

    /// Types the next queued PIN if no attempt is being confirmed (one attempt at a time: the
    /// window's failure count is always up to date before another PIN is tried).
    fn next_pin(&mut self) {
        while self.pin_attempt.is_none() && !self.link.pin_unresolved() {
            let Some(entry) = self.pins.pop_front() else { return };
            let now = self.now();
            let kid = match (entry.device, &entry.serial) {
                (Some(k), _) => Some(k),
                (None, Some(serial)) => {
                    let matches: Vec<Kid> = self
                        .link
                        .waiting_for_pin()
                        .into_iter()
                        .filter(|(_, d)| &d.serial == serial)
                        .map(|(k, _)| k)
                        .collect();
                    let why = match matches.as_slice() {
                        [k] => Ok(*k),
                        [] => Err(CommandError::NoSuchSerial(serial.clone())),
                        // A second sensor claims the same serial: someone may pose as it. The
                        // owner picks by device id (`hub ctl pair status`).
                        _ => Err(CommandError::AmbiguousSerial(serial.clone())),
                    };
                    match why {
                        Ok(k) => Some(k),
                        Err(why) => {
                            let _ = entry.reply.send(Err(why));
                            continue;
                        }
                    }
                }
                (None, None) => None,
            };
            // Before anything is tried: what the owner must know or decide (not attempts).
            if let Err(why) = self.pin_precheck(kid, entry.replaces.as_ref(), entry.accept_risk) {
                tracing::info!(error = %why, "PIN not tried");
                let _ = entry.reply.send(Err(why));
                continue;
            }
            match self.link.enter_pin(now, kid, &entry.pin) {
                Ok(kid) => self.pin_attempt = Some((kid, entry.reply)),
                Err(e) => {
                    if !matches!(e, PinError::Unresolved) {
                        tracing::warn!(error = %e, "PIN entry refused");
                    }
                    let why = match e {
                        PinError::Pairing(protocol::pairing::PairingError::BadPin(digits)) => {
                            CommandError::PinFormat { digits }
                        }
                        PinError::Pairing(reason) => self.failed_attempt(reason),
                        e => e.into(),
                    };
                    let _ = entry.reply.send(Err(why));
                }
            }
        }
    }

    /// The attempt for `kid` ended: tell whoever typed its PIN, and take the next PIN.
    fn pin_resolved(&mut self, kid: &Kid, outcome: Result<Kid, CommandError>) {
        if self.pin_attempt.as_ref().is_some_and(|(k, _)| k == kid)
            && let Some((_, reply)) = self.pin_attempt.take()
        {
            let _ = reply.send(outcome);
        }
        self.next_pin();
    }

    /// The window was closed or re-opened: PINs not yet typed are refused; an attempt the link
    /// dropped with its sessions ends (one already confirmed keeps waiting to be durable).
    fn pin_window_changed(&mut self, why: &'static str) {
        for entry in self.pins.drain(..) {
            let _ = entry.reply.send(Err(CommandError::WindowChanged(why)));
        }
        if !self.link.pin_unresolved()
            && let Some((_, reply)) = self.pin_attempt.take()
        {
            let _ = reply.send(Err(CommandError::WindowChanged(why)));
        }
    }

    /// A failed attempt, with what the window still allows (attempts left, pause).
    fn failed_attempt(&self, reason: protocol::pairing::PairingError) -> CommandError {
        let now = self.now();
        let (attempts_left, backoff_s) = self.link.pairing_window().map_or((0, 0), |w| {
            let backoff = match w.admit(now) {
                Err(protocol::pairing::PairingRefused::BackingOff { retry_at }) => {
                    retry_at.0.saturating_sub(now.0).div_ceil(1000)
                }
                _ => 0,
            };
            (w.attempts_left(), backoff)
        });
        CommandError::PairingFailed { reason, attempts_left, backoff_s }
    }

    /// What the owner must decide before a PIN is tried for the waiting sensor `kid` (`None`:
    /// the only one waiting): a serial paired already needs `--replaces`; a sensor past its
    /// support period or under a known advisory needs the owner's acceptance.
    fn pin_precheck(
        &self,
        kid: Option<Kid>,
        replaces: Option<&crate::device_id::DeviceId>,
        accept_risk: bool,
    ) -> Result<(), CommandError> {
        let waiting = self.link.waiting_for_pin();
        let found = match kid {
            Some(k) => waiting.iter().find(|(w, _)| *w == k),
            None if waiting.len() == 1 => waiting.first(),
            None => None,
        };
        let Some((_, d)) = found else { return Ok(()) }; // the link explains what is wrong
        if let Some((device, name)) = self.directory.by_serial(&d.serial)
            && replaces != Some(&device)
        {
            return Err(CommandError::SerialPaired { serial: d.serial.clone(), device, name });
        }
        match self.pairing_warning(d, replaces) {
            Some(warning) if !accept_risk => {
                Err(CommandError::NeedsAcceptance { serial: d.serial.clone(), warning })
            }
            _ => Ok(()),
        }
    }

    /// What the owner should know before pairing a sensor with this descriptor (TR 103 621
    /// 6.22/6.23, EN 303 645 5.3-13/14): under a known advisory (it will be isolated, or its
    /// fix installed), or past its support period.
    fn pairing_warning(
        &self,
        d: &protocol::pairing::Descriptor,
        replaces: Option<&crate::device_id::DeviceId>,
    ) -> Option<String> {
        let now = unix_now().0;
        let subject = crate::isolation::Subject {
            model: &d.model,
            installed: d.firmware_version,
            updatable: d.updatable,
            support_end: d.support_end.0,
        };
        let mut out = Vec::new();
        for a in self.advisories.records() {
            match crate::isolation::decide(subject, a, now) {
                Decision::Unaffected => {}
                Decision::ScheduleFix => out.push(format!(
                    "firmware {} is affected by advisory {} ({} severity: {}); the hub will \
                     install the fix right after pairing",
                    d.firmware_version, a.id, a.severity, a.text
                )),
                Decision::Isolate(reason) => {
                    let again = match replaces {
                        Some(old) => format!(
                            "it replaces {old} but is itself affected: it will be isolated again \
                             as soon as it pairs"
                        ),
                        None => "it will be isolated as soon as it pairs".to_owned(),
                    };
                    out.push(format!("{again}: {reason} (advisory {}: {})", a.id, a.text));
                }
            }
        }
        if out.is_empty() && d.support_end.0 <= now {
            out.push(format!(
                "its security-update support period ended on {}: the manufacturer no longer \
                 fixes its vulnerabilities",
                crate::render::local_date(d.support_end.0)
            ));
        }
        (!out.is_empty()).then(|| out.join("; "))
    }

    fn status(&self) -> PairingStatus {
        use crate::api::PairingState;
        use protocol::pairing::PairingRefused;
        let now = self.now();
        let Some(w) = self.link.pairing_window() else { return PairingStatus::default() };
        let admitted = w.admit(now);
        let (state, backoff_s) = match admitted {
            Ok(()) => (PairingState::Open, 0),
            Err(PairingRefused::BackingOff { retry_at }) => {
                (PairingState::BackingOff, retry_at.0.saturating_sub(now.0).div_ceil(1000))
            }
            Err(PairingRefused::TooManyFailures) => (PairingState::NoAttemptsLeft, 0),
            Err(_) => (PairingState::Closed, 0),
        };
        PairingStatus {
            confirming: self.pin_attempt.as_ref().map(|(k, _)| k.to_string()),
            pins_queued: self.pins.len(),
            open: admitted.is_ok(),
            state,
            backoff_s,
            closes_in_s: w.closes_at().0.saturating_sub(now.0) / 1000,
            attempts_left: w.attempts_left(),
            waiting: self
                .link
                .waiting_for_pin()
                .into_iter()
                .map(|(kid, d)| {
                    let paired = self.directory.by_serial(&d.serial).map(|(id, name)| {
                        format!(
                            "a device with this serial is already paired ({name}, id {id}): \
                             pair this one with `--replaces {id}` if it takes its place"
                        )
                    });
                    let warning = match (paired, self.pairing_warning(&d, None)) {
                        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                        (a, b) => a.or(b),
                    };
                    Waiting {
                        device: kid.to_string(),
                        firmware_version: d.firmware_version,
                        serial: d.serial,
                        model: d.model,
                        warning,
                    }
                })
                .collect(),
        }
    }

    fn command(&mut self, cmd: LinkCommand) {
        let now = self.now();
        match cmd {
            LinkCommand::PairOpen { seconds, reply } => {
                self.link.open_pairing(now, self.config.window(seconds));
                self.pin_window_changed("re-opened");
                tracing::info!(
                    seconds = seconds.unwrap_or(self.config.pairing.window_seconds),
                    "pairing window opened"
                );
                let _ = reply.send(self.status());
            }
            LinkCommand::PairClose { reply } => {
                self.link.close_pairing();
                self.pin_window_changed("closed");
                let _ = reply.send(self.status());
            }
            LinkCommand::PairPin { pin, serial, device, replaces, accept_risk, reply } => {
                self.pins.push_back(PinEntry { pin, serial, device, replaces, accept_risk, reply });
                self.next_pin();
            }
            LinkCommand::Pairing { reply } => {
                let _ = reply.send(self.status());
            }
            LinkCommand::Remove { kid, reply } => {
                let existed = self.link.remove_peer(&kid);
                if existed {
                    self.updates.forget(&kid);
                    tracing::info!(device = %kid, "device removed; erasing its keys and readings");
                    self.pending.readings.remove(&kid);
                    self.pending.states.remove(&kid);
                    self.pending.writes.push(Write::Remove { kid });
                    self.directory.removed(&kid.into());
                }
                let _ = reply.send(existed);
            }
            LinkCommand::Updates { reply } => {
                let _ = reply.send(self.updates.view(unix_now()));
            }
            LinkCommand::UpdateAdd { manifest, image, source, reply } => {
                let r = self
                    .updates
                    .add_release(manifest, image, source, unix_now())
                    .map_err(CommandError::from);
                self.replan = true;
                if r.is_ok() {
                    self.apply_advisories(None);
                }
                let _ = reply.send(r);
            }
            LinkCommand::Trust { model, key, reply } => {
                let _ = reply.send(self.updates.trust(&model, &key).map_err(CommandError::from));
            }
            LinkCommand::UpdatePolicy { device, policy, reply } => {
                let r =
                    self.updates.set_policy(device.as_ref(), policy).map_err(CommandError::from);
                self.replan = true;
                let _ = reply.send(r);
            }
            LinkCommand::UpdateApprove { device, model, version, reply } => {
                let r = self.updates.approve(device.as_ref(), model.as_deref(), version);
                self.replan = true;
                let _ = reply.send(r.map_err(CommandError::from));
            }
            LinkCommand::UpdateCancel { device, reply } => {
                let v = self.updates.cancel(&device, unix_now());
                self.link.set_offer(&device, None);
                self.replan = true;
                let _ = reply.send(v);
            }
            LinkCommand::UpdateRetry { device, reply } => {
                self.updates.retry_now(&device);
                self.replan = true;
                let _ = reply.send(());
            }
            LinkCommand::History { device, reply } => {
                let _ = reply.send(self.updates.history(&device));
            }
            LinkCommand::Security { reply } => {
                let _ = reply.send(self.security_report());
            }
            LinkCommand::Command { device, command, reply } => {
                let _ = reply.send(self.link.queue_command(&device, command));
            }
            LinkCommand::Advisory { signed, source, reply } => {
                let r = self.add_advisory(&signed, source);
                let _ = reply.send(r);
            }
            LinkCommand::Advisories { reply } => {
                let _ = reply.send(self.advisories.records().to_vec());
            }
            LinkCommand::Unisolate { device, reply } => {
                let r = self.directory.override_isolation(&device, unix_now_ms());
                if r.is_ok() {
                    tracing::warn!(%device, "the owner overrode the isolation of a vulnerable device; its data leaves the hub again");
                    self.persist_directory(false);
                }
                let _ = reply.send(r.map_err(CommandError::from));
            }
            LinkCommand::Replace { old, new, reply } => {
                let r = self.directory.replaceable(&old).map_err(CommandError::from);
                if r.is_ok() {
                    let kid = old.kid();
                    // The old sensor's keys and link state are erased; its readings stay as
                    // the new sensor's history (TR 103 621 6.23 example 1). Any device can be
                    // replaced: isolated, moved, broken.
                    self.link.remove_peer(&kid);
                    self.updates.forget(&kid);
                    self.pending.readings.remove(&kid);
                    self.pending.states.remove(&kid);
                    self.pending.writes.push(Write::Retire { kid });
                    self.directory.replace(&old, &new, unix_now_ms());
                    self.persist_directory(false);
                    tracing::info!(%old, %new, "device replaced; the old sensor's keys are erased");
                }
                let _ = reply.send(r);
            }
        }
    }

    /// Verifies a signed advisory like a manifest (trusted key for its model, EN 303 645
    /// 5.3-10) and acts on it.
    fn add_advisory(
        &mut self,
        signed: &[u8],
        source: &'static str,
    ) -> Result<crate::isolation::AdvisoryRecord, CommandError> {
        let now = unix_now();
        let verified = protocol::update::verify_advisory(signed, self.updates.anchors(), now)
            .map_err(crate::isolation::AdvisoryError::from)?;
        let index = self.advisories.add(&verified, source, now.0)?;
        tracing::warn!(advisory = %self.advisories.records()[index].summary(), source, "security advisory received");
        self.apply_advisories(None);
        Ok(self.advisories.records()[index].clone())
    }

    /// Decides for every paired device under every advisory (TR 103 621 6.23): the fix is
    /// approved for updatable devices in support, the others are isolated. Runs for every
    /// device when an advisory or a release arrives, and for `only` a device that paired.
    fn apply_advisories(&mut self, only: Option<&crate::device_id::DeviceId>) {
        if self.advisories.records().is_empty() {
            return;
        }
        let now = unix_now();
        let devices = match only {
            Some(id) => self.directory.get(id).into_iter().collect(),
            None => self.directory.list(),
        };
        for index in 0..self.advisories.records().len() {
            for d in &devices {
                let kid = d.info.id.kid();
                let subject = crate::isolation::Subject {
                    model: &d.info.model,
                    installed: self.updates.installed(&kid).unwrap_or(d.info.firmware_version),
                    updatable: d.info.updatable,
                    support_end: d.info.support_end,
                };
                let advisory = &self.advisories.records()[index];
                match crate::isolation::decide(subject, advisory, now.0) {
                    Decision::Unaffected => {}
                    Decision::ScheduleFix => {
                        let fix = advisory.fixed_in.unwrap_or(u32::MAX);
                        let version =
                            self.updates.newest_release(&d.info.model).filter(|v| *v >= fix);
                        if let Some(v) = version
                            && !self.updates.approved(&kid, &d.info.model, v)
                        {
                            // A security fix is installed even under a notify-only policy
                            // (the owner is told why, EN 303 645 5.3-11).
                            let _ = self.updates.approve(Some(&kid), None, v);
                            self.replan = true;
                            tracing::warn!(device = %d.info.id, version = v, "vulnerable device: security fix scheduled");
                        }
                        self.advisories.act(index, d.info.id, Action::FixScheduled { version });
                    }
                    Decision::Isolate(reason) => {
                        let isolation = Isolation {
                            reason: reason.clone(),
                            advisory: Some(advisory.summary()),
                            since: now.0,
                            replacement: crate::isolation::replacement_path(&d.info.id),
                            overridden_at: None,
                        };
                        if self.directory.isolate(&d.info.id, isolation, unix_now_ms()) {
                            tracing::warn!(device = %d.info.id, %reason, "vulnerable device isolated: its data and commands no longer leave the hub");
                            self.link.set_offer(&kid, None);
                        }
                        self.advisories.act(index, d.info.id, Action::Isolated { reason });
                    }
                }
            }
        }
        // Isolations reach the store with the next tick's profile document (within a second).
    }
}

/// Wall-clock time in Unix milliseconds (last seen, availability).
pub(crate) fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Wall-clock time for the protocol core's time-dependent checks.
pub(crate) fn unix_now() -> UnixTime {
    UnixTime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}
