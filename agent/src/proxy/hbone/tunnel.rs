//! One HBONE tunnel: an HTTP/2 CONNECT stream, driven with the `h2` crate directly so that
//! a relay can hand the stream whole buffers ([`Bytes`]) and take them back without the
//! copies of a byte-stream adapter. It is also an `AsyncRead` / `AsyncWrite` byte stream,
//! for HTTP proxying over the tunnel.

use std::{
    future::poll_fn,
    io,
    mem::ManuallyDrop,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    task::{ready, Context, Poll, Waker},
    time::Duration,
};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::buffers::BufferPool;

/// Bytes asked of one read from a TCP socket into a tunnel (at most the stream's send
/// capacity at that moment).
pub(crate) const CHUNK: usize = 256 * 1024;
/// Idle read buffers kept per thread for reuse.
const CHUNK_POOL: usize = 16;

thread_local! {
    static CHUNKS: BufferPool<Vec<u8>> = const { BufferPool::new(CHUNK_POOL, || Vec::with_capacity(CHUNK)) };
}

/// A read buffer of [`CHUNK`] bytes from the thread's pool. Handed to h2 as [`Bytes`] (see
/// [`ReadChunk`]), it returns to the pool when h2 has written it: neither bulk transfers nor
/// small messages allocate per read, and an idle tunnel holds no buffer.
pub(crate) fn take_chunk() -> Vec<u8> {
    CHUNKS.with(BufferPool::take)
}

pub(crate) fn give_back(mut chunk: Vec<u8>) {
    chunk.clear();
    CHUNKS.with(|p| p.give_back(chunk));
}

/// A filled pooled read buffer, as the owner of a [`Bytes`].
pub(crate) struct ReadChunk(pub(crate) Option<Vec<u8>>);

impl AsRef<[u8]> for ReadChunk {
    fn as_ref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl Drop for ReadChunk {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            give_back(buf);
        }
    }
}

/// How long a tunnel whose sending side has ended waits, once dropped, for the peer's end
/// of the stream (see [`TunnelStream`]'s `Drop`).
const LINGER: Duration = Duration::from_secs(10);

/// An open tunnel (both directions of one HTTP/2 stream), a TCP connection's stand-in
/// (RFC 9113 §8.5): `END_STREAM` is its FIN, `RST_STREAM` its RST. A stream the peer resets,
/// whatever the code (`CANCEL` included), is an error to the reader, never an end of stream:
/// a truncation must not look like completion. The agent's own side ends a tunnel with
/// `END_STREAM` or resets it with `CONNECT_ERROR`, never with h2's implicit `CANCEL`.
pub(crate) struct TunnelStream {
    /// Taken only by `Drop` (to linger).
    pub(crate) send: ManuallyDrop<SendStream<Bytes>>,
    pub(crate) recv: ManuallyDrop<RecvStream>,
    /// Received but not yet read (`AsyncRead` only).
    pub(crate) pending: Bytes,
    /// The peer's `END_STREAM` was read.
    pub(crate) recv_done: bool,
    /// Our `END_STREAM` was sent (queued).
    pub(crate) sent_end: bool,
    /// Set by [`TunnelStream::reset_on_drop`].
    reset: AtomicBool,
}

/// An `h2` error as an I/O error. A stream reset by the peer keeps its `h2::Error` (and
/// with it the reason) inside the I/O error.
pub(crate) fn to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::ErrorKind::Other.into());
    }
    match e.reason() {
        Some(Reason::STREAM_CLOSED) => io::ErrorKind::BrokenPipe.into(),
        _ => io::Error::other(e),
    }
}

/// The error of a stream the peer reset with `reason`.
pub(crate) fn reset_error(reason: Reason) -> io::Error {
    io::Error::other(h2::Error::from(reason))
}

/// Why sending failed: the peer's reset (its reason), looked up without waiting (a send
/// fails only once the stream is reset or closed).
pub(crate) fn send_failure(send: &mut SendStream<Bytes>) -> Result<Reason, io::Error> {
    let mut cx = Context::from_waker(Waker::noop());
    match send.poll_reset(&mut cx) {
        Poll::Ready(Ok(reason)) => Ok(reason),
        Poll::Ready(Err(e)) => Err(to_io(e)),
        Poll::Pending => Err(io::ErrorKind::BrokenPipe.into()),
    }
}

