//! The bad network of the process tests (issue 20 item 4): a small userspace relay standing in
//! the path between clients and a server, impairing real sockets — loss, duplication, reordering
//! and delay with jitter for UDP datagrams; delay (order kept) for TCP streams; partitions for
//! both — because this kernel has no `sch_netem`. Every decision comes from a random generator
//! seeded per flow and direction, so the same seed and the same traffic make the same decisions.
//! It can audit every OSCORE message it carries for nonce reuse, independently of the hub's and
//! the sensors' own bookkeeping, and keep the requests the server accepted, for replay tests.
//!
//! UDP is relayed like a NAT: each client address gets its own socket toward the server, so the
//! server sees one stable endpoint per client. A TCP connection is accepted, connected onward and
//! pumped both ways; during a partition its bytes wait (TCP would retransmit them) and new
//! connections are closed at once (the server is unreachable).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde_json::{Value, json};

/// What the relay does to each datagram (UDP) or chunk (TCP: only the delay applies).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice (each copy with its own delay).
    pub duplicate: f64,
    /// Probability that a datagram is held back by one more `delay_ms`, so later ones pass it.
    pub reorder: f64,
    /// One-way delay, ms.
    pub delay_ms: u64,
    /// The delay varies uniformly by up to this either way, ms (which reorders datagrams too).
    pub jitter_ms: u64,
}

/// One relayed service: clients reach `listen`, the relay talks to `target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// Where the relay listens.
    pub listen: SocketAddr,
    /// Where it forwards to.
    pub target: SocketAddr,
}

impl std::str::FromStr for Forward {
    type Err = String;

    /// `LISTEN=TARGET`, e.g. `10.0.2.1:5683=10.0.1.2:5683`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (l, t) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected LISTEN=TARGET"))?;
        let addr = |a: &str| a.parse::<SocketAddr>().map_err(|e| format!("{a:?}: {e}"));
        Ok(Forward { listen: addr(l)?, target: addr(t)? })
    }
}

/// A relay's configuration.
#[derive(Debug, Clone, Default)]
pub struct RelayConfig {
    /// Seed of every random decision.
    pub seed: u64,
    /// UDP services.
    pub udp: Vec<Forward>,
    /// TCP services.
    pub tcp: Vec<Forward>,
    /// The impairment, the same in both directions.
    pub impairment: Impairment,
    /// Audit OSCORE nonces and keep accepted requests (UDP).
    pub audit: bool,
}

/// A running relay; it stops when dropped.
#[derive(Debug)]
pub struct NetRelay {
    inner: Arc<Inner>,
    /// The bound UDP listen addresses, in the order configured.
    pub udp: Vec<SocketAddr>,
    /// The bound TCP listen addresses, in the order configured.
    pub tcp: Vec<SocketAddr>,
}

impl NetRelay {
    /// Binds every service and starts relaying.
    pub fn start(config: RelayConfig) -> std::io::Result<NetRelay> {
        let inner = Arc::new(Inner {
            impairment: config.impairment,
            seed: config.seed,
            stop: AtomicBool::new(false),
            calm: AtomicBool::new(false),
            partition: Mutex::new(None),
            partitions: AtomicU64::new(0),
            flows: AtomicU64::new(0),
            scheduler: Scheduler::default(),
            udp_up: Counters::default(),
            udp_down: Counters::default(),
            tcp_up: Counters::default(),
            tcp_down: Counters::default(),
            tcp_connections: AtomicU64::new(0),
            tcp_refused: AtomicU64::new(0),
            audit: config.audit.then(|| Mutex::new(Audit::new(config.seed))),
        });
        let mut udp = Vec::new();
        for f in &config.udp {
            let front = Arc::new(UdpSocket::bind(f.listen)?);
            front.set_read_timeout(Some(POLL))?;
            roomy(&front);
            udp.push(front.local_addr()?);
            let (inner, target) = (inner.clone(), f.target);
            std::thread::Builder::new()
                .name("netfault-udp".into())
                .spawn(move || inner.udp_front(&front, target))?;
        }
        let mut tcp = Vec::new();
        for f in &config.tcp {
            let listener = TcpListener::bind(f.listen)?;
            tcp.push(listener.local_addr()?);
            let (inner, target) = (inner.clone(), f.target);
            std::thread::Builder::new()
                .name("netfault-tcp".into())
                .spawn(move || inner.tcp_accept(&listener, target))?;
        }
        let i = inner.clone();
        std::thread::Builder::new()
            .name("netfault-clock".into())
            .spawn(move || i.scheduler.run(&i.stop))?;
        Ok(NetRelay { inner, udp, tcp })
    }

