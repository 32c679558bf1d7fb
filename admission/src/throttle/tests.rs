//! The throttle's tests: back-offs, provisional failures under concurrency, bounded records,
//! trusted clients and restarts, with a property test over random interleavings.

use super::*;
use proptest::prelude::*;

fn policy() -> Policy {
    Policy {
        free_failures: 3,
        base_ms: 1_000,
        max_ms: 8_000,
        forget_ms: 60_000,
        max_addresses: 64,
        trusted_per_account: 2,
        trusted_ttl_ms: 1_000_000,
    }
}

fn throttle() -> Throttle {
    let mut t = Throttle::new(policy());
    t.set_accounts(["owner", "ha"]);
    t
}

fn ip(n: u32) -> IpAddr {
    IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
}

fn failed(t: &mut Throttle, now: u64, claim: Claim<'_>, from: IpAddr) -> Result<(), Backoff> {
    let a = t.admit(now, claim, from, None)?;
    t.fail(a, now);
    Ok(())
}

#[test]
fn back_off_starts_at_the_free_failures_doubles_caps_and_always_ends() {
    let mut t = throttle();
    let owner = Claim::Name("owner");
    for _ in 0..3 {
        failed(&mut t, 0, owner, ip(1)).expect("free");
    }
    assert_eq!(failed(&mut t, 0, owner, ip(2)), Err(Backoff { wait_ms: 1_000 }));
    failed(&mut t, 1_000, owner, ip(2)).expect("after the wait");
    assert_eq!(t.admit(1_000, owner, ip(3), None), Err(Backoff { wait_ms: 2_000 }));
    let mut now = 3_000;
    for _ in 0..10 {
        failed(&mut t, now, owner, ip(4)).expect("after the wait");
        now += 8_000;
    }
    assert_eq!(t.account_wait(now - 8_000, owner), 8_000, "capped at max_ms");
    assert_eq!(t.account_wait(now, owner), 0, "it ends");
    // Forgotten after a quiet period: the free failures are free again.
    let later = now + 60_000;
    failed(&mut t, later, owner, ip(5)).expect("forgotten");
    assert_eq!(t.account_wait(later, owner), 0);
}

#[test]
fn concurrent_guesses_are_checked_at_most_free_failures_times() {
    let mut t = throttle();
    let admitted: Vec<Attempt> =
        (0..50).filter_map(|i| t.admit(0, Claim::Name("owner"), ip(i), None).ok()).collect();
    assert_eq!(admitted.len(), 3, "slots are taken before the check");
    // A shed attempt gives its slot back; so does a success.
    let mut admitted = admitted.into_iter();
    t.cancel(admitted.next().expect("one"));
    let again = t.admit(0, Claim::Name("owner"), ip(60), None).expect("a slot came back");
    assert!(t.admit(0, Claim::Name("owner"), ip(61), None).is_err());
    t.succeed(again, 0);
    assert_eq!(t.account_wait(0, Claim::Name("owner")), 0, "a success clears the account");
    for a in admitted {
        t.fail(a, 0);
    }
    assert_eq!(t.snapshot().accounts["owner"].failures, 2, "late failures still count");
}

#[test]
fn an_attempt_settled_after_a_success_cleared_its_records_leaves_newer_ones_alone() {
    let mut t = throttle();
    let owner = Claim::Name("owner");
    let old = t.admit(0, owner, ip(1), None).expect("first");
    let ok = t.admit(0, owner, ip(1), None).expect("second");
    t.succeed(ok, 0);
    let new = t.admit(0, owner, ip(1), None).expect("after the success");
    // The old attempt is shed: the new one's provisional failure stays.
    t.cancel(old);
    assert_eq!((t.accounts["owner"].failures, t.accounts["owner"].pending), (1, 1));
    t.fail(new, 0);
    assert_eq!(t.snapshot().accounts["owner"].failures, 1);
}

