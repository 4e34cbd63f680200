//! One HBONE tunnel: an HTTP/2 CONNECT stream, driven with the `h2` crate directly so that
//! a relay can hand the stream whole buffers ([`Bytes`]) and take them back without the
//! copies of a byte-stream adapter. It is also an `AsyncRead` / `AsyncWrite` byte stream,
//! for HTTP proxying over the tunnel.

use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    task::{ready, Context, Poll},
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

/// An open tunnel (both directions of one HTTP/2 stream).
pub(crate) struct TunnelStream {
    pub(crate) send: SendStream<Bytes>,
    pub(crate) recv: RecvStream,
    /// Received but not yet read (`AsyncRead` only).
    pub(crate) pending: Bytes,
    pub(crate) recv_done: bool,
    /// Set by [`TunnelStream::reset_on_drop`].
    reset: AtomicBool,
}

/// An `h2` error as an I/O error; a stream the peer closed (`NO_ERROR`, `CANCEL`) ends like
/// a TCP stream ends, as hyper's upgraded streams do.
pub(crate) fn to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::ErrorKind::Other.into());
    }
    match e.reason() {
        Some(Reason::STREAM_CLOSED) => io::ErrorKind::BrokenPipe.into(),
        _ => io::Error::other(e),
    }
}

pub(crate) fn is_clean_end(e: &h2::Error) -> bool {
    matches!(e.reason(), Some(Reason::NO_ERROR) | Some(Reason::CANCEL))
}

impl TunnelStream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> TunnelStream {
        TunnelStream {
            send,
            recv,
            pending: Bytes::new(),
            recv_done: false,
            reset: AtomicBool::new(false),
        }
    }

    /// Makes the coming drop reset the stream with `CONNECT_ERROR` (RFC 9113 §8.5: the TCP
    /// connection was reset), which the peer's agent passes on to its side as a TCP reset.
    /// Otherwise a stream dropped before its end is reset with `CANCEL`, which reads as an
    /// end of stream (see [`is_clean_end`]).
    pub(crate) fn reset_on_drop(&self) {
        self.reset.store(true, Relaxed);
    }

    /// Why the peer reset the stream, once a write failed.
    fn poll_write_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match ready!(self.send.poll_reset(cx)) {
            Ok(Reason::NO_ERROR) | Ok(Reason::CANCEL) | Ok(Reason::STREAM_CLOSED) => {
                Poll::Ready(io::ErrorKind::BrokenPipe.into())
            }
            Ok(reason) => Poll::Ready(io::Error::other(h2::Error::from(reason))),
            Err(e) => Poll::Ready(to_io(e)),
        }
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        if *self.reset.get_mut() {
            self.send.send_reset(Reason::CONNECT_ERROR);
        }
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
                Some(Err(e)) if is_clean_end(&e) => this.recv_done = true,
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

    /// Ends our side of the stream. When the peer has already closed the stream normally
    /// (`NO_ERROR`, or `CANCEL` once it has what it wanted), there is nothing left to end:
    /// that is a clean close, not an error.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.send.send_data(Bytes::new(), true).is_ok() {
            return Poll::Ready(Ok(()));
        }
        match ready!(this.send.poll_reset(cx)) {
            Ok(Reason::NO_ERROR) | Ok(Reason::CANCEL) | Ok(Reason::STREAM_CLOSED) => {
                Poll::Ready(Ok(()))
            }
            Ok(reason) => Poll::Ready(Err(io::Error::other(h2::Error::from(reason)))),
            Err(e) if is_clean_end(&e) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}
