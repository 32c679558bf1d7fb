//! Firmware delivery over the link in the two-party harness: offers inside authenticated
//! acknowledgements, Block2 transfers over a lossy network, resumption after a power cut,
//! cancellation, sensor-side signature checks, and outcome reports.

mod harness;

use std::sync::Arc;

use harness::{HOUR, Harness, lossy, paired};
use protocol::link::fw::{DEFAULT_SZX, LinkOffer, Outcome, UpdateOffer, UpdateReport};
use protocol::link::{FirmwareOffer, SensorEvent};
use protocol::netsim::Faults;
use protocol::time::{Millis, UnixTime};
use protocol::update::{
    ImageAssembler, Manifest, SigningKeyPair, TrustAnchors, UpdateError, VerifiedImage,
    verify_image, verify_manifest,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

const MODEL: &str = "hearth-temp-1";
const NOW: UnixTime = UnixTime(1_800_000_000);

struct Release {
    key: SigningKeyPair,
    manifest: Vec<u8>,
    image: Vec<u8>,
}

fn release(seed: u64, version: u32, size: usize) -> Release {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let key = SigningKeyPair::generate(&mut rng);
    let mut image = vec![0u8; size];
    rng.fill_bytes(&mut image);
    let sha256: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(&image).into()
    };
    let manifest = Manifest {
        model: MODEL.into(),
        version,
        min_version: 1,
        image_size: size as u32,
        image_sha256: sha256,
        expires: UnixTime(NOW.0 + 86_400 * 90),
        disruptive: false,
        risks_mitigated: "Fixes a parser overflow.".into(),
        released: UnixTime(NOW.0 - 86_400),
    }
    .sign(&key);
    Release { key, manifest, image }
}

fn anchors(key: &SigningKeyPair) -> TrustAnchors {
    let mut a = TrustAnchors::default();
    a.add(MODEL, key.public());
    a
}

/// The hub's side: verify the release (as the update manager does), then offer it.
fn offer(h: &mut Harness, r: &Release, manifest_override: Option<Vec<u8>>) -> UpdateOffer {
    let verified = verify_manifest(&r.manifest, &anchors(&r.key), NOW).expect("hub verifies");
    let image = verify_image(&verified, &r.image).expect("image matches");
    let offer = UpdateOffer {
        version: verified.version(),
        size: r.image.len() as u32,
        sha256: *image.sha256(),
        szx: DEFAULT_SZX,
    };
    let fw = match manifest_override {
        // A compromised hub relays a manifest it should have refused.
        Some(m) => FirmwareOffer::forged(offer.clone(), m, r.image.clone()),
        None => FirmwareOffer::new(&verified, image, DEFAULT_SZX).expect("image of this manifest"),
    };
    let fw = Arc::new(fw);
    for kid in h.hub.contexts.keys().copied().collect::<Vec<_>>() {
        assert!(h.hub.link.set_offer(&kid, Some(fw.clone())));
    }
    offer
}

fn take_offer(h: &mut Harness, i: usize) -> LinkOffer {
    let mut id = 10_000;
    loop {
        h.queue_reading(i, id);
        id += 1;
        let got = h.run_until(Millis(h.now.0 + 60_000), |h| {
            h.sensors[i].firmware.iter().any(|e| matches!(e, SensorEvent::UpdateOffered(_)))
        });
        if got {
            break;
        }
    }
    let pos = h.sensors[i]
        .firmware
        .iter()
        .position(|e| matches!(e, SensorEvent::UpdateOffered(_)))
        .expect("offer");
    match h.sensors[i].firmware.remove(pos) {
        SensorEvent::UpdateOffered(o) => o,
        _ => unreachable!(),
    }
}

