//! The relay's independent nonce audit of every OSCORE message it carries, and the requests
//! the server accepted, kept for replays.

use std::collections::{HashMap, VecDeque};

use coap_lite::{CoapOption, Packet};
use protocol::oscore::{Kid, OscoreOption};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde_json::{Value, json};

/// The nonce audit's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Protected messages audited (each retransmission counts).
    pub audited: u64,
    /// (key, nonce) pairs seen with two different ciphertexts.
    pub reuses: u64,
    /// Protected responses whose request the relay had not seen (or had forgotten).
    pub unmatched: u64,
    /// Requests the server accepted.
    pub accepted: u64,
    /// The first few reuses, described.
    pub examples: Vec<String>,
}

impl AuditReport {
    /// As JSON.
    pub fn json(&self) -> Value {
        json!({
            "audited": self.audited,
            "reuses": self.reuses,
            "unmatched": self.unmatched,
            "accepted": self.accepted,
            "examples": self.examples,
        })
    }
}

/// Who protected a message, which decides its key and nonce (RFC 8613 §5.2): the client under
/// its own Partial IV; the server under its own Partial IV; the server under the request's.
#[derive(Debug, Clone, Copy)]
enum Nonce {
    Client = 0,
    ServerOwn = 1,
    ServerRequest = 2,
}

/// Requests remembered to match responses (bounded; oldest forgotten first).
const REQUESTS_KEPT: usize = 200_000;
/// Accepted requests kept for replays (a uniform sample of the whole run).
const ACCEPTED_KEPT: usize = 4096;

/// Every (context, sender, Partial IV) seen with a digest of its ciphertext: a nonce is reused
/// iff one of them carries two different ciphertexts (retransmissions repeat the bytes). The
/// context is named by the client's kid, which every request carries.
pub(super) struct Audit {
    requests: HashMap<(u64, Vec<u8>), Request>,
    order: VecDeque<(u64, Vec<u8>)>,
    /// Keyed by (kid, sender, Partial IV) and the ID Context (hashed; 0: none): a renewed
    /// context (RFC 8613 B.2) has new keys, so it is a key space of its own.
    seen: HashMap<(u128, u64), u64>,
    pub(super) accepted: Vec<Vec<u8>>,
    rng: ChaCha20Rng,
    pub(super) report: AuditReport,
}

struct Request {
    kid: Kid,
    /// Its ID Context, hashed (0: none).
    ctx: u64,
    piv: u64,
    bytes: Vec<u8>,
    accepted: bool,
}

impl Audit {
    pub(super) fn new(seed: u64) -> Audit {
        Audit {
            requests: HashMap::new(),
            order: VecDeque::new(),
            seen: HashMap::new(),
            accepted: Vec::new(),
            rng: ChaCha20Rng::seed_from_u64(seed ^ 0xa0d1),
            report: AuditReport::default(),
        }
    }

    pub(super) fn report(&self) -> AuditReport {
        self.report.clone()
    }

    /// Records one datagram of flow `flow` (`up`: a request from the client).
    pub(super) fn record(&mut self, flow: u64, up: bool, bytes: &[u8]) {
        let Ok(p) = Packet::from_bytes(bytes) else { return };
        let Some(Ok(opt)) = p.get_first_option(CoapOption::Oscore).map(|v| OscoreOption::parse(v))
        else {
            return;
        };
        let id = (flow, p.get_token().to_vec());
        let (kid, who, piv, ctx) = if up {
            let (Some(kid), Some(piv)) = (opt.kid, opt.piv) else { return };
            if !self.requests.contains_key(&id) {
                if self.order.len() >= REQUESTS_KEPT
                    && let Some(old) = self.order.pop_front()
                {
                    self.requests.remove(&old);
                }
                self.order.push_back(id.clone());
                let ctx = context(opt.kid_context.as_deref());
                let r =
                    Request { kid, ctx, piv: piv.value(), bytes: bytes.to_vec(), accepted: false };
                self.requests.insert(id, r);
            }
            (kid, Nonce::Client, piv.value(), context(opt.kid_context.as_deref()))
        } else {
            let Some(r) = self.requests.get_mut(&id) else {
                self.report.unmatched += 1;
                return;
            };
            match opt.piv {
                // A Response #1 (B.2) is sealed under the context its 'kid context' names.
                Some(piv) => {
                    let ctx = opt.kid_context.as_deref().map_or(r.ctx, |c| context(Some(c)));
                    (r.kid, Nonce::ServerOwn, piv.value(), ctx)
                }
                None => {
                    let first = !std::mem::replace(&mut r.accepted, true);
                    let found = (r.kid, Nonce::ServerRequest, r.piv, r.ctx);
                    if first {
                        let bytes = r.bytes.clone();
                        self.keep_accepted(bytes);
                    }
                    found
                }
            }
        };
        self.report.audited += 1;
        let digest = digest(&p.payload);
        match self.seen.insert((key(&kid, who, piv), ctx), digest) {
            Some(prev) if prev != digest => {
                self.report.reuses += 1;
                if self.report.examples.len() < 10 {
                    self.report.examples.push(format!(
                        "context {kid} ({ctx:x}), {who:?} Partial IV {piv}: two different \
                         ciphertexts"
                    ));
                }
            }
            _ => {}
        }
    }

    pub(super) fn keep_accepted(&mut self, bytes: Vec<u8>) {
        self.report.accepted += 1;
        if self.accepted.len() < ACCEPTED_KEPT {
            self.accepted.push(bytes);
        } else {
            // Reservoir sampling: every accepted request is kept with the same probability.
            let i = self.rng.next_u64() % self.report.accepted;
            if let Some(slot) = self.accepted.get_mut(i as usize) {
                *slot = bytes;
            }
        }
    }
}

/// (kid, sender, Partial IV) in 128 bits: kid bytes (≤ 7) and length, sender, Partial IV
/// (≤ 40 bits).
fn key(kid: &Kid, who: Nonce, piv: u64) -> u128 {
    let mut k = [0u8; 8];
    let b = kid.as_bytes();
    k[..b.len().min(7)].copy_from_slice(&b[..b.len().min(7)]);
    k[7] = b.len() as u8;
    (u128::from(u64::from_be_bytes(k)) << 64) | (u128::from(who as u8) << 62) | u128::from(piv)
}

/// An ID Context, hashed (0: none).
fn context(c: Option<&[u8]>) -> u64 {
    c.map_or(0, |c| digest(c) | 1)
}

fn digest(payload: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}
