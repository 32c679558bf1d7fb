//! Bodies of the fuzz targets in `fuzz/` (cargo-fuzz). They live here so that an ordinary test
//! replays the seed corpora on stable Rust, and each states the invariant it checks besides
//! "never panics".

use std::collections::BTreeSet;

use coap_lite::Packet;

use crate::link::{HubConfig, HubLink};
use crate::oscore::{
    ContextParams, Kid, Lease, OscoreOption, Piv, ReplayWindow, RequestBinding, SecurityContext,
    SenderSequence, Verified, WINDOW,
};
use crate::pairing::{Confirm, HubHello, SensorHello};
use crate::time::{Millis, UnixTime};

/// RFC 8613 C.1's context from the server's side, with a usable sender sequence.
pub fn server_context() -> SecurityContext {
    let params = ContextParams {
        master_secret: (1..=16).collect(),
        master_salt: vec![0x9e, 0x7c, 0xa9, 0x22, 0x23, 0x78, 0x63, 0x40],
        sender_id: Kid::new(&[1]).unwrap_or_default(),
        recipient_id: Kid::default(),
        id_context: None,
    };
    let mut seq = SenderSequence::resume(Lease(0), 100);
    seq.lease_durable(Lease(100));
    SecurityContext::new(&params, seq, ReplayWindow::Empty)
}

/// Unprotects arbitrary (usually mutated) OSCORE messages as a request and as a response.
/// Invariant: a request that authenticates is never accepted twice.
pub fn oscore_unprotect(data: &[u8]) {
    let Ok(packet) = Packet::from_bytes(data) else { return };
    let mut ctx = server_context();
    if let Ok(Verified::Request { .. }) = ctx.unprotect_request(&packet) {
        let again = ctx.unprotect_request(&packet);
        assert!(!matches!(again, Ok(Verified::Request { .. })), "replay accepted");
    }
    let binding = RequestBinding {
        kid: Kid::default(),
        piv: Piv::new(20).unwrap_or(Piv::new(0).unwrap_or_else(|_| unreachable!())),
        nonce: [0x46, 0x22, 0xd4, 0xdd, 0x6d, 0x94, 0x41, 0x68, 0xee, 0xfb, 0x54, 0x98, 0x68],
    };
    let _ = ctx.unprotect_response(&packet, &binding);
}

/// Parses CoAP messages and OSCORE option values. Invariant: a parsed option re-encodes to an
/// option that parses to the same value.
pub fn coap_options(data: &[u8]) {
    if let Ok(opt) = OscoreOption::parse(data) {
        let again = OscoreOption::parse(&opt.encode());
        assert_eq!(again.as_ref(), Ok(&opt), "OSCORE option does not round-trip");
    }
    if let Ok(p) = Packet::from_bytes(data) {
        let _ = crate::link::coap::path(&p);
        let _ = p.to_bytes();
    }
}

/// Parses pairing messages. Invariant: a parsed message re-encodes to the same bytes.
pub fn pairing_messages(data: &[u8]) {
    if let Ok(h) = SensorHello::decode(data) {
        assert_eq!(SensorHello::decode(&h.encode()).as_ref(), Ok(&h));
    }
    if let Ok(h) = HubHello::decode(data) {
        assert_eq!(h.encode(), data, "hub hello is not canonical");
    }
    if let Ok(c) = Confirm::decode(data) {
        assert_eq!(c.encode(), data);
    }
}

/// Parses signed manifests and advisories (without a key).
pub fn manifest(data: &[u8]) {
    crate::update::fuzz_parse(data);
}

/// Parses SenML packs. Invariant: decoded readings re-encode and decode to the same readings.
pub fn senml(data: &[u8]) {
    let now = UnixTime(1_800_000_000);
    let limits = crate::senml::Limits::with_now(now);
    if let Ok(readings) = crate::senml::decode(data, &limits, now) {
        let again = crate::senml::decode(&crate::senml::encode(&readings), &limits, now);
        assert_eq!(again.as_ref(), Ok(&readings), "SenML does not round-trip");
    }
}

/// Parses an actuator command (it arrives inside an OSCORE response). Invariant: a decoded
/// command re-encodes and decodes to itself.
pub fn link_command(data: &[u8]) {
    if let Ok(c) = crate::link::command::Command::decode(data) {
        let again = crate::link::command::Command::decode(&c.encode());
        assert_eq!(again.as_ref(), Ok(&c), "command does not round-trip");
    }
}

