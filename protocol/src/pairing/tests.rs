//! Pairing scenarios: honest runs, wrong PINs, malformed keys, and a man in the middle.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::keys::mask;
use super::*;
use crate::oscore::{Kid, ReplayWindow, SecurityContext, SenderSequence};
use crate::time::{Millis, UnixTime};

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn descriptor() -> Descriptor {
    Descriptor {
        model: "hearth-thermo-1".into(),
        serial: "TH-0001".into(),
        firmware_version: 3,
        updatable: true,
        verifies_signatures: false,
        capabilities: vec!["temperature".into(), "setpoint".into()],
        support_end: UnixTime(2_000_000_000),
    }
}

fn kids() -> (Kid, Kid) {
    (Kid::new(&[0x01, 0x02]).expect("kid"), Kid::new(&[]).expect("kid"))
}

/// Runs the whole exchange through the wire encodings; returns both results.
fn pair(
    seed: u64,
    typed: impl Fn(&Pin) -> Pin,
) -> (Result<Paired, PairingError>, Result<Paired, PairingError>) {
    let mut r = rng(seed);
    let (sensor, hello, pin) = SensorPairing::start(&mut r, descriptor(), MaskWidth::TWO);
    let hello = SensorHello::decode(&hello.encode()).expect("hello");
    let (s_kid, h_kid) = kids();
    let (hub, hub_hello) = HubPairing::start(&mut r, hello, s_kid, h_kid).expect("start");
    let hub_hello = HubHello::decode(&hub_hello.encode()).expect("hub hello");
    let sensor = sensor.on_hub_hello(hub_hello).expect("hub hello accepted");
    let (hub, hub_confirm) = match hub.enter_pin(&typed(&pin)) {
        Ok(x) => x,
        Err(e) => return (Err(e), Err(PairingError::HubProofInvalid)),
    };
    let hub_confirm = Confirm::decode(&hub_confirm.encode()).expect("confirm");
    match sensor.on_hub_confirm(&hub_confirm) {
        Ok((s_paired, s_confirm)) => {
            let s_confirm = Confirm::decode(&s_confirm.encode()).expect("confirm");
            (hub.finish(&s_confirm), Ok(s_paired))
        }
        Err(e) => (Err(PairingError::SensorProofInvalid), Err(e)),
    }
}

#[test]
fn correct_pin_pairs_both_sides_with_equal_contexts() {
    let (hub, sensor) = pair(1, |p| *p);
    let hub = hub.expect("hub paired");
    let sensor = sensor.expect("sensor paired");
    assert_eq!(hub.context, sensor.context.reversed());
    assert_eq!(hub.descriptor, descriptor());
    assert_eq!(hub.context.master_secret.len(), 16);
    // The contexts interoperate.
    let lease = |mut s: SenderSequence| {
        let l = s.poll_lease().expect("lease");
        s.lease_durable(l);
        s
    };
    let mut s =
        SecurityContext::new(&sensor.context, lease(SenderSequence::new(10)), ReplayWindow::Empty);
    let mut h =
        SecurityContext::new(&hub.context, lease(SenderSequence::new(10)), ReplayWindow::Empty);
    let mut req = coap_lite::Packet::new();
    req.header.code = coap_lite::MessageClass::Request(coap_lite::RequestType::Post);
    req.payload = b"21.5".to_vec();
    let (sealed, _) = s.protect_request(&req).expect("protect");
    assert!(matches!(
        h.unprotect_request(&sealed.packet),
        Ok(crate::oscore::Verified::Request { .. })
    ));
}

