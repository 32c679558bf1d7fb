//! Retained messages, handed over by the fronts: rumqttd keeps none. For every SUBSCRIBE the
//! front hands the client, after the SUBACK, the retained messages its granted filters match —
//! clients' own ([`ClientRetained`], kept here within a bound) and the hub's (made from the
//! device directory, [`super::owned`]) — a page at a time as the client reads them. rumqttd
//! 0.20 gave a new subscription no more retained messages than its in-flight window (100 at
//! QoS 1, 1,024 at QoS 0), and none to a repeated SUBSCRIBE (MQTT 3.1.1 [MQTT-3.8.4-3]); here
//! every SUBSCRIBE gets every one, and the subscription itself never lapses (the SUBSCRIBE is
//! forwarded unchanged), so no live publication is lost. The filters each SUBACK grants are
//! kept here too: the hub's live messages go by them ([`super::live`]). A SUBSCRIBE with a
//! shared subscription (`$share/…`, rumqttd's, not MQTT 3.1.1) is refused whole.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{Packet, Protocol, QoS, SubscribeReasonCode, v4::V4};

use super::live::Subscriptions;
use super::owned::{Cursor, Owned};

/// SUBSCRIBEs of one connection whose retained messages are not yet handed over at most (each
/// holds its filters; only the first holds messages): a client that sends more while not
/// reading what it is owed is disconnected. The front never stops reading a client (its
/// PUBACKs of retained messages, its PINGREQs, its DISCONNECT must get through).
const MAX_PENDING: usize = 1024;
/// QoS 1 and 2 retained PUBLISHes of the front's own awaiting the client's acknowledgement at
/// most: beyond it the front waits (never reusing an id the client has not acknowledged).
const INJECT_WINDOW: usize = 1024;
/// Bytes of retained messages made at a time (then the front writes them to the client and
/// makes more once the client has taken them).
const PAGE_BYTES: usize = 64 * 1024;
/// Packet ids of the PUBLISHes the front adds: rumqttd numbers its own from 1 to 100, so the
/// upper half of the id space never meets them.
const FIRST_ID: u16 = 0x8000;
/// Clients' retained messages kept, in all (topics, payload bytes): beyond either, a retained
/// PUBLISH to a new topic, or one that grows past the bytes, is refused like a publication to
/// a topic the client may not write (counted, connection closed), and a Will that would not
/// fit is refused at CONNECT. Without it an authenticated client could fill the hub's memory
/// one retained topic at a time.
pub(super) const CLIENT_RETAINED_TOPICS: usize = 10_000;
pub(super) const CLIENT_RETAINED_BYTES: usize = 16 << 20;

/// A client's retained message: topic, the QoS it was published with, payload.
type Kept = (Arc<str>, u8, Bytes);

/// The retained messages clients published (to topics they may write), shared by both fronts.
#[derive(Debug, Default)]
pub(super) struct ClientRetained {
    inner: Mutex<Store>,
    /// Retained messages refused for the bound.
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Store {
    topics: HashMap<Arc<str>, (u8, Bytes)>,
    /// Topic and payload bytes of every kept message.
    bytes: usize,
}

impl Store {
    /// Whether a message of `len` payload bytes on `topic` fits in place of the topic's own.
    fn fits(&self, topic: &str, len: usize) -> bool {
        if len == 0 {
            return true; // a deletion
        }
        let old = self.topics.get(topic).map(|(_, p)| topic.len() + p.len());
        let total = (self.bytes - old.unwrap_or(0)).saturating_add(topic.len() + len);
        total <= CLIENT_RETAINED_BYTES
            && (old.is_some() || self.topics.len() < CLIENT_RETAINED_TOPICS)
    }
}

impl ClientRetained {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts (and now and then logs) a retained message refused for the bound.
    fn refuse(&self) -> bool {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                refused = n,
                "MQTT: retained messages refused: clients' retained messages are at their \
                 bound ({CLIENT_RETAINED_TOPICS} topics, {} MiB)",
                CLIENT_RETAINED_BYTES >> 20
            );
        }
        false
    }

    /// Whether a retained message of `len` bytes on `topic` would fit now (a Will's, checked
    /// at CONNECT).
    pub(super) fn fits(&self, topic: &str, len: usize) -> bool {
        let fits = self.lock().fits(topic, len);
        fits || self.refuse()
    }

    /// Keeps a retained message (an empty one deletes the topic's), if it fits; whether it did.
    pub(super) fn keep(&self, topic: &str, qos: u8, payload: Bytes) -> bool {
        let mut store = self.lock();
        if !store.fits(topic, payload.len()) {
            drop(store);
            return self.refuse();
        }
        if let Some((_, old)) = store.topics.remove(topic) {
            store.bytes -= topic.len() + old.len();
        }
        if !payload.is_empty() {
            store.bytes += topic.len() + payload.len();
            store.topics.insert(Arc::from(topic), (qos, payload));
        }
        true
    }

    /// The retained messages matching any of `filters`.
    fn matching(&self, filters: &[String]) -> VecDeque<Kept> {
        let store = self.lock();
        let mut out = VecDeque::new();
        let mut seen: HashSet<Arc<str>> = HashSet::new();
        for f in filters {
            if !f.contains(['+', '#']) {
                if let Some((t, (qos, p))) = store.topics.get_key_value(f.as_str())
                    && seen.insert(t.clone())
                {
                    out.push_back((t.clone(), *qos, p.clone()));
                }
                continue;
            }
            for (t, (qos, p)) in &store.topics {
                if rumqttd::protocol::matches(t, f) && seen.insert(t.clone()) {
                    out.push_back((t.clone(), *qos, p.clone()));
                }
            }
        }
        out
    }
}

