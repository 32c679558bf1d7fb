//! The budgets at their edges, and their arithmetic across simulated crashes (proptest).

use proptest::prelude::*;

use super::*;

/// Test endpoints: (host, port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Ep(u8, u16);

impl Endpoint for Ep {
    type Host = u8;
    fn host(&self) -> u8 {
        self.0
    }
    fn write_id(&self, out: &mut Vec<u8>) {
        out.push(self.0);
        out.extend_from_slice(&self.1.to_be_bytes());
    }
}

const KNOWN: Ep = Ep(1, 5683);
const KNOWN_REBOOTED: Ep = Ep(1, 40000);
const ATTACKER: Ep = Ep(2, 1);
/// Some Unix time (ms).
const T0: u64 = 1_700_000_000_000;

fn used(failed: u64) -> KeyUsage {
    KeyUsage { encryptions: 0, failed_decryptions: failed }
}

/// Verifies a forgery from `from` (routable or not): `Some(class)` if it was verified (and
/// failed), `None` if throttled.
fn forge(g: &mut Guard<Ep>, wall: u64, from: Ep, routable: bool) -> Option<Class<u8>> {
    match g.admit(wall, from, routable, used(0)) {
        Admit::Verify(c) => {
            g.settle(c, Outcome::Failed);
            Some(c)
        }
        Admit::Throttled => None,
        Admit::KeyRetired => panic!("key retired"),
    }
}

#[test]
fn a_flood_from_another_host_leaves_the_sensor_its_budget() {
    let mut g = Guard::new(Some(KNOWN), KeyUsage::default());
    let verified = (0..20_000u16).filter(|p| forge(&mut g, T0, Ep(2, *p), false).is_some());
    assert_eq!(verified.count(), FAIL_BURST as usize);
    assert_eq!(g.admit(T0, ATTACKER, false, used(0)), Admit::Throttled);
    // The sensor at its known endpoint is not touched.
    assert_eq!(g.admit(T0, KNOWN, false, used(0)), Admit::Verify(Class::Known));
    // The sensor rebooted onto a new port is unproven like the flood, until it proves it
    // receives there: then its host's routable budget applies.
    assert_eq!(g.admit(T0, KNOWN_REBOOTED, false, used(0)), Admit::Throttled);
    assert_eq!(g.admit(T0, KNOWN_REBOOTED, true, used(0)), Admit::Verify(Class::Routable(1)));
    // The attacker can prove its own address too, but only spends its own host's budget.
    let own = (0..100u16).filter(|p| forge(&mut g, T0, Ep(2, *p), true).is_some()).count();
    assert_eq!(own, ROUTABLE_BURST as usize);
    assert_eq!(g.admit(T0, Ep(3, 1), true, used(0)), Admit::Verify(Class::Routable(3)));
}

#[test]
fn a_spoofer_of_the_known_endpoint_drains_only_what_it_can_reach() {
    let mut g = Guard::new(Some(KNOWN), KeyUsage::default());
    let spoofed = (0..1000).filter(|_| forge(&mut g, T0, KNOWN, false).is_some()).count();
    assert_eq!(spoofed, FAIL_BURST as usize);
    assert_eq!(g.admit(T0, KNOWN, false, used(0)), Admit::Throttled);
    // The real sensor proves it receives at its endpoint: a blind spoofer cannot follow.
    assert_eq!(g.admit(T0, KNOWN, true, used(0)), Admit::Verify(Class::Routable(1)));
}

#[test]
fn the_budget_returns_only_with_wall_time() {
    let mut g = Guard::new(None, KeyUsage::default());
    for _ in 0..FAIL_BURST {
        assert!(forge(&mut g, T0, ATTACKER, false).is_some());
    }
    assert_eq!(g.admit(T0, ATTACKER, false, used(0)), Admit::Throttled);
    assert_eq!(g.admit(T0 + FAIL_REFILL_MS - 1, ATTACKER, false, used(0)), Admit::Throttled);
    assert!(forge(&mut g, T0 + FAIL_REFILL_MS, ATTACKER, false).is_some());
    // A clock that goes back earns nothing.
    assert_eq!(g.admit(T0 - 86_400_000, ATTACKER, false, used(0)), Admit::Throttled);
    // Sustained, every class together regains at most this many failures an hour: the hard
    // limit is weeks away.
    let per_hour =
        2 * 3_600_000 / FAIL_REFILL_MS + ROUTABLE_HOSTS as u64 * 3_600_000 / ROUTABLE_REFILL_MS;
    let days = FAILED_DECRYPTION_LIMIT as f64 / per_hour as f64 / 24.0;
    assert!(days > 40.0, "the hard limit is {days:.1} days of sustained attack away");
    let spent = used(FAILED_DECRYPTION_LIMIT);
    assert_eq!(g.admit(T0, KNOWN, false, spent), Admit::KeyRetired);
}

