//! Writes the seed corpora for the fuzz targets in `fuzz/` (run from the workspace root:
//! `cargo run -p protocol --example write_fuzz_seeds`). Seeds are valid inputs; the fuzzer
//! mutates them, and `tests/fuzz_corpora.rs` replays them on every test run.

use std::fs;
use std::path::Path;

use coap_lite::{MessageClass, Packet, RequestType};
use protocol::oscore::{ContextParams, Kid, Lease, ReplayWindow, SecurityContext, SenderSequence};
use protocol::pairing::{Descriptor, MaskWidth, SensorPairing};
use protocol::senml::{Reading, UnixTimeMillis, Value};
use protocol::time::UnixTime;
use protocol::update::{Advisory, Manifest, Severity, SigningKeyPair};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("fuzz/corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn main() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);

    // OSCORE: requests protected by RFC 8613 C.1's client, plus the C.4 vector itself.
    let params = ContextParams {
        master_secret: (1..=16).collect(),
        master_salt: vec![0x9e, 0x7c, 0xa9, 0x22, 0x23, 0x78, 0x63, 0x40],
        sender_id: Kid::default(),
        recipient_id: Kid::new(&[1]).expect("kid"),
        id_context: None,
    };
    let mut seq = SenderSequence::resume(Lease(20), 100);
    seq.lease_durable(Lease(120));
    let mut client = SecurityContext::new(&params, seq, ReplayWindow::Empty);
    for (i, payload) in [&b""[..], b"21.5", &[0xa5; 200]].iter().enumerate() {
        let mut req = Packet::new();
        req.header.code = MessageClass::Request(RequestType::Post);
        req.header.message_id = 7 + i as u16;
        req.set_token(vec![1, 2, 3]);
        req.add_option(coap_lite::CoapOption::UriPath, b"r".to_vec());
        req.payload = payload.to_vec();
        let (sealed, _) = client.protect_request(&req).expect("protect");
        let bytes = sealed.packet.to_bytes().expect("encode");
        write("oscore_unprotect", &format!("request-{i}"), &bytes);
        let mut framed = vec![bytes.len() as u8];
        framed.extend_from_slice(&bytes);
        framed.push(bytes.len() as u8);
        framed.extend_from_slice(&bytes);
        write("hub_datagram", &format!("request-twice-{i}"), &framed);
    }

    // Option values and plain CoAP.
    for (name, v) in [
        ("c4", &[0x09, 0x14][..]),
        ("c5", &[0x09, 0x14, 0x00]),
        ("c6", &[0x19, 0x14, 0x08, 0x37, 0xcb, 0xf3, 0x21, 0x00, 0x17, 0xa2, 0xd3]),
        ("c8", &[0x01, 0x00]),
        ("empty", &[]),
    ] {
        write("coap_options", name, v);
    }
    let plain = [
        0x44, 0x01, 0x5d, 0x1f, 0x00, 0x00, 0x39, 0x74, 0x39, 0x6c, 0x6f, 0x63, 0x61, 0x6c, 0x68,
        0x6f, 0x73, 0x74, 0x83, 0x74, 0x76, 0x31,
    ];
    write("coap_options", "c4-plain", &plain);

    // Pairing messages.
    let descriptor = Descriptor {
        model: "hearth-thermo-1".into(),
        serial: "TH-1".into(),
        firmware_version: 2,
        updatable: true,
        verifies_signatures: true,
        capabilities: vec!["temperature".into(), "setpoint".into()],
        support_end: UnixTime(2_000_000_000),
    };
    let (_, hello, _) = SensorPairing::start(&mut rng, descriptor, MaskWidth::TWO);
    write("pairing_messages", "sensor-hello", &hello.encode());
    let mut framed = vec![];
    let mut req =
        protocol::link::coap::post(1, &[9], protocol::link::coap::PATH_HELLO, hello.encode());
    req.header.set_type(coap_lite::MessageType::Confirmable);
    let bytes = req.to_bytes().expect("encode");
    framed.push(bytes.len() as u8);
    framed.extend_from_slice(&bytes);
    write("hub_datagram", "pairing-hello", &framed);

    // Manifests and advisories.
    let key = SigningKeyPair::generate(&mut rng);
    let manifest = Manifest {
        model: "hearth-thermo-1".into(),
        version: 3,
        min_version: 1,
        image_size: 1024,
        image_sha256: [7; 32],
        expires: UnixTime(1_900_000_000),
        disruptive: false,
        risks_mitigated: "Fixes a buffer overflow in the CoAP parser.".into(),
        released: UnixTime(1_800_000_000),
    };
    write("manifest", "manifest", &manifest.sign(&key));
    let advisory = Advisory {
        model: "hearth-button-1".into(),
        affected_low: 1,
        affected_high: 4,
        severity: Severity::High,
        fixed_in: None,
        text: "Pairing key reuse; the model cannot be updated.".into(),
        issued: UnixTime(1_800_000_000),
    };
    write("manifest", "advisory", &advisory.sign(&key));

    // SenML.
    let readings = vec![
        Reading {
            name: "urn:dev:T-1:temp".into(),
            unit: Some("Cel".into()),
            value: Value::Number(21.5),
            time: UnixTimeMillis(1_800_000_000_000),
        },
        Reading {
            name: "urn:dev:T-1:door".into(),
            unit: None,
            value: Value::Bool(true),
            time: UnixTimeMillis(1_800_000_001_250),
        },
    ];
    write("senml", "two-records", &protocol::senml::encode(&readings));

    // Replay window: a few counter patterns.
    write(
        "replay_window",
        "ascending",
        &(0u16..64).flat_map(|i| ((i << 1) | 1).to_be_bytes()).collect::<Vec<_>>(),
    );
    write("replay_window", "jumps", &[0x7f, 0xff, 0x00, 0x03, 0x00, 0x41, 0x7f, 0x01, 0x00, 0x01]);
}
