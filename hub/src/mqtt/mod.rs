//! MQTT for home automation (DESIGN "MQTT"): the embedded broker on loopback (`broker`), the
//! plain and TLS fronts that authenticate and throttle clients (`front`, `auth`; EN 303 645
//! 5.1-1, 5.1-5, 5.5-4), Hearth's topics (`topics`), Home Assistant discovery (`discovery`),
//! the hub's own link that relays commands and publishes (`bridge`) — to the fronts, which
//! write the hub's messages to each client that subscribed (`live`) — and retained messages,
//! which the fronts keep and hand over rather than the broker (`owned`: the hub's, made from
//! the device directory; `retained`: clients', bounded, and the handing over).

pub(crate) mod auth;
mod bridge;
mod bridge_api;
mod broker;
mod client_ids;
pub(crate) mod discovery;
mod front;
mod hub_entity;
mod live;
mod owned;
mod pace;
mod retained;
pub(crate) mod topics;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::HubApi;
use crate::config::MqttConfig;
use auth::Auth;

/// At a stop, the fronts keep their connections this long after the bridge has ended, to write
/// its last messages (`offline`, what waited for its pace) to the clients.
const FRONTS_DRAIN: Duration = Duration::from_millis(200);

/// Client ids starting with this belong to the hub's own link; network clients may not use
/// them (a client with the same id would take the hub's session over).
pub(crate) const RESERVED_CLIENT_PREFIX: &str = "hearth-hub";

/// Why MQTT could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A listener's address is taken or not allowed.
    #[error("MQTT: cannot bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The broker did not come up serving its port.
    #[error(
        "MQTT: the embedded broker is not serving 127.0.0.1:{}: the port is taken by another \
         process, or the broker failed (set [mqtt] broker_port)",
        .0.port()
    )]
    NotServing(SocketAddr),
    /// The broker refused its configuration or the hub's link.
    #[error("MQTT broker: {0}")]
    Broker(String),
    /// The users could not be loaded.
    #[error("MQTT users: {0}")]
    Users(#[from] auth::UserError),
    /// The hub certificate.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The random generator failed.
    #[error("random number generator failed")]
    Rng,
}

/// A running MQTT service.
#[derive(Debug)]
pub(crate) struct Running {
    /// Plain listener (loopback).
    pub plain: SocketAddr,
    /// TLS listener, if any.
    pub tls: Option<SocketAddr>,
    /// The tasks.
    pub tasks: Vec<JoinHandle<()>>,
}

/// Loads the MQTT users (sealed in the store; there are none at first start) and their login
/// records; logins are throttled by the hub's login `policy` and hashed under its `budget`.
pub(crate) fn load_auth(
    policy: admission::Policy,
    budget: admission::HashBudget,
    store: crate::store::HubStore,
    data_dir: &Path,
) -> Result<Arc<Auth>, MqttError> {
    let kek =
        crate::store::Kek::load_or_create(&data_dir.join("kek")).map_err(auth::UserError::from)?;
    Ok(Arc::new(Auth::load(store, kek, policy, budget)?))
}

/// Starts the broker, both fronts (each with its own slots in `listeners`) and the bridge.
pub(crate) async fn start(
    cfg: &MqttConfig,
    auth: Arc<Auth>,
    identity: &crate::identity::Identity,
    api: HubApi,
    listeners: &crate::connections::Listeners,
    shutdown: CancellationToken,
) -> Result<Running, MqttError> {
    // Bind the fronts first: a start that cannot serve fails before the broker runs.
    let plain =
        TcpListener::bind(cfg.plain_bind).await.map_err(|e| MqttError::Bind(cfg.plain_bind, e))?;
    let tls = match cfg.tls_bind {
        Some(a) => Some(TcpListener::bind(a).await.map_err(|e| MqttError::Bind(a, e))?),
        None => None,
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config(&[b"mqtt"])?);
    let connect_timeout = Duration::from_millis(u64::from(cfg.connect_timeout_ms));
    // Every connection both fronts may be forwarding at once.
    let tickets = Arc::new(front::Tickets::new(
        connect_timeout.max(Duration::from_secs(10)),
        cfg.max_connections.saturating_mul(2),
    ));
    let started = {
        let (cfg, tickets, bypass) = (cfg.clone(), tickets.clone(), listeners.mqtt_bypass.clone());
        tokio::task::spawn_blocking(move || broker::start(&cfg, tickets, bypass))
            .await
            .map_err(|e| MqttError::Broker(e.to_string()))??
    };
    tracing::debug!(client = %started.client_id, "hub link into the MQTT broker");
    let owned = Arc::new(owned::Owned::new(cfg.discovery_prefix.clone(), api.directory.clone()));
    let feed = live::Feed::default();
    let front = Arc::new(front::Front {
        client_ids: Default::default(),
        owned: owned.clone(),
        client_retained: Arc::default(),
        auth: auth.clone(),
        upstream: started.addr,
        max_packet: cfg.max_packet_bytes,
        connect_timeout,
        discovery_prefix: cfg.discovery_prefix.clone(),
        tickets,
        feed: feed.clone(),
    });
    let plain_addr = plain.local_addr().map_err(|e| MqttError::Bind(cfg.plain_bind, e))?;
    // The fronts stop after the bridge (below), not with it.
    let fronts_stop = CancellationToken::new();
    let mut tasks = vec![tokio::spawn(front::serve(
        plain,
        None,
        front.clone(),
        listeners.mqtt_plain.clone(),
        fronts_stop.clone(),
    ))];
    let tls_addr = match tls {
        Some(l) => {
            let a = l.local_addr().map_err(|e| MqttError::Bind(plain_addr, e))?;
            let slots = listeners.mqtt_tls.clone();
            tasks.push(tokio::spawn(front::serve(
                l,
                Some(acceptor),
                front,
                slots,
                fronts_stop.clone(),
            )));
            Some(a)
        }
        None => None,
    };
    // The catch-all filter's link lives as long as the broker serves (see broker::CATCH_ALL).
    let (catch_all, stop) = (started.catch_all, shutdown.clone());
    tasks.push(tokio::spawn(async move {
        stop.cancelled().await;
        drop(catch_all);
    }));
    let republish = Duration::from_secs(cfg.republish_interval_s);
    let prefix = cfg.discovery_prefix.clone();
    // Whatever ends the bridge (a stop, a panic, a failed start) ends the fronts: the guard
    // fires when dropped.
    let fronts_guard = fronts_stop.drop_guard();
    let bridge = bridge::start(started.link, feed, api, auth, owned, prefix, republish, shutdown)
        .map_err(MqttError::Broker)?;
    tasks.push(tokio::spawn(async move {
        bridge.await;
        tokio::time::sleep(FRONTS_DRAIN).await;
        drop(fronts_guard);
    }));
    tracing::info!(plain = %plain_addr, tls = ?tls_addr, fingerprint = %identity.fingerprint(), "MQTT serving");
    Ok(Running { plain: plain_addr, tls: tls_addr, tasks })
}