#[test]
fn verified_tags_cost_nothing_once_durable_and_unchecked_ones_nothing_at_all() {
    let mut g = Guard::new(Some(KNOWN), KeyUsage::default());
    // 31 genuine requests verified, none durable yet: the bucket shows them charged (the
    // throttle must not reveal outcomes before they are durable)...
    for _ in 0..FAIL_BURST - 1 {
        let Admit::Verify(c) = g.admit(T0, KNOWN, false, used(0)) else { panic!() };
        g.settle(c, Outcome::Verified);
    }
    // ...a replay (never verified) gives its token back at once...
    let Admit::Verify(c) = g.admit(T0, KNOWN, false, used(0)) else { panic!() };
    g.settle(c, Outcome::Unchecked);
    // ...and the checkpoint records them uncharged.
    let (_, state) = g.checkpoint(T0, used(0), 0);
    assert_eq!(state.known.tokens, FAIL_BURST);
    assert_eq!(g.admit(T0, KNOWN, false, used(0)), Admit::Verify(Class::Known));
    assert_eq!(g.admit(T0, KNOWN, false, used(0)), Admit::Throttled, "not before it is durable");
    g.durable(KeyUsage::default());
    assert_eq!(g.admit(T0, KNOWN, false, used(0)), Admit::Verify(Class::Known));
    // A failure stays charged, in memory and in the next checkpoint.
    let mut g = Guard::new(Some(KNOWN), KeyUsage::default());
    forge(&mut g, T0, KNOWN, false);
    let (_, state) = g.checkpoint(T0, used(1), 0);
    g.durable(KeyUsage::default());
    assert_eq!(state.known.tokens, FAIL_BURST - 1);
    assert_eq!(g.checkpoint(T0, used(1), 0).1.known.tokens, FAIL_BURST - 1);
}

#[test]
fn a_restart_resumes_the_durable_budgets() {
    let mut g = Guard::new(Some(KNOWN), KeyUsage::default());
    for p in 0..40 {
        forge(&mut g, T0, Ep(2, p), false);
        forge(&mut g, T0, Ep(2, p), true);
    }
    let (usage, state) = g.checkpoint(T0, used(36), 0);
    assert_eq!(usage.failed_decryptions, 36, "the exact count, no headroom");
    assert_eq!(state.others, BucketState { tokens: 0, at: T0 });
    assert_eq!(state.routable, vec![(2, BucketState { tokens: 0, at: T0 })]);
    // Any number of restarts later, the budgets are where they were.
    for _ in 0..100 {
        let mut r = Guard::restore(Some(KNOWN), usage, Some(&state));
        assert_eq!(r.admit(T0 + 1000, Ep(2, 9), false, used(36)), Admit::Throttled);
        assert_eq!(r.admit(T0 + 1000, Ep(2, 9), true, used(36)), Admit::Throttled);
        assert_eq!(r.admit(T0 + 1000, KNOWN, false, used(36)), Admit::Verify(Class::Known));
    }
    let mut r = Guard::restore(Some(KNOWN), usage, Some(&state));
    assert!(forge(&mut r, T0 + FAIL_REFILL_MS, Ep(2, 9), false).is_some(), "time refills it");
    // A checkpoint from before budgets were persisted starts full.
    let mut old = Guard::<Ep>::restore(Some(KNOWN), usage, None);
    assert_eq!(old.admit(T0, ATTACKER, false, used(36)), Admit::Verify(Class::Others));
}