#[test]
fn a_spray_of_names_and_addresses_never_clears_a_live_back_off() {
    let mut t = throttle();
    for i in 0..3 {
        failed(&mut t, 0, Claim::Name("owner"), ip(i)).expect("free");
    }
    let held = t.account_wait(0, Claim::Name("owner"));
    assert_eq!(held, 1_000);
    // Thousands of failures from fresh names and addresses.
    let mut refused = 0;
    for i in 0..5_000u32 {
        let name = format!("user{i}");
        if failed(&mut t, 10 + u64::from(i % 900), Claim::Name(&name), ip(1000 + i)).is_err() {
            refused += 1;
        }
    }
    assert!(refused > 4_990, "unknown names share one record: {refused}");
    assert!(t.addresses() <= 64, "addresses are bounded: {}", t.addresses());
    assert_eq!(t.account_wait(999, Claim::Name("owner")), 1, "the owner's back-off held");
    assert_eq!(t.account_wait(0, Claim::Name("ha")), 0, "other accounts are untouched");
    // A new address beyond the bound shares the overflow record.
    let full = (0..200u32)
        .filter(|i| failed(&mut t, 999, Claim::Nobody, ip(100_000 + i)).is_err())
        .count();
    assert!(full > 100, "the overflow record backs off too: {full}");
    assert!(t.addresses() <= 64);
}

#[test]
fn a_trusted_client_passes_others_back_offs_but_has_its_own_budget() {
    let mut t = throttle();
    let ok = t.admit(0, Claim::Name("owner"), ip(1), None).expect("open");
    t.succeed(ok, 0);
    assert!(t.trust("owner", "device-1", 0));
    assert!(!t.trust("nobody", "device-1", 0), "only existing accounts");
    // An attacker backs the account off from many addresses.
    for i in 0..20 {
        let _ = failed(&mut t, 10, Claim::Name("owner"), ip(100 + i));
    }
    assert!(t.admit(10, Claim::Name("owner"), ip(1), None).is_err());
    assert!(t.admit(10, Claim::Name("owner"), ip(1), Some("device-2")).is_err());
    let a = t.admit(10, Claim::Name("owner"), ip(1), Some("device-1")).expect("trusted");
    assert!(a.trusted());
    t.succeed(a, 10);
    assert!(t.account_wait(10, Claim::Name("owner")) > 0, "the attacker's back-off stays");
    // The same id with the wrong account is not trusted.
    assert!(t.admit(10, Claim::Name("ha"), ip(1), Some("device-1")).is_ok_and(|a| !a.trusted()));
    // Concurrent guesses through a stolen cookie: at most the free failures, then revoked.
    let guesses: Vec<Attempt> = (0..10)
        .filter_map(|_| t.admit(20, Claim::Name("owner"), ip(1), Some("device-1")).ok())
        .collect();
    assert_eq!(guesses.len(), 3);
    assert!(guesses.iter().all(Attempt::trusted));
    for g in guesses {
        t.fail(g, 20);
    }
    assert!(!t.is_trusted("owner", "device-1"), "revoked");
    assert!(t.admit(20, Claim::Name("owner"), ip(1), Some("device-1")).is_err());
}

#[test]
fn trusted_clients_are_bounded_per_account_and_revoked_on_request() {
    let mut t = throttle();
    assert!(t.trust("ha", "a", 1));
    assert!(t.trust("ha", "b", 2));
    assert!(t.trust("ha", "a", 3), "used again");
    assert!(t.trust("ha", "c", 4));
    assert!(t.is_trusted("ha", "a") && t.is_trusted("ha", "c"));
    assert!(!t.is_trusted("ha", "b"), "the least recently used one went");
    assert!(!t.trust("ha", &"x".repeat(MAX_CLIENT_ID + 1), 5));
    let v = t.urgent_version();
    t.revoke_all("ha");
    assert!(!t.is_trusted("ha", "a"));
    assert!(t.urgent_version() > v);
    t.trust("owner", "d", 6);
    t.set_accounts(["ha"]);
    assert!(!t.is_trusted("owner", "d"), "a removed account's clients go");
    assert_eq!(t.admit(7, Claim::Name("owner"), ip(1), Some("d")).map(|a| a.trusted()), Ok(false));
}

