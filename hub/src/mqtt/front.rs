//! The MQTT fronts: the TLS listener for the LAN (the hub's own rustls and certificate, so
//! clients may name the hub by IP address or host name) and the plain listener on loopback.
//! Each holds its own connection slots (a cap per address; a newcomer evicts the oldest client
//! that has not logged in: `admission::slots`) and gives a client `connect_timeout_ms` to finish
//! TLS and send CONNECT. It reads the client's CONNECT, refuses throttled, unauthenticated and
//! malformed clients (EN 303 645 5.1-5, 5.5-4, 5.13-1) and Wills to topics clients may not
//! publish to, binds the client id to its user (the broker sees `<user>/<client id>`, so no
//! user can take over another's session), and forwards accepted clients to the broker's
//! loopback listener with a one-time ticket (the broker refuses connections no front
//! prepared), checking every PUBLISH against the topics clients may write; the hub's own
//! messages it writes to the client itself (`live`), not through the broker. Its sockets set
//! TCP_NODELAY, and it acknowledges the broker's segments at once (TCP_QUICKACK) so the broker's
//! own sockets, which leave Nagle on, never wait for a delayed ACK (no 40 ms stalls).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use admission::slots::{Slot, Slots};
use bytes::BytesMut;
use rumqttd::protocol::{Connect, LastWill, Login, Packet, Protocol, v4::V4};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::auth::{Auth, Verdict};
use super::client_ids::{BrokerId, ClientIds, MAX_PERSISTENT};
use super::retained::{self, Client, Resubscribe};

/// CONNACK return codes (MQTT 3.1.1 §3.2.2.3).
const UNACCEPTABLE_PROTOCOL: u8 = 0x01;
const IDENTIFIER_REJECTED: u8 = 0x02;
const SERVER_UNAVAILABLE: u8 = 0x03;
const BAD_USER_OR_PASSWORD: u8 = 0x04;
const NOT_AUTHORIZED: u8 = 0x05;
/// The RETAIN flag of a PUBLISH's first byte.
const RETAIN: u8 = 0x01;
/// How long the broker has to close a connection whose client sent DISCONNECT.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);
/// The hub's live messages gathered for one write to a client at most, bytes.
const WRITE_BYTES: usize = 64 * 1024;
/// Longest client id accepted, bytes (MQTT 3.1.1 requires servers to take 1 to 23 characters).
const MAX_CLIENT_ID: usize = 256;

/// What every connection of a front shares.
#[derive(Debug)]
pub(crate) struct Front {
    pub auth: Arc<Auth>,
    /// The client id the broker sees for each connection.
    pub client_ids: ClientIds,
    /// The hub's own retained messages, handed to every subscriber.
    pub owned: Arc<super::owned::Owned>,
    /// The retained messages clients published (both fronts'; the broker keeps none).
    pub client_retained: Arc<retained::ClientRetained>,
    /// The broker's loopback listener.
    pub upstream: SocketAddr,
    pub max_packet: usize,
    pub connect_timeout: Duration,
    pub discovery_prefix: String,
    /// One-time tickets for the CONNECTs this front forwards (the broker's check redeems them).
    pub tickets: Arc<Tickets>,
    /// The hub's own live messages, written to each client its subscriptions match.
    pub feed: super::live::Feed,
}

/// The CONNECTs the fronts forwarded and the broker has not yet checked. A forwarded CONNECT
/// carries a one-time ticket as its password (never the client's own: the front checked that):
/// the broker accepts a connection only with an open ticket issued for its client id and user,
/// so a process on the hub that connects to the broker's port directly cannot skip the fronts'
/// checks (Wills, client ids, topics) and costs no password hashing. Tickets are used once and
/// expire.
#[derive(Debug)]
pub(crate) struct Tickets {
    /// By ticket: the client id and user it was issued for, and when.
    open: Mutex<HashMap<String, (String, String, std::time::Instant)>>,
    ttl: Duration,
    max: usize,
}

impl Tickets {
    /// Tickets that expire after `ttl`, at most `max` open at once.
    pub(super) fn new(ttl: Duration, max: usize) -> Self {
        Self { open: Mutex::new(HashMap::new()), ttl, max: max.max(1) }
    }

