use super::*;
use protocol::oscore::Kid;

const CONFIG: AvailabilityRules =
    AvailabilityRules { default_period_ms: 10_000, missed_periods: 3 };

fn info(n: u8, model: &str) -> DeviceInfo {
    DeviceInfo {
        id: Kid::new(&[n]).expect("kid").into(),
        about: protocol::pairing::Descriptor {
            model: model.into(),
            serial: format!("SN{n}"),
            firmware_version: 1,
            updatable: true,
            verifies_signatures: false,
            capabilities: vec!["temperature".into()],
            support_end: protocol::time::UnixTime(2_000_000_000),
        },
        paired_at: 0,
    }
}

fn reading(t: i64, name: &str, v: f64) -> Reading {
    Reading {
        name: format!("urn:dev:SN1:{name}"),
        unit: None,
        value: protocol::senml::Value::Number(v),
        time: protocol::senml::UnixTimeMillis(t),
    }
}

fn isolation(advisory: &str) -> Isolation {
    Isolation {
        reason: "vulnerable".into(),
        advisory: Some(advisory.into()),
        since: 1,
        replacement: "replace it".into(),
        overridden_at: None,
    }
}

#[test]
fn offline_after_missed_periods_online_again_on_a_report_and_survives_a_restart() {
    let d = Directory::new(vec![info(1, "m")], None, CONFIG, 0);
    let id = info(1, "m").id;
    let mut notices = d.subscribe();
    for t in [1_000, 2_000, 3_000, 4_000] {
        d.readings(vec![(id, vec![reading(t, "temperature", 20.0)])], t);
    }
    d.tick(7_000);
    assert_eq!(d.get(&id).expect("dev").availability, Availability::Online);
    d.tick(7_001);
    assert_eq!(d.get(&id).expect("dev").availability, Availability::Offline);
    let doc = d.take_dirty().expect("offline is persisted");
    assert!(d.take_dirty().is_none(), "nothing new to persist");
    // After a restart the device is still offline, with its transitions.
    let again = Directory::new(vec![info(1, "m")], Some(&doc), CONFIG, 100_000);
    let snap = again.get(&id).expect("dev");
    assert_eq!(snap.availability, Availability::Offline);
    assert_eq!(snap.transitions.iter().map(|t| t.to).collect::<Vec<_>>(), [Availability::Offline]);
    again.readings(vec![(id, vec![reading(100_500, "temperature", 21.0)])], 100_500);
    assert_eq!(again.get(&id).expect("dev").availability, Availability::Online);
    // Notices: readings then offline, in order.
    assert!(matches!(notices.try_recv(), Ok(Notice::Readings { .. })));
    let mut saw_offline = false;
    while let Ok(n) = notices.try_recv() {
        saw_offline |=
            matches!(n, Notice::Availability { availability: Availability::Offline, .. });
    }
    assert!(saw_offline);
}

#[test]
fn nobody_is_offline_right_after_a_restart() {
    let mut doc_dir = Directory::new(vec![info(1, "m")], None, CONFIG, 0);
    let id = info(1, "m").id;
    doc_dir.readings(vec![(id, vec![reading(0, "temperature", 1.0)])], 0);
    let doc = doc_dir.document();
    // The hub was down for an hour: the sensor gets a full allowance from the start.
    doc_dir = Directory::new(vec![info(1, "m")], Some(&doc), CONFIG, 3_600_000);
    doc_dir.tick(3_600_000 + 29_000);
    assert_eq!(doc_dir.get(&id).expect("dev").availability, Availability::Online);
    doc_dir.tick(3_600_000 + 31_000);
    assert_eq!(doc_dir.get(&id).expect("dev").availability, Availability::Offline);
}

#[test]
fn isolated_devices_publish_nothing_and_the_override_is_explicit() {
    let d = Directory::new(vec![info(1, "m")], None, CONFIG, 0);
    let id = info(1, "m").id;
    let mut notices = d.subscribe();
    assert!(d.outgoing_allowed(&id));
    assert!(d.isolate(&id, isolation("adv-1"), 10));
    assert!(!d.isolate(&id, isolation("adv-1"), 11), "already isolated");
    assert!(!d.outgoing_allowed(&id));
    assert_eq!(d.get(&id).expect("dev").availability, Availability::Isolated);
    assert!(d.isolated(&id) && !d.isolated(&info(9, "m").id));
    while notices.try_recv().is_ok() {}
    d.readings(vec![(id, vec![reading(20, "temperature", 3.0)])], 20);
    assert!(notices.try_recv().is_err(), "an isolated device's reading was published");
    // It keeps its local state (the owner sees it on the hub).
    assert_eq!(d.get(&id).expect("dev").state["temperature"].value, 3.0);
    // Offline does not hide isolation.
    d.tick(1_000_000);
    assert_eq!(d.get(&id).expect("dev").availability, Availability::Isolated);
    d.override_isolation(&id, 30_000).expect("override");
    assert!(d.outgoing_allowed(&id));
    assert_eq!(d.override_isolation(&id, 31_000), Err(DirectoryError::NotIsolated));
    // The same advisory does not isolate it again; a new one does.
    assert!(!d.isolate(&id, isolation("adv-1"), 40));
    assert!(d.isolate(&id, isolation("adv-2"), 41));
    // Unknown devices are not allowed out.
    assert!(!d.outgoing_allowed(&info(9, "m").id));
}

