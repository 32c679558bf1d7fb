//! Edges of hello admission: cookies (slots, endpoints, keys, tampering), the P-256 budget
//! (global and per-host bounds, a fresh host served during a flood, the bounded table) and fair
//! session seating (property tests over arbitrary tables).

use std::collections::HashMap;
use std::net::SocketAddr;

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;

#[test]
fn hello_cookies_are_bound_to_the_endpoint_and_die_with_the_window() {
    let ep = |s: &str| crate::echo::endpoint_bytes(&s.parse::<SocketAddr>().expect("address"));
    let key = hello_cookie_key(&mut ChaCha20Rng::seed_from_u64(1));
    let a = ep("127.0.0.2:5000");
    let minted = key.mint(Millis(10_000), &a);
    assert!(key.check(Millis(2 * COOKIE_SLOT_MS - 1), &a, &minted), "the next slot");
    assert!(!key.check(Millis(2 * COOKIE_SLOT_MS), &a, &minted), "two slots later");
    assert!(!key.check(Millis(10_000), &ep("127.0.0.2:5001"), &minted), "another port");
    let reopened = hello_cookie_key(&mut ChaCha20Rng::seed_from_u64(2));
    assert!(!reopened.check(Millis(10_000), &a, &minted), "a re-opened window");
}

#[test]
fn each_host_gets_its_share_of_unprotected_datagrams_and_the_table_stays_bounded() {
    let mut f = RequestFilter::new(20, 40, 8);
    let a = 1u32;
    assert_eq!((0..100).filter(|_| f.admit(Millis(0), &a)).count(), 40, "the burst");
    assert!(!f.admit(Millis(49), &a));
    assert!(f.admit(Millis(50), &a), "one per 50 ms at 20/s");
    // Other hosts are untouched by the first one's flood.
    assert_eq!((0..40).filter(|_| f.admit(Millis(50), &2)).count(), 40);
    // More hosts than the table holds share one overflow bucket.
    for h in 3..9 {
        assert!(f.admit(Millis(60), &h));
    }
    assert_eq!(f.hosts(), 8);
    assert_eq!((100..200u32).filter(|h| f.admit(Millis(60), h)).count(), 40, "overflow bucket");
    assert_eq!(f.hosts(), 8);
    // A second later, hosts whose bucket is full again are forgotten and new ones get seats.
    assert!(f.admit(Millis(3_000), &500));
    assert!(f.hosts() <= 8);
    assert_eq!((0..40).filter(|_| f.admit(Millis(3_000), &500)).count(), 39, "its own bucket");
}

fn limits() -> HelloLimits {
    HelloLimits {
        rate_per_s: 20,
        burst: 20,
        reserve: 10,
        host_interval_ms: 1_000,
        host_burst: 4,
        active_window_ms: 60_000,
        max_hosts: 1_024,
        request_rate: 20,
        request_burst: 40,
    }
}

#[test]
fn a_host_saves_up_its_burst_then_gets_one_grant_per_interval() {
    let mut b = HelloBudget::new(limits());
    for i in 0..4 {
        assert_eq!(b.grant(Millis(1_000), &1u32), Ok(()), "grant {i}");
    }
    assert_eq!(b.grant(Millis(1_000), &1), Err(Shed::HostShare { retry_at: Millis(2_000) }));
    assert!(b.grant(Millis(1_999), &1).is_err());
    assert_eq!(b.grant(Millis(2_000), &1), Ok(()));
    assert!(b.check(Millis(2_000), &1).is_err(), "check spends nothing, and agrees");
    // Another host is untouched by the first one's share.
    assert_eq!(b.grant(Millis(2_000), &2), Ok(()));
}

#[test]
fn the_global_bucket_bounds_all_hosts_together() {
    let mut b = HelloBudget::new(limits());
    let granted = (0..100u32).filter(|h| b.grant(Millis(5), h).is_ok()).count();
    assert_eq!(granted, 20, "the burst");
    assert_eq!(b.grant(Millis(5), &500), Err(Shed::Global { retry_at: Millis(55) }));
    assert_eq!(b.grant(Millis(55), &500), Ok(()), "one per 50 ms at 20/s");
    assert!(b.grant(Millis(56), &501).is_err());
}