    /// A ticket for `client_id` of `user`; none if too many are open or randomness failed.
    fn issue(&self, client_id: &str, user: &str) -> Option<String> {
        let mut random = [0u8; 16];
        crate::rng::fill(&mut random).ok()?;
        let ticket = protocol::hex::encode(&random);
        let now = std::time::Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.len() >= self.max {
            open.retain(|_, (_, _, at)| now.duration_since(*at) < self.ttl);
            if open.len() >= self.max {
                return None;
            }
        }
        open.insert(ticket.clone(), (client_id.to_owned(), user.to_owned(), now));
        Some(ticket)
    }

    /// Uses `ticket` for `client_id` of `user`: true if it was open, fresh and issued for them.
    pub(super) fn redeem(&self, client_id: &str, user: &str, ticket: &str) -> bool {
        let now = std::time::Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let Some((id, u, at)) = open.remove(ticket) else { return false };
        id == client_id && u == user && now.duration_since(at) < self.ttl
    }
}

/// Why a client's byte stream was refused.
#[derive(Debug)]
enum Refusal {
    /// Closed cleanly.
    Closed,
    /// The client sent DISCONNECT (forwarded).
    Disconnected,
    /// Not MQTT 3.1.1 framing or packets.
    Malformed(String),
    /// A socket error.
    Io,
}

/// Serves one listener, with its own `slots`, until `shutdown` (`tls`: the TLS front; none:
/// the plain one).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    front: Arc<Front>,
    slots: Arc<Slots>,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "MQTT accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let slot = match slots.acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::debug!(%peer, %why, "MQTT connection refused");
                continue;
            }
        };
        let (front, tls, shutdown) = (front.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            tokio::select! {
                () = front.connection(tcp, peer, tls, &slot) => {}
                () = slot.evicted() => {
                    tracing::debug!(%peer, "MQTT connection closed to make room (not logged in)");
                }
                () = shutdown.cancelled() => {}
            }
        });
    }
}

