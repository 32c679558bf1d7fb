//! Security context derivation, RFC 8613 §3.2: HKDF-SHA256 over the master secret and salt, with
//! the CBOR `info` structure of §3.2.1, for AES-CCM-16-64-128 (COSE algorithm 10).

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{KEY_LEN, Kid, NONCE_LEN};

/// COSE algorithm identifier of AES-CCM-16-64-128 (RFC 9053 §4.2).
pub const ALG_AES_CCM_16_64_128: u8 = 10;

/// The inputs that both endpoints share (RFC 8613 §3.1–3.2). This is the secret a store keeps
/// (encrypted at rest, EN 303 645 5.4-1) to rebuild a [`super::SecurityContext`] after a restart.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct ContextParams {
    /// Master Secret (16 bytes for Hearth; RFC 8613 allows any length).
    pub master_secret: Vec<u8>,
    /// Master Salt; empty is the RFC's default.
    pub master_salt: Vec<u8>,
    /// Our Sender ID.
    #[zeroize(skip)]
    pub sender_id: Kid,
    /// Our Recipient ID (the peer's Sender ID).
    #[zeroize(skip)]
    pub recipient_id: Kid,
    /// Optional ID Context.
    pub id_context: Option<Vec<u8>>,
}

impl core::fmt::Debug for ContextParams {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ContextParams")
            .field("master_secret", &"<redacted>")
            .field("sender_id", &self.sender_id)
            .field("recipient_id", &self.recipient_id)
            .finish_non_exhaustive()
    }
}

impl ContextParams {
    /// The Common IV (§3.2.1). Not a key, but derived from the master secret: tests use it to
    /// recompute nonces from the wire.
    pub fn common_iv(&self) -> [u8; NONCE_LEN] {
        derive(self).common_iv
    }

    /// The same context seen from the other endpoint (sender and recipient swapped).
    pub fn reversed(&self) -> Self {
        Self {
            master_secret: self.master_secret.clone(),
            master_salt: self.master_salt.clone(),
            sender_id: self.recipient_id,
            recipient_id: self.sender_id,
            id_context: self.id_context.clone(),
        }
    }
}

/// Keys and IV derived from [`ContextParams`].
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct DerivedKeys {
    pub sender_key: [u8; KEY_LEN],
    pub recipient_key: [u8; KEY_LEN],
    pub common_iv: [u8; NONCE_LEN],
}

pub(crate) fn derive(params: &ContextParams) -> DerivedKeys {
    let hk = Hkdf::<Sha256>::new(Some(&params.master_salt), &params.master_secret);
    let ctx = params.id_context.as_deref();
    let mut keys = DerivedKeys {
        sender_key: [0; KEY_LEN],
        recipient_key: [0; KEY_LEN],
        common_iv: [0; NONCE_LEN],
    };
    expand(&hk, params.sender_id.as_bytes(), ctx, "Key", &mut keys.sender_key);
    expand(&hk, params.recipient_id.as_bytes(), ctx, "Key", &mut keys.recipient_key);
    expand(&hk, &[], ctx, "IV", &mut keys.common_iv);
    keys
}

fn expand(hk: &Hkdf<Sha256>, id: &[u8], id_context: Option<&[u8]>, kind: &str, out: &mut [u8]) {
    let info = info(id, id_context, kind, out.len());
    // Output lengths are 13 or 16 bytes, far below HKDF-SHA256's 8160-byte limit.
    if hk.expand(&info, out).is_err() {
        unreachable!("HKDF output length is a small constant");
    }
}

/// `info = [id: bstr, id_context: bstr / nil, alg_aead: int, type: tstr, L: uint]` (§3.2.1).
pub(crate) fn info(id: &[u8], id_context: Option<&[u8]>, kind: &str, len: usize) -> Vec<u8> {
    crate::cbor::Writer::build(|w| {
        w.array(5).bytes(id);
        match id_context {
            Some(c) => w.bytes(c),
            None => w.null(),
        };
        w.uint(ALG_AES_CCM_16_64_128.into()).text(kind).uint(len as u64);
    })
}