#[test]
fn labels_are_validated_and_replacement_inherits_name_room_and_history() {
    let d = Directory::new(vec![info(1, "m"), info(2, "m")], None, CONFIG, 0);
    let (old, new) = (info(1, "m").id, info(2, "m").id);
    assert_eq!(d.get(&old).expect("dev").name, "SN1");
    assert_eq!(d.rename(&old, "  "), Err(DirectoryError::BadLabel("a name")));
    assert_eq!(d.rename(&old, &"x".repeat(65)), Err(DirectoryError::BadLabel("a name")));
    assert_eq!(d.rename(&old, "a\nb"), Err(DirectoryError::BadLabel("a name")));
    d.rename(&old, "Front door").expect("rename");
    d.set_room(&old, Some("Hall")).expect("room");
    d.replaceable(&old).expect("any paired device can be replaced");
    assert_eq!(d.replaceable(&info(9, "m").id), Err(DirectoryError::Unknown));
    assert_eq!(d.by_serial("SN1"), Some((old, "Front door".into())));
    assert_eq!(d.by_serial("SN9"), None);
    assert!(d.isolate(&old, isolation("adv"), 1));
    d.replaceable(&old).expect("isolated can be replaced");
    d.replace(&old, &new, 2);
    assert!(d.get(&old).is_none());
    let n = d.get(&new).expect("new");
    assert_eq!((n.name.as_str(), n.room.as_deref()), ("Front door", Some("Hall")));
    assert_eq!(n.replaces, [old]);
    assert_eq!(d.rename(&old, "x"), Err(DirectoryError::Unknown));
}

#[test]
fn backfill_is_marked_and_state_keeps_the_newest_value() {
    let d = Directory::new(vec![info(1, "m")], None, CONFIG, 0);
    let id = info(1, "m").id;
    let mut notices = d.subscribe();
    d.readings(
        vec![(id, vec![reading(100_000, "temperature", 5.0), reading(10_000, "temperature", 1.0)])],
        100_000,
    );
    let Ok(Notice::Readings { readings, .. }) = notices.try_recv() else { panic!("no readings") };
    assert_eq!(readings.iter().map(|r| r.backfill).collect::<Vec<_>>(), [false, true]);
    assert_eq!(d.get(&id).expect("dev").state["temperature"].value, 5.0);
    d.readings(vec![(id, vec![reading(100_001, "battery", 87.0)])], 100_001);
    assert_eq!(d.get(&id).expect("dev").battery, Some(87.0));
}

#[test]
fn a_drained_backlog_teaches_the_sensors_period_not_the_drains_so_nothing_flaps_after_it() {
    let d = Directory::new(vec![info(1, "m")], None, CONFIG, 0);
    let id = info(1, "m").id;
    // Measured every second from t=0 to t=29 s (an outage), drained in 300 ms steps after.
    let mut now = 30_000;
    for t in (0..30).map(|i| i * 1_000) {
        d.readings(vec![(id, vec![reading(t, "temperature", 20.0)])], now);
        now += 300;
    }
    assert_eq!(d.get(&id).expect("dev").period_ms, 1_000);
    // The next live report comes a period later: 3 periods have not passed since the drain.
    d.tick(now + 2_500);
    assert_eq!(d.get(&id).expect("dev").availability, Availability::Online);
    d.tick(now + 3_001);
    assert_eq!(d.get(&id).expect("dev").availability, Availability::Offline);
}

