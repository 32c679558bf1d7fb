//! The hub's MQTT side: publishes what the device directory allows to leave the hub (state and
//! availability, discovery configs, update state; TR 103 621 6.23: an isolated device's data
//! and configs are withdrawn) live, on the fronts' feed ([`super::live`]; their retained copies
//! are made for each subscriber from the directory, [`super::owned`]) — and, from its own link
//! into the broker, takes what clients publish to the hub: relays `…/set`
//! commands to the link (EN 303 645 5.5-1: over OSCORE only), republishes discovery when Home
//! Assistant comes online (at once after a quiet interval; births within the interval coalesce
//! into one republication at its end, so a storm of birth messages cannot make the hub flood
//! every subscriber with configs), and publishes hub status and security events (5.10-1).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protocol::link::command::Command as SensorCommand;
use protocol::vocabulary::{Command, capabilities};
use rumqttd::local::{LinkRx, LinkTx};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::auth::{Auth, MqttEvent};
use super::live::Feed;
use super::owned::Owned;
use super::pace::{self, Pace};
use super::{bridge_api, discovery, topics};
use crate::api::HubApi;
use crate::device_id::DeviceId;
use crate::devices::{Availability, DeviceSnapshot, LiveReading, Notice, StateView};
use crate::store::StoredReading;

/// Notices taken in one batch at most (their states are published once per device).
const NOTICE_BATCH: usize = 1024;
/// A batch this long means the link is busy: notices then gather for [`GATHER`] before the next
/// batch is taken. The link's thread no longer wakes the bridge for every report, and batches
/// grow; at a human pace every notice is taken at once.
const BUSY_BATCH: usize = 32;
const GATHER: Duration = Duration::from_millis(2);

/// What the bridge publishes per device, to withdraw it later.
#[derive(Default)]
struct Published {
    configs: Vec<String>,
    /// Time of the retained state, Unix ms.
    state_ms: Option<i64>,
    /// What the published configs were made from ([`config_key`]); a change re-syncs them.
    config_key: Option<u64>,
    /// The availability published.
    availability: Option<Availability>,
    /// How often its state and history may go out, and what waits.
    pace: Pace,
}

struct Bridge {
    api: HubApi,
    auth: Arc<Auth>,
    /// The retained messages subscribers get, and what only the bridge knows of them.
    owned: Arc<Owned>,
    prefix: String,
    feed: Feed,
    /// Boxed, like the directory's entries: inline, the table's empty slots after a doubling
    /// took as much again as the ~190-byte records (1 MiB more at 10,000 devices).
    devices: HashMap<DeviceId, Box<Published>>,
    next_command: u32,
    /// Installed versions seen in the update overview.
    installed: HashMap<DeviceId, u32>,
    last_counters: Option<Value>,
    /// Discovery is republished at most once per this interval.
    republish_interval: Duration,
    /// When discovery was last republished for a birth message.
    republished: Option<tokio::time::Instant>,
    /// A republication owed to births within the interval, due then.
    republish_due: Option<tokio::time::Instant>,
    /// The hub's state as last published.
    last_hub_state: Option<Value>,
    /// When the hub started (RFC 3339).
    started: String,
    /// The budget of bridge requests.
    requests: bridge_api::Budget,
    /// Devices whose state or history waits for its pace ([`pace`]).
    waiting: std::collections::HashSet<DeviceId>,
    /// When they are looked at next.
    flush_at: Option<tokio::time::Instant>,
    /// Notices gather until then (the link is busy, [`BUSY_BATCH`]).
    gather_until: Option<tokio::time::Instant>,
}

/// A digest of what a device's discovery configs are made from (name, room, model, firmware,
/// capabilities, availability): when it changes, the configs are published again.
/// `descriptor` is [`crate::devices::descriptor_digest`] of its pairing descriptor, `firmware`
/// the installed version.
fn config_key(
    name: &str,
    room: Option<&str>,
    descriptor: u64,
    firmware: u32,
    availability: Availability,
) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (name, room, descriptor, firmware, availability.as_str()).hash(&mut h);
    h.finish()
}

