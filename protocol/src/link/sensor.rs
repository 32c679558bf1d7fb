//! The sensor's link endpoint: pairing as a CoAP client, then readings over OSCORE with one
//! confirmable request in flight, retransmitted with back-off until the hub acknowledges it
//! (RFC 7252 §4.2); Echo recovery after a hub restart (RFC 8613 B.1.2); and return routability
//! (RFC 9175): when the hub answers with an unprotected 4.01 carrying an outer Echo (its
//! budget for our source is spent, e.g. by someone spoofing our address), the request goes
//! again at once with that Echo as an outer option, and later requests carry it while fresh.

use std::collections::VecDeque;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};
use rand_core::CryptoRng;

use crate::oscore::{Kid, Lease, RequestBinding, SecurityContext, echo_value};
use crate::pairing::{
    AwaitingHubHello, AwaitingHubProof, Confirm, Descriptor, HubHello, MaskWidth, Paired,
    PairingError, Pin, SensorPairing,
};
use crate::time::Millis;

use super::coap::{self, PATH_DONE, PATH_HELLO};
use super::fw::{BLOCK2, Block, LinkOffer, UpdateOffer, UpdateReport};
use super::hub::encode_done;

mod send;

/// Firmware requests sent in a row before a waiting reading goes out.
const CONTROL_BURST: u8 = 8;
/// A return-routability value is attached to new requests for this long after it arrived (the
/// hub accepts it for at least [`super::hub::ROUTABILITY_SLOT_MS`]).
const ROUTABILITY_REUSE_MS: u64 = super::hub::ROUTABILITY_SLOT_MS - 2_000;
/// Immediate resends one exchange may make in answer to routability challenges (an on-path
/// forger could send many; later ones wait for the retransmission timer).
const ROUTABILITY_RESENDS: u8 = 2;

