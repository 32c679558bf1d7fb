//! Pairing sessions on the hub (TR 103 621 6.29 ex. 3; EN 303 645 5.1-5 applied to pairing):
//! unprotected `/p/hello`, `/p/proof`, `/p/done` with CoAP deduplication; one PIN attempt at a
//! time, and an attempt whose PIN was typed but that never finishes counts as a failure.
//!
//! What a hello may cost is budgeted ([`crate::pairing::HelloBudget`] and friends): a hello is
//! served only with a cookie proving its source address (Echo, RFC 9175) — else it is answered
//! 4.01 with one, statelessly —, then only within its host's share and the global rate of key
//! generations — else it is dropped unanswered and counted (`pairing_throttled`) —, and it gets a
//! session only where [`crate::pairing::seat`] finds a fair place (a host holding many yields to
//! one holding few). Sessions end when idle, `session_max_ms` after they started, when the
//! window closes, and all of them when it is opened again.

use std::collections::{HashMap, VecDeque};

use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use rand_core::CryptoRng;

use crate::oscore::{Kid, ReplayWindow, SecurityContext, SenderSequence};
use crate::pairing::{
    AwaitingPin, AwaitingSensorConfirm, Confirm, Descriptor, ECHO_OPTION, Held, HubPairing,
    PairingError, PairingRefused, PairingWindow, Pin, Seat, SensorHello, WindowConfig,
    hello_cookie_key, seat,
};
use crate::time::Millis;

use super::super::coap::{self, PATH_DONE, PATH_HELLO, PATH_PROOF};
use super::{
    EXCHANGE_LIFETIME_MS, Endpoint, HubEvent, HubLink, Peer, PinError, PlainKey, SecurityEvent,
    Transmit,
};
use crate::oscore::KeyUsage;

pub(super) enum Session<A> {
    /// Waiting for the owner's PIN. The sensor's `/p/proof` request is held unanswered (it
    /// retransmits) and answered the moment the PIN is typed.
    AwaitingPin {
        state: AwaitingPin,
        addr: A,
        created: Millis,
        seen: Millis,
        proof_request: Option<Packet>,
    },
    /// The PIN was typed: waiting for the sensor's confirmation (an unresolved attempt).
    AwaitingConfirm { state: AwaitingSensorConfirm, proof: Confirm, addr: A, seen: Millis },
}

/// Answered unprotected exchanges (RFC 7252 §4.5), found by hash: a flood of hellos costs a
/// lookup each, not a scan. Bounded in number and kept for EXCHANGE_LIFETIME.
pub(super) struct Dedup<A> {
    answers: HashMap<PlainKey<A>, (Millis, Vec<u8>)>,
    order: VecDeque<(PlainKey<A>, Millis)>,
    max: usize,
}

impl<A: Endpoint> Dedup<A> {
    pub(super) fn new(max: usize) -> Self {
        Self { answers: HashMap::new(), order: VecDeque::new(), max: max.max(1) }
    }

    fn pop_oldest(&mut self) {
        if let Some((key, at)) = self.order.pop_front()
            && self.answers.get(&key).is_some_and(|(t, _)| *t == at)
        {
            self.answers.remove(&key);
        }
    }

    /// The answer already given to `key`, if it is still remembered.
    fn get(&mut self, now: Millis, key: &PlainKey<A>) -> Option<&[u8]> {
        while self.order.front().is_some_and(|(_, at)| now >= at.plus(EXCHANGE_LIFETIME_MS)) {
            self.pop_oldest();
        }
        self.answers.get(key).map(|(_, bytes)| bytes.as_slice())
    }

    fn insert(&mut self, key: PlainKey<A>, now: Millis, bytes: Vec<u8>) {
        while self.answers.len() >= self.max && !self.order.is_empty() {
            self.pop_oldest();
        }
        self.order.push_back((key.clone(), now));
        self.answers.insert(key, (now, bytes));
    }
}

impl<A: Copy> Session<A> {
    fn addr(&self) -> A {
        match self {
            Self::AwaitingPin { addr, .. } | Self::AwaitingConfirm { addr, .. } => *addr,
        }
    }

    fn seen(&self) -> Millis {
        match self {
            Self::AwaitingPin { seen, .. } | Self::AwaitingConfirm { seen, .. } => *seen,
        }
    }
}

