//! Protocol detection: read the first bytes a client sends (bounded in size and time) and
//! decide between HTTP/2 (prior knowledge, which gRPC uses), HTTP/1.x and opaque TCP. The
//! bytes read are replayed to whatever handles the connection ([`Prefixed`]).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::proxy::relay::Reset;

/// How long to wait for a client's first bytes. A protocol where the server speaks first
/// waits this long unless its port is configured opaque (then there is no wait at all).
pub(crate) const DETECT_TIMEOUT: Duration = Duration::from_millis(500);
const MAX_PEEK: usize = 1024;
/// For HTTP/1, the first request's head is read whole (up to this size) so that its
/// framing can be checked before anything is forwarded.
const MAX_HEAD: usize = 16 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
    Opaque,
}

/// A stream with bytes already read from it put back in front.
pub(crate) struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }

    /// The bytes read during detection and not yet consumed.
    pub(crate) fn prefix(&self) -> &[u8] {
        &self.prefix
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
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

impl<T: Reset> Reset for Prefixed<T> {
    fn reset(&self) {
        self.inner.reset()
    }
}

/// Classifies what has been read so far; `None` means "need more bytes".
pub(crate) fn classify(buf: &[u8]) -> Option<Protocol> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (buf.len() >= H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // HTTP/1: `METHOD SP target SP HTTP/1.x CRLF`, method a token.
    let line_end = buf.iter().position(|&b| b == b'\n');
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == 0 || method_len > 16 {
        return Some(Protocol::Opaque);
    }
    if buf.len() > method_len && buf[method_len] != b' ' {
        return Some(Protocol::Opaque);
    }
    match line_end {
        None if buf.len() >= MAX_PEEK => Some(Protocol::Opaque),
        None => None,
        Some(end) => {
            let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
            let is_http = line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0");
            Some(if is_http {
                Protocol::Http1
            } else {
                Protocol::Opaque
            })
        }
    }
}

/// Reads until the protocol is known, the peek limit is reached or [`DETECT_TIMEOUT`]
/// passes (then: opaque). Returns the protocol and the stream with the bytes put back.
pub(crate) async fn detect<T: AsyncRead + Unpin>(mut io: T) -> (Protocol, Prefixed<T>) {
    let mut buf = BytesMut::with_capacity(MAX_PEEK);
    let deadline = tokio::time::Instant::now() + DETECT_TIMEOUT;
    let protocol = loop {
        if let Some(p) = (!buf.is_empty()).then(|| classify(&buf)).flatten() {
            break p;
        }
        if buf.len() >= MAX_PEEK {
            break Protocol::Opaque;
        }
        let mut chunk = [0u8; MAX_PEEK];
        let want = MAX_PEEK - buf.len();
        match tokio::time::timeout_at(deadline, io.read(&mut chunk[..want])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break Protocol::Opaque,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    if protocol == Protocol::Http1 {
        // Complete the first request's head (bounded), for the framing check.
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_HEAD {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
    }
    (protocol, Prefixed::new(buf.freeze(), io))
}

/// Checks the framing of an HTTP/1 request head: a proxy must refuse both Content-Length
/// and Transfer-Encoding, and Content-Length values that disagree (RFC 9112 §6.3), rather
/// than pass them on. (hyper, which parses every later request, would quietly prefer
/// Transfer-Encoding.) Returns the reason when the head is ambiguous.
pub(crate) fn ambiguous_head(head: &[u8]) -> Option<&'static str> {
    // As hyper reads it (httparse: leading empty lines skipped, bare LF line ends); a head
    // httparse does not complete is read line by line (CRLF or LF), so that a partial or
    // oversized head is checked too.
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let fields: Vec<(&[u8], &[u8])> = match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => req
            .headers
            .iter()
            .map(|h| (h.name.as_bytes(), h.value))
            .collect(),
        _ => {
            let end = head
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap_or(head.len());
            head[..end]
                .split(|b| *b == b'\n')
                .skip_while(|l| l.trim_ascii().is_empty())
                .skip(1)
                .filter_map(|line| {
                    let at = line.iter().position(|b| *b == b':')?;
                    Some((line[..at].trim_ascii(), line[at + 1..].trim_ascii()))
                })
                .collect()
        }
    };
    let mut lengths: Vec<&[u8]> = Vec::new();
    let mut te = false;
    for (name, value) in fields {
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths.extend(value.split(|b| *b == b',').map(<[u8]>::trim_ascii));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
        }
    }
    if te && !lengths.is_empty() {
        return Some("content-length with transfer-encoding");
    }
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return Some("conflicting content-length values");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"POST /a?b HTTP/1.0\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GET / HTT"), None);
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET / FOO\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"hello world\n"), Some(Protocol::Opaque));
    }

    #[test]
    fn ambiguous_framing_as_hyper_reads_the_head() {
        // Found by the fuzz target `detect` (httparse as the oracle): leading empty lines,
        // bare LF line ends, bytes that are not UTF-8 before the value.
        let found = b"\r\n\r\nPOST / HTTP/1.1\r\nContent-Length:\xce\xce 5, 6\r\n\r\n";
        assert_eq!(
            ambiguous_head(found),
            Some("conflicting content-length values")
        );
        assert_eq!(
            ambiguous_head(
                b"POST / HTTP/1.1\nHost: x\nContent-Length: 5\nTransfer-Encoding: chunked\n\n"
            ),
            Some("content-length with transfer-encoding")
        );
        // A head that is not complete yet is read line by line, bare LF too.
        assert_eq!(
            ambiguous_head(b"POST / HTTP/1.1\nContent-Length: 5\nTransfer-Encoding: chunked\n"),
            Some("content-length with transfer-encoding")
        );
        assert_eq!(ambiguous_head(b"GET / HTTP/1.1\nHost: x\n\n"), None);
    }

    #[test]
    fn ambiguous_framing() {
        assert_eq!(
            ambiguous_head(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            None
        );
        assert!(ambiguous_head(
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .is_some());
        assert!(ambiguous_head(
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"
        )
        .is_some());
        assert_eq!(
            ambiguous_head(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
            None
        );
    }

    #[tokio::test]
    async fn replays_what_it_read() {
        let (mut a, b) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
        });
        let (p, mut io) = detect(b).await;
        assert_eq!(p, Protocol::Http1);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }

    #[tokio::test]
    async fn silent_clients_are_opaque_after_the_timeout() {
        let (_a, b) = tokio::io::duplex(64);
        let start = std::time::Instant::now();
        let (p, _) = detect(b).await;
        assert_eq!(p, Protocol::Opaque);
        assert!(start.elapsed() >= DETECT_TIMEOUT);
    }

    /// A client that sends `bytes` and then stays connected and silent; detection on a
    /// paused clock (time moves only when every task waits), so elapsed times are exact.
    async fn detect_after(
        bytes: Vec<u8>,
    ) -> (Protocol, Prefixed<tokio::io::DuplexStream>, Duration) {
        let (mut a, b) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            a.write_all(&bytes).await.unwrap();
            // Keep the client end open (no EOF) until long after any timeout.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(a);
        });
        let start = tokio::time::Instant::now();
        let (p, io) = detect(b).await;
        (p, io, start.elapsed())
    }

    /// Detection never waits longer than [`DETECT_TIMEOUT`] (500 ms): a silent client, and an
    /// HTTP/1 client whose head stops half-way (the head read shares the same deadline; it
    /// does not start a second one).
    #[tokio::test(start_paused = true)]
    async fn the_timeout_has_an_upper_bound() {
        let (p, io, took) = detect_after(Vec::new()).await;
        assert_eq!((p, io.prefix()), (Protocol::Opaque, &b""[..]));
        assert_eq!(took, DETECT_TIMEOUT);

        let half = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        let (p, io, took) = detect_after(half.clone()).await;
        assert_eq!((p, io.prefix()), (Protocol::Http1, &half[..]));
        assert_eq!(took, DETECT_TIMEOUT);
        assert_eq!(DETECT_TIMEOUT, Duration::from_millis(500));
    }

    /// At most 1 KiB is read to find the request line: a line that fits in 1,024 bytes is
    /// HTTP/1, one byte more is opaque, decided at once (no wait for the timeout) with exactly
    /// 1,024 bytes read, and every byte is still delivered in order afterwards.
    #[tokio::test(start_paused = true)]
    async fn the_request_line_is_looked_for_in_the_first_kib() {
        let line = |len: usize| {
            let fixed = b"GET / HTTP/1.1\r\n".len();
            let mut l = b"GET /".to_vec();
            l.resize(len - (fixed - b"GET /".len()), b'a');
            l.extend_from_slice(b" HTTP/1.1\r\n");
            assert_eq!(l.len(), len);
            l
        };
        let mut fits = line(1024);
        fits.extend_from_slice(b"Host: x\r\n\r\n");
        let (p, io, took) = detect_after(fits.clone()).await;
        assert_eq!((p, took), (Protocol::Http1, Duration::ZERO));
        assert_eq!(io.prefix(), &fits[..]);

        let mut too_long = line(1025);
        too_long.extend_from_slice(b"Host: x\r\n\r\n");
        let (p, mut io, took) = detect_after(too_long.clone()).await;
        assert_eq!((p, took), (Protocol::Opaque, Duration::ZERO));
        assert_eq!(io.prefix(), &too_long[..1024], "exactly 1 KiB read");
        let mut all = vec![0; too_long.len()];
        io.read_exact(&mut all).await.unwrap();
        assert_eq!(all, too_long);
    }

    /// An HTTP/1 head is read whole up to 16 KiB, then no further: a 15 KiB head is complete
    /// in what was read; a head that never ends stops being read past 16 KiB (within one
    /// 4 KiB read), at once, and what was not read is still delivered afterwards.
    #[tokio::test(start_paused = true)]
    async fn the_head_is_read_up_to_16_kib() {
        let head = |headers: usize| {
            let mut h = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
            for i in 0..headers {
                h.extend_from_slice(format!("x-h{i:04}: {}\r\n", "v".repeat(90)).as_bytes());
            }
            h
        };
        let mut whole = head(150);
        whole.extend_from_slice(b"\r\n");
        assert!((14 * 1024..15 * 1024).contains(&whole.len()));
        let (p, io, took) = detect_after(whole.clone()).await;
        assert_eq!((p, took), (Protocol::Http1, Duration::ZERO));
        assert_eq!(io.prefix(), &whole[..], "the whole head, nothing more");

        let endless = head(400);
        assert!(endless.len() > 32 * 1024);
        let (p, mut io, took) = detect_after(endless.clone()).await;
        assert_eq!((p, took), (Protocol::Http1, Duration::ZERO));
        let read = io.prefix().len();
        assert!((16 * 1024..20 * 1024).contains(&read), "read {read} bytes");
        let mut all = vec![0; endless.len()];
        io.read_exact(&mut all).await.unwrap();
        assert_eq!(all, endless);
    }
}