/// Fetches blocks from `assembler.offset()` on until the image completes or `stop_after`
/// blocks were fetched.
fn download(
    h: &mut Harness,
    i: usize,
    offer: &LinkOffer,
    assembler: &mut ImageAssembler,
    stop_after: Option<u32>,
) -> Result<bool, SensorEvent> {
    let o = offer.offer().clone();
    let mut fetched = 0;
    loop {
        if stop_after.is_some_and(|n| fetched >= n) {
            return Ok(false);
        }
        let num = (assembler.offset() / u64::from(o.block_size())) as u32;
        let now = h.now;
        h.sensors[i].link.fetch_block(now, &mut h.rng, o.version, num, o.szx);
        h.flush();
        assert!(
            h.run_until(Millis(h.now.0 + HOUR), |h| h.sensors[i].firmware.iter().any(
                |e| matches!(e, SensorEvent::Block { .. } | SensorEvent::FirmwareRefused { .. })
            )),
            "no answer for block {num}"
        );
        let pos = h.sensors[i]
            .firmware
            .iter()
            .position(|e| {
                matches!(e, SensorEvent::Block { .. } | SensorEvent::FirmwareRefused { .. })
            })
            .expect("event");
        match h.sensors[i].firmware.remove(pos) {
            SensorEvent::Block { offset, data, more, .. } => {
                assembler.push(offset, &data).expect("block fits");
                fetched += 1;
                if !more {
                    return Ok(true);
                }
            }
            other => return Err(other),
        }
    }
}

fn report(h: &mut Harness, i: usize, r: UpdateReport) {
    let now = h.now;
    h.sensors[i].link.report(now, &mut h.rng, r);
    h.flush();
    assert!(h.run_until(Millis(h.now.0 + HOUR), |h| {
        h.sensors[i].firmware.iter().any(|e| matches!(e, SensorEvent::ReportDelivered { .. }))
    }));
}

#[test]
fn a_constrained_sensor_downloads_over_a_lossy_link_verifies_the_digest_and_reports() {
    let mut h = paired(51, lossy(), 1);
    let r = release(1, 2, 64 * 1024 + 100);
    let offered = offer(&mut h, &r, None);
    let link_offer = take_offer(&mut h, 0);
    assert_eq!(link_offer.offer(), &offered);
    let mut asm = ImageAssembler::for_link_offer(&link_offer, MODEL);
    assert_eq!(download(&mut h, 0, &link_offer, &mut asm, None).ok(), Some(true));
    let image: VerifiedImage = asm.finish().expect("digest matches");
    assert_eq!(image.bytes(), r.image.as_slice());
    // Every block was served exactly once: retransmissions were answered from the cache.
    assert_eq!(h.hub.blocks_served.len() as u32, offered.blocks());
    assert!(h.hub.blocks_served.values().all(|&n| n == 1), "{:?}", h.hub.blocks_served);
    report(
        &mut h,
        0,
        UpdateReport { version: 2, running: 2, outcome: Outcome::Installed, reason: String::new() },
    );
    assert_eq!(h.hub.reports.len(), 1);
    assert_eq!(h.hub.reports[0].1.outcome, Outcome::Installed);
    assert_eq!(h.nonces.reuses, 0);
}

#[test]
fn a_sensor_that_verifies_signatures_refuses_a_bad_manifest_sent_over_its_link() {
    let r = release(2, 3, 4096);
    let stranger = release(3, 3, 4096);
    let mut bad_sig = r.manifest.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x40;
    for (manifest, expected) in
        [(bad_sig, UpdateError::BadSignature), (stranger.manifest.clone(), UpdateError::UnknownKey)]
    {
        let mut h = paired(52, Faults::none(3), 1);
        offer(&mut h, &r, Some(manifest));
        let link_offer = take_offer(&mut h, 0);
        let now = h.now;
        h.sensors[0].link.fetch_manifest(now, &mut h.rng, link_offer.offer().version);
        h.flush();
        assert!(h.run_until(Millis(h.now.0 + HOUR), |h| {
            h.sensors[0].firmware.iter().any(|e| matches!(e, SensorEvent::Manifest { .. }))
        }));
        let bytes = match h.sensors[0]
            .firmware
            .iter()
            .find(|e| matches!(e, SensorEvent::Manifest { .. }))
        {
            Some(SensorEvent::Manifest { bytes, .. }) => bytes.clone(),
            _ => unreachable!(),
        };
        // The sensor's own trust anchor is the manufacturer's key built into it.
        let verdict = verify_manifest(&bytes, &anchors(&r.key), NOW);
        assert_eq!(verdict.err(), Some(expected));
        report(
            &mut h,
            0,
            UpdateReport {
                version: 3,
                running: 1,
                outcome: Outcome::Failed,
                reason: format!("{expected}"),
            },
        );
        assert_eq!(h.hub.reports[0].1.outcome, Outcome::Failed);
        assert!(h.hub.blocks_served.is_empty(), "nothing of the image was fetched");
    }
}

