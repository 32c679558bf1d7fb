//! MQTT publish→subscribe latency through a running hub (`sensor-sim mqtt-bench`, run by
//! `scripts/bench-mqtt`) through its plain or TLS front. One publisher paces QoS 0 messages on
//! a fixed schedule; one subscriber timestamps arrivals; latency is measured from each
//! message's scheduled time (no coordinated omission). MQTT framing is rumqttd's own codec; the
//! clients are minimal on purpose (CONNECT, SUBSCRIBE, PUBLISH), so the load generator stays
//! cheap. A load tool: it lives with the simulator, never in the gateway's binary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{
    Connect, Filter, Login, Packet, Protocol, Publish, QoS, Subscribe, v4::V4,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What to measure.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Host name or IP address (also the TLS server name).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port.
    #[arg(long)]
    pub port: u16,
    /// The hub certificate (PEM): connect with TLS and pin it.
    #[arg(long)]
    pub cafile: Option<std::path::PathBuf>,
    /// User name.
    #[arg(long)]
    pub user: String,
    /// Password (default: $MQTT_BENCH_PASSWORD, so it stays out of the process list).
    #[arg(long)]
    pub password: Option<String>,
    /// Messages per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Measured seconds (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Payload bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// A label for the result line.
    #[arg(long, default_value = "")]
    pub label: String,
}

