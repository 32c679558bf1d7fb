//! Update manager policy tests with a controllable clock.

use super::*;
use crate::device_id::DeviceId;
use protocol::update::{Manifest, SigningKeyPair};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const MODEL: &str = "hearth-climate-1";
const T0: UnixTime = UnixTime(1_800_000_000);

struct Fixture {
    _dir: tempfile::TempDir,
    updates: Updates,
    key: SigningKeyPair,
    kids: Vec<Kid>,
}

fn fixture(devices: u8, max_concurrent: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let mut updates = Updates::load(dir.path(), None, max_concurrent, 10, T0);
    let key = SigningKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(7));
    updates
        .trust(MODEL, &protocol::hex::encode(&key.public().to_sec1_compressed()))
        .expect("trust");
    let kids: Vec<Kid> = (1..=devices).map(|i| Kid::new(&[i, 0, 0, 1]).expect("kid")).collect();
    for k in &kids {
        updates.device(k, MODEL, 1, true);
    }
    Fixture { _dir: dir, updates, key, kids }
}

fn release(f: &mut Fixture, version: u32, disruptive: bool) {
    let manifest = signed(f, version, disruptive, UnixTime(T0.0 + 86_400 * 365));
    f.updates.add_release(manifest.0, manifest.1, "owner", T0).expect("accepted");
}

/// A signed manifest and its image.
fn signed(f: &Fixture, version: u32, disruptive: bool, expires: UnixTime) -> (Vec<u8>, Vec<u8>) {
    let image = vec![version as u8; 3000];
    let sha256 = {
        use sha2::Digest;
        sha2::Sha256::digest(&image).into()
    };
    let manifest = Manifest {
        model: MODEL.into(),
        version,
        min_version: 1,
        image_size: image.len() as u32,
        image_sha256: sha256,
        expires,
        disruptive,
        risks_mitigated: "test".into(),
        released: T0,
    }
    .sign(&f.key);
    (manifest, image)
}

fn offered(changes: &[(Kid, Option<Arc<FirmwareOffer>>)]) -> usize {
    changes.iter().filter(|(_, o)| o.is_some()).count()
}

#[test]
fn automatic_by_default_and_disabled_when_the_owner_says_so() {
    let mut f = fixture(1, 10);
    f.updates.set_policy(None, Some(Policy::Disabled)).expect("policy");
    release(&mut f, 2, false);
    assert_eq!(offered(&f.updates.plan(T0)), 0, "disabled: nothing offered");
    let view = f.updates.view(T0);
    assert_eq!(view.devices[0].waiting_for.as_deref(), Some("updates are disabled"));
    f.updates.set_policy(None, Some(Policy::Auto)).expect("policy");
    assert_eq!(offered(&f.updates.plan(T0)), 1, "auto: offered");
    // A per-device override wins over the hub's policy; turning auto off withdraws the offer.
    f.updates.set_policy(Some(&f.kids[0]), Some(Policy::Disabled)).expect("policy");
    let changes = f.updates.plan(T0);
    assert_eq!(changes.len(), 1);
    assert!(changes[0].1.is_none(), "offer withdrawn");
}

#[test]
fn postponed_until_a_time_by_a_controllable_clock() {
    let mut f = fixture(1, 10);
    let until = T0.0 + 3600;
    f.updates.set_policy(None, Some(Policy::Postponed { until })).expect("policy");
    release(&mut f, 2, false);
    assert_eq!(offered(&f.updates.plan(UnixTime(until - 1))), 0);
    assert_eq!(offered(&f.updates.plan(UnixTime(until))), 1);
}

#[test]
fn disruptive_and_notify_only_updates_wait_for_the_owners_approval() {
    let mut f = fixture(2, 10);
    release(&mut f, 2, true);
    assert_eq!(offered(&f.updates.plan(T0)), 0);
    assert_eq!(
        f.updates.view(T0).devices[0].waiting_for.as_deref(),
        Some("disruptive: waiting for the owner's approval")
    );
    f.updates.approve(Some(&f.kids[0]), None, 2).expect("approve");
    let changes = f.updates.plan(T0);
    assert_eq!(offered(&changes), 1);
    assert_eq!(changes[0].0, f.kids[0], "only the approved device");
    f.updates.set_policy(None, Some(Policy::NotifyOnly)).expect("policy");
    release(&mut f, 3, false);
    let changes = f.updates.plan(T0);
    assert!(
        changes.iter().all(|(_, o)| o.is_none()),
        "notify-only offers nothing: {}",
        changes.len()
    );
    assert!(f.updates.approve(None, None, 3).is_err(), "all devices of which model?");
    f.updates.approve(None, Some("hearth-thermo-1"), 3).expect("approve");
    assert_eq!(offered(&f.updates.plan(T0)), 0, "another model's v3 approves nothing here");
    f.updates.approve(None, Some(MODEL), 3).expect("approve");
    assert_eq!(offered(&f.updates.plan(T0)), 2, "approved for all");
}

