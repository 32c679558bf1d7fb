//! The hub's link endpoint: pairing sessions (`pairing`), one OSCORE context per sensor found by
//! kid, not by address (`protected`), firmware resources (`firmware`), the per-sensor budgets
//! that keep a forger from spending a key or silencing its sensor (`guard`), return routability
//! for sources over budget (`echo`), and counters of every security-relevant rejection
//! (EN 303 645 5.10-1). Every accepted request is answered only after the caller has made the
//! sensor's checkpoint durable, and always to the endpoint it came from.

mod echo;
mod firmware;
mod guard;
mod pairing;
mod protected;
mod types;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};
use rand_core::CryptoRng;

use crate::echo::EchoKey;
use crate::oscore::{
    ContextParams, KeyUsage, Kid, Lease, ReplayWindow, RequestBinding, SecurityContext,
    SenderSequence,
};
use crate::pairing::{FILTER_HOSTS, HelloBudget, PairingWindow, RequestFilter};
use crate::time::Millis;

use super::coap;
use echo::Routability;
use guard::Guard;
pub(crate) use pairing::encode_done;
use pairing::{Dedup, Session};
use protected::Exchange;

pub use echo::{CHALLENGE_SPACING_MS, ECHO_OPTION, ROUTABILITY_LEN, ROUTABILITY_SLOT_MS};
pub use guard::{
    BucketState, ECHO_BURST, ECHO_INTERVAL_MS, ECHO_REFILL_MS, FAIL_BURST, FAIL_REFILL_MS,
    GuardState, ROUTABLE_BURST, ROUTABLE_HOSTS, ROUTABLE_REFILL_MS,
};
pub use types::{
    AckTicket, Endpoint, FirmwareOffer, HubConfig, HubEvent, Payload, PeerState, PinError,
    SecurityCounters, SecurityEvent, Transmit,
};

/// An unprotected exchange's identity: (source, message id, token), RFC 7252 §4.5.
type PlainKey<A> = (A, u16, Vec<u8>);

/// How long an exchange is remembered for deduplication (RFC 7252 EXCHANGE_LIFETIME).
const EXCHANGE_LIFETIME_MS: u64 = 247_000;

/// Answers to unprotected-outcome verifications kept per sensor until the checkpoint recording
/// the outcome is durable (beyond it they are not sent: a forger learns nothing more).
const PARKED: usize = 32;

/// What waits for a sensor's durable checkpoints because it depends on a verification's
/// outcome: the unprotected answers to failed tags, and a B.1.2 challenge to seal — `next` for
/// the next checkpoint, `inflight` for the one being written. A peer boxes it only while
/// something waits (rare; inline both took 64 of every peer's bytes).
struct Parked<A> {
    next: Stage<A>,
    inflight: Stage<A>,
}

impl<A> Default for Parked<A> {
    fn default() -> Self {
        Self { next: Stage::default(), inflight: Stage::default() }
    }
}

struct Stage<A> {
    replies: Vec<Transmit<A>>,
    challenge: Option<(A, Packet, RequestBinding)>,
}

impl<A> Default for Stage<A> {
    fn default() -> Self {
        Self { replies: Vec::new(), challenge: None }
    }
}

impl<A> Stage<A> {
    fn is_empty(&self) -> bool {
        self.replies.is_empty() && self.challenge.is_none()
    }
}

