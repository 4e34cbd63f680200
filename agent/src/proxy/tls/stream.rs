//! [`TlsStream`]: an established TLS 1.3 session on a TCP socket. meshd seals and opens the
//! records ([`super::record`]) with the traffic keys rustls derived; rustls (its
//! `KernelConnection`) computes the next keys at a key update and takes session tickets.
//!
//! Received bytes are read into a pooled buffer and opened there in place, then copied once
//! into the caller's buffer; sent bytes are sealed from the caller's buffers into a pooled
//! buffer, written out when it is full or flushed. A session holds no buffer while nothing
//! is in flight, so idle connections cost little.

use std::{
    io::{self, IoSlice},
    ops::Range,
    pin::Pin,
    task::{ready, Context, Poll},
};

use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, Error, ExtractedSecrets,
    HandshakeType, InvalidMessage, PeerMisbehaved, SupportedCipherSuite,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::{
    errors::to_io,
    record::{record_len, RecordKey, HEADER, MAX_CONTENT, OVERHEAD},
};
use crate::{identity::Identity, proxy::buffers::BufferPool};

/// A send or receive buffer: sixteen full records (one read or write of 256 KiB).
const BUF: usize = 16 * (MAX_CONTENT + OVERHEAD);
/// Idle buffers kept per thread for reuse.
const POOL: usize = 16;

thread_local! {
    static BUFS: BufferPool<Box<[u8]>> =
        const { BufferPool::new(POOL, || vec![0u8; BUF].into_boxed_slice()) };
}

fn take_buf() -> Box<[u8]> {
    BUFS.with(BufferPool::take)
}

fn give_buf(buf: Box<[u8]>) {
    BUFS.with(|p| p.give_back(buf));
}

/// What is left of the rustls connection after the handshake: the key schedule and the
/// session-ticket store.
pub(super) trait Session: Send + Sync {
    /// The next sending key (we send a KeyUpdate first).
    fn update_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), Error>;
    /// The next receiving key (the peer sent a KeyUpdate).
    fn update_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), Error>;
    /// A NewSessionTicket message's body, from a server.
    fn new_session_ticket(&mut self, payload: &[u8]) -> Result<(), Error>;
    fn suite(&self) -> SupportedCipherSuite;
}

/// A mutually authenticated TLS 1.3 session on a TCP socket (see the module docs); any
/// other byte stream for the tests and the fuzz targets.
pub(crate) struct TlsStream<S = TcpStream> {
    tcp: S,
    session: Box<dyn Session>,
    rx: Receiver,
    tx: Sender,
    peer: Option<Identity>,
    /// Why the session failed: every later read or write fails the same way.
    failed: Option<(io::ErrorKind, String)>,
}

struct Receiver {
    key: RecordKey,
    buf: Option<Box<[u8]>>,
    /// `buf[start..end]`: received, not yet opened.
    start: usize,
    end: usize,
    /// Opened content not yet delivered (in `buf`).
    plain: Range<usize>,
    /// Application data rustls decrypted during the handshake.
    early: Vec<u8>,
    /// close_notify received: the end of the stream.
    closed: bool,
    /// KeyUpdates since the last non-empty application data (a peer may not send them
    /// endlessly; an empty record does not count as data).
    updates_in_a_row: u8,
    /// Records with no content in a row (each costs an AEAD open and delivers nothing).
    empty_in_a_row: u8,
    /// Warning-level alerts received (user_canceled), in all.
    warnings: u8,
    /// KeyUpdates received and followed (our receiving key replaced), in all.
    updates: u64,
}

/// KeyUpdates a peer may send without data between them (as rustls and BoringSSL allow).
const MAX_UPDATES_IN_A_ROW: u8 = 32;
/// Empty records a peer may send in a row (rustls' `ALLOWED_CONSECUTIVE_EMPTY_FRAGMENTS_MAX`).
pub(super) const MAX_EMPTY_IN_A_ROW: u8 = 32;
/// Warning alerts a peer may send on a session (rustls and BoringSSL's `kMaxWarningAlerts`).
pub(super) const MAX_WARNINGS: u8 = 4;

