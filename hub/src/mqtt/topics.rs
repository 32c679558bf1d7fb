//! Hearth's MQTT topics and payloads (DESIGN "MQTT"): retained device state with timestamps,
//! retained availability, `…/set` commands parsed into typed values with limits (EN 303 645
//! 5.13-1), hub status and security events; and which topics clients may publish to (the hub's
//! own topics are not theirs to forge).

use std::collections::BTreeMap;

use protocol::vocabulary::{Command, CommandRefused, Kind, Quantity, short_name};
use serde_json::{Value, json};

use crate::device_id::DeviceId;
use crate::devices::{DeviceSnapshot, LiveReading};
use crate::store::StoredReading;

/// Root of every Hearth topic.
pub(crate) const ROOT: &str = "hearth";
/// Hub status (retained `online`/`offline`).
pub(crate) const HUB_STATUS: &str = "hearth/hub/status";
/// Security events (JSON, not retained).
pub(crate) const HUB_SECURITY: &str = "hearth/hub/security";
/// The hub's own state (devices online, offline, isolated; security events and anomalies;
/// upstream backlog), retained.
pub(crate) const HUB_OVERVIEW: &str = "hearth/hub/overview";
/// Longest `…/set` payload.
const MAX_SET_PAYLOAD: usize = 128;

/// `hearth/<device>/state`.
pub(crate) fn state(d: &DeviceId) -> String {
    format!("{ROOT}/{d}/state")
}

/// `hearth/<device>/availability`.
pub(crate) fn availability(d: &DeviceId) -> String {
    format!("{ROOT}/{d}/availability")
}

/// `hearth/<device>/history`: readings that do not drive the current state (replayed from an
/// outage buffer, older than it, or overtaken while it waited for its pace), with their
/// original time, several to a message ([`history_payload`]); never retained.
pub(crate) fn history(d: &DeviceId) -> String {
    format!("{ROOT}/{d}/history")
}

/// `hearth/<device>/event`: one message per event (a button's `{"event_type": "press", ...}`),
/// never retained.
pub(crate) fn event(d: &DeviceId) -> String {
    format!("{ROOT}/{d}/event")
}

/// The events in `readings` (live ones only: a press replayed from an outage buffer is
/// history, not something to react to now): each `true` of an event quantity (a button's
/// press), its SenML short name as the event type.
pub(crate) fn events(readings: &[LiveReading]) -> Vec<Value> {
    readings
        .iter()
        .filter(|r| !r.backfill && r.reading.value == Value::Bool(true))
        .filter_map(|r| {
            let q = Quantity::of_record(&r.reading.name)?;
            matches!(q.kind(), Kind::Event { .. }).then(|| {
                json!({
                    "event_type": q.senml(),
                    "time_ms": r.reading.time_ms,
                    "timestamp": rfc3339_ms(r.reading.time_ms),
                })
            })
        })
        .collect()
}

/// `hearth/<device>/set`.
pub(crate) fn set(d: &DeviceId) -> String {
    format!("{ROOT}/{d}/set")
}

/// `hearth/<device>/set/result`: what became of a command.
pub(crate) fn set_result(d: &DeviceId) -> String {
    format!("{ROOT}/{d}/set/result")
}

/// `hearth/<device>/update`: firmware state for the Home Assistant `update` entity.
pub(crate) fn update(d: &DeviceId) -> String {
    format!("{ROOT}/{d}/update")
}

/// `hearth/<device>/update/install`: Home Assistant's `update` entity installs (= the owner
/// approves) the release it shows.
pub(crate) fn update_install(d: &DeviceId) -> String {
    format!("{ROOT}/{d}/update/install")
}

/// `hearth/<device>/update/result`: what became of an install request.
pub(crate) fn update_result(d: &DeviceId) -> String {
    format!("{ROOT}/{d}/update/result")
}

/// The device a `hearth/<device>/update/install` topic names.
pub(crate) fn parse_update_install(topic: &str) -> Option<DeviceId> {
    let rest = topic.strip_prefix("hearth/")?.strip_suffix("/update/install")?;
    if rest.contains('/') {
        return None;
    }
    rest.parse().ok()
}

