//! RFC 8613 Appendix C test vectors, checked byte for byte.

use coap_lite::Packet;

use super::*;
use crate::oscore::derive::{derive, info};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn kid(s: &str) -> Kid {
    Kid::new(&hex(s)).expect("kid")
}

fn params(sender: &str, recipient: &str, salt: &str, id_context: Option<&str>) -> ContextParams {
    ContextParams {
        master_secret: hex("0102030405060708090a0b0c0d0e0f10"),
        master_salt: hex(salt),
        sender_id: kid(sender),
        recipient_id: kid(recipient),
        id_context: id_context.map(hex),
    }
}

struct KeyVector {
    params: ContextParams,
    sender_info: &'static str,
    recipient_info: &'static str,
    iv_info: &'static str,
    sender_key: &'static str,
    recipient_key: &'static str,
    common_iv: &'static str,
    sender_nonce: &'static str,
    recipient_nonce: &'static str,
}

fn check(v: &KeyVector) {
    let p = &v.params;
    let ctx = p.id_context.as_deref();
    assert_eq!(info(p.sender_id.as_bytes(), ctx, "Key", 16), hex(v.sender_info));
    assert_eq!(info(p.recipient_id.as_bytes(), ctx, "Key", 16), hex(v.recipient_info));
    assert_eq!(info(&[], ctx, "IV", 13), hex(v.iv_info));
    let keys = derive(p);
    assert_eq!(keys.sender_key.to_vec(), hex(v.sender_key));
    assert_eq!(keys.recipient_key.to_vec(), hex(v.recipient_key));
    assert_eq!(keys.common_iv.to_vec(), hex(v.common_iv));
    let zero = Piv::new(0).expect("piv");
    assert_eq!(nonce(&keys.common_iv, &p.sender_id, zero).to_vec(), hex(v.sender_nonce));
    assert_eq!(nonce(&keys.common_iv, &p.recipient_id, zero).to_vec(), hex(v.recipient_nonce));
}

#[test]
fn c1_key_derivation_with_master_salt() {
    let client = KeyVector {
        params: params("", "01", "9e7ca92223786340", None),
        sender_info: "8540f60a634b657910",
        recipient_info: "854101f60a634b657910",
        iv_info: "8540f60a6249560d",
        sender_key: "f0910ed7295e6ad4b54fc793154302ff",
        recipient_key: "ffb14e093c94c9cac9471648b4f98710",
        common_iv: "4622d4dd6d944168eefb54987c",
        sender_nonce: "4622d4dd6d944168eefb54987c",
        recipient_nonce: "4722d4dd6d944169eefb54987c",
    };
    check(&client);
    let server = KeyVector {
        params: client.params.reversed(),
        sender_info: "854101f60a634b657910",
        recipient_info: "8540f60a634b657910",
        sender_key: "ffb14e093c94c9cac9471648b4f98710",
        recipient_key: "f0910ed7295e6ad4b54fc793154302ff",
        sender_nonce: "4722d4dd6d944169eefb54987c",
        recipient_nonce: "4622d4dd6d944168eefb54987c",
        ..client
    };
    check(&server);
}

#[test]
fn c2_key_derivation_without_master_salt() {
    let client = KeyVector {
        params: params("00", "01", "", None),
        sender_info: "854100f60a634b657910",
        recipient_info: "854101f60a634b657910",
        iv_info: "8540f60a6249560d",
        sender_key: "321b26943253c7ffb6003b0b64d74041",
        recipient_key: "e57b5635815177cd679ab4bcec9d7dda",
        common_iv: "be35ae297d2dace910c52e99f9",
        sender_nonce: "bf35ae297d2dace910c52e99f9",
        recipient_nonce: "bf35ae297d2dace810c52e99f9",
    };
    check(&client);
    let server = KeyVector {
        params: client.params.reversed(),
        sender_info: "854101f60a634b657910",
        recipient_info: "854100f60a634b657910",
        sender_key: "e57b5635815177cd679ab4bcec9d7dda",
        recipient_key: "321b26943253c7ffb6003b0b64d74041",
        sender_nonce: "bf35ae297d2dace810c52e99f9",
        recipient_nonce: "bf35ae297d2dace910c52e99f9",
        ..client
    };
    check(&server);
}

#[test]
fn c3_key_derivation_with_id_context() {
    let client = KeyVector {
        params: params("", "01", "9e7ca92223786340", Some("37cbf3210017a2d3")),
        sender_info: "85404837cbf3210017a2d30a634b657910",
        recipient_info: "8541014837cbf3210017a2d30a634b657910",
        iv_info: "85404837cbf3210017a2d30a6249560d",
        sender_key: "af2a1300a5e95788b356336eeecd2b92",
        recipient_key: "e39a0c7c77b43f03b4b39ab9a268699f",
        common_iv: "2ca58fb85ff1b81c0b7181b85e",
        sender_nonce: "2ca58fb85ff1b81c0b7181b85e",
        recipient_nonce: "2da58fb85ff1b81d0b7181b85e",
    };
    check(&client);
    let server = KeyVector {
        params: client.params.reversed(),
        sender_info: "8541014837cbf3210017a2d30a634b657910",
        recipient_info: "85404837cbf3210017a2d30a634b657910",
        sender_key: "e39a0c7c77b43f03b4b39ab9a268699f",
        recipient_key: "af2a1300a5e95788b356336eeecd2b92",
        sender_nonce: "2da58fb85ff1b81d0b7181b85e",
        recipient_nonce: "2ca58fb85ff1b81c0b7181b85e",
        ..client
    };
    check(&server);
}

