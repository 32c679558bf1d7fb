//! The bridge's bookkeeping without a broker: isolation filtering, the window, packet ids,
//! the cursor moving only over acknowledged readings, and resends in outbox order.

use protocol::oscore::ContextParams;
use protocol::senml::{Reading, UnixTimeMillis, Value};
use rumqttc::{PubRel, Publish};

use super::*;
use crate::devices::{AvailabilityRules, Isolation};
use crate::store::{DeviceInfo, StoreLimits, Write};

fn kid(n: u8) -> Kid {
    Kid::new(&[n, 0x0c]).expect("kid")
}

fn info(k: Kid) -> DeviceInfo {
    DeviceInfo {
        id: k.into(),
        about: protocol::pairing::Descriptor {
            model: "m".into(),
            serial: format!("s{k}"),
            firmware_version: 1,
            updatable: false,
            verifies_signatures: false,
            capabilities: vec![],
            support_end: protocol::time::UnixTime(0),
        },
        paired_at: 0,
    }
}

fn params(k: Kid) -> ContextParams {
    ContextParams {
        master_secret: vec![7; 16],
        master_salt: vec![],
        sender_id: Kid::new(&[0]).expect("kid"),
        recipient_id: k,
        id_context: None,
    }
}

fn readings(k: Kid, times: &[i64]) -> Write {
    let readings = times
        .iter()
        .map(|&t| Reading {
            name: format!("urn:dev:{k}:temp"),
            unit: Some("Cel".into()),
            value: Value::Number(t as f64),
            time: UnixTimeMillis(t),
        })
        .collect();
    Write::Readings { kid: k, readings }
}

/// A bridge over a store with devices 1 and 2 (2 isolated), the cursor at the log's start.
fn bridge(dir: &Path, window: usize) -> (Forwarder, HubStore) {
    let (store, _) = HubStore::open(dir, StoreLimits::default()).expect("open");
    let (a, b) = (kid(1), kid(2));
    let pair = [
        Write::Device { info: info(a), params: params(a) },
        Write::Device { info: info(b), params: params(b) },
    ];
    store.commit(&pair).expect("pair");
    let cfg = AvailabilityRules { default_period_ms: 60_000, missed_periods: 3 };
    let directory = Directory::new(vec![info(a), info(b)], None, cfg, 0);
    let isolation = Isolation {
        reason: "vulnerable".into(),
        advisory: None,
        since: 0,
        replacement: "replace it".into(),
        overridden_at: None,
    };
    assert!(directory.isolate(&b.into(), isolation, 0));
    let cursor = Cursor { next_seq: 1, ..Cursor::default() };
    let reader = OutboxReader::open(&store, Some(&cursor));
    let bridge = Forwarder {
        store: store.clone(),
        directory,
        prefix: "hearth/t".into(),
        reader,
        cursor,
        cursor_path: dir.join("upstream.cursor"),
        saved_at: Instant::now(),
        dirty: false,
        frame: None,
        inflight: VecDeque::new(),
        status: Arc::default(),
        max_pending: 1000,
        window,
        reconnect_max: Duration::from_secs(1),
        secrets: secrets("url = \"mqtt://127.0.0.1:1883\"", None),
    };
    (bridge, store)
}

fn secrets(toml_text: &str, password: Option<&str>) -> super::Secrets {
    let cfg: super::UpstreamConfig = toml::from_str(toml_text).expect("config");
    super::Secrets {
        cfg,
        url: "mqtt://127.0.0.1:1883".into(),
        refusals: Arc::default(),
        ca_pem: None,
        password: password.map(str::to_owned),
        logged: (None, 0),
    }
}

#[test]
fn a_changed_password_file_applies_to_the_next_connection_and_errors_are_logged_in_words() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("password");
    std::fs::write(&file, "first-password\n").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let text = format!(
        "url = \"mqtt://127.0.0.1:1883\"\nusername = \"hub\"\npassword_file = \"{}\"",
        file.display()
    );
    let mut s = secrets(&text, Some("first-password"));
    let mut opts = MqttOptions::new("t", "127.0.0.1", 1883);
    opts.set_credentials("hub", "first-password");
    s.reload(&mut opts);
    assert_eq!(opts.credentials().map(|l| l.password), Some("first-password".into()));
    std::fs::write(&file, "second-password\n").expect("write");
    s.reload(&mut opts);
    let login = opts.credentials().expect("login");
    assert_eq!((login.username.as_str(), login.password.as_str()), ("hub", "second-password"));
    // An unreadable file keeps the password in use.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    s.reload(&mut opts);
    assert_eq!(opts.credentials().map(|l| l.password), Some("second-password".into()));
    // Connection errors say what to check; one line a minute, the rest counted.
    let refused = rumqttc::ConnectionError::ConnectionRefused(
        rumqttc::ConnectReturnCode::BadUserNamePassword,
    );
    assert!(super::explain_connection(&refused).contains("upstream.password_file"));
    let down = rumqttc::ConnectionError::Io(std::io::ErrorKind::ConnectionRefused.into());
    assert!(super::explain_connection(&down).contains("is the broker running"));
    for _ in 0..10 {
        s.failed(&down);
    }
    assert_eq!(s.logged.1, 9, "one line logged, nine counted for the next");
}