#[test]
fn encryptions_are_reserved_exactly_for_the_answers_waiting() {
    let enc = |n| KeyUsage { encryptions: n, failed_decryptions: 0 };
    let mut g: Guard<Ep> = Guard::new(Some(KNOWN), enc(10));
    assert!(!g.may_encrypt(enc(10)));
    let (c, _) = g.checkpoint(T0, enc(10), 3);
    assert_eq!(c.encryptions, 13);
    assert!(!g.may_encrypt(enc(10)), "not before it is durable");
    g.durable(c);
    assert!(g.may_encrypt(enc(12)));
    assert!(!g.may_encrypt(enc(13)));
    // A checkpoint with nothing waiting reserves nothing, and never lowers the ceiling.
    assert_eq!(g.checkpoint(T0, enc(11), 0).0.encryptions, 13);
    // At the hard limit there is nothing to reserve.
    let (c, _) = g.checkpoint(T0, enc(ENCRYPTION_LIMIT - 1), 5);
    assert_eq!(c.encryptions, ENCRYPTION_LIMIT);
    g.durable(c);
    assert!(!g.can_reserve(enc(ENCRYPTION_LIMIT)));
}

#[test]
fn a_new_known_endpoint_counts_only_once_durable() {
    let mut g: Guard<Ep> = Guard::new(Some(KNOWN), KeyUsage::default());
    let moved = Ep(5, 5);
    g.authenticated(moved);
    // Before the checkpoint that records it is durable, nothing may reveal that a tag verified.
    assert_eq!(g.known(), Some(KNOWN));
    assert_eq!(g.admit(T0, moved, false, used(0)), Admit::Verify(Class::Others));
    let _ = g.checkpoint(T0, used(0), 0);
    assert_eq!(g.newest_known(), Some(moved), "the checkpoint records the new endpoint");
    assert_eq!(g.known(), Some(KNOWN));
    g.durable(KeyUsage::default());
    assert_eq!(g.known(), Some(moved));
    assert_eq!(g.admit(T0, moved, false, used(0)), Admit::Verify(Class::Known));
}

#[test]
fn routable_hosts_are_bounded_and_an_idle_one_makes_room() {
    let mut g: Guard<Ep> = Guard::new(Some(KNOWN), KeyUsage::default());
    for h in 10..10 + ROUTABLE_HOSTS as u8 {
        assert!(forge(&mut g, T0, Ep(h, 1), true).is_some());
    }
    // Every slot owes a failure: a new host falls back to its unproven class...
    assert_eq!(g.admit(T0, Ep(99, 1), true, used(0)), Admit::Verify(Class::Others));
    // ...but the sensor's own host keeps its slot (a spoofer of its address plus attackers
    // on many hosts cannot shut it out).
    assert_eq!(g.admit(T0, KNOWN, true, used(0)), Admit::Verify(Class::Routable(1)));
    assert_eq!(g.checkpoint(T0, used(0), 0).1.routable.len(), ROUTABLE_HOSTS + 1);
    // Once one has earned its token back (it is idle), a new host takes its place.
    let later = T0 + ROUTABLE_REFILL_MS;
    assert_eq!(g.admit(later, Ep(99, 1), true, used(0)), Admit::Verify(Class::Routable(99)));
    let (_, state) = g.checkpoint(later, used(0), 0);
    assert!(state.routable.len() <= ROUTABLE_HOSTS);
}

#[test]
fn b12_echo_is_spaced_per_source_and_others_share_a_bucket() {
    let mut g: Guard<Ep> = Guard::new(Some(KNOWN), KeyUsage::default());
    assert!(g.echo(Millis(1), KNOWN));
    assert!(!g.echo(Millis(2), KNOWN), "same source again too soon");
    // One replaying source every 50 ms does not keep the known endpoint from its challenge.
    for i in 0..100u64 {
        g.echo(Millis(100 + i * 50), ATTACKER);
    }
    assert!(g.echo(Millis(5_200), KNOWN));
    // Many ports: at most the shared burst, then one per refill.
    let sent = (100..1100u16).filter(|p| g.echo(Millis(10_000), Ep(2, *p))).count();
    assert!(sent <= ECHO_BURST as usize, "{sent} challenges to other sources");
    assert!(g.echo(Millis(10_001), KNOWN), "the known endpoint still gets one");
}