/// [`config_key`] of a snapshot (its firmware already the installed one).
fn snapshot_key(d: &DeviceSnapshot) -> u64 {
    let about = &d.info.about;
    let descriptor = crate::devices::descriptor_digest(about);
    config_key(&d.name, d.room.as_deref(), descriptor, about.firmware_version, d.availability)
}

/// What a state message says of the device `v` shows.
fn subject(id: DeviceId, v: &StateView) -> topics::Subject<'_> {
    topics::Subject { id, name: &v.name, room: v.room.as_deref(), battery: v.battery }
}

/// The bridge task: it subscribes its link to what clients send the hub and publishes on `feed`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start(
    link: (LinkTx, LinkRx),
    feed: Feed,
    api: HubApi,
    auth: Arc<Auth>,
    owned: Arc<Owned>,
    prefix: String,
    republish_interval: Duration,
    shutdown: CancellationToken,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, String> {
    let (mut tx, rx) = link;
    for f in [
        "hearth/+/set".to_owned(),
        "hearth/+/update/install".to_owned(),
        format!("{}#", bridge_api::REQUEST_PREFIX),
        format!("{prefix}/status"),
    ] {
        tx.subscribe(f).map_err(|e| e.to_string())?;
    }
    let bridge = Bridge {
        api,
        auth,
        owned,
        prefix,
        feed,
        devices: HashMap::new(),
        next_command: 0,
        installed: HashMap::new(),
        last_counters: None,
        republish_interval,
        republished: None,
        republish_due: None,
        last_hub_state: None,
        started: topics::rfc3339_ms(crate::clock::unix_now_ms()),
        requests: bridge_api::Budget::new(tokio::time::Instant::now()),
        waiting: std::collections::HashSet::new(),
        flush_at: None,
        gather_until: None,
    };
    // The link's sender lives as long as the task that reads the link.
    Ok(bridge.run(tx, rx, shutdown))
}

impl Bridge {
    fn publish(&mut self, topic: String, payload: Vec<u8>) {
        self.feed.publish(topic, payload);
    }

    fn publish_json(&mut self, topic: String, v: &Value) {
        self.publish(topic, v.to_string().into_bytes());
    }

    /// One of the hub's own retained messages: recorded for subscribers to come, and published.
    fn publish_hub(&mut self, topic: &str, payload: Vec<u8>) {
        self.owned.set_hub(topic, &payload);
        self.publish(topic.to_owned(), payload);
    }