/// What the sensor link tells its caller.
#[derive(Debug)]
pub enum SensorEvent {
    /// Show this PIN on the display.
    ShowPin(Pin),
    /// Pairing finished: persist the context (with its first lease) to flash.
    Paired(Box<Paired>),
    /// Pairing failed; the attempt's key is gone. Start again for a new PIN.
    PairingFailed(PairingError),
    /// The hub refused pairing (window closed or backing off), or forgot the attempt (its window
    /// closed or the session expired before the PIN was typed): the hub's reason, as printable
    /// text of at most 160 characters.
    PairingRefused(String),
    /// The hub renewed our context (RFC 8613 B.2, e.g. it was restored from a backup): persist
    /// these inputs in place of the old ones. Requests go on under them (sequence numbers go on
    /// rising). If the hub does not know them (an unauthenticated "context not found"), the
    /// link goes back to the paired context (no ID Context; also reported with this event),
    /// whose next request starts a renewal again: losing this event in a crash costs a renewal,
    /// never the link.
    Renewed(Box<crate::oscore::ContextParams>),
    /// The hub acknowledged reading `id`: it is durable there and can be dropped here.
    Delivered(u64),
    /// The hub refused reading `id` (authenticated error response); it was dropped.
    Refused(u64),
    /// The hub offers a firmware update (inside an authenticated acknowledgement).
    UpdateOffered(LinkOffer),
    /// The signed manifest of `version` (for sensors that verify signatures themselves).
    Manifest {
        /// Version asked for.
        version: u32,
        /// COSE_Sign1 bytes.
        bytes: Vec<u8>,
    },
    /// One image block.
    Block {
        /// Version.
        version: u32,
        /// Byte offset.
        offset: u64,
        /// Data.
        data: Vec<u8>,
        /// More blocks follow.
        more: bool,
    },
    /// A firmware request was refused by the hub (e.g. the update was cancelled).
    FirmwareRefused {
        /// Version.
        version: u32,
    },
    /// An update report reached the hub durably.
    ReportDelivered {
        /// Version reported on.
        version: u32,
    },
    /// Persist this lease, then report it with [`SensorLink::lease_durable`].
    LeaseNeeded(Lease),
    /// The hub sent a command (inside an authenticated acknowledgement): apply it and report
    /// the result in the next reading.
    Command(super::command::Command),
    /// The hub answered a protected request with an error this sensor cannot recover from
    /// by itself (e.g. it was removed): the reading stays queued.
    LinkError(&'static str),
}

enum Phase {
    Unpaired,
    /// The hello is out; the PIN is shown once the hub has taken it (so the owner never types a
    /// PIN the hub has not heard of, e.g. while it throttles hellos from this host).
    Hello(AwaitingHubHello, Pin),
    Proof {
        state: AwaitingHubProof,
        kid: Kid,
    },
    Done {
        paired: Box<Paired>,
        kid: Kid,
        reply: Option<Confirm>,
    },
    Linked(Box<SecurityContext>),
}

enum Purpose {
    /// A hello; `echoes` counts the hub's cookie challenges answered in this attempt.
    Hello {
        echoes: u8,
    },
    Proof,
    Done,
    /// An OSCORE-protected exchange.
    Protected {
        binding: RequestBinding,
        what: What,
    },
}

/// What a protected exchange is for.
#[derive(Debug, Clone)]
enum What {
    Reading(u64),
    Control(Control),
}

/// A firmware request: fetch the manifest, fetch an image block, or report an outcome.
#[derive(Debug, Clone)]
enum Control {
    Manifest { version: u32 },
    Block { version: u32, block: Block },
    Report(UpdateReport),
}

struct Outstanding {
    bytes: Vec<u8>,
    /// An unprotected error answered this request: retransmit it as a fresh request.
    unverified_error: bool,
    /// Resends made at once in answer to routability challenges.
    routability_resends: u8,
    token: Vec<u8>,
    retries: u32,
    next_retry: Millis,
    purpose: Purpose,
}

/// One sensor's link to its hub.
pub struct SensorLink {
    phase: Phase,
    out: Option<Outstanding>,
    readings: VecDeque<(u64, Vec<u8>)>,
    control: VecDeque<Control>,
    control_streak: u8,
    echo: Option<Vec<u8>>,
    /// The hub's last return-routability value for our address, and when it came.
    routability: Option<(Vec<u8>, Millis)>,
    lease_block: u64,
    token_prefix: Option<u32>,
    next_mid: u16,
    next_token: u32,
    not_before: Millis,
    /// Retransmission intervals double at most this many times (a probing sensor's cap).
    max_doublings: u32,
    /// When an authenticated answer last arrived.
    last_answer: Millis,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<SensorEvent>,
}

impl core::fmt::Debug for SensorLink {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SensorLink")
            .field("paired", &self.is_paired())
            .field("queued", &self.readings.len())
            .finish_non_exhaustive()
    }
}