impl<A: Endpoint> HubLink<A> {
    /// Arms pairing for a bounded window (the owner's explicit action). Every session of an
    /// earlier window ends, and its hello cookies are void.
    pub fn open_pairing(&mut self, now: Millis, config: WindowConfig) {
        self.window = Some(PairingWindow::open(now, config));
        self.sessions.clear();
        self.cookie = None;
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

    /// Whether a typed PIN is still being confirmed (no second PIN is taken meanwhile).
    pub fn pin_unresolved(&self) -> bool {
        self.sessions.values().any(|s| matches!(s, Session::AwaitingConfirm { .. }))
            || !self.unconfirmed.is_empty()
    }

    /// The owner typed `pin` for the sensor `kid` (or for the only waiting one). The attempt
    /// is resolved by [`HubEvent::PairingConfirmed`] or a
    /// [`SecurityEvent::PairingFailed`] for the returned kid.
    pub fn enter_pin(&mut self, now: Millis, kid: Option<Kid>, pin: &str) -> Result<Kid, PinError> {
        let window = self.window.as_mut().ok_or(PinError::Refused(PairingRefused::Closed))?;
        window.admit(now)?;
        if self.pin_unresolved() {
            return Err(PinError::Unresolved);
        }
        let waiting = self.waiting_for_pin();
        let kid = match (kid, waiting.as_slice()) {
            (Some(k), _) => k,
            (None, [(k, _)]) => *k,
            (None, []) => return Err(PinError::NoSession),
            (None, _) => return Err(PinError::Ambiguous),
        };
        let Some(Session::AwaitingPin { state, .. }) = self.sessions.get(&kid) else {
            return Err(PinError::NoSession);
        };
        // Parse first: a mistyped PIN (wrong length) is not an attempt.
        let pin = Pin::parse(pin, state.width()).map_err(PinError::Pairing)?;
        let Some(Session::AwaitingPin { state, addr, proof_request, .. }) =
            self.sessions.remove(&kid)
        else {
            return Err(PinError::NoSession);
        };
        match state.enter_pin(&pin) {
            Ok((state, proof)) => {
                if let Some(request) = proof_request {
                    self.reply(addr, &request, ResponseType::Content, &proof.encode());
                    self.remember_plain(now, addr, &request);
                }
                let seen = now;
                self.sessions.insert(kid, Session::AwaitingConfirm { state, proof, addr, seen });
                Ok(kid)
            }
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
        self.push_dedup(key, now, bytes.clone());
        self.transmits.push_back(Transmit { to, bytes });
        self.events.push_back(HubEvent::PairingConfirmed { kid: *kid });
    }

    /// Ends sessions that have heard nothing for the idle limit; sessions waiting for their PIN
    /// also at their maximum age and once the window is closed (by time or after its failures).
    /// An unresolved attempt counts as a failure.
    pub(super) fn expire_sessions(&mut self, now: Millis) {
        let idle = self.config.session_idle_ms;
        let max_age = self.config.session_max_ms;
        let closed = self.window.as_ref().is_none_or(|w| {
            matches!(w.admit(now), Err(PairingRefused::Closed | PairingRefused::TooManyFailures))
        });
        let expired: Vec<Kid> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                now >= s.seen().plus(idle)
                    || matches!(s, Session::AwaitingPin { created, .. }
                        if closed || now >= created.plus(max_age))
            })
            .map(|(k, _)| *k)
            .collect();
        for kid in expired {
            if let Some(Session::AwaitingConfirm { .. }) = self.sessions.remove(&kid) {
                self.fail_pairing(now, kid, PairingError::Abandoned);
            }
        }
    }

