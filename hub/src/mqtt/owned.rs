//! The retained messages the hub owns — its status, overview and discovery configs, and each
//! device's availability, discovery configs, state and update state — made when a client
//! subscribes, from the device directory, instead of kept in the broker. rumqttd's retained map
//! held a copy of every one (about 5 KiB per device) and handed a new subscriber no more of
//! them than its in-flight window (100 at QoS 1, 1,024 at QoS 0): a Home Assistant subscribing
//! to 2,000 devices' discovery missed most of them. The bridge publishes them live, not
//! retained, and records here the few it alone knows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::{discovery, topics};
use crate::device_id::DeviceId;
use crate::devices::{Availability, DeviceSnapshot, Directory};

/// A retained message: topic and payload.
pub(crate) type Message = (String, Bytes);
/// What visiting one device costs a page, bytes, whether or not a message of it matches: a
/// filter that matches little still walks the directory a page at a time.
const PER_DEVICE: usize = 256;

/// The hub's own retained messages (shared by the bridge, which records, and the fronts, which
/// hand them to subscribers).
#[derive(Debug)]
pub(crate) struct Owned {
    prefix: String,
    directory: Directory,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The hub's own topics (status, overview, its discovery configs).
    hub: BTreeMap<String, Bytes>,
    /// Each updatable device's `update` entity state.
    updates: HashMap<DeviceId, Bytes>,
    /// Each updatable device's installed firmware as the update manager knows it (the directory
    /// keeps the version it paired with): its discovery configs' `sw_version`.
    firmware: HashMap<DeviceId, u32>,
}

