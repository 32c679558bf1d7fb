//! AEAD nonce construction, RFC 8613 §5.2 — the only place a nonce is built.
//!
//! A nonce is unique per key as long as (ID_PIV, PIV) is never repeated for that key: the sender
//! sequence (`sequence.rs`) guarantees the PIV half, and the IDs are unique within a context.

use super::{Kid, NONCE_LEN, Piv};

/// Builds the nonce from the Common IV, the Sender ID of the endpoint that generated the Partial
/// IV (`id_piv`) and the Partial IV:
/// `[len(ID_PIV)] ‖ ID_PIV left-padded to 7 bytes ‖ PIV left-padded to 5 bytes`, XOR Common IV.
pub fn nonce(common_iv: &[u8; NONCE_LEN], id_piv: &Kid, piv: Piv) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    let id = id_piv.as_bytes();
    // Kid guarantees id.len() <= 7 = NONCE_LEN - 6.
    n[0] = id.len() as u8;
    n[8 - id.len()..8].copy_from_slice(id);
    n[8..].copy_from_slice(&piv.value().to_be_bytes()[3..]);
    for (b, iv) in n.iter_mut().zip(common_iv) {
        *b ^= iv;
    }
    n
}