    async fn run(mut self, _tx: LinkTx, mut rx: LinkRx, shutdown: CancellationToken) {
        let mut notices = self.api.directory.subscribe();
        let mut events = self.auth.subscribe();
        let (in_tx, mut incoming) = mpsc::channel::<(String, Bytes)>(1024);
        tokio::spawn(async move {
            while let Ok(n) = rx.next().await {
                if let Some(rumqttd::Notification::Forward(f)) = n {
                    let topic = String::from_utf8_lossy(&f.publish.topic).into_owned();
                    if in_tx.send((topic, f.publish.payload)).await.is_err() {
                        return;
                    }
                }
            }
        });
        self.publish_hub(topics::HUB_STATUS, b"online".to_vec());
        self.resync();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            let due = self.republish_due;
            let flush = self.flush_at;
            let gather = self.gather_until;
            tokio::select! {
                () = tokio::time::sleep_until(gather.unwrap_or_else(tokio::time::Instant::now)),
                    if gather.is_some() => self.gather_until = None,
                () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)),
                    if due.is_some() => {
                    self.republish_due = None;
                    self.republish();
                }
                () = tokio::time::sleep_until(flush.unwrap_or_else(tokio::time::Instant::now)),
                    if flush.is_some() => {
                    self.flush_at = None;
                    self.flush(tokio::time::Instant::now());
                }
                n = notices.recv(), if gather.is_none() => match n {
                    Ok(n) => {
                        // Whatever else is waiting is taken too: under load a device's state
                        // is published once per batch with its newest values (coalesced), not
                        // once per report; idle, a notice is published at once.
                        let mut batch = vec![n];
                        let mut lagged = false;
                        while batch.len() < NOTICE_BATCH {
                            match notices.try_recv() {
                                Ok(n) => batch.push(n),
                                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                    lagged = true;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        if batch.len() >= BUSY_BATCH {
                            self.gather_until = Some(tokio::time::Instant::now() + GATHER);
                        }
                        if lagged {
                            self.resync();
                        } else {
                            self.notices(batch);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.resync(),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                Some((topic, payload)) = incoming.recv() => self.incoming(&topic, &payload).await,
                e = events.recv() => match e {
                    Ok(e) => self.security(&e),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let v = json!({"event": "events_dropped", "count": n});
                        self.publish_json(topics::HUB_SECURITY.into(), &v);
                    }
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                _ = tick.tick() => {
                    self.updates().await;
                    self.counters().await;
                    self.save_logins().await;
                }
                () = shutdown.cancelled() => break,
            }
        }
        self.flush_all();
        self.publish_hub(topics::HUB_STATUS, b"offline".to_vec());
        self.save_logins().await;
    }

    /// At a clean stop, whatever waits for its pace goes now: the newest state of each device
    /// that owes it and all the history held (the fronts write it before they close,
    /// [`super::start`]).
    fn flush_all(&mut self) {
        let waiting: Vec<DeviceId> = self.waiting.drain().collect();
        for device in waiting {
            let Some(v) = self.api.directory.state_view(&device) else { continue };
            if v.availability == Availability::Isolated {
                continue;
            }
            if self.devices.get(&device).is_some_and(|p| p.pace.state_owed()) {
                self.publish_state(&subject(device, &v), v.state.iter());
            }
            let held = self.devices.get_mut(&device).and_then(|p| p.pace.take_all_history());
            if let Some(held) = held {
                self.publish_history(device, &v, &held);
            }
        }
    }

    /// One `…/history` message of `device` (seen as `v`) with the entries `held`.
    fn publish_history(&mut self, device: DeviceId, v: &StateView, held: &[u8]) {
        let payload = topics::history_payload(&subject(device, v), held);
        self.publish(topics::history(&device), payload);
    }

    /// Brings every device up to date (at start, and after falling behind the directory's
    /// notices): what changed since it was published, not everything again — under load a
    /// lagging bridge that republished every config would only fall further behind.
    fn resync(&mut self) {
        self.hub_configs();
        // One snapshot at a time: a list of them all was ~2 KiB per device at once.
        let ids = self.api.directory.ids();
        let known: std::collections::HashSet<DeviceId> = ids.iter().copied().collect();
        let gone: Vec<DeviceId> =
            self.devices.keys().filter(|id| !known.contains(id)).copied().collect();
        for id in gone {
            self.withdraw(&id, true);
        }
        for id in &ids {
            if let Some(d) = self.api.directory.get(id) {
                self.catch_up(&d);
            }
        }
    }

    /// The device's availability and configs if they changed since published, and its state if
    /// newer.
    fn catch_up(&mut self, d: &DeviceSnapshot) {
        let key = snapshot_key(&self.owned.installed_now(d));
        if self.published_as(&d.info.id, key, d.availability) {
            self.publish_state(&d.into(), d.state.values());
        } else {
            self.sync(d);
        }
    }

    /// Whether `id`'s configs and availability were published as they are now.
    fn published_as(&self, id: &DeviceId, key: u64, availability: Availability) -> bool {
        self.devices
            .get(id)
            .is_some_and(|p| p.config_key == Some(key) && p.availability == Some(availability))
    }

    /// Availability, discovery and current state of one device, as the directory allows.
    fn sync(&mut self, d: &DeviceSnapshot) {
        let d = &self.owned.installed_now(d);
        let id = d.info.id;
        self.publish(topics::availability(&id), d.availability.as_str().as_bytes().to_vec());
        if d.availability == Availability::Isolated {
            self.withdraw(&id, false);
            return;
        }
        let configs = discovery::configs(&self.prefix, d);
        let old = std::mem::take(&mut self.devices.entry(id).or_default().configs);
        for stale in old.iter().filter(|t| !configs.iter().any(|c| &c.topic == *t)) {
            self.publish(stale.clone(), Vec::new());
        }
        let topics: Vec<String> = configs.iter().map(|c| c.topic.clone()).collect();
        for c in configs {
            self.publish_json(c.topic, &c.payload);
        }
        let entry = self.devices.entry(id).or_default();
        entry.configs = topics;
        entry.config_key = Some(snapshot_key(d));
        entry.availability = Some(d.availability);
        self.publish_state(&d.into(), d.state.values());
    }

    /// The device's current state (the newest value of each quantity), retained, if it is newer
    /// than what was published.
    fn publish_state<'a>(
        &mut self,
        device: &topics::Subject<'_>,
        state: impl Iterator<Item = &'a StoredReading>,
    ) {
        let Some(s) = topics::current_state(device, state) else { return };
        let entry = self.devices.entry(device.id).or_default();
        let newer = entry.state_ms.is_none_or(|t| s.time_ms > t);
        if newer {
            entry.state_ms = Some(s.time_ms);
        }
        entry.pace.state_published(entry.state_ms.unwrap_or(s.time_ms));
        if newer {
            self.publish(topics::state(&device.id), s.payload);
        }
    }

    /// A device's state if it is newer than the one published and its pace allows; owed
    /// (published by [`Bridge::flush`]) if not.
    fn paced_state(&mut self, device: DeviceId, v: &StateView, now: tokio::time::Instant) {
        let newest = v.state.iter().map(|r| r.time_ms).max();
        let entry = self.devices.entry(device).or_default();
        let published = entry.state_ms;
        if newest.is_none_or(|t| published.is_some_and(|p| t <= p)) {
            if let Some(p) = published {
                entry.pace.state_published(p);
            }
        } else if entry.pace.take_state(now) {
            self.publish_state(&subject(device, v), v.state.iter());
        } else {
            self.wait(device, now);
        }
    }

    /// `device`'s held readings as one `…/history` message, if due (TR 103 621 6.23: not once
    /// it is isolated).
    fn history(&mut self, device: DeviceId, now: tokio::time::Instant) {
        let Some(p) = self.devices.get_mut(&device) else { return };
        if let Some(held) = p.pace.take_history(now) {
            match self.api.directory.state_view(&device) {
                Some(v) if v.availability != Availability::Isolated => {
                    self.publish_history(device, &v, &held);
                }
                _ => {}
            }
        }
        if self.devices.get(&device).is_some_and(|p| p.pace.waiting()) {
            self.wait(device, now);
        }
    }

    /// `device` has something waiting for its pace: looked at again within a tick.
    fn wait(&mut self, device: DeviceId, now: tokio::time::Instant) {
        self.waiting.insert(device);
        self.flush_at.get_or_insert(now + pace::TICK);
    }

    /// What waited for its pace and may go now.
    fn flush(&mut self, now: tokio::time::Instant) {
        let waiting: Vec<DeviceId> = self.waiting.drain().collect();
        for device in waiting {
            if self.devices.get(&device).is_some_and(|p| p.pace.state_owed()) {
                self.state(device, now);
            }
            self.history(device, now);
        }
    }

    /// Removes a device's discovery configs and retained state (isolated or removed; a removed
    /// device's availability and update state go too).
    fn withdraw(&mut self, id: &DeviceId, removed: bool) {
        let Some(p) = self.devices.remove(id) else {
            if removed {
                self.publish(topics::availability(id), Vec::new());
            }
            return;
        };
        for t in p.configs {
            self.publish(t, Vec::new());
        }
        if p.state_ms.is_some() {
            self.publish(topics::state(id), Vec::new());
        }
        if self.owned.remove_update(id) {
            self.publish(topics::update(id), Vec::new());
        }
        if removed {
            self.publish(topics::availability(id), Vec::new());
        }
    }

    /// Notices in the order they came; the states of the devices that reported are published
    /// once each (as their pace allows), after the readings of the batch (and before any other
    /// kind of notice, so that order holds).
    fn notices(&mut self, batch: Vec<Notice>) {
        // In order of first report; the set makes "already in" O(1) (a batch has up to 1,024).
        let mut reported: Vec<DeviceId> = Vec::new();
        let mut seen: std::collections::HashSet<DeviceId> = std::collections::HashSet::new();
        for n in batch {
            if let Notice::Readings { device, readings } = n {
                if self.readings(&device, &readings) && seen.insert(device) {
                    reported.push(device);
                }
                continue;
            }
            self.states(&mut reported);
            seen.clear();
            self.notice(n);
        }
        self.states(&mut reported);
    }

    /// Publishes the events of one report and holds its readings for state or history
    /// ([`Pace::report`]); whether its device's state is to be published.
    fn readings(&mut self, device: &DeviceId, readings: &Arc<[LiveReading]>) -> bool {
        let Some(current) = self.api.directory.outgoing_state_time(device) else {
            return false;
        };
        // Only the newest value of each quantity drives `…/state`; readings replayed from an
        // outage buffer, or older than the state, go to `…/history` with their original time
        // (they are in Hearth's history and upstream anyway).
        for e in topics::events(readings) {
            self.publish_json(topics::event(device), &e);
        }
        self.devices.entry(*device).or_default().pace.report(readings, current);
        self.history(*device, tokio::time::Instant::now());
        true
    }

    /// The current state (and, if its configs or availability changed, those) of every device
    /// in `reported`, which it empties. The directory's light view of each, not a snapshot:
    /// this runs for every report.
    fn states(&mut self, reported: &mut Vec<DeviceId>) {
        let now = tokio::time::Instant::now();
        for device in reported.drain(..) {
            self.state(device, now);
        }
    }

    /// One device's state as its pace allows. Until its bucket has a token, a device whose
    /// configs were published only owes it — not even a directory lookup: under load nearly
    /// every report ends here, and [`Bridge::flush`] comes back to it.
    fn state(&mut self, device: DeviceId, now: tokio::time::Instant) {
        if let Some(p) = self.devices.get_mut(&device)
            && p.config_key.is_some()
            && !p.pace.may_send(now)
        {
            p.pace.owe();
            self.wait(device, now);
            return;
        }
        let Some(v) = self.api.directory.state_view(&device) else { return };
        if v.availability == Availability::Isolated {
            if let Some(p) = self.devices.get_mut(&device) {
                p.pace.drop_held();
            }
            return;
        }
        let firmware = self.owned.firmware(&device).unwrap_or(v.firmware_version);
        let key = config_key(&v.name, v.room.as_deref(), v.descriptor, firmware, v.availability);
        if self.published_as(&device, key, v.availability) {
            self.paced_state(device, &v, now);
        } else if let Some(d) = self.api.directory.get(&device) {
            self.sync(&d);
        }
    }

    fn notice(&mut self, n: Notice) {
        match n {
            Notice::Readings { device, readings } => {
                let mut reported = vec![device];
                self.readings(&device, &readings);
                self.states(&mut reported);
            }
            Notice::Availability { device, availability } => {
                match (availability, self.api.directory.get(&device)) {
                    (Availability::Isolated, _) => {
                        self.publish(topics::availability(&device), b"isolated".to_vec());
                        self.withdraw(&device, false);
                    }
                    (_, Some(d)) => self.sync(&d),
                    (_, None) => {}
                }
            }
            Notice::Changed { device } => {
                if let Some(d) = self.api.directory.get(&device) {
                    self.sync(&d);
                }
            }
            Notice::Removed { device } => {
                self.withdraw(&device, true);
                self.owned.forget(&device);
            }
        }
    }

    async fn incoming(&mut self, topic: &str, payload: &[u8]) {
        if let Some(request) = bridge_api::request(topic) {
            return self.bridge_request(request.to_owned(), payload);
        }
        if topic == format!("{}/status", self.prefix) {
            if payload == b"online" {
                self.birth(tokio::time::Instant::now());
            }
            return;
        }
        if let Some(device) = topics::parse_update_install(topic) {
            let v = match self.install(device, payload).await {
                Ok(version) => json!({"status": "approved", "version": version}),
                Err(reason) => json!({"status": "refused", "reason": reason}),
            };
            self.publish_json(topics::update_result(&device), &v);
            return;
        }
        let Some(device) = topics::parse_set(topic) else { return };
        let result = self.command(device, payload).await;
        let v = match result {
            Ok((id, command, value)) => {
                let mut v = json!({"status": "queued", "id": id,
                    "note": "sent with the acknowledgement of the sensor's next report"});
                v[command.name()] = json!(value);
                v
            }
            Err(e) => json!({"status": "refused", "reason": e.to_string()}),
        };
        self.publish_json(topics::set_result(&device), &v);
    }

    /// An admin's bridge request (only admins may publish them: the fronts check), within the
    /// budget: answered by its own task, as a request may wait (a PIN attempt).
    fn bridge_request(&mut self, request: String, payload: &[u8]) {
        let topic = bridge_api::response(&request);
        if let Err(wait) = self.requests.take(tokio::time::Instant::now()) {
            tracing::debug!(request, "MQTT bridge request over the budget");
            self.publish_json(topic, &bridge_api::over_budget(payload, wait));
            return;
        }
        tracing::info!(request, "MQTT bridge request");
        let (api, feed, payload) = (self.api.clone(), self.feed.clone(), payload.to_vec());
        tokio::spawn(async move {
            let v = bridge_api::answer(&api, &request, &payload).await;
            feed.publish(topic, v.to_string().into_bytes());
        });
    }

    /// Home Assistant (re)started and wants every config again: republished now, or — within
    /// the interval since the last time — once at its end, however many births came.
    fn birth(&mut self, now: tokio::time::Instant) {
        match self.republished.map(|t| t + self.republish_interval) {
            Some(next) if now < next => {
                if self.republish_due.is_none() {
                    tracing::debug!("Home Assistant birth again soon; discovery republished later");
                    self.republish_due = Some(next);
                }
            }
            _ => self.republish(),
        }
    }

    fn republish(&mut self) {
        tracing::info!("Home Assistant is online; republishing discovery");
        self.republished = Some(tokio::time::Instant::now());
        self.hub_configs();
        for id in self.api.directory.ids() {
            if let Some(d) = self.api.directory.get(&id) {
                self.sync(&d);
            }
        }
    }

    async fn command(
        &mut self,
        device: DeviceId,
        payload: &[u8],
    ) -> Result<(u32, Command, f64), topics::SetError> {
        // What the device declared it can be set to; nothing while it is isolated.
        let commands: Vec<Command> = match self.api.directory.get(&device) {
            Some(d) if d.availability != Availability::Isolated => {
                capabilities(&d.info.about.capabilities)
                    .into_iter()
                    .filter_map(|q| q.command())
                    .collect()
            }
            _ => Vec::new(),
        };
        let (command, value) = topics::parse_set_payload(payload, &commands)?;
        self.next_command = self.next_command.wrapping_add(1);
        let id = self.next_command;
        let relayed = SensorCommand { id, setting: command, value };
        match self.api.command(device, relayed).await {
            Ok(()) => {
                let name = command.name();
                tracing::info!(%device, id, name, "command queued for the sensor's next report");
                Ok((id, command, value))
            }
            Err(_) => Err(topics::SetError::NotAllowed),
        }
    }

    /// Home Assistant's `update` entity asked to install: the owner approves the release the
    /// entity shows for this device (the same approval as `hub ctl update approve`).
    async fn install(&mut self, device: DeviceId, payload: &[u8]) -> Result<u32, String> {
        if payload != b"install" {
            return Err("payload must be \"install\"".into());
        }
        if !self.api.directory.outgoing_allowed(&device) {
            return Err("no such device, or it is isolated".into());
        }
        let view = self.api.updates().await.map_err(|e| e.to_string())?;
        let Some(version) = view.devices.iter().find(|d| d.id == device).and_then(|d| d.available)
        else {
            return Err("no update available for this device".into());
        };
        self.api.update_approve(Some(device), None, version).await.map_err(|e| e.to_string())?;
        tracing::info!(%device, version, "update approved from MQTT (Home Assistant)");
        Ok(version)
    }

    fn security(&mut self, e: &MqttEvent) {
        if let Ok(v) = serde_json::to_value(e) {
            self.publish_json(topics::HUB_SECURITY.into(), &v);
        }
    }

    async fn save_logins(&self) {
        let auth = self.auth.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || auth.save_logins()).await {
            tracing::warn!(error = %e, "MQTT login records not saved");
        }
    }

