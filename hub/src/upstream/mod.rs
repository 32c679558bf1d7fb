//! The upstream bridge (DESIGN capability 5; TR 103 621 6.51–6.53, EN 303 645 5.9-2): one task
//! that forwards durable readings from the outbox to an upstream MQTT broker (rumqttc, TLS,
//! QoS 2, persistent session) in log order, never those of isolated devices (6.23).

pub(crate) mod config;
pub(crate) mod tls;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::oscore::Kid;
use rand_core::Rng;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS, Request};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::device_id::DeviceId;
use crate::devices::Directory;
use crate::store::outbox::{Cursor, Frame, OutboxError, OutboxReader, Step};
use crate::store::{HubStore, StoredReading};

pub(crate) use config::{UpstreamConfig, UpstreamConfigError};

/// The client's own in-flight limit: packet ids wrap here, far above the window, so that
/// they rarely collide.
const MQTT_INFLIGHT: u16 = 2000;
/// How often the outbox is measured, bounded and persisted.
const TICK: Duration = Duration::from_millis(200);
/// First reconnection delay (doubling, jittered, up to the configured maximum).
const RECONNECT_BASE: Duration = Duration::from_millis(200);

/// What `hub ctl upstream` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpstreamStatus {
    /// The broker (`mqtts://host:port`).
    pub url: String,
    /// Topics are `<topic_prefix>/<device>/reading`.
    pub topic_prefix: String,
    /// Connected to the broker now.
    pub connected: bool,
    /// Readings stored and not yet acknowledged by the broker (the outbox's lag).
    pub pending: u64,
    /// Readings the broker acknowledged (QoS 2 complete) since the outbox was created.
    pub forwarded: u64,
    /// Readings given up (outbox bound `max_pending`, or retention) — never sent.
    pub dropped: u64,
    /// Readings of isolated or removed devices that were not forwarded.
    pub withheld: u64,
    /// Publishes in flight.
    pub in_flight: usize,
    /// The outbox cursor: the next log frame to forward.
    pub cursor: u64,
    /// Successful connections since start.
    pub connections: u64,
    /// The last connection error, if the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The broker's certificate was refused this many times since start (a possible man in
    /// the middle: `upstream_tls_refused` in `hub ctl security`).
    #[serde(default)]
    pub tls_refused: u64,
}

/// Handle to the bridge's status.
#[derive(Debug, Clone)]
pub struct UpstreamHandle {
    status: Arc<Mutex<UpstreamStatus>>,
    refusals: Arc<tls::Refusals>,
}

impl UpstreamHandle {
    /// The current status.
    pub fn status(&self) -> UpstreamStatus {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.tls_refused = self.refusals.count();
        s
    }
}