#[test]
fn delivery_is_bounded_and_failures_back_off_then_give_up() {
    let mut f = fixture(5, 2);
    release(&mut f, 2, false);
    assert_eq!(offered(&f.updates.plan(T0)), 2, "at most two at once");
    let first = f
        .kids
        .iter()
        .find(|k| f.updates.history(k).is_some_and(|d| d.offered.is_some()))
        .copied()
        .expect("one");
    let ok =
        UpdateReport { version: 2, running: 2, outcome: Outcome::Installed, reason: String::new() };
    f.updates.report(&first, &ok, T0);
    assert_eq!(offered(&f.updates.plan(T0)), 1, "a slot freed");
    // Failures back off (doubling) and stop after the limit.
    let mut f = fixture(1, 2);
    release(&mut f, 2, false);
    let second = f.kids[0];
    assert_eq!(offered(&f.updates.plan(T0)), 1);
    let failed = UpdateReport {
        version: 2,
        running: 1,
        outcome: Outcome::RolledBack,
        reason: "health".into(),
    };
    let mut now = T0;
    let mut last_wait = 0;
    for attempt in 1..=MAX_FAILURES {
        f.updates.report(&second, &failed, now);
        let retry_at = f.updates.history(&second).expect("device").retry_at;
        assert!(retry_at - now.0 > last_wait, "attempt {attempt}: the back-off grows");
        last_wait = retry_at - now.0;
        assert!(
            !f.updates
                .plan(UnixTime(retry_at - 1))
                .iter()
                .any(|(k, o)| *k == second && o.is_some())
        );
        now = UnixTime(retry_at);
        let again = f.updates.plan(now).iter().any(|(k, o)| *k == second && o.is_some());
        assert_eq!(again, attempt < MAX_FAILURES, "attempt {attempt}");
    }
    let history = f.updates.history(&second).expect("device").history;
    assert_eq!(
        history.iter().filter(|h| h.event == HistoryEvent::RolledBack).count(),
        MAX_FAILURES as usize
    );
}

#[test]
fn a_waiting_disruptive_release_does_not_hide_an_allowed_one() {
    let mut f = fixture(1, 10);
    release(&mut f, 2, false);
    release(&mut f, 3, true);
    let changes = f.updates.plan(T0);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].1.as_ref().map(|o| o.offer().version), Some(2), "v2 goes while v3 waits");
}

#[test]
fn failures_count_per_version_and_stale_offers_free_their_slot() {
    let mut f = fixture(2, 1);
    release(&mut f, 2, false);
    assert_eq!(offered(&f.updates.plan(T0)), 1);
    let stuck = f
        .kids
        .iter()
        .find(|k| f.updates.history(k).is_some_and(|d| d.offered.is_some()))
        .copied()
        .expect("one");
    // No progress for longer than the timeout: withdrawn, and the other device gets the slot.
    let later = UnixTime(T0.0 + OFFER_TIMEOUT_S + 1);
    let changes = f.updates.plan(later);
    assert!(changes.iter().any(|(k, o)| *k == stuck && o.is_none()), "stale offer withdrawn");
    assert!(changes.iter().any(|(k, o)| *k != stuck && o.is_some()), "slot reused");
    // Failures of v2 do not hold back v3.
    let failed =
        UpdateReport { version: 2, running: 1, outcome: Outcome::Failed, reason: "x".into() };
    for _ in 0..MAX_FAILURES {
        f.updates.report(&stuck, &failed, later);
    }
    release(&mut f, 3, false);
    let d = f.updates.history(&stuck).expect("device");
    assert!(
        f.updates
            .why_not(
                &DeviceId::from(stuck),
                &d,
                f.updates.releases.values().last().expect("v3"),
                later
            )
            .is_none()
    );
}