impl Front {
    /// TLS (if any) and CONNECT must both be done within `connect_timeout` of connecting.
    async fn connection(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        tls: Option<TlsAcceptor>,
        slot: &Slot,
    ) {
        let deadline = Instant::now() + self.connect_timeout;
        match tls {
            Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => self.session(stream, peer.ip(), deadline, slot).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "MQTT TLS handshake failed"),
                Err(_) => {
                    slot.count_slow();
                    tracing::debug!(%peer, "MQTT TLS handshake timed out");
                }
            },
            None => self.session(tcp, peer.ip(), deadline, slot).await,
        }
    }

    async fn session<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut client: S,
        ip: IpAddr,
        deadline: Instant,
        slot: &Slot,
    ) {
        let mut buf = BytesMut::with_capacity(1024);
        let first =
            tokio::time::timeout_at(deadline, read_frame(&mut client, &mut buf, self.max_packet))
                .await;
        let mut frame = match first {
            Ok(Ok(frame)) => frame,
            Ok(Err(Refusal::Malformed(what))) => return self.auth.malformed(ip, &what),
            // A client that sent part of a packet and then nothing until the deadline.
            Err(_) if !buf.is_empty() => return self.auth.malformed(ip, "incomplete CONNECT"),
            Err(_) => return slot.count_slow(),
            Ok(Err(Refusal::Closed | Refusal::Io | Refusal::Disconnected)) => return,
        };
        let mqtt31 = protocol_name(&frame) == Some(b"MQIsdp".as_slice());
        let parsed = V4.read_mut(&mut BytesMut::from(&frame[..]), self.max_packet);
        frame.as_mut().fill(0); // it holds the password
        let (connect, will, login) = match parsed {
            Ok(Packet::Connect(connect, _, will, _, login)) => (connect, will, login),
            Ok(_) => return self.auth.malformed(ip, "first packet is not CONNECT"),
            Err(rumqttd::protocol::Error::InvalidProtocol) if mqtt31 => {
                // MQTT 3.1 names its protocol MQIsdp: a client of another version, not garbage.
                tracing::debug!(%ip, "MQTT 3.1 client refused: only MQTT 3.1.1 is served");
                return connack(&mut client, UNACCEPTABLE_PROTOCOL).await;
            }
            Err(rumqttd::protocol::Error::InvalidProtocolLevel(level)) => {
                // A client of another MQTT version: refuse it the way 3.1.1 says.
                tracing::debug!(%ip, level, "MQTT client refused: only MQTT 3.1.1 is served");
                return connack(&mut client, UNACCEPTABLE_PROTOCOL).await;
            }
            Err(e) => return self.auth.malformed(ip, &format!("bad CONNECT: {e:?}")),
        };
        if let Err(what) = check_client_id(&connect) {
            self.auth.malformed(ip, what);
            return connack(&mut client, IDENTIFIER_REJECTED).await;
        }
        let (user, password) = match login {
            Some(l) => (Some(l.username).filter(|u| !u.is_empty()), l.password),
            None => (None, String::new()),
        };
        let password = zeroize::Zeroizing::new(password);
        let verdict =
            self.auth.login(ip, user.as_deref(), &connect.client_id, password.as_bytes()).await;
        match verdict {
            Verdict::Accepted => {}
            Verdict::Refused => return connack(&mut client, BAD_USER_OR_PASSWORD).await,
            Verdict::Throttled(_) => return connack(&mut client, NOT_AUTHORIZED).await,
            Verdict::Busy => return connack(&mut client, SERVER_UNAVAILABLE).await,
        }
        let user = user.unwrap_or_default();
        if let Some(w) = &will
            && let Err(topic) = self.will_allowed(w)
        {
            // A Will is a publication made on the client's behalf: the same rules apply.
            self.auth.denied_will(&user, &topic);
            return connack(&mut client, NOT_AUTHORIZED).await;
        }
        // The broker keeps no retained message: a retained Will is kept by the front when the
        // broker publishes it (the client went away without DISCONNECT).
        let will_kept = will.as_ref().filter(|w| w.retain).and_then(|w| {
            let topic = String::from_utf8(w.topic.to_vec()).ok()?;
            Some((topic, w.qos as u8, w.message.clone()))
        });
        let will = will.map(|w| LastWill { retain: false, ..w });
        // Held until the connection ends (then its slot is free).
        let Ok(broker_id) =
            self.client_ids.assign(&user, &connect.client_id, connect.clean_session)
        else {
            tracing::warn!(%user, max = MAX_PERSISTENT, "MQTT: a persistent session refused: its user has the most persistent-session client ids");
            return connack(&mut client, IDENTIFIER_REJECTED).await;
        };
        let Some(forwarded) = self.forwarded_connect(connect, will, &user, &broker_id) else {
            tracing::warn!(
                "MQTT: a CONNECT could not be forwarded (too many waiting for the broker)"
            );
            return;
        };
        let Ok(mut upstream) = TcpStream::connect(self.upstream).await else {
            tracing::warn!("MQTT broker unreachable on loopback");
            return;
        };
        let _ = upstream.set_nodelay(true);
        quickack(&upstream);
        if upstream.write_all(&forwarded).await.is_err() {
            return;
        }
        // Logged in: never evicted to make room from now on.
        slot.establish();
        let disconnected = self.pump(client, upstream, buf, &user, ip).await;
        if let Some((topic, qos, payload)) = will_kept.filter(|_| !disconnected) {
            self.client_retained.keep(&topic, qos, payload);
        }
    }

    /// `Err(topic)` if the Will goes to a topic clients may not publish to (or is not UTF-8).
    fn will_allowed(&self, will: &LastWill) -> Result<(), String> {
        match std::str::from_utf8(&will.topic) {
            Ok(t)
                if super::topics::client_may_publish(t, &self.discovery_prefix)
                    && (!will.retain || self.client_retained.fits(t, will.message.len())) =>
            {
                Ok(())
            }
            Ok(t) => Err(t.to_owned()),
            Err(_) => Err(String::from_utf8_lossy(&will.topic).into_owned()),
        }
    }

    /// The CONNECT the broker gets: the client id bound to `user` ([`ClientIds`]), and a
    /// ticket as password.
    fn forwarded_connect(
        &self,
        mut connect: Connect,
        will: Option<LastWill>,
        user: &str,
        broker_id: &BrokerId,
    ) -> Option<BytesMut> {
        connect.client_id = broker_id.id.clone();
        let ticket = self.tickets.issue(&connect.client_id, user)?;
        let login = Login { username: user.to_owned(), password: ticket };
        let mut out = BytesMut::with_capacity(256);
        V4.write(Packet::Connect(connect, None, will, None, Some(login)), &mut out).ok()?;
        Some(out)
    }

    /// Forwards both ways until either side closes: client packets one frame at a time (each
    /// PUBLISH checked, a retained one kept by the front; each SUBSCRIBE given its retained
    /// messages after the SUBACK: [`retained`]), broker packets whole frames at a time
    /// (acknowledged at once), and the hub's live messages the client's filters match
    /// ([`super::live`]). Whether the client ended with DISCONNECT.
    async fn pump<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: S,
        upstream: TcpStream,
        mut buf: BytesMut,
        user: &str,
        ip: IpAddr,
    ) -> bool {
        let (mut client_rx, mut client_tx) = tokio::io::split(client);
        let (mut up_rx, mut up_tx) = upstream.into_split();
        let resubscribe =
            Mutex::new(Resubscribe::new(self.owned.clone(), self.client_retained.clone()));
        let mut feed = self.feed.reader();
        // The client acknowledged retained messages of the front's: more may go.
        let acked = tokio::sync::Notify::new();
        // What the front itself sends the client: acknowledgements (PUBREL) of its own PUBLISHes.
        let (to_client, mut from_front) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        let inbound = async {
            let mut out = BytesMut::with_capacity(4096);
            loop {
                // Every complete frame already buffered goes in one write.
                loop {
                    match rumqttd::protocol::v4::check(buf.iter(), self.max_packet) {
                        Ok(h) => {
                            let mut frame = buf.split_to(h.frame_length());
                            if let Err(why) = self.allowed(&frame, user) {
                                return Some(why);
                            }
                            if frame[0] >> 4 == 3 {
                                // The broker keeps no retained message (the front keeps
                                // clients' ones): it gets every PUBLISH as a live one.
                                frame[0] &= !RETAIN;
                            }
                            let verdict = lock(&resubscribe).client_packet(&frame, self.max_packet);
                            match verdict {
                                Client::Forward => out.extend_from_slice(&frame),
                                Client::Refuse(why) => {
                                    return Some(Refusal::Malformed(why.into()));
                                }
                                Client::Answer(bytes) => {
                                    acked.notify_one();
                                    if !bytes.is_empty() && to_client.send(bytes).await.is_err() {
                                        return None;
                                    }
                                }
                            }
                            if frame.first() == Some(&0xE0) {
                                // DISCONNECT: nothing after it counts.
                                let _ = up_tx.write_all(&out).await;
                                return Some(Refusal::Disconnected);
                            }
                        }
                        Err(rumqttd::protocol::Error::InsufficientBytes(_)) => break,
                        Err(e) => return Some(Refusal::Malformed(format!("{e:?}"))),
                    }
                }
                if !out.is_empty() {
                    if up_tx.write_all(&out).await.is_err() {
                        return None;
                    }
                    out.clear();
                }
                match client_rx.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        let outbound = async {
            let mut b = BytesMut::with_capacity(16 * 1024);
            let mut out = BytesMut::with_capacity(16 * 1024);
            // The broker's packets carry what clients published, within the same limit.
            let max = self.max_packet.saturating_add(64 * 1024);
            // The feed is read only while the client holds a filter: a client subscribed to
            // nothing costs the hub's messages nothing. One that subscribes again reads from
            // then on, not a backlog from before.
            let (mut hub_live, mut reading) = (true, false);
            loop {
                // Retained messages still owed go on as soon as the client took the last page.
                let (more, subscribed) = {
                    let r = lock(&resubscribe);
                    (r.more(), r.subscribed())
                };
                if subscribed && !reading {
                    feed.skip_to_now();
                }
                reading = subscribed;
                tokio::select! {
                    r = up_rx.read_buf(&mut b) => match r {
                        Ok(0) | Err(_) => return,
                        Ok(_) => quickack(up_rx.as_ref()),
                    },
                    Some(bytes) = from_front.recv() => out.extend_from_slice(&bytes),
                    m = feed.next(), if hub_live && reading => match m {
                        Some(m) => {
                            // With whatever else is waiting, up to a write's worth.
                            let mut r = lock(&resubscribe);
                            let mut next = Some(m);
                            while let Some(m) = next {
                                if r.hub_message(m.topic()) {
                                    out.extend_from_slice(&m.frame);
                                }
                                next = if out.len() < WRITE_BYTES { feed.try_next() } else { None };
                            }
                        }
                        None => hub_live = false,
                    },
                    () = acked.notified() => {}
                    () = std::future::ready(()), if more => {}
                }
                loop {
                    match rumqttd::protocol::v4::check(b.iter(), max) {
                        Ok(h) => {
                            let frame = b.split_to(h.frame_length());
                            lock(&resubscribe).broker_packet(&frame, max);
                            out.extend_from_slice(&frame);
                        }
                        Err(rumqttd::protocol::Error::InsufficientBytes(_)) => break,
                        Err(e) => {
                            tracing::warn!(error = ?e, "MQTT: the broker sent a packet the front cannot frame");
                            return;
                        }
                    }
                }
                // Retained messages go after their SUBSCRIBE's SUBACK, a page at a time.
                out.extend_from_slice(&lock(&resubscribe).ready());
                if !out.is_empty() {
                    if client_tx.write_all(&out).await.is_err() || client_tx.flush().await.is_err()
                    {
                        return;
                    }
                    out.clear();
                }
            }
        };
        tokio::pin!(inbound, outbound);
        tokio::select! {
            refusal = &mut inbound => match refusal {
                Some(Refusal::Malformed(what)) => self.auth.malformed(ip, &what),
                Some(Refusal::Disconnected) => {
                    // The broker closes the connection once it has handled the DISCONNECT;
                    // closing it first would make rumqttd handle the disconnection twice
                    // (and log an ERROR for a normal disconnect).
                    let _ = tokio::time::timeout(DISCONNECT_GRACE, &mut outbound).await;
                    return true;
                }
                Some(Refusal::Closed | Refusal::Io) | None => {}
            },
            () = &mut outbound => {}
        }
        false
    }

    /// Checks one client packet: a PUBLISH must parse and go to a topic clients may write, and
    /// a retained one fit the bound of clients' retained messages (then the front keeps it).
    fn allowed(&self, frame: &[u8], user: &str) -> Result<(), Refusal> {
        if frame.first().map(|b| b >> 4) != Some(3) {
            return Ok(()); // not a PUBLISH: the broker checks the rest
        }
        let packet = V4
            .read_mut(&mut BytesMut::from(frame), self.max_packet)
            .map_err(|e| Refusal::Malformed(format!("bad PUBLISH: {e:?}")))?;
        let Packet::Publish(publish, _) = packet else {
            return Err(Refusal::Malformed("bad PUBLISH".into()));
        };
        let topic = std::str::from_utf8(&publish.topic)
            .map_err(|_| Refusal::Malformed("topic is not UTF-8".into()))?;
        if super::topics::client_may_publish(topic, &self.discovery_prefix) {
            let qos = (frame[0] >> 1) & 0x03;
            if !publish.retain || self.client_retained.keep(topic, qos, publish.payload.clone()) {
                return Ok(());
            }
            self.auth.denied_publish(user, topic);
            return Err(Refusal::Closed);
        }
        // Bridge requests are the owner's commands: only for users the owner made admins.
        if super::bridge_api::request(topic).is_some() && self.auth.is_admin(user) {
            return Ok(()); // (never kept: a request is acted on once)
        }
        self.auth.denied_publish(user, topic);
        Err(Refusal::Closed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Client ids the front refuses (CONNACK 2, MQTT 3.1.1 §3.1.3.1): the hub's own, overlong
/// ones, ones with characters the broker refuses (`+ $ # /`), and an empty one that asks for a
/// persistent session [MQTT-3.1.3-8].
fn check_client_id(connect: &Connect) -> Result<(), &'static str> {
    let id = &connect.client_id;
    if id.starts_with(super::RESERVED_CLIENT_PREFIX) {
        return Err("reserved client id");
    }
    if id.len() > MAX_CLIENT_ID {
        return Err("client id too long");
    }
    if id.contains(['+', '$', '#', '/']) {
        return Err("client id with + $ # or /");
    }
    if id.is_empty() && !connect.clean_session {
        return Err("empty client id with a persistent session");
    }
    Ok(())
}

/// The protocol name a CONNECT frame carries (after the fixed header's remaining length).
fn protocol_name(frame: &[u8]) -> Option<&[u8]> {
    let header = 2 + frame.iter().skip(1).take(3).take_while(|b| **b & 0x80 != 0).count();
    let len = frame.get(header..header + 2)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    frame.get(header + 2..header + 2 + len)
}

/// Reads the client's first MQTT frame (CONNECT) into `buf` and splits it off.
async fn read_frame<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<BytesMut, Refusal> {
    loop {
        // The first packet must be CONNECT: refuse anything else at its first byte.
        if buf.first().is_some_and(|b| b >> 4 != 1) {
            return Err(Refusal::Malformed("first packet is not CONNECT".into()));
        }
        match rumqttd::protocol::v4::check(buf.iter(), max) {
            Ok(h) => return Ok(buf.split_to(h.frame_length())),
            Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(Refusal::Malformed(format!("{e:?}"))),
        }
        match s.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Err(Refusal::Closed),
            Ok(0) => return Err(Refusal::Malformed("connection closed inside a packet".into())),
            Ok(_) => {}
            Err(_) => return Err(Refusal::Io),
        }
    }
}

/// Refuses a connection with CONNACK `code`, then closes it.
async fn connack<S: AsyncWrite + Unpin>(s: &mut S, code: u8) {
    let _ = s.write_all(&[0x20, 0x02, 0x00, code]).await;
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

/// Acknowledges what the broker sent at once (Linux re-enters delayed-ACK mode by itself, so
/// this is set after every read).
fn quickack(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_tcp_quickack(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(id: &str, clean_session: bool) -> Connect {
        Connect { keep_alive: 30, client_id: id.into(), clean_session }
    }

    #[test]
    fn mqtt_31_is_recognized_by_its_protocol_name() {
        let v31 = [
            0x10, 0x11, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 60, 0, 3, b'a', b'b',
            b'c',
        ];
        assert_eq!(protocol_name(&v31), Some(b"MQIsdp".as_slice()));
        assert_eq!(protocol_name(&[0x10, 0x02, 0, 9]), None, "truncated");
        let mut v311 = BytesMut::new();
        V4.write(Packet::Connect(connect("x", true), None, None, None, None), &mut v311)
            .expect("connect");
        assert_eq!(protocol_name(&v311), Some(b"MQTT".as_slice()));
    }

    #[test]
    fn client_id_edges() {
        assert!(check_client_id(&connect("paho-ha", false)).is_ok());
        assert!(check_client_id(&connect(&"x".repeat(MAX_CLIENT_ID), false)).is_ok());
        assert!(check_client_id(&connect(&"x".repeat(MAX_CLIENT_ID + 1), true)).is_err());
        assert!(check_client_id(&connect("", true)).is_ok());
        assert!(check_client_id(&connect("", false)).is_err());
        for bad in ["a/b", "a+", "#", "$SYS"] {
            assert!(check_client_id(&connect(bad, true)).is_err(), "{bad}");
        }
        let reserved = format!("{}abc", super::super::RESERVED_CLIENT_PREFIX);
        assert!(check_client_id(&connect(&reserved, true)).is_err());
    }

    #[test]
    fn tickets_are_used_once_and_bound_to_their_client_id_and_user() {
        let t = Tickets::new(Duration::from_secs(10), 4);
        assert!(!t.redeem("ha:x", "ha", "00"), "none issued");
        let a = t.issue("ha:x", "ha").expect("ticket");
        assert!(!t.redeem("ha:x", "mallory", &a), "another user's name");
        let b = t.issue("ha:x", "ha").expect("ticket");
        assert!(!t.redeem("ha:y", "ha", &b), "another client id");
        let c = t.issue("ha:x", "ha").expect("ticket");
        let d = t.issue("ha:x", "ha").expect("two reconnections racing get one each");
        assert_ne!(c, d);
        assert!(t.redeem("ha:x", "ha", &c) && t.redeem("ha:x", "ha", &d));
        assert!(!t.redeem("ha:x", "ha", &c), "used once");
        // Bounded.
        let open: Vec<String> =
            (0..4).map(|i| t.issue(&format!("u:{i}"), "u").expect("ticket")).collect();
        assert!(t.issue("u:9", "u").is_none(), "too many open");
        assert!(t.redeem("u:0", "u", &open[0]));
        // Expired tickets are refused.
        let short = Tickets::new(Duration::ZERO, 4);
        let e = short.issue("ha:x", "ha").expect("ticket");
        assert!(!short.redeem("ha:x", "ha", &e));
    }
}