struct Sender {
    key: RecordKey,
    buf: Option<Box<[u8]>>,
    /// `buf[written..filled]`: sealed, not yet written to the socket.
    written: usize,
    filled: usize,
    /// Records sealed with one key at most, the last being the KeyUpdate that replaces it:
    /// the cipher suite's confidentiality limit (2^24 for AES-GCM).
    key_records: u64,
    /// The sequence number at which the sending key is replaced.
    rekey_at: u64,
    /// The peer asked for a KeyUpdate; it goes out before any more data.
    update_due: bool,
    /// close_notify is sealed: nothing more may be.
    closing: bool,
    /// KeyUpdates sealed (our sending key replaced), in all: at the confidentiality limit
    /// or to answer the peer's request.
    updates: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    pub(super) fn new(
        tcp: S,
        secrets: ExtractedSecrets,
        session: Box<dyn Session>,
        leftover: &[u8],
        early: Vec<u8>,
        peer: Option<Identity>,
    ) -> Result<TlsStream<S>, Error> {
        let Some(suite) = session.suite().tls13() else {
            return Err(Error::General("TLS 1.3 only".into()));
        };
        let mut rx = Receiver {
            key: RecordKey::new(secrets.rx)?,
            buf: None,
            start: 0,
            end: 0,
            plain: 0..0,
            early,
            closed: false,
            updates_in_a_row: 0,
            empty_in_a_row: 0,
            warnings: 0,
            updates: 0,
        };
        if !leftover.is_empty() {
            // rustls stops at the first incomplete record: less than one record is left.
            if leftover.len() > BUF {
                return Err(Error::PeerSentOversizedRecord);
            }
            let mut buf = take_buf();
            buf[..leftover.len()].copy_from_slice(leftover);
            rx.end = leftover.len();
            rx.buf = Some(buf);
        }
        let key = RecordKey::new(secrets.tx)?;
        let key_records = suite.common.confidentiality_limit.max(2);
        let tx = Sender {
            rekey_at: key.seq().saturating_add(key_records - 1),
            key,
            key_records: key_records - 1,
            buf: None,
            written: 0,
            filled: 0,
            update_due: false,
            closing: false,
            updates: 0,
        };
        Ok(TlsStream {
            tcp,
            session,
            rx,
            tx,
            peer,
            failed: None,
        })
    }

    /// The SPIFFE identity in the peer's certificate.
    pub(crate) fn peer_identity(&self) -> Option<&Identity> {
        self.peer.as_ref()
    }

    /// Replaces the sending key every `records` records (tests: the limit is millions).
    pub(super) fn rekey_every(&mut self, records: u64) {
        self.tx.key_records = records;
        self.tx.rekey_at = self.tx.key.seq() + records;
    }

    /// KeyUpdates (sent, received) on this session so far.
    pub(super) fn key_updates(&self) -> (u64, u64) {
        (self.tx.updates, self.rx.updates)
    }