#[test]
fn a_sensor_cannot_claim_a_version_the_hub_never_offered() {
    let mut f = fixture(1, 10);
    release(&mut f, 2, false);
    let lie = UpdateReport {
        version: 9,
        running: u32::MAX,
        outcome: Outcome::Installed,
        reason: String::new(),
    };
    f.updates.report(&f.kids[0], &lie, T0);
    assert_eq!(f.updates.history(&f.kids[0]).map(|d| d.installed), Some(1));
    release(&mut f, 3, false); // still accepted: the floor did not move
}

#[test]
fn history_refusals_and_decisions_keep_only_their_newest() {
    let mut f = fixture(1, 10);
    release(&mut f, 2, true);
    let k = f.kids[0];
    // The owner approves and cancels over and over: every round adds history and an approval.
    for i in 0..300 {
        f.updates.approve(Some(&k), None, 2).expect("approve");
        assert_eq!(offered(&f.updates.plan(T0)), 1, "round {i}");
        assert_eq!(f.updates.cancel(&k, T0), Some(2));
    }
    let d = &f.updates.state.devices[&kid_id(&k)];
    assert_eq!(d.history.len(), types::HISTORY_KEPT);
    assert_eq!(d.history.last().map(|e| e.event), Some(HistoryEvent::Cancelled));
    assert_eq!(f.updates.state.approvals.len(), DECISIONS_KEPT);
    f.updates.approve(Some(&k), None, 2).expect("approve");
    assert_eq!(offered(&f.updates.plan(T0)), 1, "the newest decision still counts");
    // A feed that serves a bad release at every check: the newest refusals are kept.
    for _ in 0..100 {
        assert!(f.updates.add_release(b"not a manifest".to_vec(), Vec::new(), "feed", T0).is_err());
    }
    assert_eq!(f.updates.state.refused.len(), types::REFUSALS_KEPT);
}

#[test]
fn releases_keep_the_newest_per_model_and_the_one_being_delivered() {
    let mut f = fixture(1, 10);
    release(&mut f, 2, false);
    assert_eq!(offered(&f.updates.plan(T0)), 1, "v2 goes out");
    for v in 3..=7 {
        release(&mut f, v, false);
    }
    let listed = |f: &Fixture| {
        let mut l: Vec<u32> = f.updates.state.releases.iter().map(|(_, v)| *v).collect();
        l.sort_unstable();
        l
    };
    let on_disk = |f: &Fixture, v: u32| {
        let (m, i) = f.updates.paths(MODEL, v);
        (m.exists(), i.exists())
    };
    assert_eq!(listed(&f), [2, 4, 5, 6, 7], "the newest four, and v2 while it is delivered");
    assert_eq!(f.updates.releases.len(), 5);
    assert_eq!(on_disk(&f, 3), (false, false), "a superseded release's files are removed");
    // The device moves on to v7; v2 is then superseded too.
    let changes = f.updates.plan(T0);
    assert_eq!(
        changes.iter().filter_map(|(_, o)| o.as_ref()).map(|o| o.offer().version).next(),
        Some(7)
    );
    f.updates.plan(T0);
    assert_eq!(listed(&f), [4, 5, 6, 7]);
    assert_eq!(on_disk(&f, 2), (false, false));
    assert_eq!(on_disk(&f, 4), (true, true));
    // Anti-rollback still refuses what was dropped.
    let (m, i) = signed(&f, 3, false, UnixTime(T0.0 + 86_400));
    assert!(matches!(f.updates.add_release(m, i, "feed", T0), Err(UpdatesError::Refused(_))));
    // A release that expires leaves memory but stays the floor, across a restart too.
    let (m, i) = signed(&f, 8, false, UnixTime(T0.0 + 100));
    f.updates.add_release(m, i, "owner", T0).expect("v8");
    assert_eq!(listed(&f), [5, 6, 7, 8]);
    let later = UnixTime(T0.0 + 200);
    f.updates.plan(later);
    f.updates.plan(later);
    assert!(!f.updates.knows(MODEL, 8), "expired: not kept in memory");
    assert_eq!(f.updates.releases.len(), 3);
    let doc = f.updates.take_dirty().expect("changed");
    let reloaded = Updates::load(f._dir.path(), Some(&doc), 10, 10, later);
    assert_eq!(reloaded.releases.len(), 3, "v5..v7 re-verified; v8 expired");
    let mut reloaded = reloaded;
    let (m, i) = signed(&f, 8, false, UnixTime(T0.0 + 86_400 * 365));
    assert!(matches!(reloaded.add_release(m, i, "feed", later), Err(UpdatesError::Refused(_))));
}
