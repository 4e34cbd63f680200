//! The buffered copy (`tokio::io::copy_bidirectional`'s shape), for sides that are not plain
//! sockets, with buffers taken from the thread's pool only while data flows.

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[cfg(test)]
use super::tests;
use crate::proxy::buffers::BufferPool;

/// Buffer size of the buffered copy (per direction, only while data flows).
pub(super) const BUF: usize = 64 * 1024;
/// Idle buffers kept per worker thread for reuse.
const BUF_POOL: usize = 16;

/// A copy buffer from the thread's pool, counted in tests.
pub(super) struct Buffer(pub(super) Box<[u8]>);

thread_local! {
    static BUFFERS: BufferPool<Box<[u8]>> =
        const { BufferPool::new(BUF_POOL, || vec![0u8; BUF].into_boxed_slice()) };
}

impl Buffer {
    pub(super) fn take() -> Buffer {
        #[cfg(test)]
        tests::HELD.with(|h| h.set(h.get() + 1));
        Buffer(BUFFERS.with(BufferPool::take))
    }

    pub(super) fn give_back(mut self) {
        let buf = std::mem::take(&mut self.0);
        BUFFERS.with(|p| p.give_back(buf));
    }
}

#[cfg(test)]
impl Drop for Buffer {
    fn drop(&mut self) {
        tests::HELD.with(|h| h.set(h.get() - 1));
    }
}

/// One direction of the buffered copy (after tokio's `CopyBuffer`, with a lazy buffer).
#[derive(Default)]
struct CopyBuffer {
    buf: Option<Buffer>,
    read_done: bool,
    need_flush: bool,
    pos: usize,
    cap: usize,
    amt: u64,
}

impl CopyBuffer {
    fn poll_fill_buf<R>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
    {
        let buf = self.buf.get_or_insert_with(Buffer::take);
        let mut rb = ReadBuf::new(&mut buf.0);
        rb.set_filled(self.cap);
        let mut reader = reader;
        let res = loop {
            match reader.as_mut().poll_read(cx, &mut rb) {
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                res => break res,
            }
        };
        if let Poll::Ready(Ok(())) = res {
            let filled = rb.filled().len();
            self.read_done = self.cap == filled;
            self.cap = filled;
        }
        res
    }

    /// Gives the buffer back when it holds nothing.
    fn release_if_empty(&mut self) {
        if self.pos == self.cap {
            self.pos = 0;
            self.cap = 0;
            if let Some(b) = self.buf.take() {
                b.give_back();
            }
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            if self.cap < BUF && !self.read_done {
                match self.poll_fill_buf(cx, reader.as_mut()) {
                    Poll::Ready(Ok(())) => coop.made_progress(),
                    Poll::Ready(Err(e)) => {
                        coop.made_progress();
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => {
                        if self.pos == self.cap {
                            self.release_if_empty();
                            if self.need_flush {
                                ready!(writer.as_mut().poll_flush(cx))?;
                                coop.made_progress();
                                self.need_flush = false;
                            }
                            return Poll::Pending;
                        }
                    }
                }
            }
            while self.pos < self.cap {
                let Some(buf) = self.buf.as_ref() else {
                    break;
                };
                let res = loop {
                    match writer.as_mut().poll_write(cx, &buf.0[self.pos..self.cap]) {
                        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                        res => break res,
                    }
                };
                match res {
                    Poll::Pending => {
                        // Top up towards a larger next write while the writer is busy.
                        if !self.read_done && self.cap < BUF {
                            ready!(self.poll_fill_buf(cx, reader.as_mut()))?;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "write zero byte into writer",
                        )))
                    }
                    Poll::Ready(Ok(n)) => {
                        coop.made_progress();
                        self.pos += n;
                        self.amt += n as u64;
                        self.need_flush = true;
                    }
                }
            }
            self.pos = 0;
            self.cap = 0;
            if self.read_done {
                self.release_if_empty();
                ready!(writer.as_mut().poll_flush(cx))?;
                coop.made_progress();
                return Poll::Ready(Ok(self.amt));
            }
        }
    }
}

enum Transfer {
    Running(CopyBuffer),
    ShuttingDown(u64),
    Done(u64),
}

fn transfer<A, B>(
    cx: &mut Context<'_>,
    state: &mut Transfer,
    r: &mut A,
    w: &mut B,
) -> Poll<io::Result<u64>>
where
    A: AsyncRead + Unpin + ?Sized,
    B: AsyncWrite + Unpin + ?Sized,
{
    let mut r = Pin::new(r);
    let mut w = Pin::new(w);
    loop {
        match state {
            Transfer::Running(buf) => {
                let n = ready!(buf.poll_copy(cx, r.as_mut(), w.as_mut()))?;
                *state = Transfer::ShuttingDown(n);
            }
            Transfer::ShuttingDown(n) => {
                ready!(w.as_mut().poll_shutdown(cx))?;
                *state = Transfer::Done(*n);
            }
            Transfer::Done(n) => return Poll::Ready(Ok(*n)),
        }
    }
}

/// `tokio::io::copy_bidirectional`, with buffers held only while data is in flight.
pub(super) async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Transfer::Running(CopyBuffer::default());
    let mut b_to_a = Transfer::Running(CopyBuffer::default());
    poll_fn(|cx| {
        let ab = transfer(cx, &mut a_to_b, a, b)?;
        let ba = transfer(cx, &mut b_to_a, b, a)?;
        let ab = ready!(ab);
        let ba = ready!(ba);
        Poll::Ready(Ok((ab, ba)))
    })
    .await
}