impl SensorLink {
    /// A sensor that is not paired yet.
    pub fn unpaired<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self {
            phase: Phase::Unpaired,
            out: None,
            readings: VecDeque::new(),
            control: VecDeque::new(),
            control_streak: 0,
            echo: None,
            routability: None,
            lease_block: crate::oscore::DEFAULT_LEASE_BLOCK,
            token_prefix: None,
            next_mid: rng.next_u32() as u16,
            next_token: rng.next_u32(),
            not_before: Millis(0),
            max_doublings: u32::MAX,
            last_answer: Millis(0),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A paired sensor restored from flash.
    pub fn paired<R: CryptoRng + ?Sized>(rng: &mut R, ctx: SecurityContext) -> Self {
        let mut s = Self::unpaired(rng);
        s.phase = Phase::Linked(Box::new(ctx));
        s
    }

    /// Sets the sequence lease block K for a context created by pairing (default 1000).
    pub fn with_lease_block(mut self, k: u64) -> Self {
        self.lease_block = k.max(1);
        self
    }

    /// Caps the retransmission interval near `ms` (at least [`coap::ACK_TIMEOUT_MS`]): how often
    /// a sensor whose hub is unreachable tries again (default: [`coap::MAX_BACKOFF_MS`]).
    pub fn with_max_backoff(mut self, ms: u64) -> Self {
        self.max_doublings = (ms / coap::ACK_TIMEOUT_MS).max(1).ilog2();
        self
    }

    /// When the hub last answered a protected request authentically (`Millis(0)`: never).
    pub fn last_answer(&self) -> Millis {
        self.last_answer
    }

    /// Prefixes every token with `prefix` (8-byte tokens), so that a fleet sharing one socket
    /// can route responses to the sensor that sent the request.
    pub fn with_token_prefix(mut self, prefix: u32) -> Self {
        self.token_prefix = Some(prefix);
        self
    }

    /// The sensor a token belongs to, for tokens made under [`SensorLink::with_token_prefix`].
    pub fn token_owner(token: &[u8]) -> Option<u32> {
        let prefix: [u8; 4] = token.get(..4)?.try_into().ok()?;
        (token.len() == 8).then(|| u32::from_be_bytes(prefix))
    }

    /// Whether an OSCORE context is in use.
    pub fn is_paired(&self) -> bool {
        matches!(self.phase, Phase::Linked(_))
    }

    /// The OSCORE context, once paired.
    pub fn context(&self) -> Option<&SecurityContext> {
        match &self.phase {
            Phase::Linked(c) => Some(c),
            _ => None,
        }
    }

    /// Readings waiting for an acknowledgement.
    pub fn queued(&self) -> usize {
        self.readings.len()
    }

    /// Starts (or restarts) pairing with a fresh ephemeral key; the PIN comes as an event once
    /// the hub has answered the hello.
    pub fn start_pairing<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        rng: &mut R,
        descriptor: Descriptor,
        width: MaskWidth,
    ) {
        let (state, hello, pin) = SensorPairing::start(rng, descriptor, width);
        self.phase = Phase::Hello(state, pin);
        self.out = None;
        let token = self.token();
        let request = coap::post(self.mid(), &token, PATH_HELLO, hello.encode());
        self.send(now, rng, request, token, Purpose::Hello { echoes: 0 });
    }

