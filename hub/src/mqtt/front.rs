//! The MQTT fronts: the TLS listener for the LAN (the hub's own rustls and certificate, so
//! clients may name the hub by IP address or host name) and the plain listener on loopback.
//! Each reads the client's CONNECT, refuses throttled, unauthenticated and malformed clients
//! (EN 303 645 5.1-5, 5.5-4, 5.13-1), and forwards accepted ones to the broker's loopback
//! listener, checking every PUBLISH against the topics clients may write. Its sockets set
//! TCP_NODELAY, and it acknowledges the broker's segments at once (TCP_QUICKACK) so the broker's
//! own sockets, which leave Nagle on, never wait for a delayed ACK (no 40 ms stalls).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{Packet, Protocol, v4::V4};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::auth::{Auth, Verdict};

/// CONNACK return codes (MQTT 3.1.1 §3.2.2.3).
const UNACCEPTABLE_PROTOCOL: u8 = 0x01;
const IDENTIFIER_REJECTED: u8 = 0x02;
const SERVER_UNAVAILABLE: u8 = 0x03;
const BAD_USER_OR_PASSWORD: u8 = 0x04;
const NOT_AUTHORIZED: u8 = 0x05;

/// What every connection of a front shares.
#[derive(Debug)]
pub(crate) struct Front {
    pub auth: Arc<Auth>,
    /// The broker's loopback listener.
    pub upstream: SocketAddr,
    pub max_packet: usize,
    pub connect_timeout: Duration,
    pub discovery_prefix: String,
    pub limit: Arc<Semaphore>,
}

/// Why a client's byte stream was refused.
#[derive(Debug)]
enum Refusal {
    /// Closed cleanly.
    Closed,
    /// Not MQTT 3.1.1 framing or packets.
    Malformed(String),
    /// A socket error.
    Io,
}

/// Serves one listener until `shutdown` (`tls`: the TLS front; none: the plain one).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    front: Arc<Front>,
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
        let Ok(permit) = front.limit.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "MQTT connection refused: connection limit reached");
            continue;
        };
        let (front, tls, shutdown) = (front.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            tokio::select! {
                () = front.connection(tcp, peer, tls) => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
}

impl Front {
    async fn connection(&self, tcp: TcpStream, peer: SocketAddr, tls: Option<TlsAcceptor>) {
        match tls {
            Some(acceptor) => {
                match tokio::time::timeout(self.connect_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => self.session(stream, peer.ip()).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "MQTT TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "MQTT TLS handshake timed out"),
                }
            }
            None => self.session(tcp, peer.ip()).await,
        }
    }

    async fn session<S: AsyncRead + AsyncWrite + Unpin>(&self, mut client: S, ip: IpAddr) {
        let mut buf = BytesMut::with_capacity(1024);
        let first = tokio::time::timeout(
            self.connect_timeout,
            read_frame(&mut client, &mut buf, self.max_packet),
        )
        .await;
        let frame = match first {
            Ok(Ok(frame)) => frame,
            Ok(Err(Refusal::Malformed(what))) => return self.auth.malformed(ip, &what),
            // A client that sent part of a packet and then nothing until the deadline.
            Err(_) if !buf.is_empty() => return self.auth.malformed(ip, "incomplete CONNECT"),
            Ok(Err(Refusal::Closed | Refusal::Io)) | Err(_) => return,
        };
        let parsed = V4.read_mut(&mut BytesMut::from(&frame[..]), self.max_packet);
        let (connect, login) = match parsed {
            Ok(Packet::Connect(connect, _, _, _, login)) => (connect, login),
            Ok(_) => return self.auth.malformed(ip, "first packet is not CONNECT"),
            Err(rumqttd::protocol::Error::InvalidProtocolLevel(level)) => {
                // A client of another MQTT version: refuse it the way 3.1.1 says.
                tracing::debug!(%ip, level, "MQTT client refused: only MQTT 3.1.1 is served");
                return connack(&mut client, UNACCEPTABLE_PROTOCOL).await;
            }
            Err(e) => return self.auth.malformed(ip, &format!("bad CONNECT: {e:?}")),
        };
        if connect.client_id.starts_with(super::RESERVED_CLIENT_PREFIX) {
            self.auth.malformed(ip, "reserved client id");
            return connack(&mut client, IDENTIFIER_REJECTED).await;
        }
        let user = login.as_ref().map(|l| l.username.clone()).filter(|u| !u.is_empty());
        let password = zeroize::Zeroizing::new(login.map(|l| l.password).unwrap_or_default());
        let verdict =
            self.auth.login(ip, user.as_deref(), &connect.client_id, password.as_bytes()).await;
        match verdict {
            Verdict::Accepted => {}
            Verdict::Refused => return connack(&mut client, BAD_USER_OR_PASSWORD).await,
            Verdict::Throttled(_) => return connack(&mut client, NOT_AUTHORIZED).await,
            Verdict::Busy => return connack(&mut client, SERVER_UNAVAILABLE).await,
        }
        let Ok(mut upstream) = TcpStream::connect(self.upstream).await else {
            tracing::warn!("MQTT broker unreachable on loopback");
            return;
        };
        let _ = upstream.set_nodelay(true);
        quickack(&upstream);
        if upstream.write_all(&frame).await.is_err() {
            return;
        }
        let user = user.unwrap_or_default();
        self.pump(client, upstream, buf, &user, ip).await;
    }

    /// Forwards both ways until either side closes: client packets one frame at a time (each
    /// PUBLISH checked), broker bytes as they come (acknowledged at once).
    async fn pump<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: S,
        upstream: TcpStream,
        mut buf: BytesMut,
        user: &str,
        ip: IpAddr,
    ) {
        let (mut client_rx, mut client_tx) = tokio::io::split(client);
        let (mut up_rx, mut up_tx) = upstream.into_split();
        let inbound = async {
            let mut out = BytesMut::with_capacity(4096);
            loop {
                // Every complete frame already buffered goes in one write.
                loop {
                    match rumqttd::protocol::v4::check(buf.iter(), self.max_packet) {
                        Ok(h) => {
                            let frame = buf.split_to(h.frame_length());
                            if let Err(why) = self.allowed(&frame, user) {
                                return Some(why);
                            }
                            out.extend_from_slice(&frame);
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
            loop {
                b.clear();
                match up_rx.read_buf(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                quickack(up_rx.as_ref());
                if client_tx.write_all(&b).await.is_err() || client_tx.flush().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            refusal = inbound => match refusal {
                Some(Refusal::Malformed(what)) => self.auth.malformed(ip, &what),
                Some(Refusal::Closed | Refusal::Io) | None => {}
            },
            () = outbound => {}
        }
    }

    /// Checks one client packet: a PUBLISH must parse and go to a topic clients may write.
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
            return Ok(());
        }
        self.auth.denied_publish(user, topic);
        Err(Refusal::Closed)
    }
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
