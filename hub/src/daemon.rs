//! Starting and stopping the hub: data directory, store, link driver, control socket
//! (mini-redis style `start(config, shutdown)`), its failure domains and the bounded stop.
//!
//! **Failure domains** (DESIGN.md): the sensor link (UDP driver and sans-IO link) and the
//! owner's control socket each run on their own OS thread with their own single-threaded tokio
//! runtime; the store's writer and maintenance threads are the store's own. The web UI, MQTT,
//! the feed checker and the upstream bridge share the main runtime. So a stalled or deadlocked
//! web UI or MQTT front — even every worker of the main runtime wedged — neither stops readings
//! from being acknowledged nor `hub ctl` from answering, and [`stop_on_signal`] ends the process
//! within a bound once the link has drained.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protocol::link::{HubConfig, HubLink};
use protocol::oscore::{Lease, ReplayWindow};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::HubApi;
use crate::config::Config;
use crate::store::{HubStore, OpenOutcome, StoreError, Write};

/// A running hub.
#[derive(Debug)]
pub struct Running {
    /// The bound CoAP address.
    pub coap: SocketAddr,
    /// The control socket.
    pub control: PathBuf,
    /// The command API.
    pub api: HubApi,
    /// Paired devices loaded at start.
    pub devices: usize,
    /// Set when a corrupt store was moved aside at start.
    pub moved_aside: Option<PathBuf>,
    /// MQTT listeners (plain, TLS), if MQTT is enabled.
    pub mqtt: Option<(SocketAddr, Option<SocketAddr>)>,
    /// The owner's web UI.
    pub web: SocketAddr,
    /// Fires when the owner asked for a factory reset: stop the hub (fire the shutdown token,
    /// [`Running::join`]), [`erase_data_dir`], and start it again.
    pub reset: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// The link's and the control socket's threads.
    domains: Vec<Domain>,
}

