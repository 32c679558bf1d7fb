//! Bad input: random and malformed datagrams (truncated CoAP, bad options, oversized payloads,
//! wrong kid, bad tag, malformed OSCORE and pairing messages) get errors or silence, never a
//! panic, while the hub keeps serving a reporting fleet; each kind is counted.

use std::net::UdpSocket;
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, Packet, RequestType};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde_json::Value;
use tests::{Hub, Sim, free_udp_port};

fn post(mid: u64, path: &str, payload: Vec<u8>) -> Packet {
    // Distinct message ids: the hub deduplicates by (source, message id, token), RFC 7252 §4.5.
    protocol::link::coap::post(mid as u16, &(mid as u32).to_be_bytes(), path, payload)
}

fn oscore_request(kid: &[u8], piv: u64, ciphertext: Vec<u8>) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = (piv & 0xffff) as u16;
    p.set_token(vec![9, 9]);
    let opt = protocol::oscore::OscoreOption {
        piv: protocol::oscore::Piv::new(piv).ok(),
        kid_context: None,
        kid: protocol::oscore::Kid::new(kid).ok(),
    };
    p.add_option(CoapOption::Oscore, opt.encode());
    p.payload = ciphertext;
    p.to_bytes().expect("encode")
}

fn status(sim: &mut Sim) -> Value {
    sim.until("a STATUS line", Duration::from_secs(30), |l| {
        serde_json::from_str(l.strip_prefix("STATUS ")?).ok()
    })
}

#[test]
fn malformed_datagrams_never_crash_the_hub_and_the_fleet_keeps_reporting() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut hub = Hub::start(&tmp.path().join("hub"), free_udp_port());
    let ctl = hub.control.to_str().expect("utf-8").to_string();
    let mut sim = Sim::start(&[
        "fleet",
        "--hub",
        &hub.coap.to_string(),
        "--sensors",
        "20",
        "--ctl",
        &ctl,
        "--interval-ms",
        "200",
        "--status-ms",
        "200",
    ]);
    let kids: Vec<Vec<u8>> = sim
        .paired(20, Duration::from_secs(60))
        .iter()
        .map(|k| protocol::hex::decode(k).expect("kid hex"))
        .collect();
    let before = status(&mut sim)["acknowledged"].as_u64().expect("acked");
    hub.ctl(&["pair", "close"]);

    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let attacker = UdpSocket::bind("127.0.0.1:0").expect("socket");
    let mut sent = 0;
    let mut send = |d: &[u8]| {
        // A send can fail for a datagram too large for UDP itself; that is the point of trying.
        let _ = attacker.send_to(d, hub.coap);
        sent += 1;
    };
    for round in 0..300u64 {
        // Random bytes of random length.
        let len = (rng.next_u32() % 1400) as usize;
        let mut junk = vec![0u8; len];
        rng.fill_bytes(&mut junk);
        send(&junk);
        // Truncated CoAP: 1 to 3 header bytes, and a header announcing a longer token.
        send(&[0x44, 0x02, 0x00][..1 + (round % 3) as usize]);
        send(&[0x48, 0x02, 0x00, 0x01, 0xaa]);
        // Bad options: delta nibble 15, length running past the end.
        send(&[0x40, 0x02, 0x00, 0x02, 0xf1, 0x00]);
        send(&[0x40, 0x02, 0x00, 0x03, 0x1d, 0xff, 0x00]);
        // Oversized payloads.
        let mut big = post(round, "r", vec![0x55; 3000]).to_bytes_unlimited().expect("encode");
        send(&big);
        big.truncate(1500);
        send(&big);
        // Wrong kid; real kid with a bad tag at a fresh counter; malformed OSCORE option.
        send(&oscore_request(&[0xde, 0xad, 0xbe, 0xef], round, vec![0x11; 20]));
        let kid = &kids[(round % 20) as usize];
        send(&oscore_request(kid, 1_000_000 + round, vec![0x22; 24]));
        let mut bad_opt =
            Packet::from_bytes(&oscore_request(kid, round, vec![0x33; 10])).expect("packet");
        bad_opt.set_option(CoapOption::Oscore, [vec![0xe9, 0x01]].into_iter().collect());
        send(&bad_opt.to_bytes().expect("encode"));
        // Pairing garbage (no window is open: refused) and unprotected access to readings.
        send(&post(10_000 + round, "p/hello", vec![0x85, 0x01]).to_bytes().expect("encode"));
        send(&post(20_000 + round, "r", b"21.5".to_vec()).to_bytes().expect("encode"));
    }
    assert!(sent > 3000);

    // The hub still serves the fleet: acknowledgements keep coming.
    let mut now = before;
    sim.until("the fleet to keep reporting", Duration::from_secs(60), |l| {
        let s: Value = serde_json::from_str(l.strip_prefix("STATUS ")?).ok()?;
        now = s["acknowledged"].as_u64()?;
        (now > before + 200).then_some(())
    });
    assert!(hub.alive(), "the hub died");
    let sec = hub.security();
    for kind in
        ["malformed", "unknown_kid", "bad_tag", "bad_oscore", "pairing_refused", "bad_request"]
    {
        assert!(sec[kind].as_u64() > Some(0), "{kind} not counted: {sec}");
    }
    let log = std::fs::read_to_string(&hub.log).unwrap_or_default();
    assert!(!log.contains("panicked"), "the hub panicked:\n{log}");
    drop(sim);
}