fn client() -> (AsyncClient, rumqttc::EventLoop) {
    AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1), 100)
}

#[test]
fn isolated_devices_are_withheld_and_the_payload_carries_the_outbox_id() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (b, _) = bridge(tmp.path(), 8);
    let r = StoredReading {
        time_ms: 1_700_000_000_123,
        name: "urn:dev:x:temp".into(),
        unit: Some("Cel".into()),
        value: serde_json::json!(21.5),
    };
    assert_eq!(message(&b.directory, "p", 7, 3, &kid(2), &r), None, "isolated");
    assert_eq!(message(&b.directory, "p", 7, 3, &kid(9), &r), None, "unknown");
    let (topic, payload) = message(&b.directory, "p", 7, 3, &kid(1), &r).expect("allowed");
    let device = DeviceId::from(kid(1)).to_string();
    assert_eq!(topic, format!("p/{device}/reading"));
    let v: serde_json::Value = serde_json::from_slice(&payload).expect("json");
    let want = serde_json::json!({"device": device, "name": "urn:dev:x:temp", "value": 21.5,
        "unit": "Cel", "time_ms": 1_700_000_000_123_i64, "seq": 7, "index": 3});
    assert_eq!(v, want);
}

#[test]
fn the_cursor_moves_only_over_acknowledged_readings_in_order() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (mut b, store) = bridge(tmp.path(), 3);
    store.commit(&[readings(kid(1), &[1, 2]), readings(kid(2), &[3])]).expect("frame 1");
    store.commit(&[readings(kid(1), &[4, 5])]).expect("frame 2");
    let (client, _events) = client();
    b.fill(&client);
    // The window holds three: two of device 1 and the isolated one (done at once).
    assert_eq!(b.inflight.len(), 3);
    assert!(b.inflight[2].withheld && b.inflight[2].done);
    b.assigned(11);
    b.assigned(12);
    // The second completes first: the cursor waits for the first.
    b.completed(12);
    assert_eq!((b.cursor.next_seq, b.cursor.index, b.cursor.forwarded), (1, 0, 0));
    b.completed(11);
    let frame1 = b.cursor.next_seq;
    assert!(frame1 > 1, "past frame 1 (and the withheld reading)");
    assert_eq!((b.cursor.index, b.cursor.forwarded, b.cursor.withheld), (0, 2, 1));
    b.fill(&client);
    b.assigned(13);
    b.completed(13);
    assert_eq!((b.cursor.next_seq, b.cursor.index), (frame1, 1), "one of frame 2 done");
    b.assigned(14);
    b.completed(14);
    assert_eq!(b.cursor.forwarded, 4);
    assert!(b.cursor.next_seq > frame1);
    // Saved and loaded, the counters are as they were.
    b.save();
    let c = Cursor::load(&b.cursor_path).expect("load").expect("cursor");
    assert_eq!((c.forwarded, c.withheld, c.dropped), (4, 1, 0));
}

#[test]
fn resends_after_a_disconnect_go_in_outbox_order_although_packet_ids_wrapped() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (mut b, store) = bridge(tmp.path(), 8);
    store.commit(&[readings(kid(1), &[1, 2, 3, 4, 5])]).expect("frame");
    let (client, _events) = client();
    b.fill(&client);
    for pkid in [98, 99, 1, 2, 3] {
        b.assigned(pkid);
    }
    let publish = |pkid| {
        let mut p = Publish::new("t", QoS::ExactlyOnce, vec![]);
        p.pkid = pkid;
        Request::Publish(p)
    };
    // As the client lists them after a disconnect: by packet id, releases last.
    let mut pending: VecDeque<Request> =
        [publish(2), publish(3), publish(99), Request::PubRel(PubRel::new(1)), publish(98)]
            .into_iter()
            .collect();
    b.order_resends(&mut pending);
    let order: Vec<u16> = pending
        .iter()
        .map(|r| match r {
            Request::Publish(p) => p.pkid,
            Request::PubRel(p) => p.pkid,
            _ => 0,
        })
        .collect();
    assert_eq!(order, [98, 99, 1, 2, 3]);
}

#[test]
fn a_lost_session_rewinds_to_the_cursor() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (mut b, store) = bridge(tmp.path(), 2);
    store.commit(&[readings(kid(1), &[1, 2, 3])]).expect("frame");
    let (client, _events) = client();
    b.fill(&client);
    b.assigned(1);
    b.assigned(2);
    b.completed(1);
    assert_eq!(b.cursor.index, 1);
    b.rewind();
    assert!(b.inflight.is_empty());
    b.fill(&client);
    // Resent from the second reading of the frame (the first was acknowledged).
    assert_eq!(b.inflight.iter().map(|s| s.index).collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn backoff_is_jittered_exponential_and_capped() {
    let mut rng = crate::rng::os_seeded();
    let max = Duration::from_secs(5);
    for failures in 0..40 {
        let d = backoff(failures, max, &mut rng);
        let ceiling = RECONNECT_BASE.saturating_mul(1 << failures.min(20)).min(max);
        assert!(d >= ceiling / 2 && d <= ceiling, "{failures}: {d:?}");
    }
}
