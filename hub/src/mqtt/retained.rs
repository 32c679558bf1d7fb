//! Retained messages on SUBSCRIBE. The hub's own ([`super::owned`]: status, discovery, each
//! device's availability, state and update state) are made for every SUBSCRIBE from the device
//! directory and handed to the client after the SUBACK, a page at a time as the client reads
//! them, at QoS 0 — the QoS they were published with ([MQTT-3.8.4-6]). Clients' own retained
//! messages the broker hands over on a first SUBSCRIBE; on a repeated one (MQTT 3.1.1
//! [MQTT-3.8.4-3]), which rumqttd 0.20 answers with nothing, the front forwards the SUBSCRIBE
//! unchanged (the client's subscription never lapses, so no live publication is lost), fetches
//! the filters' retained messages over a short internal connection of its own, and hands them
//! over after the SUBACK too.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{
    Connect, Filter, Login, Packet, Protocol, QoS, RetainForwardRule, Subscribe,
    SubscribeReasonCode, v4::V4,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::owned::{Cursor, Owned};

/// How long a fetch may take before the client gets no retained messages for that SUBSCRIBE.
const FETCH_WITHIN: Duration = Duration::from_secs(5);
/// SUBSCRIBEs of one connection whose retained messages are not yet handed over at most: the
/// front reads no further SUBSCRIBE from the client until one is done (a client cannot make
/// the front hold cursors, or open broker connections, without bound).
const MAX_PENDING: usize = 16;
/// Bytes of retained messages made at a time (then the front writes them to the client and
/// makes more once the client has taken them).
const PAGE_BYTES: usize = 64 * 1024;
/// Packet ids of the PUBLISHes the front adds: rumqttd numbers its own from 1 to 100, so the
/// upper half of the id space never meets them.
const FIRST_ID: u16 = 0x8000;

/// A retained message fetched for a client: topic and payload.
pub(super) type Message = (String, Bytes);

/// One client connection's subscriptions and the retained messages owed to it.
#[derive(Debug)]
pub(super) struct Resubscribe {
    owned: Arc<Owned>,
    /// The connection's filters (as subscribed).
    filters: HashSet<String>,
    /// SUBSCRIBEs whose retained messages are not yet all handed over, in order.
    pending: VecDeque<Pending>,
    /// Numbers the pending fetches.
    next_fetch: u64,
    /// Ids of the QoS 1 and 2 PUBLISHes the front added, until the client acknowledged them.
    injected: HashSet<u16>,
    next_id: u16,
}

#[derive(Debug)]
struct Pending {
    /// The broker fetch of the filters it repeats, if any.
    fetch: Option<u64>,
    /// The SUBSCRIBE's packet id.
    pkid: u16,
    /// Every filter of the SUBSCRIBE, in order, and whether it repeats an existing one.
    filters: Vec<(String, bool)>,
    /// The QoS granted per filter (from the SUBACK; none: refused).
    granted: Option<Vec<Option<u8>>>,
    /// Clients' retained messages of the repeated filters (none until fetched).
    fetched: Option<Vec<Message>>,
    /// The hub's own retained messages still to hand over (made once acknowledged and fetched).
    own: Option<Cursor>,
    /// Topics the client received live since the SUBSCRIBE: their retained message would be
    /// older than what the client has, so it is not handed over.
    live: HashSet<String>,
}

impl Pending {
    fn ready(&self) -> bool {
        self.granted.is_some() && self.fetched.is_some()
    }
}

/// What to do with one client packet.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Client {
    /// Forward it to the broker.
    Forward,
    /// Forward it, and fetch the retained messages of these filters (fetch number, filters).
    ForwardAndFetch(u64, Vec<String>),
    /// An acknowledgement of a PUBLISH the front added: not the broker's; answer the client
    /// with these bytes (may be empty).
    Answer(Vec<u8>),
    /// A SUBSCRIBE while [`MAX_PENDING`] others wait for their retained messages: offer it
    /// again once one is done.
    Wait,
}