    /// Publishes the security counters on `hearth/hub/security` when they change, and the hub's
    /// own state on `hearth/hub/overview`.
    async fn counters(&mut self) {
        let Ok(report) = self.api.security().await else { return };
        let Ok(mut v) = serde_json::to_value(&report) else { return };
        self.hub_state(&report.anomalies, report.total);
        if self.last_counters.as_ref() == Some(&v) {
            return;
        }
        self.last_counters = Some(v.clone());
        v["event"] = json!("counters");
        self.publish_json(topics::HUB_SECURITY.into(), &v);
    }

    /// The hub device's discovery configs.
    fn hub_configs(&mut self) {
        let upstream = self.api.upstream().configured;
        for c in super::hub_entity::configs(&self.prefix, env!("CARGO_PKG_VERSION"), upstream) {
            self.publish_hub(&c.topic, c.payload.to_string().into_bytes());
        }
    }

    /// The hub's own state, retained, when it changed: devices by availability, security events
    /// and the ones above their threshold now, the upstream backlog, the storage, the messages
    /// slow MQTT clients lost.
    fn hub_state(&mut self, anomalies: &[String], events: u64) {
        let anomalies: Vec<String> =
            anomalies.iter().map(|n| protocol::security::label(n)).collect();
        let by = self.api.directory.availability_counts();
        let upstream = self.api.upstream().status.map(|s| s.pending);
        // Whether the disk can be written (issue 20): not the free space, which would make the
        // retained state change all the time.
        let st = self.api.store.status();
        let storage =
            json!({"ok": st.ok, "problem": st.problem, "dropped_for_space": st.dropped_for_space});
        let state = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started": self.started,
            "devices_online": by[0],
            "devices_offline": by[1],
            "devices_isolated": by[2],
            "security_events": events,
            "anomalies": anomalies,
            "upstream_pending": upstream,
            "storage": storage,
            // The hub's messages MQTT clients lost for reading too slowly (`live::BACKLOG`).
            "mqtt_messages_lost": self.feed.lost(),
        });
        if self.last_hub_state.as_ref() != Some(&state) {
            self.publish_hub(topics::HUB_OVERVIEW, state.to_string().into_bytes());
            self.last_hub_state = Some(state);
        }
    }

    /// The `update` entities' state: installed and latest version, progress.
    async fn updates(&mut self) {
        let Ok(view) = self.api.updates().await else { return };
        // Every 2 s: ids and versions only, a snapshot only for a device whose block changes
        // (a list of every snapshot was ~2 KiB per device each time, 20 MiB at 10,000).
        for (id, paired_version) in self.api.directory.updatable() {
            let in_view = view.devices.iter().find(|v| v.id == id);
            let (installed, state) = match in_view {
                Some(v) => {
                    self.installed.insert(id, v.installed);
                    let progress = v.delivering.map(|(_, done, total)| (done, total));
                    let fixes = view
                        .releases
                        .iter()
                        .find(|r| r.model == v.model && Some(r.version) == v.available)
                        .map(|r| r.risks_mitigated.clone());
                    let summary = match (fixes, &v.waiting_for) {
                        (Some(f), Some(w)) => Some(format!("{f}\n\nNot installed yet: {w}")),
                        (Some(f), None) => Some(f),
                        (None, Some(w)) => Some(format!("Not installed yet: {w}")),
                        (None, None) => None,
                    };
                    (
                        v.installed,
                        discovery::update_state(v.installed, v.available, progress, summary),
                    )
                }
                None => {
                    // Asked once after start, and once when it leaves the overview (installed,
                    // refused...); known otherwise.
                    let known = match self.installed.remove(&id) {
                        Some(_) => None,
                        None => self.owned.firmware(&id),
                    };
                    let installed = match known {
                        Some(v) => v,
                        None => match self.api.update_history(id).await {
                            Ok(u) => u.map_or(paired_version, |u| u.installed),
                            Err(_) => continue,
                        },
                    };
                    (installed, discovery::update_state(installed, None, None, None))
                }
            };
            let before = self.owned.set_firmware(id, installed).unwrap_or(paired_version);
            if before != installed {
                // The device block's `sw_version` follows an installed update.
                if let Some(d) = self.api.directory.get(&id) {
                    self.sync(&d);
                }
            }
            let state = state.to_string().into_bytes();
            if self.owned.set_update(id, &state) {
                self.publish(topics::update(&id), state);
            }
        }
    }
}
