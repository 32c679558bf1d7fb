//! A fleet of simulated sensors in one task: N sensors on a few UDP sockets, one deadline heap
//! (not a task per sensor), responses routed by token prefix, persisted flash, outage buffers
//! (`backlog`), pairing retries, and fault injection (loss, duplication, reordering, delay,
//! tampering, replay). Reproducible from a seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use protocol::link::SensorEvent;
use protocol::link::SensorLink;
use protocol::netsim::{Datagram, NetSim};
use protocol::oscore::{Kid, Lease, ReplayWindow, SecurityContext, SenderSequence};
use protocol::time::Millis;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod api;
mod audit;
mod backlog;
mod pairing;
mod persist;
mod update;

use api::Command;
pub use api::{FleetConfig, FleetError, FleetEvent, FleetHandle, FleetStatus, SimFaults, WhenBusy};
use audit::NonceAudit;

pub use update::CutPoint;

use crate::buffer::Buffer;
use crate::clock;
use crate::firmware::Slots;
use crate::flash::{Flash, FlashBatch, FlashRecord, StoredContext};
use crate::model::{self, Environment, Model};

struct Sensor {
    serial: String,
    model: Model,
    fw: update::Fw,
    link: SensorLink,
    env: Environment,
    display: Option<String>,
    kid: Option<Kid>,
    exported: bool,
    /// The next measurement's id (ids keep growing across restarts).
    next_id: u64,
    /// Measurements not acknowledged yet; the outage backlog.
    buffer: Buffer,
    /// Measurements per backlog pack (what fits in one datagram).
    per_pack: usize,
    /// When to retry pairing, after a refusal or failure.
    pair_retry: Option<Millis>,
    /// Pairing attempts since the last success (for the retry back-off).
    pair_attempts: u32,
    /// Common IV of the context, for the nonce audit.
    iv: Option<[u8; 13]>,
    next_measure: Option<Millis>,
    scheduled: Option<Millis>,
    stored: Option<StoredContext>,
    lease: u64,
    /// Paired, and the event waits until the context is in flash.
    announce: bool,
}

/// Offered load: `rate` readings/s from `start` until `until`, round-robin from `cursor`.
struct Offer {
    rate: f64,
    start: Instant,
    until: Millis,
    issued: u64,
    cursor: u32,
    when_busy: WhenBusy,
}

struct FleetTask {
    config: FleetConfig,
    rng: ChaCha20Rng,
    sensors: Vec<Sensor>,
    sockets: Vec<Arc<UdpSocket>>,
    heap: BinaryHeap<Reverse<(Millis, u32)>>,
    net: Option<NetSim<Endpoint>>,
    flash: Option<Arc<Flash>>,
    flash_tx: Option<std::sync::mpsc::Sender<FlashBatch>>,
    flash_done: mpsc::UnboundedReceiver<Vec<(u32, u64)>>,
    /// Sensors whose record the next flash write carries.
    pending_flash: Vec<u32>,
    /// Everything else the next flash write carries (slots, backlog, log).
    staged: FlashBatch,
    flash_busy: bool,
    events: Option<mpsc::UnboundedSender<FleetEvent>>,
    status: FleetStatus,
    latencies: Vec<u64>,
    offer: Option<Offer>,
    replays: Vec<(usize, Vec<u8>)>,
    audit: Option<NonceAudit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Hub(usize),
    Sensor(u32),
}

