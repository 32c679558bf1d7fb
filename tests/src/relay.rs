//! A recording, tampering UDP relay between a client and the hub.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Mutex;

/// A UDP relay between a client and the hub that records what the client sends and can tamper
/// with chosen datagrams (flips a byte of the ciphertext).
#[derive(Debug)]
pub struct Relay {
    /// Where clients send to.
    pub addr: SocketAddr,
    /// Datagrams from the client, in order.
    pub captured: std::sync::Arc<Mutex<Vec<Vec<u8>>>>,
    /// Indices (0-based, among client datagrams) to tamper with.
    pub tamper: std::sync::Arc<Mutex<Vec<usize>>>,
    /// Tokens of client requests the hub answered with an OSCORE-protected response.
    pub answered: std::sync::Arc<Mutex<std::collections::HashSet<Vec<u8>>>>,
}

impl Relay {
    /// Starts relaying to `hub`.
    pub fn start(hub: SocketAddr) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").expect("relay front");
        let back = UdpSocket::bind("127.0.0.1:0").expect("relay back");
        back.connect(hub).expect("connect hub");
        let addr = front.local_addr().expect("addr");
        let captured = std::sync::Arc::new(Mutex::new(Vec::new()));
        let tamper = std::sync::Arc::new(Mutex::new(Vec::new()));
        let client: std::sync::Arc<Mutex<Option<SocketAddr>>> =
            std::sync::Arc::new(Mutex::new(None));
        let answered = std::sync::Arc::new(Mutex::new(std::collections::HashSet::new()));
        let (f2, b2, c2, a2) = (
            front.try_clone().expect("clone"),
            back.try_clone().expect("clone"),
            client.clone(),
            answered.clone(),
        );
        let (cap, tam) = (captured.clone(), tamper.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = front.recv_from(&mut buf) {
                *client.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
                let mut d = buf[..n].to_vec();
                let mut cap = cap.lock().unwrap_or_else(|e| e.into_inner());
                if tam.lock().unwrap_or_else(|e| e.into_inner()).contains(&cap.len()) {
                    let last = d.len() - 1;
                    d[last] ^= 0x01;
                }
                cap.push(buf[..n].to_vec());
                drop(cap);
                let _ = back.send(&d);
            }
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                let n = match b2.recv(&mut buf) {
                    Ok(n) => n,
                    // The hub restarting makes the connected socket report refusals: keep going.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                    Err(_) => return,
                };
                if let Ok(p) = coap_lite::Packet::from_bytes(&buf[..n])
                    && p.get_option(coap_lite::CoapOption::Oscore).is_some()
                {
                    a2.lock().unwrap_or_else(|e| e.into_inner()).insert(p.get_token().to_vec());
                }
                let client = *c2.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(c) = client {
                    let _ = f2.send_to(&buf[..n], c);
                }
            }
        });
        Relay { addr, captured, tamper, answered }
    }
}
