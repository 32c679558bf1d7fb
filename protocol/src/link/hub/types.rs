//! What the hub link exchanges with its caller: settings, events, tickets, counters and the
//! durable per-sensor state it asks the caller to persist.

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};

use coap_lite::Packet;

use crate::oscore::{ContextParams, KeyUsage, Kid, Lease, NeedsRekey, RequestBinding, WindowState};
use crate::pairing::{Descriptor, HelloLimits, PairingError, PairingRefused};
use crate::update::{VerifiedImage, VerifiedManifest};

use super::super::fw::{UpdateOffer, UpdateReport};
use super::guard::GuardState;

/// A datagram source: an endpoint on a host. Limits that must hold against one host using many
/// source ports (pairing sessions, routable budgets) count by [`Endpoint::host`]; answers go to
/// the endpoint.
pub trait Endpoint: Copy + Eq + Hash {
    /// The host part (an IP address for UDP).
    type Host: Copy + Eq + Hash + core::fmt::Debug;
    /// The host this endpoint is on.
    fn host(&self) -> Self::Host;
    /// Appends bytes that identify this endpoint exactly (what a return-routability value is
    /// bound to).
    fn write_id(&self, out: &mut Vec<u8>);
}

impl Endpoint for SocketAddr {
    type Host = IpAddr;
    fn host(&self) -> IpAddr {
        self.ip()
    }
    fn write_id(&self, out: &mut Vec<u8>) {
        match self.ip() {
            IpAddr::V4(v4) => {
                out.push(4);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.push(6);
                out.extend_from_slice(&v6.octets());
            }
        }
        out.extend_from_slice(&self.port().to_be_bytes());
    }
}

/// Hub link settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The hub's Sender ID in every sensor context.
    pub hub_kid: Kid,
    /// Sequence lease block K (RFC 8613 B.1.1).
    pub lease_block: u64,
    /// Pairing sessions that may wait for a PIN at once.
    pub max_sessions: usize,
    /// Pairing sessions one source host (IP address, whatever its ports) may hold at once (a
    /// fleet simulator on one host needs more; real sensors each have their own address).
    pub sessions_per_source: usize,
    /// A pairing session that hears nothing from its sensor for this long is dropped (and, if
    /// the owner had typed its PIN, counted as a failed attempt).
    pub session_idle_ms: u64,
    /// A session waiting for its PIN ends this long after it started, however active its
    /// sensor is (the sensor then starts over with a new key and PIN).
    pub session_max_ms: u64,
    /// Remembered unprotected exchanges, for CoAP deduplication of pairing requests.
    pub dedup_entries: usize,
    /// The P-256 budget of pairing hellos (global, per host).
    pub hello: HelloLimits,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            hub_kid: Kid::default(),
            lease_block: crate::oscore::DEFAULT_LEASE_BLOCK,
            max_sessions: 128,
            sessions_per_source: 4,
            session_idle_ms: 60_000,
            session_max_ms: 180_000,
            dedup_entries: 1024,
            hello: HelloLimits::default(),
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

/// Counts of rejected input, by kind (EN 303 645 5.10-1, 5.13-1). Durable in the same group
/// commits as the checkpoints that record the failures they count; a count missing from a
/// persisted record (one written before it existed) restores as 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SecurityCounters {
    /// Datagrams that are not CoAP, or break a limit.
    pub malformed: u64,
    /// OSCORE messages naming no known context.
    pub unknown_kid: u64,
    /// Replayed or too-old Partial IVs.
    pub replays: u64,
    /// AEAD tags that failed (tampering, wrong key).
    pub bad_tag: u64,
    /// Datagrams for a known kid dropped without verification because their source's budget
    /// of failed verifications is spent for now (a forgery flood; see `guard`).
    pub throttled: u64,
    /// Malformed OSCORE options or inner messages, or OSCORE features Hearth does not use.
    pub bad_oscore: u64,
    /// Pairing requests outside a window, during back-off, or over the session limit.
    pub pairing_refused: u64,
    /// Pairing hellos dropped unanswered because their host's share or the global budget of
    /// key generations was used up (a hello flood; see `pairing::HelloBudget`).
    pub pairing_throttled: u64,
    /// Unprotected datagrams (pairing requests, junk) dropped unread because their host sent
    /// more than its share (a flood; see `pairing::RequestFilter`).
    pub unprotected_throttled: u64,
    /// Failed pairing confirmations (wrong PIN, attacker, or an attempt abandoned after its PIN).
    pub pairing_failed: u64,
    /// Requests for resources that do not exist or are not allowed unprotected.
    pub bad_request: u64,
    /// Retransmissions answered from the deduplication cache (not a security event).
    pub duplicates: u64,
    /// Echo challenges not sent because the same source (or the context) was just sent one.
    pub echo_limited: u64,
    /// Requests refused because their key reached a usage limit (re-pair the device).
    pub key_limit: u64,
    /// Return-routability challenges sent to sources over budget (an outer Echo; not a
    /// security event in itself: each answers a datagram counted as `throttled`).
    pub echo_challenges: u64,
    /// Requests verified under a routable source's budget (the source echoed a challenge).
    pub routable: u64,
}

