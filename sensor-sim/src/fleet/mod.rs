//! A fleet of simulated sensors in one task: N sensors on a few UDP sockets, one deadline heap
//! (not a task per sensor), responses routed by token prefix, persisted flash, and fault
//! injection (loss, duplication, reordering, delay, tampering, replay). Reproducible from a seed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
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
mod update;

use api::Command;
pub use api::{FleetConfig, FleetError, FleetEvent, FleetHandle, FleetStatus, SimFaults};
use audit::NonceAudit;

pub use update::CutPoint;

use crate::clock;
use crate::firmware::Slots;
use crate::flash::{Flash, FlashBatch, FlashRecord, StoredContext};
use crate::model::{Environment, ModelKind};

struct Sensor {
    serial: String,
    model: ModelKind,
    fw: update::Fw,
    link: SensorLink,
    env: Environment,
    display: Option<String>,
    kid: Option<Kid>,
    exported: bool,
    next_id: u64,
    /// Queued readings (id, measured at, SenML time), oldest first (delivered in order).
    queued_at: VecDeque<(u64, Instant, i64)>,
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
    pending_flash: Vec<u32>,
    flash_erase: Vec<u32>,
    flash_blocks: Vec<(u32, u32, Vec<u8>)>,
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
    let mut sensors = Vec::with_capacity(config.sensors as usize);
    for index in 0..config.sensors {
        let models =
            if config.models.is_empty() { &ModelKind::ALL[..] } else { &config.models[..] };
        let model = models[index as usize % models.len()];
        let rec = records.get(&index);
        let serial =
            rec.map_or_else(|| format!("{}-{:05}", model.prefix(), index), |r| r.serial.clone());
        let stored =
            rec.and_then(|r| r.context.clone()).filter(|_| !rec.is_some_and(|r| r.exported));
        let lease = rec.map_or(0, |r| r.lease);
        let link = boot_link(&mut rng, stored.as_ref(), lease, config.lease_block, index);
        let mut s = Sensor {
            serial,
            model,
            fw: update::Fw::new(rec.map_or_else(|| Slots::factory(1), |r| r.slots.clone())),
            link,
            env: Environment::default(),
            display: None,
            kid: None,
            exported: rec.is_some_and(|r| r.exported),
            next_id: 0,
            queued_at: VecDeque::new(),
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
    let (dgram_tx, dgram_rx) = mpsc::channel::<(usize, Vec<u8>)>(8192);
    let mut sockets = Vec::new();
    for i in 0..config.sockets.max(1) {
        let sock = Arc::new(crate::net::bind_udp(bind)?);
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
    let (flash_done_tx, flash_done) = mpsc::unbounded_channel();
    let flash_tx = flash.clone().map(|f| {
        let (tx, rx) = std::sync::mpsc::channel::<FlashBatch>();
        std::thread::Builder::new()
            .name("sim-flash".into())
            .spawn(move || {
                while let Ok(batch) = rx.recv() {
                    let written = batch.records.iter().map(|(i, r)| (*i, r.lease)).collect();
                    if let Err(e) = f.write_batch(&batch) {
                        tracing::error!(error = %e, "flash write failed");
                        continue;
                    }
                    if flash_done_tx.send(written).is_err() {
                        return;
                    }
                }
            })
            .map(|_| tx)
    });
    let flash_tx = match flash_tx {
        Some(Ok(tx)) => Some(tx),
        Some(Err(e)) => return Err(e.into()),
        None => None,
    };
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
        flash_erase: Vec::new(),
        flash_blocks: Vec::new(),
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
                Some(cmd) = commands.recv() => self.command(cmd),
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
            Command::Pair { index } => {
                let Some(s) = self.sensors.get_mut(index as usize) else { return };
                if s.link.is_paired() {
                    return;
                }
                let descriptor = s.model.descriptor(&s.serial, s.fw.running());
                s.link = boot_link(&mut self.rng, None, 0, self.config.lease_block, index);
                s.kid = None;
                s.link.start_pairing(now, &mut self.rng, descriptor, s.model.width());
                self.service(index);
            }
            Command::Display { index, reply } => {
                let _ =
                    reply.send(self.sensors.get(index as usize).and_then(|s| s.display.clone()));
            }
            Command::Measure { index } => self.measure(index, now),
            Command::Offer { rate, until } => {
                self.offer = (rate > 0.0).then(|| Offer {
                    rate,
                    start: Instant::now(),
                    until,
                    issued: 0,
                    cursor: 0,
                });
            }
            Command::Status { reply } => {
                self.status.paired =
                    self.sensors.iter().filter(|s| s.link.is_paired()).count() as u32;
                self.status.queued = self.sensors.iter().map(|s| s.link.queued() as u64).sum();
                let _ = reply.send(self.status.clone());
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
        }
    }

    fn power_cut(&mut self, index: u32) {
        let block = self.config.lease_block;
        let Some(s) = self.sensors.get_mut(index as usize) else { return };
        let stored = s.stored.as_ref().filter(|_| !s.exported);
        s.link = boot_link(&mut self.rng, stored, s.lease, block, index);
        s.queued_at.clear();
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

    fn measure(&mut self, index: u32, now: Millis) {
        let Some(s) = self.sensors.get_mut(index as usize) else { return };
        if !s.link.is_paired() {
            return;
        }
        let time_ms = clock::unix_millis();
        let readings = s.env.measure(s.model, &s.serial, &mut self.rng, time_ms);
        let payload = protocol::senml::encode(&readings);
        let id = s.next_id;
        s.next_id += 1;
        s.queued_at.push_back((id, Instant::now(), time_ms));
        s.link.queue_reading(now, &mut self.rng, id, payload);
        self.status.offered += 1;
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
            SensorEvent::PairingFailed(_) | SensorEvent::PairingRefused => {
                self.sensors[i].display = None;
                self.emit(FleetEvent::PairingFailed { index });
            }
            SensorEvent::Delivered(id) => {
                self.status.acknowledged += 1;
                while let Some((qid, at, time_ms)) = self.sensors[i].queued_at.front().copied() {
                    if qid > id {
                        break;
                    }
                    self.sensors[i].queued_at.pop_front();
                    if qid == id {
                        let latency_us = at.elapsed().as_micros() as u64;
                        self.latencies.push(latency_us);
                        let kid = self.sensors[i].kid;
                        self.emit(FleetEvent::Delivered { index, kid, id, time_ms, latency_us });
                    }
                }
            }
            SensorEvent::Refused(_) => {
                self.status.refused += 1;
                self.sensors[i].queued_at.pop_front();
                self.emit(FleetEvent::Refused { index });
            }
            SensorEvent::LeaseNeeded(lease) => {
                self.sensors[i].lease = lease.0;
                if self.flash.is_some() {
                    self.pending_flash.push(index);
                } else {
                    self.sensors[i].link.lease_durable(now, &mut self.rng, lease);
                }
            }
            SensorEvent::LinkError(_) => {}
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
        let s = &mut self.sensors[index as usize];
        let next = [s.link.poll_timeout(), s.next_measure].into_iter().flatten().min();
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
                self.measure(index, now);
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
        for _ in 0..due {
            // Round-robin over paired sensors.
            for _ in 0..n {
                cursor = (cursor + 1) % n;
                if self.sensors[cursor as usize].link.is_paired() {
                    break;
                }
            }
            self.measure(cursor, now);
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

    fn flush_flash(&mut self) {
        let idle = self.pending_flash.is_empty()
            && self.flash_erase.is_empty()
            && self.flash_blocks.is_empty();
        if self.flash_busy || idle {
            return;
        }
        let Some(tx) = &self.flash_tx else {
            // No flash file: RAM is the flash.
            self.flash_erase.clear();
            self.flash_blocks.clear();
            return;
        };
        let mut ids = std::mem::take(&mut self.pending_flash);
        ids.sort_unstable();
        ids.dedup();
        let records: Vec<(u32, FlashRecord)> = ids
            .iter()
            .map(|&i| {
                let s = &self.sensors[i as usize];
                (
                    i,
                    FlashRecord {
                        serial: s.serial.clone(),
                        model: s.model,
                        slots: s.fw.slots.clone().unwrap_or_else(|| Slots::factory(1)),
                        context: s.stored.clone(),
                        lease: s.lease,
                        exported: s.exported,
                    },
                )
            })
            .collect();
        let batch = FlashBatch {
            records,
            erase: std::mem::take(&mut self.flash_erase),
            blocks: std::mem::take(&mut self.flash_blocks),
        };
        if tx.send(batch).is_ok() {
            self.flash_busy = true;
        }
    }

    /// A flash write finished: the leases it carried (not any newer ones) are now durable.
    fn flash_durable(&mut self, written: Vec<(u32, u64)>) {
        self.flash_busy = false;
        let now = clock::now();
        for (index, lease) in written {
            let s = &mut self.sensors[index as usize];
            if std::mem::take(&mut s.announce)
                && let Some(kid) = s.kid
            {
                let serial = s.serial.clone();
                self.emit(FleetEvent::Paired { index, serial, kid });
            }
            let s = &mut self.sensors[index as usize];
            s.link.lease_durable(now, &mut self.rng, Lease(lease));
            self.service(index);
        }
        self.flush_flash();
    }
}

/// A sensor's link as it boots from flash: paired, with its sequence resumed above the last
/// durable lease (RFC 8613 B.1.1), or unpaired. Tokens carry the sensor's index for routing.
fn boot_link<R: rand_core::CryptoRng + ?Sized>(
    rng: &mut R,
    stored: Option<&StoredContext>,
    lease: u64,
    block: u64,
    index: u32,
) -> SensorLink {
    let link = match stored.and_then(StoredContext::to_params) {
        Some(params) => {
            let seq = SenderSequence::resume(Lease(lease), block);
            SensorLink::paired(rng, SecurityContext::new(&params, seq, ReplayWindow::Empty))
        }
        None => SensorLink::unpaired(rng),
    };
    link.with_lease_block(block).with_token_prefix(index)
}

fn chance<R: Rng + ?Sized>(rng: &mut R, p: f64) -> bool {
    p > 0.0 && (rng.next_u64() as f64 / u64::MAX as f64) < p
}

/// The token of a CoAP datagram, read straight from the header.
fn token_of(bytes: &[u8]) -> Option<&[u8]> {
    let tkl = usize::from(*bytes.first()? & 0x0f);
    bytes.get(4..4 + tkl)
}