#[test]
fn hosts_already_served_leave_the_reserve_to_new_ones() {
    let mut b = HelloBudget::new(limits());
    // Host 1 takes its burst (4): the bucket is at 16.
    assert_eq!((0..10).filter(|_| b.grant(Millis(0), &1u32).is_ok()).count(), 4);
    // Active hosts 2..: take down to the reserve of 10 only (each is fresh for its first).
    for h in 2..8u32 {
        assert_eq!(b.grant(Millis(0), &h), Ok(()));
    }
    assert_eq!(b.credit_us / b.cost_us(), 10);
    assert!(matches!(b.grant(Millis(0), &2), Err(Shed::Global { .. })), "active: above reserve");
    // New hosts still get the reserve.
    for h in 100..110u32 {
        assert_eq!(b.grant(Millis(0), &h), Ok(()), "fresh host {h}");
    }
    assert!(b.grant(Millis(0), &200).is_err(), "empty");
}

#[test]
fn the_share_of_each_host_shrinks_as_more_hosts_ask() {
    let mut b = HelloBudget::new(limits());
    assert_eq!(b.host_interval_ms(), 1_000);
    let mut t = 0;
    let mut hosts_granted = std::collections::BTreeSet::new();
    while hosts_granted.len() < 100 {
        t += 10;
        for h in 0..100u32 {
            if b.grant(Millis(t), &h).is_ok() {
                hosts_granted.insert(h);
            }
        }
    }
    assert_eq!(b.active_hosts(), 100);
    assert_eq!(b.host_interval_ms(), 10_000, "2 × 100 hosts / 20 per second");
    // The active window passes without grants: the share is back to the minimum.
    let later = Millis(t + 60_000);
    assert!(b.check(later, &7).is_ok());
    assert_eq!(b.active_hosts(), 0);
    assert_eq!(b.host_interval_ms(), 1_000);
}

