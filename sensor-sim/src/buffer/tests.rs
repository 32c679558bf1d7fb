//! The outage buffer on its own: overflow, drain order and timestamps, the randomized wait,
//! live readings first, pacing, and a restart from what was persisted.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;

const T0: i64 = 1_700_000_000_000;

fn config(capacity: usize) -> BufferConfig {
    BufferConfig { capacity, offline_after_ms: 1_000, drain_jitter_ms: 500, target_rtt_ms: 20 }
}

fn sample(id: u64) -> Sample {
    Sample { time_ms: T0 + id as i64 * 250, values: [20.0 + id as f64 / 100.0, 0.0] }
}

fn ids(p: &Pack) -> Vec<u64> {
    p.entries.iter().map(|e| e.id).collect()
}

/// A buffer whose hub stopped answering at t=0 while measurement 0 was in flight, and which then
/// measured `more` times (ids 1..=more) at 10 ms steps.
fn offline_with(capacity: usize, more: u64) -> (Buffer, Vec<Entry>, Millis) {
    let mut b = Buffer::new(config(capacity));
    b.push(0, sample(0), 1_000);
    let probe = b.poll_pack(Millis(1), 8).expect("probe");
    assert_eq!(ids(&probe), [0]);
    assert_eq!(b.check(Millis(900), Millis(1)), None, "not yet");
    assert_eq!(b.check(Millis(1_001), Millis(1)), Some(BufferEvent::Offline { backlog: 1 }));
    let mut dropped = Vec::new();
    let mut now = Millis(1_001);
    for id in 1..=more {
        now = now.plus(10);
        dropped.extend(b.push(id, sample(id), now.0 * 1000));
    }
    (b, dropped, now)
}

/// Answers the probe (pack 0) and runs to the end of the randomized wait: when the drain
/// starts, and how long the wait was.
fn answer_probe(b: &mut Buffer, rng: &mut ChaCha20Rng, now: Millis) -> (Millis, u64) {
    let answered = b.on_answer(now, rng, 0);
    assert_eq!(answered.entries.len(), 1, "the probe's measurement is acknowledged");
    assert!(b.is_draining());
    if let Some(BufferEvent::DrainStarts { waited_ms, .. }) = answered.event {
        return (now, waited_ms); // a wait of 0
    }
    let until = b.poll_timeout(now).expect("the end of the wait");
    assert_eq!(b.check(Millis(until.0 - 1), until), None, "not before the end of the wait");
    match b.check(until, until) {
        Some(BufferEvent::DrainStarts { waited_ms, .. }) => (until, waited_ms),
        other => panic!("{other:?}"),
    }
}

/// Answers the probe, waits, then drains with `max` per pack; returns the packs in order.
fn drain(b: &mut Buffer, rng: &mut ChaCha20Rng, now: Millis, max: usize) -> Vec<Pack> {
    let (now, waited) = answer_probe(b, rng, now);
    assert!(waited <= 500, "waits at most the jitter window");
    drain_from(b, rng, now, max)
}

/// Drains from `now` (the wait over) with `max` per pack; returns the packs in order.
fn drain_from(b: &mut Buffer, rng: &mut ChaCha20Rng, mut now: Millis, max: usize) -> Vec<Pack> {
    let mut packs = Vec::new();
    while let Some(p) = b.poll_pack(now, max) {
        now = now.plus(1);
        let a = b.on_answer(now, rng, p.id);
        assert_eq!(a.entries.len(), p.entries.len());
        packs.push(p);
        if let Some(BufferEvent::Drained { .. }) = a.event {
            break;
        }
        now = b.poll_timeout(now).map_or(now, |t| t.max(now));
    }
    packs
}

#[test]
fn overflow_drops_the_oldest_not_in_flight_and_counts_them() {
    let (b, dropped, _) = offline_with(5, 9);
    assert_eq!(dropped.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(b.dropped(), 5);
    assert_eq!(b.len(), 5);
    assert_eq!(b.entries.iter().map(|e| e.id).collect::<Vec<_>>(), [0, 6, 7, 8, 9]);
}

#[test]
fn drains_in_order_in_batches_with_original_timestamps_and_reports_drops() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let (mut b, _, now) = offline_with(20, 30);
    let packs = drain(&mut b, &mut rng, now, 8);
    let sent: Vec<u64> = packs.iter().flat_map(ids).collect();
    // 0 went as the probe; 1..=11 were dropped (capacity 20 with 0 in flight).
    assert_eq!(sent, (12..=30).collect::<Vec<_>>(), "every kept measurement once, in order");
    assert!(packs.iter().all(|p| p.entries.len() <= 8));
    assert_eq!(packs[0].entries.len(), 8, "backlog goes several per pack");
    for p in &packs {
        for e in &p.entries {
            assert_eq!(e.sample, sample(e.id), "original time and values");
            assert!(e.backlog);
        }
    }
    // The probe was in flight before anything was dropped; the first drain pack tells the hub.
    assert_eq!(packs[0].dropped, Some(11));
    assert!(packs[1..].iter().all(|p| p.dropped.is_none()), "told once it is acknowledged");
    assert_eq!(b.dropped_reported(), 11);
    assert!(b.is_empty() && !b.is_draining() && !b.is_offline());
}

