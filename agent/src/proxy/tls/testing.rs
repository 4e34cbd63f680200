//! A [`TlsStream`] without a handshake, for the record-layer tests and the fuzz targets: a
//! deterministic key schedule ([`MockSession`]) stands in for rustls', and a [`Peer`] seals
//! and opens records with the same keys, so that a test can send any record sequence,
//! well-formed or not, and read what the stream sent back (its alerts).

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use rustls::{
    crypto::{
        aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher::{AeadKey, Iv},
    },
    ConnectionTrafficSecrets, ContentType, Error, ExtractedSecrets, HandshakeType,
    SupportedCipherSuite,
};
use tokio::io::DuplexStream;

use super::{
    record::{record_len, RecordKey, HEADER, OVERHEAD},
    stream::{Session, TlsStream},
};

/// Secrets of one direction: `dir` tells the two apart, `generation` counts KeyUpdates.
fn secrets(dir: u8, generation: u64) -> ConnectionTrafficSecrets {
    let g = generation.to_le_bytes();
    let mut key = [dir; 32];
    key[..8].copy_from_slice(&g);
    let mut iv = [dir ^ 0x5a; 12];
    iv[..8].copy_from_slice(&g);
    ConnectionTrafficSecrets::Aes256Gcm {
        key: AeadKey::from(key),
        iv: Iv::from(iv),
    }
}

/// Peer to stream.
pub(crate) const RX: u8 = 1;
/// Stream to peer.
pub(crate) const TX: u8 = 2;

pub(super) fn key(dir: u8, generation: u64) -> RecordKey {
    // The secrets are always well-formed AES-256-GCM ones.
    match RecordKey::new((0, secrets(dir, generation))) {
        Ok(k) => k,
        Err(e) => unreachable!("a fixed AES-256-GCM key: {e}"),
    }
}

/// What a mock session was asked to do.
#[derive(Default)]
pub(crate) struct Calls {
    pub(crate) tickets: AtomicU64,
    pub(crate) update_rx: AtomicU64,
    pub(crate) update_tx: AtomicU64,
}

/// The key schedule after the handshake: each update moves one direction to its next
/// generation. A server refuses session tickets, as rustls' does.
pub(crate) struct MockSession {
    server: bool,
    rx: u64,
    tx: u64,
    calls: Arc<Calls>,
}

impl Session for MockSession {
    fn update_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), Error> {
        self.tx += 1;
        self.calls.update_tx.fetch_add(1, Ordering::Relaxed);
        Ok((0, secrets(TX, self.tx)))
    }
    fn update_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), Error> {
        self.rx += 1;
        self.calls.update_rx.fetch_add(1, Ordering::Relaxed);
        Ok((0, secrets(RX, self.rx)))
    }
    fn new_session_ticket(&mut self, _: &[u8]) -> Result<(), Error> {
        if self.server {
            return Err(Error::InappropriateHandshakeMessage {
                expect_types: vec![HandshakeType::KeyUpdate],
                got_type: HandshakeType::NewSessionTicket,
            });
        }
        self.calls.tickets.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn suite(&self) -> SupportedCipherSuite {
        TLS13_AES_256_GCM_SHA384
    }
}

impl MockSession {
    pub(crate) fn new(server: bool) -> (MockSession, Arc<Calls>) {
        let calls = Arc::new(Calls::default());
        let session = MockSession {
            server,
            rx: 0,
            tx: 0,
            calls: calls.clone(),
        };
        (session, calls)
    }
}

/// The other end of a [`TlsStream`] made by [`pair`]: seals what it sends with the keys
/// the stream opens with, and opens what the stream sent.
pub(crate) struct Peer {
    tx: RecordKey,
    tx_generation: u64,
    rx: RecordKey,
    rx_generation: u64,
}

impl Peer {
    /// A peer of a fresh stream (both keys at their first generation).
    pub(crate) fn new() -> Peer {
        Peer {
            tx: key(RX, 0),
            tx_generation: 0,
            rx: key(TX, 0),
            rx_generation: 0,
        }
    }

    /// A record of real type `typ` with `content` and `padding` zero bytes after the type.
    pub(crate) fn seal_padded(&mut self, typ: u8, content: &[u8], padding: usize) -> Vec<u8> {
        let len = content.len() + 1 + padding;
        // The last byte of the inner plaintext is sealed as the "type" by seal_in_place.
        let mut out = vec![0u8; len + OVERHEAD];
        let inner = &mut out[HEADER..HEADER + len];
        inner[..content.len()].copy_from_slice(content);
        inner[content.len()] = typ;
        let (body_len, last) = (len - 1, inner[len - 1]);
        match self
            .tx
            .seal_in_place(ContentType::from(last), body_len, &mut out)
        {
            Ok(n) => out.truncate(n),
            // Longer than a record may be: sealed anyway, by hand, for the overflow cases.
            Err(_) => return self.seal_oversized(typ, content, padding),
        }
        out
    }