#[test]
fn pin_is_shown_zero_padded_and_parses_back() {
    for seed in 0..20 {
        let (_, _, pin) = SensorPairing::start(&mut rng(seed), descriptor(), MaskWidth::TWO);
        let shown = pin.to_string();
        assert_eq!(shown.len(), 5);
        assert_eq!(Pin::parse(&shown, MaskWidth::TWO), Ok(pin));
    }
    let w3 = MaskWidth::new(3).expect("w");
    assert_eq!(Pin::parse("16777215", w3).map(|p| p.to_string()), Ok("16777215".into()));
    assert_eq!(Pin::parse("16777216", w3), Err(PairingError::BadPin(8)));
    assert_eq!(Pin::parse("65536", MaskWidth::TWO), Err(PairingError::BadPin(5)));
    assert_eq!(Pin::parse("1234", MaskWidth::TWO), Err(PairingError::BadPin(5)));
    assert_eq!(Pin::parse("12a45", MaskWidth::TWO), Err(PairingError::BadPin(5)));
    assert_eq!(MaskWidth::new(1), Err(PairingError::BadWidth));
    assert_eq!(MaskWidth::new(5), Err(PairingError::BadWidth));
}

#[test]
fn wrong_pin_fails_at_the_hubs_confirmation_or_earlier() {
    let mut on_curve_wrong = 0;
    for seed in 0..16 {
        let (hub, sensor) = pair(seed, |p| {
            let v: u32 = p.to_string().parse().expect("digits");
            Pin::parse(&format!("{:05}", (v + 1 + seed as u32) % 65536), MaskWidth::TWO)
                .expect("pin")
        });
        match hub {
            // A completion off the curve is caught locally at the hub, nothing sent.
            Err(PairingError::OffCurve) => {
                assert_eq!(sensor.err(), Some(PairingError::HubProofInvalid))
            }
            // Otherwise the sensor refuses the hub's proof and never confirms.
            Err(PairingError::SensorProofInvalid) => {
                on_curve_wrong += 1;
                assert_eq!(sensor.err(), Some(PairingError::HubProofInvalid));
            }
            other => panic!("wrong PIN must fail, got {other:?}"),
        }
    }
    assert!(on_curve_wrong > 0, "some wrong PINs must reach the sensor's check");
}

#[test]
fn the_window_counts_failures_backs_off_and_closes() {
    let cfg = WindowConfig { duration_ms: 120_000, max_failures: 3, backoff_base_ms: 1000 };
    let mut w = PairingWindow::open(Millis(0), cfg);
    assert_eq!(w.admit(Millis(0)), Ok(()));
    w.record_failure(Millis(10));
    assert_eq!(w.admit(Millis(500)), Err(PairingRefused::BackingOff { retry_at: Millis(1010) }));
    assert_eq!(w.admit(Millis(1010)), Ok(()));
    w.record_failure(Millis(2000));
    assert_eq!(w.admit(Millis(3999)), Err(PairingRefused::BackingOff { retry_at: Millis(4000) }));
    assert_eq!(w.attempts_left(), 1);
    w.record_failure(Millis(5000));
    assert_eq!(w.admit(Millis(100_000)), Err(PairingRefused::TooManyFailures));
    let w = PairingWindow::open(Millis(0), cfg);
    assert_eq!(w.admit(Millis(119_999)), Ok(()));
    assert_eq!(w.admit(Millis(120_000)), Err(PairingRefused::Closed));
}

#[test]
fn sensor_emits_nothing_pin_dependent_before_the_hubs_proof() {
    let mut r = rng(7);
    let (sensor, hello, pin) = SensorPairing::start(&mut r, descriptor(), MaskWidth::TWO);
    // The only thing sent so far is the hello, whose PIN bytes are zero: the hello is the same
    // whatever the PIN is.
    let wire = hello.encode();
    assert_eq!(&hello.masked_key[31..], &[0, 0]);
    let digits = pin.to_string();
    let v: u32 = digits.parse().expect("digits");
    let pin_bytes = [(v >> 8) as u8, v as u8];
    assert!(
        !wire.windows(2).any(|w| w == pin_bytes) || pin_bytes == [0, 0] || v < 256,
        "hello must not carry the PIN bytes next to each other"
    );
    // An attacker posing as the hub answers; the sensor derives keys but sends nothing.
    let (s_kid, h_kid) = kids();
    let (attacker, attacker_hello) =
        HubPairing::start(&mut r, hello.clone(), s_kid, h_kid).expect("start");
    let waiting = sensor.on_hub_hello(attacker_hello).expect("accepted");
    // The attacker has to commit to a guess; a wrong one ends the attempt with no reply.
    let guess = Pin::parse(&format!("{:05}", (v + 1) % 65536), MaskWidth::TWO).expect("pin");
    let proof = match attacker.enter_pin(&guess) {
        Ok((_, proof)) => proof,
        Err(_) => Confirm { mac: [0u8; 32] },
    };
    assert_eq!(waiting.on_hub_confirm(&proof).err(), Some(PairingError::HubProofInvalid));
}