impl Running {
    /// Waits until every task and failure domain has stopped (after the shutdown token fired).
    pub async fn join(self) {
        for d in &self.domains {
            d.stopped.cancelled().await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Fires once the link driver has stopped: what it received is committed and answered.
    pub fn link_stopped(&self) -> CancellationToken {
        self.domains
            .iter()
            .find(|d| d.name == LINK_THREAD)
            .map_or_else(CancellationToken::new, |d| d.stopped.clone())
    }
}

/// Name of the link's thread.
const LINK_THREAD: &str = "hub-link";

/// A failure domain: a named OS thread running one future on its own single-threaded runtime
/// (its own I/O and timer drivers: nothing on another runtime can starve it).
#[derive(Debug)]
struct Domain {
    name: &'static str,
    /// Fires when the future has returned (or the thread panicked).
    stopped: CancellationToken,
}

/// A failure domain's runtime before its thread runs it. Dropped unused (a start that fails
/// later), it shuts down without blocking: `start` runs inside the main runtime, where
/// dropping a runtime the ordinary way is not allowed.
struct DomainRuntime(Option<tokio::runtime::Runtime>);

impl DomainRuntime {
    fn new(name: &'static str) -> Result<Self, StartError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(name)
            .build()
            .map_err(|e| StartError::Thread(format!("the {name} runtime"), e))?;
        Ok(Self(Some(rt)))
    }

    fn enter(&self) -> Option<tokio::runtime::EnterGuard<'_>> {
        self.0.as_ref().map(tokio::runtime::Runtime::enter)
    }
}

impl Drop for DomainRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn spawn_domain(
    name: &'static str,
    mut rt: DomainRuntime,
    run: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Domain, StartError> {
    let stopped = CancellationToken::new();
    let guard = stopped.clone().drop_guard();
    let Some(rt) = rt.0.take() else {
        return Err(StartError::Thread(name.into(), std::io::ErrorKind::NotFound.into()));
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            rt.block_on(run);
            // Stopped (also on a panic, by unwinding): tell whoever waits before the runtime's
            // leftover tasks are dropped.
            drop(guard);
            rt.shutdown_timeout(Duration::from_secs(1));
        })
        .map_err(|e| StartError::Thread(format!("the {name} thread"), e))?;
    Ok(Domain { name, stopped })
}

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The data directory.
    #[error("data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A socket.
    #[error("cannot bind {0}: {1}")]
    Bind(String, std::io::Error),
    /// The upstream bridge's settings.
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    /// MQTT.
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::MqttError),
    /// The web UI.
    #[error(transparent)]
    Web(#[from] crate::web::WebStartError),
    /// The password hashing budget.
    #[error("password hashing: {0}")]
    Hashing(#[from] admission::hashing::HashError),
    /// A failure domain's thread or runtime.
    #[error("cannot start {0}: {1}")]
    Thread(String, std::io::Error),
    /// The update feed's settings (`[updates] feed_url`, `feed_cert`).
    #[error("updates.feed_cert: {0}")]
    Feed(String),
}

/// Starts the hub in `data_dir`.
pub async fn start(
    config: Config,
    data_dir: &Path,
    shutdown: CancellationToken,
) -> Result<Running, StartError> {
    crate::private_fs::create_dir(data_dir).map_err(|e| StartError::DataDir(data_dir.into(), e))?;
    if data_dir.join(RESET_MARK).exists() {
        // A factory reset that did not finish (power lost, stop cut short): finish it first.
        erase_data_dir(data_dir).map_err(|e| StartError::DataDir(data_dir.into(), e))?;
        tracing::warn!("an unfinished factory reset was completed: the data directory was erased");
    }
    // The key-encryption key is left alone: if others could read it, the store refuses it.
    let loosened = crate::private_fs::restrict(data_dir, &[data_dir.join("kek")])
        .map_err(|e| StartError::DataDir(data_dir.into(), e))?;
    for path in loosened {
        tracing::warn!(file = %path.display(), "data directory file was readable by others; made private (0600/0700)");
    }
    let dir = data_dir.to_path_buf();
    let store_limits = config.store.store_limits();
    let (store, outcome) = tokio::task::spawn_blocking(move || HubStore::open(&dir, store_limits))
        .await
        .map_err(|e| StoreError::Db(e.to_string()))??;
    let moved_aside = match outcome {
        OpenOutcome::Opened => None,
        OpenOutcome::MovedAside(p) => Some(p),
    };
    let peers = {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.load_peers())
            .await
            .map_err(|e| StoreError::Db(e.to_string()))??
    };
    let hub_config = HubConfig {
        max_sessions: config.pairing.max_sessions,
        sessions_per_source: config.pairing.sessions_per_source,
        session_idle_ms: config.pairing.session_idle_s.saturating_mul(1000),
        session_max_ms: config.pairing.session_max_s.saturating_mul(1000),
        hello: config.pairing.hello_limits(),
        ..HubConfig::default()
    };
    let mut link = HubLink::new(hub_config);
    for p in &peers {
        // A context with no durable window may have been used: Echo re-establishes freshness
        // (RFC 8613 B.1.2). Never start such a context `Empty`.
        let window = p.window.map_or(ReplayWindow::Unknown, ReplayWindow::Known);
        link.add_peer(&p.params, Lease(p.lease), window, p.usage, p.endpoint, p.budget.as_ref());
    }
    // Contexts restored from a backup are renewed before use (RFC 8613 B.2, `crate::backup`).
    let renew = store.renewals()?;
    for kid in &renew {
        link.require_renewal(kid);
    }
    if !renew.is_empty() {
        tracing::info!(
            devices = renew.len(),
            "restored from a backup: each sensor's link is renewed at its first message"
        );
    }
    // Bind before the start-up checkpoint: a start that cannot serve must not spend headroom.
    // The socket belongs to the link's own runtime (its I/O driver), not the main one.
    let link_rt = DomainRuntime::new(LINK_THREAD)?;
    let socket = {
        let _in_link_runtime = link_rt.enter();
        bind_udp(config.coap_bind).map_err(|e| StartError::Bind(config.coap_bind.to_string(), e))?
    };
    startup_checkpoint(&store, &mut link).await?;
    let coap =
        socket.local_addr().map_err(|e| StartError::Bind(config.coap_bind.to_string(), e))?;
    let control = data_dir.join("control.sock");
    let control_rt = DomainRuntime::new("hub-control")?;
    let listener = {
        let _in_control_runtime = control_rt.enter();
        crate::control::bind(&control)
            .map_err(|e| StartError::Bind(control.display().to_string(), e))?
    };
    let directory = {
        let doc = store.meta(crate::devices::META_KEY)?;
        let devices = store.devices()?;
        crate::devices::Directory::new(
            devices,
            doc.as_deref(),
            config.availability.availability_rules(),
            crate::clock::unix_now_ms(),
        )
    };
    restore_states(&store, &directory);
    let (tx, rx) = mpsc::channel(256);
    let upstream = match &config.upstream {
        Some(cfg) => Some(crate::upstream::bridge(
            cfg,
            data_dir,
            store.clone(),
            directory.clone(),
            shutdown.clone(),
        )?),
        None => None,
    };
    let (upstream, bridge) = upstream.unzip();
    // One budget for all password hashing in the hub (web and MQTT), one throttle policy.
    let budget = admission::HashBudget::new(config.login.limits(), admission::Cost::default())?;
    let mqtt_auth = match config.mqtt.enabled {
        true => Some(crate::mqtt::load_auth(
            config.login.policy(),
            budget.clone(),
            store.clone(),
            data_dir,
        )?),
        false => None,
    };
    let listeners = crate::connections::Listeners::new(&config);
    let monitor = crate::security::Monitor::load(
        &store,
        crate::security::Sources {
            mqtt: mqtt_auth.clone(),
            listeners: listeners.clone(),
            upstream: upstream.clone(),
        },
    );
    let reset = CancellationToken::new();
    let api = HubApi {
        reset: reset.clone(),
        link: tx,
        store: store.clone(),
        directory: directory.clone(),
        mqtt: mqtt_auth.clone(),
        upstream,
        listeners: listeners.clone(),
        feed: crate::feed::FeedState::default(),
        monitor: monitor.clone(),
        data_dir: data_dir.to_path_buf(),
        config_file: config.source.clone(),
    };
    let updates = load_updates(&store, data_dir, &config, &peers)?;
    let store_advisories = store.meta(crate::isolation::META_KEY)?;
    for (kid, offer) in updates.active_offers() {
        link.set_offer(&kid, Some(offer));
    }
    let driver = crate::link::Driver::new(
        updates,
        link,
        Arc::new(socket),
        store,
        config.clone(),
        directory,
        crate::isolation::Advisories::load(store_advisories.as_deref()),
        monitor,
    );
    let feed = crate::feed::check::checker(&config.updates, api.clone(), shutdown.clone())
        .map_err(StartError::Feed)?;
    let mqtt = match mqtt_auth {
        Some(auth) => {
            let names = crate::identity::default_names(&config.certificate_names());
            let identity = crate::identity::Identity::load_or_create(data_dir, &names)
                .map_err(crate::mqtt::MqttError::from)?;
            let m = crate::mqtt::start(
                &config.mqtt,
                auth,
                &identity,
                api.clone(),
                &listeners,
                shutdown.clone(),
            )
            .await?;
            Some(m)
        }
        None => None,
    };
    let web = crate::web::start(&config, data_dir, api.clone(), budget, shutdown.clone()).await?;
    #[cfg(feature = "fault-injection")]
    crate::fault::main_runtime(tokio::runtime::Handle::current());
    let domains = vec![
        spawn_domain(LINK_THREAD, link_rt, driver.run(rx, shutdown.clone()))?,
        spawn_domain(
            "hub-control",
            control_rt,
            crate::control::serve(listener, control.clone(), api.clone(), shutdown.clone()),
        )?,
    ];
    let mut tasks = vec![tokio::spawn(crate::api::watch(api.clone(), shutdown))];
    tasks.extend(feed.map(tokio::spawn));
    tasks.extend(bridge.map(tokio::spawn));
    tasks.push(web.task);
    let mqtt = mqtt.map(|m| {
        tasks.extend(m.tasks);
        (m.plain, m.tls)
    });
    Ok(Running {
        coap,
        control,
        api,
        devices: peers.len(),
        moved_aside,
        mqtt,
        web: web.addr,
        reset,
        tasks,
        domains,
    })
}