    /// Queues a reading (a SenML payload) under the caller's id.
    pub fn queue_reading<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        rng: &mut R,
        id: u64,
        payload: Vec<u8>,
    ) {
        self.readings.push_back((id, payload));
        self.pump(now, rng);
    }

    /// Asks the hub for the signed manifest of `version`.
    pub fn fetch_manifest<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        rng: &mut R,
        version: u32,
    ) {
        self.control.push_back(Control::Manifest { version });
        self.pump(now, rng);
    }

    /// Asks the hub for block `num` (size 2^(szx+4)) of the image of `version`.
    pub fn fetch_block<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        rng: &mut R,
        version: u32,
        num: u32,
        szx: u8,
    ) {
        let block = Block { num, more: false, szx };
        self.control.push_back(Control::Block { version, block });
        self.pump(now, rng);
    }

    /// Reports an update's outcome to the hub.
    pub fn report<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        rng: &mut R,
        report: UpdateReport,
    ) {
        self.control.push_back(Control::Report(report));
        self.pump(now, rng);
    }

    /// Reports a lease durable.
    pub fn lease_durable<R: CryptoRng + ?Sized>(&mut self, now: Millis, rng: &mut R, lease: Lease) {
        if let Phase::Linked(ctx) = &mut self.phase {
            ctx.lease_durable(lease);
        }
        self.pump(now, rng);
    }

    /// Next datagram to send to the hub.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<SensorEvent> {
        self.events.pop_front()
    }

    /// When [`SensorLink::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Millis> {
        match &self.out {
            Some(o) => Some(o.next_retry),
            None if self.not_before > Millis(0) && matches!(self.phase, Phase::Proof { .. }) => {
                Some(self.not_before)
            }
            None => None,
        }
    }

    /// Retransmits, or sends what waited for a back-off.
    pub fn handle_timeout<R: CryptoRng + ?Sized>(&mut self, now: Millis, rng: &mut R) {
        if let Some(o) = &mut self.out {
            if now < o.next_retry {
                return;
            }
            if o.unverified_error {
                // At most one fresh request per retransmission interval, so a forged error
                // cannot make the sensor burn sequence numbers faster than its back-off.
                let retries = o.retries + 1;
                if let Some(Outstanding {
                    purpose: Purpose::Protected { what: What::Control(c), .. },
                    ..
                }) = self.out.take()
                {
                    self.control.push_front(c);
                }
                self.pump(now, rng);
                let wait = self.retransmit_timeout(retries, rng);
                if let Some(o) = &mut self.out {
                    o.retries = retries;
                    o.next_retry = now.plus(wait);
                }
                return;
            }
            o.retries += 1;
            let retries = o.retries;
            let bytes = o.bytes.clone();
            let wait = self.retransmit_timeout(retries, rng);
            if let Some(o) = &mut self.out {
                o.next_retry = now.plus(wait);
            }
            self.transmits.push_back(bytes);
            return;
        }
        self.pump(now, rng);
    }

    /// Handles a datagram from the hub.
    pub fn handle_datagram<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        bytes: &[u8],
        rng: &mut R,
    ) {
        let Ok(packet) = Packet::from_bytes(bytes) else { return };
        let Some(out) = &self.out else { return };
        if packet.get_token() != out.token.as_slice()
            || !matches!(packet.header.code, MessageClass::Response(_))
        {
            return;
        }
        if packet.header.get_type() == MessageType::Confirmable {
            return; // the hub answers piggy-backed only
        }
        if let Some(Purpose::Protected { .. }) = self.out.as_ref().map(|o| &o.purpose) {
            return self.on_protected_response(now, rng, &packet);
        }
        let Some(out) = self.out.take() else { return };
        match out.purpose {
            Purpose::Hello { echoes } => {
                if !self.echo_hello(now, rng, &packet, &out.bytes, echoes) {
                    self.on_hello_response(now, &packet);
                }
            }
            Purpose::Proof => self.on_proof_response(now, &packet),
            Purpose::Done => self.on_done_response(&packet),
            Purpose::Protected { .. } => {}
        }
        self.pump(now, rng);
    }

    fn mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    fn token(&mut self) -> Vec<u8> {
        self.next_token = self.next_token.wrapping_add(1);
        let mut t = Vec::with_capacity(8);
        if let Some(p) = self.token_prefix {
            t.extend_from_slice(&p.to_be_bytes());
        }
        t.extend_from_slice(&self.next_token.to_be_bytes());
        t
    }

    fn send<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        rng: &mut R,
        packet: Packet,
        token: Vec<u8>,
        purpose: Purpose,
    ) {
        let Some(bytes) = coap::encode(&packet) else {
            self.events.push_back(SensorEvent::LinkError("message too large"));
            return;
        };
        self.transmits.push_back(bytes.clone());
        let next_retry = now.plus(self.retransmit_timeout(0, rng));
        self.out = Some(Outstanding {
            bytes,
            unverified_error: false,
            routability_resends: 0,
            token,
            retries: 0,
            next_retry,
            purpose,
        });
    }

    fn retransmit_timeout<R: CryptoRng + ?Sized>(&self, retries: u32, rng: &mut R) -> u64 {
        coap::retransmit_timeout(retries.min(self.max_doublings), jitter(rng))
    }

    fn fail(&mut self, e: PairingError) {
        self.phase = Phase::Unpaired;
        self.events.push_back(SensorEvent::PairingFailed(e));
    }

    /// The hub asks the hello to prove its source address (4.01 with an Echo option, RFC 9175
    /// §2.4): sends the same hello again with the Echo value, at most twice per attempt (a
    /// cookie may expire in between once). Returns whether it did.
    fn echo_hello<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        rng: &mut R,
        p: &Packet,
        hello: &[u8],
        echoes: u8,
    ) -> bool {
        let echo = CoapOption::Unknown(crate::pairing::ECHO_OPTION);
        let challenge = p.header.code == MessageClass::Response(ResponseType::Unauthorized);
        let (Some(value), true, true) = (p.get_first_option(echo), challenge, echoes < 2) else {
            return false;
        };
        if value.len() > 40 || !matches!(self.phase, Phase::Hello(..)) {
            return false; // RFC 9175 §2.2: Echo values are 1 to 40 bytes
        }
        let Ok(mut request) = Packet::from_bytes(hello) else { return false };
        let token = self.token();
        request.header.message_id = self.mid();
        request.set_token(token.clone());
        request.set_option(echo, [value.clone()].into_iter().collect());
        self.send(now, rng, request, token, Purpose::Hello { echoes: echoes + 1 });
        true
    }

    fn on_hello_response(&mut self, now: Millis, p: &Packet) {
        if p.header.code != MessageClass::Response(ResponseType::Created) {
            self.phase = Phase::Unpaired;
            self.events.push_back(SensorEvent::PairingRefused(refusal(p)));
            return;
        }
        let Phase::Hello(state, pin) = core::mem::replace(&mut self.phase, Phase::Unpaired) else {
            return;
        };
        let hub = match HubHello::decode(&p.payload) {
            Ok(h) => h,
            Err(e) => return self.fail(e),
        };
        let kid = hub.sensor_kid;
        match state.on_hub_hello(hub) {
            Ok(state) => {
                self.phase = Phase::Proof { state, kid };
                self.not_before = now;
                self.events.push_back(SensorEvent::ShowPin(pin));
            }
            Err(e) => self.fail(e),
        }
    }

    fn on_proof_response(&mut self, now: Millis, p: &Packet) {
        if p.header.code == MessageClass::Response(ResponseType::ServiceUnavailable) {
            let secs = p
                .get_first_option(CoapOption::MaxAge)
                .map_or(1, |v| v.iter().take(4).fold(0u64, |acc, &b| (acc << 8) | u64::from(b)));
            self.not_before = now.plus(secs.clamp(1, 60) * 1000);
            return;
        }
        let Phase::Proof { state, kid } = core::mem::replace(&mut self.phase, Phase::Unpaired)
        else {
            return;
        };
        if p.header.code == MessageClass::Response(ResponseType::NotFound) {
            // The hub no longer holds this attempt (its window closed or the session expired).
            let why = "the hub no longer holds this attempt (window closed or session expired)";
            self.events.push_back(SensorEvent::PairingRefused(why.into()));
            return;
        }
        if p.header.code != MessageClass::Response(ResponseType::Content) {
            return self.fail(PairingError::Malformed);
        }
        let result = Confirm::decode(&p.payload).and_then(|c| state.on_hub_confirm(&c));
        match result {
            Ok((paired, reply)) => {
                self.phase = Phase::Done { paired: Box::new(paired), kid, reply: Some(reply) };
            }
            Err(e) => {
                // Tell the hub (so it counts the failure), then give up this attempt.
                let token = self.token();
                let request = coap::post(self.mid(), &token, PATH_DONE, encode_done(&kid, None));
                self.events.push_back(SensorEvent::PairingFailed(e));
                if let Some(bytes) = coap::encode(&request) {
                    self.transmits.push_back(bytes);
                }
            }
        }
    }

    fn on_done_response(&mut self, p: &Packet) {
        let Phase::Done { paired, .. } = core::mem::replace(&mut self.phase, Phase::Unpaired)
        else {
            return;
        };
        if p.header.code != MessageClass::Response(ResponseType::Changed) {
            return self.fail(PairingError::SensorProofInvalid);
        }
        let seq = crate::oscore::SenderSequence::new(self.lease_block);
        let ctx = SecurityContext::new(&paired.context, seq, crate::oscore::ReplayWindow::Empty);
        self.phase = Phase::Linked(Box::new(ctx));
        self.events.push_back(SensorEvent::Paired(paired));
    }

    /// A response to the protected request in flight. Only a response that authenticates ends
    /// the exchange: the token is sent in clear, so anything unverified (an unprotected error, a
    /// forgery) is noted and otherwise ignored, and retransmission goes on.
    fn on_protected_response<R: CryptoRng + ?Sized>(
        &mut self,
        now: Millis,
        rng: &mut R,
        p: &Packet,
    ) {
        let Phase::Linked(ctx) = &mut self.phase else { return };
        let Some(out) = &mut self.out else { return };
        let Purpose::Protected { binding, what } = &out.purpose else { return };
        if p.get_option(CoapOption::Oscore).is_none() {
            if p.header.code == MessageClass::Response(ResponseType::Unauthorized)
                && let Some(value) = echo_value(p)
            {
                return self.on_routability_challenge(now, value.to_vec());
            }
            if p.header.code == MessageClass::Response(ResponseType::Unauthorized)
                && p.payload == b"Security context not found"
                && ctx.id_context().is_some()
            {
                // The hub does not know our renewed context (it restarted before making it
                // durable, or was restored from an older backup): back to the paired context,
                // whose next request starts a renewal (RFC 8613 B.2). Unauthenticated, so a
                // forger can make us renew again, never reuse a nonce: our sequence goes on.
                let mut base = ctx.params().clone();
                base.id_context = None;
                **ctx = ctx.renewed(&base);
                self.events.push_back(SensorEvent::Renewed(Box::new(base)));
                let what = what.clone();
                self.out = None;
                if let What::Control(c) = what {
                    self.control.push_front(c);
                }
                return self.pump(now, rng);
            }
            // E.g. "Replay detected" from a hub that restarted and lost our answer: the next
            // retransmission goes out as a fresh request (the hub stores a reading idempotently).
            out.unverified_error = true;
            return;
        }
        if crate::oscore::renew::is_response_1(p) {
            // RFC 8613 B.2 Response #1: the hub renews our context before it uses it.
            let Ok(params) = crate::oscore::renew::on_response_1(ctx.params(), p, binding, rng)
            else {
                return;
            };
            **ctx = ctx.renewed(&params);
            self.events.push_back(SensorEvent::Renewed(Box::new(params)));
            let what = what.clone();
            self.out = None;
            self.last_answer = now;
            if let What::Control(c) = what {
                self.control.push_front(c);
            }
            return self.pump(now, rng);
        }
        let Ok(inner) = ctx.unprotect_response(p, binding) else { return };
        let what = what.clone();
        self.out = None;
        self.last_answer = now;
        if inner.header.code == MessageClass::Response(ResponseType::Unauthorized) {
            // B.1.2: the hub restarted and asks us to echo its challenge; the request goes again.
            self.echo = echo_value(&inner).map(<[u8]>::to_vec);
            if let What::Control(c) = what {
                self.control.push_front(c);
            }
            return self.pump(now, rng);
        }
        self.echo = None;
        match what {
            What::Reading(id) => self.on_reading_answer(id, &inner),
            What::Control(c) => self.on_control_answer(c, &inner),
        }
        self.pump(now, rng);
    }

    /// The hub asks us to prove we receive at our address (RFC 9175): the request in flight goes
    /// again with its value as an outer Echo (same protected request, new Message ID). The
    /// challenge is unauthenticated, so it changes nothing else: a forged one costs a resend.
    fn on_routability_challenge(&mut self, now: Millis, value: Vec<u8>) {
        if value.is_empty() || value.len() > 40 {
            return; // RFC 9175 §2.2.1: 1 to 40 bytes
        }
        self.routability = Some((value.clone(), now));
        let mid = self.mid();
        let Some(out) = &mut self.out else { return };
        let Ok(mut packet) = Packet::from_bytes(&out.bytes) else { return };
        packet.header.message_id = mid;
        packet.clear_option(CoapOption::Unknown(super::hub::ECHO_OPTION));
        packet.add_option(CoapOption::Unknown(super::hub::ECHO_OPTION), value);
        let Some(bytes) = coap::encode(&packet) else { return };
        out.bytes = bytes.clone();
        if out.routability_resends < ROUTABILITY_RESENDS {
            out.routability_resends += 1;
            self.transmits.push_back(bytes);
        }
    }

    fn on_reading_answer(&mut self, id: u64, inner: &Packet) {
        if self.readings.front().is_some_and(|(rid, _)| *rid == id) {
            self.readings.pop_front();
        }
        match inner.header.code {
            MessageClass::Response(ResponseType::Changed | ResponseType::Created) => {
                self.events.push_back(SensorEvent::Delivered(id));
                // An acknowledgement may carry an update offer (authenticated with it).
                if let Ok(offer) = UpdateOffer::decode(&inner.payload) {
                    self.events.push_back(SensorEvent::UpdateOffered(LinkOffer::new(offer)));
                }
                let command = inner
                    .get_first_option(CoapOption::Unknown(super::command::COMMAND_OPTION))
                    .and_then(|v| super::command::Command::decode(v).ok());
                if let Some(c) = command {
                    self.events.push_back(SensorEvent::Command(c));
                }
            }
            // The hub authenticated and refused this reading (e.g. it broke a limit):
            // resending it cannot help.
            _ => self.events.push_back(SensorEvent::Refused(id)),
        }
    }

    fn on_control_answer(&mut self, c: Control, inner: &Packet) {
        let ok = matches!(
            inner.header.code,
            MessageClass::Response(ResponseType::Content | ResponseType::Changed)
        );
        let event = match (c, ok) {
            (Control::Manifest { version }, true) => {
                SensorEvent::Manifest { version, bytes: inner.payload.clone() }
            }
            (Control::Block { version, block }, true) => {
                let got = inner
                    .get_first_option(CoapOption::Unknown(BLOCK2))
                    .and_then(|v| Block::decode(v).ok());
                match got {
                    Some(b) if b.num == block.num => SensorEvent::Block {
                        version,
                        offset: b.offset(),
                        data: inner.payload.clone(),
                        more: b.more,
                    },
                    _ => SensorEvent::FirmwareRefused { version },
                }
            }
            (Control::Report(r), true) => SensorEvent::ReportDelivered { version: r.version },
            (Control::Manifest { version } | Control::Block { version, .. }, false) => {
                SensorEvent::FirmwareRefused { version }
            }
            (Control::Report(r), false) => SensorEvent::FirmwareRefused { version: r.version },
        };
        self.events.push_back(event);
    }
}

fn jitter<R: CryptoRng + ?Sized>(rng: &mut R) -> f64 {
    f64::from(rng.next_u32()) / f64::from(u32::MAX)
}

/// Longest refusal reason a sensor keeps from the hub's answer.
const MAX_REASON: usize = 160;

/// The reason in a pairing refusal: the response code and the hub's diagnostic payload
/// (RFC 7252 §5.5.2), kept only as printable text and cut at [`MAX_REASON`] characters.
fn refusal(p: &Packet) -> String {
    let code = match p.header.code {
        MessageClass::Response(r) => format!("{r:?}"),
        other => format!("{other:?}"),
    };
    let text: String = String::from_utf8_lossy(&p.payload)
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON)
        .collect();
    if text.is_empty() { code } else { text }
}