/// One client connection's SUBSCRIBEs and the retained messages owed to it.
#[derive(Debug)]
pub(super) struct Resubscribe {
    owned: Arc<Owned>,
    clients: Arc<ClientRetained>,
    /// SUBSCRIBEs whose retained messages are not yet all handed over, in order.
    pending: VecDeque<Pending>,
    /// Ids of the QoS 1 and 2 PUBLISHes the front added, until the client acknowledged them.
    injected: HashSet<u16>,
    next_id: u16,
    /// The filters granted to the client: the hub's live messages it gets ([`super::live`]).
    subscriptions: Subscriptions,
}

#[derive(Debug)]
struct Pending {
    /// The SUBSCRIBE's packet id.
    pkid: u16,
    /// Every filter of the SUBSCRIBE, in order.
    filters: Vec<String>,
    /// The QoS granted per filter (from the SUBACK; none: refused).
    granted: Option<Vec<Option<u8>>>,
    /// Clients' retained messages still to hand over (taken once acknowledged).
    clients: Option<VecDeque<Kept>>,
    /// The hub's own retained messages still to hand over (made once acknowledged).
    own: Option<Cursor>,
    /// Topics the client received live since the SUBSCRIBE: their retained message would be
    /// older than what the client has, so it is not handed over.
    live: HashSet<String>,
}

/// What to do with one client packet.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Client {
    /// Forward it to the broker.
    Forward,
    /// An acknowledgement of a PUBLISH the front added: not the broker's; answer the client
    /// with these bytes (may be empty).
    Answer(Vec<u8>),
    /// A SUBSCRIBE while [`MAX_PENDING`] others wait for their retained messages (the client
    /// is not reading), or one beyond the bounds of [`Subscriptions`]: close the connection,
    /// for this reason.
    Refuse(&'static str),
}

impl Resubscribe {
    pub(super) fn new(owned: Arc<Owned>, clients: Arc<ClientRetained>) -> Self {
        Self {
            owned,
            clients,
            pending: VecDeque::new(),
            injected: HashSet::new(),
            next_id: 0,
            subscriptions: Subscriptions::default(),
        }
    }

    /// Whether one of the hub's live messages on `topic` goes to the client (a granted filter
    /// matches it); if so, it is noted as delivered live for the retained messages still owed.
    pub(super) fn hub_message(&mut self, topic: &str) -> bool {
        if !self.subscriptions.matches(topic) {
            return false;
        }
        self.note_live(topic);
        true
    }

    /// Whether the client holds any granted filter.
    pub(super) fn subscribed(&self) -> bool {
        self.subscriptions.any()
    }

    fn note_live(&mut self, topic: &str) {
        for p in &mut self.pending {
            if p.filters.iter().any(|f| rumqttd::protocol::matches(topic, f)) {
                p.live.insert(topic.to_owned());
            }
        }
    }

