//! The OSCORE-protected path (RFC 8613 §8.2, §7.4; RFC 7252 §4.5): deduplication by source
//! endpoint and Message ID with the whole datagram compared, the failure budget before
//! verification (with a return-routability challenge when it is spent, RFC 9175), replay
//! refusal, Echo recovery (B.1.2), and everything that depends on a verification's outcome —
//! answers, refusals, challenges — sent only after the sensor's checkpoint recording it is
//! durable, to the endpoint the request came from.

use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use rand_core::CryptoRng;

use crate::oscore::{Kid, OscoreError, OscoreOption, RequestBinding, Verified};
use crate::time::Millis;

use super::super::coap::{self, PATH_READINGS};
use super::super::command::COMMAND_OPTION;
use super::super::fw::{PATH_REPORT, UpdateReport};
use super::echo::ECHO_OPTION;
use super::guard::{Admit, Class, Outcome};
use super::types::Asked;
use super::{
    AckTicket, EXCHANGE_LIFETIME_MS, Endpoint, HubEvent, HubLink, Payload, SecurityEvent, Transmit,
};

/// Exchanges remembered per sensor (a sensor has one request in flight; a CoAP client such as
/// aiocoap may have a few).
const RECENT: usize = 4;

/// An accepted request: who sent it, its Message ID and a digest of its bytes, and its answer
/// once made (resent byte for byte on retransmission; never re-protected, which would reuse its
/// nonce).
pub(super) struct Exchange<A> {
    from: A,
    mid: u16,
    piv: u64,
    request: RequestDigest,
    at: Millis,
    response: Option<Box<[u8]>>,
}

/// What identifies a request's bytes for deduplication: SHA-256, truncated to 128 bits (a
/// retransmission is the same bytes; the full request was ~100 bytes more per exchange kept).
/// A forged collision would only get an answer already sent to that endpoint resent.
type RequestDigest = [u8; 16];

fn request_digest(bytes: &[u8]) -> RequestDigest {
    use sha2::Digest as _;
    let full = sha2::Sha256::digest(bytes);
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    d
}

/// A prepared answer: code, payload, and the Block2 option value if any.
pub(super) struct Answer {
    code: ResponseType,
    payload: Vec<u8>,
    block: Option<Vec<u8>>,
    /// An encoded command for the sensor (inner option [`COMMAND_OPTION`]).
    command: Option<Vec<u8>>,
}

/// Which context a request names (RFC 8613 B.2).
enum Under {
    /// The one in use.
    InUse,
    /// One to renew: the one in use when it must be renewed first, or the paired one while
    /// another is in use (Request #1).
    Renew1,
    /// The context with this ID Context, `R2 ‖ R1` of an `R2` this hub issued (Request #2).
    Renew2(Vec<u8>),
}

/// Answers that may wait for a checkpoint per sensor (one request in flight is normal).
const WAITING: usize = 16;