    pub(super) fn holds_no_buffers(&self) -> bool {
        self.rx.buf.is_none() && self.tx.buf.is_none()
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
            None => Ok(()),
        }
    }

    /// Ends the session with `err`: the peer gets an alert if there is room to seal one
    /// (best effort), and every later call fails.
    fn fail(&mut self, cx: &mut Context<'_>, err: Error) -> io::Error {
        if let Some(alert) = super::record::alert_for(&err) {
            if !self.tx.closing
                && self.tx.room() >= 2 + OVERHEAD
                && self
                    .tx
                    .seal(ContentType::Alert, &[2, u8::from(alert)])
                    .is_ok()
            {
                self.tx.closing = true;
                let _ = self.tx.poll_drain(&mut self.tcp, cx);
            }
        }
        let e = to_io(err);
        self.failed = Some((e.kind(), e.to_string()));
        e
    }

    /// Opens records until there is content to deliver, the peer closed, or the socket has
    /// nothing more.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ReadFail>> {
        let rx = &mut self.rx;
        loop {
            if !rx.plain.is_empty() || rx.closed {
                return Poll::Ready(Ok(()));
            }
            let avail = match &rx.buf {
                Some(buf) => &buf[rx.start..rx.end],
                None => &[][..],
            };
            let len = record_len(avail).map_err(ReadFail::Tls)?;
            let avail = avail.len();
            match (len, &mut rx.buf) {
                (Some(len), Some(buf)) if len <= avail => {
                    let at = rx.start;
                    let (typ, range) =
                        rx.key.open(&mut buf[at..at + len]).map_err(ReadFail::Tls)?;
                    rx.start += len;
                    let content = at + range.start..at + range.end;
                    if content.is_empty() {
                        rx.empty_in_a_row += 1;
                        if rx.empty_in_a_row > MAX_EMPTY_IN_A_ROW {
                            return Poll::Ready(Err(ReadFail::Tls(
                                PeerMisbehaved::TooManyEmptyFragments.into(),
                            )));
                        }
                    } else {
                        rx.empty_in_a_row = 0;
                    }
                    match typ {
                        ContentType::ApplicationData => {
                            if !content.is_empty() {
                                rx.updates_in_a_row = 0;
                            }
                            rx.plain = content;
                        }
                        ContentType::Alert => {
                            rx.closed =
                                on_alert(&buf[content], &mut rx.warnings).map_err(ReadFail::Tls)?;
                        }
                        ContentType::Handshake => {
                            let update = on_handshake(&buf[content], &mut *self.session)
                                .map_err(ReadFail::Tls)?;
                            if let Some(requested) = update {
                                rx.updates_in_a_row += 1;
                                if rx.updates_in_a_row > MAX_UPDATES_IN_A_ROW {
                                    return Poll::Ready(Err(ReadFail::Tls(
                                        PeerMisbehaved::TooManyKeyUpdateRequests.into(),
                                    )));
                                }
                                rx.key = RecordKey::new(
                                    self.session.update_rx().map_err(ReadFail::Tls)?,
                                )
                                .map_err(ReadFail::Tls)?;
                                rx.updates += 1;
                                self.tx.update_due |= requested;
                            }
                        }
                        other => {
                            return Poll::Ready(Err(ReadFail::Tls(Error::InappropriateMessage {
                                expect_types: vec![ContentType::ApplicationData],
                                got_type: other,
                            })))
                        }
                    }
                    if rx.plain.is_empty() && rx.start == rx.end {
                        rx.release();
                    }
                }
                (len, _) => {
                    let need = len.unwrap_or(HEADER);
                    let buf = rx.buf.get_or_insert_with(take_buf);
                    if rx.start == rx.end {
                        (rx.start, rx.end) = (0, 0);
                    } else if BUF - rx.start < need {
                        buf.copy_within(rx.start..rx.end, 0);
                        rx.end -= rx.start;
                        rx.start = 0;
                    }
                    let mut read = ReadBuf::new(&mut buf[rx.end..]);
                    match Pin::new(&mut self.tcp).poll_read(cx, &mut read) {
                        Poll::Pending => {
                            if rx.start == rx.end {
                                rx.release();
                            }
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(ReadFail::Io(e))),
                        Poll::Ready(Ok(())) => {}
                    }
                    let n = read.filled().len();
                    if n == 0 {
                        // Only close_notify ends the stream: an end of the socket without it
                        // may be a truncation (as rustls reports it).
                        let msg = if rx.start != rx.end {
                            "the peer closed the connection in the middle of a TLS record"
                        } else {
                            "peer closed connection without sending TLS close_notify"
                        };
                        rx.release();
                        return Poll::Ready(Err(ReadFail::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            msg,
                        ))));
                    }
                    rx.end += n;
                }
            }
        }
    }

    /// Seals a KeyUpdate the peer asked for, or that the confidentiality limit calls for,
    /// before any more data.
    fn poll_keys(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let tx = &mut self.tx;
        if !tx.update_due && tx.key.seq() < tx.rekey_at {
            return Poll::Ready(Ok(()));
        }
        ready!(tx.poll_room(&mut self.tcp, cx, KEY_UPDATE.len() + OVERHEAD))?;
        let result = tx
            .seal(ContentType::Handshake, &KEY_UPDATE)
            .and_then(|()| RecordKey::new(self.session.update_tx()?));
        match result {
            Ok(key) => {
                let tx = &mut self.tx;
                tx.rekey_at = key.seq().saturating_add(tx.key_records);
                tx.key = key;
                tx.update_due = false;
                tx.updates += 1;
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(self.fail(cx, e))),
        }
    }
}

impl<S> Drop for TlsStream<S> {
    fn drop(&mut self) {
        self.rx.release();
        self.tx.release();
    }
}

/// KeyUpdate(update_not_requested) (RFC 8446, section 4.6.3).
const KEY_UPDATE: [u8; 5] = [24, 0, 0, 1, 0];