/// Runs `flood` hosts asking every `every_ms` from 0 to `until`; returns the grants per host
/// and in order.
fn flood(
    b: &mut HelloBudget<u32>,
    hosts: u32,
    every_ms: u64,
    until: u64,
) -> (HashMap<u32, Vec<u64>>, Vec<u64>) {
    let (mut per, mut all) = (HashMap::<u32, Vec<u64>>::new(), Vec::new());
    let mut t = 0;
    while t < until {
        for h in 0..hosts {
            if b.grant(Millis(t), &h).is_ok() {
                per.entry(h).or_default().push(t);
                all.push(t);
            }
        }
        t += every_ms;
    }
    (per, all)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// However many hosts ask, however often: never more than `burst + rate × time` grants in
    /// all, and never more than `host_burst + time / host_interval` for one host.
    #[test]
    fn grants_stay_within_both_buckets(
        hosts in 1u32..300,
        every_ms in 1u64..200,
        rate in 1u32..50,
        burst in 1u32..40,
        host_burst in 1u32..6,
    ) {
        let l = HelloLimits { rate_per_s: rate, burst, host_burst, ..limits() };
        let mut b = HelloBudget::new(l);
        let until = 20_000;
        let (per, all) = flood(&mut b, hosts, every_ms, until);
        for w in [1_000u64, 5_000, 20_000] {
            let allowed = u64::from(burst) + u64::from(rate) * w / 1_000 + 1;
            let mut j = 0;
            for i in 0..all.len() {
                while all[i] - all[j] >= w {
                    j += 1;
                }
                prop_assert!((i - j + 1) as u64 <= allowed, "{} grants within {w} ms", i - j + 1);
            }
        }
        for grants in per.values() {
            let allowed = u64::from(host_burst) + until / l.host_interval_ms + 1;
            prop_assert!(grants.len() as u64 <= allowed);
        }
        prop_assert!(b.hosts() <= l.max_hosts);
    }

    /// During a flood from up to 300 hosts that all start at once and ask as fast as they can,
    /// every flooding host gets grants, and a host that has not been granted anything is
    /// granted at its first ask once the flooders' own first grants are through (hosts / rate,
    /// plus a second) — at any time after that.
    #[test]
    fn a_fresh_host_is_served_during_a_flood(
        hosts in 1u32..300,
        every_ms in 1u64..50,
        late in 0u64..20_000,
    ) {
        let mut b = HelloBudget::new(limits());
        let settled = u64::from(hosts) * 1_000 / 20 + 1_000;
        let ask = settled + late;
        let mut served = std::collections::HashSet::new();
        let mut t = 0;
        while t < ask {
            for h in 0..hosts {
                if b.grant(Millis(t), &h).is_ok() {
                    served.insert(h);
                }
            }
            t += every_ms;
        }
        prop_assert_eq!(served.len() as u32, hosts, "flooding hosts served");
        prop_assert_eq!(b.grant(Millis(ask), &1_000_000), Ok(()), "fresh host at {} ms", ask);
    }

    /// The active count always equals a recount, and the table stays bounded.
    #[test]
    fn the_active_count_and_the_table_stay_exact(
        asks in proptest::collection::vec((0u32..64, 0u64..3_000), 1..400),
        max_hosts in 1usize..40,
    ) {
        let l = HelloLimits { max_hosts, active_window_ms: 5_000, ..limits() };
        let mut b = HelloBudget::new(l);
        let mut t = 0;
        let mut last: HashMap<u32, u64> = HashMap::new();
        for (h, dt) in asks {
            t += dt;
            if b.grant(Millis(t), &h).is_ok() {
                last.insert(h, t);
            }
            prop_assert!(b.hosts() <= max_hosts);
            let _ = b.check(Millis(t), &u32::MAX);
            let recount = b.hosts.iter().filter(|(_, s)| {
                s.last_grant.is_some_and(|g| t < g.0 + 5_000)
            }).count();
            prop_assert_eq!(b.active_hosts(), recount);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Seating

fn held(host: u8, created: u64, evictable: bool) -> Held<u32, u8> {
    Held { key: u32::from(host) << 16 | created as u32, host, created: Millis(created), evictable }
}

#[test]
fn seating_makes_room_from_the_host_holding_most_oldest_first() {
    let table =
        [held(1, 5, true), held(1, 3, true), held(2, 1, true), held(3, 2, true), held(1, 9, true)];
    assert_eq!(seat(&table, 9, 10, 4), Seat::Free);
    assert_eq!(seat(&table, 9, 5, 4), Seat::Evict(held(1, 3, true).key));
    assert_eq!(seat(&table, 2, 5, 4), Seat::Evict(held(1, 3, true).key));
    assert_eq!(seat(&table, 1, 5, 4), Seat::Full, "the host holding most gets no more");
    assert_eq!(seat(&table, 1, 10, 3), Seat::Full, "its own share is full");
    // Everyone holds one: a newcomer takes the oldest; a holder gets nothing.
    let ones = [held(1, 5, true), held(2, 3, true), held(3, 4, true)];
    assert_eq!(seat(&ones, 4, 3, 4), Seat::Evict(held(2, 3, true).key));
    assert_eq!(seat(&ones, 1, 3, 4), Seat::Full);
    // A session whose PIN was typed stays.
    let typed = [held(1, 1, false), held(2, 3, true)];
    assert_eq!(seat(&typed, 9, 2, 4), Seat::Evict(held(2, 3, true).key));
    assert_eq!(seat(&[held(1, 1, false)], 9, 1, 4), Seat::Full);
}

proptest! {
    #[test]
    fn seating_is_fair(
        table in proptest::collection::vec((0u8..8, 0u64..100, proptest::bool::weighted(0.9)), 0..40),
        host in 0u8..10,
        max in 1usize..40,
        per_host in 1usize..6,
    ) {
        let table: Vec<Held<u32, u8>> = table
            .into_iter()
            .enumerate()
            .map(|(i, (h, c, e))| Held { key: i as u32, host: h, created: Millis(c), evictable: e })
            .collect();
        let count = |h: u8| table.iter().filter(|s| s.host == h).count();
        let mine = count(host);
        match seat(&table, host, max, per_host) {
            Seat::Free => {
                prop_assert!(table.len() < max);
                prop_assert!(mine < per_host);
            }
            Seat::Evict(k) => {
                let victim = table.iter().find(|s| s.key == k).expect("a held session");
                prop_assert!(victim.evictable);
                prop_assert!(table.len() >= max && mine < per_host);
                // Only from a host holding more than the newcomer, and the one holding most.
                prop_assert!(count(victim.host) > mine);
                let most = table.iter().filter(|s| s.evictable).map(|s| count(s.host)).max();
                prop_assert_eq!(Some(count(victim.host)), most);
                let oldest = table
                    .iter()
                    .filter(|s| s.evictable && s.host == victim.host)
                    .map(|s| s.created)
                    .min();
                prop_assert_eq!(Some(victim.created), oldest);
            }
            Seat::Full => {
                // Either its share is full, or there is nothing it may evict.
                let evictable_bigger = table.iter().any(|s| s.evictable && count(s.host) > mine);
                prop_assert!(mine >= per_host || (table.len() >= max && !evictable_bigger));
            }
        }
        // A host holding nothing always gets a seat while anything is evictable.
        if mine == 0 && table.iter().any(|s| s.evictable) {
            prop_assert_ne!(seat(&table, host, max, per_host), Seat::Full);
        }
    }
}