    /// Cuts the path both ways for `d` (datagrams are dropped, TCP bytes wait, new TCP
    /// connections are closed).
    pub fn partition(&self, d: Duration) {
        *lock(&self.inner.partition) = Some(Instant::now() + d);
        self.inner.partitions.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends a partition now.
    pub fn heal(&self) {
        *lock(&self.inner.partition) = None;
    }

    /// From now on only delays datagrams (`true`), or impairs them as configured again.
    pub fn calm(&self, calm: bool) {
        self.inner.calm.store(calm, Ordering::Relaxed);
    }

    /// Counts so far, as JSON: per protocol and direction (`up`: client to server).
    pub fn stats(&self) -> Value {
        let i = &self.inner;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "udp": {"up": i.udp_up.json(), "down": i.udp_down.json()},
            "tcp": {
                "up": i.tcp_up.json(),
                "down": i.tcp_down.json(),
                "connections": n(&i.tcp_connections),
                "refused_in_partition": n(&i.tcp_refused),
            },
            "partitions": n(&i.partitions),
            "partitioned": i.partitioned_until(Instant::now()).is_some(),
            "calm": i.calm.load(Ordering::Relaxed),
            "seed": i.seed,
        })
    }

    /// The nonce audit so far (`None` unless configured).
    pub fn audit(&self) -> Option<AuditReport> {
        self.inner.audit.as_ref().map(|a| lock(a).report())
    }

    /// Requests the server accepted (answered with an OSCORE response under the request's own
    /// nonce), byte for byte: at most a few thousand, sampled evenly over the run.
    pub fn accepted_requests(&self) -> Vec<Vec<u8>> {
        self.inner.audit.as_ref().map(|a| lock(a).accepted.clone()).unwrap_or_default()
    }
}

impl Drop for NetRelay {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.scheduler.cv.notify_all();
        // Wake the accept loops.
        for a in &self.tcp {
            let _ = TcpStream::connect_timeout(&wake_address(*a), Duration::from_millis(200));
        }
    }
}

/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(200);

fn wake_address(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port())
        }
        _ => a,
    }
}

/// Asks for large socket buffers (bursts of a thousand sensors), as far as the system allows.
fn roomy(s: &UdpSocket) {
    let s = socket2::SockRef::from(s);
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn chance<R: Rng + ?Sized>(rng: &mut R, p: f64) -> bool {
    p > 0.0 && (rng.next_u64() as f64 / u64::MAX as f64) < p
}

struct Inner {
    impairment: Impairment,
    seed: u64,
    stop: AtomicBool,
    /// Only the delay applies (no loss, duplication or reordering).
    calm: AtomicBool,
    /// Partitioned until then.
    partition: Mutex<Option<Instant>>,
    partitions: AtomicU64,
    /// Flows started so far (each flow's index seeds its random generators).
    flows: AtomicU64,
    scheduler: Scheduler,
    udp_up: Counters,
    udp_down: Counters,
    tcp_up: Counters,
    tcp_down: Counters,
    tcp_connections: AtomicU64,
    tcp_refused: AtomicU64,
    audit: Option<Mutex<Audit>>,
}

impl core::fmt::Debug for Inner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Inner").field("impairment", &self.impairment).finish_non_exhaustive()
    }
}

/// Counts of one protocol and direction.
#[derive(Default)]
struct Counters {
    received: AtomicU64,
    sent: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    held_back: AtomicU64,
    /// Delivered after a datagram sent later in the same flow and direction.
    reordered: AtomicU64,
    /// Dropped (UDP) or held (TCP) because of a partition.
    partitioned: AtomicU64,
    /// Copies scheduled and not yet due (UDP).
    pending: AtomicU64,
}

impl Counters {
    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    fn json(&self) -> Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "received": n(&self.received),
            "sent": n(&self.sent),
            "bytes": n(&self.bytes),
            "lost": n(&self.lost),
            "duplicated": n(&self.duplicated),
            "held_back": n(&self.held_back),
            "reordered": n(&self.reordered),
            "partitioned": n(&self.partitioned),
            "pending": n(&self.pending),
        })
    }
}

/// One flow's direction: its random generator and sequence numbers.
struct Lane {
    rng: ChaCha20Rng,
    next: u64,
    delivered: Option<u64>,
    /// TCP: when the last chunk is due (chunks keep their order).
    last_at: Option<Instant>,
}

