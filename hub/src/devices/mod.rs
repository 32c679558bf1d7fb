//! The device directory: what people and the outgoing paths (MQTT, upstream) see of each paired
//! device — name, room, availability, isolation (TR 103 621 6.23), last seen, battery, current
//! state — and the notices published when any of it changes. The link driver makes every
//! change; fronts read snapshots. An isolated device's data never reaches a notice.

pub(crate) mod availability;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub(crate) use availability::{Availability, Period};

use crate::device_id::DeviceId;
use protocol::senml::Reading;

use crate::store::{DeviceInfo, StoredReading};

/// Key of the persisted profiles in the store's meta table.
pub(crate) const META_KEY: &str = "devices";
/// Transitions kept per device.
const TRANSITIONS: usize = 32;
/// Quantities held in a device's current state. A sensor reports a few; one sending ever new
/// names cannot grow the hub's memory or the state message (its readings are still stored).
const MAX_QUANTITIES: usize = 32;
/// Notices the channel holds for a listener that falls behind (it then gets `Lagged`).
const NOTICE_BACKLOG: usize = 4096;
/// A reading that arrives this much later than it was taken is backfill (from an outage buffer).
const BACKFILL_AFTER_MS: i64 = 30_000;
/// Longest name or room.
pub(crate) const MAX_LABEL: usize = 64;

/// Why a device is isolated, and what the owner can do (EN 303 645 5.3-13/5.3-14).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// Why, in words.
    pub reason: String,
    /// The advisory that caused it, if any (`model v<low>-<high>: text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advisory: Option<String>,
    /// When, Unix seconds.
    pub since: u64,
    /// What the owner can do.
    pub replacement: String,
    /// Set when the owner overrode it (the device is then not isolated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overridden_at: Option<u64>,
}

impl Isolation {
    /// Whether it is in force.
    pub fn active(&self) -> bool {
        self.overridden_at.is_none()
    }
}

/// One availability change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// New availability.
    pub to: Availability,
    /// Why.
    pub why: String,
}

/// What is persisted of a device beyond its pairing record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reachable: Option<bool>,
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    transitions: VecDeque<Transition>,
    /// Boxed: rare, and inline it was 96 of every device's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    isolation: Option<Box<Isolation>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_seen_ms: Option<i64>,
    /// Devices this one replaced (their readings are its history).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    replaces: Vec<DeviceId>,
}

/// A device as people see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    /// Pairing record (model, serial, firmware, support period, capabilities).
    #[serde(flatten)]
    pub info: DeviceInfo,
    /// Name (the serial until the owner names it).
    pub name: String,
    /// Room, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Online, offline or isolated.
    pub availability: Availability,
    /// Set while isolated, or after an override (then `overridden_at` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    /// Last report, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<i64>,
    /// Battery level in percent, where the model reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery: Option<f64>,
    /// The newest value of each quantity, by short name (`temperature`, `contact`, ...).
    pub state: BTreeMap<String, StoredReading>,
    /// The learned reporting period, milliseconds.
    pub period_ms: u64,
    /// Availability changes, oldest first.
    pub transitions: Vec<Transition>,
    /// Devices this one replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<DeviceId>,
}

/// What a state message needs of a device ([`Directory::state_view`]).
#[derive(Debug, Clone)]
pub(crate) struct StateView {
    /// Name (the serial until the owner names it).
    pub name: String,
    /// Room, if set.
    pub room: Option<String>,
    /// Online, offline or isolated.
    pub availability: Availability,
    /// Battery level in percent, where the model reports one.
    pub battery: Option<f64>,
    /// The firmware it paired with.
    pub firmware_version: u32,
    /// [`descriptor_digest`] of its pairing descriptor.
    pub descriptor: u64,
    /// The newest value of each quantity.
    pub state: Vec<StoredReading>,
}

