//! The hub's link endpoint: pairing sessions, one OSCORE context per sensor (found by kid, not by
//! address), readings released to the caller and acknowledged only once durable, CoAP
//! deduplication, and counters of every security-relevant rejection (EN 303 645 5.10-1).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use rand_core::CryptoRng;

use crate::oscore::{
    ContextParams, KeyUsage, Kid, Lease, NeedsRekey, OscoreError, OscoreOption, ReplayWindow,
    RequestBinding, SecurityContext, SenderSequence, Verified,
};
use crate::pairing::{
    AwaitingPin, AwaitingSensorConfirm, Confirm, Descriptor, HubPairing, PairingError,
    PairingRefused, PairingWindow, Pin, SensorHello, WindowConfig,
};
use crate::time::Millis;

use super::coap::{self, PATH_DONE, PATH_HELLO, PATH_PROOF, PATH_READINGS};
use super::fw::{BLOCK2, Block, PATH_IMAGE, PATH_MANIFEST, PATH_REPORT, UpdateOffer, UpdateReport};

/// Hub link settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The hub's Sender ID in every sensor context.
    pub hub_kid: Kid,
    /// Sequence lease block K (RFC 8613 B.1.1).
    pub lease_block: u64,
    /// Pairing sessions that may wait for a PIN at once.
    pub max_sessions: usize,
    /// Pairing sessions one source address may hold at once (a fleet simulator behind a few
    /// sockets needs more; real sensors each have their own address).
    pub sessions_per_source: usize,
    /// Remembered unprotected exchanges, for CoAP deduplication of pairing requests.
    pub dedup_entries: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            hub_kid: Kid::default(),
            lease_block: crate::oscore::DEFAULT_LEASE_BLOCK,
            max_sessions: 32,
            sessions_per_source: 4,
            dedup_entries: 1024,
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit<A> {
    /// Destination.
    pub to: A,
    /// Encoded CoAP message.
    pub bytes: Vec<u8>,
}

/// Counts of rejected input, by kind (EN 303 645 5.10-1, 5.13-1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecurityCounters {
    /// Datagrams that are not CoAP, or break a limit.
    pub malformed: u64,
    /// OSCORE messages naming no known context.
    pub unknown_kid: u64,
    /// Replayed or too-old Partial IVs.
    pub replays: u64,
    /// AEAD tags that failed (tampering, wrong key).
    pub bad_tag: u64,
    /// Malformed OSCORE options or inner messages.
    pub bad_oscore: u64,
    /// Pairing requests outside a window, during back-off, or over the session limit.
    pub pairing_refused: u64,
    /// Failed pairing confirmations (wrong PIN or attacker).
    pub pairing_failed: u64,
    /// Requests for resources that do not exist or are not allowed unprotected.
    pub bad_request: u64,
    /// Retransmissions answered from the deduplication cache (not a security event).
    pub duplicates: u64,
    /// Echo challenges not sent because one was sent to the same context just before.
    pub echo_limited: u64,
    /// Requests refused because their key reached a usage limit (re-pair the device).
    pub key_limit: u64,
}

/// A security-relevant rejection, for the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityEvent {
    /// A replay was refused.
    Replay {
        /// The context.
        kid: Kid,
    },
    /// A message failed authentication.
    BadTag {
        /// The context.
        kid: Kid,
    },
    /// An OSCORE message named an unknown context.
    UnknownKid,
    /// A malformed datagram or OSCORE message.
    Malformed(&'static str),
    /// A pairing request was refused.
    PairingRefused(PairingRefused),
    /// A context's key reached a usage limit; the device must be re-paired.
    KeyLimit {
        /// The context.
        kid: Kid,
    },
    /// A pairing attempt failed.
    PairingFailed {
        /// The session.
        kid: Kid,
        /// Why.
        reason: PairingError,
    },
}

