//! Every HTTP/1 request head of a connection, checked as its bytes pass to hyper: the
//! stream the proxy's HTTP/1 server reads from follows the requests' framing (a head, then
//! a body by `Content-Length` or chunked) and holds each head back until it is complete.
//!
//! - A head with both `Content-Length` and `Transfer-Encoding`, or differing lengths
//!   ([`ambiguous_head`], the first request's check), or over [`MAX_HEAD`] never reaches
//!   hyper: in its place hyper reads a head it cannot parse, so it answers `400` after the
//!   responses before it, in order, and closes; nothing more is read. The check must come
//!   before hyper, which (1.12) drops a `Content-Length` that comes with
//!   `Transfer-Encoding` and frames the body as chunked.
//! - A head that has started (a byte other than the empty lines before it) must be complete
//!   within the head timeout (a client trickling a head forever would hold a task, a
//!   connection and buffers). A connection idle between requests is not a started head:
//!   it is not cut off (hyper's own `header_read_timeout` would close it, see
//!   docs/security.md).
//!
//! After a request that asks for an upgrade (`Upgrade`, `CONNECT`) the bytes pass
//! unchecked: they may be another protocol.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};

use super::detect::ambiguous_head;
pub(crate) use crate::proxy::error::HeadRefusal;

/// The largest request head let through (as HBONE's HTTP/2 header lists, 64 KiB).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// How long a started request head may take to arrive whole.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// What hyper reads in place of a refused head: not a request (the method is not a
/// token), so hyper answers `400 Bad Request` and closes.
pub(crate) const UNPARSEABLE: &[u8] = b"\0 / HTTP/1.1\r\n\r\n";

/// What the check found, shared with the proxy.
#[derive(Debug, Default)]
pub(crate) struct HeadCheck {
    refused: OnceLock<HeadRefusal>,
}

impl HeadCheck {
    pub(crate) fn refused(&self) -> Option<HeadRefusal> {
        self.refused.get().copied()
    }
}

/// Where the stream is in the requests' framing.
#[derive(Debug)]
enum Framing {
    /// Reading a head (held back until complete).
    Head,
    /// A body of this many bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Unchecked from here: an upgrade, or a head hyper will refuse itself.
    PassThrough,
    /// A head was refused: nothing more is read.
    Refused,
}

/// Where a chunked body is (RFC 9112 §7.1, as hyper reads it: CRLF line ends).
#[derive(Debug, Clone, Copy)]
enum Chunk {
    Size {
        size: u64,
        digits: bool,
    },
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: a trailer line (`empty` while nothing is on it yet).
    Trailer {
        empty: bool,
    },
    TrailerLf {
        empty: bool,
    },
}

fn bad_chunk(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("chunked body: {what}"))
}

impl Chunk {
    /// Consumes bytes of the body; the number consumed and whether the body ended.
    fn advance(&mut self, bytes: &[u8]) -> io::Result<(usize, bool)> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            *self = match *self {
                Chunk::Size { size, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (b as char).to_digit(16).unwrap_or_default() as u64;
                        let size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(digit))
                            .ok_or_else(|| bad_chunk("chunk size overflows"))?;
                        Chunk::Size { size, digits: true }
                    }
                    b';' | b' ' | b'\t' if digits => Chunk::Extension { size },
                    b'\r' if digits => Chunk::SizeLf { size },
                    _ => return Err(bad_chunk("invalid chunk size line")),
                },
                Chunk::Extension { size } => match b {
                    b'\r' => Chunk::SizeLf { size },
                    b'\n' => return Err(bad_chunk("newline in a chunk extension")),
                    _ => Chunk::Extension { size },
                },
                Chunk::SizeLf { size } => match (b, size) {
                    (b'\n', 0) => Chunk::Trailer { empty: true },
                    (b'\n', size) => Chunk::Data(size),
                    _ => return Err(bad_chunk("chunk size line without LF")),
                },
                Chunk::Data(left) => {
                    let n = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    i += n;
                    let left = left - n as u64;
                    *self = if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left)
                    };
                    continue;
                }
                Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                Chunk::DataLf if b == b'\n' => Chunk::Size {
                    size: 0,
                    digits: false,
                },
                Chunk::DataCr | Chunk::DataLf => return Err(bad_chunk("chunk without CRLF")),
                Chunk::Trailer { empty } => match b {
                    b'\r' => Chunk::TrailerLf { empty },
                    b'\n' => return Err(bad_chunk("trailer line without CR")),
                    _ => Chunk::Trailer { empty: false },
                },
                Chunk::TrailerLf { empty } => match b {
                    b'\n' if empty => return Ok((i + 1, true)),
                    b'\n' => Chunk::Trailer { empty: true },
                    _ => return Err(bad_chunk("trailer line without LF")),
                },
            };
            i += 1;
        }
        Ok((i, false))
    }
}