/// A digest of what a device's pairing descriptor says beyond its firmware (model, serial,
/// capabilities, updatable): with the name, room, firmware and availability it tells the MQTT
/// bridge when a device's discovery configs must be published again.
pub(crate) fn descriptor_digest(about: &protocol::pairing::Descriptor) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&about.model, &about.serial, &about.capabilities, about.updatable).hash(&mut h);
    h.finish()
}

/// A reading as published: durable, with whether it is backfill from an outage buffer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveReading {
    /// The reading.
    #[serde(flatten)]
    pub reading: StoredReading,
    /// Taken long before it arrived (replayed from the sensor's buffer).
    pub backfill: bool,
}

/// What changed, for the outgoing paths and live views.
#[derive(Debug, Clone)]
pub enum Notice {
    /// Durable readings of a device that is not isolated. One notice per device and commit:
    /// the channel holds at most [`NOTICE_BACKLOG`] notices, so one device's readings bound
    /// what a lagging listener keeps alive, not a whole commit's.
    Readings {
        /// Device.
        device: DeviceId,
        /// In the order received.
        readings: Arc<[LiveReading]>,
    },
    /// A device's availability changed.
    Availability {
        /// Device.
        device: DeviceId,
        /// New value.
        availability: Availability,
    },
    /// A device was paired, renamed or moved (re-read its snapshot).
    Changed {
        /// Device.
        device: DeviceId,
    },
    /// A device was removed or replaced; forget it.
    Removed {
        /// Device.
        device: DeviceId,
    },
}

#[derive(Debug)]
struct Entry {
    info: DeviceInfo,
    /// [`descriptor_digest`] of `info` (which does not change).
    descriptor: u64,
    profile: Profile,
    period: Period,
    state: Current,
}

/// The newest value of each quantity a device reported, found by its short name. A device has
/// a few, so a vector: a `BTreeMap`'s first node alone took about 1.5 KiB per device.
#[derive(Debug, Default)]
struct Current(Vec<StoredReading>);

impl Current {
    fn get(&self, short: &str) -> Option<&StoredReading> {
        self.0.iter().find(|r| protocol::vocabulary::short_name(&r.name) == short)
    }

    /// The value held for the quantity of the reading named `name`: one of the same name (a
    /// device's names do not change), or failing that of the same short name.
    fn quantity_of(&mut self, name: &str) -> Option<&mut StoredReading> {
        let at = self.0.iter().position(|held| held.name == name).or_else(|| {
            let short = protocol::vocabulary::short_name(name);
            self.0.iter().position(|held| protocol::vocabulary::short_name(&held.name) == short)
        })?;
        Some(&mut self.0[at])
    }

    /// A quantity not held yet, unless [`MAX_QUANTITIES`] are.
    fn insert(&mut self, r: StoredReading) {
        if self.0.len() >= MAX_QUANTITIES {
            return;
        }
        self.0.push(r);
        self.0.shrink_to_fit();
    }

    fn newest_ms(&self) -> Option<i64> {
        self.0.iter().map(|r| r.time_ms).max()
    }

    fn to_map(&self) -> BTreeMap<String, StoredReading> {
        let short = |r: &StoredReading| protocol::vocabulary::short_name(&r.name).to_owned();
        self.0.iter().map(|r| (short(r), r.clone())).collect()
    }
}

impl Entry {
    fn new(info: DeviceInfo, profile: Profile) -> Self {
        let descriptor = descriptor_digest(&info.about);
        Self { info, descriptor, profile, period: Period::default(), state: Current::default() }
    }

    /// Its name: the owner's, or the serial until the owner names it.
    fn name(&self) -> String {
        self.profile.name.clone().unwrap_or_else(|| self.info.about.serial.clone())
    }

    /// The battery level last reported, where the model reports one.
    fn battery(&self) -> Option<f64> {
        self.state.get("battery").and_then(|r| r.value.as_f64())
    }

    fn availability(&self) -> Availability {
        match (&self.profile.isolation, self.profile.reachable) {
            (Some(i), _) if i.active() => Availability::Isolated,
            (_, Some(false)) => Availability::Offline,
            _ => Availability::Online,
        }
    }