impl Resubscribe {
    pub(super) fn new(owned: Arc<Owned>) -> Self {
        Self {
            owned,
            filters: HashSet::new(),
            pending: VecDeque::new(),
            next_fetch: 0,
            injected: HashSet::new(),
            next_id: 0,
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
                if self.pending.len() >= MAX_PENDING {
                    return Client::Wait;
                }
                let filters: Vec<(String, bool)> = sub
                    .filters
                    .into_iter()
                    .map(|f| {
                        let again = self.filters.contains(&f.path) && !shared(&f.path);
                        (f.path, again)
                    })
                    .collect();
                if filters.iter().all(|(f, _)| shared(f)) {
                    return Client::Forward;
                }
                self.filters.extend(filters.iter().map(|(f, _)| f.clone()));
                let again: Vec<String> =
                    filters.iter().filter(|(_, again)| *again).map(|(f, _)| f.clone()).collect();
                let fetch = (!again.is_empty()).then(|| {
                    self.next_fetch += 1;
                    self.next_fetch
                });
                self.pending.push_back(Pending {
                    fetch,
                    pkid: sub.pkid,
                    filters,
                    granted: None,
                    fetched: if fetch.is_some() { None } else { Some(Vec::new()) },
                    own: None,
                    live: HashSet::new(),
                });
                match fetch {
                    Some(fetch) => Client::ForwardAndFetch(fetch, again),
                    None => Client::Forward,
                }
            }
            Some(10) => {
                if let Ok(Packet::Unsubscribe(unsub, _)) =
                    V4.read_mut(&mut BytesMut::from(frame), max)
                {
                    for f in &unsub.filters {
                        self.filters.remove(f);
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

    /// A broker packet on its way to the client (they all go): notes SUBACKs and the topics
    /// delivered live while retained messages are owed.
    pub(super) fn broker_packet(&mut self, frame: &[u8], max: usize) {
        if self.pending.is_empty() {
            return;
        }
        match frame.first().map(|b| b >> 4) {
            Some(3) => {
                if let Some(topic) = publish_topic(frame) {
                    for p in &mut self.pending {
                        p.live.insert(topic.to_owned());
                    }
                }
            }
            Some(9) => {
                let Ok(Packet::SubAck(ack, _)) = V4.read_mut(&mut BytesMut::from(frame), max)
                else {
                    return;
                };
                let granted = ack.return_codes.iter().map(granted_qos).collect();
                if let Some(p) =
                    self.pending.iter_mut().find(|p| p.pkid == ack.pkid && p.granted.is_none())
                {
                    p.granted = Some(granted);
                }
            }
            _ => {}
        }
    }

    /// The retained messages of fetch `fetch` (none: it failed, the client gets none of the
    /// clients' retained messages for it; the hub's own still follow).
    pub(super) fn fetched(&mut self, fetch: u64, messages: Option<Vec<Message>>) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.fetch == Some(fetch)) {
            p.fetched = Some(messages.unwrap_or_default());
        }
    }

    /// Whether retained messages can be handed over now (call [`Self::ready`] again).
    pub(super) fn more(&self) -> bool {
        self.pending.front().is_some_and(Pending::ready)
    }

    /// The next PUBLISHes owed to the client, about [`PAGE_BYTES`]: the retained messages of
    /// the SUBSCRIBEs that are acknowledged and fetched, in order — clients' messages of the
    /// repeated filters at the highest QoS granted to one they match, then the hub's own of
    /// every granted filter at QoS 0.
    pub(super) fn ready(&mut self) -> BytesMut {
        let mut out = BytesMut::new();
        while out.len() < PAGE_BYTES {
            let Some(p) = self.pending.front_mut().filter(|p| p.ready()) else { break };
            let granted = p.granted.clone().unwrap_or_default();
            if let Some(fetched) = p.fetched.as_mut().filter(|f| !f.is_empty()) {
                let fetched = std::mem::take(fetched);
                let again: Vec<(String, u8)> = p
                    .filters
                    .iter()
                    .zip(&granted)
                    .filter_map(|((f, again), g)| Some((f.clone(), g.filter(|_| *again)?)))
                    .collect();
                let live = p.live.clone();
                for (topic, payload) in fetched {
                    if live.contains(&topic) {
                        continue;
                    }
                    let Some(qos) = again
                        .iter()
                        .filter(|(f, _)| rumqttd::protocol::matches(&topic, f))
                        .map(|(_, q)| *q)
                        .max()
                    else {
                        continue;
                    };
                    self.write(&mut out, topic, &payload, qos);
                }
                continue;
            }
            let Some(p) = self.pending.front_mut() else { break };
            if p.own.is_none() {
                let filters = p
                    .filters
                    .iter()
                    .zip(&granted)
                    .filter(|((f, _), g)| g.is_some() && !shared(f))
                    .map(|((f, _), _)| f.clone())
                    .collect();
                p.own = Some(self.owned.cursor(filters));
            }
            let page = p.own.as_mut().and_then(|c| c.next_page(PAGE_BYTES - out.len()));
            let Some(page) = page else {
                self.pending.pop_front();
                continue;
            };
            for (topic, payload) in page {
                if !p.live.contains(&topic) {
                    let mut publish =
                        rumqttc::Publish::new(topic, rumqttc::QoS::AtMostOnce, payload);
                    publish.retain = true;
                    let _ = publish.write(&mut out);
                }
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
        let mut publish = rumqttc::Publish::new(topic, qos, payload.to_vec());
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

/// Whether `filter` is a shared subscription's (those get no retained messages).
fn shared(filter: &str) -> bool {
    filter.starts_with("$share/")
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

/// The retained messages of `filters` now, fetched over an internal connection to the broker
/// at `upstream` as `client_id` of `user` with a one-time `ticket` (the front's): it subscribes
/// at QoS 0, and once
/// the SUBACK is in, a PINGREQ: rumqttd queues a new subscription's retained messages in the
/// same pass as its SUBACK, before it handles the PINGREQ, so the PINGRESP ends them. None if
/// the broker did not answer in time.
pub(super) async fn fetch(
    upstream: SocketAddr,
    (client_id, user, ticket): (String, String, String),
    filters: Vec<String>,
    max_packet: usize,
) -> Option<Vec<Message>> {
    let mut stream =
        tokio::time::timeout(FETCH_WITHIN, TcpStream::connect(upstream)).await.ok()?.ok()?;
    let _ = stream.set_nodelay(true);
    let result = tokio::time::timeout(
        FETCH_WITHIN,
        exchange(&mut stream, client_id, &user, ticket, filters, max_packet),
    )
    .await
    .ok()
    .flatten();
    // DISCONNECT, then let the broker close the connection (closing first would make rumqttd
    // handle the disconnection twice).
    if stream.write_all(&[0xE0, 0x00]).await.is_ok() {
        let mut rest = [0u8; 256];
        let drain = async { while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
    result
}

async fn exchange(
    stream: &mut TcpStream,
    client_id: String,
    user: &str,
    ticket: String,
    filters: Vec<String>,
    max_packet: usize,
) -> Option<Vec<Message>> {
    let mut out = BytesMut::new();
    let connect = Connect { keep_alive: 10, client_id, clean_session: true };
    let login = Login { username: user.to_owned(), password: ticket };
    V4.write(Packet::Connect(connect, None, None, None, Some(login)), &mut out).ok()?;
    let filters = filters
        .into_iter()
        .map(|path| Filter {
            path,
            qos: QoS::AtMostOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
        })
        .collect();
    V4.write(Packet::Subscribe(Subscribe { pkid: 1, filters }, None), &mut out).ok()?;
    stream.write_all(&out).await.ok()?;
    // The broker's packets carry what clients published, within the same limit.
    let max = max_packet.saturating_add(64 * 1024);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut by_topic: HashMap<String, Bytes> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    loop {
        let packet = match V4.read_mut(&mut buf, max) {
            Ok(p) => p,
            Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {
                if stream.read_buf(&mut buf).await.ok()? == 0 {
                    return None;
                }
                continue;
            }
            Err(_) => return None,
        };
        match packet {
            Packet::ConnAck(ack, _)
                if ack.code != rumqttd::protocol::ConnectReturnCode::Success =>
            {
                return None;
            }
            Packet::SubAck(..) => stream.write_all(&[0xC0, 0x00]).await.ok()?,
            // Overlapping filters bring a message once per filter: once is enough.
            Packet::Publish(p, _) if p.retain => {
                let topic = String::from_utf8(p.topic.to_vec()).ok()?;
                if by_topic.insert(topic.clone(), p.payload).is_none() {
                    order.push(topic);
                }
            }
            Packet::PingResp(_) => {
                return Some(
                    order
                        .into_iter()
                        .filter_map(|t| {
                            let payload = by_topic.remove(&t)?;
                            Some((t, payload))
                        })
                        .collect(),
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{AvailabilityRules, Directory, Isolation};
    use crate::store::DeviceInfo;
    use rumqttd::protocol::{SubAck, Unsubscribe};

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

    /// A connection's state over a directory of `devices`.
    fn resubscribe_over(devices: u16) -> (Resubscribe, Directory) {
        let directory = Directory::new((1..=devices).map(info).collect(), None, RULES, 0);
        let owned = Arc::new(Owned::new("homeassistant".into(), directory.clone()));
        (Resubscribe::new(owned), directory)
    }

    fn resubscribe() -> Resubscribe {
        resubscribe_over(0).0
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
    fn a_repeated_subscribe_is_forwarded_and_its_retained_messages_follow_the_suback() {
        use SubscribeReasonCode::{Failure, Success};
        let mut r = resubscribe();
        let new = subscribe(1, &[("a/#", QoS::AtLeastOnce), ("b", QoS::AtMostOnce)]);
        assert_eq!(r.client_packet(&new, 1024), Client::Forward, "new filters");
        r.broker_packet(
            &suback(1, vec![Success(QoS::AtLeastOnce), Success(QoS::AtMostOnce)]),
            1024,
        );
        assert!(r.ready().is_empty());
        // Again, with a new filter and one the broker will refuse.
        let again = subscribe(
            2,
            &[("b", QoS::AtMostOnce), ("c", QoS::AtMostOnce), ("a/#", QoS::AtLeastOnce)],
        );
        let Client::ForwardAndFetch(fetch, filters) = r.client_packet(&again, 1024) else {
            panic!("a repeat is fetched")
        };
        assert_eq!(filters, ["b", "a/#"]);
        let fetched = vec![
            ("a/x".to_owned(), Bytes::from("1")),
            ("b".to_owned(), Bytes::from("2")),
            ("a/live".to_owned(), Bytes::from("old")),
            ("c".to_owned(), Bytes::from("not repeated")),
        ];
        r.fetched(fetch, Some(fetched));
        assert!(r.ready().is_empty(), "nothing before the SUBACK");
        r.broker_packet(&live("a/live"), 1024);
        r.broker_packet(
            &suback(2, vec![Success(QoS::AtMostOnce), Failure, Success(QoS::AtLeastOnce)]),
            1024,
        );
        let got = publishes(r.ready());
        assert_eq!(
            got,
            [
                ("a/x".to_owned(), rumqttc::QoS::AtLeastOnce, true, FIRST_ID),
                ("b".to_owned(), rumqttc::QoS::AtMostOnce, true, 0),
            ],
            "as granted; the live topic and the new filter's topic are left out"
        );
        assert!(r.ready().is_empty(), "once");
        // The client's PUBACK of the front's id is answered here; others go to the broker.
        assert_eq!(r.client_packet(&[0x40, 0x02, 0x80, 0x00], 1024), Client::Answer(vec![]));
        assert_eq!(r.client_packet(&[0x40, 0x02, 0x80, 0x00], 1024), Client::Forward, "once");
        assert_eq!(r.client_packet(&[0x40, 0x02, 0x00, 0x07], 1024), Client::Forward);
    }

    #[test]
    fn qos_2_is_released_by_the_front_and_failed_fetches_and_unsubscribes_are_forgotten() {
        use SubscribeReasonCode::Success;
        let mut r = resubscribe();
        r.client_packet(&subscribe(1, &[("t", QoS::ExactlyOnce)]), 1024);
        r.broker_packet(&suback(1, vec![Success(QoS::ExactlyOnce)]), 1024);
        assert!(r.ready().is_empty());
        let Client::ForwardAndFetch(first, _) =
            r.client_packet(&subscribe(2, &[("t", QoS::ExactlyOnce)]), 1024)
        else {
            panic!("repeat")
        };
        r.fetched(first, None);
        r.broker_packet(&suback(2, vec![Success(QoS::ExactlyOnce)]), 1024);
        assert!(r.ready().is_empty(), "a failed fetch hands nothing over");
        let Client::ForwardAndFetch(second, _) =
            r.client_packet(&subscribe(2, &[("t", QoS::ExactlyOnce)]), 1024)
        else {
            panic!("repeat")
        };
        r.broker_packet(&suback(2, vec![Success(QoS::ExactlyOnce)]), 1024);
        r.fetched(second, Some(vec![("t".into(), Bytes::from("v"))]));
        let got = publishes(r.ready());
        assert_eq!(got, [("t".to_owned(), rumqttc::QoS::ExactlyOnce, true, FIRST_ID)]);
        let [hi, lo] = FIRST_ID.to_be_bytes();
        assert_eq!(
            r.client_packet(&[0x50, 0x02, hi, lo], 1024),
            Client::Answer(vec![0x62, 0x02, hi, lo])
        );
        assert_eq!(r.client_packet(&[0x70, 0x02, hi, lo], 1024), Client::Answer(vec![]));
        assert_eq!(r.client_packet(&[0x70, 0x02, hi, lo], 1024), Client::Forward);
        // After an UNSUBSCRIBE, subscribing again is new.
        let unsub =
            write(Packet::Unsubscribe(Unsubscribe { pkid: 3, filters: vec!["t".into()] }, None));
        assert_eq!(r.client_packet(&unsub, 1024), Client::Forward);
        assert_eq!(
            r.client_packet(&subscribe(4, &[("t", QoS::AtMostOnce)]), 1024),
            Client::Forward
        );
        // A client cannot make the front fetch or hold cursors without bound: its next
        // SUBSCRIBE waits until one is handed over.
        for pkid in 5..4 + MAX_PENDING as u16 {
            let c = r.client_packet(&subscribe(pkid, &[("t", QoS::AtMostOnce)]), 1024);
            assert!(matches!(c, Client::ForwardAndFetch(..)));
        }
        let last = subscribe(99, &[("t", QoS::AtMostOnce)]);
        assert_eq!(r.client_packet(&last, 1024), Client::Wait);
        r.broker_packet(&suback(4, vec![Success(QoS::AtMostOnce)]), 1024);
        assert!(r.ready().is_empty() && !r.more());
        assert!(matches!(r.client_packet(&last, 1024), Client::ForwardAndFetch(..)));
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
        let (mut r, directory) = resubscribe_over(600);
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
            assert!(
                page.len() < PAGE_BYTES + 8 * 1024,
                "a page is about PAGE_BYTES: {}",
                page.len()
            );
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
        let Client::ForwardAndFetch(fetch, _) = r.client_packet(&refused, 1024) else {
            panic!("a repeat is fetched")
        };
        r.fetched(fetch, None);
        r.broker_packet(&suback(3, vec![SubscribeReasonCode::Failure]), 1024);
        assert!(own_topics(r.ready()).is_empty());
        assert!(!r.more());
    }
}
