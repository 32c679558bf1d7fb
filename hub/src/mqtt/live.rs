//! The hub's own live publications — states, events, availability, discovery configs, results —
//! handed to clients by the fronts, not by the broker: the bridge puts each on the [`Feed`] once,
//! as a whole QoS 0 PUBLISH, and every front connection writes to its client those its
//! [`Subscriptions`] match. rumqttd carries only what clients publish. A connection more than
//! [`BACKLOG`] messages behind loses the oldest (counted), as a subscriber of a broker's bounded
//! queue does: the feed's memory is bounded, whatever its slowest reader does.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{Packet, Protocol, Publish, v4::V4};
use tokio::sync::broadcast;

/// Messages a connection may be behind the newest at most.
pub(crate) const BACKLOG: usize = 4096;
/// Filters one connection may hold at most (Home Assistant subscribes to each entity's topics
/// one by one: a few per device), and of them with wildcards (each is tried on every message).
pub(super) const MAX_FILTERS: usize = 100_000;
pub(super) const MAX_WILDCARDS: usize = 1024;

/// One live publication of the hub's.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    /// The whole PUBLISH (QoS 0, not retained).
    pub frame: Bytes,
    /// Where its topic is in `frame`.
    topic: std::ops::Range<usize>,
}

impl Message {
    pub(crate) fn topic(&self) -> &str {
        std::str::from_utf8(&self.frame[self.topic.clone()]).unwrap_or_default()
    }
}

/// Where the bridge publishes and the fronts' connections read.
#[derive(Debug, Clone)]
pub(crate) struct Feed {
    tx: broadcast::Sender<Message>,
    /// Messages connections lost for being more than [`BACKLOG`] behind.
    lost: Arc<AtomicU64>,
}

impl Default for Feed {
    fn default() -> Self {
        Self { tx: broadcast::Sender::new(BACKLOG), lost: Arc::default() }
    }
}

impl Feed {
    /// Publishes `payload` on `topic` to every connection subscribed (none: it goes nowhere).
    pub(crate) fn publish(&self, topic: String, payload: Vec<u8>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let (topic_len, payload_len) = (topic.len(), payload.len());
        let publish = Publish::new(Bytes::from(topic), Bytes::from(payload), false);
        let mut frame = BytesMut::with_capacity(topic_len + payload_len + 8);
        if V4.write(Packet::Publish(publish, None), &mut frame).is_err() {
            return; // over MQTT's own limits (a topic over 64 KiB): never made by the hub
        }
        let end = frame.len() - payload_len;
        let message = Message { frame: frame.freeze(), topic: end - topic_len..end };
        let _ = self.tx.send(message);
    }

    /// A new connection's view: messages published from now on.
    pub(crate) fn reader(&self) -> Reader {
        Reader { rx: self.tx.subscribe(), lost: self.lost.clone() }
    }