/// The framing of the body after a complete head (already found unambiguous).
fn framing_after(head: &httparse::Request<'_, '_>) -> Framing {
    let upgrade = head.method == Some("CONNECT")
        || head
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade"));
    if upgrade {
        return Framing::PassThrough;
    }
    let value = |name: &'static str| {
        head.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).unwrap_or("\u{0}"))
    };
    if let Some(te) = value("transfer-encoding").next_back() {
        let chunked = te
            .rsplit(',')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        // Not chunked last: hyper refuses it (400).
        return if chunked {
            Framing::Chunked(Chunk::Size {
                size: 0,
                digits: false,
            })
        } else {
            Framing::PassThrough
        };
    }
    match value("content-length").next() {
        None => Framing::Head,
        // The values agree (checked before); hyper refuses one that is not a number.
        Some(cl) => match cl.split(',').next().map(str::trim).map(str::parse::<u64>) {
            Some(Ok(0)) => Framing::Head,
            Some(Ok(n)) => Framing::Length(n),
            _ => Framing::PassThrough,
        },
    }
}

/// A head as far as it has arrived: complete (its length and the framing after it),
/// refused, or not complete yet.
enum Parsed {
    Complete(usize, Framing),
    Refused(HeadRefusal),
    Partial,
}

/// Whether `bytes` hold the empty line that ends a head (CRLF CRLF, or bare LFs as
/// hyper accepts them).
fn ends_a_head(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

fn parse(head: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            Parsed::Refused(HeadRefusal::TooLarge(MAX_HEAD))
        }
        Ok(httparse::Status::Complete(len)) => match ambiguous_head(&head[..len]) {
            Some(why) => Parsed::Refused(HeadRefusal::Ambiguous(why)),
            None => Parsed::Complete(len, framing_after(&req)),
        },
        Ok(httparse::Status::Partial) if head.len() > MAX_HEAD => {
            Parsed::Refused(HeadRefusal::TooLarge(MAX_HEAD))
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        // hyper refuses it too (400 or 431), with its own reason; ambiguous framing in a
        // head it cannot parse never reaches the app either.
        Err(_) => Parsed::Complete(head.len(), Framing::PassThrough),
    }
}

/// The client side of an HTTP/1 server connection, with every request head checked.
pub(crate) struct CheckedHeads<T> {
    inner: T,
    framing: Framing,
    /// The head being read, held back.
    head: BytesMut,
    /// Checked bytes hyper has not read yet.
    out: Bytes,
    /// The deadline of the started head.
    deadline: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    check: Arc<HeadCheck>,
    eof: bool,
}

impl<T> CheckedHeads<T> {
    pub(crate) fn new(inner: T, timeout: Duration, check: Arc<HeadCheck>) -> Self {
        CheckedHeads {
            inner,
            framing: Framing::Head,
            head: BytesMut::new(),
            out: Bytes::new(),
            deadline: None,
            timeout,
            check,
            eof: false,
        }
    }

