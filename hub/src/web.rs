//! The owner's web UI in the hub: `web_ui::OwnerApi` implemented on the one command API
//! ([`HubApi`]), the web vault (owner account) and the web login records (per-account back-offs,
//! device cookies; a restart must not reset them, EN 303 645 5.1-5) sealed under the
//! key-encryption key (5.4-1), the one-time setup code made from the hub's CSPRNG at first start
//! and after an erase (5.1-1/5.1-2) — kept only in its 0600 file, never printed or logged (the
//! console and the journal say where the file is) — and HTTPS with the hub's own certificate
//! (5.5-1), served within the web listener's slots and deadlines and accepting state changes
//! only from pages served under the certificate's names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::vocabulary::{Command, Kind, Quantity};
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use web_ui::api::{
    ApiError as WebError, ApiFuture, Availability, Check, Counter, Device, HistoryLine, Pairing,
    Policy as WebPolicy, Reading, ReadingKind, Release, Setpoint, Updates,
};

use crate::api::{ApiError, HubApi};
use crate::device_id::DeviceId;
use crate::devices::Availability as DirAvailability;
use crate::store::{Kek, SealError, Write};
use crate::updates::Policy;

/// The sticker: the one-time setup code, readable by the hub's user only.
pub const SETUP_CODE_FILE: &str = "setup-code";
/// The web UI's sealed documents, kept in the store's meta table like the hub's other secrets.
#[derive(Debug, Clone, Copy)]
enum Sealed {
    /// The owner account.
    Vault,
    /// The web login throttle's durable records.
    Logins,
}

impl Sealed {
    /// (meta key, associated data binding the sealed bytes to their purpose, the file an
    /// earlier version kept it in: read once, removed at the next write).
    fn names(self) -> (&'static str, &'static [u8], &'static str) {
        match self {
            Sealed::Vault => ("web_vault", b"hearth web vault", "web-vault.sealed"),
            Sealed::Logins => ("web_logins", b"hearth web logins", "web-logins.sealed"),
        }
    }
}

/// The running web UI.
#[derive(Debug)]
pub(crate) struct WebInfo {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// The server task.
    pub(crate) task: JoinHandle<()>,
}