    fn snapshot(&self, default_period_ms: u64) -> DeviceSnapshot {
        DeviceSnapshot {
            info: self.info.clone(),
            name: self.name(),
            room: self.profile.room.clone(),
            availability: self.availability(),
            isolation: self.profile.isolation.as_deref().cloned(),
            last_seen_ms: self.profile.last_seen_ms,
            battery: self.battery(),
            state: self.state.to_map(),
            period_ms: self.period.period_ms(default_period_ms),
            transitions: self.profile.transitions.iter().cloned().collect(),
            replaces: self.profile.replaces.clone(),
        }
    }

    fn record(&mut self, at_ms: i64, why: &str) {
        let to = self.availability();
        if self.profile.transitions.back().is_some_and(|t| t.to == to) {
            return;
        }
        if self.profile.transitions.len() == TRANSITIONS {
            self.profile.transitions.pop_front();
        }
        self.profile.transitions.push_back(Transition { at_ms, to, why: why.into() });
    }
}

#[derive(Debug)]
struct Inner {
    /// Boxed: a table keeps up to as many empty slots as full ones after each doubling, and
    /// inline each slot would be an entry's 320 bytes (2.2 MiB more at 10,000 devices).
    devices: HashMap<DeviceId, Box<Entry>>,
    /// Profiles changed since the last persisted document.
    dirty: bool,
    /// Wall clock of this start, Unix ms: nobody is overdue before a full allowance after it.
    started_ms: i64,
}

/// Availability settings.
#[derive(Debug, Clone, Copy)]
pub struct AvailabilityRules {
    /// Period assumed until one is learned, ms.
    pub default_period_ms: u64,
    /// Offline after this many periods without a report.
    pub missed_periods: u32,
}

/// Why a directory change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// No such device.
    #[error("no such device")]
    Unknown,
    /// A name or room that is empty, too long or has control characters.
    #[error("{0} must be 1 to 64 printable characters")]
    BadLabel(&'static str),
    /// The override needs an isolated device.
    #[error("the device is not isolated")]
    NotIsolated,
}

/// The shared directory (cheap to clone).
#[derive(Debug, Clone)]
pub struct Directory {
    inner: Arc<RwLock<Inner>>,
    notices: broadcast::Sender<Notice>,
    config: AvailabilityRules,
}