    /// Takes in bytes read from the client: into `out` as far as they are checked.
    fn feed(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let mut out = BytesMut::new();
        while !bytes.is_empty() {
            match &mut self.framing {
                Framing::PassThrough => {
                    out.extend_from_slice(bytes);
                    bytes = &[];
                }
                Framing::Refused => bytes = &[],
                Framing::Length(left) => {
                    let n = bytes
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        self.framing = Framing::Head;
                    }
                }
                Framing::Chunked(chunk) => {
                    let (n, done) = chunk.advance(bytes)?;
                    out.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if done {
                        self.framing = Framing::Head;
                    }
                }
                Framing::Head => {
                    // A head can only be complete where a line ends on an empty line: look
                    // for that in what is new (and the 3 bytes before it), so that a head
                    // trickled in small reads is parsed once, not once per read.
                    let from = self.head.len().saturating_sub(3);
                    self.head.extend_from_slice(bytes);
                    bytes = &[];
                    if self.deadline.is_none() && !self.head.trim_ascii_start().is_empty() {
                        self.deadline = Some(Box::pin(tokio::time::sleep(self.timeout)));
                    }
                    let parsed = if ends_a_head(&self.head[from..]) {
                        parse(&self.head)
                    } else if self.head.len() > MAX_HEAD {
                        Parsed::Refused(HeadRefusal::TooLarge(MAX_HEAD))
                    } else {
                        Parsed::Partial
                    };
                    match parsed {
                        Parsed::Partial => {}
                        Parsed::Refused(why) => {
                            let _ = self.check.refused.set(why);
                            self.head = BytesMut::new();
                            self.deadline = None;
                            self.framing = Framing::Refused;
                            out.extend_from_slice(UNPARSEABLE);
                        }
                        Parsed::Complete(len, framing) => {
                            let mut head = std::mem::take(&mut self.head);
                            let rest = head.split_off(len);
                            out.extend_from_slice(&head);
                            self.deadline = None;
                            self.framing = framing;
                            if !rest.is_empty() {
                                self.feed_rest(&mut out, &rest)?;
                            }
                        }
                    }
                }
            }
        }
        self.push_out(out);
        Ok(())
    }

    /// Bytes that came after a head, in the same read.
    fn feed_rest(&mut self, out: &mut BytesMut, rest: &[u8]) -> io::Result<()> {
        self.push_out(std::mem::take(out));
        self.feed(rest)
    }

    fn push_out(&mut self, more: BytesMut) {
        if more.is_empty() {
            return;
        }
        if self.out.is_empty() {
            self.out = more.freeze();
        } else {
            let mut all = BytesMut::from(&self.out[..]);
            all.extend_from_slice(&more);
            self.out = all.freeze();
        }
    }
}

impl<T> CheckedHeads<T> {
    /// How many of `bytes` (read after a complete head) belong to its body, or pass
    /// unchecked; the framing moves on to the next head when the body ends.
    fn body_bytes(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match &mut self.framing {
            Framing::PassThrough => Ok(bytes.len()),
            Framing::Length(left) => {
                let n = bytes
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                if *left == 0 {
                    self.framing = Framing::Head;
                }
                Ok(n)
            }
            Framing::Chunked(chunk) => {
                let (n, done) = chunk.advance(bytes)?;
                if done {
                    self.framing = Framing::Head;
                }
                Ok(n)
            }
            Framing::Head | Framing::Refused => Ok(0),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CheckedHeads<T> {
    /// Heads are read into the head buffer and handed on once checked; bodies (and what
    /// passes unchecked) are read straight into hyper's buffer, with no copy, up to the end
    /// of the body: what follows it is the next head.
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof || matches!(this.framing, Framing::Refused) {
                return Poll::Ready(Ok(()));
            }
            if !matches!(this.framing, Framing::Head) {
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let read = buf.filled().len() - before;
                if read == 0 {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                // On an error nothing counts as read (`AsyncRead`: an error fills nothing):
                // the stream ends with the error, what came with it is dropped.
                let body = match this.body_bytes(&buf.filled()[before..]) {
                    Ok(body) => body,
                    Err(e) => {
                        buf.set_filled(before);
                        return Poll::Ready(Err(e));
                    }
                };
                if body < read {
                    let next_head = buf.filled()[before + body..].to_vec();
                    buf.set_filled(before + body);
                    if let Err(e) = this.feed(&next_head) {
                        buf.set_filled(before);
                        return Poll::Ready(Err(e));
                    }
                }
                if body > 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut chunk = [0u8; 8 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => {
                    if let Some(deadline) = this.deadline.as_mut() {
                        ready!(deadline.as_mut().poll(cx));
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            HeadTimedOut(this.timeout),
                        )));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // The end: a partial head goes to hyper as it is (hyper's own error).
                    this.eof = true;
                    let partial = std::mem::take(&mut this.head);
                    this.push_out(partial);
                }
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    this.feed(&chunk[..n])?;
                }
            }
        }
    }
}