/// Ending our side failed because the peer had reset the stream: with `NO_ERROR` (RFC
/// 9113 §8.1: it has closed and needs nothing more) there is nothing lost, as when a TCP
/// peer has closed and we only send our FIN; any other reason is an error.
pub(crate) fn end_failed(send: &mut SendStream<Bytes>) -> io::Result<()> {
    match send_failure(send) {
        Ok(Reason::NO_ERROR) => Ok(()),
        Ok(reason) => Err(reset_error(reason)),
        Err(e) => Err(e),
    }
}

impl TunnelStream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> TunnelStream {
        TunnelStream {
            send: ManuallyDrop::new(send),
            recv: ManuallyDrop::new(recv),
            pending: Bytes::new(),
            recv_done: false,
            sent_end: false,
            reset: AtomicBool::new(false),
        }
    }

    /// Makes the coming drop reset the stream with `CONNECT_ERROR` (RFC 9113 §8.5: the TCP
    /// connection was reset), which the peer's agent passes on to its side as a TCP reset.
    /// A stream dropped before our side ended is reset so too.
    pub(crate) fn reset_on_drop(&self) {
        self.reset.store(true, Relaxed);
    }

    /// Why the peer reset the stream, once a write failed.
    fn poll_write_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match ready!(self.send.poll_reset(cx)) {
            Ok(Reason::STREAM_CLOSED) => Poll::Ready(io::ErrorKind::BrokenPipe.into()),
            Ok(reason) => Poll::Ready(reset_error(reason)),
            Err(e) => Poll::Ready(to_io(e)),
        }
    }
}

/// A dropped tunnel ends as a TCP connection would:
/// - reset on purpose ([`TunnelStream::reset_on_drop`]), or dropped before our side ended
///   (an abort: a failed or cancelled session, an aborted task): `CONNECT_ERROR`;
/// - both sides ended: nothing to send;
/// - our side ended, the peer's not yet (an HTTP client connection that closed after its
///   last response): h2 would reset it with `CANCEL` (a client) and drop our queued end
///   with it. Instead the stream lingers in a task of its own until the peer's end (a
///   clean close), the peer's reset, data we will not read (`CONNECT_ERROR`, as a TCP
///   peer that has closed answers data with a RST) or [`LINGER`] (`CONNECT_ERROR`).
impl Drop for TunnelStream {
    fn drop(&mut self) {
        // SAFETY: the fields are taken once, here, and never used again.
        let (mut send, recv) = unsafe {
            (
                ManuallyDrop::take(&mut self.send),
                ManuallyDrop::take(&mut self.recv),
            )
        };
        if *self.reset.get_mut() || !self.sent_end {
            send.send_reset(Reason::CONNECT_ERROR);
        } else if !self.recv_done && !recv.is_end_stream() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(linger(send, recv));
            }
        }
    }
}

async fn linger(mut send: SendStream<Bytes>, mut recv: RecvStream) {
    let peer_ended = async {
        loop {
            match poll_fn(|cx| recv.poll_data(cx)).await {
                None | Some(Err(_)) => return true,
                Some(Ok(data)) if data.is_empty() => {}
                Some(Ok(_)) => return false,
            }
        }
    };
    if !matches!(tokio::time::timeout(LINGER, peer_ended).await, Ok(true)) {
        send.send_reset(Reason::CONNECT_ERROR);
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.recv_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.recv.poll_data(cx)) {
                None => this.recv_done = true,
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        this.send.reserve_capacity(buf.len());
        let n = match ready!(this.send.poll_capacity(cx)) {
            Some(Ok(cap)) => {
                let n = cap.min(buf.len());
                this.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .ok()
                    .map(|()| n)
            }
            _ => None,
        };
        match n {
            Some(n) => Poll::Ready(Ok(n)),
            None => this.poll_write_error(cx).map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends our side of the stream (`END_STREAM`, a FIN). When the peer has already reset
    /// the stream with `NO_ERROR` (it closed and needs nothing more) that is a clean close;
    /// any other reset is an error.
    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.sent_end {
            return Poll::Ready(Ok(()));
        }
        if this.send.send_data(Bytes::new(), true).is_ok() {
            this.sent_end = true;
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(end_failed(&mut this.send))
    }
}