#[test]
fn account_records_and_trusted_clients_survive_a_restart_and_still_end() {
    let mut t = throttle();
    t.trust("ha", "remembered", 0);
    for i in 0..6 {
        let _ = failed(&mut t, u64::from(i) * 1_000, Claim::Name("ha"), ip(i));
    }
    for i in 0..3 {
        let _ = failed(&mut t, 5_000, Claim::Name(&format!("x{i}")), ip(50));
    }
    let wait = t.account_wait(5_000, Claim::Name("ha"));
    assert!(wait > 0);
    let saved = serde_json::to_vec(&t.snapshot()).expect("json");
    let mut after = Throttle::new(policy());
    after.set_accounts(["ha"]);
    after.restore(serde_json::from_slice(&saved).expect("json"), 5_000);
    assert_eq!(after.account_wait(5_000, Claim::Name("ha")), wait);
    assert!(after.account_wait(5_000, Claim::Name("x9")) > 0, "unknown names too");
    assert!(after.is_trusted("ha", "remembered"));
    assert_eq!(after.addresses(), 0, "addresses start afresh");
    // Restored into a clock that went back an hour: it still ends within max_ms.
    let mut early = Throttle::new(policy());
    early.set_accounts(["ha"]);
    early.restore(serde_json::from_slice(&saved).expect("json"), 0);
    assert!(early.admit(0, Claim::Name("ha"), ip(1), None).is_err());
    assert!(early.account_wait(0, Claim::Name("ha")) <= 8_000);
    assert!(early.admit(8_000, Claim::Name("ha"), ip(1), None).is_ok());
}

#[test]
fn logins_still_being_checked_at_a_restart_do_not_count_after_it() {
    let mut t = throttle();
    let ha = Claim::Name("ha");
    failed(&mut t, 0, ha, ip(1)).expect("free");
    // Two logins are being checked when the records are saved, and the hub is killed.
    let _a = t.admit(10, ha, ip(2), None).expect("free");
    let _b = t.admit(10, ha, ip(3), None).expect("free");
    let saved = serde_json::to_vec(&t.snapshot()).expect("json");
    let mut after = Throttle::new(policy());
    after.set_accounts(["ha"]);
    after.restore(serde_json::from_slice(&saved).expect("json"), 20);
    // Only the one that was answered counts: two more are checked at once, the next refused.
    let c = after.admit(20, ha, ip(4), None).expect("second failure is free");
    let d = after.admit(20, ha, ip(5), None).expect("third failure is free");
    assert!(after.admit(20, ha, ip(6), None).is_err(), "the fourth waits");
    // A failure settled after the save is kept by the next one, with its back-off.
    after.fail(c, 30);
    after.fail(d, 30);
    let wait = after.account_wait(30, ha);
    assert!(wait > 0);
    let mut again = Throttle::new(policy());
    again.set_accounts(["ha"]);
    again.restore(
        serde_json::from_slice(&serde_json::to_vec(&after.snapshot()).expect("json"))
            .expect("json"),
        30,
    );
    assert_eq!(again.account_wait(30, ha), wait);
}

#[test]
fn a_clock_that_jumps_back_never_makes_a_wait_longer_than_the_maximum() {
    let mut t = throttle();
    for _ in 0..3 {
        failed(&mut t, 1_000_000, Claim::Name("owner"), ip(1)).expect("free");
    }
    let back = 1_000; // the clock went back by almost 17 minutes
    match t.admit(back, Claim::Name("owner"), ip(2), None) {
        Err(Backoff { wait_ms }) => assert!(wait_ms <= 8_000, "{wait_ms}"),
        Ok(_) => panic!("still backing off"),
    }
    assert!(t.admit(back + 8_000, Claim::Name("owner"), ip(2), None).is_ok());
}

