//! The fleet's nonce audit: every (key, nonce) pair on the wire, to prove none is reused.

use protocol::oscore::Kid;

use super::{FleetStatus, Sensor};
use crate::flash::StoredContext;

/// Every (sender key, nonce) pair seen on the wire with a hash of its ciphertext: a nonce is
/// reused iff one pair carries two different ciphertexts (retransmissions repeat the bytes).
/// An ID Context (none: the paired context); a renewed context (RFC 8613 B.2) has keys of its
/// own, so it is part of the key.
type IdContext = Option<Vec<u8>>;

#[derive(Default)]
pub(super) struct NonceAudit {
    seen: std::collections::HashMap<(Kid, IdContext, bool, [u8; 13]), u64>,
    requests: std::collections::HashMap<Vec<u8>, ([u8; 13], IdContext)>,
}

impl NonceAudit {
    pub(super) fn record(
        &mut self,
        status: &mut FleetStatus,
        s: &Sensor,
        bytes: &[u8],
        from_hub: bool,
    ) {
        use protocol::oscore::{OscoreOption, nonce};
        let (Some(iv), Some(params)) = (s.iv, s.stored.as_ref().and_then(StoredContext::to_params))
        else {
            return;
        };
        let Ok(p) = coap_lite::Packet::from_bytes(bytes) else { return };
        let Some(opt) = p.get_first_option(coap_lite::CoapOption::Oscore) else { return };
        let Ok(opt) = OscoreOption::parse(opt) else { return };
        let token = p.get_token().to_vec();
        // The context that sealed it: the one its 'kid context' names, or its request's.
        let ctx = match (from_hub, &opt.kid_context) {
            (_, Some(c)) => Some(c.clone()),
            (false, None) => None,
            (true, None) => match self.requests.get(&token) {
                Some((_, c)) => c.clone(),
                None => return,
            },
        };
        let iv = if ctx == params.id_context {
            iv
        } else {
            let mut p = params.clone();
            p.id_context = ctx.clone();
            p.common_iv()
        };
        let n = match (from_hub, opt.piv) {
            (false, Some(piv)) => {
                let n = nonce(&iv, &params.sender_id, piv);
                self.requests.insert(token, (n, ctx.clone()));
                n
            }
            (true, Some(piv)) => nonce(&iv, &params.recipient_id, piv),
            (true, None) => match self.requests.get(&token) {
                Some((n, _)) => *n,
                None => return,
            },
            (false, None) => return,
        };
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        p.payload.hash(&mut h);
        let digest = h.finish();
        status.nonces_audited += 1;
        match self.seen.insert((params.sender_id, ctx, from_hub, n), digest) {
            Some(prev) if prev != digest => status.nonce_reuses += 1,
            _ => {}
        }
    }
}