/// Why a run could not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A socket or file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The host name did not resolve to an address.
    #[error("host did not resolve")]
    Resolve,
    /// The `--cafile` certificate.
    #[error("certificate: {0}")]
    Cert(#[from] rustls_pki_types::pem::Error),
    /// TLS set-up.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// `--host` is no valid TLS server name.
    #[error("server name: {0}")]
    ServerName(#[from] rustls_pki_types::InvalidDnsNameError),
    /// Neither `--password` nor `$MQTT_BENCH_PASSWORD`.
    #[error("no password: --password or $MQTT_BENCH_PASSWORD")]
    NoPassword,
    /// The hub refused the login.
    #[error("connection refused (CONNACK code {0})")]
    Refused(u8),
    /// MQTT framing.
    #[error("MQTT: {0}")]
    Codec(#[from] rumqttd::protocol::Error),
    /// The subscriber's connection closed before its SUBACK.
    #[error("subscriber closed")]
    SubscriberClosed,
    /// The subscriber task failed.
    #[error("subscriber: {0}")]
    Subscriber(#[from] tokio::task::JoinError),
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn connect(args: &BenchArgs, client_id: &str) -> Result<Box<dyn Stream>, BenchError> {
    let addr: SocketAddr = tokio::net::lookup_host((args.host.as_str(), args.port))
        .await?
        .next()
        .ok_or(BenchError::Resolve)?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut s: Box<dyn Stream> = match &args.cafile {
        Some(ca) => {
            use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)? {
                roots.add(c?)?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = ServerName::try_from(args.host.clone())?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
            Box::new(tls)
        }
        None => Box::new(tcp),
    };
    let connect = Connect { keep_alive: 60, client_id: client_id.into(), clean_session: true };
    let password = args
        .password
        .clone()
        .or_else(|| std::env::var("MQTT_BENCH_PASSWORD").ok())
        .ok_or(BenchError::NoPassword)?;
    let login = Login { username: args.user.clone(), password };
    let mut buf = BytesMut::new();
    V4.write(Packet::Connect(connect, None, None, None, Some(login)), &mut buf)?;
    s.write_all(&buf).await?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(BenchError::Refused(ack[3]));
    }
    Ok(s)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Runs one measurement and returns its result line (JSON).
pub async fn run(args: BenchArgs) -> Result<serde_json::Value, BenchError> {
    let payload_len = args.payload.max(16);
    let topic = format!("bench/{}", std::process::id());
    let origin = Instant::now();

    let mut sub = connect(&args, &format!("bench-sub-{}", std::process::id())).await?;
    let filter = Filter {
        path: topic.clone(),
        qos: QoS::AtMostOnce,
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: rumqttd::protocol::RetainForwardRule::Never,
    };
    let mut buf = BytesMut::new();
    V4.write(Packet::Subscribe(Subscribe { pkid: 1, filters: vec![filter] }, None), &mut buf)?;
    sub.write_all(&buf).await?;
    // Wait for the SUBACK.
    let mut rx = BytesMut::with_capacity(64 * 1024);
    loop {
        match V4.read_mut(&mut rx, 1 << 20) {
            Ok(Packet::SubAck(..)) => break,
            Ok(_) => continue,
            Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {
                if sub.read_buf(&mut rx).await? == 0 {
                    return Err(BenchError::SubscriberClosed);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }

    let warmup = Duration::from_secs(1);
    // Measured from one second after the publisher starts (the subscriber is ready by then).
    let measure_from = (origin.elapsed() + warmup).as_micros() as u64;
    let total = warmup + Duration::from_secs(args.seconds);
    let expected = u64::from(args.rate) * total.as_secs();
    let receiver = tokio::spawn(async move {
        // (scheduled µs, arrival µs) per message after warm-up.
        let mut latencies = Vec::with_capacity(expected as usize);
        let mut received = 0u64;
        let deadline = tokio::time::Instant::now() + total + Duration::from_secs(3);
        loop {
            loop {
                match V4.read_mut(&mut rx, 1 << 20) {
                    Ok(Packet::Publish(p, _)) => {
                        let now = origin.elapsed().as_micros() as u64;
                        let mut t = [0u8; 8];
                        t.copy_from_slice(&p.payload[..8]);
                        let scheduled = u64::from_be_bytes(t);
                        received += 1;
                        if scheduled >= measure_from {
                            latencies.push(now.saturating_sub(scheduled));
                        }
                    }
                    Ok(_) => {}
                    Err(rumqttd::protocol::Error::InsufficientBytes(_)) => break,
                    Err(e) => return Err(BenchError::Codec(e)),
                }
            }
            if received >= expected {
                return Ok((latencies, received));
            }
            match tokio::time::timeout_at(deadline, sub.read_buf(&mut rx)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Ok((latencies, received)),
                Ok(Ok(_)) => {}
            }
        }
    });

    let mut publisher = connect(&args, &format!("bench-pub-{}", std::process::id())).await?;
    let start = origin.elapsed();
    let interval = Duration::from_secs(1) / args.rate;
    let mut sent = 0u64;
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut pad = vec![0u8; payload_len];
    while sent < expected {
        let due = start + interval * sent as u32;
        let now = origin.elapsed();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        // Everything due by now goes out, each stamped with its own scheduled time.
        let now = origin.elapsed();
        out.clear();
        while sent < expected {
            let scheduled = start + interval * sent as u32;
            if scheduled > now {
                break;
            }
            pad[..8].copy_from_slice(&(scheduled.as_micros() as u64).to_be_bytes());
            let p = Publish::new(Bytes::from(topic.clone()), Bytes::copy_from_slice(&pad), false);
            V4.write(Packet::Publish(p, None), &mut out)?;
            sent += 1;
        }
        publisher.write_all(&out).await?;
        publisher.flush().await?;
    }
    let (mut latencies, received) = receiver.await??;
    latencies.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let stalls = latencies.iter().filter(|&&l| l >= 40_000).count();
    let line = serde_json::json!({
        "label": args.label,
        "rate": args.rate,
        "seconds": args.seconds,
        "sent": sent,
        "received": received,
        "measured": latencies.len(),
        "p50_ms": ms(percentile(&latencies, 0.50)),
        "p99_ms": ms(percentile(&latencies, 0.99)),
        "p999_ms": ms(percentile(&latencies, 0.999)),
        "max_ms": ms(latencies.last().copied().unwrap_or(0)),
        "over_40ms": stalls,
    });
    Ok(line)
}