    /// A client packet about to be forwarded.
    pub(super) fn client_packet(&mut self, frame: &[u8], max: usize) -> Client {
        match frame.first().map(|b| b >> 4) {
            Some(8) => {
                let Ok(Packet::Subscribe(sub, _)) = V4.read_mut(&mut BytesMut::from(frame), max)
                else {
                    return Client::Forward; // the broker refuses it
                };
                let filters: Vec<String> = sub.filters.into_iter().map(|f| f.path).collect();
                if filters.iter().any(|f| shared(f)) {
                    // Not MQTT 3.1.1, and the hub's own messages go to each connection that
                    // subscribed: a shared subscription would get them once per member.
                    return Client::Answer(refused(sub.pkid, filters.len()));
                }
                if self.pending.len() >= MAX_PENDING {
                    return Client::Refuse(
                        "too many SUBSCRIBEs while not reading their retained messages",
                    );
                }
                // Those still waiting for their SUBACK count too.
                let waiting = self.pending.iter().filter(|p| p.granted.is_none());
                let all = waiting.flat_map(|p| &p.filters).chain(&filters).map(String::as_str);
                if !self.subscriptions.room_for(all) {
                    return Client::Refuse("too many subscriptions");
                }
                self.pending.push_back(Pending {
                    pkid: sub.pkid,
                    filters,
                    granted: None,
                    clients: None,
                    own: None,
                    live: HashSet::new(),
                });
                Client::Forward
            }
            Some(10) => {
                if let Ok(Packet::Unsubscribe(u, _)) = V4.read_mut(&mut BytesMut::from(frame), max)
                {
                    for f in &u.filters {
                        self.subscriptions.remove(f);
                    }
                }
                Client::Forward
            }
            // PUBACK, PUBREC, PUBCOMP: the front's own ids are answered here.
            Some(kind @ (4 | 5 | 7)) => {
                let Some(&[hi, lo]) = frame.get(2..4) else { return Client::Forward };
                let id = u16::from_be_bytes([hi, lo]);
                if !self.injected.contains(&id) {
                    return Client::Forward;
                }
                match kind {
                    // PUBREC: release it (PUBREL); the PUBCOMP ends it.
                    5 => Client::Answer(vec![0x62, 0x02, hi, lo]),
                    _ => {
                        self.injected.remove(&id);
                        Client::Answer(Vec::new())
                    }
                }
            }
            _ => Client::Forward,
        }
    }

    /// A broker packet on its way to the client (they all go): notes SUBACKs (their granted
    /// filters get the hub's live messages from now on) and the topics delivered live while
    /// retained messages are owed.
    pub(super) fn broker_packet(&mut self, frame: &[u8], max: usize) {
        if self.pending.is_empty() {
            return;
        }
        match frame.first().map(|b| b >> 4) {
            Some(3) => {
                if let Some(topic) = publish_topic(frame) {
                    self.note_live(topic);
                }
            }
            Some(9) => {
                let Ok(Packet::SubAck(ack, _)) = V4.read_mut(&mut BytesMut::from(frame), max)
                else {
                    return;
                };
                let granted: Vec<Option<u8>> = ack.return_codes.iter().map(granted_qos).collect();
                let Some(p) =
                    self.pending.iter_mut().find(|p| p.pkid == ack.pkid && p.granted.is_none())
                else {
                    return;
                };
                for (f, g) in p.filters.iter().zip(&granted) {
                    // Within the bounds: the SUBSCRIBE was refused if it would not fit.
                    if g.is_some() {
                        self.subscriptions.add(f);
                    }
                }
                p.granted = Some(granted);
            }
            _ => {}
        }
    }

    /// Whether retained messages can be handed over now (call [`Self::ready`] again): false
    /// while the client has [`INJECT_WINDOW`] of them to acknowledge.
    pub(super) fn more(&self) -> bool {
        self.pending.front().is_some_and(|p| p.granted.is_some())
            && self.injected.len() < INJECT_WINDOW
    }