/// What the hub link tells its caller.
#[derive(Debug)]
pub enum HubEvent {
    /// A sensor asked to pair; the owner must type the PIN its display shows.
    PairingRequested {
        /// Session (and future OSCORE) ID.
        kid: Kid,
        /// What the sensor says it is.
        descriptor: Descriptor,
    },
    /// Pairing succeeded: persist the context (secret, encrypted at rest), then call
    /// [`HubLink::paired_durable`] — only then is the sensor told it is paired.
    Paired {
        /// The sensor's kid.
        kid: Kid,
        /// Context inputs (hub's view).
        params: ContextParams,
        /// Descriptor bound into the pairing transcript.
        descriptor: Descriptor,
    },
    /// A reading to persist; call [`HubLink::acknowledge`] once it is durable.
    Reading {
        /// Ticket for the acknowledgement.
        ticket: AckTicket,
        /// The SenML payload (not yet parsed: the caller validates it).
        payload: Payload,
    },
    /// A sensor reports an update outcome: persist it, then call [`HubLink::acknowledge`].
    Report {
        /// Ticket for the acknowledgement.
        ticket: AckTicket,
        /// The report.
        report: UpdateReport,
    },
    /// An image block was served (progress; counts re-sent blocks).
    BlockServed {
        /// Device.
        kid: Kid,
        /// Version.
        version: u32,
        /// Block number.
        num: u32,
        /// Blocks in the image.
        total: u32,
    },
    /// Persist this lease for the hub's sender sequence in `kid`'s context, then report it.
    LeaseNeeded {
        /// The context.
        kid: Kid,
        /// Value to make durable.
        lease: Lease,
    },
    /// A context should be re-keyed soon.
    NeedsRekey {
        /// The context.
        kid: Kid,
        /// Which limit.
        reason: NeedsRekey,
    },
    /// A rejection worth logging.
    Security(SecurityEvent),
}

/// An update the hub offers to a sensor: the offer itself, the signed manifest (for sensors that
/// verify signatures) and the verified image, shared by every sensor it is offered to.
#[derive(Debug)]
pub struct FirmwareOffer {
    /// What the sensor is told.
    pub offer: UpdateOffer,
    /// COSE_Sign1 manifest bytes.
    pub manifest: Vec<u8>,
    /// Image bytes (their digest was verified against the manifest before this was made).
    pub image: Vec<u8>,
}

/// A reading's payload; its `Debug` shows only the length (readings are personal data,
/// EN 303 645 provision 6, and stay out of logs).
pub struct Payload(pub Vec<u8>);

impl core::fmt::Debug for Payload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

/// Identifies a reading awaiting its answer. Single use (not `Clone`): one request gets exactly
/// one response under its nonce. Answer it only once the replay window that accepted it is
/// durable (persist [`HubLink::peer_state`] with the reading, or with the refusal).
pub struct AckTicket {
    kid: Kid,
    binding: RequestBinding,
    request: Packet,
}

impl core::fmt::Debug for AckTicket {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // No payload: readings are personal data (EN 303 645 provision 6).
        f.debug_struct("AckTicket").field("kid", &self.kid).field("piv", &self.binding.piv).finish()
    }
}

impl AckTicket {
    /// The sensor's kid.
    pub fn kid(&self) -> Kid {
        self.kid
    }

    /// The reading's Partial IV (its position in the sensor's sequence).
    pub fn piv(&self) -> u64 {
        self.binding.piv.value()
    }
}

/// Durable per-sensor link state for the caller to persist alongside each reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    /// Replay window after this reading (None while unknown).
    pub window: Option<crate::oscore::WindowState>,
    /// Key-usage counters.
    pub usage: KeyUsage,
}