/// Why the web UI could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebStartError {
    /// The certificate.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The vault or the setup code.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Files.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The store (the sealed vault and login records are kept there).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The port.
    #[error("cannot bind the web UI to {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The setup code could not be hashed.
    #[error("setup code: {0}")]
    Setup(#[from] web_ui::auth::AuthError),
    /// The hashing budget refused the setup code's hash.
    #[error("setup code: {0}")]
    Hashing(#[from] admission::Refused),
}

/// Starts the web UI: prints the address, the certificate fingerprint and, while no owner
/// account exists, where the one-time setup code is.
pub(crate) async fn start(
    config: &crate::config::Config,
    data_dir: &Path,
    api: HubApi,
    budget: admission::HashBudget,
    shutdown: CancellationToken,
) -> Result<WebInfo, WebStartError> {
    let slots = api.listeners.web.clone();
    let bind = config.web.bind;
    let names = crate::identity::default_names(&config.certificate_names());
    let identity = crate::identity::Identity::load_or_create(data_dir, &names)?;
    let tls = identity.server_config(&[b"http/1.1"])?;
    let owner = Arc::new(HubOwner {
        api,
        data_dir: data_dir.to_path_buf(),
        kek: Kek::load_or_create(&data_dir.join("kek"))?,
        rng: Mutex::new(crate::rng::os_seeded()),
        fingerprint: identity.fingerprint(),
        cert_pem: identity.cert_pem.clone(),
        budget: budget.clone(),
        commands: std::sync::atomic::AtomicU32::new(0),
    });
    owner.ensure_setup_code().await?;
    let listener =
        tokio::net::TcpListener::bind(bind).await.map_err(|e| WebStartError::Bind(bind, e))?;
    let addr = listener.local_addr().map_err(|e| WebStartError::Bind(bind, e))?;
    let fingerprint = identity.fingerprint();
    println!("Web UI: https://{addr}/ — certificate SHA-256 fingerprint {fingerprint}");
    let web =
        web_ui::Web::new(owner.clone(), budget, config.login.policy(), web_ui::system_clock())
            .await;
    let router = web_ui::router(web);
    let w = &config.web;
    let options = web_ui::serve::ServeOptions {
        slots,
        handshake_timeout: Duration::from_millis(w.handshake_timeout_ms),
        header_timeout: Duration::from_millis(w.header_timeout_ms),
        body_timeout: Duration::from_millis(w.body_timeout_ms),
        // The names the certificate carries, on the port actually served.
        origins: Arc::new(web_ui::guard::Origins::new(&names, addr.port())),
    };
    let task = tokio::spawn(web_ui::serve(listener, tls, router, options, shutdown));
    Ok(WebInfo { addr, task })
}

/// The hub as the web UI sees it.
struct HubOwner {
    api: HubApi,
    data_dir: PathBuf,
    kek: Kek,
    rng: Mutex<ChaCha20Rng>,
    fingerprint: String,
    /// The certificate it serves (PEM), offered for download to trust the hub by.
    cert_pem: String,
    budget: admission::HashBudget,
    /// The last command id the web UI used (see [`WEB_COMMAND_IDS`]).
    commands: std::sync::atomic::AtomicU32,
}

impl HubOwner {
    /// A sealed document of the web UI (`id`: the vault or the login records), opened: from
    /// the store like every other secret, or from the file an earlier version kept it in.
    fn read_sealed(&self, doc: Sealed) -> Result<Option<Vec<u8>>, WebStartError> {
        let (key, id, legacy) = doc.names();
        let sealed = match self.api.store.meta(key)? {
            Some(v) if v.is_empty() => None, // erased
            Some(v) => Some(v),
            None => {
                let path = self.data_dir.join(legacy);
                match std::fs::read(&path) {
                    Ok(v) => Some(v),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(WebStartError::Io(path, e)),
                }
            }
        };
        Ok(match sealed {
            Some(s) => Some(self.kek.open(id, &s)?.to_vec()),
            None => None,
        })
    }

    /// Seals `doc` into the store, durable before it returns (the web UI answers after it);
    /// `None` erases it. An earlier version's file of it goes.
    fn write_sealed(&self, doc: Sealed, plain: Option<&[u8]>) -> Result<(), WebStartError> {
        let (key, id, legacy) = doc.names();
        let value = match plain {
            Some(plain) => self.kek.seal(id, plain)?,
            None => Vec::new(),
        };
        self.api.store.commit(&[Write::Meta { key: key.into(), value }])?;
        let path = self.data_dir.join(legacy);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(WebStartError::Io(path, e)),
            _ => Ok(()),
        }
    }

    fn read_vault(&self) -> Result<Option<Vec<u8>>, WebStartError> {
        self.read_sealed(Sealed::Vault)
    }

    fn write_vault(&self, doc: &[u8]) -> Result<(), WebStartError> {
        self.write_sealed(Sealed::Vault, Some(doc))
    }

    /// While no owner exists there is a setup code: the sticker file, and its hash in the vault.
    /// A new one is made at first start, after an erase, or when the sticker was lost.
    async fn ensure_setup_code(&self) -> Result<(), WebStartError> {
        let vault = self.read_vault()?.and_then(|b| web_ui::Vault::parse(&b));
        if vault.as_ref().is_some_and(|v| !v.needs_setup()) {
            return Ok(());
        }
        let sticker = self.data_dir.join(SETUP_CODE_FILE);
        let kept = matches!((&vault, std::fs::read_to_string(&sticker)), (Some(v), Ok(_)) if v.setup.is_some());
        if !kept {
            self.new_setup_code().await?;
        }
        // The code itself goes to no console or journal: only into the file.
        println!(
            "Hearth setup: no owner account yet. The one-time setup code is in {} (readable by \
             the hub's user only)",
            sticker.display()
        );
        Ok(())
    }

    async fn new_setup_code(&self) -> Result<(), WebStartError> {
        let (code, vault) = self.make_setup_code().await?;
        self.install_setup_code(&code, &vault)
    }

    /// A new one-time setup code and the first-run vault holding its hash (made under the
    /// hashing budget: it may wait in its queue, or be refused while the budget is full).
    async fn make_setup_code(&self) -> Result<(String, Vec<u8>), WebStartError> {
        let mut random = [0u8; web_ui::auth::CODE_LEN];
        self.random_bytes(&mut random);
        let code = web_ui::setup_code(&random);
        let hashed = code.clone();
        let vault = self.budget.run(move |h| web_ui::Vault::first_run(&hashed, h)).await??;
        Ok((code, vault))
    }

    /// Writes the sticker file and the vault that accepts only its code.
    fn install_setup_code(&self, code: &str, vault: &[u8]) -> Result<(), WebStartError> {
        let sticker = self.data_dir.join(SETUP_CODE_FILE);
        crate::private_fs::write(&sticker, format!("{code}\n").as_bytes())
            .map_err(|e| WebStartError::Io(sticker, e))?;
        self.write_vault(vault)
    }

    fn random_bytes(&self, buf: &mut [u8]) {
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).fill_bytes(buf);
    }

    async fn history(&self, id: DeviceId) -> Option<crate::updates::DeviceUpdate> {
        self.api.update_history(id).await.ok().flatten()
    }

    async fn to_device(&self, view: crate::api::DeviceView) -> Device {
        let d = view.device;
        let info = d.info;
        let firmware = match self.history(info.id).await {
            Some(u) => u.installed,
            None => info.about.firmware_version,
        };
        // The newest value of each quantity, in the order of the declared capabilities (the
        // vocabulary says which quantity each reports), the battery last.
        let mut last: Vec<Reading> = d.state.into_values().map(reading).collect();
        let rank = |r: &Reading| {
            let declared =
                info.about.capabilities.iter().position(|c| {
                    Quantity::from_capability(c).is_some_and(|q| q.senml() == r.name)
                });
            (r.kind == ReadingKind::Battery, declared.unwrap_or(usize::MAX))
        };
        last.sort_by_key(rank);
        let isolated = d.availability == DirAvailability::Isolated;
        let setpoint = (!isolated && takes_setpoint(&info.about.capabilities)).then(|| Setpoint {
            min: *Command::Setpoint.range().start(),
            max: *Command::Setpoint.range().end(),
            unit: "°C".into(),
            current: last.iter().find(|r| r.name == Command::Setpoint.name()).and_then(|r| r.value),
        });
        let availability = match (d.availability, d.isolation.filter(|i| i.active())) {
            (DirAvailability::Isolated, Some(i)) => {
                let reason = match i.advisory {
                    Some(a) => format!("{} (advisory: {a})", i.reason),
                    None => i.reason,
                };
                Availability::Isolated { reason, replacement: i.replacement }
            }
            (DirAvailability::Isolated, None) => Availability::Isolated {
                reason: "isolated by the hub".into(),
                replacement: "Replace it: pair a new sensor in its place.".into(),
            },
            (DirAvailability::Online, _) => Availability::Online,
            (DirAvailability::Offline, _) => Availability::Offline,
        };
        Device {
            id: info.id.to_string(),
            name: (d.name != info.about.serial).then_some(d.name),
            room: d.room,
            model: info.about.model,
            serial: info.about.serial,
            firmware,
            updatable: info.about.updatable,
            verifies_signatures: info.about.verifies_signatures,
            capabilities: info.about.capabilities,
            support_end: info.about.support_end.0,
            paired_at: info.paired_at,
            availability,
            last,
            setpoint,
        }
    }
}