    /// The next PUBLISHes owed to the client, about [`PAGE_BYTES`]: the retained messages of
    /// the acknowledged SUBSCRIBEs, in order — clients' at the lower of the QoS they were
    /// published with and the highest granted to a filter they match, then the hub's own at
    /// QoS 0, the QoS they are published with ([MQTT-3.8.4-6]). Refused and shared
    /// subscriptions' filters get none.
    pub(super) fn ready(&mut self) -> BytesMut {
        let mut out = BytesMut::new();
        while out.len() < PAGE_BYTES && self.injected.len() < INJECT_WINDOW {
            let Some(p) = self.pending.front_mut() else { break };
            let Some(granted) = p.granted.as_ref() else { break };
            let filters: Vec<(String, u8)> = p
                .filters
                .iter()
                .zip(granted)
                .filter_map(|(f, g)| Some((f.clone(), (*g)?)))
                .collect();
            if p.clients.is_none() {
                let names: Vec<String> = filters.iter().map(|(f, _)| f.clone()).collect();
                p.clients = Some(self.clients.matching(&names));
                p.own = Some(self.owned.cursor(names));
            }
            let mut clients = p.clients.take().unwrap_or_default();
            while out.len() < PAGE_BYTES && self.injected.len() < INJECT_WINDOW {
                let Some((topic, qos, payload)) = clients.pop_front() else { break };
                let Some(granted) = filters
                    .iter()
                    .filter(|(f, _)| rumqttd::protocol::matches(&topic, f))
                    .map(|(_, q)| *q)
                    .max()
                else {
                    continue;
                };
                if !self.pending.front().is_some_and(|p| p.live.contains(&*topic)) {
                    self.write(&mut out, topic.to_string(), &payload, qos.min(granted));
                }
            }
            let Some(p) = self.pending.front_mut() else { break };
            let clients_left = !clients.is_empty();
            p.clients = Some(clients);
            if clients_left || out.len() >= PAGE_BYTES {
                continue; // the loop ends here: the page is full or the window closed
            }
            let page = p.own.as_mut().and_then(|c| c.next_page(PAGE_BYTES - out.len()));
            let Some(page) = page else {
                self.pending.pop_front();
                continue;
            };
            let live = std::mem::take(&mut p.live);
            for (topic, payload) in page {
                if !live.contains(&topic) {
                    self.write(&mut out, topic, &payload, 0);
                }
            }
            if let Some(p) = self.pending.front_mut() {
                p.live = live;
            }
        }
        out
    }

    /// One retained PUBLISH at `qos` (an id of the front's own above QoS 0).
    fn write(&mut self, out: &mut BytesMut, topic: String, payload: &Bytes, qos: u8) {
        let qos = match qos {
            0 => rumqttc::QoS::AtMostOnce,
            1 => rumqttc::QoS::AtLeastOnce,
            _ => rumqttc::QoS::ExactlyOnce,
        };
        let mut publish = rumqttc::Publish::from_bytes(topic, qos, payload.clone());
        publish.retain = true;
        if qos != rumqttc::QoS::AtMostOnce {
            publish.pkid = self.id();
        }
        if publish.write(out).is_ok() && publish.pkid != 0 {
            self.injected.insert(publish.pkid);
        }
    }

    /// A packet id in the front's range not awaiting an acknowledgement.
    fn id(&mut self) -> u16 {
        loop {
            self.next_id =
                if self.next_id < FIRST_ID { FIRST_ID } else { self.next_id.wrapping_add(1) };
            if self.next_id >= FIRST_ID && !self.injected.contains(&self.next_id) {
                return self.next_id;
            }
            if self.injected.len() >= usize::from(u16::MAX - FIRST_ID) {
                // Every id awaits an acknowledgement: the oldest guess is as good as any.
                self.injected.clear();
            }
        }
    }
}

/// Whether `filter` is a shared subscription's (rumqttd's `$share/<group>/<filter>`).
fn shared(filter: &str) -> bool {
    filter.starts_with("$share/")
}

/// A SUBACK refusing each of a SUBSCRIBE's `filters` (MQTT 3.1.1 §3.9.3: 0x80).
fn refused(pkid: u16, filters: usize) -> Vec<u8> {
    let codes = vec![SubscribeReasonCode::Failure; filters];
    let mut out = BytesMut::new();
    let _ = V4.write(
        Packet::SubAck(rumqttd::protocol::SubAck { pkid, return_codes: codes }, None),
        &mut out,
    );
    out.to_vec()
}

/// The QoS a SUBACK return code grants (none: refused).
fn granted_qos(code: &SubscribeReasonCode) -> Option<u8> {
    match code {
        SubscribeReasonCode::QoS0 | SubscribeReasonCode::Success(QoS::AtMostOnce) => Some(0),
        SubscribeReasonCode::QoS1 | SubscribeReasonCode::Success(QoS::AtLeastOnce) => Some(1),
        SubscribeReasonCode::QoS2 | SubscribeReasonCode::Success(QoS::ExactlyOnce) => Some(2),
        _ => None,
    }
}

