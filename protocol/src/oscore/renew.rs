//! Renewing a security context, RFC 8613 Appendix B.2, started by the server: how a hub
//! restored from a backup stops using contexts that the old hub may have gone on using
//! (their sequence numbers and replay windows are behind) without pairing again.
//!
//! 1. The sensor sends a request under the paired context (no ID Context) while the hub's is
//!    another one, or is marked "renew before use" (restored from a backup): **Request #1**.
//! 2. The hub verifies its tag (nothing is processed or marked seen), draws a fresh random
//!    `R2`, derives CTX_1 with ID Context `R2` and answers 4.01 protected under CTX_1 with its
//!    own Partial IV and 'kid context' `R2`: **Response #1** ([`Pending::response_1`]). It
//!    keeps the `R2`s it issued, a few per context ([`PENDING`]): more refused requests drop
//!    the oldest, never grow the state.
//! 3. The sensor verifies Response #1 under CTX_1 ([`on_response_1`]), draws `R1` and derives
//!    CTX_NEW with ID Context `R2 ‖ R1`; its requests now carry that as 'kid context'
//!    (**Request #2**).
//! 4. The hub takes Request #2 only if `R2` is one it issued for that kid and not yet used
//!    ([`Pending::candidate`]) and the request verifies under CTX_NEW; then CTX_NEW is made
//!    durable before anything is answered, every pending `R2` is forgotten
//!    ([`Pending::confirm`]) and the old context is gone.
//!
//! Either side may lose a renewal in a crash (the hub its pending `R2`s, the sensor its new
//! context before it reached flash): a request under a context the hub does not know gets an
//! unprotected 4.01 "Security context not found", on which the sensor goes back to the paired
//! context, and a request under that one starts a renewal again. The paired context's keys are
//! never used to answer anything once the hub must renew, so that costs a round trip, never a
//! nonce.
//!
//! Both keys of CTX_NEW are fresh (`R2` from the hub, `R1` from the sensor, 8 random bytes
//! each, §B.2 "at least 8 bytes"), so no nonce of the old context can recur under them;
//! requests captured under the old context get Response #1 (4.01, nothing processed) before
//! the renewal and "context not found" after it. Hearth's sender sequences and replay windows
//! go on from the old context's values rather than restarting at 0 (allowed: only uniqueness
//! per key matters), so the durable bookkeeping needs no reset. 'kid context' carries the ID
//! Context bytes as §6.1 does (`R2`, then `R2 ‖ R1`).

use std::collections::VecDeque;

use coap_lite::{MessageClass, Packet, ResponseType};
use rand_core::CryptoRng;

use super::{
    ContextParams, OscoreError, OscoreOption, ReplayWindow, RequestBinding, Sealed,
    SecurityContext, SenderSequence,
};

/// Length of `R1` and `R2`.
pub const NONCE_LEN: usize = 8;
/// `R2`s kept per context awaiting their Request #2.
pub const PENDING: usize = 4;

/// The context with ID Context `id_context` and the same master secret, salt and ids.
fn with_context(params: &ContextParams, id_context: Vec<u8>) -> ContextParams {
    let mut p = params.clone();
    p.id_context = Some(id_context);
    p
}

/// CTX_1: a context used for one message under a key that is never used again (its ID
/// Context is a fresh `R2`), so its sequence starts at 0 without a lease.
fn one_shot(params: &ContextParams) -> SecurityContext {
    let mut seq = SenderSequence::new(1);
    if let Some(l) = seq.poll_lease() {
        seq.lease_durable(l);
    }
    SecurityContext::new(params, seq, ReplayWindow::Empty)
}

/// The hub's side: the `R2`s issued for one context.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    issued: VecDeque<[u8; NONCE_LEN]>,
}