impl Owned {
    pub(crate) fn new(prefix: String, directory: Directory) -> Self {
        Self { prefix, directory, inner: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets a hub topic's retained message (an empty payload removes it).
    pub(crate) fn set_hub(&self, topic: &str, payload: &[u8]) {
        let mut inner = self.lock();
        if payload.is_empty() {
            inner.hub.remove(topic);
        } else {
            inner.hub.insert(topic.to_owned(), Bytes::copy_from_slice(payload));
        }
    }

    /// Sets a device's update state; whether it changed.
    pub(crate) fn set_update(&self, id: DeviceId, state: &[u8]) -> bool {
        let mut inner = self.lock();
        if inner.updates.get(&id).is_some_and(|s| s[..] == *state) {
            return false;
        }
        inner.updates.insert(id, Bytes::copy_from_slice(state));
        true
    }

    /// Removes a device's update state; whether there was one.
    pub(crate) fn remove_update(&self, id: &DeviceId) -> bool {
        self.lock().updates.remove(id).is_some()
    }

    /// The installed firmware the update manager reported for `id`.
    pub(crate) fn firmware(&self, id: &DeviceId) -> Option<u32> {
        self.lock().firmware.get(id).copied()
    }

    /// Records the installed firmware of `id`; the one recorded before.
    pub(crate) fn set_firmware(&self, id: DeviceId, version: u32) -> Option<u32> {
        self.lock().firmware.insert(id, version)
    }

    /// Forgets a removed device.
    pub(crate) fn forget(&self, id: &DeviceId) {
        let mut inner = self.lock();
        inner.firmware.remove(id);
        inner.updates.remove(id);
    }

    /// `d` with the firmware the update manager says is installed.
    pub(crate) fn installed_now(&self, d: &DeviceSnapshot) -> DeviceSnapshot {
        let mut d = d.clone();
        if let Some(v) = self.firmware(&d.info.id) {
            d.info.about.firmware_version = v;
        }
        d
    }

    /// The retained messages of `d` (its discovery configs only if `configs`).
    fn device(&self, d: &DeviceSnapshot, configs: bool) -> Vec<Message> {
        let id = d.info.id;
        let mut out = vec![(
            topics::availability(&id),
            Bytes::from_static(d.availability.as_str().as_bytes()),
        )];
        if d.availability == Availability::Isolated {
            return out; // its data and configs do not leave the hub (TR 103 621 6.23)
        }
        if configs {
            for c in discovery::configs(&self.prefix, &self.installed_now(d)) {
                out.push((c.topic, Bytes::from(c.payload.to_string())));
            }
        }
        if let Some(s) = topics::current_state(&d.into(), d.state.values()) {
            out.push((topics::state(&id), Bytes::from(s.payload)));
        }
        if let Some(u) = self.lock().updates.get(&id) {
            out.push((topics::update(&id), u.clone()));
        }
        out
    }

    /// The retained messages matching `filters`, page by page.
    pub(crate) fn cursor(self: &Arc<Self>, filters: Vec<String>) -> Cursor {
        let hub: Vec<Message> = self
            .lock()
            .hub
            .iter()
            .filter(|(t, _)| filters.iter().any(|f| rumqttd::protocol::matches(t, f)))
            .map(|(t, p)| (t.clone(), p.clone()))
            .collect();
        let devices = match named_devices(&filters, &self.prefix) {
            Some(ids) => ids.into_iter().collect(),
            None => self.directory.ids(),
        };
        let configs = filters.iter().any(|f| may_match_under(f, &self.prefix));
        Cursor { owned: self.clone(), filters, hub, devices: devices.into_iter(), configs }
    }
}

/// The devices `filters` can match, if every filter names the devices it may match
/// (`hearth/<id>/…`, `<prefix>/<component>/hearth_<id>/…`); none if one may match any device.
fn named_devices(filters: &[String], prefix: &str) -> Option<HashSet<DeviceId>> {
    let node_level = prefix.split('/').count() + 1;
    let mut ids = HashSet::new();
    for f in filters {
        let levels: Vec<&str> = f.split('/').collect();
        for (root, at, node_prefix) in [(topics::ROOT, 1, ""), (prefix, node_level, "hearth_")] {
            if !may_match_under(f, root) {
                continue;
            }
            if levels.iter().take(at + 1).any(|l| *l == "#") || levels.get(at) == Some(&"+") {
                return None;
            }
            let named = levels.get(at).and_then(|l| l.strip_prefix(node_prefix));
            ids.extend(named.and_then(|n| n.parse::<DeviceId>().ok()));
        }
    }
    Some(ids)
}

/// Whether `filter` may match a topic under `root` (`root/…`).
fn may_match_under(filter: &str, root: &str) -> bool {
    let mut levels = filter.split('/');
    for r in root.split('/') {
        match levels.next() {
            Some("#") => return true,
            Some(l) if l == "+" || l == r => {}
            _ => return false,
        }
    }
    levels.next().is_some()
}

/// The retained messages of a subscription, made a few devices at a time.
#[derive(Debug)]
pub(crate) struct Cursor {
    owned: Arc<Owned>,
    filters: Vec<String>,
    hub: Vec<Message>,
    devices: std::vec::IntoIter<DeviceId>,
    configs: bool,
}

impl Cursor {
    /// The next messages, about `budget` bytes (at least one device's); none when done.
    pub(crate) fn next_page(&mut self, budget: usize) -> Option<Vec<Message>> {
        let mut page = std::mem::take(&mut self.hub);
        let mut bytes: usize = page.iter().map(|(t, p)| t.len() + p.len()).sum();
        let mut any = !page.is_empty();
        while bytes < budget {
            let Some(id) = self.devices.next() else { break };
            any = true;
            bytes += PER_DEVICE;
            let Some(d) = self.owned.directory.get(&id) else { continue };
            for m in self.owned.device(&d, self.configs) {
                if self.filters.iter().any(|f| rumqttd::protocol::matches(&m.0, f)) {
                    bytes += m.0.len() + m.1.len();
                    page.push(m);
                }
            }
        }
        any.then_some(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        s.parse().unwrap()
    }

    fn named(filters: &[&str]) -> Option<HashSet<DeviceId>> {
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        named_devices(&filters, "homeassistant")
    }

    #[test]
    fn a_filter_naming_a_device_reads_only_that_device() {
        assert_eq!(named(&["hearth/0a0b/state"]), Some(HashSet::from([id("0a0b")])));
        assert_eq!(
            named(&["hearth/0a0b/+", "homeassistant/sensor/hearth_0c/temperature/config"]),
            Some(HashSet::from([id("0a0b"), id("0c")]))
        );
        assert_eq!(named(&["homeassistant/+/hearth_0c/#"]), Some(HashSet::from([id("0c")])));
        // The hub's own topics and others name no device.
        assert_eq!(named(&["hearth/hub/status", "other/topic"]), Some(HashSet::new()));
    }

    #[test]
    fn a_wildcard_where_the_device_is_named_reads_every_device() {
        for f in [
            "#",
            "+/#",
            "+/+/state",
            "hearth/#",
            "hearth/+/state",
            "homeassistant/#",
            "homeassistant/+/#",
            "homeassistant/sensor/+/temperature/config",
        ] {
            assert_eq!(named(&[f]), None, "{f}");
        }
        // A `+` where the root is still names the device for either root.
        assert_eq!(named(&["+/0a0b/state"]), Some(HashSet::from([id("0a0b")])));
        assert_eq!(named(&["+/sensor/hearth_0c/+/config"]), Some(HashSet::from([id("0c")])));
    }

    #[test]
    fn configs_are_made_only_for_filters_under_the_discovery_prefix() {
        assert!(may_match_under("#", "homeassistant"));
        assert!(may_match_under("+/#", "homeassistant"));
        assert!(may_match_under("homeassistant/#", "homeassistant"));
        assert!(may_match_under("homeassistant/sensor/+/+/config", "homeassistant"));
        assert!(!may_match_under("homeassistant", "homeassistant"));
        assert!(!may_match_under("hearth/+/state", "homeassistant"));
        assert!(may_match_under("ha/disc/#", "ha/disc"));
        assert!(!may_match_under("ha/other/#", "ha/disc"));
    }
}