/// The device a `hearth/<device>/set` topic names.
pub(crate) fn parse_set(topic: &str) -> Option<DeviceId> {
    let rest = topic.strip_prefix("hearth/")?.strip_suffix("/set")?;
    if rest.contains('/') {
        return None;
    }
    rest.parse().ok()
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum SetError {
    /// Not a number, or not `{"<command>": number}` naming a command the hub knows.
    #[error("payload must be a number or {{\"<command>\": number}}, e.g. {{\"setpoint\": 21}}")]
    Malformed,
    /// Out of range.
    #[error(transparent)]
    Refused(#[from] CommandRefused),
    /// Unknown, isolated, or without that setting.
    #[error("the device does not take that command")]
    NotAllowed,
}

/// A parsed `…/set` payload for a device that takes `commands`: a plain number (as Home
/// Assistant's climate entity sends) for its first command, or `{"<command>": n}`; checked
/// against the command's range (`protocol::vocabulary`) and rounded to hundredths.
pub(crate) fn parse_set_payload(
    payload: &[u8],
    commands: &[Command],
) -> Result<(Command, f64), SetError> {
    if payload.len() > MAX_SET_PAYLOAD {
        return Err(SetError::Malformed);
    }
    let text = std::str::from_utf8(payload).map_err(|_| SetError::Malformed)?.trim();
    let (named, value) = match serde_json::from_str::<Value>(text) {
        Ok(Value::Number(n)) => (None, n.as_f64()),
        Ok(Value::Object(o)) if o.len() == 1 => {
            let (k, v) = o.iter().next().ok_or(SetError::Malformed)?;
            (Some(Command::parse(k).ok_or(SetError::Malformed)?), v.as_f64())
        }
        Ok(Value::String(s)) => (None, s.trim().parse::<f64>().ok()),
        _ => (None, None),
    };
    let value = value.filter(|v| v.is_finite()).ok_or(SetError::Malformed)?;
    let command = named.or(commands.first().copied()).ok_or(SetError::NotAllowed)?;
    let value = command.check(value)?;
    if !commands.contains(&command) {
        return Err(SetError::NotAllowed);
    }
    Ok((command, value))
}

/// Whether a client may publish to `topic`: not to the hub's own topics (device state,
/// availability, hub status, discovery configs), which would let it forge what other clients
/// see. Commands (`hearth/<device>/set`, `…/update/install`) and Home Assistant's birth
/// message are allowed, as is
/// anything outside `hearth/` and the discovery prefix.
pub(crate) fn client_may_publish(topic: &str, discovery_prefix: &str) -> bool {
    if topic.is_empty() || topic.contains(['+', '#']) {
        return false;
    }
    if topic == ROOT || topic.starts_with("hearth/") {
        return parse_set(topic).is_some() || parse_update_install(topic).is_some();
    }
    match topic.strip_prefix(discovery_prefix) {
        Some("") => false,
        Some(rest) if rest.starts_with('/') => rest == "/status",
        _ => true,
    }
}

/// One state message: a device's current values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StateMessage {
    /// When its newest value was measured, Unix ms.
    pub time_ms: i64,
    /// The JSON.
    pub payload: Vec<u8>,
}

/// What a state message says of its device besides the values: from a whole snapshot, or
/// from the directory's [`crate::devices::StateView`] (the bridge's path for every report).
pub(crate) struct Subject<'a> {
    pub id: DeviceId,
    pub name: &'a str,
    pub room: Option<&'a str>,
    /// The last battery level, for a message whose values have none.
    pub battery: Option<f64>,
}

impl<'a> From<&'a DeviceSnapshot> for Subject<'a> {
    fn from(d: &'a DeviceSnapshot) -> Self {
        Self { id: d.info.id, name: &d.name, room: d.room.as_deref(), battery: d.battery }
    }
}

/// A `…/history` message: the device once, then its entries ([`history_entries`]), oldest
/// first: `{"device","name","room","readings":[{"time_ms","values","backfill"}]}` — `backfill`
/// only when true, and no RFC 3339 `timestamp` (a history carries many readings, and every
/// byte is paid by each subscriber).
pub(crate) fn history_payload(device: &Subject<'_>, entries: &[u8]) -> Vec<u8> {
    let head = HistoryPayload { device: device.id, name: device.name, room: device.room };
    // Serializing these types cannot fail (string keys, no custom serializers).
    let mut out = serde_json::to_vec(&head).unwrap_or_default();
    out.pop(); // its closing brace: the readings follow
    out.extend_from_slice(b",\"readings\":[");
    out.extend_from_slice(entries);
    out.extend_from_slice(b"]}");
    out
}

