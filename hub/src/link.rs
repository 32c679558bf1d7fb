//! The link driver: one task owns the CoAP/UDP socket and the sans-IO `HubLink` (sensors are
//! demultiplexed by OSCORE kid, not by address). Readings are validated, handed to the store
//! thread in group commits (one fsync per batch, one batch in flight), and acknowledged only
//! after their batch is durable — together with the replay windows that accepted them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::ResponseType;
use protocol::link::{AckTicket, HubEvent, HubLink, SecurityEvent};
use protocol::oscore::{Kid, Lease};
use protocol::senml::{self, Reading};
use protocol::time::{Millis, UnixTime};
use rand_chacha::ChaCha20Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{LinkCommand, PairingStatus, SecurityReport, Waiting};
use crate::config::Config;
use crate::store::{DeviceInfo, RedbStore, Store, Write};
use crate::updates::{META_KEY, Updates};

/// A group commit: what to write, and what to release once it is durable.
#[derive(Default)]
struct Batch {
    writes: Vec<Write>,
    readings: HashMap<Kid, Vec<Reading>>,
    acks: Vec<AckTicket>,
    rejects: Vec<(AckTicket, String)>,
    leases: Vec<(Kid, Lease)>,
    paired: Vec<Kid>,
    count: usize,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.readings.is_empty()
            && self.acks.is_empty()
            && self.rejects.is_empty()
            && self.paired.is_empty()
    }
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
    commit_tx: std::sync::mpsc::Sender<Batch>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    retry_at: Option<tokio::time::Instant>,
    failed: Option<Batch>,
    bad_payload: u64,
    updates: Updates,
    replan: bool,
}