/// Marks the data directory for a factory reset, durably: the next start erases it if this
/// one does not finish the erase.
pub fn mark_factory_reset(data_dir: &Path) -> std::io::Result<()> {
    crate::private_fs::write(&data_dir.join(RESET_MARK), b"factory reset requested\n")?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// The file that marks a factory reset under way.
const RESET_MARK: &str = "factory-reset";

/// A factory reset's erase (EN 303 645 5.11-1): everything in the stopped hub's data directory
/// goes — the store (devices, keys, readings, MQTT users, trust keys, releases, policy,
/// advisories, counters), the upstream outbox, the web vault and logins, the setup code, the
/// certificate and the key-encryption key — so the next start makes new ones. The directory
/// itself stays (it may be systemd's `StateDirectory`).
pub fn erase_data_dir(data_dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name() == RESET_MARK {
            continue; // last, once the rest is gone
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    std::fs::File::open(data_dir)?.sync_all()?;
    match std::fs::remove_file(data_dir.join(RESET_MARK)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // The removals are durable before the hub starts anew.
    std::fs::File::open(data_dir)?.sync_all()
}

/// How long the link may take to drain after the shutdown signal (its own drain gives up
/// after 5 s).
const LINK_DRAIN_BOUND: Duration = Duration::from_secs(10);
/// How long the other subsystems may take after the link has stopped.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Ends the hub on SIGTERM or SIGINT, within a bound: a thread of its own (the main runtime may
/// be the part that is stuck) waits for the signal, fires `shutdown`, waits for the link to
/// commit and answer what it received (`link_stopped`, at most `LINK_DRAIN_BOUND`), then gives
/// the rest `STOP_GRACE`; a process still running then is ended with exit status 1 and the
/// reason logged. A clean stop returns from `main` well before that.
pub fn stop_on_signal(
    shutdown: CancellationToken,
    link_stopped: CancellationToken,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Both handlers are registered here, before the caller reports ready (not when first
    // polled on the thread).
    let (mut term, mut int) = {
        let _in_runtime = rt.enter();
        (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?)
    };
    std::thread::Builder::new().name("hub-signals".into()).spawn(move || {
        let drained = rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                () = shutdown.cancelled() => {}
            }
            shutdown.cancel();
            let drained = tokio::time::timeout(LINK_DRAIN_BOUND, link_stopped.cancelled()).await;
            if drained.is_err() {
                tracing::error!(
                    seconds = LINK_DRAIN_BOUND.as_secs(),
                    "the sensor link did not stop in time"
                );
            }
            tokio::time::sleep(STOP_GRACE).await;
            drained.is_ok()
        });
        tracing::error!(
            grace_s = STOP_GRACE.as_secs(),
            link_drained = drained,
            "a subsystem did not stop after the shutdown signal; exiting"
        );
        std::process::exit(1);
    })?;
    Ok(())
}

/// Usage counters resume at their durable ceilings; before serving, fresh ceilings above them
/// are made durable for every sensor in one commit (so no count is ever restored lower).
async fn startup_checkpoint(
    store: &HubStore,
    link: &mut HubLink<SocketAddr>,
) -> Result<(), StartError> {
    let states: Vec<_> = link
        .peer_kids()
        .into_iter()
        .filter_map(|kid| link.checkpoint(&kid).map(|state| (kid, state)))
        .collect();
    if states.is_empty() {
        return Ok(());
    }
    let writes: Vec<Write> = states
        .iter()
        .map(|(kid, state)| Write::State { kid: *kid, state: state.clone() })
        .collect();
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.commit(&writes))
        .await
        .map_err(|e| StoreError::Db(e.to_string()))??;
    for (kid, state) in &states {
        link.checkpoint_durable(kid, state);
    }
    Ok(())
}