/// Whether a device with these declared capabilities takes a setpoint command.
fn takes_setpoint(capabilities: &[String]) -> bool {
    capabilities.iter().any(|c| {
        Quantity::from_capability(c).and_then(Quantity::command) == Some(Command::Setpoint)
    })
}

/// Web commands get ids from the top half of the range (MQTT's count up from 0), so the two
/// never send the same id to a sensor.
const WEB_COMMAND_IDS: u32 = 1 << 31;

fn reading(r: crate::store::StoredReading) -> Reading {
    // SenML names are `urn:dev:<serial>:<quantity>`: the quantity is what the owner reads.
    let name = protocol::vocabulary::short_name(&r.name).to_owned();
    let quantity = Quantity::from_senml(&name);
    // What the vocabulary calls it (`Temperature`, `CO₂`); an unknown quantity by its name.
    let label = quantity.map_or_else(|| name.clone(), |q| q.label().to_owned());
    // States in words (the vocabulary's): a contact is open or closed, a button pressed or
    // released.
    let words = match quantity.map(Quantity::kind) {
        Some(Kind::State { on, off }) => Some((on, off)),
        Some(Kind::Event { happened, idle }) => Some((happened, idle)),
        _ => None,
    };
    let on = match &r.value {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::Number(n) => n.as_f64().map(|v| v != 0.0),
        _ => None,
    };
    if let (Some((yes, no)), Some(on)) = (words, on) {
        return Reading {
            time_ms: r.time_ms,
            name,
            label,
            unit: None,
            value: Some(f64::from(u8::from(on))),
            text: if on { yes } else { no }.to_owned(),
            kind: ReadingKind::State,
        };
    }
    let kind = match quantity {
        Some(Quantity::Battery) => ReadingKind::Battery,
        _ => ReadingKind::Measure,
    };
    let (value, text) = match &r.value {
        serde_json::Value::Bool(b) => {
            (Some(f64::from(u8::from(*b))), if *b { "on" } else { "off" }.to_owned())
        }
        serde_json::Value::Number(n) => {
            let v = n.as_f64();
            let text = match v {
                Some(v) if v.fract() != 0.0 => format!("{v:.1}"),
                _ => n.to_string(),
            };
            (v, text)
        }
        serde_json::Value::String(s) => (None, s.clone()),
        other => (None, other.to_string()),
    };
    // Units as people write them (°C, % RH), the same as `hub ctl` shows.
    let unit = r
        .unit
        .as_deref()
        .map(protocol::vocabulary::Unit::display)
        .filter(|u| !u.is_empty())
        .map(str::to_owned);
    Reading { time_ms: r.time_ms, name, label, unit, value, text, kind }
}