/// The topic of a PUBLISH frame (after the fixed header's remaining length).
fn publish_topic(frame: &[u8]) -> Option<&str> {
    let header = 2 + frame.iter().skip(1).take(3).take_while(|b| **b & 0x80 != 0).count();
    let len = frame.get(header..header + 2)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    std::str::from_utf8(frame.get(header + 2..header + 2 + len)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{AvailabilityRules, Directory, Isolation};
    use crate::store::DeviceInfo;
    use rumqttd::protocol::{Filter, RetainForwardRule, SubAck, Subscribe};

    const RULES: AvailabilityRules =
        AvailabilityRules { default_period_ms: 60_000, missed_periods: 3 };

    fn info(n: u16) -> DeviceInfo {
        DeviceInfo {
            id: protocol::oscore::Kid::new(&n.to_be_bytes()).expect("kid").into(),
            about: protocol::pairing::Descriptor {
                model: "hearth-thermo-1".into(),
                serial: format!("SN{n}"),
                firmware_version: 1,
                updatable: false,
                verifies_signatures: false,
                capabilities: vec!["temperature".into()],
                support_end: protocol::time::UnixTime(2_000_000_000),
            },
            paired_at: 0,
        }
    }

    /// A connection's state over a directory of `devices`, and the clients' retained messages.
    fn resubscribe_over(devices: u16) -> (Resubscribe, Directory, Arc<ClientRetained>) {
        let directory = Directory::new((1..=devices).map(info).collect(), None, RULES, 0);
        let owned = Arc::new(Owned::new("homeassistant".into(), directory.clone()));
        let clients = Arc::new(ClientRetained::default());
        (Resubscribe::new(owned, clients.clone()), directory, clients)
    }

    fn write(p: Packet) -> BytesMut {
        let mut b = BytesMut::new();
        V4.write(p, &mut b).expect("write");
        b
    }

    fn subscribe(pkid: u16, paths: &[(&str, QoS)]) -> BytesMut {
        let filters = paths
            .iter()
            .map(|(p, qos)| Filter {
                path: (*p).into(),
                qos: *qos,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::OnEverySubscribe,
            })
            .collect();
        write(Packet::Subscribe(Subscribe { pkid, filters }, None))
    }

    fn suback(pkid: u16, codes: Vec<SubscribeReasonCode>) -> BytesMut {
        write(Packet::SubAck(SubAck { pkid, return_codes: codes }, None))
    }

    fn live(topic: &'static str) -> BytesMut {
        write(Packet::Publish(rumqttd::protocol::Publish::new(topic, "x", false), None))
    }

    /// The PUBLISHes in `b`: (topic, qos, retain, pkid).
    fn publishes(mut b: BytesMut) -> Vec<(String, rumqttc::QoS, bool, u16)> {
        let mut v = Vec::new();
        while !b.is_empty() {
            match rumqttc::Packet::read(&mut b, 1 << 20).expect("packet") {
                rumqttc::Packet::Publish(p) => v.push((p.topic, p.qos, p.retain, p.pkid)),
                other => panic!("{other:?}"),
            }
        }
        v
    }

    #[test]
    fn every_subscribe_gets_clients_retained_messages_after_its_suback_as_granted() {
        use SubscribeReasonCode::{Failure, Success};
        let (mut r, _, clients) = resubscribe_over(0);
        assert!(clients.keep("a/x", 2, Bytes::from("1")));
        assert!(clients.keep("b", 1, Bytes::from("2")));
        assert!(clients.keep("a/live", 1, Bytes::from("old")));
        assert!(clients.keep("c", 0, Bytes::from("refused filter")));
        assert!(clients.keep("d", 1, Bytes::from("deleted")));
        assert!(clients.keep("d", 1, Bytes::new()), "an empty one deletes");
        let sub = subscribe(
            1,
            &[("b", QoS::AtMostOnce), ("c", QoS::AtMostOnce), ("a/#", QoS::AtLeastOnce)],
        );
        assert_eq!(r.client_packet(&sub, 1024), Client::Forward);
        assert!(!r.more() && r.ready().is_empty(), "nothing before the SUBACK");
        r.broker_packet(&live("a/live"), 1024);
        r.broker_packet(
            &suback(1, vec![Success(QoS::AtMostOnce), Failure, Success(QoS::AtLeastOnce)]),
            1024,
        );
        let mut got = publishes(r.ready());
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [
                ("a/x".to_owned(), rumqttc::QoS::AtLeastOnce, true, FIRST_ID),
                ("b".to_owned(), rumqttc::QoS::AtMostOnce, true, 0),
            ],
            "the lower of published and granted; the live topic and the refused filter's left out"
        );
        assert!(r.ready().is_empty() && !r.more(), "once");
        // The client's PUBACK of the front's id is answered here; others go to the broker.
        assert_eq!(r.client_packet(&[0x40, 0x02, 0x80, 0x00], 1024), Client::Answer(vec![]));
        assert_eq!(r.client_packet(&[0x40, 0x02, 0x80, 0x00], 1024), Client::Forward, "once");
        assert_eq!(r.client_packet(&[0x40, 0x02, 0x00, 0x07], 1024), Client::Forward);
        // The same SUBSCRIBE again gets them again (MQTT 3.1.1 3.8.4-3).
        assert_eq!(
            r.client_packet(&subscribe(2, &[("b", QoS::AtMostOnce)]), 1024),
            Client::Forward
        );
        r.broker_packet(&suback(2, vec![Success(QoS::AtMostOnce)]), 1024);
        assert_eq!(publishes(r.ready()), [("b".to_owned(), rumqttc::QoS::AtMostOnce, true, 0)]);
    }

    #[test]
    fn the_hubs_live_messages_go_by_the_filters_granted_until_unsubscribed() {
        use SubscribeReasonCode::{Failure, Success};
        let (mut r, _, _) = resubscribe_over(0);
        let sub =
            subscribe(1, &[("hearth/+/state", QoS::AtLeastOnce), ("secret/#", QoS::AtMostOnce)]);
        assert_eq!(r.client_packet(&sub, 1024), Client::Forward);
        assert!(!r.hub_message("hearth/1/state"), "not before the SUBACK");
        assert!(!r.subscribed(), "the feed is not read yet");
        r.broker_packet(&suback(1, vec![Success(QoS::AtLeastOnce), Failure]), 1024);
        assert!(r.hub_message("hearth/1/state") && r.subscribed());
        assert!(!r.hub_message("secret/x"), "a refused filter gets nothing");
        assert!(!r.hub_message("hearth/1/event"));
        let mut unsubscribe = BytesMut::new();
        V4.write(
            Packet::Unsubscribe(
                rumqttd::protocol::Unsubscribe { pkid: 2, filters: vec!["hearth/+/state".into()] },
                None,
            ),
            &mut unsubscribe,
        )
        .expect("write");
        assert_eq!(r.client_packet(&unsubscribe, 1024), Client::Forward);
        assert!(!r.hub_message("hearth/1/state"), "unsubscribed");
        assert!(!r.subscribed(), "no filter left: the feed is not read");
        // Filters are bounded, counting those still waiting for their SUBACK.
        let many: Vec<String> =
            (0..super::super::live::MAX_WILDCARDS).map(|i| format!("w/{i}/#")).collect();
        let paths: Vec<(&str, QoS)> = many.iter().map(|f| (f.as_str(), QoS::AtMostOnce)).collect();
        assert_eq!(r.client_packet(&subscribe(3, &paths), 1 << 20), Client::Forward);
        let one_more = subscribe(4, &[("x/#", QoS::AtMostOnce)]);
        assert!(matches!(r.client_packet(&one_more, 1024), Client::Refuse(_)));
    }

    #[test]
    fn qos_2_is_released_by_the_front_and_waiting_subscribes_are_bounded() {
        use SubscribeReasonCode::Success;
        let (mut r, _, clients) = resubscribe_over(0);
        assert!(clients.keep("t", 2, Bytes::from("v")));
        r.client_packet(&subscribe(1, &[("t", QoS::ExactlyOnce)]), 1024);
        r.broker_packet(&suback(1, vec![Success(QoS::ExactlyOnce)]), 1024);
        let got = publishes(r.ready());
        assert_eq!(got, [("t".to_owned(), rumqttc::QoS::ExactlyOnce, true, FIRST_ID)]);
        let [hi, lo] = FIRST_ID.to_be_bytes();
        assert_eq!(
            r.client_packet(&[0x50, 0x02, hi, lo], 1024),
            Client::Answer(vec![0x62, 0x02, hi, lo])
        );
        assert_eq!(r.client_packet(&[0x70, 0x02, hi, lo], 1024), Client::Answer(vec![]));
        assert_eq!(r.client_packet(&[0x70, 0x02, hi, lo], 1024), Client::Forward);
        // A client cannot make the front hold SUBSCRIBEs without bound: one beyond the bound
        // while it reads none of what it is owed ends the connection. A SUBSCRIBE with a shared
        // subscription is refused whole by the front and never counts.
        let shared = subscribe(9, &[("t", QoS::AtMostOnce), ("$share/g/t", QoS::AtMostOnce)]);
        for pkid in 2..2 + MAX_PENDING as u16 {
            let c = r.client_packet(&subscribe(pkid, &[("t", QoS::AtMostOnce)]), 1024);
            assert_eq!(c, Client::Forward);
        }
        assert_eq!(r.client_packet(&shared, 1024), Client::Answer(vec![0x90, 4, 0, 9, 0x80, 0x80]));
        let last = subscribe(1, &[("t", QoS::AtMostOnce)]);
        assert!(matches!(r.client_packet(&last, 1024), Client::Refuse(_)));
        r.broker_packet(&suback(2, vec![Success(QoS::AtMostOnce)]), 1024);
        assert_eq!(publishes(r.ready()).len(), 1);
        assert!(!r.more(), "the next one has no SUBACK yet");
        assert_eq!(r.client_packet(&last, 1024), Client::Forward);
    }

    #[test]
    fn big_messages_and_many_acknowledgements_keep_the_pages_and_the_ids_bounded() {
        use SubscribeReasonCode::Success;
        let (mut r, _, clients) = resubscribe_over(300);
        // A client's message larger than a page, then the hub's own: the page ends after it.
        assert!(clients.keep("big", 0, Bytes::from(vec![7; PAGE_BYTES + 1000])));
        let sub = subscribe(1, &[("big", QoS::AtMostOnce), ("hearth/#", QoS::AtMostOnce)]);
        r.client_packet(&sub, 1024);
        r.broker_packet(&suback(1, vec![Success(QoS::AtMostOnce), Success(QoS::AtMostOnce)]), 1024);
        assert_eq!(publishes(r.ready()).len(), 1, "the big one alone");
        let mut own = 0;
        while r.more() {
            own += publishes(r.ready()).len();
        }
        assert_eq!(own, 300, "every device's availability after it");
        // QoS 1 retained messages beyond the window wait for the client's PUBACKs.
        for i in 0..INJECT_WINDOW + 10 {
            assert!(clients.keep(&format!("q/{i}"), 1, Bytes::from_static(b"v")));
        }
        r.client_packet(&subscribe(2, &[("q/#", QoS::AtLeastOnce)]), 1024);
        r.broker_packet(&suback(2, vec![Success(QoS::AtLeastOnce)]), 1024);
        let mut ids = Vec::new();
        while r.more() {
            ids.extend(publishes(r.ready()).into_iter().map(|p| p.3));
        }
        assert_eq!(ids.len(), INJECT_WINDOW, "the window, then a wait");
        let [hi, lo] = ids[0].to_be_bytes();
        assert_eq!(r.client_packet(&[0x40, 0x02, hi, lo], 1024), Client::Answer(vec![]));
        assert!(r.more());
        let next: Vec<u16> = publishes(r.ready()).into_iter().map(|p| p.3).collect();
        assert_eq!(next.len(), 1, "one acknowledged, one more");
        assert!(!ids.contains(&next[0]), "an id the client has not acknowledged is never reused");
    }

    #[test]
    fn clients_retained_messages_are_bounded_in_topics_and_bytes() {
        // Topic bytes count too: long topics cannot hold more than the bound.
        let long = ClientRetained::default();
        let topic = "t/".repeat(32 * 1024);
        let n =
            (0..).take_while(|i| long.keep(&format!("{topic}{i}"), 0, Bytes::from("x"))).count();
        assert!(n > 0 && n * topic.len() <= CLIENT_RETAINED_BYTES, "{n} kept");

        let budget = ClientRetained::default();
        let one = Bytes::from_static(b"0123456789");
        for i in 0..CLIENT_RETAINED_TOPICS {
            assert!(budget.keep(&format!("z2m/{i}"), 0, one.clone()));
        }
        assert!(!budget.keep("z2m/one-more", 0, one.clone()), "a topic too many");
        assert!(budget.keep("z2m/7", 0, Bytes::from(vec![1; 1000])), "an existing one may change");
        assert!(budget.keep("z2m/7", 0, Bytes::new()), "and be deleted");
        assert!(budget.keep("z2m/one-more", 0, one), "which frees a topic");
        let half = Bytes::from(vec![0; CLIENT_RETAINED_BYTES / 2 - 8]);
        assert!(!budget.fits("z2m/8", CLIENT_RETAINED_BYTES), "bytes beyond the bound");
        assert!(budget.keep("z2m/8", 0, half.clone()));
        assert!(!budget.keep("z2m/9", 0, half.clone()));
        assert!(budget.keep("z2m/8", 0, Bytes::new()) && budget.keep("z2m/9", 0, half));
    }

    /// The topics of the PUBLISHes in `b`, each checked to be retained at QoS 0.
    fn own_topics(b: BytesMut) -> Vec<String> {
        publishes(b)
            .into_iter()
            .map(|(t, qos, retain, pkid)| {
                assert_eq!((qos, retain, pkid), (rumqttc::QoS::AtMostOnce, true, 0), "{t}");
                t
            })
            .collect()
    }

    #[test]
    fn every_subscribe_gets_the_hubs_own_retained_messages_page_by_page_after_its_suback() {
        use SubscribeReasonCode::Success;
        let (mut r, directory, _) = resubscribe_over(600);
        let isolation = Isolation {
            reason: "vulnerable".into(),
            advisory: None,
            since: 0,
            replacement: "replace it".into(),
            overridden_at: None,
        };
        assert!(directory.isolate(&info(7).id, isolation, 0));
        let all =
            subscribe(1, &[("homeassistant/#", QoS::AtLeastOnce), ("hearth/#", QoS::AtMostOnce)]);
        assert_eq!(r.client_packet(&all, 1 << 20), Client::Forward);
        assert!(!r.more() && r.ready().is_empty(), "nothing before the SUBACK");
        r.broker_packet(&live("hearth/0001/availability"), 1024);
        r.broker_packet(
            &suback(1, vec![Success(QoS::AtLeastOnce), Success(QoS::AtMostOnce)]),
            1024,
        );
        let mut topics = Vec::new();
        let mut pages = 0;
        while r.more() {
            let page = r.ready();
            assert!(page.len() < PAGE_BYTES + 8 * 1024, "about PAGE_BYTES: {}", page.len());
            topics.extend(own_topics(page));
            pages += 1;
        }
        assert!(pages > 3, "{pages} pages");
        let unique: HashSet<&String> = topics.iter().collect();
        assert_eq!(unique.len(), topics.len(), "each once");
        // Every device's availability (but the one delivered live since) and its discovery
        // configs, none for the isolated device.
        let availability = topics.iter().filter(|t| t.ends_with("/availability")).count();
        assert_eq!(availability, 599);
        assert!(!topics.contains(&"hearth/0001/availability".to_owned()));
        assert!(topics.contains(&"hearth/0007/availability".to_owned()));
        let configs: HashSet<&str> = topics
            .iter()
            .filter(|t| t.ends_with("/config"))
            .filter_map(|t| t.split('/').nth(2))
            .collect();
        assert_eq!(configs.len(), 599, "every device but the isolated one");
        assert!(!configs.contains("hearth_0007"));

        // A filter naming one device gets that device's messages only.
        let one = subscribe(2, &[("hearth/0258/+", QoS::AtMostOnce)]);
        assert_eq!(r.client_packet(&one, 1024), Client::Forward);
        r.broker_packet(&suback(2, vec![Success(QoS::AtMostOnce)]), 1024);
        assert_eq!(own_topics(r.ready()), ["hearth/0258/availability"]);
        assert!(!r.more());
        // A refused filter gets nothing.
        let refused = subscribe(3, &[("hearth/#", QoS::AtMostOnce)]);
        assert_eq!(r.client_packet(&refused, 1024), Client::Forward);
        r.broker_packet(&suback(3, vec![SubscribeReasonCode::Failure]), 1024);
        assert!(own_topics(r.ready()).is_empty());
        assert!(!r.more());
    }
}
