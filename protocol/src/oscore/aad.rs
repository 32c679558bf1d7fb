//! Additional authenticated data, RFC 8613 §5.4: the COSE `Enc_structure` over the external AAD
//! `[oscore_version, [alg_aead], request_kid, request_piv, options]`.

use super::{Kid, Piv, derive::ALG_AES_CCM_16_64_128};

/// Builds the AAD for the request identified by (`request_kid`, `request_piv`). Hearth sends no
/// Class I options, so `options` is the empty byte string.
pub fn aad(request_kid: &Kid, request_piv: Piv) -> Vec<u8> {
    let (piv_buf, piv_len) = request_piv.to_bytes();
    let piv = &piv_buf[piv_buf.len() - piv_len..];
    let kid = request_kid.as_bytes();
    // aad_array: 0x85 0x01 0x81 0x0a bstr(kid) bstr(piv) 0x40 — all items are short (<24 bytes).
    let mut array = Vec::with_capacity(8 + kid.len() + piv.len());
    array.extend_from_slice(&[0x85, 0x01, 0x81, ALG_AES_CCM_16_64_128]);
    array.push(0x40 | kid.len() as u8);
    array.extend_from_slice(kid);
    array.push(0x40 | piv.len() as u8);
    array.extend_from_slice(piv);
    array.push(0x40);
    // Enc_structure = ["Encrypt0", h'', external_aad: bstr]
    let mut out = Vec::with_capacity(12 + array.len());
    out.extend_from_slice(&[0x83, 0x68]);
    out.extend_from_slice(b"Encrypt0");
    out.push(0x40);
    out.push(0x40 | array.len() as u8); // at most 8 + 7 + 5 = 20 < 24
    out.extend_from_slice(&array);
    out
}
