//! One proxied connection once both ends exist: protocol detection, then HTTP proxying or
//! an opaque relay, with the connection's TCP metrics and record. Either way the connection
//! ends when it is cancelled through the registry.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    authorize::{watch_tcp, InboundAuthz},
    connections::ConnGuard,
    context::ProxyContext,
    error::Error,
    l7::{
        detect::{ambiguous_head, detect, Protocol},
        http,
    },
    relay::{relay, Reset},
};
use crate::{conn::ConnContext, telemetry::TrafficLabels};

/// How a connection is to be handled.
pub(crate) struct Session {
    /// The connection's place in the registry (its context, its cancellation, its record).
    pub guard: ConnGuard,
    /// Skip detection: never parse as HTTP (opaque ports, server-speaks-first).
    pub opaque: bool,
    /// Inbound: the pod's policy, enforced per connection (TCP) or per request (HTTP);
    /// outbound: `None`.
    pub authz: Option<Arc<InboundAuthz>>,
}

/// Runs the connection to its end.
pub(crate) async fn run<C, U>(ctx: &Arc<ProxyContext>, s: Session, client: C, upstream: U)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + Reset + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + Reset + 'static,
{
    let Session {
        guard,
        opaque,
        authz,
    } = s;
    let conn = guard.context().clone();
    let tcp = TrafficLabels::from(&*conn);
    ctx.telemetry.metrics.tcp_open(&tcp);
    let stats = ctx.telemetry.stats.connection(&conn);
    stats.tcp(1);
    let client = Counted::new(client);
    let counts = client.counts.clone();
    let opaque = opaque || authz.as_ref().is_some_and(|a| a.is_opaque());
    if opaque {
        relay_authorized(ctx, authz, guard, client, upstream).await;
    } else {
        // Boxed: detection reads into a few KiB of stack buffers, which would otherwise be
        // part of every connection task's size for as long as the connection lives.
        let (protocol, client) = Box::pin(detect(client)).await;
        match protocol {
            Protocol::Opaque => relay_authorized(ctx, authz, guard, client, upstream).await,
            Protocol::Http1 if ambiguous_head(client.prefix()).is_some() => {
                let why = ambiguous_head(client.prefix()).unwrap_or_default();
                refuse(ctx, &conn, client, why).await;
                guard.close(0, 0, Some(Error::AmbiguousFraming(why)));
            }
            http => {
                let reporter = Arc::new(ctx.telemetry.requests(tcp.clone(), stats.clone()));
                let cancelled = guard.cancelled();
                let proxied =
                    http::proxy(ctx.clone(), conn, reporter, authz, http, client, upstream);
                // Cancelled: the HTTP connections on both sides are dropped, which closes them.
                let result = tokio::select! {
                    biased;
                    result = proxied => result,
                    () = cancelled => Ok(()),
                };
                let (read, written) = counts.get();
                guard.close(read, written, result.err());
            }
        }
    }
    let (read, written) = counts.get();
    ctx.telemetry.metrics.tcp_close(&tcp, read, written);
    stats.tcp(-1);
}

/// The TCP path: relays when the connection is authorized (always, outbound), re-checking
/// it on each policy change; else resets the client and closes, nothing relayed.
async fn relay_authorized<C, U>(
    ctx: &Arc<ProxyContext>,
    authz: Option<Arc<InboundAuthz>>,
    guard: ConnGuard,
    client: C,
    upstream: U,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send + Reset + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + Reset + 'static,
{
    let Some(authz) = authz else {
        return relay(guard, client, upstream).await;
    };
    if let Err(denied) = authz.check_tcp() {
        client.reset();
        upstream.reset();
        guard.close(0, 0, Some(denied.into()));
        return;
    }
    let watcher = tokio::spawn(watch_tcp(
        authz,
        ctx.connections.clone(),
        guard.context().id,
    ));
    relay(guard, client, upstream).await;
    watcher.abort();
}

/// Answers 400 and closes: nothing of the request reaches the upstream.
async fn refuse<C: AsyncWrite + Unpin>(
    ctx: &ProxyContext,
    conn: &ConnContext,
    mut client: C,
    why: &str,
) {
    use tokio::io::AsyncWriteExt;
    ctx.telemetry.metrics.http_error(conn, "invalid_request");
    tracing::warn!(direction = conn.direction.as_str(), pod = %conn.workload.name, reason = why, "refused an HTTP request with ambiguous framing (request smuggling?)");
    let _ = client
        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await;
    let _ = client.shutdown().await;
}

#[derive(Default)]
pub(crate) struct Counts {
    read: AtomicU64,
    written: AtomicU64,
}

impl Counts {
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }
}

/// Counts the bytes read from and written to a stream.
pub(crate) struct Counted<T> {
    inner: T,
    counts: Arc<Counts>,
}

impl<T> Counted<T> {
    pub(crate) fn new(inner: T) -> Self {
        Counted {
            inner,
            counts: Arc::default(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.counts.read.fetch_add(n, Ordering::Relaxed);
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.counts.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: Reset> Reset for Counted<T> {
    fn reset(&self) {
        self.inner.reset()
    }
    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        self.inner.tcp()
    }
    fn tunnel(&mut self) -> Option<&mut super::hbone::tunnel::TunnelStream> {
        self.inner.tunnel()
    }
    fn spliced(&self, read: u64, written: u64) {
        self.counts.read.fetch_add(read, Ordering::Relaxed);
        self.counts.written.fetch_add(written, Ordering::Relaxed);
        self.inner.spliced(read, written)
    }
}
