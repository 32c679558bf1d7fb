//! RFC 8613 B.2 renewal at its edges: the whole exchange, then every way to get it wrong.

use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::oscore::{Kid, Verified};

fn sensor_params() -> ContextParams {
    ContextParams {
        master_secret: vec![3; 16],
        master_salt: vec![9, 9],
        sender_id: Kid::new(&[0x21]).expect("kid"),
        recipient_id: Kid::new(&[0]).expect("kid"),
        id_context: None,
    }
}

fn ctx(params: &ContextParams) -> SecurityContext {
    let mut seq = SenderSequence::resume(crate::oscore::Lease(100), 1000);
    if let Some(l) = seq.poll_lease() {
        seq.lease_durable(l);
    }
    SecurityContext::new(params, seq, ReplayWindow::Empty)
}

fn post(n: u8) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = u16::from(n);
    p.set_token(vec![n]);
    p.add_option(CoapOption::UriPath, b"r".to_vec());
    p.payload = vec![n; 4];
    p
}

fn kid_context(p: &Packet) -> Option<Vec<u8>> {
    let v = p.get_first_option(CoapOption::Oscore)?;
    OscoreOption::parse(v).ok()?.kid_context
}

struct Pair {
    sensor: SecurityContext,
    hub: SecurityContext,
    pending: Pending,
    rng: ChaCha20Rng,
}

fn pair() -> Pair {
    let s = sensor_params();
    Pair {
        sensor: ctx(&s),
        hub: ctx(&s.reversed()),
        pending: Pending::default(),
        rng: ChaCha20Rng::seed_from_u64(7),
    }
}

/// Request #1 and Response #1: the sensor's new context inputs.
fn first_round(p: &mut Pair) -> (ContextParams, Packet) {
    let (sealed, binding) = p.sensor.protect_request(&post(1)).expect("request 1");
    let hub_binding = p.hub.verify_request(&sealed.packet).expect("verifies under the old context");
    let r1 = p
        .pending
        .response_1(p.hub.params(), &sealed.packet, &hub_binding, &mut p.rng)
        .expect("response 1");
    assert!(is_response_1(&r1.packet));
    let new =
        on_response_1(p.sensor.params(), &r1.packet, &binding, &mut p.rng).expect("sensor follows");
    (new, sealed.packet)
}

#[test]
fn renewal_gives_both_sides_fresh_keys_and_drops_the_old_context() {
    let mut p = pair();
    let (new, old_request) = first_round(&mut p);
    let id = new.id_context.clone().expect("id context");
    assert_eq!(id.len(), 2 * NONCE_LEN);
    let mut sensor = p.sensor.renewed(&new);
    let (req2, b2) = sensor.protect_request(&post(2)).expect("request 2");
    assert_eq!(kid_context(&req2.packet).as_deref(), Some(&id[..]));
    let cand = p.pending.candidate(p.hub.params(), &id).expect("R2 issued");
    let mut hub = p.hub.renewed(&cand);
    let Ok(Verified::Request { request, binding }) = hub.unprotect_request(&req2.packet) else {
        panic!("request 2 must verify under CTX_NEW");
    };
    assert_eq!(request.payload, vec![2; 4]);
    p.pending.confirm();
    assert!(p.pending.is_empty());
    // Response #2 under CTX_NEW verifies at the sensor.
    let mut ok = Packet::new();
    ok.header.code = MessageClass::Response(ResponseType::Changed);
    let resp = hub.protect_response(&ok, &binding, false).expect("response 2");
    assert!(sensor.unprotect_response(&resp.packet, &b2).is_ok());
    // New keys: the old context's nonce for the same sequence number seals differently, and
    // the request captured under the old context does not verify under the new one.
    assert_ne!(hub.params().id_context, p.hub.params().id_context);
    assert!(hub.verify_request(&old_request).is_err());
    // Request #2 replayed: its R2 is forgotten, and CTX_NEW's window refuses it.
    assert!(p.pending.candidate(p.hub.params(), &id).is_none());
    assert!(hub.unprotect_request(&req2.packet).is_err());
}