/// Appends `readings` to `out` as history entries, one per measurement time (a comma before
/// each unless `out` is empty).
pub(crate) fn history_entries<'a>(
    out: &mut Vec<u8>,
    readings: impl Iterator<Item = &'a LiveReading>,
) {
    let mut by_time: BTreeMap<i64, HistoryEntry<'_>> = BTreeMap::new();
    for r in readings {
        let e = by_time.entry(r.reading.time_ms).or_insert_with(|| HistoryEntry {
            backfill: false,
            time_ms: r.reading.time_ms,
            values: BTreeMap::new(),
        });
        e.backfill |= r.backfill;
        e.values.insert(short_name(&r.reading.name), &r.reading.value);
    }
    for e in by_time.into_values() {
        if !out.is_empty() {
            out.push(b',');
        }
        // As above, it cannot fail; nothing is appended if it did.
        let _ = serde_json::to_writer(&mut *out, &e);
    }
}

#[derive(serde::Serialize)]
struct HistoryPayload<'a> {
    device: DeviceId,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct HistoryEntry<'a> {
    #[serde(skip_serializing_if = "is_false")]
    backfill: bool,
    time_ms: i64,
    values: BTreeMap<&'a str, &'a Value>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The current state of a device (the newest value of each quantity in `state`), if any.
pub(crate) fn current_state<'a>(
    device: &Subject<'_>,
    state: impl Iterator<Item = &'a StoredReading>,
) -> Option<StateMessage> {
    let mut time_ms = None;
    let mut values = BTreeMap::new();
    for r in state {
        time_ms = time_ms.max(Some(r.time_ms));
        values.insert(short_name(&r.name), &r.value);
    }
    let time_ms = time_ms?;
    Some(StateMessage { time_ms, payload: state_payload(device, time_ms, values) })
}

/// A state message's JSON. Its fields are in name order, as they were when it was built as a
/// `serde_json::Value` (whose maps are sorted): the bytes did not change with the typed form.
/// `backfill` is always false (replayed readings go to history); clients may rely on the key.
#[derive(serde::Serialize)]
struct StatePayload<'a> {
    backfill: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    battery: Option<f64>,
    device: DeviceId,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    time_ms: i64,
    timestamp: String,
    values: BTreeMap<&'a str, &'a Value>,
}

fn state_payload(device: &Subject<'_>, time_ms: i64, values: BTreeMap<&str, &Value>) -> Vec<u8> {
    let battery = values.get(Quantity::Battery.senml()).and_then(|v| v.as_f64()).or(device.battery);
    let payload = StatePayload {
        backfill: false,
        battery,
        device: device.id,
        name: device.name,
        room: device.room,
        time_ms,
        timestamp: rfc3339_ms(time_ms),
        values,
    };
    // Serializing these types cannot fail (string keys, no custom serializers).
    serde_json::to_vec(&payload).unwrap_or_default()
}