/// Starts a fleet task. Events go to `events` if given (drain it).
pub async fn spawn(
    config: FleetConfig,
    events: Option<mpsc::UnboundedSender<FleetEvent>>,
    shutdown: CancellationToken,
) -> Result<FleetHandle, FleetError> {
    let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
    let flash = match &config.flash {
        Some(path) => Some(Arc::new(Flash::open(path)?)),
        None => None,
    };
    let records: std::collections::HashMap<u32, FlashRecord> = match &flash {
        Some(f) => f.load_all()?.into_iter().collect(),
        None => Default::default(),
    };
    let mut measurements = match &flash {
        Some(f) => f.load_measurements()?,
        None => Default::default(),
    };
    let mut sensors = Vec::with_capacity(config.sensors as usize);
    for index in 0..config.sensors {
        let standard: Vec<Model> = Model::standard().collect();
        let models = if config.models.is_empty() { &standard[..] } else { &config.models[..] };
        let model = models[index as usize % models.len()];
        let rec = records.get(&index);
        let serial = rec.map_or_else(
            || format!("{}-{:05}", model::prefix(model), config.first_serial.saturating_add(index)),
            |r| r.serial.clone(),
        );
        let per_pack = backlog::per_pack(model, &serial);
        let stored =
            rec.and_then(|r| r.context.clone()).filter(|_| !rec.is_some_and(|r| r.exported));
        let lease = rec.map_or(0, |r| r.lease);
        let link = boot_link(&mut rng, stored.as_ref(), lease, &config, index);
        let held = measurements.remove(&index).unwrap_or_default();
        let next_id = held.next_id();
        let buffer = Buffer::restore(
            config.buffer,
            held.backlog,
            rec.map_or(0, |r| r.buffer_dropped),
            rec.map_or(0, |r| r.dropped_reported),
        );
        let mut s = Sensor {
            serial,
            model,
            fw: update::Fw::new(rec.map_or_else(|| Slots::factory(1), |r| r.slots.clone())),
            link,
            env: Environment::new(model),
            display: None,
            kid: None,
            exported: rec.is_some_and(|r| r.exported),
            next_id,
            buffer,
            per_pack,
            pair_retry: None,
            pair_attempts: 0,
            next_measure: None,
            scheduled: None,
            stored: rec.and_then(|r| r.context.clone()),
            iv: None,
            announce: false,
            lease: rec.map_or(0, |r| r.lease),
        };
        s.kid = s.link.context().map(SecurityContext::sender_id);
        if let (Some(f), true) =
            (&flash, s.fw.slots.as_ref().is_some_and(|sl| sl.download.is_some()))
        {
            s.fw.slot = f.read_slot(index)?;
        }
        sensors.push(s);
    }
    let bind: SocketAddr = if config.hub.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .map_err(|_| std::io::Error::other("bind"))?;
    let bind =
        if config.hub.ip().is_loopback() { SocketAddr::new(config.hub.ip(), 0) } else { bind };
    let bind = config.bind.unwrap_or(bind);
    let (dgram_tx, dgram_rx) = mpsc::channel::<(usize, Vec<u8>)>(8192);
    let mut sockets = Vec::new();
    for i in 0..config.sockets.max(1) {
        let at = if i == 0 { bind } else { SocketAddr::new(bind.ip(), 0) };
        let sock = Arc::new(crate::net::bind_udp(at)?);
        let (s, tx, stop) = (sock.clone(), dgram_tx.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                tokio::select! {
                    r = s.recv_from(&mut buf) => match r {
                        Ok((n, _)) => if tx.send((i, buf[..n].to_vec())).await.is_err() { return },
                        Err(_) => continue,
                    },
                    _ = stop.cancelled() => return,
                }
            }
        });
        sockets.push(sock);
    }
    let (flash_tx, flash_done) = persist::spawn_writer(flash.clone())?;
    let net = config.faults.active().then(|| NetSim::new(config.faults.net));
    let audit = config.audit_nonces.then(NonceAudit::default);
    for s in &mut sensors {
        s.iv = s.stored.as_ref().and_then(StoredContext::to_params).map(|p| p.common_iv());
    }
    let status = FleetStatus { sensors: config.sensors, ..Default::default() };
    let mut task = FleetTask {
        config,
        rng,
        sensors,
        sockets,
        heap: BinaryHeap::new(),
        net,
        flash,
        flash_tx,
        flash_done,
        pending_flash: Vec::new(),
        staged: FlashBatch::default(),
        flash_busy: false,
        events,
        status,
        latencies: Vec::new(),
        offer: None,
        replays: Vec::new(),
        audit,
    };
    let now = clock::now();
    for i in 0..task.sensors.len() as u32 {
        if task.sensors[i as usize].link.is_paired() {
            task.start_reporting(i, now);
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move { task.run(rx, dgram_rx, shutdown).await });
    Ok(FleetHandle { tx })
}

