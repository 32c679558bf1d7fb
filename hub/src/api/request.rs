//! Every owner command, defined once: its arguments (a struct here, the control socket's JSON
//! `{"cmd": "<name>", ...}`), its typed answer and its handler (a [`HubApi`] method), bound
//! by [`Command`]. `hub ctl`, the control socket and the web UI all go through these.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::answer::StatusAnswer;
use super::answer::{
    Approved, Cancelled, DeviceView, Done, FactoryResetStarted, Paired, ReleaseAdded, Removed,
    Renamed, RoomSet, SecurityReport, Trusted, Unisolated, UpdatesAnswer, UpstreamAnswer,
    UserAdded,
};
use super::{ApiError, HubApi};
use crate::device_id::DeviceId;
use crate::store::StoredReading;

/// One owner command: its arguments are `Self`, its answer `Self::Answer`.
pub trait Command: Into<Request> + Send {
    /// What the hub answers.
    type Answer: Serialize + DeserializeOwned + Send;
    /// Runs it (the command's one handler).
    fn run(self, api: &HubApi) -> impl Future<Output = Result<Self::Answer, ApiError>> + Send;
}

/// Defines [`Request`] (one variant per command, tagged by `cmd`), the conversions into it,
/// and [`HubApi::handle`], from the list of commands.
macro_rules! requests {
    ($( $(#[$doc:meta])* $variant:ident, )*) => {
        /// A request to the hub (the control socket's JSON: `{"cmd": "pair_open", ...}`).
        #[derive(Debug, Clone, Serialize, Deserialize)]
        #[serde(tag = "cmd", rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum Request {
            $( $(#[$doc])* $variant($variant), )*
        }

        $(
            impl From<$variant> for Request {
                fn from(c: $variant) -> Self {
                    Self::$variant(c)
                }
            }
        )*

        impl HubApi {
            /// Runs one request; its answer as JSON (`{"error": "..."}` when refused).
            pub async fn handle(&self, req: Request) -> serde_json::Value {
                match req {
                    $( Request::$variant(c) => reply(c.run(self).await), )*
                }
            }
        }
    };
}

fn reply<T: Serialize>(r: Result<T, ApiError>) -> serde_json::Value {
    match r.map(|a| serde_json::to_value(a)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => serde_json::json!({"error": format!("answer not encodable: {e}")}),
        Err(e) => serde_json::json!({"error": e.to_string()}),
    }
}

requests! {
    /// Arm pairing for a bounded window.
    PairOpen,
    /// Disarm pairing.
    PairClose,
    /// Type the PIN shown on a sensor.
    PairPin,
    /// Pairing window and waiting sensors.
    Pairing,
    /// Factory reset.
    FactoryReset,
    /// Back up the hub to a file.
    Backup,
    /// All devices.
    Devices,
    /// One device.
    Device,
    /// A device's newest readings.
    Readings,
    /// Remove a device and erase its data.
    Remove,
    /// Name a device.
    Rename,
    /// Put a device in a room.
    Room,
    /// Security advisories and what the hub did about them.
    Advisories,
    /// Add an advisory given by the owner.
    AdvisoryAdd,
    /// Override an isolation.
    Unisolate,
    /// Security-event counters.
    Security,
    /// The hub's EN 303 645 self-check.
    SecurityCheck,
    /// Updates: releases, refusals, devices waiting or under way, the feed.
    Updates,
    /// Add a release given by the owner.
    UpdateAdd,
    /// Pin a manufacturer key for a model.
    Trust,
    /// Set the update policy for the hub or one device.
    UpdatePolicy,
    /// Approve a version.
    UpdateApprove,
    /// Cancel delivery to a device.
    UpdateCancel,
    /// Retry a device's update now.
    UpdateRetry,
    /// The upstream bridge.
    Upstream,
    /// Add an MQTT user.
    MqttUserAdd,
    /// Remove an MQTT user.
    MqttUserRemove,
    /// List the MQTT users.
    MqttUsers,
    /// The hub's health (a full or failing disk).
    Status,
}

/// Defines a command's argument struct and binds it to its answer and handler:
/// `command!(Name { fields } -> Answer, |self, api| handler)`.
macro_rules! command {
    ($(#[$doc:meta])* $name:ident { $( $(#[$fdoc:meta])* $field:ident : $ty:ty ),* $(,)? }
        -> $answer:ty, |$this:ident, $api:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $( $(#[$fdoc])* pub $field: $ty, )*
        }

        impl Command for $name {
            type Answer = $answer;
            async fn run($this, $api: &HubApi) -> Result<$answer, ApiError> {
                $body
            }
        }
    };
}

command! {
    /// Arm pairing for a bounded window.
    PairOpen {
        /// Window length, 1 to 3600 s (default from the configuration).
        #[serde(default)]
        seconds: Option<u64>,
    } -> crate::link::PairingStatus, |self, api| api.pair_open(self.seconds).await
}

command! {
    /// Disarm pairing.
    PairClose {} -> crate::link::PairingStatus, |self, api| api.pair_close().await
}

command! {
    /// Type the PIN shown on a sensor (name it by serial or device id if several wait).
    PairPin {
        /// The digits.
        pin: String,
        /// Serial of the sensor whose display shows the PIN.
        #[serde(default)]
        serial: Option<String>,
        /// Or its device id.
        #[serde(default)]
        device: Option<DeviceId>,
        /// A device the new sensor replaces (it inherits name, room and history; the old
        /// sensor's keys are erased).
        #[serde(default)]
        replaces: Option<DeviceId>,
        /// The owner read the sensor's warning (past its support period, under an advisory)
        /// and pairs it anyway.
        #[serde(default)]
        accept_risk: bool,
    } -> Paired, |self, api| {
        let replaces = self.replaces;
        let pairing = api
            .pair_pin(self.pin, self.serial, self.device, replaces, self.accept_risk)
            .await?;
        Ok(Paired { pairing, replaces })
    }
}

command! {
    /// Pairing window and waiting sensors.
    Pairing {} -> crate::link::PairingStatus, |self, api| api.pairing().await
}

command! {
    /// Factory reset: everything in the data directory is erased and the hub restarts as a new
    /// hub (new key-encryption key, certificate and setup code).
    FactoryReset {
        /// The word that confirms it: `ERASE`.
        confirm: String,
    } -> FactoryResetStarted, |self, api| {
        if self.confirm != "ERASE" {
            return Err(ApiError::BadRequest("type ERASE to confirm the factory reset".into()));
        }
        api.factory_reset();
        Ok(FactoryResetStarted { factory_reset: true })
    }
}

command! {
    /// Back up everything the owner set up to a file encrypted under the owner's passphrase
    /// (`crate::backup`), made by the running hub at one consistent point of its store.
    Backup {
        /// Where (an absolute path on the hub's machine; replaced atomically).
        path: std::path::PathBuf,
        /// The owner's passphrase.
        passphrase: crate::backup::Passphrase,
    } -> crate::backup::Summary, |self, api| api.backup(self.path, self.passphrase).await
}

command! {
    /// All devices, by name.
    Devices {} -> Vec<DeviceView>, |self, api| api.devices().await
}

command! {
    /// One device, with its update history.
    Device {
        /// Device id.
        id: DeviceId,
    } -> DeviceView, |self, api| api.device(self.id).await
}

command! {
    /// A device's newest readings, oldest first.
    Readings {
        /// Device id.
        id: DeviceId,
        /// How many (default 20, at most 10,000).
        #[serde(default)]
        limit: Option<usize>,
    } -> Vec<StoredReading>, |self, api| api.readings(self.id, self.limit).await
}

command! {
    /// Remove a device: its keys, state and readings are erased.
    Remove {
        /// Device id.
        id: DeviceId,
    } -> Removed<DeviceId>, |self, api| {
        api.remove(self.id).await?;
        Ok(Removed { removed: self.id })
    }
}

command! {
    /// Name a device.
    Rename {
        /// Device id.
        id: DeviceId,
        /// New name.
        name: String,
    } -> Renamed, |self, api| {
        api.rename(self.id, &self.name).await?;
        Ok(Renamed { renamed: self.id })
    }
}

command! {
    /// Put a device in a room (none: no room).
    Room {
        /// Device id.
        id: DeviceId,
        /// Room.
        #[serde(default)]
        room: Option<String>,
    } -> RoomSet, |self, api| {
        api.set_room(self.id, self.room.as_deref()).await?;
        Ok(RoomSet { room: self.room })
    }
}

command! {
    /// Security advisories and what the hub did about them.
    Advisories {} -> Vec<crate::isolation::AdvisoryRecord>, |self, api| api.advisories().await
}

command! {
    /// Add an advisory given by the owner (COSE_Sign1, hex).
    AdvisoryAdd {
        /// The signed advisory, hex.
        advisory_hex: String,
    } -> crate::isolation::AdvisoryRecord, |self, api| {
        match protocol::hex::decode(&self.advisory_hex) {
            Some(b) => api.advisory_add(b, "owner").await,
            None => Err(ApiError::BadRequest("the advisory must be hex".into())),
        }
    }
}

command! {
    /// The owner's explicit override of an isolation (logged).
    Unisolate {
        /// Device id.
        id: DeviceId,
    } -> Unisolated, |self, api| {
        api.unisolate(self.id).await?;
        Ok(Unisolated { unisolated: self.id })
    }
}

command! {
    /// The hub's part of the live EN 303 645 self-check (5.12-3): each provision with the state
    /// that shows it, and for a check not met the devices concerned and what to do.
    SecurityCheck {} -> Vec<web_ui::api::Check>, |self, api| api.security_check().await
}

command! {
    /// Security-event counters (EN 303 645 5.10-1).
    Security {} -> SecurityReport, |self, api| api.security().await
}

command! {
    /// Updates: releases, refusals, devices waiting or under way, and the feed's checks.
    Updates {} -> UpdatesAnswer, |self, api| {
        let view = api.updates().await?;
        Ok(UpdatesAnswer { view, feed: api.feed.get() })
    }
}

command! {
    /// Add a release given by the owner (manifest and image as hex).
    UpdateAdd {
        /// COSE_Sign1 manifest, hex.
        manifest_hex: String,
        /// Image, hex.
        image_hex: String,
    } -> ReleaseAdded, |self, api| {
        let decode = protocol::hex::decode;
        match (decode(&self.manifest_hex), decode(&self.image_hex)) {
            (Some(m), Some(i)) => {
                let (model, version) = api.update_add(m, i, "owner").await?;
                Ok(ReleaseAdded { model, version })
            }
            _ => Err(ApiError::BadRequest("manifest and image must be hex".into())),
        }
    }
}

command! {
    /// Pin a manufacturer key for a model.
    Trust {
        /// Model designation.
        model: String,
        /// Hex SEC1 public key.
        key: String,
    } -> Trusted, |self, api| {
        let trusted = api.trust(self.model, self.key).await?;
        Ok(Trusted { trusted })
    }
}

command! {
    /// Set the update policy for the hub or one device.
    UpdatePolicy {
        /// Device (none: the hub's default).
        #[serde(default)]
        device: Option<DeviceId>,
        /// The policy (`null` on a device: follow the hub's).
        policy: Option<crate::updates::Policy>,
    } -> Done, |self, api| {
        api.update_policy(self.device, self.policy).await?;
        Ok(Done { ok: true })
    }
}

command! {
    /// Approve a version (disruptive or notify-only) for one device or all.
    UpdateApprove {
        /// One device.
        #[serde(default)]
        device: Option<DeviceId>,
        /// Or every device of this model.
        #[serde(default)]
        model: Option<String>,
        /// Version.
        version: u32,
    } -> Approved, |self, api| {
        api.update_approve(self.device, self.model, self.version).await?;
        Ok(Approved { approved: self.version })
    }
}

command! {
    /// Cancel delivery to a device.
    UpdateCancel {
        /// Device.
        device: DeviceId,
    } -> Cancelled, |self, api| {
        let cancelled = api.update_cancel(self.device).await?;
        Ok(Cancelled { cancelled })
    }
}

command! {
    /// Retry a device's update now (clears its back-off).
    UpdateRetry {
        /// Device.
        device: DeviceId,
    } -> Done, |self, api| {
        api.update_retry(self.device).await?;
        Ok(Done { ok: true })
    }
}

command! {
    /// The hub's health: whether its store can write (a full or failing disk), free space.
    Status {} -> StatusAnswer, |self, api| Ok(StatusAnswer {
        storage: api.store.status(),
        memory: crate::memory::now(),
    })
}

command! {
    /// The upstream bridge: connected, outbox lag, forwarded, dropped.
    Upstream {} -> UpstreamAnswer, |self, api| Ok(api.upstream())
}

command! {
    /// Add an MQTT user (EN 303 645 5.1-1: there is no default one).
    MqttUserAdd {
        /// User name.
        name: String,
        /// Password (none: one is generated and returned once).
        #[serde(default)]
        password: Option<String>,
        /// May make bridge requests over MQTT (`hearth/bridge/request/…`).
        #[serde(default)]
        admin: bool,
    } -> UserAdded, |self, api| {
        let password = api.mqtt_user_add(self.name.clone(), self.password, self.admin).await?;
        Ok(UserAdded { added: self.name, password })
    }
}

command! {
    /// Remove an MQTT user.
    MqttUserRemove {
        /// User name.
        name: String,
    } -> Removed<String>, |self, api| {
        api.mqtt_user_remove(self.name.clone()).await?;
        Ok(Removed { removed: self.name })
    }
}

command! {
    /// List the MQTT users.
    MqttUsers {} -> Vec<crate::mqtt::auth::UserView>, |self, api| api.mqtt_users()
}