#[test]
fn malformed_keys_are_refused() {
    let mut r = rng(3);
    let (_, hello, pin) = SensorPairing::start(&mut r, descriptor(), MaskWidth::TWO);
    let (s_kid, h_kid) = kids();

    // Uncompressed (65 bytes, 0x04) and identity (0x00) encodings never parse as a hello.
    let mut uncompressed = hello.encode();
    let at = uncompressed.windows(34).position(|w| w[0] == 0x58 && w[1] == 33).expect("key field");
    uncompressed[at + 2] = 0x04;
    assert_eq!(SensorHello::decode(&uncompressed), Err(PairingError::NotCompressed));
    let mut identity = hello.clone();
    identity.masked_key = [0u8; 33];
    assert_eq!(SensorHello::decode(&identity.encode()), Err(PairingError::NotCompressed));
    let mut long = hello.encode();
    long[at + 1] = 34; // length says 34: now the rest no longer parses as the expected key
    assert!(SensorHello::decode(&long).is_err());

    // A key whose masked bytes are not zero is refused (it would leak or confuse the PIN).
    let mut unmasked = hello.clone();
    unmasked.masked_key[32] = 1;
    let (hub, _) = HubPairing::start(&mut r, unmasked, s_kid, h_kid).expect("start");
    assert_eq!(hub.enter_pin(&pin).err(), Some(PairingError::NotMasked));

    // Off-curve: an X for which no Y exists.
    let mut off = hello.clone();
    let mut found = false;
    for x in 0u8..=255 {
        off.masked_key[1] = x;
        if p256::PublicKey::from_sec1_bytes(&{
            let mut k = off.masked_key;
            k[31] = 0;
            k[32] = 0;
            k
        })
        .is_err()
        {
            found = true;
            break;
        }
    }
    assert!(found);
    let zero = Pin::parse("00000", MaskWidth::TWO).expect("pin");
    let (hub, _) = HubPairing::start(&mut r, off, s_kid, h_kid).expect("start");
    assert_eq!(hub.enter_pin(&zero).err(), Some(PairingError::OffCurve));

    // The hub's own key reflected back as the sensor's: with the same RNG seed the hub makes
    // the same ephemeral key, so a hello carrying it can be built before the hub starts.
    let (_, hub_hello) =
        HubPairing::start(&mut rng(99), hello.clone(), s_kid, h_kid).expect("start");
    let (masked, reflected_pin) = mask(&hub_hello.key, MaskWidth::TWO);
    let mut reflected = hello.clone();
    reflected.masked_key = masked;
    let (hub, again) = HubPairing::start(&mut rng(99), reflected, s_kid, h_kid).expect("start");
    assert_eq!(again.key, hub_hello.key);
    assert_eq!(hub.enter_pin(&reflected_pin).err(), Some(PairingError::ReflectedKey));

    // The sensor refuses a hub key that is not a valid compressed point or is its own.
    let (sensor, _, _) = SensorPairing::start(&mut r, descriptor(), MaskWidth::TWO);
    let mut bad = HubHello { key: [0u8; 33], nonce: [0; 16], sensor_kid: s_kid, hub_kid: h_kid };
    bad.key[0] = 0x04;
    assert_eq!(sensor.on_hub_hello(bad).err(), Some(PairingError::NotCompressed));
    let (sensor, s_hello, s_pin) = SensorPairing::start(&mut r, descriptor(), MaskWidth::TWO);
    let (full, _) = super::keys::unmask(&s_hello.masked_key, &s_pin).expect("own key");
    let own_key = HubHello { key: full, nonce: [0; 16], sensor_kid: s_kid, hub_kid: h_kid };
    assert_eq!(sensor.on_hub_hello(own_key).err(), Some(PairingError::ReflectedKey));
}