struct Peer<A: Endpoint> {
    ctx: SecurityContext,
    /// The context must be renewed before use (restored from a backup).
    must_renew: bool,
    /// The `R2`s issued for a renewal (RFC 8613 B.2, `oscore::renew`); boxed, made at the
    /// first Response #1 and dropped when a Request #2 confirms one.
    renew: Option<Box<crate::oscore::renew::Pending>>,
    /// Recent exchanges for CoAP deduplication, keyed by source endpoint and Message ID.
    recent: VecDeque<Exchange<A>>,
    guard: Guard<A>,
    rekey_reported: bool,
    offer: Option<Arc<FirmwareOffer>>,
    /// A command waiting for the sensor's next request (the newest replaces an older one).
    command: Option<super::command::Command>,
    /// Answers that wait for a durable checkpoint (encryption ceiling).
    waiting: Vec<(AckTicket<A>, protected::Answer)>,
    /// Accepted requests not answered yet (each answer is one encryption to reserve).
    unanswered: u64,
    /// Outcome-dependent answers not yet in a checkpoint, and those in the one being written.
    parked: Option<Box<Parked<A>>>,
    /// The replay window as last made durable, and the one being written: a replay is refused
    /// at once only if the durable window already refuses it (otherwise the refusal would
    /// reveal a verification not yet recorded).
    durable_window: ReplayWindow,
    window_inflight: Option<crate::oscore::WindowState>,
}

impl<A: Endpoint> Peer<A> {
    fn new(ctx: SecurityContext, known: Option<A>, ceiling: KeyUsage) -> Self {
        Self::with_guard(ctx, Guard::new(known, ceiling))
    }

    fn with_guard(ctx: SecurityContext, guard: Guard<A>) -> Self {
        Self {
            durable_window: ctx.replay_window().clone(),
            window_inflight: None,
            ctx,
            must_renew: false,
            renew: None,
            recent: VecDeque::new(),
            guard,
            rekey_reported: false,
            offer: None,
            command: None,
            waiting: Vec::new(),
            unanswered: 0,
            parked: None,
        }
    }
}

/// The hub's side of every sensor link.
pub struct HubLink<A: Endpoint> {
    config: HubConfig,
    /// Boxed: a `Peer` is about 620 bytes, and a map of them inline kept up to as much again as
    /// slack after each doubling (11 MiB at 10,000 sensors), and twice the whole during one.
    peers: HashMap<Kid, Box<Peer<A>>>,
    /// Return-routability values for sources over budget.
    routability: Routability<A>,
    /// Unix ms minus monotonic ms, as last reported by [`HubLink::set_clock`].
    wall_offset: u64,
    /// The latest monotonic time given to any input.
    last_now: Millis,
    window: Option<PairingWindow>,
    sessions: HashMap<Kid, Session<A>>,
    /// Pairings whose "paired" answer waits for the context to be durable.
    unconfirmed: HashMap<Kid, (PlainKey<A>, Vec<u8>)>,
    /// (source, message id, token) → response, with when it was made.
    dedup: Dedup<A>,
    /// The key of this window's hello cookies (made at the first hello after a window opens).
    cookie: Option<EchoKey>,
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
            routability: Routability::new(),
            wall_offset: 0,
            last_now: Millis(0),
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
    /// its last durable checkpoint's key usage (encryptions resume *at* the ceiling: never lower
    /// than they were), endpoint and failure budgets. Persist [`HubLink::checkpoint`] before it
    /// is used.
    pub fn add_peer(
        &mut self,
        params: &ContextParams,
        lease: Lease,
        window: ReplayWindow,
        usage: KeyUsage,
        endpoint: Option<A>,
        budget: Option<&GuardState<A::Host>>,
    ) {
        let seq = SenderSequence::resume(lease, self.config.lease_block);
        let ctx = SecurityContext::new(params, seq, window).with_usage(usage);
        let guard = Guard::restore(endpoint, usage, budget);
        self.peers.insert(params.recipient_id, Box::new(Peer::with_guard(ctx, guard)));
    }

    /// The wall clock (Unix ms) at monotonic time `now`: failure budgets are persisted and
    /// refilled on it, so that a restart neither refills them early nor forgets them. Report it
    /// before the first datagram and then every few seconds; until then budgets restored from
    /// a checkpoint earn nothing (a clock that goes back earns nothing until it catches up).
    pub fn set_clock(&mut self, now: Millis, unix_ms: u64) {
        self.wall_offset = unix_ms.saturating_sub(now.0);
        self.tick(now);
    }

    fn wall(&self, now: Millis) -> u64 {
        now.0.saturating_add(self.wall_offset)
    }

