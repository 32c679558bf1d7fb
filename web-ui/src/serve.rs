//! HTTPS only (EN 303 645 5.5-1): every connection must complete a TLS handshake with the hub's
//! certificate before any HTTP is read, so a plain-HTTP request on the port gets no HTTP answer.
//! Connections hold slots (`admission::slots`: a cap per address, and a newcomer evicts the
//! oldest connection without a session, so no client that has not logged in can keep the owner
//! out) and every phase has a deadline: the TLS handshake, a request's headers (which is also how
//! long a kept-alive connection may stay idle) and its body. Connections cut for being slow
//! before their first request, and requests whose body came too late (408), are counted.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use admission::slots::{Slot, Slots};
use axum::Router;
use axum::http::{HeaderValue, header};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::guard::{ClientAddr, Origins};

/// How the web UI serves: its slots, each phase's deadline, and the origins state changes may
/// come from.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The listener's connection slots.
    pub slots: Arc<Slots>,
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// A request's headers must arrive within this (and an idle kept-alive connection closes
    /// after it).
    pub header_timeout: Duration,
    /// A request's body must arrive within this of its headers.
    pub body_timeout: Duration,
    /// Where pages are served from (`Origin` of state changes).
    pub origins: Arc<Origins>,
}

/// What the server tells the guards about the connection a request came on (a request
/// extension).
#[derive(Debug, Clone)]
pub struct Connection {
    slot: Arc<Slot>,
    body_late: Arc<AtomicBool>,
}

impl Connection {
    /// The client showed a valid session: its connection is never evicted to make room.
    pub fn established(&self) {
        self.slot.establish();
    }

    /// Whether this request's body did not arrive in time.
    pub fn body_late(&self) -> bool {
        self.body_late.load(Ordering::Acquire)
    }
}

/// Serves `router` over TLS on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    options: ServeOptions,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "web accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        // No slot: the connection is dropped unanswered (counted by the slots).
        let Ok(slot) = options.slots.acquire(peer.ip()) else { continue };
        let slot = Arc::new(slot);
        let (acceptor, router, options, shutdown) =
            (acceptor.clone(), router.clone(), options.clone(), shutdown.clone());
        tokio::spawn(async move {
            let watched = slot.clone();
            tokio::select! {
                () = connection(tcp, peer, acceptor, router, &options, slot, shutdown) => {}
                () = watched.evicted() => {
                    tracing::debug!(%peer, "web connection closed to make room (no session)");
                }
            }
        });
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
    options: &ServeOptions,
    slot: Arc<Slot>,
    shutdown: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        // Plain HTTP, a scanner or a client that does not trust us yet: no HTTP answer.
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            slot.count_slow();
            tracing::debug!(%peer, "TLS handshake not finished in time");
            return;
        }
    };
    let requests = Arc::new(AtomicU64::new(0));
    let service = {
        let (slot, requests) = (slot.clone(), requests.clone());
        let (origins, body_timeout) = (options.origins.clone(), options.body_timeout);
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            requests.fetch_add(1, Ordering::Relaxed);
            let body_late = Arc::new(AtomicBool::new(false));
            let ext = req.extensions_mut();
            ext.insert(ClientAddr(peer.ip()));
            ext.insert(origins.clone());
            ext.insert(Connection { slot: slot.clone(), body_late: body_late.clone() });
            let req =
                req.map(|b| axum::body::Body::new(Timed::new(b, body_timeout, body_late.clone())));
            let (router, slot) = (router.clone(), slot.clone());
            async move {
                let mut res = router.oneshot(req).await?;
                if body_late.load(Ordering::Acquire) {
                    // Cut: the rest of the body is not waited for.
                    slot.count_slow();
                    res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, std::convert::Infallible>(res)
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .serve_connection(TokioIo::new(tls), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            // Headers that did not come in time before any request: slow (after a request it
            // is an idle kept-alive connection closing, which is normal).
            if r.is_err_and(|e| e.is_timeout()) && requests.load(Ordering::Relaxed) == 0 {
                slot.count_slow();
                tracing::debug!(%peer, "request headers not received in time");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

/// A request body that must arrive within a deadline; after it, reading fails (and `late` is
/// set), so the handler answers at once instead of waiting for a client that sends nothing.
#[derive(Debug)]
struct Timed {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    late: Arc<AtomicBool>,
}

impl Timed {
    fn new(inner: Incoming, within: Duration, late: Arc<AtomicBool>) -> Self {
        Self { inner, deadline: Box::pin(tokio::time::sleep(within)), late }
    }
}

/// The error a late body reads as.
#[derive(Debug, thiserror::Error)]
#[error("request body not received in time")]
struct BodyTimeout;

impl Body for Timed {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.late.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.late.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