impl SecurityCounters {
    /// The security-relevant counts summed (retransmissions and Echo rate limiting excluded).
    pub fn security_total(&self) -> u64 {
        self.malformed
            + self.unknown_kid
            + self.replays
            + self.bad_tag
            + self.throttled
            + self.bad_oscore
            + self.pairing_refused
            + self.pairing_throttled
            + self.unprotected_throttled
            + self.pairing_failed
            + self.bad_request
            + self.key_limit
    }
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
    /// Datagrams for a context were dropped unverified (its failure budget is spent).
    Throttled {
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
pub enum HubEvent<A> {
    /// A sensor asked to pair; the owner must type the PIN its display shows.
    PairingRequested {
        /// Session (and future OSCORE) ID.
        kid: Kid,
        /// What the sensor says it is.
        descriptor: Descriptor,
    },
    /// Pairing succeeded: persist the context (secret, encrypted at rest) with
    /// [`HubLink::checkpoint`](super::HubLink::checkpoint)'s state, then call
    /// [`HubLink::paired_durable`](super::HubLink::paired_durable) — only then is the sensor told.
    Paired {
        /// The sensor's kid.
        kid: Kid,
        /// Context inputs (hub's view).
        params: ContextParams,
        /// Descriptor bound into the pairing transcript.
        descriptor: Descriptor,
    },
    /// A sensor renewed its context (RFC 8613 B.2, after a restore): persist `params` in the
    /// same commit as (or before) the checkpoint of the request that renewed it — that
    /// request's answer waits for that checkpoint, so the sensor never uses a context the
    /// hub could lose.
    Renewed {
        /// The sensor's kid.
        kid: Kid,
        /// The renewed context's inputs (hub's view).
        params: ContextParams,
    },
    /// The sensor has been told it is paired (its context was durable first).
    PairingConfirmed {
        /// The sensor's kid.
        kid: Kid,
    },
    /// A reading to persist; answer it with [`HubLink::acknowledge`](super::HubLink::acknowledge)
    /// once it and the sensor's checkpoint are durable.
    Reading {
        /// Ticket for the answer.
        ticket: AckTicket<A>,
        /// The SenML payload (not yet parsed: the caller validates it).
        payload: Payload,
    },
    /// A sensor reports an update outcome: persist it, then acknowledge the ticket.
    Report {
        /// Ticket for the answer.
        ticket: AckTicket<A>,
        /// The report.
        report: UpdateReport,
    },
    /// Any other authenticated request (firmware manifest or block, unknown resource): its
    /// answer is made when the ticket is acknowledged, after the sensor's checkpoint is durable,
    /// so that no request is answered twice across a restart (RFC 8613 §7.4, B.1.2).
    Request {
        /// Ticket for the answer.
        ticket: AckTicket<A>,
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
    /// Persist `kid`'s [`HubLink::checkpoint`](super::HubLink::checkpoint) soon (its usage
    /// ceilings run low, or an answer waits for one).
    CheckpointNeeded {
        /// The context.
        kid: Kid,
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
/// verify signatures) and the image, shared by every sensor it is offered to. Only a
/// [`VerifiedManifest`] and the [`VerifiedImage`] checked against it can make one (TR 103 621
/// 6.18: nothing unverified reaches a sensor).
#[derive(Debug)]
pub struct FirmwareOffer {
    offer: UpdateOffer,
    manifest: Vec<u8>,
    image: Vec<u8>,
}

impl FirmwareOffer {
    /// The offer for `image`, verified against `manifest`, in blocks of `16 << szx` bytes.
    /// `None` if the image was verified for another manifest (model or version differ).
    pub fn new(manifest: &VerifiedManifest, image: VerifiedImage, szx: u8) -> Option<Self> {
        if image.model() != manifest.model() || image.version() != manifest.version() {
            return None;
        }
        let offer = UpdateOffer {
            version: manifest.version(),
            size: manifest.image_size(),
            sha256: *image.sha256(),
            szx,
        };
        let envelope = manifest.signed_bytes().to_vec();
        Some(Self { offer, manifest: envelope, image: image.into_bytes() })
    }

    /// What a compromised hub could offer: anything. For simulations and tests of the sensors'
    /// own checks (example 5); never used by the hub.
    #[cfg(feature = "netsim")]
    pub fn forged(offer: UpdateOffer, manifest: Vec<u8>, image: Vec<u8>) -> Self {
        Self { offer, manifest, image }
    }

    /// What the sensor is told.
    pub fn offer(&self) -> &UpdateOffer {
        &self.offer
    }

    /// COSE_Sign1 manifest bytes.
    pub fn manifest(&self) -> &[u8] {
        &self.manifest
    }

    /// Image bytes.
    pub fn image(&self) -> &[u8] {
        &self.image
    }
}

/// A reading's payload; its `Debug` shows only the length (readings are personal data,
/// EN 303 645 provision 6, and stay out of logs).
pub struct Payload(pub Vec<u8>);

impl core::fmt::Debug for Payload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

/// What an accepted request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    /// `POST /r`.
    Reading,
    /// `POST /fw/report` with a well-formed report.
    Report,
    /// Anything else: answered from the resource at acknowledgement time.
    Other,
}

/// Identifies an accepted request awaiting its answer. Single use (not `Clone`): one request
/// gets exactly one response under its nonce, sent to the endpoint the request came from.
/// Answer it only once the replay window that accepted it is durable (persist
/// [`HubLink::checkpoint`](super::HubLink::checkpoint) first).
pub struct AckTicket<A> {
    pub(super) kid: Kid,
    pub(super) from: A,
    pub(super) binding: RequestBinding,
    pub(super) request: Packet,
    pub(super) asked: Asked,
}

impl<A> core::fmt::Debug for AckTicket<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // No payload: readings are personal data (EN 303 645 provision 6).
        f.debug_struct("AckTicket").field("kid", &self.kid).field("piv", &self.binding.piv).finish()
    }
}

impl<A> AckTicket<A> {
    /// The sensor's kid.
    pub fn kid(&self) -> Kid {
        self.kid
    }

    /// The request's Partial IV (its position in the sensor's sequence).
    pub fn piv(&self) -> u64 {
        self.binding.piv.value()
    }
}

/// Durable per-sensor link state: persist it (fsync) before answering any request it covers,
/// then report it with [`HubLink::checkpoint_durable`](super::HubLink::checkpoint_durable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState<A: Endpoint> {
    /// Replay window (None while unknown).
    pub window: Option<WindowState>,
    /// Key usage: the encryption *ceiling* (encryptions may grow up to it before the next
    /// checkpoint, and a restart resumes at it) and the exact count of failed decryptions
    /// (nothing that depends on a failure leaves the hub before it is recorded here).
    pub usage: KeyUsage,
    /// The endpoint the sensor's last authenticated request came from.
    pub endpoint: Option<A>,
    /// The failure budgets (`None` in checkpoints written before they were persisted).
    pub budget: Option<GuardState<A::Host>>,
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
    /// An earlier PIN is still being confirmed; one attempt at a time.
    #[error("an earlier PIN attempt is still being confirmed; try again when it ends")]
    Unresolved,
    /// Pairing is not allowed now.
    #[error(transparent)]
    Refused(#[from] PairingRefused),
    /// The PIN is wrong (counted as a failed attempt).
    #[error(transparent)]
    Pairing(#[from] PairingError),
}