/// A context whose sender is at `seq` with a durable lease above it.
fn context_at(params: &ContextParams, seq: u64) -> SecurityContext {
    let mut s = SenderSequence::resume(Lease(seq), DEFAULT_LEASE_BLOCK);
    s.lease_durable(Lease(seq + 1));
    SecurityContext::new(params, s, ReplayWindow::Empty)
}

fn request_vector(
    params: ContextParams,
    unprotected: &str,
    aad_hex: &str,
    nonce_hex: &str,
    option: &str,
    protected: &str,
) {
    let plain = Packet::from_bytes(&hex(unprotected)).expect("request");
    let mut client = context_at(&params, 20);
    let (sealed, binding) = client.protect_request(&plain).expect("protect");
    assert_eq!(aad(&binding.kid, binding.piv), hex(aad_hex));
    assert_eq!(sealed.nonce.to_vec(), hex(nonce_hex));
    assert_eq!(sealed.packet.get_first_option(coap_lite::CoapOption::Oscore), Some(&hex(option)));
    assert_eq!(sealed.packet.to_bytes().expect("encode"), hex(protected));

    // The server side recovers the original request.
    let mut server = context_at(&params.reversed(), 0);
    let wire = Packet::from_bytes(&hex(protected)).expect("protected");
    match server.unprotect_request(&wire).expect("unprotect") {
        Verified::Request { request, binding: b } => {
            assert_eq!(request.to_bytes().expect("encode"), hex(unprotected));
            assert_eq!(b, binding);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(server.unprotect_request(&wire).err(), Some(OscoreError::Replay));
}

#[test]
fn c4_request_client() {
    request_vector(
        params("", "01", "9e7ca92223786340", None),
        "44015d1f00003974396c6f63616c686f737483747631",
        "8368456e63727970743040488501810a40411440",
        "4622d4dd6d944168eefb549868",
        "0914",
        "44025d1f00003974396c6f63616c686f7374620914ff612f1092f1776f1c1668b3825e",
    );
}

#[test]
fn c5_request_client() {
    request_vector(
        params("00", "01", "", None),
        "440171c30000b932396c6f63616c686f737483747631",
        "8368456e63727970743040498501810a4100411440",
        "bf35ae297d2dace910c52e99ed",
        "091400",
        "440271c30000b932396c6f63616c686f737463091400ff4ed339a5a379b0b8bc731fffb0",
    );
}

#[test]
fn c6_request_client_with_kid_context() {
    request_vector(
        params("", "01", "9e7ca92223786340", Some("37cbf3210017a2d3")),
        "44012f8eef9bbf7a396c6f63616c686f737483747631",
        "8368456e63727970743040488501810a40411440",
        "2ca58fb85ff1b81c0b7181b84a",
        "19140837cbf3210017a2d3",
        "44022f8eef9bbf7a396c6f63616c686f73746b19140837cbf3210017a2d3ff72cd7273fd331ac45cffbe55c3",
    );
}

fn c4_binding() -> RequestBinding {
    RequestBinding {
        kid: kid(""),
        piv: Piv::new(20).expect("piv"),
        nonce: hex("4622d4dd6d944168eefb549868").try_into().expect("13 bytes"),
    }
}

fn response_vector(own_piv: bool, nonce_hex: &str, protected: &str) {
    let client_params = params("", "01", "9e7ca92223786340", None);
    let unprotected = "64455d1f00003974ff48656c6c6f20576f726c6421";
    let plain = Packet::from_bytes(&hex(unprotected)).expect("response");
    let mut server = context_at(&client_params.reversed(), 0);
    let sealed = server.protect_response(&plain, &c4_binding(), own_piv).expect("protect");
    assert_eq!(sealed.nonce.to_vec(), hex(nonce_hex));
    assert_eq!(sealed.packet.to_bytes().expect("encode"), hex(protected));

    let mut client = context_at(&client_params, 21);
    let wire = Packet::from_bytes(&hex(protected)).expect("protected");
    let opened = client.unprotect_response(&wire, &c4_binding()).expect("unprotect");
    assert_eq!(opened.to_bytes().expect("encode"), hex(unprotected));
}

#[test]
fn c7_response_server() {
    response_vector(
        false,
        "4622d4dd6d944168eefb549868",
        "64445d1f0000397490ffdbaad1e9a7e7b2a813d3c31524378303cdafae119106",
    );
}

#[test]
fn c8_response_with_partial_iv_server() {
    response_vector(
        true,
        "4722d4dd6d944169eefb54987c",
        "64445d1f00003974920100ff4d4c13669384b67354b2b6175ff4b8658c666a6cf88e",
    );
}