/// Drives the replay window with counters from `data` (2 bytes each: a 15-bit jump and an
/// "authentic" bit) against a set model. Invariant: both agree on every verdict.
pub fn replay_window(data: &[u8]) {
    let mut w = ReplayWindow::Empty;
    let mut seen = BTreeSet::new();
    let mut base = 0u64;
    for pair in data.chunks_exact(2) {
        let v = u16::from_be_bytes([pair[0], pair[1]]);
        let authentic = v & 1 == 1;
        let delta = u64::from(v >> 1);
        // Mostly small moves around a slowly rising base, sometimes big jumps.
        let piv =
            if delta > 0x3f00 { base + delta } else { (base + delta % 64).saturating_sub(32) };
        let model = seen.last().is_none_or(|&hi: &u64| !seen.contains(&piv) && piv + WINDOW > hi);
        let verdict = w.check(piv);
        assert_eq!(verdict.is_ok(), model, "window and model disagree on {piv}");
        if let (Ok(f), true) = (verdict, authentic) {
            w.commit(f);
            seen.insert(piv);
            base = base.max(piv);
        }
    }
}

/// Feeds arbitrary datagrams to a hub with one paired sensor (RFC 8613 C.1's client as the
/// sensor) and an open pairing window. Invariant: nothing panics and no reading is released
/// twice for the same Partial IV.
pub fn hub_datagram(data: &[u8]) {
    // One source sends everything: no per-host share may cut the input short.
    let hello = crate::pairing::HelloLimits {
        request_rate: u32::MAX,
        request_burst: u32::MAX,
        host_burst: u32::MAX,
        rate_per_s: u32::MAX,
        burst: u32::MAX,
        ..Default::default()
    };
    let mut hub: HubLink<std::net::SocketAddr> = HubLink::new(HubConfig {
        hub_kid: Kid::new(&[1]).unwrap_or_default(),
        hello,
        ..HubConfig::default()
    });
    let params = ContextParams {
        master_secret: (1..=16).collect(),
        master_salt: vec![0x9e, 0x7c, 0xa9, 0x22, 0x23, 0x78, 0x63, 0x40],
        sender_id: Kid::new(&[1]).unwrap_or_default(),
        recipient_id: Kid::default(),
        id_context: None,
    };
    hub.add_peer(&params, Lease(0), ReplayWindow::Empty, Default::default(), None, None);
    let from = std::net::SocketAddr::from(([127, 0, 0, 1], 7));
    let durable = |hub: &mut HubLink<std::net::SocketAddr>, kid: &Kid| {
        if let Some(state) = hub.checkpoint(kid) {
            hub.checkpoint_durable(kid, &state);
        }
    };
    durable(&mut hub, &Kid::default());
    hub.open_pairing(Millis(0), Default::default());
    let mut rng = FuzzRng(0x9e37_79b9_7f4a_7c15);
    let mut released = BTreeSet::new();
    // The hub's hello cookie, added to unprotected requests that carry none (as a sensor
    // answering the challenge would), so that inputs reach past the return-routability check.
    let echo = coap_lite::CoapOption::Unknown(crate::pairing::ECHO_OPTION);
    let mut cookie: Option<Vec<u8>> = None;
    // Each datagram is length-prefixed (1 byte) so one input can carry several.
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (dgram, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        let with_cookie = match (&cookie, coap_lite::Packet::from_bytes(dgram)) {
            (Some(c), Ok(mut p))
                if p.get_option(coap_lite::CoapOption::Oscore).is_none()
                    && p.get_option(echo).is_none() =>
            {
                p.add_option(echo, c.clone());
                p.to_bytes().ok()
            }
            _ => None,
        };
        hub.handle_datagram(Millis(1), from, with_cookie.as_deref().unwrap_or(dgram), &mut rng);
        while let Some(e) = hub.poll_event() {
            match e {
                crate::link::HubEvent::Reading { ticket, .. } => {
                    assert!(released.insert(ticket.piv()), "reading released twice");
                    durable(&mut hub, &ticket.kid());
                    hub.acknowledge(ticket);
                }
                crate::link::HubEvent::Request { ticket }
                | crate::link::HubEvent::Report { ticket, .. } => {
                    durable(&mut hub, &ticket.kid());
                    hub.acknowledge(ticket);
                }
                crate::link::HubEvent::CheckpointNeeded { kid } => durable(&mut hub, &kid),
                crate::link::HubEvent::Paired { kid, .. } => hub.paired_durable(Millis(1), &kid),
                _ => {}
            }
        }
        while let Some(t) = hub.poll_transmit() {
            if let Ok(p) = coap_lite::Packet::from_bytes(&t.bytes)
                && let Some(c) = p.get_first_option(echo)
            {
                cookie = Some(c.clone());
            }
        }
    }
}

/// A deterministic RNG for fuzzing (not cryptographic; randomness quality is irrelevant here).
#[derive(Debug)]
pub struct FuzzRng(pub u64);

impl rand_core::TryRng for FuzzRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        self.try_next_u64().map(|v| (v >> 32) as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Ok(z ^ (z >> 31))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for FuzzRng {}