impl Lane {
    fn new(seed: u64, flow: u64, up: bool) -> Mutex<Lane> {
        let s = seed ^ flow.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(up);
        Mutex::new(Lane {
            rng: ChaCha20Rng::seed_from_u64(s),
            next: 0,
            delivered: None,
            last_at: None,
        })
    }
}

/// A UDP client's mapping: its address and the relay's socket toward the server.
struct Flow {
    index: u64,
    client: SocketAddr,
    back: UdpSocket,
    up: Mutex<Lane>,
    down: Mutex<Lane>,
}

impl Inner {
    fn partitioned_until(&self, now: Instant) -> Option<Instant> {
        let mut p = lock(&self.partition);
        match *p {
            Some(until) if now < until => Some(until),
            Some(_) => {
                *p = None;
                None
            }
            None => None,
        }
    }

    fn counters(&self, udp: bool, up: bool) -> &Counters {
        match (udp, up) {
            (true, true) => &self.udp_up,
            (true, false) => &self.udp_down,
            (false, true) => &self.tcp_up,
            (false, false) => &self.tcp_down,
        }
    }

    /// The delays of the copies to deliver (none: lost).
    fn plan(&self, lane: &mut Lane, c: &Counters) -> Vec<Duration> {
        let mut m = self.impairment;
        if self.calm.load(Ordering::Relaxed) {
            (m.loss, m.duplicate, m.reorder) = (0.0, 0.0, 0.0);
        }
        if chance(&mut lane.rng, m.loss) {
            Counters::add(&c.lost, 1);
            return Vec::new();
        }
        let copies = if chance(&mut lane.rng, m.duplicate) {
            Counters::add(&c.duplicated, 1);
            2
        } else {
            1
        };
        (0..copies)
            .map(|_| {
                let mut d = self.delay(&mut lane.rng);
                if chance(&mut lane.rng, m.reorder) {
                    Counters::add(&c.held_back, 1);
                    d += Duration::from_millis(m.delay_ms.max(20));
                }
                d
            })
            .collect()
    }