    /// As [`Peer::seal_padded`] for an inner plaintext longer than our sealer allows (the
    /// header's length is written by hand; the AEAD covers it).
    fn seal_oversized(&mut self, typ: u8, content: &[u8], padding: usize) -> Vec<u8> {
        use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
        let ConnectionTrafficSecrets::Aes256Gcm { key, iv } = secrets(RX, self.tx_generation)
        else {
            unreachable!("the mock schedule is AES-256-GCM");
        };
        let Ok(unbound) = UnboundKey::new(&AES_256_GCM, key.as_ref()) else {
            unreachable!("a 32-byte key");
        };
        let key = LessSafeKey::new(unbound);
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(iv.as_ref());
        for (n, s) in nonce[4..].iter_mut().zip(self.tx.seq().to_be_bytes()) {
            *n ^= s;
        }
        // Keep our own key's sequence in step.
        let mut scratch = vec![0u8; OVERHEAD];
        let _ = self
            .tx
            .seal(ContentType::ApplicationData, &[], &mut scratch);
        let mut inner = content.to_vec();
        inner.push(typ);
        inner.resize(inner.len() + padding, 0);
        let len = u16::try_from(inner.len() + 16).unwrap_or(u16::MAX);
        let [hi, lo] = len.to_be_bytes();
        let header = [23, 3, 3, hi, lo];
        let Ok(tag) = key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(header),
            &mut inner,
        ) else {
            unreachable!("sealing cannot fail");
        };
        let mut out = header.to_vec();
        out.extend_from_slice(&inner);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// A record of `typ` with `content`, no padding.
    pub(crate) fn seal(&mut self, typ: ContentType, content: &[u8]) -> Vec<u8> {
        self.seal_padded(u8::from(typ), content, 0)
    }

    /// A KeyUpdate record; the peer's later records use the next key.
    pub(crate) fn key_update(&mut self, requested: bool) -> Vec<u8> {
        let record = self.seal(ContentType::Handshake, &[24, 0, 0, 1, u8::from(requested)]);
        self.tx_generation += 1;
        self.tx = key(RX, self.tx_generation);
        record
    }

    /// Opens the records the stream sent (complete ones), following its KeyUpdates: each
    /// as (real type, content). Stops at the first that fails to open.
    pub(crate) fn open_all(&mut self, mut bytes: &[u8]) -> Vec<(ContentType, Vec<u8>)> {
        let mut out = Vec::new();
        while let Ok(Some(len)) = record_len(bytes) {
            let Some(record) = bytes.get(..len) else {
                break;
            };
            let mut record = record.to_vec();
            bytes = &bytes[len..];
            let Ok((typ, range)) = self.rx.open(&mut record) else {
                break;
            };
            let content = record[range].to_vec();
            if typ == ContentType::Handshake && content.first() == Some(&24) {
                self.rx_generation += 1;
                self.rx = key(TX, self.rx_generation);
            }
            out.push((typ, content));
        }
        out
    }
}

/// A stream over an in-memory pipe (`capacity` bytes each way), its peer's keys and the
/// pipe's other end; `early` is delivered first, `leftover` is opened before what the pipe
/// brings.
pub(crate) fn pair(
    server: bool,
    capacity: usize,
    leftover: &[u8],
    early: Vec<u8>,
) -> Result<(TlsStream<DuplexStream>, Peer, DuplexStream, Arc<Calls>), Error> {
    let (ours, theirs) = tokio::io::duplex(capacity);
    let (session, calls) = MockSession::new(server);
    let secrets = ExtractedSecrets {
        tx: (0, secrets(TX, 0)),
        rx: (0, secrets(RX, 0)),
    };
    let stream = TlsStream::new(ours, secrets, Box::new(session), leftover, early, None)?;
    Ok((stream, Peer::new(), theirs, calls))
}

/// Reads the fuzzer's bytes as small numbers; zeros once they run out.
pub(crate) struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Bytes(data)
    }
    pub(crate) fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    pub(crate) fn u16(&mut self) -> u16 {
        u16::from(self.u8()) << 8 | u16::from(self.u8())
    }
    /// Up to `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