    pub(super) fn handle_plain<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        from: A,
        packet: &Packet,
        rng: &mut R,
    ) {
        let key = (from, packet.header.message_id, packet.get_token().to_vec());
        if let Some(bytes) = self.dedup.get(now, &key) {
            let bytes = bytes.to_vec();
            self.counters.duplicates += 1;
            self.transmits.push_back(Transmit { to: from, bytes });
            return;
        }
        let before = self.transmits.len();
        let is_post = packet.header.code == MessageClass::Request(RequestType::Post);
        match (is_post, coap::path(packet).as_str()) {
            (true, PATH_HELLO) => self.on_hello(now, from, packet, rng),
            (true, PATH_PROOF) => self.on_proof(now, from, packet),
            (true, PATH_DONE) => self.on_done(now, from, packet),
            _ => {
                // Everything except pairing must be OSCORE-protected (5.5-5: authenticate first).
                self.counters.bad_request += 1;
                self.reply(from, packet, ResponseType::Unauthorized, b"OSCORE required");
            }
        }
        // Successful answers are remembered (a retransmitted hello must not start a second
        // session); refusals are stateless and recomputed, so junk cannot flush the cache.
        if self.transmits.len() == before + 1
            && self.transmits.back().is_some_and(|t| t.bytes.get(1).is_some_and(|c| c >> 5 == 2))
        {
            self.remember_plain(now, from, packet);
        }
    }

    /// Remembers the last transmit as the answer to `packet` from `from` (deduplication).
    fn remember_plain(&mut self, now: Millis, from: A, packet: &Packet) {
        if let Some(t) = self.transmits.back() {
            let key = (from, packet.header.message_id, packet.get_token().to_vec());
            let bytes = t.bytes.clone();
            self.push_dedup(key, now, bytes);
        }
    }

    fn push_dedup(&mut self, key: PlainKey<A>, now: Millis, bytes: Vec<u8>) {
        self.dedup.insert(key, now, bytes);
    }

    fn refuse(&mut self, from: A, packet: &Packet, why: PairingRefused) {
        self.counters.pairing_refused += 1;
        self.security(SecurityEvent::PairingRefused(why));
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
        // Return routability first: only a hello that proves it receives at its source address
        // costs more than this (RFC 9175 §2.4; a spoofed flood costs an HMAC per datagram).
        if !self.cookie_ok(now, from, packet, rng) {
            return;
        }
        let host = from.host();
        if self.budget.check(now, &host).is_err() {
            return self.throttled();
        }
        let hello = match SensorHello::decode(&packet.payload) {
            Ok(h) => h,
            Err(e) => {
                self.malformed("pairing hello");
                let why = e.to_string();
                return self.reply(from, packet, ResponseType::BadRequest, why.as_bytes());
            }
        };
        self.expire_sessions(now);
        // A sensor that restarts pairing (fresh key, fresh PIN) supersedes its own earlier attempt
        // from the same endpoint, so the owner's PIN goes to the attempt the display shows.
        self.sessions.retain(|_, s| match s {
            Session::AwaitingPin { state, addr, .. } => {
                *addr != from || state.descriptor().serial != hello.descriptor.serial
            }
            Session::AwaitingConfirm { .. } => true,
        });
        let held: Vec<Held<Kid, A::Host>> = self
            .sessions
            .iter()
            .map(|(k, s)| Held {
                key: *k,
                host: s.addr().host(),
                created: match s {
                    Session::AwaitingPin { created, .. } => *created,
                    Session::AwaitingConfirm { seen, .. } => *seen,
                },
                evictable: matches!(s, Session::AwaitingPin { .. }),
            })
            .collect();
        let evict =
            match seat(&held, host, self.config.max_sessions, self.config.sessions_per_source) {
                Seat::Full => return self.refuse(from, packet, PairingRefused::Busy),
                Seat::Free => None,
                Seat::Evict(k) => Some(k),
            };
        if self.budget.grant(now, &host).is_err() {
            return self.throttled();
        }
        if let Some(k) = evict {
            // Sessions held by hosts with more than this one cannot keep it out; the evicted
            // sensor's next proof request hears "no such pairing" and it starts over.
            self.sessions.remove(&k);
        }
        let kid = self.fresh_kid(rng);
        match HubPairing::start(rng, hello, kid, self.config.hub_kid) {
            Ok((state, hub_hello)) => {
                let descriptor = state.descriptor().clone();
                let session = Session::AwaitingPin {
                    state,
                    addr: from,
                    created: now,
                    seen: now,
                    proof_request: None,
                };
                self.sessions.insert(kid, session);
                self.events.push_back(HubEvent::PairingRequested { kid, descriptor });
                self.reply(from, packet, ResponseType::Created, &hub_hello.encode());
            }
            Err(e) => self.reply(from, packet, ResponseType::BadRequest, e.to_string().as_bytes()),
        }
    }

    /// Whether the hello carries this window's cookie for its source endpoint; if not, it is
    /// answered 4.01 with one in an Echo option (stateless: nothing is kept, nothing counted).
    fn cookie_ok<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        from: A,
        packet: &Packet,
        rng: &mut R,
    ) -> bool {
        let cookie = self.cookie.get_or_insert_with(|| hello_cookie_key(rng));
        let endpoint = crate::echo::endpoint_bytes(&from);
        let echo = packet.get_first_option(CoapOption::Unknown(ECHO_OPTION));
        if echo.is_some_and(|v| cookie.check(now, &endpoint, v)) {
            return true;
        }
        if packet.header.get_type() == coap_lite::MessageType::NonConfirmable {
            return false; // errors to non-confirmable requests are not sent
        }
        let minted = cookie.mint(now, &endpoint);
        let mut p = super::super::coap::response(packet, ResponseType::Unauthorized, Vec::new());
        p.add_option(CoapOption::Unknown(ECHO_OPTION), minted.to_vec());
        if let Some(bytes) = super::super::coap::encode(&p) {
            self.transmits.push_back(Transmit { to: from, bytes });
        }
        false
    }

    /// A hello over its host's share or the global budget: dropped unanswered (its sensor
    /// retransmits) and counted.
    fn throttled(&mut self) {
        self.counters.pairing_throttled += 1;
        self.security(SecurityEvent::PairingRefused(PairingRefused::Throttled));
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

    fn on_proof(&mut self, now: Millis, from: A, packet: &Packet) {
        let Ok(kid) = Kid::new(&packet.payload) else {
            self.malformed("pairing proof request");
            return self.reply(from, packet, ResponseType::BadRequest, b"bad kid");
        };
        match self.sessions.get_mut(&kid) {
            // An attempt whose PIN was typed ends a fixed time after the PIN (its `seen` is not
            // refreshed), so a peer that keeps asking cannot hold it unresolved.
            Some(Session::AwaitingConfirm { proof, addr, .. }) if *addr == from => {
                let body = proof.encode();
                self.reply(from, packet, ResponseType::Content, &body);
            }
            Some(Session::AwaitingPin { addr, seen, proof_request, .. }) if *addr == from => {
                // Not yet: the owner has not typed the PIN. Hold the request; it is answered the
                // moment the PIN is typed (its retransmissions keep the session alive).
                *seen = now;
                *proof_request = Some(packet.clone());
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
        // Only the endpoint that started the session may finish (or abort) it.
        match self.sessions.get(&kid) {
            Some(s @ Session::AwaitingConfirm { .. }) if s.addr() == from => {}
            _ => return self.reply(from, packet, ResponseType::NotFound, b"no such pairing"),
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
                self.peers.insert(kid, Box::new(Peer::new(ctx, Some(from), KeyUsage::default())));
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
        self.security(SecurityEvent::PairingFailed { kid, reason });
    }
}

/// Whether a datagram carries an OSCORE option (number 9), read from the raw bytes without
/// parsing the message (RFC 7252 §3.1: header, token, then options by ascending number). A
/// malformed datagram reads as unprotected.
pub(super) fn carries_oscore(bytes: &[u8]) -> bool {
    const OSCORE: u32 = 9;
    let Some(&first) = bytes.first() else { return false };
    let mut i = 4 + usize::from(first & 0x0f);
    let mut number = 0u32;
    // An extended delta or length nibble (13: one more byte + 13; 14: two more + 269).
    let extended = |nibble: u8, i: &mut usize| -> Option<u32> {
        match nibble {
            13 => {
                let v = *bytes.get(*i)?;
                *i += 1;
                Some(u32::from(v) + 13)
            }
            14 => {
                let v = u16::from_be_bytes([*bytes.get(*i)?, *bytes.get(*i + 1)?]);
                *i += 2;
                Some(u32::from(v) + 269)
            }
            15 => None,
            n => Some(u32::from(n)),
        }
    };
    while let Some(&b) = bytes.get(i) {
        i += 1;
        let Some(delta) = extended(b >> 4, &mut i) else { return false };
        let Some(len) = extended(b & 0x0f, &mut i) else { return false };
        number += delta;
        if number >= OSCORE {
            return number == OSCORE;
        }
        i += len as usize;
    }
    false
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

#[cfg(test)]
mod tests {
    use coap_lite::{CoapOption, MessageClass, Packet, RequestType};
    use proptest::prelude::*;

    use super::carries_oscore;

    proptest! {
        /// The raw scan agrees with the full parser on any request the parser can encode:
        /// options below, at and above 9, long values (extended lengths), large numbers
        /// (extended deltas), tokens of every length, payloads.
        #[test]
        fn the_oscore_scan_agrees_with_the_parser(
            token in proptest::collection::vec(any::<u8>(), 0..=8),
            options in proptest::collection::vec((1u16..2000, proptest::collection::vec(any::<u8>(), 0..300)), 0..6),
            oscore in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            payload in proptest::collection::vec(any::<u8>(), 0..50),
        ) {
            let mut p = Packet::new();
            p.header.code = MessageClass::Request(RequestType::Post);
            p.set_token(token);
            for (n, v) in options {
                if n != 9 {
                    p.add_option(CoapOption::from(n), v);
                }
            }
            if let Some(v) = oscore {
                p.add_option(CoapOption::Oscore, v);
            }
            p.payload = payload;
            let bytes = p.to_bytes_unlimited().expect("encode");
            let parsed = Packet::from_bytes(&bytes).expect("parse");
            prop_assert_eq!(carries_oscore(&bytes), parsed.get_option(CoapOption::Oscore).is_some());
        }

        /// Junk never panics the scan.
        #[test]
        fn the_oscore_scan_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = carries_oscore(&bytes);
        }
    }
}