/// One man-in-the-middle run: the attacker substitutes its own keys in both directions. It
/// guesses `guess` for the real sensor's PIN; the owner types `typed` at the hub. Returns
/// whether the attacker got the sensor to pair with it, and whether it got the hub to.
fn mitm(seed: u64, guess: impl Fn(&Pin) -> Pin, typed: impl Fn(&Pin, &Pin) -> Pin) -> (bool, bool) {
    let mut r = rng(seed);
    let (s_kid, h_kid) = kids();
    let (sensor, real_hello, real_pin) = SensorPairing::start(&mut r, descriptor(), MaskWidth::TWO);
    // Towards the hub the attacker plays a sensor with its own key (and so its own PIN).
    let (fake_sensor, fake_hello, fake_pin) =
        SensorPairing::start(&mut r, descriptor(), MaskWidth::TWO);
    let (hub, hub_hello) = HubPairing::start(&mut r, fake_hello, s_kid, h_kid).expect("start");
    // Towards the sensor it plays the hub with its own key.
    let (fake_hub, fake_hub_hello) =
        HubPairing::start(&mut r, real_hello, s_kid, h_kid).expect("start");
    let sensor = sensor.on_hub_hello(fake_hub_hello).expect("sensor takes the hub hello");
    let fake_sensor = fake_sensor.on_hub_hello(hub_hello).expect("attacker takes hub hello");

    // Sensor side: the attacker must prove a PIN guess first.
    let fooled_sensor = match fake_hub.enter_pin(&guess(&real_pin)) {
        Ok((_, proof)) => sensor.on_hub_confirm(&proof).is_ok(),
        Err(_) => false,
    };
    // Hub side: the owner types the PIN shown on the real sensor.
    let fooled_hub = match hub.enter_pin(&typed(&real_pin, &fake_pin)) {
        Ok((hub, proof)) => match fake_sensor.on_hub_confirm(&proof) {
            Ok((_, reply)) => hub.finish(&reply).is_ok(),
            // The attacker cannot produce a valid reply without the key's discrete log; its best
            // effort is any MAC, which must fail.
            Err(_) => hub.finish(&Confirm { mac: [0x5a; 32] }).is_ok(),
        },
        Err(_) => false,
    };
    (fooled_sensor, fooled_hub)
}

fn offset(p: &Pin, by: u32) -> Pin {
    let v: u32 = p.to_string().parse().expect("digits");
    Pin::parse(&format!("{:05}", (v + by) % 65536), MaskWidth::TWO).expect("pin")
}

#[test]
fn man_in_the_middle_fails_for_every_pin_it_did_not_guess() {
    for seed in 0..12u64 {
        let by = 1 + (seed as u32 * 7919) % 65535;
        let (sensor, hub) = mitm(seed, |p| offset(p, by), |real, _| *real);
        assert!(!sensor, "seed {seed}: sensor accepted a wrong guess");
        assert!(!hub, "seed {seed}: hub paired with the attacker");
    }
    // The simulation can fail: a correct guess fools the sensor, and the hub is fooled when the
    // PIN typed happens to equal the attacker's own.
    let (sensor, hub) = mitm(100, |p| *p, |_, fake| *fake);
    assert!(sensor && hub, "a correct guess must succeed, else the test proves nothing");
}
