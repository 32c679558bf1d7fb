//! Two-party harness: a hub side and sensor sides driven by a virtual clock over a seeded lossy,
//! duplicating, reordering network (`protocol::netsim`). Both sides are the real sans-IO link
//! endpoints; the harness plays their I/O shells: it "persists" leases and readings (with a
//! group-commit delay), plays the owner typing PINs, and records every nonce put on the wire.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use coap_lite::{CoapOption, Packet};
use protocol::link::{
    AckTicket, Endpoint, HubConfig, HubEvent, HubLink, PeerState, SecurityEvent, SensorEvent,
    SensorLink,
};
use protocol::netsim::{Datagram, Faults, NetSim};
use protocol::oscore::{
    ContextParams, Kid, Lease, OscoreOption, Piv, ReplayWindow, SecurityContext, SenderSequence,
    nonce,
};
use protocol::pairing::{Descriptor, MaskWidth, Pin, WindowConfig};
use protocol::time::{Millis, UnixTime};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Hub,
    Sensor(usize),
    Attacker,
    /// Another source port on the attacker's host.
    AttackerPort(u16),
}

impl Endpoint for Node {
    type Host = Node;
    fn host(&self) -> Node {
        match self {
            Node::AttackerPort(_) => Node::Attacker,
            n => *n,
        }
    }
    fn write_id(&self, out: &mut Vec<u8>) {
        match self {
            Node::Hub => out.push(0),
            Node::Sensor(i) => {
                out.push(1);
                out.extend_from_slice(&(*i as u64).to_be_bytes());
            }
            Node::Attacker => out.push(2),
            Node::AttackerPort(p) => {
                out.push(3);
                out.extend_from_slice(&p.to_be_bytes());
            }
        }
    }
}

/// What a sensor keeps in flash across power cuts.
#[derive(Debug, Default, Clone)]
pub struct Flash {
    pub params: Option<ContextParams>,
    pub lease: Option<Lease>,
}

pub struct SensorSide {
    pub link: SensorLink,
    /// A lease being written to flash, durable at the given time (a power cut loses it).
    pub writing: Option<(Lease, Millis)>,
    pub flash: Flash,
    pub pin: Option<Pin>,
    pub delivered: Vec<u64>,
    pub paired: bool,
    pub failed: u32,
    /// Firmware events, for the test to act on.
    pub firmware: Vec<SensorEvent>,
}

pub struct HubSide {
    pub link: HubLink<Node>,
    /// The hub's store: readings by (kid, id) → how many times stored.
    pub stored: BTreeMap<(Kid, u64), u32>,
    pub leases: HashMap<Kid, Lease>,
    pub contexts: HashMap<Kid, ContextParams>,
    pub windows: HashMap<Kid, ReplayWindow>,
    /// Durable checkpoints (window, usage ceilings, endpoint) by device.
    pub states: HashMap<Kid, PeerState<Node>>,
    pub uncommitted: Vec<(AckTicket<Node>, u64)>,
    /// Other requests (firmware, unknown paths) waiting for the commit.
    pub uncommitted_requests: Vec<AckTicket<Node>>,
    /// Devices whose checkpoint the next commit persists.
    pub dirty: BTreeSet<Kid>,
    /// Sensors whose PIN the owner will type, one attempt at a time.
    pub pin_queue: VecDeque<Kid>,
    pub commit_at: Option<Millis>,
    pub commit_delay_ms: u64,
    /// The owner types the PIN shown on the sensor's display (or this wrong one).
    pub typo: Option<String>,
    /// Update reports received, and their tickets awaiting the commit.
    pub reports: Vec<(Kid, protocol::link::fw::UpdateReport)>,
    pub uncommitted_reports: Vec<AckTicket<Node>>,
    /// Image blocks served, by (device, block number).
    pub blocks_served: BTreeMap<(Kid, u32), u32>,
}

/// An AES-CCM-16-64-128 nonce.
type Nonce13 = [u8; 13];
/// An ID Context (none: the paired context).
type IdContext = Option<Vec<u8>>;