    fn tick(&mut self, now: Millis) {
        self.last_now = self.last_now.max(now);
    }

    /// Marks a sensor's context "renew before use" (restored from a backup: the old hub may
    /// have used it after the backup). Nothing is processed under it any more; its requests get
    /// RFC 8613 B.2 Response #1 until the sensor renews. False if no such sensor.
    pub fn require_renewal(&mut self, kid: &Kid) -> bool {
        match self.peers.get_mut(kid) {
            Some(p) => {
                p.must_renew = true;
                true
            }
            None => false,
        }
    }

    /// Whether a sensor's context still waits for its renewal.
    pub fn renewal_pending(&self, kid: &Kid) -> bool {
        self.peers.get(kid).is_some_and(|p| p.must_renew)
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
    /// window, the exact count of failed decryptions with the budgets that allowed them, an
    /// encryption ceiling covering the answers waiting for this checkpoint, and its endpoint.
    /// One checkpoint per sensor at a time: call it again after reporting the last one durable.
    pub fn checkpoint(&mut self, kid: &Kid) -> Option<PeerState<A>> {
        let wall = self.wall(self.last_now);
        let p = self.peers.get_mut(kid)?;
        let challenge = p.parked.as_ref().is_some_and(|b| b.next.challenge.is_some());
        let answers = p.unanswered + u64::from(challenge);
        let (usage, budget) = p.guard.checkpoint(wall, p.ctx.usage(), answers);
        if let Some(b) = p.parked.as_deref_mut() {
            let next = std::mem::take(&mut b.next);
            b.inflight.replies.extend(next.replies);
            if next.challenge.is_some() {
                b.inflight.challenge = next.challenge;
            }
        }
        let window = p.ctx.replay_window().state();
        p.window_inflight = window;
        Some(PeerState { window, usage, endpoint: p.guard.newest_known(), budget: Some(budget) })
    }

    /// `state` (from [`HubLink::checkpoint`]) is durable: its encryptions may be used, what
    /// waited on the outcomes it records goes out, and so do answers that waited for it.
    pub fn checkpoint_durable(&mut self, kid: &Kid, state: &PeerState<A>) {
        let Some(p) = self.peers.get_mut(kid) else { return };
        p.guard.durable(state.usage);
        if let Some(w) = p.window_inflight.take() {
            p.durable_window = ReplayWindow::Known(w);
        }
        let mut inflight = Stage::default();
        if let Some(mut b) = p.parked.take() {
            inflight = std::mem::take(&mut b.inflight);
            if !b.next.is_empty() {
                p.parked = Some(b);
            }
        }
        self.transmits.extend(inflight.replies);
        if let Some((to, request, binding)) = inflight.challenge {
            self.send_challenge(*kid, to, &request, &binding);
        }
        let Some(p) = self.peers.get_mut(kid) else { return };
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
        self.tick(now);
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
        self.tick(now);
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
        if let Some(t) = unprotected(to, request, code, payload) {
            self.transmits.push_back(t);
        }
    }

    fn check_peer(&mut self, kid: Kid) {
        let Some(peer) = self.peers.get_mut(&kid) else { return };
        if let Some(lease) = peer.ctx.poll_lease() {
            self.events.push_back(HubEvent::LeaseNeeded { kid, lease });
        }
        if let (Some(reason), false) = (peer.ctx.needs_rekey(), peer.rekey_reported) {
            peer.rekey_reported = true;
            self.events.push_back(HubEvent::NeedsRekey { kid, reason });
        }
    }
}

/// An unprotected answer to `request` (`None` for an error to a non-confirmable request).
fn unprotected<A>(
    to: A,
    request: &Packet,
    code: ResponseType,
    payload: &[u8],
) -> Option<Transmit<A>> {
    if request.header.get_type() == MessageType::NonConfirmable && code.is_error() {
        return None;
    }
    let p = coap::response(request, code, payload.to_vec());
    coap::encode(&p).map(|bytes| Transmit { to, bytes })
}
