//! Pairing admission on the hub link, sans-IO with virtual time (issue 15 finding 9): the
//! cookie round, shedding over budget, fair seating, session ends; and a real sensor that pairs
//! within 10 s of the owner opening the window while 65 hosts (64 IPv4 addresses and many ports
//! of ::1) send hellos as fast as the simulation lets them, answer the cookie challenge and keep
//! their sessions alive — with the hub's default limits.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use protocol::link::{HubConfig, HubEvent, HubLink, SensorEvent, SensorLink};
use protocol::oscore::Kid;
use protocol::pairing::{
    Descriptor, ECHO_OPTION, HelloLimits, MaskWidth, SensorPairing, WindowConfig,
};
use protocol::time::{Millis, UnixTime};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

const ECHO: CoapOption = CoapOption::Unknown(ECHO_OPTION);

fn descriptor(serial: &str) -> Descriptor {
    Descriptor {
        model: "hearth-temp-1".into(),
        serial: serial.into(),
        firmware_version: 1,
        updatable: true,
        verifies_signatures: false,
        capabilities: vec!["temperature".into()],
        support_end: UnixTime(2_000_000_000),
    }
}

fn request(mid: u16, path: &str, payload: Vec<u8>, echo: Option<&[u8]>) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = mid;
    p.set_token(mid.to_be_bytes().to_vec());
    for seg in path.split('/') {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    if let Some(e) = echo {
        p.add_option(ECHO, e.to_vec());
    }
    p.payload = payload;
    p.to_bytes().expect("encode")
}

fn hello(rng: &mut ChaCha20Rng, serial: &str, mid: u16, echo: Option<&[u8]>) -> Vec<u8> {
    let (_, hello, _) = SensorPairing::start(rng, descriptor(serial), MaskWidth::TWO);
    request(mid, "p/hello", hello.encode(), echo)
}

/// An answer of the hub: to whom, its code, its Echo value, its payload.
type Answer = (SocketAddr, ResponseType, Option<Vec<u8>>, Vec<u8>);

/// The hub's answers since the last call.
fn answers(hub: &mut HubLink<SocketAddr>) -> Vec<Answer> {
    let mut out = Vec::new();
    while let Some(t) = hub.poll_transmit() {
        let p = Packet::from_bytes(&t.bytes).expect("hub sends CoAP");
        let MessageClass::Response(code) = p.header.code else { panic!("not a response") };
        out.push((t.to, code, p.get_first_option(ECHO).cloned(), p.payload));
    }
    out
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

#[test]
fn a_hello_needs_the_cookie_of_its_own_endpoint_and_this_window() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut hub = HubLink::new(HubConfig::default());
    hub.open_pairing(Millis(1), WindowConfig::default());
    let a = addr("127.0.0.2:4000");
    hub.handle_datagram(Millis(10), a, &hello(&mut rng, "S-1", 1, None), &mut rng);
    let got = answers(&mut hub);
    assert_eq!(got.len(), 1);
    let (to, code, echo, _) = &got[0];
    assert_eq!((*to, *code), (a, ResponseType::Unauthorized));
    let cookie = echo.clone().expect("an Echo option");
    assert!(hub.waiting_for_pin().is_empty(), "no session before the cookie");

    // Another endpoint (even another port of the same host) cannot use it.
    let b = addr("127.0.0.2:4001");
    hub.handle_datagram(Millis(20), b, &hello(&mut rng, "S-2", 2, Some(&cookie)), &mut rng);
    assert_eq!(answers(&mut hub)[0].1, ResponseType::Unauthorized);
    // Its own endpoint can.
    hub.handle_datagram(Millis(30), a, &hello(&mut rng, "S-1", 3, Some(&cookie)), &mut rng);
    assert_eq!(answers(&mut hub)[0].1, ResponseType::Created);
    assert_eq!(hub.waiting_for_pin().len(), 1);
    assert_eq!(hub.counters().pairing_throttled, 0);

    // A re-opened window drops the session and voids the cookie.
    hub.open_pairing(Millis(40), WindowConfig::default());
    assert!(hub.waiting_for_pin().is_empty());
    hub.handle_datagram(Millis(50), a, &hello(&mut rng, "S-1", 4, Some(&cookie)), &mut rng);
    assert_eq!(answers(&mut hub)[0].1, ResponseType::Unauthorized);
    // Cookies expire (accepted in their minute and the next).
    let c2 = answers_cookie(&mut hub, &mut rng, a, Millis(60));
    hub.handle_datagram(Millis(120_000), a, &hello(&mut rng, "S-1", 6, Some(&c2)), &mut rng);
    assert_eq!(answers(&mut hub)[0].1, ResponseType::Unauthorized);
}