#[test]
fn an_unanswered_drop_report_is_repeated_in_the_next_pack() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (mut b, _, now) = offline_with(3, 5);
    let (now, _) = answer_probe(&mut b, &mut rng, now);
    let first = b.poll_pack(now, 8).expect("pack");
    assert_eq!(first.dropped, Some(3));
    // The hub goes away again before answering: the next pack (the probe) still carries it.
    assert!(matches!(b.check(now.plus(1_000), now), Some(BufferEvent::Offline { .. })));
    assert_eq!(b.poll_pack(now.plus(1_000), 8), None, "the pack in flight is the probe");
    assert_eq!(b.dropped_reported(), 0);
}

#[test]
fn live_readings_go_first_during_the_wait_and_the_drain() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (mut b, _, mut now) = offline_with(100, 40);
    b.on_answer(now, &mut rng, 0);
    // During the randomized wait only live measurements go, one per pack.
    now = now.plus(1);
    b.push(41, sample(41), now.0 * 1000);
    let live = b.poll_pack(now, 8).expect("live pack");
    assert_eq!(ids(&live), [41]);
    assert!(!live.entries[0].backlog);
    b.on_answer(now, &mut rng, live.id);
    if b.poll_timeout(now).is_some_and(|t| t > now) {
        assert_eq!(b.poll_pack(now, 8), None, "the backlog waits for the end of the wait");
        now = b.poll_timeout(now).expect("wait");
        assert!(matches!(b.check(now, now), Some(BufferEvent::DrainStarts { .. })));
    }
    let first = b.poll_pack(now, 8).expect("backlog");
    assert_eq!(ids(&first), (1..=8).collect::<Vec<_>>());
    // A live measurement taken while a backlog pack is in flight goes next.
    b.push(42, sample(42), now.0 * 1000);
    b.on_answer(now.plus(1), &mut rng, first.id);
    let next = b.poll_pack(now.plus(5_000), 8).expect("next");
    assert_eq!(ids(&next), [42], "live before the rest of the backlog");
}

#[test]
fn a_live_pack_in_flight_when_the_hub_goes_quiet_again_stays_live_and_the_backlog_in_order() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let (mut b, _, now) = offline_with(100, 20);
    let (mut now, _) = answer_probe(&mut b, &mut rng, now);
    let first = b.poll_pack(now, 8).expect("backlog");
    assert_eq!(ids(&first), (1..=8).collect::<Vec<_>>());
    b.push(21, sample(21), now.0 * 1000);
    now = now.plus(1);
    b.on_answer(now, &mut rng, first.id);
    let live = b.poll_pack(now, 8).expect("live");
    assert_eq!(ids(&live), [21]);
    // The hub goes quiet with the live pack in flight: everything held is backlog now (and
    // kept in flash), the live pack is the probe.
    now = now.plus(1_001);
    assert!(matches!(b.check(now, Millis(0)), Some(BufferEvent::Offline { .. })));
    assert_eq!(b.take_unpersisted().len(), 13, "9..=21 are kept in flash");
    let answered = b.on_answer(now, &mut rng, live.id);
    assert_eq!(answered.entries.len(), 1);
    assert!(!answered.entries[0].backlog, "reported as the live measurement it was sent as");
    assert!(answered.entries[0].persisted, "the caller erases it from flash");
    if !matches!(answered.event, Some(BufferEvent::DrainStarts { .. })) {
        now = b.poll_timeout(now).expect("the end of the wait");
        assert!(matches!(b.check(now, now), Some(BufferEvent::DrainStarts { .. })));
    }
    let packs = drain_from(&mut b, &mut rng, now, 8);
    let rest: Vec<u64> = packs.iter().flat_map(ids).collect();
    assert_eq!(rest, (9..=20).collect::<Vec<_>>(), "the backlog in order");
    assert!(packs.iter().all(|p| p.entries.iter().all(|e| e.backlog)));
}