impl Driver {
    pub(crate) fn new(
        updates: Updates,
        link: HubLink<SocketAddr>,
        socket: Arc<UdpSocket>,
        store: RedbStore,
        config: Config,
    ) -> Self {
        let (commit_tx, commit_rx) = std::sync::mpsc::channel::<Batch>();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let spawned = std::thread::Builder::new().name("hub-store".into()).spawn(move || {
            while let Ok(batch) = commit_rx.recv() {
                let started = Instant::now();
                let result = store.commit(&batch.writes);
                let ms = started.elapsed().as_millis();
                if ms > 50 {
                    tracing::warn!(ms, readings = batch.count, "slow group commit");
                }
                if done_tx.send(Done { batch, result }).is_err() {
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the store thread");
        }
        Self {
            link,
            socket,
            config,
            rng: crate::rng::os_seeded(),
            origin: Instant::now(),
            pending: Batch::default(),
            in_flight: false,
            commit_tx,
            done_rx,
            retry_at: None,
            failed: None,
            bad_payload: 0,
            updates,
            replan: true,
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
                Some(cmd) = commands.recv() => self.command(cmd),
                () = async { if let Some(t) = retry { tokio::time::sleep_until(t).await } else { std::future::pending().await } } => {
                    self.retry_at = None;
                    if let Some(batch) = self.failed.take() {
                        self.send_batch(batch);
                    }
                }
                _ = tick.tick() => self.replan = true,
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
                HubEvent::Reading { ticket, payload } => {
                    let now = unix_now();
                    match senml::decode(&payload.0, &senml::Limits::with_now(now), now) {
                        Ok(readings) => {
                            self.pending.count += readings.len();
                            self.pending.readings.entry(ticket.kid()).or_default().extend(readings);
                            self.pending.acks.push(ticket);
                        }
                        Err(e) => {
                            self.bad_payload += 1;
                            tracing::warn!(device = %ticket.kid(), error = %e, "reading refused");
                            // The refusal goes out after the window that accepted the request is
                            // durable, like an acknowledgement (one answer per request nonce).
                            self.pending.readings.entry(ticket.kid()).or_default();
                            self.pending.rejects.push((ticket, e.to_string()));
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
                    self.pending.writes.push(Write::Device { info, params });
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
                HubEvent::Security(e) => log_security(&e),
                // A report is acknowledged once it is durable (with the window that accepted it).
                HubEvent::Report { ticket, report } => {
                    tracing::info!(device = %ticket.kid(), version = report.version, running = report.running, outcome = ?report.outcome, reason = %report.reason, "update report");
                    self.updates.report(&ticket.kid(), &report, unix_now());
                    self.pending.readings.entry(ticket.kid()).or_default();
                    self.pending.acks.push(ticket);
                    self.replan = true;
                }
                HubEvent::BlockServed { kid, version, num, total } => {
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
                        tracing::info!(device = %kid, version = o.offer.version, "offering update")
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
        let mut batch = std::mem::take(&mut self.pending);
        // Each device's readings go with the replay window and usage that accepted them.
        for (kid, readings) in std::mem::take(&mut batch.readings) {
            let state = self.link.peer_state(&kid);
            let (window, usage) = state.map(|s| (s.window, s.usage)).unwrap_or_default();
            batch.writes.push(Write::Readings { kid, readings, window, usage });
        }
        self.send_batch(batch);
    }

    fn send_batch(&mut self, batch: Batch) {
        match self.commit_tx.send(batch) {
            Ok(()) => self.in_flight = true,
            Err(e) => {
                tracing::error!("store thread has stopped");
                self.failed = Some(e.0);
            }
        }
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
        for t in batch.acks {
            self.link.acknowledge(t);
        }
        for (t, why) in batch.rejects {
            self.link.reject(t, ResponseType::BadRequest, &why);
        }
        for (kid, lease) in batch.leases {
            self.link.lease_durable(&kid, lease);
        }
        let now = self.now();
        for kid in batch.paired {
            self.link.paired_durable(now, &kid);
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

    fn status(&self) -> PairingStatus {
        let now = self.now();
        let Some(w) = self.link.pairing_window() else { return PairingStatus::default() };
        let open = w.admit(now).is_ok();
        PairingStatus {
            open,
            closes_in_s: w.closes_at().0.saturating_sub(now.0) / 1000,
            attempts_left: w.attempts_left(),
            waiting: self
                .link
                .waiting_for_pin()
                .into_iter()
                .map(|(kid, d)| Waiting {
                    device: kid.to_string(),
                    serial: d.serial,
                    model: d.model,
                })
                .collect(),
        }
    }

    fn command(&mut self, cmd: LinkCommand) {
        let now = self.now();
        match cmd {
            LinkCommand::PairOpen { seconds, reply } => {
                self.link.open_pairing(now, self.config.window(seconds));
                tracing::info!(
                    seconds = seconds.unwrap_or(self.config.pairing.window_seconds),
                    "pairing window opened"
                );
                let _ = reply.send(self.status());
            }
            LinkCommand::PairClose { reply } => {
                self.link.close_pairing();
                let _ = reply.send(self.status());
            }
            LinkCommand::PairPin { pin, serial, device, reply } => {
                let kid = match (device, serial) {
                    (Some(k), _) => Some(k),
                    (None, Some(serial)) => {
                        match self
                            .link
                            .waiting_for_pin()
                            .into_iter()
                            .find(|(_, d)| d.serial == serial)
                        {
                            Some((k, _)) => Some(k),
                            None => {
                                let _ = reply.send(Err(format!(
                                    "no sensor with serial {serial} is waiting for a PIN"
                                )));
                                return;
                            }
                        }
                    }
                    (None, None) => None,
                };
                let result = self
                    .link
                    .enter_pin(now, kid, &pin)
                    .map(|k| k.to_string())
                    .map_err(|e| e.to_string());
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "PIN entry refused");
                }
                let _ = reply.send(result);
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
                    self.pending.writes.push(Write::Remove { kid });
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
                    .map_err(|e| e.to_string());
                self.replan = true;
                let _ = reply.send(r);
            }
            LinkCommand::Trust { model, key, reply } => {
                let _ = reply.send(self.updates.trust(&model, &key).map_err(|e| e.to_string()));
            }
            LinkCommand::UpdatePolicy { device, policy, reply } => {
                let r = self.updates.set_policy(device.as_ref(), policy).map_err(|e| e.to_string());
                self.replan = true;
                let _ = reply.send(r);
            }
            LinkCommand::UpdateApprove { device, model, version, reply } => {
                let r = self.updates.approve(device.as_ref(), model.as_deref(), version);
                self.replan = true;
                let _ = reply.send(r.map_err(|e| e.to_string()));
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
                let c = self.link.counters();
                let mut r = SecurityReport {
                    malformed: c.malformed,
                    unknown_kid: c.unknown_kid,
                    replays: c.replays,
                    bad_tag: c.bad_tag,
                    bad_oscore: c.bad_oscore,
                    bad_payload: self.bad_payload,
                    pairing_refused: c.pairing_refused,
                    pairing_failed: c.pairing_failed,
                    bad_request: c.bad_request,
                    key_limit: c.key_limit,
                    echo_limited: c.echo_limited,
                    duplicates: c.duplicates,
                    total: 0,
                };
                r.total = r.malformed
                    + r.unknown_kid
                    + r.replays
                    + r.bad_tag
                    + r.bad_oscore
                    + r.bad_payload
                    + r.pairing_refused
                    + r.pairing_failed
                    + r.bad_request
                    + r.key_limit;
                let _ = reply.send(r);
            }
        }
    }
}

fn log_security(e: &SecurityEvent) {
    match e {
        SecurityEvent::Replay { kid } => tracing::warn!(device = %kid, "replay refused"),
        SecurityEvent::BadTag { kid } => {
            tracing::warn!(device = %kid, "message failed authentication")
        }
        SecurityEvent::UnknownKid => tracing::warn!("OSCORE message for an unknown device"),
        SecurityEvent::Malformed(what) => tracing::debug!(what, "malformed input"),
        SecurityEvent::PairingRefused(why) => tracing::warn!(%why, "pairing request refused"),
        SecurityEvent::PairingFailed { kid, reason } => {
            tracing::warn!(session = %kid, %reason, "pairing attempt failed")
        }
        SecurityEvent::KeyLimit { kid } => {
            tracing::error!(device = %kid, "key usage limit reached: re-pair the device")
        }
    }
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