/// Every (sender key, nonce) seen on the wire with its ciphertext. A nonce is reused iff one
/// key/nonce pair carries two different ciphertexts (a retransmission repeats the same bytes).
#[derive(Default)]
pub struct NonceLog {
    /// Keyed by (context: kid and ID Context, sender, nonce): a renewed context (RFC 8613
    /// B.2) has keys of its own.
    seen: HashMap<(Kid, IdContext, bool, Nonce13), Vec<u8>>,
    tokens: HashMap<(usize, Vec<u8>), (Nonce13, IdContext)>,
    pub reuses: u64,
    pub recorded: u64,
}

/// Builds a forged response to a request.
pub type Forger = fn(&[u8]) -> Option<Vec<u8>>;

pub struct Harness {
    pub now: Millis,
    pub rng: ChaCha20Rng,
    pub net: NetSim<Node>,
    pub hub: HubSide,
    pub sensors: Vec<SensorSide>,
    pub nonces: NonceLog,
    /// Datagrams the attacker captured (everything sent by sensors).
    pub captured: Vec<Vec<u8>>,
    pub capture: bool,
    /// The attacker answers every sensor request at once with this forged response builder.
    pub forge: Option<Forger>,
    /// Protected answers (each one an encryption) the hub sent to the attacker's many ports.
    pub to_attacker_ports: u64,
    /// Everything the hub sent to the attacker's ports, in order.
    pub attacker_inbox: Vec<(u16, Vec<u8>)>,
}

/// A small lease block, so that leases and crashes interleave often.
pub const LEASE_BLOCK: u64 = 16;
/// Time a flash write takes.
pub const FLASH_WRITE_MS: u64 = 400;

pub fn descriptor(i: usize) -> Descriptor {
    Descriptor {
        model: "hearth-temp-1".into(),
        serial: format!("T-{i:05}"),
        firmware_version: 1,
        updatable: true,
        verifies_signatures: false,
        capabilities: vec!["temperature".into()],
        support_end: UnixTime(2_000_000_000),
    }
}