/// Why a typed PIN was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// No pairing request is waiting under that kid (or none at all).
    #[error("no sensor is waiting for a PIN")]
    NoSession,
    /// More than one sensor is waiting; say which.
    #[error("several sensors are waiting; choose one")]
    Ambiguous,
    /// Pairing is not allowed now.
    #[error(transparent)]
    Refused(#[from] PairingRefused),
    /// The PIN is wrong (counted as a failed attempt).
    #[error(transparent)]
    Pairing(#[from] PairingError),
}

/// An unprotected exchange's identity: (source, message id, token), RFC 7252 §4.5.
type PlainKey<A> = (A, u16, Vec<u8>);
/// An answered unprotected exchange: its identity, when, and the response.
type PlainExchange<A> = (PlainKey<A>, Millis, Vec<u8>);

struct LastExchange {
    piv: u64,
    tag: [u8; 8],
    response: Option<Vec<u8>>,
}

/// Minimum spacing of Echo challenges per context.
const ECHO_INTERVAL_MS: u64 = 250;
/// How long an unprotected exchange is remembered for deduplication (RFC 7252 EXCHANGE_LIFETIME).
const EXCHANGE_LIFETIME_MS: u64 = 247_000;

struct Peer<A> {
    ctx: SecurityContext,
    addr: Option<A>,
    /// The last accepted request (Partial IV and tag) and the bytes of its response once sent
    /// (resent on retransmission; never re-protected, since that would reuse the request's nonce).
    last: Option<LastExchange>,
    /// When the last Echo challenge was sent (challenges are rate-limited: each one costs an
    /// encryption under the key's usage limit).
    last_echo: Option<Millis>,
    rekey_reported: bool,
    offer: Option<std::sync::Arc<FirmwareOffer>>,
    /// An answer that needs our own Partial IV and waits for a durable lease (after a restart
    /// the sequence has none until the caller persists one).
    deferred: Option<Deferred>,
}

struct Deferred {
    request: Packet,
    binding: RequestBinding,
    code: ResponseType,
    payload: Vec<u8>,
    block: Option<Block>,
}

impl<A: Copy> Session<A> {
    fn addr(&self) -> A {
        match self {
            Self::AwaitingPin { addr, .. } | Self::AwaitingConfirm { addr, .. } => *addr,
        }
    }
}

enum Session<A> {
    AwaitingPin { state: AwaitingPin, addr: A },
    AwaitingConfirm { state: AwaitingSensorConfirm, proof: Confirm, addr: A },
}

/// The hub's side of every sensor link.
pub struct HubLink<A> {
    config: HubConfig,
    peers: HashMap<Kid, Peer<A>>,
    window: Option<PairingWindow>,
    sessions: HashMap<Kid, Session<A>>,
    /// Pairings whose "paired" answer waits for the context to be durable.
    unconfirmed: HashMap<Kid, (PlainKey<A>, Vec<u8>)>,
    /// (source, message id, token) → response, with when it was made.
    dedup: VecDeque<PlainExchange<A>>,
    transmits: VecDeque<Transmit<A>>,
    events: VecDeque<HubEvent>,
    counters: SecurityCounters,
}

impl<A> core::fmt::Debug for HubLink<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HubLink")
            .field("peers", &self.peers.len())
            .field("sessions", &self.sessions.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl<A: Copy + Eq + Hash> HubLink<A> {
    /// An empty hub link.
    pub fn new(config: HubConfig) -> Self {
        Self {
            config,
            peers: HashMap::new(),
            window: None,
            sessions: HashMap::new(),
            unconfirmed: HashMap::new(),
            dedup: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: SecurityCounters::default(),
        }
    }

    /// Adds a paired sensor restored from the store: its context inputs, the last durable lease
    /// of the hub's sequence in it, and its replay window (`Unknown` if not persisted: B.1.2).
    pub fn add_peer(
        &mut self,
        params: &ContextParams,
        lease: Lease,
        window: ReplayWindow,
        usage: KeyUsage,
    ) {
        let seq = SenderSequence::resume(lease, self.config.lease_block);
        let ctx = SecurityContext::new(params, seq, window).with_usage(usage);
        self.peers.insert(
            params.recipient_id,
            Peer {
                ctx,
                addr: None,
                last: None,
                last_echo: None,
                rekey_reported: false,
                offer: None,
                deferred: None,
            },
        );
    }

    /// Forgets a sensor (removal or replacement). Its kid is refused from now on.
    pub fn remove_peer(&mut self, kid: &Kid) -> bool {
        self.peers.remove(kid).is_some()
    }

    /// Number of paired sensors.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Counters of rejected input.
    pub fn counters(&self) -> SecurityCounters {
        self.counters
    }

    /// Durable state of a sensor's context (persist with each reading).
    pub fn peer_state(&self, kid: &Kid) -> Option<PeerState> {
        let p = self.peers.get(kid)?;
        Some(PeerState { window: p.ctx.replay_window().state(), usage: p.ctx.usage() })
    }

    /// Arms pairing for a bounded window (the owner's explicit action).
    pub fn open_pairing(&mut self, now: Millis, config: WindowConfig) {
        self.window = Some(PairingWindow::open(now, config));
        self.sessions.clear();
    }

    /// Disarms pairing and drops unfinished sessions.
    pub fn close_pairing(&mut self) {
        self.window = None;
        self.sessions.clear();
    }

    /// The current window, if one was opened.
    pub fn pairing_window(&self) -> Option<&PairingWindow> {
        self.window.as_ref()
    }

    /// Sensors waiting for their PIN to be typed.
    pub fn waiting_for_pin(&self) -> Vec<(Kid, Descriptor)> {
        let mut v: Vec<_> = self
            .sessions
            .iter()
            .filter_map(|(k, s)| match s {
                Session::AwaitingPin { state, .. } => Some((*k, state.descriptor().clone())),
                Session::AwaitingConfirm { .. } => None,
            })
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// The owner typed `pin` for the sensor `kid` (or for the only waiting one).
    pub fn enter_pin(&mut self, now: Millis, kid: Option<Kid>, pin: &str) -> Result<Kid, PinError> {
        let window = self.window.as_mut().ok_or(PinError::Refused(PairingRefused::Closed))?;
        window.admit(now)?;
        let waiting = self.waiting_for_pin();
        let kid = match (kid, waiting.as_slice()) {
            (Some(k), _) => k,
            (None, [(k, _)]) => *k,
            (None, []) => return Err(PinError::NoSession),
            (None, _) => return Err(PinError::Ambiguous),
        };
        let Some(Session::AwaitingPin { state, addr }) = self.sessions.get(&kid) else {
            return Err(PinError::NoSession);
        };
        let addr = *addr;
        let result = Pin::parse(pin, state.width()).and_then(|p| state.enter_pin(&p));
        match result {
            Ok((state, proof)) => {
                self.sessions.insert(kid, Session::AwaitingConfirm { state, proof, addr });
                Ok(kid)
            }
            Err(e @ PairingError::BadPin(_)) => Err(PinError::Pairing(e)),
            Err(e) => {
                self.fail_pairing(now, kid, e);
                Err(PinError::Pairing(e))
            }
        }
    }

    /// The context of the sensor paired as `kid` is durable: tell the sensor it is paired.
    pub fn paired_durable(&mut self, now: Millis, kid: &Kid) {
        let Some((key, bytes)) = self.unconfirmed.remove(kid) else { return };
        let to = key.0;
        if self.dedup.len() >= self.config.dedup_entries {
            self.dedup.pop_front();
        }
        self.dedup.push_back((key, now, bytes.clone()));
        self.transmits.push_back(Transmit { to, bytes });
    }

    /// Reports a lease durable (and sends an answer that waited for it).
    pub fn lease_durable(&mut self, kid: &Kid, lease: Lease) {
        let Some(p) = self.peers.get_mut(kid) else { return };
        p.ctx.lease_durable(lease);
        if let Some(d) = p.deferred.take() {
            self.answer_now(*kid, &d.request, &d.binding, d.code, d.payload, d.block);
        }
    }

    /// Reports a lease that could not be made durable.
    pub fn lease_failed(&mut self, kid: &Kid) {
        if let Some(p) = self.peers.get_mut(kid) {
            p.ctx.sequence_mut().lease_failed();
        }
    }

    /// Offers `offer` to sensor `kid` from now on (`None` cancels): the next acknowledgements
    /// carry it, and its manifest and image blocks are served. Returns whether `kid` is known.
    pub fn set_offer(&mut self, kid: &Kid, offer: Option<std::sync::Arc<FirmwareOffer>>) -> bool {
        match self.peers.get_mut(kid) {
            Some(p) => {
                p.offer = offer;
                true
            }
            None => false,
        }
    }

    /// The reading (or report) behind `ticket` is durable: send the protected 2.04, carrying the
    /// update offer for this sensor if there is one.
    pub fn acknowledge(&mut self, ticket: AckTicket) {
        let offer =
            self.peers.get(&ticket.kid).and_then(|p| p.offer.as_ref().map(|o| o.offer.encode()));
        self.respond(ticket, ResponseType::Changed, offer.as_deref().unwrap_or_default());
    }

    /// Refuses the reading behind `ticket` (e.g. its payload broke a limit) with a protected
    /// error response, so the sensor stops resending it.
    pub fn reject(&mut self, ticket: AckTicket, code: ResponseType, diagnostic: &str) {
        self.respond(ticket, code, diagnostic.as_bytes());
    }

    fn respond(&mut self, ticket: AckTicket, code: ResponseType, payload: &[u8]) {
        let Some(peer) = self.peers.get_mut(&ticket.kid) else { return };
        let plain = coap::response(&ticket.request, code, payload.to_vec());
        let Ok(sealed) = peer.ctx.protect_response(&plain, &ticket.binding, false) else { return };
        let Some(bytes) = coap::encode(&sealed.packet) else { return };
        if let Some(last) = &mut peer.last
            && last.piv == ticket.binding.piv.value()
        {
            last.response = Some(bytes.clone());
        }
        if let Some(to) = peer.addr {
            self.transmits.push_back(Transmit { to, bytes });
        }
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit<A>> {
        self.transmits.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<HubEvent> {
        self.events.pop_front()
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
        let Ok(packet) = Packet::from_bytes(bytes) else {
            return self.malformed("not a CoAP message");
        };
        if !matches!(packet.header.code, MessageClass::Request(_)) {
            return; // the hub sends no requests, so responses and empty messages are stray
        }
        if packet.get_option(CoapOption::Oscore).is_some() {
            self.handle_protected(now, from, &packet, rng);
        } else {
            self.handle_plain(now, from, &packet, rng);
        }
    }

    fn malformed(&mut self, what: &'static str) {
        self.counters.malformed += 1;
        self.events.push_back(HubEvent::Security(SecurityEvent::Malformed(what)));
    }

    fn reply(&mut self, to: A, request: &Packet, code: ResponseType, payload: &[u8]) {
        if request.header.get_type() == MessageType::NonConfirmable && code.is_error() {
            return;
        }
        let p = coap::response(request, code, payload.to_vec());
        if let Some(bytes) = coap::encode(&p) {
            self.transmits.push_back(Transmit { to, bytes });
        }
    }

    fn handle_protected<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        from: A,
        packet: &Packet,
        rng: &mut R,
    ) {
        let parsed = packet
            .get_first_option(CoapOption::Oscore)
            .map(|v| OscoreOption::parse(v))
            .unwrap_or(Err(OscoreError::NotOscore("no option")));
        let kid = match parsed {
            Ok(OscoreOption { kid: Some(kid), piv: Some(_), .. }) => kid,
            _ => {
                self.counters.bad_oscore += 1;
                self.events
                    .push_back(HubEvent::Security(SecurityEvent::Malformed("OSCORE option")));
                return self.reply(from, packet, ResponseType::BadOption, b"bad OSCORE option");
            }
        };
        let Some(peer) = self.peers.get_mut(&kid) else {
            self.counters.unknown_kid += 1;
            self.events.push_back(HubEvent::Security(SecurityEvent::UnknownKid));
            return self.reply(
                from,
                packet,
                ResponseType::Unauthorized,
                b"Security context not found",
            );
        };
        let tag = tag_of(packet);
        // CoAP deduplication: the retransmission of the last request gets the same response.
        if let Some(last) = &peer.last
            && Some(last.tag) == tag
        {
            self.counters.duplicates += 1;
            if let Some(bytes) = last.response.clone() {
                self.transmits.push_back(Transmit { to: from, bytes });
            }
            return; // otherwise its acknowledgement is still waiting for durability
        }
        match peer.ctx.unprotect_request(packet) {
            Ok(Verified::Request { request, binding }) => {
                peer.addr = Some(from);
                peer.last =
                    tag.map(|tag| LastExchange { piv: binding.piv.value(), tag, response: None });
                self.serve(kid, request, binding);
            }
            Ok(Verified::NeedsEcho { .. })
                if peer.last_echo.is_some_and(|t| now < t.plus(ECHO_INTERVAL_MS)) =>
            {
                self.counters.echo_limited += 1;
            }
            Ok(Verified::NeedsEcho { binding }) => {
                peer.last_echo = Some(now);
                match peer.ctx.echo_challenge(packet, &binding, rng) {
                    Ok(sealed) => {
                        if let Some(bytes) = coap::encode(&sealed.packet) {
                            self.transmits.push_back(Transmit { to: from, bytes });
                        }
                    }
                    Err(_) => self.check_peer(kid), // no durable lease yet: ask for one
                }
            }
            Err(OscoreError::Replay) => {
                self.counters.replays += 1;
                self.events.push_back(HubEvent::Security(SecurityEvent::Replay { kid }));
                self.reply(from, packet, ResponseType::Unauthorized, b"Replay detected");
            }
            Err(OscoreError::DecryptionFailed) => {
                self.counters.bad_tag += 1;
                self.events.push_back(HubEvent::Security(SecurityEvent::BadTag { kid }));
                self.reply(from, packet, ResponseType::BadRequest, b"Decryption failed");
            }
            Err(OscoreError::KeyLimitReached) => {
                self.counters.key_limit += 1;
                self.events.push_back(HubEvent::Security(SecurityEvent::KeyLimit { kid }));
                self.reply(from, packet, ResponseType::Unauthorized, b"Key limit reached");
            }
            Err(_) => {
                self.counters.bad_oscore += 1;
                self.events
                    .push_back(HubEvent::Security(SecurityEvent::Malformed("OSCORE message")));
                self.reply(from, packet, ResponseType::BadOption, b"bad OSCORE message");
            }
        }
        self.check_peer(kid);
    }

    fn serve(&mut self, kid: Kid, request: Packet, binding: RequestBinding) {
        let method = request.header.code;
        let post = MessageClass::Request(RequestType::Post);
        let get = MessageClass::Request(RequestType::Get);
        match (method, coap::path(&request).as_str()) {
            (m, PATH_READINGS) if m == post => {
                let payload = Payload(request.payload.clone());
                let ticket = AckTicket { kid, binding, request };
                self.events.push_back(HubEvent::Reading { ticket, payload });
            }
            (m, PATH_REPORT) if m == post => match UpdateReport::decode(&request.payload) {
                Ok(report) => {
                    let ticket = AckTicket { kid, binding, request };
                    self.events.push_back(HubEvent::Report { ticket, report });
                }
                Err(_) => {
                    self.counters.bad_request += 1;
                    self.answer_now(
                        kid,
                        &request,
                        &binding,
                        ResponseType::BadRequest,
                        Vec::new(),
                        None,
                    );
                }
            },
            (m, PATH_MANIFEST) if m == get => {
                let offer = self.offer_for(&kid, &request);
                match offer {
                    Some(o) => {
                        let body = o.manifest.clone();
                        self.answer_now(kid, &request, &binding, ResponseType::Content, body, None);
                    }
                    None => self.answer_now(
                        kid,
                        &request,
                        &binding,
                        ResponseType::NotFound,
                        Vec::new(),
                        None,
                    ),
                }
            }
            (m, PATH_IMAGE) if m == get => self.serve_block(kid, &request, &binding),
            _ => {
                self.counters.bad_request += 1;
                self.answer_now(kid, &request, &binding, ResponseType::NotFound, Vec::new(), None);
            }
        }
    }

    /// The offer for `kid` if the request names its version (`?v=N`).
    fn offer_for(&self, kid: &Kid, request: &Packet) -> Option<std::sync::Arc<FirmwareOffer>> {
        let offer = self.peers.get(kid)?.offer.clone()?;
        let asked = request
            .get_option(CoapOption::UriQuery)
            .into_iter()
            .flatten()
            .find_map(|q| std::str::from_utf8(q).ok()?.strip_prefix("v=")?.parse::<u32>().ok());
        (asked == Some(offer.offer.version)).then_some(offer)
    }

    fn serve_block(&mut self, kid: Kid, request: &Packet, binding: &RequestBinding) {
        let asked = request.get_first_option(CoapOption::Unknown(BLOCK2)).map(|v| Block::decode(v));
        let (Some(offer), Some(Ok(block))) = (self.offer_for(&kid, request), asked) else {
            return self.answer_now(
                kid,
                request,
                binding,
                ResponseType::NotFound,
                Vec::new(),
                None,
            );
        };
        let size = offer.image.len() as u64;
        let start = block.offset();
        if start >= size {
            return self.answer_now(
                kid,
                request,
                binding,
                ResponseType::BadOption,
                Vec::new(),
                None,
            );
        }
        let end = (start + (16u64 << block.szx)).min(size);
        let data = offer.image[start as usize..end as usize].to_vec();
        let reply = Block { num: block.num, more: end < size, szx: block.szx };
        let total = size.div_ceil(16u64 << block.szx) as u32;
        self.answer_now(kid, request, binding, ResponseType::Content, data, Some(reply));
        let version = offer.offer.version;
        self.events.push_back(HubEvent::BlockServed { kid, version, num: block.num, total });
    }

    /// Answers at once, before the replay window that accepted the request is durable: so under
    /// our own Partial IV, never the request's nonce (a replay after a restart could otherwise
    /// get a different answer under the same nonce).
    fn answer_now(
        &mut self,
        kid: Kid,
        request: &Packet,
        binding: &RequestBinding,
        code: ResponseType,
        payload: Vec<u8>,
        block: Option<Block>,
    ) {
        let Some(peer) = self.peers.get_mut(&kid) else { return };
        let mut plain = coap::response(request, code, payload);
        if let Some(b) = block {
            plain.add_option(CoapOption::Unknown(BLOCK2), b.encode());
        }
        let sealed = match peer.ctx.protect_response(&plain, binding, true) {
            Err(OscoreError::LeaseNotDurable) => {
                let (request, binding) = (request.clone(), binding.clone());
                peer.deferred =
                    Some(Deferred { request, binding, code, payload: plain.payload, block });
                return self.check_peer(kid);
            }
            other => other,
        };
        if let Ok(sealed) = sealed
            && let (Some(bytes), Some(to)) = (coap::encode(&sealed.packet), peer.addr)
        {
            if let Some(last) = &mut peer.last
                && last.piv == binding.piv.value()
            {
                last.response = Some(bytes.clone());
            }
            self.transmits.push_back(Transmit { to, bytes });
        }
        self.check_peer(kid);
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

    fn handle_plain<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        from: A,
        packet: &Packet,
        rng: &mut R,
    ) {
        while self.dedup.front().is_some_and(|(_, at, _)| now >= at.plus(EXCHANGE_LIFETIME_MS)) {
            self.dedup.pop_front();
        }
        let key = (from, packet.header.message_id, packet.get_token().to_vec());
        if let Some((_, _, bytes)) = self.dedup.iter().find(|(k, _, _)| *k == key) {
            self.counters.duplicates += 1;
            self.transmits.push_back(Transmit { to: from, bytes: bytes.clone() });
            return;
        }
        let before = self.transmits.len();
        let is_post = packet.header.code == MessageClass::Request(RequestType::Post);
        match (is_post, coap::path(packet).as_str()) {
            (true, PATH_HELLO) => self.on_hello(now, from, packet, rng),
            (true, PATH_PROOF) => self.on_proof(from, packet),
            (true, PATH_DONE) => self.on_done(now, from, packet),
            _ => {
                // Everything except pairing must be OSCORE-protected (5.5-5: authenticate first).
                self.counters.bad_request += 1;
                self.reply(from, packet, ResponseType::Unauthorized, b"OSCORE required");
            }
        }
        if self.transmits.len() == before + 1
            && let Some(t) = self.transmits.back()
        {
            if self.dedup.len() >= self.config.dedup_entries {
                self.dedup.pop_front();
            }
            self.dedup.push_back((key, now, t.bytes.clone()));
        }
    }

    fn refuse(&mut self, from: A, packet: &Packet, why: PairingRefused) {
        self.counters.pairing_refused += 1;
        self.events.push_back(HubEvent::Security(SecurityEvent::PairingRefused(why)));
        let code = match why {
            PairingRefused::BackingOff { .. } | PairingRefused::Busy => {
                ResponseType::ServiceUnavailable
            }
            _ => ResponseType::Forbidden,
        };
        self.reply(from, packet, code, why.to_string().as_bytes());
    }

    fn on_hello<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        from: A,
        packet: &Packet,
        rng: &mut R,
    ) {
        let admitted = self.window.as_ref().map_or(Err(PairingRefused::Closed), |w| w.admit(now));
        if let Err(why) = admitted {
            return self.refuse(from, packet, why);
        }
        let hello = match SensorHello::decode(&packet.payload) {
            Ok(h) => h,
            Err(e) => {
                self.malformed("pairing hello");
                let why = e.to_string();
                return self.reply(from, packet, ResponseType::BadRequest, why.as_bytes());
            }
        };
        // A sensor that restarts pairing (fresh key, fresh PIN) supersedes its own earlier attempt
        // from the same address, so the owner's PIN goes to the attempt the display shows.
        self.sessions.retain(|_, s| match s {
            Session::AwaitingPin { state, addr } => {
                *addr != from || state.descriptor().serial != hello.descriptor.serial
            }
            Session::AwaitingConfirm { .. } => true,
        });
        let from_source = self.sessions.values().filter(|s| s.addr() == from).count();
        if self.sessions.len() >= self.config.max_sessions
            || from_source >= self.config.sessions_per_source
        {
            return self.refuse(from, packet, PairingRefused::Busy);
        }
        let kid = self.fresh_kid(rng);
        match HubPairing::start(rng, hello, kid, self.config.hub_kid) {
            Ok((state, hub_hello)) => {
                let descriptor = state.descriptor().clone();
                self.sessions.insert(kid, Session::AwaitingPin { state, addr: from });
                self.events.push_back(HubEvent::PairingRequested { kid, descriptor });
                self.reply(from, packet, ResponseType::Created, &hub_hello.encode());
            }
            Err(e) => self.reply(from, packet, ResponseType::BadRequest, e.to_string().as_bytes()),
        }
    }

    fn fresh_kid<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Kid {
        loop {
            let mut b = [0u8; 4];
            rng.fill_bytes(&mut b);
            let Ok(kid) = Kid::new(&b) else { continue };
            let taken = kid == self.config.hub_kid
                || self.peers.contains_key(&kid)
                || self.sessions.contains_key(&kid);
            if !taken {
                return kid;
            }
        }
    }

    fn on_proof(&mut self, from: A, packet: &Packet) {
        let Ok(kid) = Kid::new(&packet.payload) else {
            self.malformed("pairing proof request");
            return self.reply(from, packet, ResponseType::BadRequest, b"bad kid");
        };
        match self.sessions.get(&kid) {
            Some(Session::AwaitingConfirm { proof, .. }) => {
                let body = proof.encode();
                self.reply(from, packet, ResponseType::Content, &body);
            }
            Some(Session::AwaitingPin { addr, .. }) if *addr == from => {
                // Not yet: the owner has not typed the PIN. Ask again in a second.
                let mut p = coap::response(
                    packet,
                    ResponseType::ServiceUnavailable,
                    b"waiting for PIN".to_vec(),
                );
                p.add_option(CoapOption::MaxAge, vec![1]);
                if let Some(bytes) = coap::encode(&p) {
                    self.transmits.push_back(Transmit { to: from, bytes });
                }
            }
            _ => self.reply(from, packet, ResponseType::NotFound, b"no such pairing"),
        }
    }

    fn on_done(&mut self, now: Millis, from: A, packet: &Packet) {
        let Some((kid, confirm)) = decode_done(&packet.payload) else {
            self.malformed("pairing confirmation");
            return self.reply(from, packet, ResponseType::BadRequest, b"bad confirmation");
        };
        if self.unconfirmed.contains_key(&kid) {
            return; // a retransmission while the new context is being made durable
        }
        // Only the address that started the session may finish (or abort) it.
        let Some(Session::AwaitingConfirm { addr, .. }) = self.sessions.get(&kid) else {
            return self.reply(from, packet, ResponseType::NotFound, b"no such pairing");
        };
        if *addr != from {
            return self.reply(from, packet, ResponseType::NotFound, b"no such pairing");
        }
        let Some(Session::AwaitingConfirm { state, .. }) = self.sessions.remove(&kid) else {
            return;
        };
        let result = match confirm {
            Some(c) => state.finish(&c),
            None => Err(PairingError::HubProofInvalid), // the sensor refused our proof
        };
        match result {
            Ok(paired) => {
                let seq = SenderSequence::new(self.config.lease_block);
                let ctx = SecurityContext::new(&paired.context, seq, ReplayWindow::Empty);
                self.peers.insert(
                    kid,
                    Peer {
                        ctx,
                        addr: Some(from),
                        last: None,
                        last_echo: None,
                        rekey_reported: false,
                        offer: None,
                        deferred: None,
                    },
                );
                self.events.push_back(HubEvent::Paired {
                    kid,
                    params: paired.context,
                    descriptor: paired.descriptor,
                });
                self.check_peer(kid);
                // The sensor hears "paired" only once its context is durable here
                // ([`HubLink::paired_durable`]); retransmissions meanwhile are ignored.
                let answer = coap::response(packet, ResponseType::Changed, Vec::new());
                let key = (from, packet.header.message_id, packet.get_token().to_vec());
                if let Some(bytes) = coap::encode(&answer) {
                    self.unconfirmed.insert(kid, (key, bytes));
                }
            }
            Err(e) => {
                self.fail_pairing(now, kid, e);
                self.reply(from, packet, ResponseType::Unauthorized, b"pairing failed");
            }
        }
    }

    fn fail_pairing(&mut self, now: Millis, kid: Kid, reason: PairingError) {
        self.counters.pairing_failed += 1;
        if let Some(w) = self.window.as_mut() {
            w.record_failure(now);
        }
        self.events.push_back(HubEvent::Security(SecurityEvent::PairingFailed { kid, reason }));
    }
}

/// The CCM tag (last 8 bytes of the ciphertext) identifies a retransmitted request.
fn tag_of(packet: &Packet) -> Option<[u8; 8]> {
    let p = &packet.payload;
    p.len().checked_sub(8).and_then(|i| p[i..].try_into().ok())
}

/// `/p/done` payload: the sensor's kid, then 32 bytes of MAC, or nothing when the sensor refused
/// the hub's proof.
pub(crate) fn encode_done(kid: &Kid, confirm: Option<&Confirm>) -> Vec<u8> {
    let mut out = vec![kid.as_bytes().len() as u8];
    out.extend_from_slice(kid.as_bytes());
    if let Some(c) = confirm {
        out.extend_from_slice(&c.mac);
    }
    out
}

fn decode_done(payload: &[u8]) -> Option<(Kid, Option<Confirm>)> {
    let (&len, rest) = payload.split_first()?;
    let (kid, rest) = rest.split_at_checked(usize::from(len))?;
    let kid = Kid::new(kid).ok()?;
    match rest.len() {
        0 => Some((kid, None)),
        32 => Some((kid, Some(Confirm { mac: rest.try_into().ok()? }))),
        _ => None,
    }
}