impl Pending {
    /// Response #1 to `request` (whose tag verified under the old context `old`, hub's view;
    /// `binding` from that verification): 4.01 under CTX_1 with a fresh `R2`.
    pub fn response_1<R: CryptoRng + ?Sized>(
        &mut self,
        old: &ContextParams,
        request: &Packet,
        binding: &RequestBinding,
        rng: &mut R,
    ) -> Result<Sealed, OscoreError> {
        let mut r2 = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut r2);
        let mut ctx1 = one_shot(&with_context(old, r2.to_vec()));
        let mut response = Packet::new();
        response.header.set_type(coap_lite::MessageType::Acknowledgement);
        response.header.message_id = request.header.message_id;
        response.set_token(request.get_token().to_vec());
        response.header.code = MessageClass::Response(ResponseType::Unauthorized);
        response.payload = b"renew the security context".to_vec();
        let sealed = ctx1.protect_response_with_context(&response, binding)?;
        if self.issued.len() >= PENDING {
            self.issued.pop_front();
        }
        self.issued.push_back(r2);
        Ok(sealed)
    }

    /// The context a Request #2 with 'kid context' `kid_context` claims (to verify the
    /// request under it), if its `R2` is one this side issued and still waits; `None`
    /// otherwise (unknown, used or stale `R2`, wrong length).
    pub fn candidate(&self, old: &ContextParams, kid_context: &[u8]) -> Option<ContextParams> {
        if kid_context.len() != 2 * NONCE_LEN {
            return None;
        }
        let (r2, _) = kid_context.split_at(NONCE_LEN);
        let issued =
            self.issued.iter().any(|i| bool::from(subtle::ConstantTimeEq::ct_eq(&i[..], r2)));
        issued.then(|| with_context(old, kid_context.to_vec()))
    }

    /// A Request #2 verified under its candidate context: every `R2` is forgotten (a replayed
    /// Request #2 then names none).
    pub fn confirm(&mut self) {
        self.issued.clear();
    }

    /// How many `R2`s wait.
    pub fn len(&self) -> usize {
        self.issued.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.issued.is_empty()
    }
}

/// The sensor's side: `response` answers the request behind `binding`, sent under `current`
/// (sensor's view). If it is a Response #1 that verifies under CTX_1, returns CTX_NEW's inputs
/// (ID Context `R2 ‖ R1`, `R1` fresh); otherwise why not (and nothing changes).
pub fn on_response_1<R: CryptoRng + ?Sized>(
    current: &ContextParams,
    response: &Packet,
    binding: &RequestBinding,
    rng: &mut R,
) -> Result<ContextParams, OscoreError> {
    let option = response
        .get_first_option(coap_lite::CoapOption::Oscore)
        .map(|v| OscoreOption::parse(v))
        .ok_or(OscoreError::NotOscore("no OSCORE option"))??;
    let (Some(r2), Some(_)) = (option.kid_context, option.piv) else {
        return Err(OscoreError::NotOscore("not a renewal response"));
    };
    if r2.len() != NONCE_LEN || current.id_context.as_deref() == Some(&r2[..]) {
        return Err(OscoreError::BadOption("kid context"));
    }
    let mut ctx1 = SecurityContext::new(
        &with_context(current, r2.clone()),
        SenderSequence::new(1),
        ReplayWindow::Empty,
    );
    let inner = ctx1.unprotect_response(response, binding)?;
    if inner.header.code != MessageClass::Response(ResponseType::Unauthorized) {
        return Err(OscoreError::BadInnerMessage);
    }
    let mut r1 = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut r1);
    let mut id = r2;
    id.extend_from_slice(&r1);
    Ok(with_context(current, id))
}

/// Whether a response carries a 'kid context' (a Response #1 candidate).
pub fn is_response_1(response: &Packet) -> bool {
    response
        .get_first_option(coap_lite::CoapOption::Oscore)
        .and_then(|v| OscoreOption::parse(v).ok())
        .is_some_and(|o| o.kid_context.is_some())
}

#[cfg(test)]
mod tests;