    fn delay<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        let m = self.impairment;
        let j = m.jitter_ms.min(m.delay_ms);
        let spread = if j == 0 { 0 } else { rng.next_u64() % (2 * j + 1) };
        Duration::from_millis(m.delay_ms - j + spread)
    }

    fn udp_front(self: Arc<Self>, front: &Arc<UdpSocket>, target: SocketAddr) {
        let mut flows: HashMap<SocketAddr, Arc<Flow>> = HashMap::new();
        let mut buf = vec![0u8; 65_536];
        while !self.stop.load(Ordering::Relaxed) {
            let (n, from) = match front.recv_from(&mut buf) {
                Ok(r) => r,
                Err(_) => continue, // timeout (stop flag) or a transient error
            };
            let flow = match flows.get(&from) {
                Some(f) => f.clone(),
                None => match self.new_flow(front, from, target) {
                    Ok(f) => {
                        flows.insert(from, f.clone());
                        f
                    }
                    Err(_) => continue,
                },
            };
            self.udp(front, &flow, true, buf[..n].to_vec());
        }
    }

    fn new_flow(
        self: &Arc<Self>,
        front: &Arc<UdpSocket>,
        client: SocketAddr,
        target: SocketAddr,
    ) -> std::io::Result<Arc<Flow>> {
        let any: IpAddr = if target.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let back = UdpSocket::bind(SocketAddr::new(any, 0))?;
        back.connect(target)?;
        back.set_read_timeout(Some(POLL))?;
        roomy(&back);
        let index = self.flows.fetch_add(1, Ordering::Relaxed);
        let flow = Arc::new(Flow {
            index,
            client,
            back,
            up: Lane::new(self.seed, index, true),
            down: Lane::new(self.seed, index, false),
        });
        let (me, f, front) = (self.clone(), flow.clone(), front.clone());
        std::thread::Builder::new().name("netfault-flow".into()).spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !me.stop.load(Ordering::Relaxed) {
                match f.back.recv(&mut buf) {
                    Ok(n) => me.udp(&front, &f, false, buf[..n].to_vec()),
                    // Timeouts, and refusals while the server restarts: keep going.
                    Err(_) => continue,
                }
            }
        })?;
        Ok(flow)
    }

    /// One datagram of `flow` (`up`: from the client): audit, impair, schedule.
    fn udp(self: &Arc<Self>, front: &Arc<UdpSocket>, flow: &Arc<Flow>, up: bool, bytes: Vec<u8>) {
        let now = Instant::now();
        let c = self.counters(true, up);
        Counters::add(&c.received, 1);
        if let Some(a) = &self.audit {
            lock(a).record(flow.index, up, &bytes);
        }
        if self.partitioned_until(now).is_some() {
            Counters::add(&c.partitioned, 1);
            return;
        }
        let (seq, delays) = {
            let mut lane = lock(if up { &flow.up } else { &flow.down });
            let seq = lane.next;
            lane.next += 1;
            (seq, self.plan(&mut lane, c))
        };
        for d in delays {
            Counters::add(&c.pending, 1);
            let (me, f, front, bytes) = (self.clone(), flow.clone(), front.clone(), bytes.clone());
            self.scheduler.at(now + d, move || me.deliver(&front, &f, up, seq, &bytes));
        }
    }

    fn deliver(&self, front: &UdpSocket, flow: &Flow, up: bool, seq: u64, bytes: &[u8]) {
        let c = self.counters(true, up);
        c.pending.fetch_sub(1, Ordering::Relaxed);
        if self.partitioned_until(Instant::now()).is_some() {
            Counters::add(&c.partitioned, 1);
            return;
        }
        {
            let mut lane = lock(if up { &flow.up } else { &flow.down });
            match lane.delivered {
                Some(d) if seq < d => Counters::add(&c.reordered, 1),
                _ => lane.delivered = Some(seq),
            }
        }
        let sent = if up { flow.back.send(bytes) } else { front.send_to(bytes, flow.client) };
        if sent.is_ok() {
            Counters::add(&c.sent, 1);
            Counters::add(&c.bytes, bytes.len() as u64);
        }
    }

    fn tcp_accept(self: Arc<Self>, listener: &TcpListener, target: SocketAddr) {
        for stream in listener.incoming() {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(client) = stream else { continue };
            if self.partitioned_until(Instant::now()).is_some() {
                self.tcp_refused.fetch_add(1, Ordering::Relaxed);
                continue; // closed at once: nothing gets through a partition
            }
            let me = self.clone();
            let _ = std::thread::Builder::new()
                .name("netfault-conn".into())
                .spawn(move || me.tcp_connection(client, target));
        }
    }

    fn tcp_connection(self: Arc<Self>, client: TcpStream, target: SocketAddr) {
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
            return;
        };
        self.tcp_connections.fetch_add(1, Ordering::Relaxed);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let index = self.flows.fetch_add(1, Ordering::Relaxed);
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
        let me = self.clone();
        let up = Lane::new(self.seed, index, true);
        let _ = std::thread::Builder::new()
            .name("netfault-pump".into())
            .spawn(move || me.pump(client, s2, up, true));
        self.pump(server, c2, Lane::new(self.seed, index, false), false);
    }

    /// Copies `from` to `to` with each chunk delayed (order kept) and held during partitions.
    fn pump(self: &Arc<Self>, mut from: TcpStream, to: TcpStream, lane: Mutex<Lane>, up: bool) {
        let (tx, rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>();
        let (me, from2) = (self.clone(), from.try_clone());
        let writer = std::thread::Builder::new().name("netfault-write".into()).spawn(move || {
            let mut to = to;
            let c = me.counters(false, up);
            for (at, chunk) in rx {
                wait_until(at);
                let mut held = false;
                while let Some(until) = me.partitioned_until(Instant::now()) {
                    if !held {
                        Counters::add(&c.partitioned, 1);
                        held = true;
                    }
                    // In steps, so that a heal takes effect at once.
                    wait_until(until.min(Instant::now() + Duration::from_millis(50)));
                }
                let Some(bytes) = chunk else {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                };
                if to.write_all(&bytes).is_err() {
                    let _ = to.shutdown(Shutdown::Both);
                    if let Ok(f) = &from2 {
                        let _ = f.shutdown(Shutdown::Both);
                    }
                    return;
                }
                Counters::add(&c.sent, 1);
                Counters::add(&c.bytes, bytes.len() as u64);
            }
        });
        if writer.is_err() {
            return;
        }
        let c = self.counters(false, up);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let chunk = match from.read(&mut buf) {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(buf[..n].to_vec()),
            };
            let now = Instant::now();
            let at = {
                let mut lane = lock(&lane);
                let d = self.delay(&mut lane.rng);
                let at = lane.last_at.map_or(now + d, |last| last.max(now + d));
                lane.last_at = Some(at);
                at
            };
            let end = chunk.is_none();
            if chunk.is_some() {
                Counters::add(&c.received, 1);
            }
            if tx.send((at, chunk)).is_err() || end {
                return;
            }
        }
    }
}

mod audit;
mod scheduler;
#[cfg(test)]
mod tests;

use audit::Audit;
pub use audit::AuditReport;
use scheduler::{Scheduler, wait_until};