#[test]
fn ipv6_hosts_count_by_their_64_and_mapped_ipv4_as_ipv4() {
    let mut t = throttle();
    for i in 0..3u16 {
        let a = IpAddr::from([0x2001, 0xdb8, 0, 1, i, 7, 7, i]);
        failed(&mut t, 0, Claim::Nobody, a).expect("free");
    }
    assert!(
        failed(&mut t, 0, Claim::Nobody, IpAddr::from([0x2001, 0xdb8, 0, 1, 9, 9, 9, 9])).is_err()
    );
    assert!(
        failed(&mut t, 0, Claim::Nobody, IpAddr::from([0x2001, 0xdb8, 0, 2, 9, 9, 9, 9])).is_ok()
    );
    for _ in 0..3 {
        failed(&mut t, 0, Claim::Nobody, ip(7)).expect("free");
    }
    let mapped = IpAddr::V6(std::net::Ipv4Addr::from(0x0a00_0007).to_ipv6_mapped());
    assert!(failed(&mut t, 0, Claim::Nobody, mapped).is_err());
}

#[derive(Debug, Clone)]
enum Op {
    Admit { name: u8, addr: u8 },
    Fail(usize),
    Cancel(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 0u8..200).prop_map(|(name, addr)| Op::Admit { name, addr }),
        2 => any::<usize>().prop_map(Op::Fail),
        1 => any::<usize>().prop_map(Op::Cancel),
    ]
}

proptest! {
    /// With time frozen and nobody succeeding, an account (and all unknown names together)
    /// is checked at most `free_failures` times, whatever the interleaving of admissions,
    /// failures and shed attempts; addresses stay bounded and no wait exceeds the maximum.
    #[test]
    fn no_interleaving_checks_an_account_more_than_its_free_failures(
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let mut t = throttle();
        let names = ["owner", "ha", "u1", "u2", "u3", "u4"];
        let mut open: Vec<(usize, Attempt)> = Vec::new();
        let mut checked = [0u32; 6];
        let mut cancelled = [0u32; 6];
        for op in ops {
            match op {
                Op::Admit { name, addr } => {
                    let n = usize::from(name);
                    match t.admit(5, Claim::Name(names[n]), ip(u32::from(addr)), None) {
                        Ok(a) => open.push((n, a)),
                        Err(b) => prop_assert!(b.wait_ms <= 8_000),
                    }
                }
                Op::Fail(i) if !open.is_empty() => {
                    let (n, a) = open.remove(i % open.len());
                    checked[n] += 1;
                    t.fail(a, 5);
                }
                Op::Cancel(i) if !open.is_empty() => {
                    let (n, a) = open.remove(i % open.len());
                    cancelled[n] += 1;
                    t.cancel(a);
                }
                _ => {}
            }
            prop_assert!(t.addresses() <= 64);
            // What a restart would keep is exactly the failures settled so far.
            let saved = t.snapshot();
            for n in 0..2 {
                let kept = saved.accounts.get(names[n]).map_or(0, |r| r.failures);
                prop_assert_eq!(kept, checked[n], "{}", names[n]);
            }
            prop_assert_eq!(saved.unknown.failures, checked[2..].iter().sum::<u32>());
        }
        for (n, a) in open.drain(..) {
            checked[n] += 1;
            t.fail(a, 5);
        }
        for n in 0..2 {
            prop_assert!(checked[n] <= 3, "{}: {} checked", names[n], checked[n]);
        }
        let unknown: u32 = checked[2..].iter().sum();
        prop_assert!(unknown <= 3, "unknown names: {unknown} checked");
        prop_assert!(cancelled.iter().sum::<u32>() <= 300);
    }
}
