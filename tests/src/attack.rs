//! Attackers on the link: forged OSCORE requests from many ports, a raw-socket spoofer, and
//! one-off datagrams from fresh source ports.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A CoAP request as an attacker would forge it: confirmable POST to `/r` with an OSCORE option
/// naming `kid` and `piv`, and `ciphertext` as payload.
pub fn forged_oscore(kid: &[u8], piv: u64, mid: u16, ciphertext: &[u8]) -> Vec<u8> {
    let piv_bytes: Vec<u8> = piv.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
    let piv_bytes = if piv_bytes.is_empty() { vec![0] } else { piv_bytes };
    let mut option = vec![0x08 | piv_bytes.len() as u8];
    option.extend_from_slice(&piv_bytes);
    option.extend_from_slice(kid);
    let mut p = coap_lite::Packet::new();
    p.header.set_type(coap_lite::MessageType::Confirmable);
    p.header.code = coap_lite::MessageClass::Request(coap_lite::RequestType::Post);
    p.header.message_id = mid;
    p.set_token(mid.to_be_bytes().to_vec());
    p.add_option(coap_lite::CoapOption::Oscore, option);
    p.payload = ciphertext.to_vec();
    p.to_bytes().expect("encode")
}

/// An attacker on `host` that forges requests for one kid from several source ports and reads
/// what the hub answers: 4.00 "Decryption failed" (a verification it was told failed) and
/// return-routability challenges (an unprotected 4.01 with an Echo option, which it can answer
/// when it really is at that address).
#[derive(Debug)]
pub struct Attacker {
    sockets: Vec<UdpSocket>,
    to: SocketAddr,
    kid: Vec<u8>,
    piv: u64,
    /// Forgeries sent.
    pub sent: u64,
    /// "Decryption failed" answers received.
    pub failures_seen: u64,
    /// Routability challenges received.
    pub challenges_seen: u64,
    /// Forgeries sent again with a challenge's Echo (proving this address).
    pub answered: u64,
}

impl Attacker {
    /// `ports` sockets on `host`, forging for `kid` at the hub `to`.
    pub fn new(to: SocketAddr, host: std::net::IpAddr, kid: &[u8], ports: usize) -> Attacker {
        let sockets = (0..ports.max(1))
            .map(|_| {
                let s = UdpSocket::bind(SocketAddr::new(host, 0)).expect("attacker bind");
                s.set_nonblocking(true).expect("nonblocking");
                s
            })
            .collect();
        let piv = 1_000_000 + u64::from(host_byte(host)) * 10_000_000;
        Attacker {
            sockets,
            to,
            kid: kid.to_vec(),
            piv,
            sent: 0,
            failures_seen: 0,
            challenges_seen: 0,
            answered: 0,
        }
    }

    fn forgery(&mut self, echo: Option<&[u8]>) -> Vec<u8> {
        self.piv += 1;
        let body: Vec<u8> =
            (0..24u64).map(|i| (self.piv.wrapping_mul(2_654_435_761) >> (i % 24)) as u8).collect();
        let d = forged_oscore(&self.kid, self.piv, self.piv as u16, &body);
        match echo {
            None => d,
            Some(v) => {
                let mut p = coap_lite::Packet::from_bytes(&d).expect("own forgery");
                p.add_option(
                    coap_lite::CoapOption::Unknown(protocol::link::ECHO_OPTION),
                    v.to_vec(),
                );
                p.to_bytes().expect("encode")
            }
        }
    }

    /// Sends `n` forgeries, round robin over the ports.
    pub fn forge(&mut self, n: u64) {
        for _ in 0..n {
            let d = self.forgery(None);
            let i = (self.sent % self.sockets.len() as u64) as usize;
            let _ = self.sockets[i].send_to(&d, self.to);
            self.sent += 1;
        }
    }

    /// Reads every answer waiting; with `answer`, each challenge is answered once with a new
    /// forgery carrying its Echo from the port it came to.
    pub fn drain(&mut self, answer: bool) {
        let mut buf = [0u8; 1500];
        for i in 0..self.sockets.len() {
            while let Ok(n) = self.sockets[i].recv(&mut buf) {
                let Ok(p) = coap_lite::Packet::from_bytes(&buf[..n]) else { continue };
                let code = p.header.code;
                if code == coap_lite::MessageClass::Response(coap_lite::ResponseType::BadRequest)
                    && p.payload == b"Decryption failed"
                {
                    self.failures_seen += 1;
                }
                let echo = p
                    .get_first_option(coap_lite::CoapOption::Unknown(protocol::link::ECHO_OPTION))
                    .cloned();
                if let Some(echo) = echo {
                    self.challenges_seen += 1;
                    if answer {
                        let d = self.forgery(Some(&echo));
                        let _ = self.sockets[i].send_to(&d, self.to);
                        self.sent += 1;
                        self.answered += 1;
                    }
                }
            }
        }
    }