impl Directory {
    /// The directory of `devices`, with the profiles persisted in `doc`.
    pub fn new(
        devices: Vec<DeviceInfo>,
        doc: Option<&[u8]>,
        config: AvailabilityRules,
        now_ms: i64,
    ) -> Self {
        let mut profiles: HashMap<DeviceId, Profile> =
            doc.and_then(|d| serde_json::from_slice(d).ok()).unwrap_or_default();
        let devices = devices
            .into_iter()
            .map(|info| {
                let profile = profiles.remove(&info.id).unwrap_or_default();
                let entry = Box::new(Entry::new(info, profile));
                (entry.info.id, entry)
            })
            .collect();
        let (notices, _) = broadcast::channel(NOTICE_BACKLOG);
        Self {
            inner: Arc::new(RwLock::new(Inner { devices, dirty: false, started_ms: now_ms })),
            notices,
            config,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, n: Notice) {
        // No subscriber is fine: nothing listens for an absent front.
        let _ = self.notices.send(n);
    }

    /// Notices from now on. A subscriber that falls behind gets `Lagged` and should re-read
    /// the snapshots.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// Whether `device`'s data and commands may leave the hub (paired and not isolated).
    pub fn outgoing_allowed(&self, device: &DeviceId) -> bool {
        self.read().devices.get(device).is_some_and(|e| e.availability() != Availability::Isolated)
    }

    /// Whether `device` is paired and isolated (cheap: for the link's hot path).
    pub fn isolated(&self, device: &DeviceId) -> bool {
        self.read().devices.get(device).is_some_and(|e| e.availability() == Availability::Isolated)
    }

    /// For a device whose data may leave the hub ([`Directory::outgoing_allowed`]), when the
    /// newest value of its current state was measured (Unix ms, if any); `None` if it may not.
    /// One lookup for the bridge's two questions about every report.
    pub(crate) fn outgoing_state_time(&self, device: &DeviceId) -> Option<Option<i64>> {
        let inner = self.read();
        let e = inner.devices.get(device)?;
        (e.availability() != Availability::Isolated).then(|| e.state.newest_ms())
    }

    /// One device.
    pub fn get(&self, device: &DeviceId) -> Option<DeviceSnapshot> {
        self.read().devices.get(device).map(|e| e.snapshot(self.config.default_period_ms))
    }

    /// What a state message needs of `device`, without a whole snapshot (the MQTT bridge takes
    /// one for every device that reported).
    pub(crate) fn state_view(&self, device: &DeviceId) -> Option<StateView> {
        let inner = self.read();
        let e = inner.devices.get(device)?;
        Some(StateView {
            name: e.name(),
            room: e.profile.room.clone(),
            availability: e.availability(),
            battery: e.battery(),
            firmware_version: e.info.about.firmware_version,
            descriptor: e.descriptor,
            state: e.state.0.clone(),
        })
    }

    /// Every device's id, in id order (no snapshots: for walking a large directory a few
    /// devices at a time).
    pub fn ids(&self) -> Vec<DeviceId> {
        let mut ids: Vec<DeviceId> = self.read().devices.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// How many devices are online, offline and isolated (no snapshots).
    pub fn availability_counts(&self) -> [u64; 3] {
        let mut by = [0u64; 3];
        for e in self.read().devices.values() {
            by[match e.availability() {
                Availability::Online => 0,
                Availability::Offline => 1,
                Availability::Isolated => 2,
            }] += 1;
        }
        by
    }

    /// The devices that can be updated and are not isolated, with the firmware version they
    /// paired with, in id order (no snapshots).
    pub fn updatable(&self) -> Vec<(DeviceId, u32)> {
        let inner = self.read();
        let mut out: Vec<(DeviceId, u32)> = inner
            .devices
            .values()
            .filter(|e| e.info.about.updatable && e.availability() != Availability::Isolated)
            .map(|e| (e.info.id, e.info.about.firmware_version))
            .collect();
        out.sort_unstable_by_key(|(id, _)| *id);
        out
    }

    /// All devices, by name.
    pub fn list(&self) -> Vec<DeviceSnapshot> {
        let mut all: Vec<_> = self
            .read()
            .devices
            .values()
            .map(|e| e.snapshot(self.config.default_period_ms))
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name).then(a.info.id.cmp(&b.info.id)));
        all
    }

    /// A newly paired device (online from now).
    pub fn paired(&self, info: DeviceInfo, now_ms: i64) {
        let id = info.id;
        {
            let mut inner = self.write();
            let mut entry = Box::new(Entry::new(info, Profile::default()));
            entry.profile.last_seen_ms = Some(now_ms);
            entry.record(now_ms, "paired");
            inner.devices.insert(id, entry);
            inner.dirty = true;
        }
        self.notify(Notice::Changed { device: id });
    }

    /// A removed device.
    pub fn removed(&self, device: &DeviceId) {
        let mut inner = self.write();
        if inner.devices.remove(device).is_some() {
            inner.dirty = true;
            drop(inner);
            self.notify(Notice::Removed { device: *device });
        }
    }