fn web_err(e: ApiError) -> WebError {
    match e {
        ApiError::NotFound(_) => WebError::NotFound,
        ApiError::BadRequest(s) => WebError::Refused(s),
        ApiError::Command(c) => WebError::Refused(c.to_string()),
        ApiError::Stopped => WebError::Unavailable("the hub is shutting down".into()),
        ApiError::Store(s) => WebError::Unavailable(s.to_string()),
    }
}

fn device_id(id: &str) -> Result<DeviceId, WebError> {
    id.parse().map_err(|_| WebError::NotFound)
}

fn pairing(p: crate::api::PairingStatus) -> Pairing {
    Pairing {
        open: p.open,
        closes_in_s: p.closes_in_s,
        attempts_left: p.attempts_left,
        backoff_s: p.backoff_s,
        warnings: p
            .waiting
            .iter()
            .filter_map(|w| Some((w.serial.clone(), w.warning.clone()?)))
            .collect(),
        waiting: p.waiting.into_iter().map(|w| (w.serial, w.model)).collect(),
    }
}

fn unavailable(e: WebStartError) -> WebError {
    WebError::Unavailable(e.to_string())
}

impl web_ui::OwnerApi for HubOwner {
    fn devices(&self) -> ApiFuture<'_, Vec<Device>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for v in self.api.devices().await.map_err(web_err)? {
                out.push(self.to_device(v).await);
            }
            Ok(out)
        })
    }

    fn device(&self, id: &str) -> ApiFuture<'_, (Device, Vec<HistoryLine>)> {
        let id = device_id(id);
        Box::pin(async move {
            let view = self.api.device(id?).await.map_err(web_err)?;
            let history = view
                .update
                .as_ref()
                .map(|u| {
                    u.history
                        .iter()
                        .map(|h| HistoryLine {
                            at: h.at,
                            version: h.version,
                            event: format!("{:?}", h.event).to_lowercase(),
                            detail: h.detail.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok((self.to_device(view).await, history))
        })
    }

    fn readings(&self, id: &str, limit: usize) -> ApiFuture<'_, Vec<Reading>> {
        let id = device_id(id);
        Box::pin(async move {
            let r = self.api.readings(id?, Some(limit)).await.map_err(web_err)?;
            Ok(r.into_iter().map(reading).collect())
        })
    }

    fn remove(&self, id: &str) -> ApiFuture<'_, ()> {
        let id = device_id(id);
        Box::pin(async move { self.api.remove(id?).await.map_err(web_err) })
    }

    fn pairing(&self) -> ApiFuture<'_, Pairing> {
        Box::pin(async move { self.api.pairing().await.map(pairing).map_err(web_err) })
    }

    fn pair_open(&self, seconds: u64) -> ApiFuture<'_, Pairing> {
        Box::pin(
            async move { self.api.pair_open(Some(seconds)).await.map(pairing).map_err(web_err) },
        )
    }

    fn pair_close(&self) -> ApiFuture<'_, Pairing> {
        Box::pin(async move { self.api.pair_close().await.map(pairing).map_err(web_err) })
    }

    fn pair_pin(
        &self,
        pin: String,
        serial: Option<String>,
        replaces: Option<String>,
        accept_risk: bool,
    ) -> ApiFuture<'_, String> {
        let replaces = replaces.map(|r| device_id(&r)).transpose();
        Box::pin(async move {
            self.api.pair_pin(pin, serial, None, replaces?, accept_risk).await.map_err(web_err)
        })
    }

    fn certificate(&self) -> (String, String) {
        (self.cert_pem.clone(), self.fingerprint.clone())
    }

    fn set_setpoint(&self, id: &str, value: f64) -> ApiFuture<'_, ()> {
        let id = device_id(id);
        Box::pin(async move {
            let id = id?;
            // The same checks as MQTT's `…/set`: a finite value in range, for a device that
            // declared a setpoint and is not isolated.
            let value =
                Command::Setpoint.check(value).map_err(|e| WebError::Refused(e.to_string()))?;
            let view = self.api.device(id).await.map_err(web_err)?;
            let d = &view.device;
            if d.availability == DirAvailability::Isolated
                || !takes_setpoint(&d.info.about.capabilities)
            {
                return Err(WebError::Refused(
                    crate::mqtt::topics::SetError::NotAllowed.to_string(),
                ));
            }
            let n = self.commands.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let command = protocol::link::command::Command {
                id: WEB_COMMAND_IDS | (n.wrapping_add(1) & !WEB_COMMAND_IDS),
                setting: Command::Setpoint,
                value,
            };
            self.api.command(id, command).await.map_err(web_err)?;
            tracing::info!(device = %id, value, "setpoint from the web UI queued for the sensor's next report");
            Ok(())
        })
    }

    fn label(&self, id: &str, name: String, room: Option<String>) -> ApiFuture<'_, ()> {
        let id = device_id(id);
        Box::pin(async move {
            let id = id?;
            self.api.rename(id, &name).await.map_err(web_err)?;
            self.api.set_room(id, room.as_deref()).await.map_err(web_err)
        })
    }

    fn updates(&self) -> ApiFuture<'_, Updates> {
        Box::pin(async move {
            let u = self.api.updates().await.map_err(web_err)?;
            Ok(Updates {
                policy: match u.policy {
                    Policy::Auto => WebPolicy::Auto,
                    Policy::NotifyOnly => WebPolicy::NotifyOnly,
                    Policy::Postponed { until } => WebPolicy::Postponed(until),
                    Policy::Disabled => WebPolicy::Disabled,
                },
                releases: u
                    .releases
                    .into_iter()
                    .map(|r| Release {
                        model: r.model,
                        version: r.version,
                        risks_mitigated: r.risks_mitigated,
                        disruptive: r.disruptive,
                        size: r.size,
                    })
                    .collect(),
                refused: u.refused.into_iter().map(|r| (r.at, r.source, r.reason)).collect(),
                devices: u
                    .devices
                    .into_iter()
                    .map(|d| web_ui::api::DeviceUpdate {
                        id: d.id.to_string(),
                        model: d.model,
                        installed: d.installed,
                        available: d.available,
                        waiting_for: d.waiting_for,
                        delivering: d.delivering,
                    })
                    .collect(),
            })
        })
    }

    fn set_policy(&self, policy: WebPolicy) -> ApiFuture<'_, ()> {
        let policy = match policy {
            WebPolicy::Auto => Policy::Auto,
            WebPolicy::NotifyOnly => Policy::NotifyOnly,
            WebPolicy::Postponed(until) => Policy::Postponed { until },
            WebPolicy::Disabled => Policy::Disabled,
        };
        Box::pin(async move { self.api.update_policy(None, Some(policy)).await.map_err(web_err) })
    }

    fn approve(&self, model: String, version: u32) -> ApiFuture<'_, ()> {
        Box::pin(async move {
            self.api.update_approve(None, Some(model), version).await.map_err(web_err)
        })
    }

    fn counters(&self) -> ApiFuture<'_, Vec<Counter>> {
        Box::pin(async move {
            let report = self.api.security().await.map_err(web_err)?;
            let values = crate::security::counts(&report);
            // The security events (bookkeeping such as retransmissions is not shown), the web
            // UI's own first, in the catalogue's order.
            let mut rows: Vec<Counter> = protocol::security::COUNTERS
                .iter()
                .filter(|c| c.event)
                .filter_map(|c| {
                    let recent = report.recent.get(c.name).copied().unwrap_or(0);
                    Some(Counter {
                        name: c.name.to_owned(),
                        label: c.label.to_owned(),
                        value: *values.get(c.name)?,
                        recent,
                        anomaly: report.anomalies.iter().any(|a| a == c.name),
                    })
                })
                .collect();
            rows.sort_by_key(|r| !r.name.starts_with("web_"));
            Ok(rows)
        })
    }

    fn count(&self, event: web_ui::state::WebEvent) {
        self.api.monitor.web_event(event);
    }

    fn checks(&self) -> ApiFuture<'_, Vec<Check>> {
        Box::pin(async move {
            crate::api::security_checks(&self.api, Some(&self.fingerprint)).await.map_err(web_err)
        })
    }

    fn load_vault(&self) -> ApiFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move { self.read_vault().map_err(unavailable) })
    }

    fn store_vault(&self, doc: Vec<u8>) -> ApiFuture<'_, ()> {
        Box::pin(async move { self.write_vault(&doc).map_err(unavailable) })
    }

    fn load_logins(&self) -> ApiFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move { self.read_sealed(Sealed::Logins).map_err(unavailable) })
    }

    fn store_logins(&self, doc: Vec<u8>) -> ApiFuture<'_, ()> {
        Box::pin(async move { self.write_sealed(Sealed::Logins, Some(&doc)).map_err(unavailable) })
    }

    fn setup_done(&self) -> ApiFuture<'_, ()> {
        Box::pin(async move {
            let path = self.data_dir.join(SETUP_CODE_FILE);
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(unavailable(WebStartError::Io(path, e))),
            }
        })
    }

    fn erase_all(&self) -> ApiFuture<'_, ()> {
        Box::pin(async move {
            // The account goes at once (nobody logs in with it while the hub restarts); the
            // rest goes with the data directory once the hub has stopped (a factory reset).
            for doc in [Sealed::Vault, Sealed::Logins] {
                self.write_sealed(doc, None).map_err(unavailable)?;
            }
            self.api.factory_reset();
            Ok(())
        })
    }

    fn random(&self, buf: &mut [u8]) {
        self.random_bytes(buf);
    }
}
