//! The owner's command API: one implementation behind every front (the control socket and
//! `hub ctl`, the web UI, MQTT). Each command is defined once in [`request`] (its arguments,
//! its typed answer from `answer`, its handler: a method here); the link's part runs on the
//! link's thread as a closure (`on_link`).

mod answer;
pub mod request;
mod security;
#[cfg(test)]
pub(crate) mod tests;

use tokio::sync::{mpsc, oneshot};

use crate::device_id::DeviceId;
use crate::link::{Driver, LinkCommand, LinkError, PinEntry};
pub use crate::link::{PairingState, PairingStatus, Waiting};
use crate::store::{HubStore, StoredReading};
pub use answer::*;
pub use request::{Command, Request};
pub(crate) use security::{checks as security_checks, watch};

/// Why a request failed (sent to the client as `{"error": "..."}`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Bad arguments.
    #[error("{0}")]
    BadRequest(String),
    /// The hub refused the command.
    #[error(transparent)]
    Command(#[from] LinkError),
    /// No such device.
    #[error("no device {0}")]
    NotFound(DeviceId),
    /// The hub is shutting down.
    #[error("the hub is shutting down")]
    Stopped,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

fn directory_error(id: DeviceId, e: crate::devices::DirectoryError) -> ApiError {
    match e {
        crate::devices::DirectoryError::Unknown => ApiError::NotFound(id),
        e => ApiError::Command(e.into()),
    }
}

/// Handle to the running hub.
#[derive(Debug, Clone)]
pub struct HubApi {
    pub(crate) link: mpsc::Sender<LinkCommand>,
    pub(crate) store: HubStore,
    /// Names, rooms, availability, isolation and current state of every device; subscribe to
    /// its notices for live data (isolated devices' data is never in them).
    pub directory: crate::devices::Directory,
    /// The upstream bridge, when one is configured.
    pub upstream: Option<crate::upstream::UpstreamHandle>,
    /// MQTT users, login throttling and counters (none when MQTT is disabled).
    pub(crate) mqtt: Option<std::sync::Arc<crate::mqtt::auth::Auth>>,
    /// The listeners' connection slots and counters.
    pub listeners: crate::connections::Listeners,
    /// Every security counter beside the link's, and the anomaly flags.
    pub(crate) monitor: std::sync::Arc<crate::security::Monitor>,
    /// The hub's data directory (for the self-check).
    pub(crate) data_dir: std::path::PathBuf,
    /// The configuration file the hub was started with (a backup carries it).
    pub(crate) config_file: Option<std::path::PathBuf>,
    /// The update feed checker's last and next check (none: no feed configured).
    pub feed: crate::feed::FeedState,
    /// Fired when the owner asks for a factory reset (whoever runs the hub stops it, erases
    /// its data directory and starts it again: `daemon::start`'s caller).
    pub(crate) reset: tokio_util::sync::CancellationToken,
}

impl HubApi {
    /// Writes a backup (off the runtime: the key derivation and the copy block).
    pub async fn backup(
        &self,
        path: std::path::PathBuf,
        pass: crate::backup::Passphrase,
    ) -> Result<crate::backup::Summary, ApiError> {
        let (store, dir, config) =
            (self.store.clone(), self.data_dir.clone(), self.config_file.clone());
        // Names and rooms as they are now (the link writes them to the store once a second).
        let directory = self.directory.document();
        let done = tokio::task::spawn_blocking(move || {
            let current = [(crate::devices::META_KEY, directory)];
            crate::backup::create(&store, &dir, config.as_deref(), &current, &path, &pass)
        })
        .await
        .map_err(|_| ApiError::Stopped)?;
        let summary = done.map_err(|e| ApiError::BadRequest(format!("backup failed: {e}")))?;
        tracing::info!(devices = summary.devices, bytes = summary.bytes, "backup written");
        Ok(summary)
    }

    /// Factory reset (EN 303 645 5.11-1): asks whoever runs the hub to stop it, erase its data
    /// directory — devices, keys, readings, MQTT users, trust keys, releases, policy,
    /// advisories, the upstream outbox, web accounts and sessions, the key-encryption key and
    /// the TLS key — and start it again as a new hub.
    pub fn factory_reset(&self) {
        tracing::warn!(
            "factory reset requested by the owner: the hub stops, erases its data directory and starts as a new hub"
        );
        self.reset.cancel();
    }

    /// Runs `f` on the link's thread with the driver in hand; its result.
    async fn on_link<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Driver) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        let cmd = LinkCommand::new(move |driver| {
            let _ = tx.send(f(driver));
        });
        self.link.send(cmd).await.map_err(|_| ApiError::Stopped)?;
        rx.await.map_err(|_| ApiError::Stopped)
    }

    /// Arms pairing.
    pub async fn pair_open(&self, seconds: Option<u64>) -> Result<PairingStatus, ApiError> {
        if seconds.is_some_and(|s| s == 0 || s > 3600) {
            return Err(ApiError::BadRequest("seconds must be 1 to 3600".into()));
        }
        self.on_link(move |d| d.pair_open(seconds)).await
    }

    /// Disarms pairing.
    pub async fn pair_close(&self) -> Result<PairingStatus, ApiError> {
        self.on_link(Driver::pair_close).await
    }

    /// Types a PIN and waits for the attempt to end (one attempt at a time); returns the id of
    /// the paired device, or why the attempt failed.
    pub async fn pair_pin(
        &self,
        pin: String,
        serial: Option<String>,
        device: Option<DeviceId>,
        replaces: Option<DeviceId>,
        accept_risk: bool,
    ) -> Result<String, ApiError> {
        if let Some(old) = &replaces {
            self.directory.replaceable(old).map_err(|e| directory_error(*old, e))?;
        }
        let device = device.map(|d| d.kid());
        let (reply, outcome) = oneshot::channel();
        let entry = PinEntry { pin, serial, device, replaces, accept_risk, reply };
        self.on_link(move |d| d.queue_pin(entry)).await?;
        let kid = outcome.await.map_err(|_| ApiError::Stopped)?.map_err(ApiError::Command)?;
        if let Some(old) = replaces {
            let new = kid.into();
            self.on_link(move |d| d.replace(old, new)).await?.map_err(ApiError::Command)?;
        }
        Ok(kid.to_string())
    }

    /// Pairing status.
    pub async fn pairing(&self) -> Result<PairingStatus, ApiError> {
        self.on_link(|d| d.pairing_status()).await
    }

    /// All devices, by name.
    pub async fn devices(&self) -> Result<Vec<DeviceView>, ApiError> {
        let store = self.store.clone();
        let snapshots = self.directory.list();
        let views = tokio::task::spawn_blocking(move || -> Result<Vec<DeviceView>, ApiError> {
            let mut out = Vec::with_capacity(snapshots.len());
            for device in snapshots {
                let kid = device.info.id.kid();
                out.push(DeviceView { readings: store.reading_count(&kid)?, device, update: None });
            }
            Ok(out)
        })
        .await
        .map_err(|_| ApiError::Stopped)??;
        Ok(views)
    }

    /// One device, with its update history.
    pub async fn device(&self, id: DeviceId) -> Result<DeviceView, ApiError> {
        let kid = id.kid();
        let device = self.directory.get(&id).ok_or(ApiError::NotFound(id))?;
        let store = self.store.clone();
        let readings = tokio::task::spawn_blocking(move || store.reading_count(&kid))
            .await
            .map_err(|_| ApiError::Stopped)??;
        let mut d = DeviceView { device, readings, update: None };
        d.update = self.update_history(id).await?;
        if let Some(u) = &d.update {
            d.device.info.about.firmware_version = u.installed;
        }
        Ok(d)
    }

    /// The update overview.
    pub async fn updates(&self) -> Result<crate::updates::UpdatesView, ApiError> {
        self.on_link(|d| d.updates().view(crate::clock::unix_now())).await
    }

    /// A device's update state and history.
    pub async fn update_history(
        &self,
        id: DeviceId,
    ) -> Result<Option<crate::updates::DeviceUpdate>, ApiError> {
        let kid = id.kid();
        self.on_link(move |d| d.updates().history(&kid)).await
    }

    /// Adds a release (owner upload, or the feed): verified before anything else.
    pub async fn update_add(
        &self,
        manifest: Vec<u8>,
        image: Vec<u8>,
        source: &'static str,
    ) -> Result<(String, u32), ApiError> {
        self.on_link(move |d| d.update_add(manifest, image, source))
            .await?
            .map_err(ApiError::Command)
    }

    /// Pins a manufacturer key; returns its key id.
    pub async fn trust(&self, model: String, key: String) -> Result<String, ApiError> {
        self.on_link(move |d| d.change_updates(|u| u.trust(&model, &key)))
            .await?
            .map_err(|e| ApiError::Command(e.into()))
    }

    /// Sets a policy.
    pub async fn update_policy(
        &self,
        device: Option<DeviceId>,
        policy: Option<crate::updates::Policy>,
    ) -> Result<(), ApiError> {
        let device = device.map(|d| d.kid());
        self.on_link(move |d| d.change_updates(|u| u.set_policy(device.as_ref(), policy)))
            .await?
            .map_err(|e| ApiError::Command(e.into()))
    }

    /// Approves a version.
    pub async fn update_approve(
        &self,
        device: Option<DeviceId>,
        model: Option<String>,
        version: u32,
    ) -> Result<(), ApiError> {
        let device = device.map(|d| d.kid());
        self.on_link(move |d| {
            d.change_updates(|u| u.approve(device.as_ref(), model.as_deref(), version))
        })
        .await?
        .map_err(|e| ApiError::Command(e.into()))
    }

    /// Cancels delivery to a device.
    pub async fn update_cancel(&self, device: DeviceId) -> Result<Option<u32>, ApiError> {
        let device = device.kid();
        self.on_link(move |d| d.update_cancel(device)).await
    }

    /// Retries now.
    pub async fn update_retry(&self, device: DeviceId) -> Result<(), ApiError> {
        let device = device.kid();
        self.on_link(move |d| d.change_updates(|u| u.retry_now(&device))).await
    }

    /// A device's newest readings, oldest first; a replacement's include those of the devices
    /// it replaced (its history, TR 103 621 6.23 example 1).
    pub async fn readings(
        &self,
        id: DeviceId,
        limit: Option<usize>,
    ) -> Result<Vec<StoredReading>, ApiError> {
        let mut kids = vec![id.kid()];
        if let Some(d) = self.directory.get(&id) {
            kids.extend(d.replaces.iter().map(DeviceId::kid));
        }
        let limit = limit.unwrap_or(20).min(10_000);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<StoredReading>, ApiError> {
            let mut all = Vec::new();
            for kid in &kids {
                all.extend(store.readings(kid, limit)?);
            }
            all.sort_by_key(|r| r.time_ms);
            let skip = all.len().saturating_sub(limit);
            Ok(all.split_off(skip))
        })
        .await
        .map_err(|_| ApiError::Stopped)?
    }

    /// Removes a device (EN 303 645 5.11-1: its data is erased with it).
    pub async fn remove(&self, id: DeviceId) -> Result<(), ApiError> {
        let kid = id.kid();
        if self.on_link(move |d| d.remove(kid)).await? {
            Ok(())
        } else {
            Err(ApiError::NotFound(id))
        }
    }

    /// Names a device.
    pub async fn rename(&self, id: DeviceId, name: &str) -> Result<(), ApiError> {
        self.directory.rename(&id, name).map_err(|e| directory_error(id, e))
    }

    /// Puts a device in a room.
    pub async fn set_room(&self, id: DeviceId, room: Option<&str>) -> Result<(), ApiError> {
        self.directory.set_room(&id, room).map_err(|e| directory_error(id, e))
    }

    /// Security advisories, oldest first, with the action taken per affected device.
    pub async fn advisories(&self) -> Result<Vec<crate::isolation::AdvisoryRecord>, ApiError> {
        self.on_link(|d| d.advisories().to_vec()).await
    }

    /// Adds a signed advisory (from the feed or the owner): verified like a manifest, then
    /// every affected device gets its fix scheduled or is isolated.
    pub async fn advisory_add(
        &self,
        signed: Vec<u8>,
        source: &'static str,
    ) -> Result<crate::isolation::AdvisoryRecord, ApiError> {
        self.on_link(move |d| d.add_advisory(&signed, source)).await?.map_err(ApiError::Command)
    }

    /// The owner overrides a device's isolation (explicit and logged, TR 103 621 6.23).
    pub async fn unisolate(&self, id: DeviceId) -> Result<(), ApiError> {
        self.on_link(move |d| d.unisolate(id)).await?.map_err(|e| match e {
            LinkError::Directory(e) => directory_error(id, e),
            e => ApiError::Command(e),
        })
    }

    /// Queues a command for `device` (an actuator that is not isolated), sent with the
    /// acknowledgement of its next report.
    pub async fn command(
        &self,
        device: DeviceId,
        command: protocol::link::command::Command,
    ) -> Result<(), ApiError> {
        if !self.directory.outgoing_allowed(&device) {
            return Err(ApiError::NotFound(device));
        }
        let kid = device.kid();
        if self.on_link(move |d| d.actuate(kid, command)).await? {
            Ok(())
        } else {
            Err(ApiError::NotFound(device))
        }
    }

    fn mqtt_auth(&self) -> Result<std::sync::Arc<crate::mqtt::auth::Auth>, ApiError> {
        self.mqtt.clone().ok_or_else(|| ApiError::BadRequest("MQTT is disabled".into()))
    }

    /// Adds an MQTT user; returns the generated password if none was given (shown once).
    pub async fn mqtt_user_add(
        &self,
        name: String,
        password: Option<String>,
        admin: bool,
    ) -> Result<Option<String>, ApiError> {
        let auth = self.mqtt_auth()?;
        let password = password.map(zeroize::Zeroizing::new);
        auth.add_user(&name, password.as_deref().map(|p| p.as_str()), admin)
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))
    }

    /// Removes an MQTT user.
    pub async fn mqtt_user_remove(&self, name: String) -> Result<(), ApiError> {
        let auth = self.mqtt_auth()?;
        tokio::task::spawn_blocking(move || auth.remove_user(&name))
            .await
            .map_err(|_| ApiError::Stopped)?
            .map_err(|e| ApiError::BadRequest(e.to_string()))
    }

    /// The MQTT users.
    pub fn mqtt_users(&self) -> Result<Vec<crate::mqtt::auth::UserView>, ApiError> {
        Ok(self.mqtt_auth()?.users())
    }

    /// The upstream bridge's status (`configured: false` without one: the hub is local only).
    pub fn upstream(&self) -> UpstreamAnswer {
        UpstreamAnswer {
            configured: self.upstream.is_some(),
            status: self.upstream.as_ref().map(crate::upstream::UpstreamHandle::status),
        }
    }
}