    /// The durable readings of one group commit, each device's in the order received, at
    /// `now_ms`: updates last seen, state and the period of each under one lock, and publishes
    /// those of devices that are not isolated (unless nobody listens). The link's thread calls
    /// this once per commit, so it takes the readings rather than copying their strings.
    pub fn readings(&self, reports: Vec<(DeviceId, Vec<Reading>)>, now_ms: i64) {
        let listening = self.notices.receiver_count() > 0;
        let mut came_back = Vec::new();
        let mut published = Vec::new();
        {
            let mut inner = self.write();
            let inner = &mut *inner;
            for (device, readings) in reports {
                let Some(e) = inner.devices.get_mut(&device) else { continue };
                // The period is learned from when the sensor measured, not when reports
                // arrived: a backlog drained after an outage arrives faster than the sensor
                // measures, and learning from it would shrink the allowance until the next
                // live report is "late" (an offline flap right after the drain).
                if let Some(measured) = readings.iter().map(|r| r.time.0).max() {
                    e.period.report(measured.max(0) as u64);
                }
                e.profile.last_seen_ms = Some(now_ms);
                for r in &readings {
                    match e.state.quantity_of(&r.name) {
                        Some(old) if old.time_ms > r.time.0 => {}
                        Some(old) => old.assign(r),
                        None => e.state.insert(r.into()),
                    }
                }
                if e.profile.reachable == Some(false) {
                    e.profile.reachable = Some(true);
                    e.record(now_ms, "reporting again");
                    if e.availability() == Availability::Online {
                        came_back.push(device);
                    }
                    inner.dirty = true;
                }
                if listening && e.availability() != Availability::Isolated {
                    published.push((device, readings));
                }
            }
        }
        for device in came_back {
            self.notify(Notice::Availability { device, availability: Availability::Online });
        }
        for (device, readings) in published {
            let readings = readings
                .into_iter()
                .map(|r| LiveReading {
                    backfill: now_ms - r.time.0 > BACKFILL_AFTER_MS,
                    reading: r.into(),
                })
                .collect();
            self.notify(Notice::Readings { device, readings });
        }
    }

    /// Restores `device`'s current state from its newest stored `readings` (at start: the
    /// directory begins empty); a value received since is newer and wins. Announces the device
    /// as changed if anything was restored, so the outgoing paths publish it.
    pub fn restore_state(&self, device: &DeviceId, readings: &[StoredReading]) {
        let restored = {
            let mut inner = self.write();
            let Some(e) = inner.devices.get_mut(device) else { return };
            let mut restored = false;
            for r in readings {
                match e.state.quantity_of(&r.name) {
                    Some(old) if old.time_ms >= r.time_ms => continue,
                    Some(old) => *old = r.clone(),
                    None => e.state.insert(r.clone()),
                }
                restored = true;
            }
            restored
        };
        if restored {
            self.notify(Notice::Changed { device: *device });
        }
    }

    /// Marks overdue devices offline (called about once a second).
    pub fn tick(&self, now_ms: i64) {
        let mut offline = Vec::new();
        {
            let mut inner = self.write();
            let started = inner.started_ms;
            for (id, e) in inner.devices.iter_mut() {
                if e.profile.reachable == Some(false) {
                    continue;
                }
                let last = e.profile.last_seen_ms.unwrap_or(started).max(started);
                let overdue = e.period.overdue(
                    last.max(0) as u64,
                    now_ms.max(0) as u64,
                    self.config.default_period_ms,
                    self.config.missed_periods,
                );
                if overdue {
                    let was = e.availability();
                    e.profile.reachable = Some(false);
                    e.record(now_ms, "no report for the configured number of periods");
                    if was == Availability::Online {
                        offline.push(*id);
                    }
                }
            }
            if !offline.is_empty() {
                inner.dirty = true;
            }
        }
        for device in offline {
            self.notify(Notice::Availability { device, availability: Availability::Offline });
        }
    }

    fn edit<T>(
        &self,
        device: &DeviceId,
        f: impl FnOnce(&mut Entry) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        let mut inner = self.write();
        let e = inner.devices.get_mut(device).ok_or(DirectoryError::Unknown)?;
        let before = e.availability();
        let out = f(e)?;
        let after = e.availability();
        inner.dirty = true;
        drop(inner);
        if before != after {
            self.notify(Notice::Availability { device: *device, availability: after });
        }
        self.notify(Notice::Changed { device: *device });
        Ok(out)
    }