/// A started request head that did not arrive whole in time (the I/O error hyper gets).
#[derive(Debug, thiserror::Error)]
#[error("request head not complete within {}s", .0.as_secs())]
pub(crate) struct HeadTimedOut(pub(crate) Duration);

impl<T: AsyncWrite + Unpin> AsyncWrite for CheckedHeads<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// What hyper reads from `CheckedHeads` for `input` (the client then closes), and the
    /// refusal recorded.
    async fn checked(input: &[u8]) -> (Vec<u8>, Option<HeadRefusal>) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let check = Arc::new(HeadCheck::default());
        let mut heads = CheckedHeads::new(server, Duration::from_secs(5), check.clone());
        client.write_all(input).await.expect("write");
        drop(client);
        let mut out = Vec::new();
        heads.read_to_end(&mut out).await.expect("read");
        (out, check.refused())
    }

    /// A head over [`MAX_HEAD`] is refused whether its end arrived in the same read as the
    /// bytes past the limit or never arrives; one just under the limit passes whole.
    #[tokio::test]
    async fn heads_over_64_kib_are_refused() {
        let line = format!("X-Filler: {}\r\n", "a".repeat(1000));
        let head =
            |lines: usize| format!("GET / HTTP/1.1\r\nHost: web\r\n{}\r\n", line.repeat(lines));
        let over = head(66);
        assert!(over.len() > MAX_HEAD);
        assert_eq!(
            checked(over.as_bytes()).await,
            (UNPARSEABLE.to_vec(), Some(HeadRefusal::TooLarge(MAX_HEAD)))
        );
        let unended = &over.as_bytes()[..over.len() - 2];
        assert_eq!(
            checked(unended).await,
            (UNPARSEABLE.to_vec(), Some(HeadRefusal::TooLarge(MAX_HEAD)))
        );
        let under = head(64);
        assert!(under.len() <= MAX_HEAD);
        assert_eq!(checked(under.as_bytes()).await, (under.into_bytes(), None));
    }

    /// A head trickled a byte at a time is checked once complete (the empty line that ends
    /// it is looked for in each new byte, the head parsed once) and passes whole, with the
    /// body by length after it and the next head checked too.
    #[tokio::test]
    async fn a_trickled_head_and_body_pass_whole() {
        let input = b"\r\nPOST /a HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\nHost: web\n\n";
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let check = Arc::new(HeadCheck::default());
        let mut heads = CheckedHeads::new(server, Duration::from_secs(5), check.clone());
        let writer = tokio::spawn(async move {
            for b in input {
                client.write_all(&[*b]).await.expect("write");
                tokio::task::yield_now().await;
            }
        });
        let mut out = Vec::new();
        heads.read_to_end(&mut out).await.expect("read");
        writer.await.expect("writer");
        assert_eq!(out, input);
        assert_eq!(check.refused(), None);
    }
}
