//! The control socket's wire format, and `hub ctl` reading back every answer type the hub sends:
//! a field renamed or made asymmetric on one side fails here, not silently in `hub ctl`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;
use crate::devices::{Availability, DeviceSnapshot, Isolation, Transition};
use crate::isolation::{Action, AdvisoryRecord};

fn id(s: &str) -> DeviceId {
    s.parse().expect("device id")
}

/// What the hub sends for `answer`, read back as `hub ctl` reads it, sends the same JSON.
fn round_trip<T: Serialize + DeserializeOwned>(answer: &T) -> Value {
    let sent = serde_json::to_value(answer).expect("serialize");
    let read: T = serde_json::from_value(sent.clone())
        .unwrap_or_else(|e| panic!("hub ctl cannot read {sent}: {e}"));
    assert_eq!(serde_json::to_value(&read).expect("serialize"), sent);
    sent
}

pub(crate) fn device_view() -> DeviceView {
    let reading = StoredReading {
        time_ms: 1_800_000_000_000,
        name: "urn:dev:TH1:temp".into(),
        unit: Some("Cel".into()),
        value: json!(21.5),
    };
    DeviceView {
        device: DeviceSnapshot {
            info: crate::store::DeviceInfo {
                id: id("0a0b0c0d"),
                about: protocol::pairing::Descriptor {
                    model: "hearth-thermo-1".into(),
                    serial: "TH1".into(),
                    firmware_version: 3,
                    updatable: true,
                    verifies_signatures: true,
                    capabilities: vec!["temperature".into()],
                    support_end: protocol::time::UnixTime(1_700_000_000),
                },
                paired_at: 1_690_000_000,
            },
            name: "Hall thermostat".into(),
            room: Some("Hall".into()),
            availability: Availability::Isolated,
            isolation: Some(Isolation {
                reason: "firmware 3 is affected".into(),
                advisory: Some("hearth-thermo-1 v1–3".into()),
                since: 1_800_000_000,
                replacement: "Replace it: ...".into(),
                overridden_at: None,
            }),
            last_seen_ms: Some(1_000_000),
            battery: Some(87.0),
            state: BTreeMap::from([("temp".to_owned(), reading)]),
            period_ms: 60_000,
            transitions: vec![Transition {
                at_ms: 1_000_000,
                to: Availability::Isolated,
                why: "advisory".into(),
            }],
            replaces: vec![id("01")],
        },
        readings: 42,
        update: Some(crate::updates::DeviceUpdate {
            model: "hearth-thermo-1".into(),
            installed: 3,
            updatable: true,
            ..Default::default()
        }),
    }
}

pub(crate) fn advisory() -> AdvisoryRecord {
    AdvisoryRecord {
        id: "00112233".into(),
        model: "hearth-button-1".into(),
        affected_low: 1,
        affected_high: 3,
        severity: "critical".into(),
        fixed_in: Some(4),
        text: "replayable presses".into(),
        issued: 1_800_000_000,
        received: 1_800_000_100,
        source: "feed".into(),
        actions: BTreeMap::from([
            (id("01"), Action::Isolated { reason: "not updatable".into() }),
            (id("02"), Action::FixScheduled { version: Some(4) }),
        ]),
    }
}

pub(crate) fn pairing_status() -> PairingStatus {
    PairingStatus {
        open: true,
        state: PairingState::BackingOff,
        backoff_s: 4,
        closes_in_s: 100,
        attempts_left: 2,
        waiting: vec![Waiting {
            device: "0a".into(),
            serial: "TH1".into(),
            model: "hearth-thermo-1".into(),
            firmware_version: 3,
            warning: Some("past its support period".into()),
        }],
        confirming: Some("0b".into()),
        pins_queued: 1,
    }
}

#[test]
fn requests_keep_the_control_sockets_json() {
    let pin: Request = request::PairPin {
        pin: "123456".into(),
        serial: Some("TH1".into()),
        device: None,
        replaces: Some(id("0a")),
        accept_risk: true,
    }
    .into();
    assert_eq!(
        serde_json::to_value(&pin).expect("json"),
        json!({"cmd": "pair_pin", "pin": "123456", "serial": "TH1", "device": null,
               "replaces": "0a", "accept_risk": true})
    );
    // Argument-less commands are the tag alone; optional arguments may be left out.
    let close: Request = request::PairClose {}.into();
    assert_eq!(serde_json::to_value(&close).expect("json"), json!({"cmd": "pair_close"}));
    for text in [
        r#"{"cmd":"pair_close"}"#,
        r#"{"cmd":"devices"}"#,
        r#"{"cmd":"pair_open"}"#,
        r#"{"cmd":"readings","id":"0a"}"#,
        r#"{"cmd":"update_policy","policy":null}"#,
        r#"{"cmd":"mqtt_user_add","name":"ha"}"#,
    ] {
        let r: Result<Request, _> = serde_json::from_str(text);
        assert!(r.is_ok(), "{text}: {r:?}");
    }
    // Unknown commands and unknown or missing arguments are refused.
    for text in [
        r#"{"cmd":"devices","all":true}"#,
        r#"{"cmd":"pair_pin"}"#,
        r#"{"cmd":"format_disk"}"#,
        r#"{"pin":"1"}"#,
    ] {
        assert!(serde_json::from_str::<Request>(text).is_err(), "{text}");
    }
}