impl Harness {
    pub fn new(seed: u64, faults: Faults, sensors: usize) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let sensors = (0..sensors)
            .map(|_| SensorSide {
                link: SensorLink::unpaired(&mut rng).with_lease_block(LEASE_BLOCK),
                writing: None,
                flash: Flash::default(),
                pin: None,
                delivered: Vec::new(),
                paired: false,
                failed: 0,
                firmware: Vec::new(),
            })
            .collect();
        let hub = HubSide {
            link: HubLink::new(HubConfig::default()),
            stored: BTreeMap::new(),
            leases: HashMap::new(),
            contexts: HashMap::new(),
            windows: HashMap::new(),
            states: HashMap::new(),
            uncommitted: Vec::new(),
            uncommitted_requests: Vec::new(),
            dirty: BTreeSet::new(),
            pin_queue: VecDeque::new(),
            commit_at: None,
            commit_delay_ms: 3,
            typo: None,
            reports: Vec::new(),
            uncommitted_reports: Vec::new(),
            blocks_served: BTreeMap::new(),
        };
        Self {
            now: Millis(1),
            rng,
            net: NetSim::new(faults),
            hub,
            sensors,
            nonces: NonceLog::default(),
            captured: Vec::new(),
            capture: false,
            forge: None,
            to_attacker_ports: 0,
            attacker_inbox: Vec::new(),
        }
    }

    pub fn open_pairing(&mut self) {
        self.hub.link.open_pairing(self.now, WindowConfig::default());
    }

    pub fn start_pairing(&mut self, i: usize) {
        let now = self.now;
        // A new attempt blanks the display until the hub has taken its hello.
        self.sensors[i].pin = None;
        self.sensors[i].link.start_pairing(now, &mut self.rng, descriptor(i), MaskWidth::TWO);
        self.flush();
    }

    pub fn queue_reading(&mut self, i: usize, id: u64) {
        let now = self.now;
        self.sensors[i].link.queue_reading(now, &mut self.rng, id, id.to_be_bytes().to_vec());
        self.flush();
    }

    /// Runs until `done` holds or virtual time passes `deadline`; returns whether `done` held.
    pub fn run_until(&mut self, deadline: Millis, mut done: impl FnMut(&Harness) -> bool) -> bool {
        loop {
            self.flush();
            if done(self) {
                return true;
            }
            let Some(next) = self.next_event_time() else { return done(self) };
            if next > deadline {
                return false;
            }
            self.now = next.max(self.now);
            self.step();
        }
    }

    fn next_event_time(&self) -> Option<Millis> {
        let mut t = self.net.next_arrival();
        let mut take = |x: Option<Millis>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        take(self.hub.commit_at);
        for s in &self.sensors {
            take(s.link.poll_timeout());
            take(s.writing.map(|(_, t)| t));
        }
        t
    }

    fn step(&mut self) {
        let now = self.now;
        while let Some(d) = self.net.pop_due(now) {
            match d.to {
                Node::Hub => self.hub.link.handle_datagram(now, d.from, &d.bytes, &mut self.rng),
                Node::Sensor(i) => {
                    self.sensors[i].link.handle_datagram(now, &d.bytes, &mut self.rng)
                }
                Node::Attacker => {}
                Node::AttackerPort(port) => {
                    let protected = Packet::from_bytes(&d.bytes)
                        .is_ok_and(|p| p.get_option(CoapOption::Oscore).is_some());
                    self.to_attacker_ports += u64::from(protected);
                    self.attacker_inbox.push((port, d.bytes));
                }
            }
            self.flush();
        }
        if self.hub.commit_at.is_some_and(|t| t <= now) {
            self.commit();
        }
        for i in 0..self.sensors.len() {
            if let Some((lease, t)) = self.sensors[i].writing
                && t <= now
            {
                self.sensors[i].writing = None;
                self.sensors[i].flash.lease = Some(lease);
                self.sensors[i].link.lease_durable(now, &mut self.rng, lease);
            }
            if self.sensors[i].link.poll_timeout().is_some_and(|t| t <= now) {
                self.sensors[i].link.handle_timeout(now, &mut self.rng);
            }
        }
        self.flush();
    }

    /// Group commit: every reading received since the last commit becomes durable at once,
    /// with the checkpoint (window, usage ceilings) of every device involved; then all of them
    /// are answered.
    fn commit(&mut self) {
        self.hub.commit_at = None;
        let mut kids = std::mem::take(&mut self.hub.dirty);
        kids.extend(self.hub.uncommitted.iter().map(|(t, _)| t.kid()));
        kids.extend(self.hub.uncommitted_reports.iter().map(|t| t.kid()));
        kids.extend(self.hub.uncommitted_requests.iter().map(|t| t.kid()));
        for (ticket, id) in &self.hub.uncommitted {
            *self.hub.stored.entry((ticket.kid(), *id)).or_default() += 1;
        }
        for kid in kids {
            let Some(state) = self.hub.link.checkpoint(&kid) else { continue };
            if let Some(w) = state.window {
                self.hub.windows.insert(kid, ReplayWindow::Known(w));
            }
            self.hub.link.checkpoint_durable(&kid, &state);
            self.hub.states.insert(kid, state);
        }
        for ticket in std::mem::take(&mut self.hub.uncommitted_reports) {
            self.hub.link.acknowledge(ticket);
        }
        for ticket in std::mem::take(&mut self.hub.uncommitted_requests) {
            self.hub.link.acknowledge(ticket);
        }
        for (ticket, _) in std::mem::take(&mut self.hub.uncommitted) {
            self.hub.link.acknowledge(ticket);
        }
    }

    fn schedule_commit(&mut self) {
        if self.hub.commit_at.is_none() {
            self.hub.commit_at = Some(self.now.plus(self.hub.commit_delay_ms));
        }
    }

    /// The owner types the next queued PIN once no attempt is unresolved.
    fn type_pins(&mut self) {
        while !self.hub.link.pin_unresolved() {
            let Some(kid) = self.hub.pin_queue.pop_front() else { return };
            let Some((_, d)) = self.hub.link.waiting_for_pin().into_iter().find(|(k, _)| *k == kid)
            else {
                continue;
            };
            let i: usize = d.serial[2..].parse().expect("serial");
            let typed = match (&self.hub.typo, self.sensors[i].pin) {
                (Some(t), _) => t.clone(),
                (None, Some(pin)) => pin.to_string(),
                // The display shows the PIN once the hub's answer to the hello arrives: the owner
                // waits for it.
                (None, None) => {
                    self.hub.pin_queue.push_front(kid);
                    return;
                }
            };
            let _ = self.hub.link.enter_pin(self.now, Some(kid), &typed);
        }
    }

    /// Moves datagrams to the network and handles events until nothing is pending.
    pub fn flush(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.hub.link.poll_transmit() {
                progressed = true;
                self.record(Node::Hub, t.to, &t.bytes);
                let d = Datagram { from: Node::Hub, to: t.to, bytes: t.bytes };
                self.net.send(self.now, &mut self.rng, d);
            }
            while let Some(e) = self.hub.link.poll_event() {
                progressed = true;
                self.on_hub_event(e);
            }
            for i in 0..self.sensors.len() {
                while let Some(bytes) = self.sensors[i].link.poll_transmit() {
                    progressed = true;
                    self.record(Node::Sensor(i), Node::Hub, &bytes);
                    if self.capture {
                        self.captured.push(bytes.clone());
                    }
                    if let Some(forged) = self.forge.and_then(|f| f(&bytes)) {
                        let d =
                            Datagram { from: Node::Attacker, to: Node::Sensor(i), bytes: forged };
                        self.net.send(self.now, &mut self.rng, d);
                    }
                    let d = Datagram { from: Node::Sensor(i), to: Node::Hub, bytes };
                    self.net.send(self.now, &mut self.rng, d);
                }
                while let Some(e) = self.sensors[i].link.poll_event() {
                    progressed = true;
                    self.on_sensor_event(i, e);
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn on_hub_event(&mut self, e: HubEvent<Node>) {
        match e {
            HubEvent::PairingRequested { kid, .. } => {
                // The owner reads the display of the sensor with this serial and types its PIN.
                self.hub.pin_queue.push_back(kid);
                self.type_pins();
            }
            HubEvent::Renewed { kid, params } => {
                self.hub.contexts.insert(kid, params);
            }
            HubEvent::Paired { kid, params, .. } => {
                // Durable at once in the harness's store, with its first checkpoint.
                self.hub.contexts.insert(kid, params);
                if let Some(state) = self.hub.link.checkpoint(&kid) {
                    self.hub.link.checkpoint_durable(&kid, &state);
                    self.hub.states.insert(kid, state);
                }
                let now = self.now;
                self.hub.link.paired_durable(now, &kid);
            }
            HubEvent::PairingConfirmed { .. }
            | HubEvent::Security(SecurityEvent::PairingFailed { .. }) => self.type_pins(),
            HubEvent::Reading { ticket, payload } => {
                let id = u64::from_be_bytes(payload.0.as_slice().try_into().expect("8-byte id"));
                self.hub.uncommitted.push((ticket, id));
                self.schedule_commit();
            }
            HubEvent::Request { ticket } => {
                self.hub.uncommitted_requests.push(ticket);
                self.schedule_commit();
            }
            HubEvent::CheckpointNeeded { kid } => {
                self.hub.dirty.insert(kid);
                self.schedule_commit();
            }
            HubEvent::LeaseNeeded { kid, lease } => {
                self.hub.leases.insert(kid, lease);
                self.hub.link.lease_durable(&kid, lease);
            }
            HubEvent::NeedsRekey { .. } | HubEvent::Security(_) => {}
            HubEvent::Report { ticket, report } => {
                self.hub.reports.push((ticket.kid(), report));
                self.hub.uncommitted_reports.push(ticket);
                self.schedule_commit();
            }
            HubEvent::BlockServed { kid, num, .. } => {
                *self.hub.blocks_served.entry((kid, num)).or_default() += 1
            }
        }
    }

    fn on_sensor_event(&mut self, i: usize, e: SensorEvent) {
        let now = self.now;
        let s = &mut self.sensors[i];
        match e {
            SensorEvent::ShowPin(pin) => {
                s.pin = Some(pin);
                self.type_pins();
            }
            SensorEvent::Paired(p) => {
                s.flash.params = Some(p.context.clone());
                s.paired = true;
            }
            // Written to flash at once (a crash before the write is the same as a hub that
            // does not know the renewal: the link renews again).
            SensorEvent::Renewed(p) => s.flash.params = Some(*p),
            SensorEvent::PairingFailed(_) | SensorEvent::PairingRefused(_) => s.failed += 1,
            SensorEvent::Delivered(id) => s.delivered.push(id),
            SensorEvent::LeaseNeeded(lease) => s.writing = Some((lease, now.plus(FLASH_WRITE_MS))),
            SensorEvent::LinkError(_) | SensorEvent::Refused(_) => {}
            e => s.firmware.push(e),
        }
    }

    /// Power cut at the sensor: RAM is gone, flash stays; it reboots from flash.
    pub fn restart_sensor(&mut self, i: usize) {
        let s = &mut self.sensors[i];
        let params = s.flash.params.clone().expect("paired sensor");
        let lease = s.flash.lease.unwrap_or(Lease(0));
        let seq = SenderSequence::resume(lease, LEASE_BLOCK);
        let ctx = SecurityContext::new(&params, seq, ReplayWindow::Empty);
        s.writing = None;
        s.link = SensorLink::paired(&mut self.rng, ctx);
    }

    /// Power cut at the hub: uncommitted readings and RAM are gone; it reloads from its store.
    /// With `keep_windows` the replay windows were persisted with the readings; otherwise they
    /// come back `Unknown` and Echo recovers them.
    pub fn restart_hub(&mut self, keep_windows: bool) {
        self.hub.uncommitted.clear();
        self.hub.uncommitted_reports.clear();
        self.hub.uncommitted_requests.clear();
        self.hub.dirty.clear();
        self.hub.commit_at = None;
        let mut link = HubLink::new(HubConfig::default());
        for (kid, params) in &self.hub.contexts {
            let lease = self.hub.leases.get(kid).copied().unwrap_or(Lease(0));
            let window = match (keep_windows, self.hub.windows.get(kid)) {
                (true, Some(w)) => w.clone(),
                // Never `Empty` for a context that may have been used: Echo re-establishes it.
                (true, None) => ReplayWindow::Unknown,
                (false, _) => ReplayWindow::Unknown,
            };
            let state = self.hub.states.get(kid);
            let usage = state.map(|s| s.usage).unwrap_or_default();
            let endpoint = state.and_then(|s| s.endpoint);
            let budget = state.and_then(|s| s.budget.as_ref());
            link.add_peer(params, lease, window, usage, endpoint, budget);
            // The daemon's start-up checkpoint.
            if let Some(state) = link.checkpoint(kid) {
                link.checkpoint_durable(kid, &state);
                self.hub.states.insert(*kid, state);
            }
        }
        self.hub.link = link;
    }

    /// Sends raw bytes to the hub as the attacker.
    pub fn inject(&mut self, bytes: Vec<u8>) {
        let d = Datagram { from: Node::Attacker, to: Node::Hub, bytes };
        self.net.send(self.now, &mut self.rng, d);
    }

    /// Sends raw bytes to the hub from one of the attacker's many source ports.
    pub fn inject_from(&mut self, port: u16, bytes: Vec<u8>) {
        let d = Datagram { from: Node::AttackerPort(port), to: Node::Hub, bytes };
        self.net.send(self.now, &mut self.rng, d);
    }

    /// Sends raw bytes to the hub with `from` as their source (a spoofer of that endpoint: it
    /// does not receive what the hub answers there).
    pub fn inject_as(&mut self, from: Node, bytes: Vec<u8>) {
        let d = Datagram { from, to: Node::Hub, bytes };
        self.net.send(self.now, &mut self.rng, d);
    }

    /// Sends raw bytes to sensor `i` as the attacker.
    pub fn inject_to_sensor(&mut self, i: usize, bytes: Vec<u8>) {
        let d = Datagram { from: Node::Attacker, to: Node::Sensor(i), bytes };
        self.net.send(self.now, &mut self.rng, d);
    }

    pub fn set_faults(&mut self, f: Faults) {
        self.net.set_faults(f);
    }

    fn record(&mut self, from: Node, to: Node, bytes: &[u8]) {
        let Ok(p) = Packet::from_bytes(bytes) else { return };
        let Some(opt) = p.get_first_option(CoapOption::Oscore) else { return };
        let Ok(opt) = OscoreOption::parse(opt) else { return };
        let (sensor, from_hub) = match (from, to) {
            (Node::Sensor(i), _) => (i, false),
            (Node::Hub, Node::Sensor(i)) => (i, true),
            _ => return,
        };
        let Some(mut params) = self.sensors[sensor].flash.params.clone() else { return };
        // The context that sealed it: the one its 'kid context' names, or its request's.
        let ctx = match (from_hub, &opt.kid_context) {
            (_, Some(c)) => Some(c.clone()),
            (false, None) => None,
            (true, None) => match self.nonces.tokens.get(&(sensor, p.get_token().to_vec())) {
                Some((_, c)) => c.clone(),
                None => return,
            },
        };
        params.id_context = ctx.clone();
        let iv = params.common_iv();
        let n = match (from_hub, opt.piv) {
            (false, Some(piv)) => {
                let n = nonce(&iv, &params.sender_id, piv);
                self.nonces.tokens.insert((sensor, p.get_token().to_vec()), (n, ctx.clone()));
                n
            }
            (true, Some(piv)) => nonce(&iv, &params.recipient_id, piv),
            (true, None) => match self.nonces.tokens.get(&(sensor, p.get_token().to_vec())) {
                Some((n, _)) => *n,
                None => return,
            },
            (false, None) => return,
        };
        self.nonces.recorded += 1;
        let key = (params.sender_id, ctx, from_hub, n);
        match self.nonces.seen.get(&key) {
            Some(ct) if *ct != p.payload => self.nonces.reuses += 1,
            Some(_) => {}
            None => {
                self.nonces.seen.insert(key, p.payload.clone());
            }
        }
    }
}

pub fn lossy() -> Faults {
    Faults { loss: 0.05, duplicate: 0.05, delay_ms: 5, jitter_ms: 40 }
}

pub fn piv_of(bytes: &[u8]) -> Option<Piv> {
    let p = Packet::from_bytes(bytes).ok()?;
    OscoreOption::parse(p.get_first_option(CoapOption::Oscore)?).ok()?.piv
}

pub const HOUR: u64 = 3_600_000;

/// A forged OSCORE request naming `kid` with Partial IV `piv` and a random-looking body.
pub fn forged(kid: &Kid, piv: u64, mid: u16) -> Vec<u8> {
    let option =
        OscoreOption { piv: Some(Piv::new(piv).expect("piv")), kid_context: None, kid: Some(*kid) };
    let mut p = Packet::new();
    p.header.set_type(coap_lite::MessageType::Confirmable);
    p.header.code = coap_lite::MessageClass::Request(coap_lite::RequestType::Post);
    p.header.message_id = mid;
    p.set_token(mid.to_be_bytes().to_vec());
    p.add_option(CoapOption::Oscore, option.encode());
    p.payload = (0..24u64).map(|i| (piv.wrapping_mul(31).wrapping_add(i * 17)) as u8).collect();
    p.to_bytes().expect("encode")
}

/// A harness whose `sensors` sensors have all paired.
pub fn paired(seed: u64, faults: Faults, sensors: usize) -> Harness {
    let mut h = Harness::new(seed, faults, sensors);
    h.open_pairing();
    for i in 0..sensors {
        h.start_pairing(i);
    }
    let ok = h.run_until(Millis(HOUR), |h| {
        h.sensors.iter().all(|s| s.paired) && h.hub.contexts.len() == sensors
    });
    assert!(ok, "pairing did not finish");
    h
}