/// What happens next in a simulated hub's life.
#[derive(Debug, Clone)]
enum Op {
    /// `n` forgeries from `host` (0: the sensor's known endpoint, spoofed), proven or not.
    Forge { host: u8, routable: bool, n: u32 },
    /// The sensor's genuine request (verified).
    Genuine,
    /// Time passes.
    Advance(u64),
    /// A group commit: checkpoint built and made durable.
    Commit,
    /// A checkpoint built, then the power fails before it is durable.
    CrashMidCommit,
    /// The power fails.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..12, any::<bool>(), 1u32..80)
            .prop_map(|(host, routable, n)| Op::Forge { host, routable, n }),
        3 => Just(Op::Genuine),
        2 => prop_oneof![0u64..60_000, 0u64..2 * ROUTABLE_REFILL_MS].prop_map(Op::Advance),
        3 => Just(Op::Commit),
        1 => Just(Op::CrashMidCommit),
        2 => Just(Op::Crash),
    ]
}

/// A sensor endpoint for host `h` (0 is the sensor's own endpoint).
fn endpoint(h: u8) -> Ep {
    if h == 0 { KNOWN } else { Ep(h, 7) }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the order of forgeries, genuine requests, commits and crashes: the failures
    /// recorded durably (the only ones whose outcome anyone observes) never exceed what the
    /// running hub's buckets allow in the time elapsed — restarts add nothing — and the sensor
    /// at its known endpoint is never throttled unless forgeries spoofed that endpoint.
    #[test]
    fn restarts_never_allow_more_failures_than_the_running_hub(ops in prop::collection::vec(op(), 1..400)) {
        let mut wall = T0;
        let mut g = Guard::new(Some(KNOWN), KeyUsage::default());
        // Durable: failure count, checkpoint; in memory: failures since.
        let (mut durable_failures, mut durable_state) = (0u64, None::<GuardState<u8>>);
        let mut failures = 0u64;
        let mut hosts = std::collections::BTreeSet::new();
        let mut spoofed = false;
        let mut crashes = 0;
        // The sensor has one request in flight: verified, answered after the next commit.
        let mut in_flight = false;
        for op in ops {
            match op {
                Op::Forge { host, routable, n } => {
                    if routable {
                        hosts.insert(endpoint(host).host());
                    }
                    spoofed |= host == 0;
                    for _ in 0..n {
                        if forge(&mut g, wall, endpoint(host), routable).is_some() {
                            failures += 1;
                        }
                    }
                }
                Op::Genuine if in_flight => {}
                Op::Genuine => match g.admit(wall, KNOWN, false, used(failures)) {
                    Admit::Verify(c) => {
                        g.settle(c, Outcome::Verified);
                        in_flight = true;
                    }
                    _ => prop_assert!(spoofed, "the sensor was throttled without a spoofer"),
                },
                Op::Advance(ms) => wall += ms,
                Op::Commit => {
                    let (usage, state) = g.checkpoint(wall, used(failures), 1);
                    g.durable(usage);
                    durable_failures = usage.failed_decryptions;
                    durable_state = Some(state);
                    in_flight = false;
                }
                Op::CrashMidCommit | Op::Crash => {
                    if matches!(op, Op::CrashMidCommit) {
                        let _ = g.checkpoint(wall, used(failures), 1);
                    }
                    crashes += 1;
                    in_flight = false;
                    failures = durable_failures;
                    g = Guard::restore(Some(KNOWN), used(failures), durable_state.as_ref());
                }
            }
            let elapsed = wall - T0;
            let routable_hosts = hosts.len() as u64;
            let bound = 2 * (u64::from(FAIL_BURST) + elapsed / FAIL_REFILL_MS)
                + routable_hosts * (u64::from(ROUTABLE_BURST) + elapsed / ROUTABLE_REFILL_MS);
            prop_assert!(
                durable_failures <= bound,
                "{durable_failures} failures recorded after {crashes} crashes; bound {bound}"
            );
            prop_assert!(failures <= bound, "in memory too");
        }
    }
}