    /// Names a device.
    pub fn rename(&self, device: &DeviceId, name: &str) -> Result<(), DirectoryError> {
        let name = label(name, "a name")?;
        self.edit(device, |e| {
            e.profile.name = Some(name);
            Ok(())
        })
    }

    /// Puts a device in a room (`None`: no room).
    pub fn set_room(&self, device: &DeviceId, room: Option<&str>) -> Result<(), DirectoryError> {
        let room = room.map(|r| label(r, "a room")).transpose()?;
        self.edit(device, |e| {
            e.profile.room = room;
            Ok(())
        })
    }

    /// Isolates a device (TR 103 621 6.23 example 2). Returns false if it already was
    /// (or the owner overrode an isolation for the same advisory).
    pub fn isolate(&self, device: &DeviceId, isolation: Isolation, now_ms: i64) -> bool {
        self.edit(device, |e| {
            if let Some(old) = &e.profile.isolation
                && (old.active() || old.advisory == isolation.advisory)
            {
                return Ok(false);
            }
            e.profile.isolation = Some(Box::new(isolation));
            e.record(now_ms, "isolated");
            Ok(true)
        })
        .unwrap_or(false)
    }

    /// The owner's explicit override of an isolation (logged by the caller).
    pub fn override_isolation(&self, device: &DeviceId, now_ms: i64) -> Result<(), DirectoryError> {
        self.edit(device, |e| {
            let i = e.profile.isolation.as_mut().filter(|i| i.active());
            let i = i.ok_or(DirectoryError::NotIsolated)?;
            i.overridden_at = Some((now_ms / 1000).max(0) as u64);
            e.record(now_ms, "isolation overridden by the owner");
            Ok(())
        })
    }

    /// Whether `device` can be replaced: any paired device can (isolated, moved, broken).
    pub fn replaceable(&self, device: &DeviceId) -> Result<(), DirectoryError> {
        match self.read().devices.get(device) {
            None => Err(DirectoryError::Unknown),
            Some(_) => Ok(()),
        }
    }

    /// The paired device with this serial, if any: its id and name.
    pub fn by_serial(&self, serial: &str) -> Option<(DeviceId, String)> {
        let inner = self.read();
        let (id, e) = inner.devices.iter().find(|(_, e)| e.info.about.serial == serial)?;
        Some((*id, e.name()))
    }

    /// `new` takes over `old`'s name, room and history; `old` leaves the directory.
    pub fn replace(&self, old: &DeviceId, new: &DeviceId, now_ms: i64) {
        {
            let mut inner = self.write();
            let Some(old_entry) = inner.devices.remove(old) else { return };
            if let Some(e) = inner.devices.get_mut(new) {
                e.profile.name = old_entry.profile.name.or(Some(old_entry.info.about.serial));
                e.profile.room = old_entry.profile.room;
                e.profile.replaces = old_entry.profile.replaces;
                e.profile.replaces.push(*old);
                e.record(now_ms, &format!("replaced device {old}"));
            }
            inner.dirty = true;
        }
        self.notify(Notice::Removed { device: *old });
        self.notify(Notice::Changed { device: *new });
    }

    /// The profiles document if anything changed since the last call.
    pub fn take_dirty(&self) -> Option<Vec<u8>> {
        let mut inner = self.write();
        if !std::mem::take(&mut inner.dirty) {
            return None;
        }
        Some(doc(&inner))
    }

    /// The profiles document (with last-seen times), for a clean shutdown.
    pub fn document(&self) -> Vec<u8> {
        doc(&self.read())
    }
}

fn doc(inner: &Inner) -> Vec<u8> {
    let profiles: HashMap<&DeviceId, &Profile> =
        inner.devices.iter().map(|(id, e)| (id, &e.profile)).collect();
    serde_json::to_vec(&profiles).unwrap_or_default()
}

fn label(s: &str, what: &'static str) -> Result<String, DirectoryError> {
    let s = s.trim();
    if s.is_empty() || s.chars().count() > MAX_LABEL || s.chars().any(char::is_control) {
        return Err(DirectoryError::BadLabel(what));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests;
