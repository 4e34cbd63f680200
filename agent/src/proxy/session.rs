//! One proxied connection once both ends exist: protocol detection, then HTTP proxying or
//! an opaque relay, with the connection's TCP metrics and record.

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
    context::ProxyContext,
    error::Error,
    l7::{
        detect::{ambiguous_head, detect, Protocol},
        http::{self, HttpMeta},
    },
    relay::{relay, Reset},
};

/// How a connection is to be handled.
pub(crate) struct Session {
    /// The connection record's id.
    pub id: u64,
    pub meta: HttpMeta,
    /// Skip detection: never parse as HTTP (opaque ports, server-speaks-first).
    pub opaque: bool,
}

/// Runs the connection to its end.
pub(crate) async fn run<C, U>(ctx: &Arc<ProxyContext>, s: Session, client: C, upstream: U)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + Reset + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + Reset + 'static,
{
    let tcp = s.meta.traffic_labels();
    ctx.telemetry.metrics.tcp_open(&tcp);
    let m = &s.meta;
    let stats =
        ctx.telemetry
            .stats
            .workload(m.direction.as_str(), &m.namespace, &m.deployment, &m.pod);
    stats.tcp(1);
    let client = Counted::new(client);
    let counts = client.counts.clone();
    if s.opaque {
        relay(ctx, s.id, client, upstream).await;
    } else {
        let (protocol, client) = detect(client).await;
        match protocol {
            Protocol::Opaque => relay(ctx, s.id, client, upstream).await,
            Protocol::Http1 if ambiguous_head(client.prefix()).is_some() => {
                let why = ambiguous_head(client.prefix()).unwrap_or_default();
                refuse(ctx, &s.meta, client, why).await;
                ctx.connections
                    .close(s.id, 0, 0, Some(Error::AmbiguousFraming(why)));
            }
            http => {
                let reporter = Arc::new(ctx.telemetry.requests(tcp.clone(), stats.clone()));
                let meta = Arc::new(s.meta);
                let result = http::proxy(ctx.clone(), meta, reporter, http, client, upstream).await;
                let (read, written) = counts.get();
                ctx.connections.close(s.id, read, written, result.err());
            }
        }
    }
    let (read, written) = counts.get();
    ctx.telemetry.metrics.tcp_close(&tcp, read, written);
    stats.tcp(-1);
}

/// Answers 400 and closes: nothing of the request reaches the upstream.
async fn refuse<C: AsyncWrite + Unpin>(
    ctx: &ProxyContext,
    meta: &HttpMeta,
    mut client: C,
    why: &str,
) {
    use tokio::io::AsyncWriteExt;
    ctx.telemetry.metrics.http_error(
        meta.direction.as_str(),
        &meta.namespace,
        &meta.pod,
        "invalid_request",
    );
    tracing::warn!(direction = meta.direction.as_str(), pod = %meta.pod, reason = why, "refused an HTTP request with ambiguous framing (request smuggling?)");
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
