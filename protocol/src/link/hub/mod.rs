//! The hub's link endpoint: pairing sessions (`pairing`), one OSCORE context per sensor found by
//! kid, not by address (`protected`), firmware resources (`firmware`), the per-sensor budgets
//! that keep a forger from spending a key (`guard`), and counters of every security-relevant
//! rejection (EN 303 645 5.10-1). Every accepted request is answered only after the caller has
//! made the sensor's checkpoint durable, and always to the endpoint it came from.

mod firmware;
mod guard;
mod pairing;
mod protected;
mod types;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};
use rand_core::CryptoRng;

use crate::oscore::{
    ContextParams, KeyUsage, Kid, Lease, ReplayWindow, SecurityContext, SenderSequence,
};
use crate::pairing::{FILTER_HOSTS, HelloBudget, HelloCookie, PairingWindow, RequestFilter};
use crate::time::Millis;

use super::coap;
use guard::Guard;
pub(crate) use pairing::encode_done;
use pairing::{Dedup, Session};
use protected::Exchange;

pub use guard::{
    ECHO_BURST, ECHO_INTERVAL_MS, ECHO_REFILL_MS, ENCRYPTION_HEADROOM, FAIL_BURST, FAIL_REFILL_MS,
    FAILURE_HEADROOM,
};
pub use types::{
    AckTicket, Endpoint, FirmwareOffer, HubConfig, HubEvent, Payload, PeerState, PinError,
    SecurityCounters, SecurityEvent, Transmit,
};

/// An unprotected exchange's identity: (source, message id, token), RFC 7252 §4.5.
type PlainKey<A> = (A, u16, Vec<u8>);

/// How long an exchange is remembered for deduplication (RFC 7252 EXCHANGE_LIFETIME).
const EXCHANGE_LIFETIME_MS: u64 = 247_000;

struct Peer<A> {
    ctx: SecurityContext,
    /// Recent exchanges for CoAP deduplication, keyed by source endpoint and Message ID.
    recent: VecDeque<Exchange<A>>,
    guard: Guard<A>,
    rekey_reported: bool,
    offer: Option<Arc<FirmwareOffer>>,
    /// A command waiting for the sensor's next request (the newest replaces an older one).
    command: Option<super::command::Command>,
    /// Answers that wait for a durable checkpoint (usage ceiling).
    waiting: Vec<(AckTicket<A>, protected::Answer)>,
}

impl<A: Endpoint> Peer<A> {
    fn new(ctx: SecurityContext, known: Option<A>, ceiling: KeyUsage) -> Self {
        Self {
            ctx,
            recent: VecDeque::new(),
            guard: Guard::new(known, ceiling),
            rekey_reported: false,
            offer: None,
            command: None,
            waiting: Vec::new(),
        }
    }
}

/// The hub's side of every sensor link.
pub struct HubLink<A: Endpoint> {
    config: HubConfig,
    peers: HashMap<Kid, Peer<A>>,
    window: Option<PairingWindow>,
    sessions: HashMap<Kid, Session<A>>,
    /// Pairings whose "paired" answer waits for the context to be durable.
    unconfirmed: HashMap<Kid, (PlainKey<A>, Vec<u8>)>,
    /// (source, message id, token) → response, with when it was made.
    dedup: Dedup<A>,
    /// The key of this window's hello cookies (made at the first hello after a window opens).
    cookie: Option<HelloCookie>,
    /// Key generations for pairing hellos, globally and per host.
    budget: HelloBudget<A::Host>,
    /// Each host's share of unprotected datagrams.
    requests: RequestFilter<A::Host>,
    transmits: VecDeque<Transmit<A>>,
    events: VecDeque<HubEvent<A>>,
    counters: SecurityCounters,
}