    /// Runs an attacker on its own thread: `rate` forgeries a second (answering challenges if
    /// `answer`) until `stop`; returns it with its counts when joined.
    pub fn flood(
        mut self,
        rate: u64,
        answer: bool,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<Attacker> {
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let due = started.elapsed().as_millis() as u64 * rate / 1000;
                if self.sent < due {
                    self.forge((due - self.sent).min(64));
                }
                self.drain(answer);
                // Pacing the attack, not waiting for a condition.
                std::thread::sleep(Duration::from_millis(2));
            }
            self.drain(answer);
            self
        })
    }
}

fn host_byte(host: std::net::IpAddr) -> u8 {
    match host {
        std::net::IpAddr::V4(v4) => v4.octets()[3],
        std::net::IpAddr::V6(v6) => v6.octets()[15],
    }
}

/// A blind spoofer: sends UDP datagrams with any IPv4 source address and port through a raw
/// socket, and never receives what is sent back there (needs root or CAP_NET_RAW).
#[derive(Debug)]
pub struct Spoofer {
    socket: socket2::Socket,
}

impl Spoofer {
    /// A raw IPv4 socket (`IPPROTO_RAW`: the datagram carries its own IP header).
    pub fn new() -> std::io::Result<Spoofer> {
        const SOCK_RAW: i32 = 3;
        const IPPROTO_RAW: i32 = 255;
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::from(SOCK_RAW),
            Some(socket2::Protocol::from(IPPROTO_RAW)),
        )?;
        Ok(Spoofer { socket })
    }

    /// Sends `payload` as a UDP datagram from `from` to `to` (the kernel fills in the IP
    /// checksum and id; the UDP checksum is left out, which IPv4 allows).
    pub fn send(
        &self,
        from: std::net::SocketAddrV4,
        to: std::net::SocketAddrV4,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let udp_len = 8 + payload.len();
        let total = 20 + udp_len;
        let mut p = Vec::with_capacity(total);
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
        p.extend_from_slice(&from.ip().octets());
        p.extend_from_slice(&to.ip().octets());
        p.extend_from_slice(&from.port().to_be_bytes());
        p.extend_from_slice(&to.port().to_be_bytes());
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        self.socket.send_to(&p, &SocketAddr::V4(to).into())?;
        Ok(())
    }
}

/// Sends `datagram` to `to` from a fresh socket (a new source port) and returns the answer's
/// code and payload, if one comes within a few seconds.
pub fn send_from_new_port(to: SocketAddr, datagram: &[u8]) -> Option<(String, Vec<u8>, bool)> {
    let s = UdpSocket::bind("127.0.0.1:0").expect("socket");
    s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    s.send_to(datagram, to).expect("send");
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    let p = coap_lite::Packet::from_bytes(&buf[..n]).ok()?;
    let code = match p.header.code {
        coap_lite::MessageClass::Response(r) => format!("{r:?}"),
        other => format!("{other:?}"),
    };
    let protected = p.get_option(coap_lite::CoapOption::Oscore).is_some();
    Some((code, p.payload, protected))
}

/// Sends a pairing hello from a fresh socket (a new source port) as a sensor does: when the hub
/// answers 4.01 with an Echo option (its return-routability cookie, RFC 9175), sends it again
/// with that option. The final answer's code and payload, if one comes within a few seconds.
pub fn hello_from_new_port(to: SocketAddr, datagram: &[u8]) -> Option<(String, Vec<u8>)> {
    let s = UdpSocket::bind(SocketAddr::new(to.ip(), 0)).expect("socket");
    s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let mut request = coap_lite::Packet::from_bytes(datagram).expect("a CoAP request");
    let echo = coap_lite::CoapOption::Unknown(protocol::pairing::ECHO_OPTION);
    for _ in 0..3 {
        s.send_to(&request.to_bytes().expect("encode"), to).expect("send");
        let mut buf = [0u8; 1500];
        let (n, _) = s.recv_from(&mut buf).ok()?;
        let p = coap_lite::Packet::from_bytes(&buf[..n]).ok()?;
        let code = match p.header.code {
            coap_lite::MessageClass::Response(r) => format!("{r:?}"),
            other => format!("{other:?}"),
        };
        match p.get_first_option(echo) {
            Some(cookie) if code == "Unauthorized" => {
                request.header.message_id = request.header.message_id.wrapping_add(1);
                request.set_option(echo, [cookie.clone()].into_iter().collect());
            }
            _ => return Some((code, p.payload)),
        }
    }
    None
}