#[test]
fn a_download_resumes_from_the_last_good_block_after_a_sensor_power_cut() {
    let mut h = paired(53, lossy(), 1);
    let r = release(4, 2, 40 * 1024);
    let offered = offer(&mut h, &r, None);
    let link_offer = take_offer(&mut h, 0);
    let mut asm = ImageAssembler::for_link_offer(&link_offer, MODEL);
    assert_eq!(download(&mut h, 0, &link_offer, &mut asm, Some(17)).ok(), Some(false));
    let written = r.image[..asm.offset() as usize].to_vec(); // what the inactive slot holds
    h.restart_sensor(0);
    // After the reboot the sensor learns of the offer again with its next acknowledgement and
    // continues from what its slot already holds.
    let again = take_offer(&mut h, 0);
    assert_eq!(again.offer(), &offered);
    let mut asm = ImageAssembler::for_link_offer(&again, MODEL);
    asm.push(0, &written).expect("slot contents");
    assert_eq!(download(&mut h, 0, &again, &mut asm, None).ok(), Some(true));
    assert_eq!(asm.finish().expect("digest").bytes(), r.image.as_slice());
    let served: u32 = h.hub.blocks_served.values().sum();
    assert!(
        served <= offered.blocks() + 1,
        "{served} blocks served for {} (too many re-sent)",
        offered.blocks()
    );
}

#[test]
fn a_cancelled_offer_is_no_longer_served() {
    let mut h = paired(54, Faults::none(2), 1);
    let r = release(5, 2, 8 * 1024);
    offer(&mut h, &r, None);
    let link_offer = take_offer(&mut h, 0);
    let mut asm = ImageAssembler::for_link_offer(&link_offer, MODEL);
    assert_eq!(download(&mut h, 0, &link_offer, &mut asm, Some(2)).ok(), Some(false));
    for kid in h.hub.contexts.keys().copied().collect::<Vec<_>>() {
        h.hub.link.set_offer(&kid, None);
    }
    let refused = download(&mut h, 0, &link_offer, &mut asm, None);
    assert!(matches!(refused, Err(SensorEvent::FirmwareRefused { version: 2 })), "{refused:?}");
}

#[test]
fn a_download_continues_after_the_hub_restarts() {
    let mut h = paired(55, lossy(), 1);
    let r = release(6, 2, 24 * 1024);
    offer(&mut h, &r, None);
    let link_offer = take_offer(&mut h, 0);
    let mut asm = ImageAssembler::for_link_offer(&link_offer, MODEL);
    assert_eq!(download(&mut h, 0, &link_offer, &mut asm, Some(9)).ok(), Some(false));
    // Power cut at the hub: its sequence resumes from the last durable lease, so its first
    // answers wait for a new lease instead of being lost.
    h.restart_hub(true);
    offer(&mut h, &r, None);
    assert_eq!(download(&mut h, 0, &link_offer, &mut asm, None).ok(), Some(true));
    assert_eq!(asm.finish().expect("digest").bytes(), r.image.as_slice());
    assert_eq!(h.nonces.reuses, 0);
}