fn answers_cookie(
    hub: &mut HubLink<SocketAddr>,
    rng: &mut ChaCha20Rng,
    from: SocketAddr,
    now: Millis,
) -> Vec<u8> {
    let mid = rng.next_u32() as u16;
    hub.handle_datagram(now, from, &hello(rng, "probe", mid, None), rng);
    answers(hub).pop().and_then(|a| a.2).expect("a cookie")
}

#[test]
fn hellos_over_the_budget_are_dropped_unanswered_and_counted() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let limits = HelloLimits { host_burst: 2, host_interval_ms: 10_000, ..HelloLimits::default() };
    let config = HubConfig { hello: limits, sessions_per_source: 8, ..HubConfig::default() };
    let mut hub = HubLink::new(config);
    hub.open_pairing(Millis(1), WindowConfig::default());
    let a = addr("127.0.0.2:4000");
    let cookie = answers_cookie(&mut hub, &mut rng, a, Millis(5));
    let mut created = 0;
    for i in 0..10u16 {
        let serial = format!("S-{i}");
        hub.handle_datagram(
            Millis(10),
            a,
            &hello(&mut rng, &serial, 100 + i, Some(&cookie)),
            &mut rng,
        );
        match answers(&mut hub).as_slice() {
            [(_, ResponseType::Created, _, _)] => created += 1,
            [] => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(created, 2, "the host's burst");
    assert_eq!(hub.counters().pairing_throttled, 8);
    // Its share comes back with time.
    hub.handle_datagram(Millis(10_010), a, &hello(&mut rng, "S-x", 200, Some(&cookie)), &mut rng);
    assert_eq!(answers(&mut hub)[0].1, ResponseType::Created);
}

#[test]
fn a_full_table_yields_to_a_host_holding_fewer_and_sessions_end_on_time() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let config = HubConfig {
        max_sessions: 4,
        sessions_per_source: 4,
        session_max_ms: 30_000,
        hello: HelloLimits { host_burst: 8, ..HelloLimits::default() },
        ..HubConfig::default()
    };
    let mut hub = HubLink::new(config);
    hub.open_pairing(Millis(1), WindowConfig { duration_ms: 100_000, ..WindowConfig::default() });
    // One host takes the whole table.
    let greedy = addr("127.0.0.2:4000");
    let cookie = answers_cookie(&mut hub, &mut rng, greedy, Millis(5));
    for i in 0..4u16 {
        let now = Millis(10 + u64::from(i));
        hub.handle_datagram(
            now,
            greedy,
            &hello(&mut rng, &format!("G-{i}"), i, Some(&cookie)),
            &mut rng,
        );
        assert_eq!(answers(&mut hub)[0].1, ResponseType::Created);
    }
    assert_eq!(hub.waiting_for_pin().len(), 4);
    // A new host gets in: the greedy host's oldest session goes.
    let new = addr("127.0.0.3:4000");
    let c = answers_cookie(&mut hub, &mut rng, new, Millis(20));
    hub.handle_datagram(Millis(30), new, &hello(&mut rng, "N-1", 50, Some(&c)), &mut rng);
    assert_eq!(answers(&mut hub)[0].1, ResponseType::Created);
    let serials: Vec<String> = hub.waiting_for_pin().into_iter().map(|(_, d)| d.serial).collect();
    assert!(
        serials.contains(&"N-1".to_string()) && !serials.contains(&"G-0".to_string()),
        "{serials:?}"
    );
    // The greedy host cannot take it back: it holds more than the newcomer.
    hub.handle_datagram(Millis(40), greedy, &hello(&mut rng, "G-9", 60, Some(&cookie)), &mut rng);
    assert_eq!(answers(&mut hub)[0].1, ResponseType::ServiceUnavailable);
    assert!(hub.waiting_for_pin().iter().any(|(_, d)| d.serial == "N-1"));

    // Sessions kept alive by proof requests still end at their maximum age.
    let kids: Vec<Kid> = hub.waiting_for_pin().into_iter().map(|(k, _)| k).collect();
    let mut t = 100;
    while t < 29_000 {
        for k in &kids {
            let from = if hub.waiting_for_pin().iter().any(|(kk, d)| kk == k && d.serial == "N-1") {
                new
            } else {
                greedy
            };
            let mid = rng.next_u32() as u16;
            hub.handle_datagram(
                Millis(t),
                from,
                &request(mid, "p/proof", k.as_bytes().to_vec(), None),
                &mut rng,
            );
        }
        hub.handle_timeout(Millis(t));
        t += 1_000;
    }
    assert_eq!(hub.waiting_for_pin().len(), 4, "alive while the sensors ask");
    hub.handle_timeout(Millis(30_100));
    assert!(hub.waiting_for_pin().is_empty(), "ended 30 s after they started");

    // And sessions end when the window closes.
    let c = answers_cookie(&mut hub, &mut rng, new, Millis(31_000));
    hub.handle_datagram(Millis(31_010), new, &hello(&mut rng, "N-2", 70, Some(&c)), &mut rng);
    assert_eq!(hub.waiting_for_pin().len(), 1);
    hub.handle_timeout(Millis(100_001));
    assert!(hub.waiting_for_pin().is_empty());
}