    /// Messages connections lost for being too far behind, since start.
    pub(crate) fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// One connection's place in the feed.
#[derive(Debug)]
pub(crate) struct Reader {
    rx: broadcast::Receiver<Message>,
    lost: Arc<AtomicU64>,
}

impl Reader {
    /// The next message; none once the feed is gone (the hub is stopping).
    pub(crate) async fn next(&mut self) -> Option<Message> {
        loop {
            match self.rx.recv().await {
                Ok(m) => return Some(m),
                Err(broadcast::error::RecvError::Lagged(n)) => self.count_lost(n),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Skips whatever was published before now (a connection that starts reading again).
    pub(crate) fn skip_to_now(&mut self) {
        self.rx = self.rx.resubscribe();
    }

    /// The next message if one is waiting.
    pub(crate) fn try_next(&mut self) -> Option<Message> {
        loop {
            match self.rx.try_recv() {
                Ok(m) => return Some(m),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.count_lost(n),
                Err(_) => return None,
            }
        }
    }

    fn count_lost(&self, n: u64) {
        let before = self.lost.fetch_add(n, Ordering::Relaxed);
        // Logged when the count reaches a new power of two.
        if before.checked_ilog2() != Some((before + n).ilog2()) {
            tracing::warn!(
                lost = before + n,
                "MQTT: a client fell more than {BACKLOG} of the hub's messages behind and lost \
                 the oldest"
            );
        }
    }
}

/// The filters one connection's client holds (granted by a SUBACK, until it unsubscribes):
/// exact topics looked up, wildcard filters tried one by one.
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    exact: HashSet<String>,
    wildcards: Vec<String>,
}

impl Subscriptions {
    /// Whether `filters` would fit beside those held (the ones held already count once).
    pub(super) fn room_for<'a>(&self, filters: impl IntoIterator<Item = &'a str>) -> bool {
        let (mut more, mut wildcards) = (0, 0);
        let mut seen = HashSet::new();
        for f in filters {
            if !seen.insert(f) || self.holds(f) {
                continue;
            }
            more += 1;
            wildcards += usize::from(has_wildcard(f));
        }
        self.fits(more, wildcards)
    }

    fn fits(&self, more: usize, wildcards: usize) -> bool {
        self.exact.len() + self.wildcards.len() + more <= MAX_FILTERS
            && self.wildcards.len() + wildcards <= MAX_WILDCARDS
    }

    fn holds(&self, filter: &str) -> bool {
        if has_wildcard(filter) {
            self.wildcards.iter().any(|f| f == filter)
        } else {
            self.exact.contains(filter)
        }
    }

    /// Adds a granted filter (false if it would go beyond the bounds).
    pub(super) fn add(&mut self, filter: &str) -> bool {
        if self.holds(filter) {
            return true;
        }
        let wildcard = has_wildcard(filter);
        if !self.fits(1, usize::from(wildcard)) {
            return false;
        }
        if wildcard {
            self.wildcards.push(filter.to_owned());
        } else {
            self.exact.insert(filter.to_owned());
        }
        true
    }

    pub(super) fn remove(&mut self, filter: &str) {
        if has_wildcard(filter) {
            self.wildcards.retain(|f| f != filter);
        } else {
            self.exact.remove(filter);
        }
    }

    /// Whether it holds any filter.
    pub(super) fn any(&self) -> bool {
        !self.exact.is_empty() || !self.wildcards.is_empty()
    }

    /// Whether any filter matches `topic`.
    pub(super) fn matches(&self, topic: &str) -> bool {
        self.exact.contains(topic)
            || self.wildcards.iter().any(|f| rumqttd::protocol::matches(topic, f))
    }
}

/// Whether an MQTT filter has a wildcard.
pub(super) fn has_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_a_whole_qos_0_publish_and_knows_its_topic() {
        let feed = Feed::default();
        let mut r = feed.reader();
        feed.publish("hearth/00ab/state".into(), br#"{"t":1}"#.to_vec());
        let m = r.try_next().expect("published");
        assert_eq!(m.topic(), "hearth/00ab/state");
        let mut b = BytesMut::from(&m.frame[..]);
        match rumqttc::Packet::read(&mut b, 1 << 20).expect("a PUBLISH") {
            rumqttc::Packet::Publish(p) => {
                assert_eq!(p.topic, "hearth/00ab/state");
                assert_eq!(
                    (p.qos, p.retain, &p.payload[..]),
                    (rumqttc::QoS::AtMostOnce, false, &br#"{"t":1}"#[..])
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(b.is_empty());
        // A long payload (multi-byte remaining length) too.
        feed.publish("t".into(), vec![7; 300]);
        assert_eq!(r.try_next().expect("published").topic(), "t");
    }

    #[test]
    fn a_reader_too_far_behind_loses_the_oldest_and_they_are_counted() {
        let feed = Feed::default();
        let mut slow = feed.reader();
        for i in 0..BACKLOG + 10 {
            feed.publish(format!("t/{i}"), Vec::new());
        }
        assert_eq!(slow.try_next().expect("the oldest kept").topic(), "t/10");
        assert_eq!(feed.lost(), 10);
        let kept = std::iter::from_fn(|| slow.try_next()).count();
        assert_eq!(kept, BACKLOG - 1);
        // A reader that skips to now gets only what comes after.
        feed.publish("t/old".into(), Vec::new());
        slow.skip_to_now();
        feed.publish("t/new".into(), Vec::new());
        assert_eq!(slow.try_next().expect("published after").topic(), "t/new");
        assert!(slow.try_next().is_none());
    }

    #[test]
    fn subscriptions_match_exact_and_wildcard_filters_and_are_bounded() {
        let mut s = Subscriptions::default();
        assert!(!s.matches("hearth/1/state") && !s.any());
        assert!(s.add("hearth/1/state") && s.add("homeassistant/#") && s.add("hearth/+/event"));
        assert!(s.matches("hearth/1/state") && s.any());
        assert!(!s.matches("hearth/2/state"));
        assert!(s.matches("homeassistant/sensor/x/config"));
        assert!(s.matches("hearth/9/event"));
        s.remove("homeassistant/#");
        assert!(!s.matches("homeassistant/sensor/x/config"));
        s.remove("hearth/1/state");
        assert!(!s.matches("hearth/1/state"));
        assert!(s.add("hearth/+/event"), "again: no duplicate");
        s.remove("hearth/+/event");
        assert!(!s.matches("hearth/9/event"), "one removal undoes it");
        for i in 0..MAX_WILDCARDS {
            assert!(s.add(&format!("w/{i}/#")));
        }
        assert!(!s.add("w/one-more/#"), "wildcards are bounded");
        assert!(s.room_for(["w/0/#", "w/1/#"]), "held ones count once");
        assert!(!s.room_for(["w/0/#", "w/new/#"]));
        assert!(s.add("exact/ones/still/fit"));
        let exact: Vec<String> =
            (0..MAX_FILTERS - MAX_WILDCARDS).map(|i| format!("e/{i}")).collect();
        assert!(s.room_for(exact[1..].iter().map(String::as_str)));
        assert!(!s.room_for(exact.iter().map(String::as_str)));
    }
}
