//! The embedded rumqttd broker: an explicit configuration (every router and connection limit
//! set), one MQTT 3.1.1 listener on 127.0.0.1 only, the hub's own local link taken before the
//! broker starts, and readiness proven by a probe that only this broker can answer (rumqttd
//! gives no signal and returns quietly if its port is taken). Its listener accepts only the
//! connections a front prepared — a one-time ticket for the client id and user the front
//! checked (EN 303 645 5.5-4) — so a local process cannot bypass the fronts' checks (login,
//! Will, client id, topics); others are refused and counted.

use std::collections::HashMap;
use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Connect, Login, Packet, Protocol, v4::V4};
use rumqttd::{ConnectionSettings, RouterConfig, ServerSettings};

use super::MqttError;
use super::front::Tickets;
use crate::config::MqttConfig;

/// How long the broker has to prove it serves its port.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// rumqttd keeps the messages of every topic filter in a log of segments, in memory, and a
/// subscriber reads its filter's log from where it is: these two bound each log to about
/// 1 MiB of messages (the newest; the oldest segment is dropped when a fifth would begin). A
/// subscriber more than that behind its filter misses the oldest live messages (retained ones
/// it gets again when it subscribes) — mosquitto's own default is 1,000 queued messages per
/// client; 1 MiB is about 3,000 of the hub's state messages. Messages are shared between the
/// logs they are in (one copy of each).
const SEGMENT_BYTES: usize = 256 << 10;
const SEGMENTS: usize = 4;
/// The filter every message matches, held by a link of the hub's that never reads it. Without
/// it rumqttd gives each topic nobody subscribes to a log of its own (a "dynamic filter") that
/// nobody ever reads and that lives as long as the broker: memory growing with every topic
/// ever published. With it there is one such log, bounded like the others.
const CATCH_ALL: &str = "#";

/// A started broker: its address and the hub's own link into it.
pub(crate) struct Started {
    /// The broker's listener (127.0.0.1).
    pub addr: SocketAddr,
    /// The hub's local link (bypasses the network and authentication: it is the hub itself).
    pub link: (LinkTx, LinkRx),
    /// The hub link's client id (refused to network clients, so none can take it over).
    pub client_id: String,
    /// The link that holds [`CATCH_ALL`]; kept as long as the broker serves.
    pub catch_all: (LinkTx, LinkRx),
}

/// The probe's identity, known only to this process for this start.
struct Probe {
    client_id: String,
    seen: AtomicBool,
}

/// The rumqttd configuration: no `Config::default()` (its zero limits refuse every client and
/// panic on segment size 0); every limit explicit.
fn config(
    cfg: &MqttConfig,
    addr: SocketAddr,
    tickets: Arc<Tickets>,
    bypass: Arc<AtomicU64>,
    probe: Arc<Probe>,
) -> rumqttd::Config {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: cfg.connect_timeout_ms,
        max_payload_size: cfg.max_packet_bytes,
        max_inflight_count: cfg.max_inflight,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    connections.set_auth_handler(move |client_id: String, user: String, password: String| {
        let (tickets, bypass, probe) = (tickets.clone(), bypass.clone(), probe.clone());
        async move {
            if client_id == probe.client_id && password == probe.client_id {
                probe.seen.store(true, Ordering::SeqCst);
                return false; // proven; no session needed
            }
            // The front checked the login; the ticket proves the connection came from it.
            if tickets.redeem(&client_id, &user, &password) {
                return true;
            }
            let n = bypass.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    refused = n,
                    "MQTT: a connection to the broker's own port did not come through the \
                     hub's fronts (a process on the hub skipping their checks); refused"
                );
            }
            false
        }
    });
    let server = ServerSettings {
        name: "hearth-mqtt-broker".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let router = RouterConfig {
        // The fronts' connections plus the hub's own link and local clients.
        max_connections: cfg.max_connections.saturating_mul(2).saturating_add(8),
        max_outgoing_packet_count: 1024,
        max_segment_size: SEGMENT_BYTES,
        max_segment_count: SEGMENTS,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    rumqttd::Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("hearth".to_owned(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

/// Starts the broker on its own named thread and waits until it provably serves its port.
pub(crate) fn start(
    cfg: &MqttConfig,
    tickets: Arc<Tickets>,
    bypass: Arc<AtomicU64>,
) -> Result<Started, MqttError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], cfg.broker_port));
    // rumqttd would return quietly if the port were taken: check first, and prove it after.
    drop(std::net::TcpListener::bind(addr).map_err(|e| MqttError::Bind(addr, e))?);
    let mut nonce = [0u8; 16];
    crate::rng::fill(&mut nonce).map_err(|_| MqttError::Rng)?;
    let probe = Arc::new(Probe {
        client_id: format!("hearth-probe-{}", protocol::hex::encode(&nonce)),
        seen: AtomicBool::new(false),
    });
    crate::rng::fill(&mut nonce).map_err(|_| MqttError::Rng)?;
    let client_id =
        format!("{}{}", super::RESERVED_CLIENT_PREFIX, protocol::hex::encode(&nonce[..6]));
    let mut broker = rumqttd::Broker::new(config(cfg, addr, tickets, bypass, probe.clone()));
    let link = broker.link(&client_id).map_err(|e| MqttError::Broker(e.to_string()))?;
    let mut catch_all = broker
        .link(&format!("{client_id}-catch-all"))
        .map_err(|e| MqttError::Broker(e.to_string()))?;
    catch_all.0.subscribe(CATCH_ALL).map_err(|e| MqttError::Broker(e.to_string()))?;
    let thread = std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "MQTT broker stopped");
            }
        })
        .map_err(|e| MqttError::Broker(e.to_string()))?;
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if thread.is_finished() {
            return Err(MqttError::NotServing(addr));
        }
        if send_probe(addr, &probe.client_id) && probe.seen.load(Ordering::SeqCst) {
            break;
        }
        if Instant::now() > deadline {
            return Err(MqttError::NotServing(addr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Started { addr, link, client_id, catch_all })
}

/// Connects to `addr` and sends a CONNECT that only this process's broker recognizes; true
/// once the connection was answered (closed) after it.
fn send_probe(addr: SocketAddr, id: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let connect = Connect { keep_alive: 10, client_id: id.to_owned(), clean_session: true };
    let login = Login { username: "probe".into(), password: id.to_owned() };
    let mut buf = BytesMut::new();
    if V4.write(Packet::Connect(connect, None, None, None, Some(login)), &mut buf).is_err() {
        return false;
    }
    if s.write_all(&buf).is_err() {
        return false;
    }
    // The broker refuses the probe by closing the connection.
    let mut byte = [0u8; 1];
    matches!(s.read(&mut byte), Ok(0) | Err(_))
}