/// The CoAP socket, with large kernel buffers so that bursts from a fleet queue instead of being
/// dropped (the kernel caps the size at `net.core.rmem_max`).
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    // (Called inside the link's runtime: the socket registers with its I/O driver.)
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The update manager as persisted, with the devices it must know and the configured trust.
fn load_updates(
    store: &HubStore,
    data_dir: &Path,
    config: &Config,
    peers: &[crate::store::PeerRecord],
) -> Result<crate::updates::Updates, StartError> {
    let now = crate::clock::unix_now();
    let doc = store.meta(crate::updates::META_KEY)?;
    let mut updates = crate::updates::Updates::load(
        &data_dir.join("updates"),
        doc.as_deref(),
        config.updates.max_concurrent,
        config.updates.retry_base_s,
        now,
    );
    for t in &config.updates.trust {
        updates.trust_key(&t.model, t.key.clone());
    }
    let devices = store.devices()?;
    for p in peers {
        if let Some(d) = devices.iter().find(|d| d.id.kid() == p.params.recipient_id) {
            updates.device(
                &p.params.recipient_id,
                &d.about.model,
                d.about.firmware_version,
                d.about.updatable,
            );
        }
    }
    Ok(updates)
}

/// Readings read back per device to restore its current state (a few measurements' worth).
const RESTORE_READINGS: usize = 16;

/// Restores every device's last known state from the store, on a thread of its own so a
/// large fleet does not delay serving (readings that arrive meanwhile are newer and win).
fn restore_states(store: &HubStore, directory: &crate::devices::Directory) {
    let (store, directory) = (store.clone(), directory.clone());
    let spawned = std::thread::Builder::new().name("restore-state".into()).spawn(move || {
        for d in directory.list() {
            match store.readings(&d.info.id.kid(), RESTORE_READINGS) {
                Ok(readings) => directory.restore_state(&d.info.id, &readings),
                Err(e) => {
                    tracing::warn!(device = %d.info.id, error = %e, "last state not restored")
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "last states not restored");
    }
}