impl<A: Endpoint> core::fmt::Debug for HubLink<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HubLink")
            .field("peers", &self.peers.len())
            .field("sessions", &self.sessions.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl<A: Endpoint> HubLink<A> {
    /// An empty hub link.
    pub fn new(config: HubConfig) -> Self {
        Self {
            peers: HashMap::new(),
            window: None,
            sessions: HashMap::new(),
            unconfirmed: HashMap::new(),
            dedup: Dedup::new(config.dedup_entries),
            cookie: None,
            budget: HelloBudget::new(config.hello),
            requests: RequestFilter::new(
                config.hello.request_rate,
                config.hello.request_burst,
                FILTER_HOSTS,
            ),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: SecurityCounters::default(),
            config,
        }
    }

    /// Adds a paired sensor restored from the store: its context inputs, the last durable lease
    /// of the hub's sequence in it, its replay window (`Unknown` if not persisted: B.1.2), and
    /// its last durable checkpoint's usage ceilings (the counters resume *at* them: never lower
    /// than they were) and endpoint. Persist [`HubLink::checkpoint`] before it is used.
    pub fn add_peer(
        &mut self,
        params: &ContextParams,
        lease: Lease,
        window: ReplayWindow,
        usage: KeyUsage,
        endpoint: Option<A>,
    ) {
        let seq = SenderSequence::resume(lease, self.config.lease_block);
        let ctx = SecurityContext::new(params, seq, window).with_usage(usage);
        self.peers.insert(params.recipient_id, Peer::new(ctx, endpoint, usage));
    }

    /// Forgets a sensor (removal or replacement). Its kid is refused from now on.
    pub fn remove_peer(&mut self, kid: &Kid) -> bool {
        self.peers.remove(kid).is_some()
    }

    /// Number of paired sensors.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Paired sensors' kids.
    pub fn peer_kids(&self) -> Vec<Kid> {
        self.peers.keys().copied().collect()
    }

    /// Restores counters persisted before a restart (EN 303 645 5.10-1: the record of attacks
    /// survives the hub's restarts).
    pub fn restore_counters(&mut self, counters: SecurityCounters) {
        self.counters = counters;
    }

    /// Counters of rejected input.
    pub fn counters(&self) -> SecurityCounters {
        self.counters
    }

    /// The state to persist for `kid` before answering what it accepted so far: its replay
    /// window, usage ceilings with fresh headroom, and its endpoint.
    pub fn checkpoint(&self, kid: &Kid) -> Option<PeerState<A>> {
        let p = self.peers.get(kid)?;
        Some(PeerState {
            window: p.ctx.replay_window().state(),
            usage: p.guard.reserve(p.ctx.usage()),
            endpoint: p.guard.known(),
        })
    }

    /// `state` (from [`HubLink::checkpoint`]) is durable: its ceilings may be used, and answers
    /// that waited for them go out.
    pub fn checkpoint_durable(&mut self, kid: &Kid, state: &PeerState<A>) {
        let Some(p) = self.peers.get_mut(kid) else { return };
        p.guard.ceiling_durable(state.usage);
        for (ticket, answer) in std::mem::take(&mut p.waiting) {
            self.respond(ticket, answer);
        }
    }

    /// Offers `offer` to sensor `kid` from now on (`None` cancels): the next acknowledgements
    /// carry it, and its manifest and image blocks are served. Returns whether `kid` is known.
    pub fn set_offer(&mut self, kid: &Kid, offer: Option<Arc<FirmwareOffer>>) -> bool {
        match self.peers.get_mut(kid) {
            Some(p) => {
                p.offer = offer;
                true
            }
            None => false,
        }
    }

    /// Queues `command` for sensor `kid`: the acknowledgement of its next reading or report
    /// carries it (queue mode; a newer command replaces one not yet sent). Returns whether
    /// `kid` is known.
    pub fn queue_command(&mut self, kid: &Kid, command: super::command::Command) -> bool {
        match self.peers.get_mut(kid) {
            Some(p) => {
                p.command = Some(command);
                true
            }
            None => false,
        }
    }

    /// The command waiting for `kid`'s next request, if any.
    pub fn pending_command(&self, kid: &Kid) -> Option<&super::command::Command> {
        self.peers.get(kid)?.command.as_ref()
    }

    /// Reports a lease durable.
    pub fn lease_durable(&mut self, kid: &Kid, lease: Lease) {
        if let Some(p) = self.peers.get_mut(kid) {
            p.ctx.lease_durable(lease);
        }
    }

    /// Reports a lease that could not be made durable.
    pub fn lease_failed(&mut self, kid: &Kid) {
        if let Some(p) = self.peers.get_mut(kid) {
            p.ctx.sequence_mut().lease_failed();
        }
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit<A>> {
        self.transmits.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<HubEvent<A>> {
        self.events.pop_front()
    }

    /// Time passes: idle pairing sessions end (call it every second or so).
    pub fn handle_timeout(&mut self, now: Millis) {
        self.expire_sessions(now);
    }

    /// Handles one received datagram.
    pub fn handle_datagram<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        from: A,
        bytes: &[u8],
        rng: &mut R,
    ) {
        if bytes.len() > coap::MAX_DATAGRAM {
            return self.malformed("datagram too large");
        }
        // Unprotected datagrams (pairing, junk) only within their host's share, decided before
        // anything is parsed: a flood costs a lookup per datagram, not the readings' time.
        if !pairing::carries_oscore(bytes) && !self.requests.admit(now, &from.host()) {
            self.counters.unprotected_throttled += 1;
            return;
        }
        let Ok(packet) = Packet::from_bytes(bytes) else {
            return self.malformed("not a CoAP message");
        };
        if !matches!(packet.header.code, MessageClass::Request(_)) {
            return; // the hub sends no requests, so responses and empty messages are stray
        }
        if packet.get_option(CoapOption::Oscore).is_some() {
            self.handle_protected(now, from, bytes, &packet, rng);
        } else {
            self.handle_plain(now, from, &packet, rng);
        }
    }

    fn malformed(&mut self, what: &'static str) {
        self.counters.malformed += 1;
        self.events.push_back(HubEvent::Security(SecurityEvent::Malformed(what)));
    }

    fn security(&mut self, e: SecurityEvent) {
        self.events.push_back(HubEvent::Security(e));
    }

    /// An unprotected answer (errors to non-confirmable requests are not sent).
    fn reply(&mut self, to: A, request: &Packet, code: ResponseType, payload: &[u8]) {
        if request.header.get_type() == MessageType::NonConfirmable && code.is_error() {
            return;
        }
        let p = coap::response(request, code, payload.to_vec());
        if let Some(bytes) = coap::encode(&p) {
            self.transmits.push_back(Transmit { to, bytes });
        }
    }

    fn check_peer(&mut self, kid: Kid) {
        let Some(peer) = self.peers.get_mut(&kid) else { return };
        if let Some(lease) = peer.ctx.poll_lease() {
            self.events.push_back(HubEvent::LeaseNeeded { kid, lease });
        }
        if peer.guard.running_low(peer.ctx.usage()) {
            self.events.push_back(HubEvent::CheckpointNeeded { kid });
        }
        if let (Some(reason), false) = (peer.ctx.needs_rekey(), peer.rekey_reported) {
            peer.rekey_reported = true;
            self.events.push_back(HubEvent::NeedsRekey { kid, reason });
        }
    }
}