/// One flooding endpoint: its cookie and its sessions.
struct Flooder {
    at: SocketAddr,
    cookie: Option<Vec<u8>>,
    sessions: Vec<Kid>,
    mid: u16,
}

#[test]
fn a_real_sensor_pairs_within_10_s_while_65_hosts_flood_hellos() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut hub = HubLink::new(HubConfig::default());
    let mut flooders: Vec<Flooder> = (0..64u8)
        .map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i)), 40_000))
        .chain((0..32u16).map(|p| SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 50_000 + p)))
        .map(|at| Flooder { at, cookie: None, sessions: Vec::new(), mid: 0 })
        .collect();
    let by_addr: HashMap<SocketAddr, usize> =
        flooders.iter().enumerate().map(|(i, f)| (f.at, i)).collect();
    let sensor_at = addr("10.0.0.9:5683");
    let mut sensor = SensorLink::unpaired(&mut rng);
    let mut pin = None;
    let mut paired_at = None;
    let mut keygens = 0u64;
    let (open_at, owner_delay) = (Millis(5_000), 3_000);
    let mut listed_at = None;
    let mut retry_at: Option<Millis> = None;
    // Hellos the flooders send (made once: the hub checks each one the same way).
    let pool: Vec<Vec<u8>> = (0..16)
        .map(|i| {
            let (_, h, _) =
                SensorPairing::start(&mut rng, descriptor(&format!("EVIL-{i}")), MaskWidth::TWO);
            h.encode()
        })
        .collect();
    // The flood runs before the window opens (refused) and all along.
    let mut now = Millis(1);
    while now.0 < 40_000 && paired_at.is_none() {
        if now == open_at {
            hub.open_pairing(now, WindowConfig::default());
            sensor.start_pairing(now, &mut rng, descriptor("REAL-1"), MaskWidth::TWO);
        }
        if retry_at.is_some_and(|t| t <= now) {
            retry_at = None;
            sensor.start_pairing(now, &mut rng, descriptor("REAL-1"), MaskWidth::TWO);
        }
        // Every flooder sends a hello every 20 ms (with its cookie once it has one) and asks
        // for the proof of each session it holds every second (keeping them alive).
        if now.0.is_multiple_of(20) {
            for f in &mut flooders {
                f.mid = f.mid.wrapping_add(1);
                let payload = pool[usize::from(f.mid) % pool.len()].clone();
                let bytes = request(f.mid, "p/hello", payload, f.cookie.as_deref());
                hub.handle_datagram(now, f.at, &bytes, &mut rng);
                if now.0.is_multiple_of(1_000) {
                    for k in &f.sessions {
                        f.mid = f.mid.wrapping_add(1);
                        let proof = request(f.mid, "p/proof", k.as_bytes().to_vec(), None);
                        hub.handle_datagram(now, f.at, &proof, &mut rng);
                    }
                }
            }
        }
        if sensor.poll_timeout().is_some_and(|t| t <= now) {
            sensor.handle_timeout(now, &mut rng);
        }
        while let Some(bytes) = sensor.poll_transmit() {
            hub.handle_datagram(now, sensor_at, &bytes, &mut rng);
        }
        while let Some(t) = hub.poll_transmit() {
            if t.to == sensor_at {
                sensor.handle_datagram(now, &t.bytes, &mut rng);
                continue;
            }
            let f = &mut flooders[by_addr[&t.to]];
            let p = Packet::from_bytes(&t.bytes).expect("CoAP");
            match p.header.code {
                MessageClass::Response(ResponseType::Unauthorized) => {
                    f.cookie = p.get_first_option(ECHO).cloned();
                }
                MessageClass::Response(ResponseType::Created) => {
                    let h = protocol::pairing::HubHello::decode(&p.payload).expect("hub hello");
                    f.sessions.push(h.sensor_kid);
                }
                _ => {}
            }
        }
        while let Some(e) = hub.poll_event() {
            match e {
                HubEvent::PairingRequested { .. } => keygens += 1,
                HubEvent::Paired { kid, .. } => {
                    if let Some(state) = hub.checkpoint(&kid) {
                        hub.checkpoint_durable(&kid, &state);
                    }
                    hub.paired_durable(now, &kid);
                }
                _ => {}
            }
        }
        while let Some(e) = sensor.poll_event() {
            match e {
                SensorEvent::ShowPin(p) => pin = Some(p),
                SensorEvent::Paired(_) => paired_at = Some(now),
                SensorEvent::PairingRefused(_) | SensorEvent::PairingFailed(_) => {
                    // Like the simulator: try again with a fresh key after 2 s.
                    pin = None;
                    retry_at = Some(now.plus(2_000));
                }
                _ => {}
            }
        }
        // The owner looks at the display and types the PIN a few seconds after the hub lists
        // the sensor.
        let waiting = hub.waiting_for_pin();
        let listed = waiting.iter().find(|(_, d)| d.serial == "REAL-1").map(|(k, _)| *k);
        match (listed, listed_at) {
            (Some(_), None) => listed_at = Some(now),
            (None, _) => listed_at = None,
            _ => {}
        }
        if let (Some(kid), Some(at), Some(p)) = (listed, listed_at, pin)
            && now.0 >= at.0 + owner_delay
            && !hub.pin_unresolved()
        {
            hub.enter_pin(now, Some(kid), &p.to_string()).expect("the PIN is taken");
            listed_at = None;
        }
        now = now.plus(1);
        if now.0.is_multiple_of(1_000) {
            hub.handle_timeout(now);
        }
    }
    let paired_at = paired_at.expect("the real sensor paired");
    let took = paired_at.0 - open_at.0;
    println!(
        "paired {took} ms after the window opened (owner delay {owner_delay} ms); {keygens} key generations"
    );
    assert!(took <= 10_000, "took {took} ms");
    let c = hub.counters();
    assert!(c.pairing_throttled + c.unprotected_throttled > 10_000, "the flood was shed: {c:?}");
    assert!(c.pairing_throttled > 0, "hellos past the per-host filter met the budget: {c:?}");
    // The hub's P-256 work stayed within its budget: burst + rate × time.
    let seconds = (paired_at.0 - open_at.0) / 1_000 + 1;
    assert!(keygens <= 20 + 20 * seconds, "{keygens} key generations in {seconds} s");
}