#[test]
fn the_randomized_wait_spreads_over_the_jitter_window() {
    let mut waits = Vec::new();
    for seed in 0..200 {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (mut b, _, now) = offline_with(50, 3);
        waits.push(answer_probe(&mut b, &mut rng, now).1);
    }
    let (min, max) = (waits.iter().min().copied(), waits.iter().max().copied());
    assert!(waits.iter().all(|w| *w <= 500), "{waits:?}");
    assert!(min < Some(50) && max > Some(450), "not spread: {min:?}..{max:?}");
}

#[test]
fn a_slow_hub_spaces_backlog_packs_and_a_fast_one_closes_the_gap() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let (mut b, _, now) = offline_with(200, 100);
    let (mut now, _) = answer_probe(&mut b, &mut rng, now);
    // Round trips of 200 ms (ten times the target): the gap grows.
    for _ in 0..3 {
        let p = b.poll_pack(now, 4).expect("due");
        now = now.plus(200);
        b.on_answer(now, &mut rng, p.id);
        assert_eq!(b.poll_pack(now, 4), None, "paced");
        now = b.poll_timeout(now).expect("next");
    }
    assert!(b.gap_ms >= 800, "gap {}", b.gap_ms);
    // Fast round trips: the gap shrinks to nothing.
    for _ in 0..20 {
        let p = b.poll_pack(now, 4).expect("due");
        now = now.plus(1);
        b.on_answer(now, &mut rng, p.id);
        now = b.poll_timeout(now).map_or(now, |t| t.max(now));
    }
    assert!(b.gap_ms < 20, "gap {}", b.gap_ms);
}

#[test]
fn offline_is_declared_only_when_nothing_at_all_was_heard() {
    let mut b = Buffer::new(config(10));
    b.push(0, sample(0), 1_000);
    b.poll_pack(Millis(1), 8).expect("pack");
    // The link heard the hub (e.g. firmware answers) recently: not offline.
    assert_eq!(b.check(Millis(1_500), Millis(1_000)), None);
    assert_eq!(b.poll_timeout(Millis(1_000)), Some(Millis(2_000)));
    assert!(matches!(b.check(Millis(2_000), Millis(1_000)), Some(BufferEvent::Offline { .. })));
}

#[test]
fn a_restart_keeps_the_persisted_backlog_and_drains_it_after_the_wait() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let (mut b, _, now) = offline_with(10, 15);
    let persisted = b.take_unpersisted();
    let kept: Vec<u64> = persisted.iter().map(|(id, _)| *id).collect();
    assert_eq!(kept, [0, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    assert!(b.take_unpersisted().is_empty(), "each entry is written once");
    // Power cut: RAM is gone; flash has the backlog, the drop counter, and nothing reported.
    let mut b = Buffer::restore(config(10), persisted.clone(), b.dropped(), 0);
    assert!(b.is_offline());
    let probe = b.poll_pack(now, 8).expect("probe");
    assert_eq!(ids(&probe), [0], "the oldest goes first, as the probe");
    assert_eq!(probe.dropped, Some(6), "the drop count survives the restart");
    let packs = drain(&mut b, &mut rng, now, 4);
    let sent: Vec<u64> = packs.iter().flat_map(ids).collect();
    assert_eq!(sent, persisted[1..].iter().map(|(id, _)| *id).collect::<Vec<_>>());
    assert!(packs.iter().flat_map(|p| &p.entries).all(|e| e.sample == sample(e.id)));
}

#[test]
fn keep_all_makes_every_held_measurement_backlog_for_a_shutdown() {
    let mut b = Buffer::new(config(10));
    for id in 0..3 {
        b.push(id, sample(id), 1_000);
    }
    assert!(b.take_unpersisted().is_empty(), "live measurements stay in RAM");
    b.keep_all();
    assert_eq!(b.take_unpersisted().len(), 3);
}

#[test]
fn a_power_cut_keeps_only_the_persisted_backlog() {
    let (mut b, _, now) = offline_with(10, 4);
    let persisted = b.take_unpersisted().len();
    b.push(5, sample(5), now.0 * 1000);
    b.power_cut();
    assert_eq!(b.len(), persisted, "measurement 5 was never written to flash");
    assert!(b.is_offline());
    let probe = b.poll_pack(now, 8).expect("a new probe: the old one was in RAM");
    assert_eq!(ids(&probe), [0]);
}