enum ReadFail {
    Tls(Error),
    Io(io::Error),
}

impl Receiver {
    fn release(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_buf(buf);
        }
        (self.start, self.end) = (0, 0);
        self.plain = 0..0;
    }
}

impl Sender {
    fn room(&self) -> usize {
        BUF - self.filled
    }

    fn seal(&mut self, typ: ContentType, content: &[u8]) -> Result<(), Error> {
        let buf = self.buf.get_or_insert_with(take_buf);
        self.filled += self.key.seal(typ, content, &mut buf[self.filled..])?;
        Ok(())
    }

    /// Writes what is sealed to the socket; the buffer goes back to the pool when empty.
    fn poll_drain<S: AsyncWrite + Unpin>(
        &mut self,
        tcp: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(buf) = &self.buf {
            while self.written < self.filled {
                let n =
                    ready!(Pin::new(&mut *tcp).poll_write(cx, &buf[self.written..self.filled]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
            }
        }
        self.release();
        Poll::Ready(Ok(()))
    }

    /// Nothing in flight: the buffer goes back to the pool.
    fn release(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_buf(buf);
        }
        (self.written, self.filled) = (0, 0);
    }

    /// Ready when `need` bytes can be sealed (after writing out what is there, if not).
    fn poll_room<S: AsyncWrite + Unpin>(
        &mut self,
        tcp: &mut S,
        cx: &mut Context<'_>,
        need: usize,
    ) -> Poll<io::Result<()>> {
        if self.room() >= need {
            return Poll::Ready(Ok(()));
        }
        self.poll_drain(tcp, cx)
    }

    /// Seals as much of `bufs` as fits as application data records; returns the bytes
    /// taken. A record's content comes from one of `bufs` when it can (sealed from there);
    /// one that spans several is gathered into the buffer first.
    fn seal_data(&mut self, bufs: &[IoSlice<'_>]) -> Result<usize, Error> {
        let mut taken = 0;
        let mut slices = bufs.iter().map(|b| &b[..]).filter(|b| !b.is_empty());
        let mut cur: &[u8] = slices.next().unwrap_or_default();
        while !cur.is_empty() && self.room() > OVERHEAD && self.key.seq() < self.rekey_at {
            let cap = MAX_CONTENT.min(self.room() - OVERHEAD);
            let buf = self.buf.get_or_insert_with(take_buf);
            let out = &mut buf[self.filled..];
            let from_one = cur.len() >= cap || slices.clone().next().is_none();
            let sealed = if from_one {
                let n = cur.len().min(cap);
                let sealed = self
                    .key
                    .seal(ContentType::ApplicationData, &cur[..n], out)?;
                taken += n;
                cur = &cur[n..];
                if cur.is_empty() {
                    cur = slices.next().unwrap_or_default();
                }
                sealed
            } else {
                let mut len = 0;
                while len < cap && !cur.is_empty() {
                    let n = cur.len().min(cap - len);
                    out[HEADER + len..HEADER + len + n].copy_from_slice(&cur[..n]);
                    len += n;
                    cur = &cur[n..];
                    if cur.is_empty() {
                        cur = slices.next().unwrap_or_default();
                    }
                }
                taken += len;
                self.key
                    .seal_in_place(ContentType::ApplicationData, len, out)?
            };
            self.filled += sealed;
        }
        Ok(taken)
    }
}

/// Alert levels (RFC 8446, section 6).
const WARNING: u8 = 1;
const FATAL: u8 = 2;

/// An alert's meaning, as rustls reads it: `Ok(true)` for close_notify (no more data, at
/// either level), `Ok(false)` for a warning-level user_canceled (close_notify follows), at
/// most [`MAX_WARNINGS`] of them (`warnings` counts); the alert as an error otherwise (TLS
/// 1.3: every other alert is fatal, a fatal-level user_canceled included).
pub(super) fn on_alert(content: &[u8], warnings: &mut u8) -> Result<bool, Error> {
    let [level, desc] = content else {
        return Err(Error::InvalidMessage(InvalidMessage::MessageTooShort));
    };
    let desc = AlertDescription::from(*desc);
    if !matches!(*level, WARNING | FATAL) {
        return Err(Error::AlertReceived(desc));
    }
    if desc == AlertDescription::CloseNotify {
        return Ok(true);
    }
    if *level == WARNING {
        if *warnings >= MAX_WARNINGS {
            return Err(PeerMisbehaved::TooManyWarningAlertsReceived.into());
        }
        *warnings += 1;
        if desc == AlertDescription::UserCanceled {
            return Ok(false);
        }
    }
    Err(Error::AlertReceived(desc))
}

/// Handshake messages after the handshake: session tickets go to rustls; a KeyUpdate
/// returns whether the peer asked for ours in return (`Some(requested)`).
pub(super) fn on_handshake(
    mut msgs: &[u8],
    session: &mut dyn Session,
) -> Result<Option<bool>, Error> {
    if msgs.is_empty() {
        return Err(Error::InvalidMessage(InvalidMessage::MessageTooShort));
    }
    while let [typ, a, b, c, rest @ ..] = msgs {
        let len = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
        let Some((body, rest)) = rest.split_at_checked(len) else {
            return Err(Error::InvalidMessage(InvalidMessage::MessageTooShort));
        };
        match HandshakeType::from(*typ) {
            HandshakeType::NewSessionTicket => session.new_session_ticket(body)?,
            HandshakeType::KeyUpdate => {
                // The next record is under the new key: nothing may follow in this one.
                if !rest.is_empty() {
                    return Err(PeerMisbehaved::KeyEpochWithPendingFragment.into());
                }
                return match body {
                    [0] => Ok(Some(false)),
                    [1] => Ok(Some(true)),
                    _ => Err(Error::InvalidMessage(InvalidMessage::InvalidKeyUpdate)),
                };
            }
            other => {
                return Err(Error::InappropriateHandshakeMessage {
                    expect_types: vec![HandshakeType::KeyUpdate, HandshakeType::NewSessionTicket],
                    got_type: other,
                })
            }
        }
        msgs = rest;
    }
    if msgs.is_empty() {
        Ok(None)
    } else {
        // A handshake message split across records: rustls never sends these that way.
        Err(Error::InvalidMessage(InvalidMessage::MessageTooShort))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check()?;
        if !this.rx.early.is_empty() {
            let n = this.rx.early.len().min(out.remaining());
            out.put_slice(&this.rx.early[..n]);
            this.rx.early.drain(..n);
            return Poll::Ready(Ok(()));
        }
        match ready!(this.poll_fill(cx)) {
            Ok(()) => {}
            Err(ReadFail::Tls(e)) => return Poll::Ready(Err(this.fail(cx, e))),
            Err(ReadFail::Io(e)) => return Poll::Ready(Err(e)),
        }
        if this.tx.update_due && !this.tx.closing {
            // Answer the peer's KeyUpdate now if the sending side has room (else before the
            // next write).
            if let Poll::Ready(Err(e)) = this.poll_keys(cx) {
                return Poll::Ready(Err(e));
            }
            let _ = this.tx.poll_drain(&mut this.tcp, cx);
        }
        let rx = &mut this.rx;
        if let Some(buf) = &rx.buf {
            let n = rx.plain.len().min(out.remaining());
            out.put_slice(&buf[rx.plain.start..rx.plain.start + n]);
            rx.plain.start += n;
            if rx.plain.is_empty() && rx.start == rx.end {
                rx.release();
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.check()?;
        if this.tx.closing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        ready!(this.poll_keys(cx))?;
        let need = total.min(MAX_CONTENT) + OVERHEAD;
        ready!(this.tx.poll_room(&mut this.tcp, cx, need))?;
        match this.tx.seal_data(bufs) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(this.fail(cx, e))),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check()?;
        if !this.tx.closing {
            ready!(this.poll_keys(cx))?;
        }
        ready!(this.tx.poll_drain(&mut this.tcp, cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.failed.is_none() && !this.tx.closing {
            ready!(this.poll_keys(cx))?;
            ready!(this.tx.poll_room(&mut this.tcp, cx, 2 + OVERHEAD))?;
            let close_notify = [1, u8::from(AlertDescription::CloseNotify)];
            if let Err(e) = this.tx.seal(ContentType::Alert, &close_notify) {
                return Poll::Ready(Err(this.fail(cx, e)));
            }
            this.tx.closing = true;
        }
        ready!(this.tx.poll_drain(&mut this.tcp, cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}