#[test]
fn every_answer_reads_back_as_sent() {
    let status = pairing_status();
    let sent = round_trip(&status);
    assert_eq!(sent["state"], "backing_off");
    let sent = round_trip(&vec![device_view()]);
    // The device's record is flat: pairing record, profile and live state side by side.
    for key in ["id", "model", "name", "availability", "battery", "state", "readings", "update"] {
        assert!(sent[0].get(key).is_some(), "{key} missing from {sent}");
    }
    round_trip(&device_view());
    round_trip(&Paired { pairing: "0a".into(), replaces: Some(id("01")) });
    assert_eq!(
        round_trip(&Paired { pairing: "0a".into(), replaces: None })["replaces"],
        Value::Null
    );
    round_trip(&FactoryResetStarted { factory_reset: true });
    assert_eq!(round_trip(&Removed { removed: id("0a") }), json!({"removed": "0a"}));
    assert_eq!(round_trip(&Removed { removed: "ha".to_owned() }), json!({"removed": "ha"}));
    round_trip(&Renamed { renamed: id("0a") });
    assert_eq!(round_trip(&RoomSet { room: None }), json!({"room": null}));
    round_trip(&Unisolated { unisolated: id("0a") });
    round_trip(&vec![advisory()]);
    round_trip(&advisory());
    let security = SecurityReport { bad_payload: 3, total: 3, ..SecurityReport::default() };
    let sent = round_trip(&security);
    assert!(sent.get("link").is_none() && sent["bad_payload"] == 3, "counters are flat: {sent}");
    let updates = UpdatesAnswer {
        view: crate::updates::UpdatesView {
            policy: crate::updates::Policy::Postponed { until: 1_800_000_000 },
            trust: vec![("hearth-thermo-1".into(), "k1".into())],
            releases: Vec::new(),
            refused: Vec::new(),
            devices: Vec::new(),
        },
        feed: Some(crate::feed::FeedStatus {
            url: "https://feed.example/".into(),
            ..Default::default()
        }),
    };
    let sent = round_trip(&updates);
    assert!(sent.get("view").is_none() && sent.get("policy").is_some(), "{sent}");
    round_trip(&UpdatesAnswer { feed: None, ..updates });
    round_trip(&ReleaseAdded { model: "m".into(), version: 2 });
    round_trip(&Trusted { trusted: "k1".into() });
    assert_eq!(round_trip(&Done { ok: true }), json!({"ok": true}));
    round_trip(&Approved { approved: 2 });
    assert_eq!(round_trip(&Cancelled { cancelled: None }), json!({"cancelled": null}));
    assert_eq!(
        round_trip(&UpstreamAnswer { configured: false, status: None }),
        json!({"configured": false})
    );
    let upstream = UpstreamAnswer {
        configured: true,
        status: Some(crate::upstream::UpstreamStatus {
            url: "mqtts://broker:8883".into(),
            pending: 5,
            ..Default::default()
        }),
    };
    let sent = round_trip(&upstream);
    assert_eq!((sent["configured"].clone(), sent["pending"].clone()), (json!(true), json!(5)));
    assert_eq!(
        round_trip(&UserAdded { added: "ha".into(), password: None }),
        json!({"added": "ha"})
    );
    round_trip(&UserAdded { added: "ha".into(), password: Some("p".into()) });
    round_trip(&vec![crate::mqtt::auth::UserView { name: "ha".into(), created: 1, admin: true }]);
    round_trip(&vec![StoredReading {
        time_ms: 1,
        name: "n".into(),
        unit: None,
        value: json!(true),
    }]);
}

/// Every counter `hub ctl security` reports is in the security catalogue, and the report's total
/// is exactly the catalogue's events (what the link, MQTT and the listeners each sum).
#[test]
fn every_security_counter_is_in_the_catalogue_and_the_total_counts_its_events() {
    let Value::Object(fields) = serde_json::to_value(SecurityReport::default()).expect("json")
    else {
        panic!("the report is not an object")
    };
    // The counters: everything but the total and the window's view of them.
    let counter = |k: &String| !["total", "recent", "anomalies"].contains(&k.as_str());
    let names: Vec<String> = fields.keys().filter(|k| counter(k)).cloned().collect();
    let mut ones: serde_json::Map<String, Value> =
        fields.keys().filter(|k| counter(k)).map(|k| (k.clone(), json!(1))).collect();
    ones.insert("total".into(), json!(0));
    let report: SecurityReport = serde_json::from_value(Value::Object(ones)).expect("report");
    let mut events = 0;
    for name in &names {
        let c = protocol::security::counter(name)
            .unwrap_or_else(|| panic!("counter {name} is not in protocol::security::COUNTERS"));
        events += u64::from(c.event);
    }
    let summed = report.link.security_total()
        + report.bad_payload
        + report.mqtt.total()
        + report.connections.total()
        + report.web.total();
    assert_eq!(summed, events, "the totals and the catalogue disagree on what is an event");
}
