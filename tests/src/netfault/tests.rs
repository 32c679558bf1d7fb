//! The relay's own tests against a loopback echo server.

use super::*;
use coap_lite::{CoapOption, Packet};
use protocol::oscore::Kid;

fn echo_server() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let a = s.local_addr().expect("addr");
    let s2 = s.try_clone().expect("clone");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s2.recv_from(&mut buf) {
            let _ = s2.send_to(&buf[..n], from);
        }
    });
    (s, a)
}

fn relay(target: SocketAddr, m: Impairment, seed: u64) -> NetRelay {
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let config = RelayConfig {
        seed,
        udp: vec![Forward { listen, target }],
        impairment: m,
        ..Default::default()
    };
    NetRelay::start(config).expect("relay")
}

/// Sends `n` numbered datagrams through the relay, in batches of 100 (no socket overflows),
/// and collects the numbers echoed back, each batch until `quiet` passes without one.
fn round_trip(r: &NetRelay, n: u32, quiet: Duration) -> Vec<u32> {
    let c = UdpSocket::bind("127.0.0.1:0").expect("client");
    c.set_read_timeout(Some(quiet)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    for batch in (0..n).collect::<Vec<_>>().chunks(100) {
        for i in batch {
            c.send_to(&i.to_be_bytes(), r.udp[0]).expect("send");
        }
        while let Ok(len) = c.recv(&mut buf) {
            if len == 4 {
                got.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
            }
        }
    }
    got
}

#[test]
fn a_clean_relay_passes_everything_once_in_order() {
    let (_server, addr) = echo_server();
    let r = relay(addr, Impairment::default(), 1);
    let got = round_trip(&r, 200, Duration::from_millis(500));
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    assert_eq!(r.stats()["udp"]["up"]["sent"], 200);
}

#[test]
fn loss_duplication_and_reordering_happen_at_about_their_rates_and_replay_from_the_seed() {
    let (_server, addr) = echo_server();
    let m = Impairment { loss: 0.2, duplicate: 0.05, reorder: 0.05, delay_ms: 20, jitter_ms: 10 };
    let r = relay(addr, m, 7);
    let got = round_trip(&r, 2000, Duration::from_millis(150));
    let s = r.stats();
    let up = &s["udp"]["up"];
    let lost = up["lost"].as_u64().expect("n");
    // 20 % of 2,000 each way: well within 300..500.
    assert!((300..=500).contains(&lost), "{s}");
    assert!(up["duplicated"].as_u64() > Some(40) && up["reordered"].as_u64() > Some(40), "{s}");
    let mut unique = got.clone();
    unique.sort_unstable();
    unique.dedup();
    assert!(unique.len() < got.len(), "duplicates arrived");
    assert!(got.windows(2).any(|w| w[0] > w[1]), "reordered");
    // The same seed and traffic make the same decisions.
    let again = relay(addr, m, 7);
    round_trip(&again, 2000, Duration::from_millis(150));
    let s2 = again.stats();
    for k in ["lost", "duplicated", "held_back"] {
        assert_eq!(s["udp"]["up"][k], s2["udp"]["up"][k], "{k}");
    }
}

#[test]
fn a_partition_drops_datagrams_until_it_heals() {
    let (_server, addr) = echo_server();
    let r = relay(addr, Impairment::default(), 1);
    r.partition(Duration::from_secs(60));
    assert!(round_trip(&r, 10, Duration::from_millis(300)).is_empty());
    r.heal();
    assert_eq!(round_trip(&r, 10, Duration::from_millis(300)).len(), 10);
    assert_eq!(r.stats()["udp"]["up"]["partitioned"], 10);
}

#[test]
fn tcp_streams_keep_their_order_and_wait_out_a_partition() {
    let server = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = server.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in server.incoming().flatten() {
            std::thread::spawn(move || {
                let (mut r, mut w) = (s.try_clone().expect("clone"), s);
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let m = Impairment { delay_ms: 30, jitter_ms: 20, ..Default::default() };
    let config = RelayConfig {
        seed: 3,
        tcp: vec![Forward { listen, target }],
        impairment: m,
        ..Default::default()
    };
    let r = NetRelay::start(config).expect("relay");
    let mut c = TcpStream::connect(r.tcp[0]).expect("connect");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = c.try_clone().expect("clone");
    let d2 = data.clone();
    let writer = std::thread::spawn(move || {
        for chunk in d2.chunks(1000) {
            w.write_all(chunk).expect("write");
        }
    });
    let mut back = vec![0u8; data.len()];
    c.read_exact(&mut back).expect("read");
    writer.join().expect("writer");
    assert_eq!(back, data);
    // Partitioned: a byte waits; healed: it arrives.
    r.partition(Duration::from_secs(60));
    c.write_all(b"x").expect("write");
    c.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let mut one = [0u8; 1];
    assert!(c.read(&mut one).is_err(), "nothing passes a partition");
    assert!(
        TcpStream::connect(r.tcp[0])
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.read(&mut one)
            })
            .is_ok_and(|n| n == 0),
        "a new connection is closed during a partition"
    );
    r.heal();
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    c.read_exact(&mut one).expect("read after heal");
    assert_eq!(&one, b"x");
}

#[test]
fn the_audit_tells_retransmissions_from_nonce_reuse() {
    let mut a = Audit::new(1);
    let kid = Kid::new(&[1, 2, 3, 4]).expect("kid");
    // forged_oscore makes the token from the Message ID.
    let req = |piv: u64, mid: u16, ct: &[u8]| crate::forged_oscore(kid.as_bytes(), piv, mid, ct);
    let resp = |token: u16, piv: Option<u64>, ct: &[u8]| {
        let mut p = Packet::new();
        p.header.set_type(coap_lite::MessageType::Acknowledgement);
        p.header.code = coap_lite::MessageClass::Response(coap_lite::ResponseType::Changed);
        p.header.message_id = token;
        p.set_token(token.to_be_bytes().to_vec());
        let option = match piv {
            Some(v) => vec![0x01, v as u8],
            None => Vec::new(),
        };
        p.add_option(CoapOption::Oscore, option);
        p.payload = ct.to_vec();
        p.to_bytes().expect("encode")
    };
    a.record(0, true, &req(5, 10, b"aaaa"));
    a.record(0, true, &req(5, 10, b"aaaa")); // retransmission
    a.record(0, false, &resp(10, None, b"rrrr"));
    a.record(0, false, &resp(10, None, b"rrrr")); // cached answer resent
    assert_eq!((a.report.reuses, a.report.accepted), (0, 1));
    a.record(0, true, &req(6, 11, b"bbbb"));
    a.record(0, false, &resp(11, Some(9), b"ssss")); // under the server's own Partial IV
    assert_eq!(a.report.reuses, 0);
    assert_eq!(a.report.accepted, 1, "an answer under its own Partial IV accepts nothing");
    // The same Partial IV with another ciphertext: a reused nonce, each way.
    a.record(1, true, &req(5, 12, b"cccc"));
    a.record(0, true, &req(7, 13, b"dddd"));
    a.record(0, false, &resp(13, Some(9), b"tttt"));
    a.record(0, false, &resp(10, None, b"uuuu"));
    assert_eq!(a.report.reuses, 3, "{:?}", a.report.examples);
    assert_eq!(a.report.audited, 10);
}

#[test]
fn a_renewed_context_is_a_key_space_of_its_own_and_reuse_in_it_is_still_caught() {
    let mut a = Audit::new(2);
    let kid = Kid::new(&[1, 2, 3, 4]).expect("kid");
    // A request with an ID Context (RFC 8613 B.2 Request #2), token = Message ID.
    let with_ctx = |ctx: &[u8], piv: u8, mid: u16, ct: &[u8]| {
        let mut p = Packet::new();
        p.header.code = coap_lite::MessageClass::Request(coap_lite::RequestType::Post);
        p.header.message_id = mid;
        p.set_token(mid.to_be_bytes().to_vec());
        let opt = protocol::oscore::OscoreOption {
            piv: Some(protocol::oscore::Piv::new(u64::from(piv)).expect("piv")),
            kid_context: Some(ctx.to_vec()),
            kid: Some(kid),
        };
        p.add_option(CoapOption::Oscore, opt.encode());
        p.payload = ct.to_vec();
        p.to_bytes().expect("encode")
    };
    a.record(0, true, &crate::forged_oscore(kid.as_bytes(), 5, 10, b"old-"));
    // The same kid and Partial IV under a renewed context: new keys, no reuse.
    a.record(0, true, &with_ctx(&[7; 16], 5, 11, b"new-"));
    a.record(0, true, &with_ctx(&[8; 16], 5, 12, b"new2"));
    assert_eq!(a.report.reuses, 0, "{:?}", a.report.examples);
    // Inside one renewed context a repeated Partial IV is still a reuse.
    a.record(0, true, &with_ctx(&[7; 16], 5, 13, b"xxxx"));
    assert_eq!(a.report.reuses, 1);
}