#[test]
fn restored_state_fills_in_what_is_missing_and_never_replaces_a_newer_value() {
    let d = Directory::new(vec![info(1, "m")], None, CONFIG, 0);
    let id = info(1, "m").id;
    d.readings(vec![(id, vec![reading(50, "temperature", 5.0)])], 50);
    let mut notices = d.subscribe();
    let stored = |r: Reading| StoredReading::from(&r);
    // Older than what arrived since: nothing restored, nothing announced.
    d.restore_state(&id, &[stored(reading(40, "temperature", 4.0))]);
    assert!(notices.try_recv().is_err(), "an older value was announced");
    assert_eq!(d.get(&id).expect("dev").state["temperature"].value, 5.0);
    // A quantity not held yet and a newer one: both taken, announced once.
    d.restore_state(
        &id,
        &[stored(reading(60, "temperature", 6.0)), stored(reading(30, "humidity", 41.0))],
    );
    assert!(matches!(notices.try_recv(), Ok(Notice::Changed { .. })));
    let s = d.get(&id).expect("dev").state;
    assert_eq!((s["temperature"].value.clone(), s["humidity"].time_ms), (6.0.into(), 30));
    assert_eq!(s.len(), 2);
    assert_eq!(d.outgoing_state_time(&id), Some(Some(60)));
}

#[test]
fn counts_and_updatable_devices_come_without_snapshots_and_leave_out_the_isolated() {
    let mut fixed = info(3, "m");
    fixed.about.updatable = false;
    fixed.about.firmware_version = 7;
    let d = Directory::new(vec![info(2, "m"), info(1, "m"), fixed], None, CONFIG, 0);
    assert_eq!(d.availability_counts(), [3, 0, 0]);
    assert!(d.isolate(&info(2, "m").id, isolation("adv"), 10));
    d.tick(1_000_000_000); // long silent: offline (the isolated one stays isolated)
    assert_eq!(d.availability_counts(), [0, 2, 1]);
    // Only device 1: 2 is isolated, 3 cannot be updated.
    assert_eq!(d.updatable(), [(info(1, "m").id, 1)]);
}

#[test]
fn the_state_view_says_what_the_snapshot_says_and_a_reading_replaces_its_quantitys_value() {
    let d = Directory::new(vec![info(1, "m")], None, CONFIG, 0);
    let id = info(1, "m").id;
    let view = d.state_view(&id).expect("view");
    assert!(view.state.is_empty());
    d.readings(
        vec![(id, vec![reading(1_000, "temperature", 20.0), reading(1_000, "battery", 80.0)])],
        1_000,
    );
    // A newer value of a quantity replaces the held one; an older one does not.
    d.readings(vec![(id, vec![reading(2_000, "temperature", 21.5)])], 2_000);
    d.readings(vec![(id, vec![reading(1_500, "temperature", 19.0)])], 2_100);
    d.rename(&id, "Hall").expect("rename");
    d.set_room(&id, Some("Upstairs")).expect("room");
    let (view, snap) = (d.state_view(&id).expect("view"), d.get(&id).expect("snapshot"));
    assert_eq!((view.name.as_str(), view.room.as_deref()), ("Hall", Some("Upstairs")));
    assert_eq!(
        (view.name.as_str(), view.room.as_deref()),
        (snap.name.as_str(), snap.room.as_deref())
    );
    assert_eq!((view.availability, view.battery), (snap.availability, snap.battery));
    assert_eq!(view.battery, Some(80.0));
    assert_eq!(view.firmware_version, snap.info.about.firmware_version);
    assert_eq!(view.descriptor, descriptor_digest(&snap.info.about));
    let held: BTreeMap<&str, &StoredReading> =
        view.state.iter().map(|r| (protocol::vocabulary::short_name(&r.name), r)).collect();
    assert_eq!(held, snap.state.iter().map(|(k, r)| (k.as_str(), r)).collect());
    assert_eq!(
        (held["temperature"].time_ms, held["temperature"].value.as_f64()),
        (2_000, Some(21.5))
    );
    // The digest tells descriptors apart.
    assert_ne!(descriptor_digest(&info(1, "m").about), descriptor_digest(&info(1, "n").about));
}

#[test]
fn a_device_sending_ever_new_names_holds_at_most_max_quantities_and_known_ones_still_update() {
    let d = Directory::new(vec![info(1, "m")], None, CONFIG, 0);
    let id = info(1, "m").id;
    d.readings(vec![(id, vec![reading(1_000, "temperature", 20.0)])], 1_000);
    let names: Vec<Reading> =
        (0..2 * MAX_QUANTITIES).map(|i| reading(2_000, &format!("q{i}"), i as f64)).collect();
    for pack in names.chunks(64) {
        d.readings(vec![(id, pack.to_vec())], 2_000);
    }
    assert_eq!(d.state_view(&id).expect("view").state.len(), MAX_QUANTITIES);
    d.readings(vec![(id, vec![reading(3_000, "temperature", 22.5)])], 3_000);
    let snap = d.get(&id).expect("snapshot");
    assert_eq!(snap.state["temperature"].value, 22.5);
}