pub(crate) use protocol::time::rfc3339_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_topics_and_payloads_are_parsed_with_limits() {
        let d: DeviceId = "0a1b".parse().expect("id");
        assert_eq!(parse_set(&set(&d)), Some(d));
        assert_eq!(parse_set("hearth/0a1b/state"), None);
        assert_eq!(parse_set("hearth/x/y/set"), None);
        assert_eq!(parse_set("hearth/zz/set"), None);
        let thermostat = [Command::Setpoint];
        let set = |p: &[u8]| parse_set_payload(p, &thermostat).map(|(_, v)| v);
        assert_eq!(set(b"22.5"), Ok(22.5));
        assert_eq!(set(b" 21 "), Ok(21.0));
        assert_eq!(set(br#"{"setpoint": 19.25}"#), Ok(19.25));
        assert_eq!(set(br#""20""#), Ok(20.0));
        assert_eq!(set(b"20.004"), Ok(20.0));
        let too_hot = set(b"99").expect_err("out of range");
        assert!(matches!(too_hot, SetError::Refused(_)), "{too_hot:?}");
        assert_eq!(too_hot.to_string(), "setpoint must be 5 to 35 °C");
        assert_eq!(set(b"NaN"), Err(SetError::Malformed));
        assert_eq!(set(b"\xff"), Err(SetError::Malformed));
        assert_eq!(set(br#"{"setpoint": 20, "x": 1}"#), Err(SetError::Malformed));
        assert_eq!(set(br#"{"laser": 20}"#), Err(SetError::Malformed));
        assert_eq!(set(&[b'1'; 200]), Err(SetError::Malformed));
        // A device without that command (a climate sensor) takes none.
        assert_eq!(parse_set_payload(b"20", &[]), Err(SetError::NotAllowed));
        assert_eq!(parse_set_payload(br#"{"setpoint": 20}"#, &[]), Err(SetError::NotAllowed));
    }

    #[test]
    fn clients_cannot_publish_to_the_hubs_own_topics() {
        let p = "homeassistant";
        assert!(client_may_publish("hearth/0a1b/set", p));
        assert!(client_may_publish("hearth/0a1b/update/install", p));
        assert!(!client_may_publish("hearth/0a1b/update", p));
        assert!(!client_may_publish("hearth/0a1b/update/result", p));
        assert!(client_may_publish("homeassistant/status", p));
        assert!(client_may_publish("home/kitchen/light", p));
        assert!(client_may_publish("homeassistantx/foo", p));
        assert!(!client_may_publish("hearth/0a1b/state", p));
        assert!(!client_may_publish("hearth/0a1b/availability", p));
        assert!(!client_may_publish("hearth/hub/status", p));
        assert!(!client_may_publish("hearth/hub/security", p));
        assert!(!client_may_publish("hearth", p));
        assert!(!client_may_publish("homeassistant/sensor/x/y/config", p));
        assert!(!client_may_publish("homeassistant", p));
        assert!(!client_may_publish("a/+/b", p));
    }

    #[test]
    fn history_keeps_each_readings_time_and_flag_and_the_state_bytes_are_unchanged() {
        use crate::devices::{Availability, LiveReading};
        use crate::store::{DeviceInfo, StoredReading};
        let device = DeviceSnapshot {
            info: DeviceInfo {
                id: "0a1b".parse().expect("id"),
                about: protocol::pairing::Descriptor {
                    model: "hearth-climate-1".into(),
                    serial: "CL-1".into(),
                    firmware_version: 1,
                    updatable: true,
                    verifies_signatures: false,
                    capabilities: vec!["temperature".into()],
                    support_end: protocol::time::UnixTime(0),
                },
                paired_at: 0,
            },
            name: "Kitchen".into(),
            room: None,
            availability: Availability::Online,
            isolation: None,
            last_seen_ms: None,
            battery: None,
            state: BTreeMap::new(),
            period_ms: 1000,
            transitions: Vec::new(),
            replaces: Vec::new(),
        };
        let r = |t: i64, name: &str, v: f64, backfill: bool| LiveReading {
            reading: StoredReading {
                time_ms: t,
                name: format!("urn:dev:CL-1:{name}"),
                unit: None,
                value: json!(v),
            },
            backfill,
        };
        let readings = [
            r(2_000, "temp", 20.5, true),
            r(2_000, "hum", 40.0, true),
            r(1_000, "temp", 20.0, true),
        ];
        let mut entries = Vec::new();
        history_entries(&mut entries, readings.iter());
        let history = history_payload(&(&device).into(), &entries);
        let h: Value = serde_json::from_slice(&history).expect("json");
        assert_eq!(
            h,
            json!({"device": "0a1b", "name": "Kitchen", "readings": [
                {"backfill": true, "time_ms": 1_000, "values": {"temp": 20.0}},
                {"backfill": true, "time_ms": 2_000, "values": {"hum": 40.0, "temp": 20.5}}]})
        );
        // A reading that was live (overtaken while the state waited) says nothing of backfill.
        let (live, mut entries) = ([r(3_000, "temp", 21.0, false)], Vec::new());
        history_entries(&mut entries, live.iter());
        assert_eq!(
            String::from_utf8(history_payload(&(&device).into(), &entries)).expect("utf-8"),
            r#"{"device":"0a1b","name":"Kitchen","readings":[{"time_ms":3000,"values":{"temp":21.0}}]}"#
        );
        // The state's bytes are those of the `serde_json::Value` it used to be built as.
        let state: Vec<StoredReading> = readings[..2].iter().map(|r| r.reading.clone()).collect();
        let s = current_state(&(&device).into(), state.iter()).expect("a state");
        assert_eq!(
            String::from_utf8(s.payload).expect("utf-8"),
            json!({"backfill": false, "device": "0a1b", "name": "Kitchen", "time_ms": 2_000,
                "timestamp": "1970-01-01T00:00:02.000Z", "values": {"hum": 40.0, "temp": 20.5}})
            .to_string()
        );
    }

    #[test]
    fn live_presses_become_events_and_replayed_ones_do_not() {
        use crate::store::StoredReading;
        let r = |t: i64, name: &str, v: Value, backfill: bool| LiveReading {
            reading: StoredReading {
                time_ms: t,
                name: format!("urn:dev:BT-1:{name}"),
                unit: None,
                value: v,
            },
            backfill,
        };
        let readings = [
            r(1_000, "press", json!(true), true),
            r(2_000, "press", json!(false), false),
            r(2_000, "battery", json!(90.0), false),
            r(3_000, "press", json!(true), false),
        ];
        let events = events(&readings);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["event_type"], "press");
        assert_eq!(events[0]["time_ms"], 3_000);
    }
}