impl FleetTask {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut datagrams: mpsc::Receiver<(usize, Vec<u8>)>,
        shutdown: CancellationToken,
    ) {
        loop {
            let deadline = self.next_deadline();
            let sleep = tokio::time::sleep_until(clock::instant(deadline).into());
            tokio::select! {
                Some((sock, bytes)) = datagrams.recv() => {
                    self.inbound(sock, bytes);
                    // Take whatever else is already waiting before doing timers.
                    for _ in 0..256 {
                        match datagrams.try_recv() {
                            Ok((sock, bytes)) => self.inbound(sock, bytes),
                            Err(_) => break,
                        }
                    }
                }
                Some(cmd) = commands.recv() => match cmd {
                    Command::Shutdown { reply } => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    cmd => self.command(cmd),
                },
                Some(ids) = self.flash_done.recv() => self.flash_durable(ids),
                _ = sleep => {}
                _ = shutdown.cancelled() => return,
            }
            self.fire_timers();
            self.flush_flash();
        }
    }

    fn next_deadline(&self) -> Millis {
        let mut t = clock::now().plus(1000);
        if let Some(Reverse((at, _))) = self.heap.peek() {
            t = t.min(*at);
        }
        if let Some(at) = self.net.as_ref().and_then(NetSim::next_arrival) {
            t = t.min(at);
        }
        if self.offer.is_some() {
            t = t.min(clock::now().plus(1));
        }
        t
    }

    fn inbound(&mut self, sock: usize, bytes: Vec<u8>) {
        self.status.received += 1;
        let Some(index) = token_of(&bytes).and_then(SensorLink::token_owner) else { return };
        if index as usize >= self.sensors.len() {
            return;
        }
        match &mut self.net {
            Some(net) => {
                let d = Datagram { from: Endpoint::Hub(sock), to: Endpoint::Sensor(index), bytes };
                net.send(clock::now(), &mut self.rng, d);
            }
            None => self.deliver(index, &bytes),
        }
    }

    fn deliver(&mut self, index: u32, bytes: &[u8]) {
        let now = clock::now();
        if let Some(a) = &mut self.audit {
            a.record(&mut self.status, &self.sensors[index as usize], bytes, true);
        }
        let s = &mut self.sensors[index as usize];
        s.link.handle_datagram(now, bytes, &mut self.rng);
        self.service(index);
    }

    fn command(&mut self, cmd: Command) {
        let now = clock::now();
        match cmd {
            Command::Pair { index } => self.start_pairing(index, now),
            Command::Display { index, reply } => {
                let _ =
                    reply.send(self.sensors.get(index as usize).and_then(|s| s.display.clone()));
            }
            Command::Measure { index } => self.measure(index),
            Command::Offer { rate, until, when_busy } => {
                self.offer = (rate > 0.0).then(|| Offer {
                    rate,
                    start: Instant::now(),
                    until,
                    issued: 0,
                    cursor: 0,
                    when_busy,
                });
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Unpaired { reply } => {
                let v = (0..self.sensors.len() as u32)
                    .filter(|&i| !self.sensors[i as usize].link.is_paired())
                    .collect();
                let _ = reply.send(v);
            }
            Command::Latencies { reply } => {
                let _ = reply.send(std::mem::take(&mut self.latencies));
            }
            Command::PowerCut { index } => self.power_cut(index),
            Command::CutPowerAt { index, at } => {
                if let Some(s) = self.sensors.get_mut(index as usize) {
                    s.fw.cut = Some(at);
                }
            }
            Command::Running { reply } => {
                let _ = reply.send(self.sensors.iter().map(|s| s.fw.running()).collect());
            }
            // Handled by `run`, which must await the flash.
            Command::Shutdown { reply } => drop(reply),
        }
    }

    fn status(&self) -> FleetStatus {
        let mut st = self.status.clone();
        let paired = || self.sensors.iter().filter(|s| s.link.is_paired());
        st.paired = paired().count() as u32;
        st.queued = self.sensors.iter().map(|s| s.buffer.len() as u64).sum();
        st.offline = paired().filter(|s| s.buffer.is_offline()).count() as u32;
        st.draining = paired().filter(|s| s.buffer.is_draining()).count() as u32;
        st.backlog = self.sensors.iter().map(|s| s.buffer.backlog() as u64).sum();
        st.backlog_min = paired().map(|s| s.buffer.backlog() as u64).min().unwrap_or(0);
        st.buffer_dropped = self.sensors.iter().map(|s| s.buffer.dropped()).sum();
        st
    }

    fn power_cut(&mut self, index: u32) {
        let Some(s) = self.sensors.get_mut(index as usize) else { return };
        let stored = s.stored.as_ref().filter(|_| !s.exported);
        s.link = boot_link(&mut self.rng, stored, s.lease, &self.config, index);
        s.buffer.power_cut();
        s.display = None;
        // RAM is gone; flash keeps the slots and the inactive slot's blocks.
        let slots = s.fw.slots.take();
        let slot = std::mem::take(&mut s.fw.slot);
        let received = std::mem::take(&mut s.fw.received);
        s.fw = update::Fw::new(slots.unwrap_or_else(|| Slots::factory(1)));
        s.fw.slot = slot;
        s.fw.received = received;
        self.boot_after_power_cut(index, clock::now());
        self.service(index);
    }

    fn start_reporting(&mut self, index: u32, now: Millis) {
        let interval = self.config.report_interval_ms;
        if interval == 0 {
            return;
        }
        let offset = self.rng.next_u64() % interval;
        if let Some(s) = self.sensors.get_mut(index as usize) {
            s.next_measure = Some(now.plus(offset + 1));
        }
        self.schedule(index);
    }

    /// Moves a sensor's outputs to the network and its events to the owner; reschedules it.
    fn service(&mut self, index: u32) {
        let now = clock::now();
        let i = index as usize;
        // Events can make the sensor send (e.g. the next image block): repeat until both are empty.
        loop {
            self.check_buffer(index, now);
            self.feed(index, now);
            let mut busy = false;
            while let Some(bytes) = self.sensors[i].link.poll_transmit() {
                busy = true;
                self.outbound(index, bytes);
            }
            while let Some(e) = self.sensors[i].link.poll_event() {
                busy = true;
                self.on_event(index, e, now);
            }
            if !busy {
                break;
            }
        }
        self.schedule(index);
    }

    fn on_event(&mut self, index: u32, e: SensorEvent, now: Millis) {
        let i = index as usize;
        match e {
            SensorEvent::ShowPin(pin) => {
                let pin = pin.to_string();
                self.sensors[i].display = Some(pin.clone());
                let serial = self.sensors[i].serial.clone();
                self.emit(FleetEvent::PinShown { index, serial, pin });
            }
            SensorEvent::Paired(p) => {
                let s = &mut self.sensors[i];
                s.display = None;
                s.kid = Some(p.context.sender_id);
                s.stored = Some(StoredContext::from_params(&p.context));
                s.iv = Some(p.context.common_iv());
                s.lease = 0;
                s.exported = false;
                s.pair_attempts = 0;
                s.pair_retry = None;
                let (serial, kid) = (s.serial.clone(), p.context.sender_id);
                if self.flash.is_some() {
                    // Announced once the context is durable in flash.
                    s.announce = true;
                    self.pending_flash.push(index);
                } else {
                    self.emit(FleetEvent::Paired { index, serial, kid });
                }
                self.start_reporting(index, now);
            }
            SensorEvent::Renewed(params) => {
                let s = &mut self.sensors[i];
                s.stored = Some(StoredContext::from_params(&params));
                s.iv = Some(params.common_iv());
                if self.flash.is_some() {
                    self.pending_flash.push(index);
                }
                self.emit(FleetEvent::Renewed { index, renewed: params.id_context.is_some() });
            }
            SensorEvent::PairingFailed(e) => {
                self.sensors[i].display = None;
                self.emit(FleetEvent::PairingFailed { index, reason: e.to_string() });
                self.schedule_pair_retry(index, now);
            }
            SensorEvent::PairingRefused(reason) => {
                self.sensors[i].display = None;
                self.emit(FleetEvent::PairingFailed { index, reason });
                self.schedule_pair_retry(index, now);
            }
            SensorEvent::Delivered(pack) => self.on_answer(index, pack, true, now),
            SensorEvent::Refused(pack) => self.on_answer(index, pack, false, now),
            SensorEvent::LeaseNeeded(lease) => {
                self.sensors[i].lease = lease.0;
                if self.flash.is_some() {
                    self.pending_flash.push(index);
                } else {
                    self.sensors[i].link.lease_durable(now, &mut self.rng, lease);
                }
            }
            SensorEvent::LinkError(_) => {}
            SensorEvent::Command(c) => {
                let s = &mut self.sensors[i];
                let applied = s.env.apply(c.setting, c.value);
                let (setting, value) = (c.setting, c.value);
                self.emit(FleetEvent::Command { index, setting, value, applied });
            }
            e @ (SensorEvent::UpdateOffered(_)
            | SensorEvent::Manifest { .. }
            | SensorEvent::Block { .. }
            | SensorEvent::FirmwareRefused { .. }
            | SensorEvent::ReportDelivered { .. }) => self.on_firmware(index, e, now),
        }
    }

    fn emit(&self, e: FleetEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    fn schedule(&mut self, index: u32) {
        let now = clock::now();
        let s = &mut self.sensors[index as usize];
        let buffer = s.buffer.poll_timeout(s.link.last_answer()).filter(|t| *t > now);
        let next = [s.link.poll_timeout(), s.next_measure, buffer, s.pair_retry]
            .into_iter()
            .flatten()
            .min();
        if let Some(t) = next
            && s.scheduled.is_none_or(|cur| t < cur)
        {
            s.scheduled = Some(t);
            self.heap.push(Reverse((t, index)));
        }
    }

    fn fire_timers(&mut self) {
        let now = clock::now();
        while let Some(Reverse((t, index))) = self.heap.peek().copied() {
            if t > now {
                break;
            }
            self.heap.pop();
            let s = &mut self.sensors[index as usize];
            if s.scheduled != Some(t) {
                continue; // superseded
            }
            s.scheduled = None;
            if s.link.poll_timeout().is_some_and(|d| d <= now) {
                s.link.handle_timeout(now, &mut self.rng);
            }
            if s.next_measure.is_some_and(|d| d <= now) {
                let interval = self.config.report_interval_ms;
                s.next_measure = (interval > 0).then(|| now.plus(interval));
                self.measure(index);
            }
            let s = &mut self.sensors[index as usize];
            if s.pair_retry.is_some_and(|d| d <= now) {
                s.pair_retry = None;
                self.start_pairing(index, now);
            }
            self.service(index);
        }
        self.offer_load(now);
        let mut due = Vec::new();
        if let Some(net) = &mut self.net {
            while let Some(d) = net.pop_due(now) {
                due.push(d);
            }
        }
        for d in due {
            match d.to {
                Endpoint::Sensor(index) => self.deliver(index, &d.bytes),
                Endpoint::Hub(sock) => self.send_now(sock, d.bytes),
            }
        }
    }

    /// Issues every reading the offered rate calls for by now (the loop wakes every ms).
    fn offer_load(&mut self, now: Millis) {
        let Some(offer) = &mut self.offer else { return };
        if now >= offer.until {
            self.offer = None;
            return;
        }
        let target = (offer.start.elapsed().as_secs_f64() * offer.rate) as u64;
        let due = target.saturating_sub(offer.issued).min(offer.rate as u64 / 10 + 1);
        offer.issued += due;
        let n = self.sensors.len() as u32;
        let mut cursor = offer.cursor;
        let drop_busy = offer.when_busy == WhenBusy::Drop;
        for _ in 0..due {
            // Round-robin over paired sensors.
            for _ in 0..n {
                cursor = (cursor + 1) % n;
                if self.sensors[cursor as usize].link.is_paired() {
                    break;
                }
            }
            let s = &self.sensors[cursor as usize];
            if drop_busy && (!s.buffer.is_empty() || s.link.queued() > 0) {
                self.status.offers_dropped += 1;
                continue;
            }
            self.measure(cursor);
        }
        if let Some(o) = &mut self.offer {
            o.cursor = cursor;
        }
    }

    fn outbound(&mut self, index: u32, bytes: Vec<u8>) {
        if let Some(a) = &mut self.audit {
            a.record(&mut self.status, &self.sensors[index as usize], &bytes, false);
        }
        let sock = index as usize % self.sockets.len();
        self.status.sent += 1;
        let f = self.config.faults;
        if chance(&mut self.rng, f.tamper) && !bytes.is_empty() {
            let mut t = bytes.clone();
            let at = (self.rng.next_u64() % t.len() as u64) as usize;
            t[at] ^= 1 << (self.rng.next_u32() % 8);
            self.send_via_net(index, sock, t);
        }
        if chance(&mut self.rng, f.replay) {
            self.replays.push((sock, bytes.clone()));
        }
        if self.replays.len() > 16 || (!self.replays.is_empty() && chance(&mut self.rng, 0.05)) {
            let (s, r) = self.replays.remove(0);
            self.send_via_net(index, s, r);
        }
        self.send_via_net(index, sock, bytes);
    }

    fn send_via_net(&mut self, index: u32, sock: usize, bytes: Vec<u8>) {
        match &mut self.net {
            Some(net) => {
                let d = Datagram { from: Endpoint::Sensor(index), to: Endpoint::Hub(sock), bytes };
                net.send(clock::now(), &mut self.rng, d);
            }
            None => self.send_now(sock, bytes),
        }
    }

    fn send_now(&mut self, sock: usize, bytes: Vec<u8>) {
        let Some(s) = self.sockets.get(sock) else { return };
        // Loopback sends rarely block; a full buffer is packet loss, which CoAP retransmission
        // handles like any other.
        let _ = s.try_send_to(&bytes, self.config.hub);
    }
}

/// A sensor's link as it boots from flash: paired, with its sequence resumed above the last
/// durable lease (RFC 8613 B.1.1), or unpaired. Tokens carry the sensor's index for routing.
fn boot_link<R: rand_core::CryptoRng + ?Sized>(
    rng: &mut R,
    stored: Option<&StoredContext>,
    lease: u64,
    config: &FleetConfig,
    index: u32,
) -> SensorLink {
    let block = config.lease_block;
    let link = match stored.and_then(StoredContext::to_params) {
        Some(params) => {
            let seq = SenderSequence::resume(Lease(lease), block);
            SensorLink::paired(rng, SecurityContext::new(&params, seq, ReplayWindow::Empty))
        }
        None => SensorLink::unpaired(rng),
    };
    link.with_lease_block(block).with_token_prefix(index).with_max_backoff(config.probe_max_ms)
}

fn chance<R: Rng + ?Sized>(rng: &mut R, p: f64) -> bool {
    p > 0.0 && (rng.next_u64() as f64 / u64::MAX as f64) < p
}

/// The token of a CoAP datagram, read straight from the header.
fn token_of(bytes: &[u8]) -> Option<&[u8]> {
    let tkl = usize::from(*bytes.first()? & 0x0f);
    bytes.get(4..4 + tkl)
}