#[test]
fn a_wrong_or_stale_r2_is_refused() {
    let mut p = pair();
    let (new, _) = first_round(&mut p);
    let id = new.id_context.clone().expect("id");
    // Another R2 (random, or the right one with a byte changed).
    let mut wrong = id.clone();
    wrong[0] ^= 1;
    assert!(p.pending.candidate(p.hub.params(), &wrong).is_none());
    assert!(p.pending.candidate(p.hub.params(), &id[..NONCE_LEN]).is_none(), "R2 alone");
    assert!(p.pending.candidate(p.hub.params(), &[id.clone(), vec![0]].concat()).is_none());
    // More Request #1s push it out: the state stays bounded.
    for i in 0..PENDING {
        let (s, _) = p.sensor.protect_request(&post(10 + i as u8)).expect("req");
        let b = p.hub.verify_request(&s.packet).expect("verify");
        p.pending.response_1(p.hub.params(), &s.packet, &b, &mut p.rng).expect("resp");
    }
    assert_eq!(p.pending.len(), PENDING);
    assert!(p.pending.candidate(p.hub.params(), &id).is_none(), "stale R2 accepted");
    for _ in 0..100 {
        let (s, _) = p.sensor.protect_request(&post(1)).expect("req");
        let b = p.hub.verify_request(&s.packet).expect("verify");
        p.pending.response_1(p.hub.params(), &s.packet, &b, &mut p.rng).expect("resp");
        assert!(p.pending.len() <= PENDING);
    }
}

#[test]
fn a_forged_response_1_is_refused() {
    let mut p = pair();
    let (sealed, binding) = p.sensor.protect_request(&post(1)).expect("request 1");
    let hb = p.hub.verify_request(&sealed.packet).expect("verify");
    let r1 = p.pending.response_1(p.hub.params(), &sealed.packet, &hb, &mut p.rng).expect("r1");
    // A flipped ciphertext byte, a changed R2, or someone without the master secret.
    let mut t = r1.packet.clone();
    t.payload[0] ^= 1;
    assert!(on_response_1(p.sensor.params(), &t, &binding, &mut p.rng).is_err());
    let mut t = r1.packet.clone();
    let mut opt =
        OscoreOption::parse(t.get_first_option(CoapOption::Oscore).expect("opt")).expect("parse");
    if let Some(c) = opt.kid_context.as_mut() {
        c[0] ^= 1;
    }
    t.set_option(CoapOption::Oscore, [opt.encode()].into());
    assert!(on_response_1(p.sensor.params(), &t, &binding, &mut p.rng).is_err());
    let mut stranger = sensor_params().reversed();
    stranger.master_secret = vec![4; 16];
    let r = Pending::default().response_1(&stranger, &sealed.packet, &hb, &mut p.rng).expect("r");
    assert!(on_response_1(p.sensor.params(), &r.packet, &binding, &mut p.rng).is_err());
    // A Response #1 to another request does not verify for this one.
    let (_, other) = p.sensor.protect_request(&post(2)).expect("req");
    assert!(on_response_1(p.sensor.params(), &r1.packet, &other, &mut p.rng).is_err());
    // An ordinary response is not a Response #1.
    let mut ok = Packet::new();
    ok.header.code = MessageClass::Response(ResponseType::Changed);
    let plain = p.hub.protect_response(&ok, &hb, false).expect("resp");
    assert!(!is_response_1(&plain.packet));
    assert!(on_response_1(p.sensor.params(), &plain.packet, &binding, &mut p.rng).is_err());
}

#[test]
fn request_2_under_a_forgotten_r2_is_refused_after_a_restart() {
    // The hub's pending R2s do not survive it: a Request #2 then names none, and the sensor,
    // told so, starts again from its old context.
    let mut p = pair();
    let (new, _) = first_round(&mut p);
    let restarted = Pending::default();
    assert!(restarted.candidate(p.hub.params(), new.id_context.as_deref().expect("id")).is_none());
}

#[test]
fn every_response_1_uses_a_fresh_key() {
    let mut p = pair();
    let mut nonces_keys = std::collections::HashSet::new();
    for _ in 0..20 {
        let (s, _) = p.sensor.protect_request(&post(1)).expect("req");
        let b = p.hub.verify_request(&s.packet).expect("verify");
        let r = p.pending.response_1(p.hub.params(), &s.packet, &b, &mut p.rng).expect("resp");
        let c = kid_context(&r.packet).expect("R2");
        assert!(nonces_keys.insert(c), "R2 repeated");
    }
}

proptest! {
    #[test]
    fn no_kid_context_but_an_issued_r2_names_a_candidate(ctx in proptest::collection::vec(any::<u8>(), 0..24)) {
        let mut p = pair();
        let (new, _) = first_round(&mut p);
        let id = new.id_context.clone().expect("id");
        let ok = ctx.len() == 2 * NONCE_LEN && ctx[..NONCE_LEN] == id[..NONCE_LEN];
        prop_assert_eq!(p.pending.candidate(p.hub.params(), &ctx).is_some(), ok);
    }
}