impl<A: Endpoint> HubLink<A> {
    pub(super) fn handle_protected<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        from: A,
        bytes: &[u8],
        packet: &Packet,
        rng: &mut R,
    ) {
        let parsed = packet
            .get_first_option(CoapOption::Oscore)
            .map(|v| OscoreOption::parse(v))
            .unwrap_or(Err(OscoreError::NotOscore("no option")));
        // Hearth assigns kids at pairing; an ID Context comes only from a renewal (B.2).
        let (kid, piv, kid_context) = match parsed {
            Ok(OscoreOption { kid: Some(kid), piv: Some(piv), kid_context }) => {
                (kid, piv, kid_context)
            }
            _ => {
                self.counters.bad_oscore += 1;
                self.security(SecurityEvent::Malformed("OSCORE option"));
                return self.reply(from, packet, ResponseType::BadOption, b"bad OSCORE option");
            }
        };
        let Some(peer) = self.peers.get_mut(&kid) else {
            self.counters.unknown_kid += 1;
            self.security(SecurityEvent::UnknownKid);
            return self.reply(
                from,
                packet,
                ResponseType::Unauthorized,
                b"Security context not found",
            );
        };
        // Which context the request is under (B.2): the one in use goes on as usual (unless
        // it must be renewed first); one without ID Context while that is not the one in use
        // (restored, or a sensor that lost its renewed context) is Request #1, answered with
        // Response #1 below after the failure budgets like any other; one naming an `R2` this
        // hub issued is Request #2. Anything else names no context here.
        let current = kid_context.as_deref() == peer.ctx.id_context();
        let under = match kid_context {
            _ if current && !peer.must_renew => Under::InUse,
            _ if current => Under::Renew1,
            None => Under::Renew1,
            Some(c)
                if peer
                    .renew
                    .as_ref()
                    .is_some_and(|r| r.candidate(peer.ctx.params(), &c).is_some()) =>
            {
                Under::Renew2(c)
            }
            Some(_) => {
                self.counters.unknown_kid += 1;
                self.security(SecurityEvent::UnknownKid);
                return self.reply(
                    from,
                    packet,
                    ResponseType::Unauthorized,
                    b"Security context not found",
                );
            }
        };
        let Some(peer) = self.peers.get_mut(&kid) else { return };
        // CoAP deduplication (RFC 7252 §4.5): the same endpoint's retransmission of the same
        // message gets the same answer. Anything else goes through OSCORE.
        peer.recent.retain(|e| now < e.at.plus(EXCHANGE_LIFETIME_MS));
        let mid = packet.header.message_id;
        let digest = request_digest(bytes);
        if let Some(e) =
            peer.recent.iter().find(|e| e.from == from && e.mid == mid && e.request == digest)
        {
            self.counters.duplicates += 1;
            if let Some(bytes) = &e.response {
                self.transmits.push_back(Transmit { to: from, bytes: bytes.to_vec() });
            }
            return; // otherwise its answer is still waiting for durability
        }
        // Return routability (RFC 9175): a valid outer Echo proves the source receives at its
        // endpoint; its host's routable budget applies.
        let wall = self.wall(now);
        let echoed = packet.get_first_option(CoapOption::Unknown(ECHO_OPTION));
        let routable = echoed.is_some_and(|v| self.routability.valid(now, &kid, &from, v));
        let Some(peer) = self.peers.get_mut(&kid) else { return };
        let class = match peer.guard.admit(wall, from, routable, peer.ctx.usage()) {
            Admit::Verify(class) => class,
            Admit::KeyRetired => {
                self.counters.key_limit += 1;
                self.security(SecurityEvent::KeyLimit { kid });
                return self.reply(from, packet, ResponseType::Unauthorized, b"Key limit reached");
            }
            Admit::Throttled => {
                let known = peer.guard.known() == Some(from);
                self.counters.throttled += 1;
                self.security(SecurityEvent::Throttled { kid });
                if !routable {
                    self.challenge_routability(now, kid, from, packet, bytes.len(), known, rng);
                }
                return;
            }
        };
        if matches!(class, Class::Routable(_)) {
            self.counters.routable += 1;
        }
        // Whatever depends on the outcome (an answer, a 4.00, a B.1.2 challenge) leaves only
        // after the checkpoint recording it is durable (see `guard`).
        match under {
            Under::InUse => {}
            Under::Renew1 => {
                return self.renewal_response_1(kid, class, current, from, packet, rng);
            }
            Under::Renew2(c) => {
                if !self.renewal_request_2(kid, &c, packet) {
                    // Its tag failed under the context it names: a forgery, budgeted like any.
                    let Some(peer) = self.peers.get_mut(&kid) else { return };
                    peer.guard.settle(class, Outcome::Failed);
                    self.events.push_back(HubEvent::CheckpointNeeded { kid });
                    self.counters.bad_tag += 1;
                    self.security(SecurityEvent::BadTag { kid });
                    self.park(kid, from, packet, ResponseType::BadRequest, b"Decryption failed");
                    return self.check_peer(kid);
                }
            }
        }
        let Some(peer) = self.peers.get_mut(&kid) else { return };
        let outcome = peer.ctx.unprotect_request(packet);
        let settled = match &outcome {
            Ok(_) | Err(OscoreError::BadInnerMessage) => Outcome::Verified,
            Err(OscoreError::DecryptionFailed) => Outcome::Failed,
            Err(_) => Outcome::Unchecked,
        };
        peer.guard.settle(class, settled);
        if settled != Outcome::Unchecked {
            self.events.push_back(HubEvent::CheckpointNeeded { kid });
        }
        match outcome {
            Ok(Verified::Request { request: inner, binding }) => {
                let Some(peer) = self.peers.get_mut(&kid) else { return };
                peer.guard.authenticated(from);
                // A new exchange with this endpoint and Message ID replaces an older one.
                peer.recent.retain(|e| !(e.from == from && e.mid == mid));
                if peer.recent.len() >= RECENT {
                    peer.recent.pop_front();
                }
                let piv = binding.piv.value();
                let (request, at) = (digest, now);
                peer.recent.push_back(Exchange { from, mid, piv, request, at, response: None });
                peer.unanswered += 1;
                self.accepted(kid, from, inner, binding);
            }
            Ok(Verified::NeedsEcho { binding }) => {
                let Some(peer) = self.peers.get_mut(&kid) else { return };
                if peer.guard.echo(now, from) {
                    peer.ctx.arm_echo(rng);
                    let parked = peer.parked.get_or_insert_with(Default::default);
                    parked.next.challenge = Some((from, packet.clone(), binding));
                } else {
                    self.counters.echo_limited += 1;
                }
            }
            Err(OscoreError::Replay) => {
                self.counters.replays += 1;
                self.security(SecurityEvent::Replay { kid });
                let Some(peer) = self.peers.get_mut(&kid) else { return };
                if peer.durable_window.check(piv.value()) == Err(OscoreError::Replay) {
                    self.reply(from, packet, ResponseType::Unauthorized, b"Replay detected");
                } else {
                    // Refused only because of a verification not yet durable.
                    self.events.push_back(HubEvent::CheckpointNeeded { kid });
                    self.park(kid, from, packet, ResponseType::Unauthorized, b"Replay detected");
                }
            }
            Err(OscoreError::DecryptionFailed) => {
                self.counters.bad_tag += 1;
                self.security(SecurityEvent::BadTag { kid });
                self.park(kid, from, packet, ResponseType::BadRequest, b"Decryption failed");
            }
            Err(OscoreError::KeyLimitReached) => {
                self.counters.key_limit += 1;
                self.security(SecurityEvent::KeyLimit { kid });
                self.reply(from, packet, ResponseType::Unauthorized, b"Key limit reached");
            }
            Err(OscoreError::BadInnerMessage) => {
                self.counters.bad_oscore += 1;
                self.security(SecurityEvent::Malformed("OSCORE message"));
                self.park(kid, from, packet, ResponseType::BadOption, b"bad OSCORE message");
            }
            Err(_) => {
                self.counters.bad_oscore += 1;
                self.security(SecurityEvent::Malformed("OSCORE message"));
                self.reply(from, packet, ResponseType::BadOption, b"bad OSCORE message");
            }
        }
        self.check_peer(kid);
    }

    /// RFC 8613 B.2 step 2: a request under a context that must be renewed (`current`: the
    /// one in use, restored) or under the paired one, admitted by its failure budget as
    /// `class`. Its tag is checked (nothing is processed, nothing marked
    /// seen: the context's window may be behind) and it is answered with Response #1 under a
    /// one-time context with a fresh `R2`. A failed tag is counted and answered like any other
    /// (after the checkpoint recording it).
    fn renewal_response_1<R: CryptoRng + ?Sized>(
        &mut self,
        kid: Kid,
        class: Class<A::Host>,
        current: bool,
        from: A,
        packet: &Packet,
        rng: &mut R,
    ) {
        let Some(peer) = self.peers.get_mut(&kid) else { return };
        // Under the context in use (restored, to renew) or else the paired one (no ID
        // Context), derived for this check only.
        let verified = if current {
            peer.ctx.verify_request(packet)
        } else {
            let mut base = peer.ctx.params().clone();
            base.id_context = None;
            peer.ctx.renewed(&base).verify_request(packet)
        };
        let settled = match &verified {
            Ok(_) => Outcome::Verified,
            Err(OscoreError::DecryptionFailed) => Outcome::Failed,
            Err(_) => Outcome::Unchecked,
        };
        peer.guard.settle(class, settled);
        if settled != Outcome::Unchecked {
            self.events.push_back(HubEvent::CheckpointNeeded { kid });
        }
        match verified {
            Ok(binding) => {
                let Some(peer) = self.peers.get_mut(&kid) else { return };
                let params = peer.ctx.params().clone();
                // Sealed under a one-time key: nothing durable depends on it.
                let renew = peer.renew.get_or_insert_with(Default::default);
                if let Ok(sealed) = renew.response_1(&params, packet, &binding, rng)
                    && let Some(bytes) = coap::encode(&sealed.packet)
                {
                    self.transmits.push_back(Transmit { to: from, bytes });
                }
            }
            Err(OscoreError::DecryptionFailed) => {
                self.counters.bad_tag += 1;
                self.security(SecurityEvent::BadTag { kid });
                self.park(kid, from, packet, ResponseType::BadRequest, b"Decryption failed");
            }
            Err(OscoreError::KeyLimitReached) => {
                self.counters.key_limit += 1;
                self.security(SecurityEvent::KeyLimit { kid });
                self.reply(from, packet, ResponseType::Unauthorized, b"Key limit reached");
            }
            Err(_) => {
                self.counters.bad_oscore += 1;
                self.security(SecurityEvent::Malformed("OSCORE message"));
                self.reply(from, packet, ResponseType::BadOption, b"bad OSCORE message");
            }
        }
        self.check_peer(kid);
    }

    /// RFC 8613 B.2 step 4: a request whose 'kid context' names an `R2` this hub issued and
    /// that verifies under the context it names (admitted by its failure budget like any):
    /// that context replaces the old one (the caller persists it, [`HubEvent::Renewed`],
    /// before the request's answer leaves) and the request goes on as usual under it. False
    /// (nothing changed) otherwise.
    fn renewal_request_2(&mut self, kid: Kid, kid_context: &[u8], packet: &Packet) -> bool {
        let Some(peer) = self.peers.get_mut(&kid) else { return false };
        let renew = peer.renew.as_ref();
        let Some(params) = renew.and_then(|r| r.candidate(peer.ctx.params(), kid_context)) else {
            return false;
        };
        let mut next = peer.ctx.renewed(&params);
        if next.verify_request(packet).is_err() {
            return false;
        }
        peer.ctx = next;
        peer.renew = None; // every `R2` is forgotten (`Pending::confirm`)
        peer.must_renew = false;
        peer.durable_window = peer.ctx.replay_window().clone();
        self.events.push_back(HubEvent::Renewed { kid, params });
        true
    }

    /// Keeps an unprotected answer whose sending reveals a verification's outcome until the
    /// checkpoint recording that outcome is durable.
    fn park(&mut self, kid: Kid, to: A, request: &Packet, code: ResponseType, payload: &[u8]) {
        let Some(peer) = self.peers.get_mut(&kid) else { return };
        let parked = peer.parked.get_or_insert_with(Default::default);
        if parked.next.replies.len() < super::PARKED
            && let Some(t) = super::unprotected(to, request, code, payload)
        {
            parked.next.replies.push(t);
        }
    }

    /// Answers a datagram over budget with an unprotected 4.01 carrying an outer Echo that only
    /// a party receiving at `from` can return (RFC 9175 §2.4), never larger than the datagram.
    #[allow(clippy::too_many_arguments)]
    fn challenge_routability<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        kid: Kid,
        from: A,
        request: &Packet,
        request_len: usize,
        known: bool,
        rng: &mut R,
    ) {
        let Some(value) = self.routability.challenge(now, &kid, from, known, rng) else { return };
        let mut p = coap::response(request, ResponseType::Unauthorized, Vec::new());
        p.add_option(CoapOption::Unknown(ECHO_OPTION), value.to_vec());
        if let Some(bytes) = coap::encode(&p).filter(|b| b.len() <= request_len) {
            self.counters.echo_challenges += 1;
            self.transmits.push_back(Transmit { to: from, bytes });
        }
    }

    /// Seals and sends a B.1.2 challenge whose request's tag verified, now that the checkpoint
    /// recording that (and reserving its encryption) is durable.
    pub(super) fn send_challenge(
        &mut self,
        kid: Kid,
        to: A,
        request: &Packet,
        binding: &RequestBinding,
    ) {
        let Some(peer) = self.peers.get_mut(&kid) else { return };
        if !peer.guard.may_encrypt(peer.ctx.usage()) {
            self.counters.echo_limited += 1;
            return;
        }
        match peer.ctx.echo_challenge(request, binding) {
            Ok(sealed) => {
                if let Some(bytes) = coap::encode(&sealed.packet) {
                    self.transmits.push_back(Transmit { to, bytes });
                }
            }
            Err(_) => self.counters.echo_limited += 1, // no durable lease yet
        }
        self.check_peer(kid);
    }

    /// An authenticated, fresh request becomes a ticket: nothing is answered before the caller
    /// has made the window that accepted it durable.
    fn accepted(&mut self, kid: Kid, from: A, request: Packet, binding: RequestBinding) {
        let post = request.header.code == MessageClass::Request(RequestType::Post);
        let path = coap::path(&request);
        let mut ticket =
            AckTicket { kid, from, binding, request, asked: super::types::Asked::Other };
        let event = match (post, path.as_str()) {
            (true, PATH_READINGS) => {
                ticket.asked = Asked::Reading;
                let payload = Payload(ticket.request.payload.clone());
                HubEvent::Reading { ticket, payload }
            }
            (true, PATH_REPORT) => match UpdateReport::decode(&ticket.request.payload) {
                Ok(report) => {
                    ticket.asked = Asked::Report;
                    HubEvent::Report { ticket, report }
                }
                Err(_) => HubEvent::Request { ticket },
            },
            _ => HubEvent::Request { ticket },
        };
        self.events.push_back(event);
    }

    /// The request behind `ticket` and the checkpoint that accepted it are durable: answer it
    /// (a reading or report gets 2.04 carrying the sensor's update offer, if any; any other
    /// request gets its resource) under the request's nonce, to the endpoint it came from.
    pub fn acknowledge(&mut self, ticket: AckTicket<A>) {
        let answer = match ticket.asked {
            Asked::Reading | Asked::Report => {
                let peer = self.peers.get_mut(&ticket.kid);
                let (offer, command) = match peer {
                    Some(p) => (
                        p.offer.as_ref().map(|o| o.offer().encode()),
                        p.command.take().map(|c| c.encode()),
                    ),
                    None => (None, None),
                };
                Answer {
                    code: ResponseType::Changed,
                    payload: offer.unwrap_or_default(),
                    block: None,
                    command,
                }
            }
            Asked::Other => {
                let (code, payload, block) = self.resource(&ticket);
                Answer { code, payload, block, command: None }
            }
        };
        self.respond(ticket, answer);
    }

    /// Refuses the reading behind `ticket` (e.g. its payload broke a limit) with a protected
    /// error response, so the sensor stops resending it. Like [`HubLink::acknowledge`], only
    /// after the checkpoint is durable.
    pub fn reject(&mut self, ticket: AckTicket<A>, code: ResponseType, diagnostic: &str) {
        let payload = diagnostic.as_bytes().to_vec();
        self.respond(ticket, Answer { code, payload, block: None, command: None });
    }

    /// Seals `answer` under the request's nonce and sends it to the request's source — or
    /// parks it until the next durable checkpoint raises the usage ceiling.
    pub(super) fn respond(&mut self, ticket: AckTicket<A>, answer: Answer) {
        let kid = ticket.kid;
        let Some(peer) = self.peers.get_mut(&kid) else { return };
        if !peer.guard.may_encrypt(peer.ctx.usage()) {
            let reservable = peer.guard.can_reserve(peer.ctx.usage());
            if reservable && peer.waiting.len() < WAITING {
                peer.waiting.push((ticket, answer));
                self.events.push_back(HubEvent::CheckpointNeeded { kid });
                return;
            }
            peer.unanswered = peer.unanswered.saturating_sub(1);
            if !reservable {
                // The encryption limit is spent: nothing more is sealed under this key.
                self.counters.key_limit += 1;
                self.security(SecurityEvent::KeyLimit { kid });
            }
            return;
        }
        peer.unanswered = peer.unanswered.saturating_sub(1);
        let mut plain = coap::response(&ticket.request, answer.code, answer.payload);
        if let Some(b) = answer.block {
            plain.add_option(CoapOption::Unknown(super::super::fw::BLOCK2), b);
        }
        if let Some(c) = answer.command {
            plain.add_option(CoapOption::Unknown(COMMAND_OPTION), c);
        }
        let sealed = match peer.ctx.protect_response(&plain, &ticket.binding, false) {
            Ok(s) => s,
            Err(OscoreError::KeyLimitReached) => {
                self.counters.key_limit += 1;
                self.security(SecurityEvent::KeyLimit { kid });
                return;
            }
            Err(_) => return,
        };
        let Some(bytes) = coap::encode(&sealed.packet) else { return };
        let (from, mid, piv) = (ticket.from, ticket.request.header.message_id, ticket.piv());
        if let Some(e) =
            peer.recent.iter_mut().find(|e| e.from == from && e.mid == mid && e.piv == piv)
        {
            e.response = Some(bytes.clone().into_boxed_slice());
        }
        self.transmits.push_back(Transmit { to: from, bytes });
        self.check_peer(kid);
    }
}