/// Why the bridge cannot start.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// A setting or a file it names.
    #[error(transparent)]
    Config(#[from] UpstreamConfigError),
    /// The broker's CA certificate.
    #[error("`upstream.ca_cert`: {0}")]
    Tls(String),
    /// The outbox cursor.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// Prepares the bridge: the handle for the API and the task to spawn.
pub(crate) fn bridge(
    cfg: &UpstreamConfig,
    data_dir: &Path,
    store: HubStore,
    directory: Directory,
    shutdown: CancellationToken,
) -> Result<(UpstreamHandle, impl Future<Output = ()> + Send + 'static), UpstreamError> {
    let endpoint = cfg.validate()?;
    let name = config::hub_name();
    let prefix = cfg.prefix(&name);
    let mut opts = MqttOptions::new(cfg.client_id(&name), endpoint.host.clone(), endpoint.port);
    opts.set_keep_alive(Duration::from_secs(30));
    // The broker keeps the session (QoS 2 states) across its restarts and ours.
    opts.set_clean_session(false);
    opts.set_inflight(MQTT_INFLIGHT.max(cfg.max_in_flight.saturating_mul(4)));
    opts.set_max_packet_size(64 * 1024, 64 * 1024);
    let password = cfg.password()?;
    if let Some(password) = &password {
        opts.set_credentials(cfg.username.clone().unwrap_or_default(), password.clone());
    } else if let Some(user) = &cfg.username {
        opts.set_credentials(user.clone(), "");
    }
    let scheme = if endpoint.tls { "mqtts" } else { "mqtt" };
    let url = format!("{scheme}://{}:{}", endpoint.host, endpoint.port);
    let refusals = Arc::new(tls::Refusals::default());
    let mut ca_pem = None;
    if endpoint.tls {
        let pem = cfg.ca_pem()?.unwrap_or_default();
        let tls = tls_config(&pem, refusals.clone(), &url).map_err(UpstreamError::Tls)?;
        opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        ca_pem = Some(pem);
    }
    let secrets = Secrets {
        cfg: cfg.clone(),
        url: url.clone(),
        refusals: refusals.clone(),
        ca_pem,
        password,
        logged: (None, 0),
    };
    let cursor_path = config::cursor_path(data_dir);
    let cursor = match Cursor::load(&cursor_path) {
        Ok(c) => c,
        Err(e @ OutboxError::Corrupt(..)) => {
            tracing::error!(error = %e, "upstream cursor unreadable; forwarding from the end of the log");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let reader = OutboxReader::open(&store, cursor.as_ref());
    let cursor = cursor.unwrap_or(Cursor { next_seq: reader.next_seq(), ..Cursor::default() });
    cursor.save(&cursor_path)?;
    let status = Arc::new(Mutex::new(UpstreamStatus {
        url: url.clone(),
        topic_prefix: prefix.clone(),
        forwarded: cursor.forwarded,
        dropped: cursor.dropped,
        withheld: cursor.withheld,
        cursor: cursor.next_seq,
        ..UpstreamStatus::default()
    }));
    let handle = UpstreamHandle { status: status.clone(), refusals };
    tracing::info!(%url, topic_prefix = %prefix, cursor = cursor.next_seq, "upstream bridge configured");
    let bridge = Forwarder {
        store,
        directory,
        prefix,
        reader,
        cursor,
        cursor_path,
        saved_at: Instant::now(),
        dirty: false,
        frame: None,
        inflight: VecDeque::new(),
        status,
        max_pending: cfg.max_pending,
        window: usize::from(cfg.max_in_flight),
        reconnect_max: Duration::from_millis(cfg.reconnect_max_ms),
        secrets,
    };
    Ok((handle, bridge.run(opts, shutdown)))
}

/// Connection errors are logged one by one at most this often (the rest are counted in the
/// next line).
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// The files the bridge reads secrets from, re-read on SIGHUP and before every reconnection
/// (a changed `ca_cert` or `password_file` applies without a restart), and the rate limit of
/// its connection-error log.
struct Secrets {
    cfg: UpstreamConfig,
    url: String,
    refusals: Arc<tls::Refusals>,
    /// What is in use (`None` for a plain connection / no password).
    ca_pem: Option<String>,
    password: Option<String>,
    /// When a connection error was last logged, and how many were not logged since.
    logged: (Option<Instant>, u64),
}

impl Secrets {
    /// Re-reads `ca_cert` and `password_file`; what changed applies to the next connection. An
    /// unreadable file keeps what is in use (and says so).
    fn reload(&mut self, opts: &mut MqttOptions) {
        match self.cfg.password() {
            Ok(p) if p != self.password => {
                let user = self.cfg.username.clone().unwrap_or_default();
                opts.set_credentials(user, p.clone().unwrap_or_default());
                self.password = p;
                tracing::info!(
                    "upstream: upstream.password_file changed; the new password is used from the next connection"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "upstream: keeping the password in use"),
        }
        if self.ca_pem.is_none() {
            return; // a plain connection (loopback only)
        }
        match self.cfg.ca_pem() {
            Ok(Some(pem)) if Some(&pem) != self.ca_pem.as_ref() => {
                match tls_config(&pem, self.refusals.clone(), &self.url) {
                    Ok(tls) => {
                        opts.set_transport(rumqttc::Transport::tls_with_config(
                            rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
                        ));
                        self.ca_pem = Some(pem);
                        tracing::info!(
                            "upstream: upstream.ca_cert changed; the new certificate is trusted from the next connection"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "upstream: upstream.ca_cert is not usable; keeping the certificate in use")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "upstream: keeping the certificate in use"),
        }
    }

    /// Logs a failed connection in words, with what to check — at most once a minute.
    fn failed(&mut self, e: &rumqttc::ConnectionError) {
        let now = Instant::now();
        if self.logged.0.is_some_and(|t| now.duration_since(t) < ERROR_LOG_EVERY) {
            self.logged.1 += 1;
            return;
        }
        let unlogged = std::mem::take(&mut self.logged.1);
        self.logged.0 = Some(now);
        tracing::warn!(
            upstream = %self.url,
            check = explain_connection(e),
            error = %e,
            more_since_last_line = unlogged,
            "upstream broker unreachable; readings wait in the outbox (hub ctl upstream)"
        );
    }
}

/// What a failed connection means, and what to check.
fn explain_connection(e: &rumqttc::ConnectionError) -> &'static str {
    use rumqttc::{ConnectReturnCode as Code, ConnectionError as E};
    use std::io::ErrorKind;
    match e {
        E::ConnectionRefused(Code::BadUserNamePassword | Code::NotAuthorized) => {
            "the broker refused the login: check upstream.username and upstream.password_file"
        }
        E::ConnectionRefused(_) => {
            "the broker refused the connection: check upstream.client_id and the broker's MQTT \
             version (3.1.1)"
        }
        E::Tls(_) => {
            "the TLS handshake failed: if a refused certificate was logged, check upstream.ca_cert \
             and the host in upstream.url"
        }
        E::Io(io) if io.kind() == ErrorKind::ConnectionRefused => {
            "nothing listens at upstream.url: is the broker running, is the port right?"
        }
        E::Io(io) if io.kind() == ErrorKind::TimedOut => {
            "the broker did not answer: check the network and the host in upstream.url"
        }
        E::NetworkTimeout => {
            "the broker did not answer in time: check the network and the host in upstream.url"
        }
        E::Io(_) => "the connection failed: check the network, the host name and upstream.url",
        _ => "the connection to the broker failed",
    }
}

/// rustls (ring) trusting only the configured certificates; refusals counted and logged.
fn tls_config(
    pem: &str,
    refusals: Arc<tls::Refusals>,
    url: &str,
) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut pinned = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        pinned.push(cert.map_err(|e| e.to_string())?);
    }
    if pinned.is_empty() {
        return Err("holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = tls::Watched::new(pinned, provider.clone(), refusals, url.to_owned())?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// One reading handed to the client (or withheld), in outbox order.
#[derive(Debug)]
struct Sent {
    seq: u64,
    index: u32,
    last_in_frame: bool,
    /// Not published: the device may not send data beyond the hub.
    withheld: bool,
    /// The client's packet id, once it assigned one.
    pkid: Option<u16>,
    done: bool,
}

/// The frame being published: readings from `next` on are still to go.
#[derive(Debug)]
struct Partial {
    frame: Frame,
    next: usize,
}

/// The upstream forwarder: reads the outbox and publishes to the broker (the MQTT side's
/// `Bridge` is another thing: Home Assistant on the hub's own broker).
struct Forwarder {
    store: HubStore,
    directory: Directory,
    prefix: String,
    reader: OutboxReader,
    cursor: Cursor,
    cursor_path: PathBuf,
    saved_at: Instant,
    dirty: bool,
    frame: Option<Partial>,
    inflight: VecDeque<Sent>,
    status: Arc<Mutex<UpstreamStatus>>,
    max_pending: u64,
    /// Publishes handed to the client and not yet completed, at most.
    window: usize,
    reconnect_max: Duration,
    secrets: Secrets,
}

impl Forwarder {
    async fn run(mut self, opts: MqttOptions, shutdown: CancellationToken) {
        let (client, mut events) = AsyncClient::new(opts, self.window * 2);
        let mut connected = false;
        let mut failures = 0u32;
        let mut rng = crate::rng::os_seeded();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // While backing off, the outbox is still measured and bounded every tick.
        let mut retry_at: Option<tokio::time::Instant> = None;
        // SIGHUP re-reads upstream.ca_cert and upstream.password_file.
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            if connected {
                self.fill(&client);
            }
            let wake = retry_at.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    tracing::info!("upstream: SIGHUP: re-reading upstream.ca_cert and upstream.password_file");
                    self.secrets.reload(&mut events.mqtt_options);
                }
                // Not while a connection is being made: rumqttc's connect (TCP, TLS, CONNECT)
                // cannot be cancelled and resumed, and a broker more than a tick away (200 ms)
                // would never be reached (it is bounded by rumqttc's connection timeout).
                _ = tick.tick(), if connected || retry_at.is_some() => self.maintain(connected),
                () = tokio::time::sleep_until(wake), if retry_at.is_some() => retry_at = None,
                ev = events.poll(), if retry_at.is_none() => match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        connected = true;
                        failures = 0;
                        if !ack.session_present {
                            // The broker lost our session: everything unacknowledged goes again.
                            self.rewind();
                        }
                        let mut s = self.lock_status();
                        s.connected = true;
                        s.connections += 1;
                        s.last_error = None;
                        drop(s);
                        tracing::info!(session_present = ack.session_present, "upstream broker connected");
                    }
                    Ok(Event::Incoming(Incoming::PubComp(c))) => self.completed(c.pkid),
                    Ok(Event::Incoming(Incoming::PubAck(a))) => self.completed(a.pkid),
                    Ok(Event::Outgoing(Outgoing::Publish(pkid) | Outgoing::AwaitAck(pkid))) => {
                        self.assigned(pkid);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if connected {
                            tracing::warn!(error = %e, "upstream broker connection lost");
                        } else {
                            self.secrets.failed(&e);
                        }
                        // A changed certificate or password applies to the next attempt.
                        self.secrets.reload(&mut events.mqtt_options);
                        connected = false;
                        self.order_resends(&mut events.pending);
                        {
                            let mut s = self.lock_status();
                            s.connected = false;
                            s.last_error = Some(e.to_string());
                        }
                        let delay = backoff(failures, self.reconnect_max, &mut rng);
                        failures = failures.saturating_add(1);
                        tracing::debug!(error = %e, delay_ms = delay.as_millis() as u64, "upstream reconnect after a delay");
                        retry_at = Some(tokio::time::Instant::now() + delay);
                    }
                },
            }
        }
        if connected {
            let _ = client.try_disconnect();
        }
        self.save();
        self.lock_status().connected = false;
        tracing::info!(cursor = self.cursor.next_seq, "upstream bridge stopped");
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, UpstreamStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands readings to the client until the window is full or the outbox is empty.
    fn fill(&mut self, client: &AsyncClient) {
        while self.inflight.len() < self.window {
            let Some(p) = self.frame.as_mut() else {
                match self.reader.next_step() {
                    Step::Frame(mut frame) => {
                        let mut next = 0;
                        if frame.seq == self.cursor.next_seq {
                            next = (self.cursor.index as usize).min(frame.readings.len());
                        }
                        if frame.seq < self.cursor.next_seq {
                            next = frame.readings.len(); // acknowledged before a rewind
                        }
                        frame.readings.shrink_to_fit();
                        self.frame = Some(Partial { frame, next });
                    }
                    Step::Lost { from_seq, to_seq, readings } => {
                        self.lost(from_seq, to_seq, readings)
                    }
                    Step::Idle => return,
                }
                continue;
            };
            let Some((kid, reading)) = p.frame.readings.get(p.next) else {
                self.frame = None;
                continue;
            };
            let (seq, index) = (p.frame.seq, p.next as u32);
            let last_in_frame = p.next + 1 == p.frame.readings.len();
            let message = message(&self.directory, &self.prefix, seq, index, kid, reading);
            let withheld = message.is_none();
            if let Some((topic, payload)) = message
                && let Err(e) = client.try_publish(topic, QoS::ExactlyOnce, false, payload)
            {
                // The request queue is full: try again after the client made room.
                tracing::debug!(error = %e, "upstream publish queued later");
                return;
            }
            p.next += 1;
            if last_in_frame {
                self.frame = None;
            }
            self.inflight.push_back(Sent {
                seq,
                index,
                last_in_frame,
                withheld,
                pkid: None,
                done: withheld,
            });
            self.advance();
        }
    }

    /// The client gave a publish its packet id (publishes go out in the order handed over).
    fn assigned(&mut self, pkid: u16) {
        let live = |s: &&mut Sent| !s.done && !s.withheld;
        if self.inflight.iter_mut().filter(live).any(|s| s.pkid == Some(pkid)) {
            return; // a resend, or a collision now resolved
        }
        if let Some(s) = self.inflight.iter_mut().filter(live).find(|s| s.pkid.is_none()) {
            s.pkid = Some(pkid);
        }
    }

    /// The broker completed `pkid` (QoS 2 PUBCOMP).
    fn completed(&mut self, pkid: u16) {
        if let Some(s) =
            self.inflight.iter_mut().find(|s| !s.done && !s.withheld && s.pkid == Some(pkid))
        {
            s.done = true;
            s.pkid = None;
        }
        self.advance();
    }

    /// Moves the cursor over the completed front of the window.
    fn advance(&mut self) {
        while self.inflight.front().is_some_and(|s| s.done) {
            let Some(s) = self.inflight.pop_front() else { break };
            if s.withheld {
                self.cursor.withheld += 1;
            } else {
                self.cursor.forwarded += 1;
            }
            (self.cursor.next_seq, self.cursor.index) =
                if s.last_in_frame { (s.seq + 1, 0) } else { (s.seq, s.index + 1) };
            self.dirty = true;
        }
        if self.inflight.is_empty() && self.frame.is_none() {
            // Frames without forwardable readings (checkpoints) or given up: the cursor
            // follows the reader.
            let at = self.reader.next_seq();
            if at > self.cursor.next_seq {
                (self.cursor.next_seq, self.cursor.index) = (at, 0);
                self.dirty = true;
            }
        }
    }

    /// Sends again what the client holds in outbox order (its own order after a disconnect
    /// is by packet id, which wraps), so that the broker releases them in order.
    fn order_resends(&self, pending: &mut VecDeque<Request>) {
        let position =
            |pkid: u16| self.inflight.iter().position(|s| !s.done && s.pkid == Some(pkid));
        let mut keyed: Vec<(usize, usize, Request)> = pending
            .drain(..)
            .enumerate()
            .map(|(i, r)| {
                let key = match &r {
                    Request::Publish(p) if p.pkid != 0 => position(p.pkid).unwrap_or(usize::MAX),
                    Request::PubRel(p) => position(p.pkid).unwrap_or(usize::MAX),
                    _ => usize::MAX,
                };
                (key, i, r)
            })
            .collect();
        keyed.sort_by_key(|(key, i, _)| (*key, *i));
        pending.extend(keyed.into_iter().map(|(_, _, r)| r));
    }

    /// The broker has no session for us: forget what was in flight and read again from the
    /// cursor (those readings may reach subscribers twice; their outbox ids tell).
    fn rewind(&mut self) {
        if self.inflight.is_empty() && self.frame.is_none() {
            return;
        }
        tracing::warn!(
            in_flight = self.inflight.len(),
            "upstream session lost; resending from the cursor"
        );
        self.inflight.clear();
        self.frame = None;
        let mut cursor = self.cursor.clone();
        cursor.skips = self.reader.skips(cursor.next_seq);
        self.reader = OutboxReader::open(&self.store, Some(&cursor));
    }

    /// Frames gone before they were read.
    fn lost(&mut self, from_seq: u64, to_seq: u64, readings: u64) {
        if readings > 0 {
            tracing::warn!(
                readings,
                from_seq,
                to_seq,
                "upstream outbox: readings dropped by retention before they were forwarded"
            );
        }
        self.cursor.dropped += readings;
        self.dirty = true;
    }

    /// Every tick: retention and the bound, status, and the cursor saved when it moved.
    fn maintain(&mut self, connected: bool) {
        let retired = self.reader.account_retired();
        if retired > 0 {
            tracing::warn!(
                readings = retired,
                "upstream outbox: readings dropped by retention before they were forwarded"
            );
            self.cursor.dropped += retired;
            self.dirty = true;
        }
        let buffered = self.frame.as_ref().map_or(0, |p| (p.frame.readings.len() - p.next) as u64);
        let unacked = self.inflight.iter().filter(|s| !s.done).count() as u64;
        let mut pending = self.reader.pending() + buffered + unacked;
        if pending > self.max_pending {
            let given_up = self.reader.drop_oldest(pending - self.max_pending);
            if given_up > 0 {
                tracing::warn!(
                    readings = given_up,
                    max_pending = self.max_pending,
                    "upstream outbox full: oldest readings dropped"
                );
                self.cursor.dropped += given_up;
                self.dirty = true;
                pending = pending.saturating_sub(given_up);
            }
            self.advance();
        }
        if self.dirty && (self.saved_at.elapsed() >= TICK || !connected) {
            self.save();
        }
        let mut s = self.lock_status();
        s.pending = pending;
        s.forwarded = self.cursor.forwarded;
        s.dropped = self.cursor.dropped;
        s.withheld = self.cursor.withheld;
        s.in_flight = unacked as usize;
        s.cursor = self.cursor.next_seq;
    }

    fn save(&mut self) {
        self.cursor.skips = self.reader.skips(self.cursor.next_seq);
        match self.cursor.save(&self.cursor_path) {
            Ok(()) => {
                self.dirty = false;
                self.saved_at = Instant::now();
            }
            Err(e) => tracing::error!(error = %e, "cannot save the upstream cursor"),
        }
    }
}

/// The topic and JSON payload of one reading, or `None` if the device's data may not leave
/// the hub (isolated or removed: TR 103 621 6.23).
fn message(
    directory: &Directory,
    prefix: &str,
    seq: u64,
    index: u32,
    kid: &Kid,
    r: &StoredReading,
) -> Option<(String, Vec<u8>)> {
    let device = DeviceId::from(*kid);
    if !directory.outgoing_allowed(&device) {
        return None;
    }
    let payload = serde_json::json!({
        "device": device,
        "name": r.name,
        "value": r.value,
        "unit": r.unit,
        "time_ms": r.time_ms,
        "seq": seq,
        "index": index,
    });
    Some((format!("{prefix}/{device}/reading"), payload.to_string().into_bytes()))
}

/// Jittered exponential back-off: a random delay in the upper half of `base · 2^failures`,
/// at most `max`.
fn backoff(failures: u32, max: Duration, rng: &mut impl Rng) -> Duration {
    let ceiling = RECONNECT_BASE.saturating_mul(1 << failures.min(20)).min(max);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(ms / 2 + rng.next_u64() % (ms / 2 + 1))
}

#[cfg(test)]
mod tests;
