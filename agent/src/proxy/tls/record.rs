//! TLS 1.3 record protection (RFC 8446, section 5) with the traffic keys that rustls derived
//! in the handshake: what kernel TLS does in the kernel. A record is sealed from the caller's
//! plaintext straight into the send buffer (AES-GCM reads one buffer and writes the other),
//! and opened in place in the receive buffer, so the only copy left on either side is the one
//! the AEAD makes.

use std::ops::Range;

use aws_lc_rs::aead::{
    Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305, NONCE_LEN,
};
use rustls::{AlertDescription, ConnectionTrafficSecrets, ContentType, Error, PeerMisbehaved};

/// Type, legacy version and length.
pub(super) const HEADER: usize = 5;
/// The most content one record carries (2^14 bytes).
pub(super) const MAX_CONTENT: usize = 16 * 1024;
const TAG: usize = 16;
/// Bytes a sealed record adds to its content: header, inner content type, AEAD tag.
pub(super) const OVERHEAD: usize = HEADER + 1 + TAG;
/// The longest encrypted record a peer may send: 2^14 + 256 bytes after the header.
pub(super) const MAX_CIPHERTEXT: usize = MAX_CONTENT + 256;

/// Outer type of every protected record; the real one is inside.
const APPLICATION_DATA: u8 = 23;
/// `legacy_record_version`: always TLS 1.2 on the wire.
const LEGACY_VERSION: [u8; 2] = [3, 3];

/// One direction's traffic key and record sequence number.
pub(super) struct RecordKey {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl RecordKey {
    /// The key for `secrets`, starting at sequence number `seq` (as rustls hands them over).
    pub(super) fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<RecordKey, Error> {
        let (alg, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return Err(Error::General("unsupported cipher suite".into())),
        };
        let unbound = UnboundKey::new(alg, key.as_ref())
            .map_err(|_| Error::General("bad traffic key length".into()))?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| Error::General("bad traffic IV length".into()))?;
        Ok(RecordKey {
            key: LessSafeKey::new(unbound),
            iv,
            seq,
        })
    }

    /// Records protected with this key so far (the next record's sequence number).
    pub(super) fn seq(&self) -> u64 {
        self.seq
    }

    /// The per-record nonce: the IV XORed with the sequence number (section 5.3).
    fn next_nonce(&mut self) -> Result<Nonce, Error> {
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.seq.to_be_bytes())
        {
            *n ^= s;
        }
        self.seq = self.seq.checked_add(1).ok_or(Error::EncryptError)?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// Seals a record of `typ` carrying `content` (at most [`MAX_CONTENT`] bytes) into the
    /// start of `out`, which must have room for `content.len() + OVERHEAD` bytes; returns
    /// the record's length. `content` is read once, by the AEAD.
    pub(super) fn seal(
        &mut self,
        typ: ContentType,
        content: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let len = content.len();
        let header = header(len)?;
        let record = out.get_mut(..len + OVERHEAD).ok_or(Error::EncryptError)?;
        let (head, body) = record.split_at_mut(HEADER);
        head.copy_from_slice(&header);
        let (ciphertext, type_and_tag) = body.split_at_mut(len);
        let nonce = self.next_nonce()?;
        self.key
            .seal_out_of_place_scatter(
                nonce,
                Aad::from(header),
                content,
                ciphertext,
                &[u8::from(typ)],
                type_and_tag,
            )
            .map_err(|_| Error::EncryptError)?;
        Ok(len + OVERHEAD)
    }

    /// Seals a record of `typ` whose content (`len` bytes) the caller already put at
    /// `out[HEADER..]`, in place; `out` must have room for `len + OVERHEAD` bytes. For a
    /// record gathered from several buffers.
    pub(super) fn seal_in_place(
        &mut self,
        typ: ContentType,
        len: usize,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let header = header(len)?;
        let record = out.get_mut(..len + OVERHEAD).ok_or(Error::EncryptError)?;
        let (head, body) = record.split_at_mut(HEADER);
        head.copy_from_slice(&header);
        let (inner, tag_out) = body.split_at_mut(len + 1);
        inner[len] = u8::from(typ);
        let nonce = self.next_nonce()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), inner)
            .map_err(|_| Error::EncryptError)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(len + OVERHEAD)
    }

    /// Opens the complete record `record` (header included, as [`record_len`] measured it)
    /// in place: returns its real content type and where its content lies in `record`.
    pub(super) fn open(&mut self, record: &mut [u8]) -> Result<(ContentType, Range<usize>), Error> {
        let (head, body) = record.split_at_mut(HEADER);
        if head[0] != APPLICATION_DATA {
            return Err(Error::InappropriateMessage {
                expect_types: vec![ContentType::ApplicationData],
                got_type: ContentType::from(head[0]),
            });
        }
        if body.len() < TAG {
            return Err(Error::DecryptError);
        }
        let nonce = self.next_nonce()?;
        let aad: [u8; HEADER] = [head[0], head[1], head[2], head[3], head[4]];
        let inner = self
            .key
            .open_in_place(nonce, Aad::from(aad), body)
            .map_err(|_| Error::DecryptError)?;
        // TLSInnerPlaintext: content, the real type, then zero padding.
        let Some(at) = inner.iter().rposition(|b| *b != 0) else {
            return Err(PeerMisbehaved::IllegalTlsInnerPlaintext.into());
        };
        if at > MAX_CONTENT {
            return Err(Error::PeerSentOversizedRecord);
        }
        Ok((ContentType::from(inner[at]), HEADER..HEADER + at))
    }
}

/// The header of a protected record carrying `content_len` bytes of content.
fn header(content_len: usize) -> Result<[u8; HEADER], Error> {
    if content_len > MAX_CONTENT {
        return Err(Error::EncryptError);
    }
    let len = u16::try_from(content_len + 1 + TAG).map_err(|_| Error::EncryptError)?;
    let [hi, lo] = len.to_be_bytes();
    Ok([
        APPLICATION_DATA,
        LEGACY_VERSION[0],
        LEGACY_VERSION[1],
        hi,
        lo,
    ])
}

/// The length (header included) of the record at the start of `buf`, once its header has
/// arrived; a header announcing more than a peer may send is an error.
pub(super) fn record_len(buf: &[u8]) -> Result<Option<usize>, Error> {
    let Some(head) = buf.get(..HEADER) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
    if len > MAX_CIPHERTEXT {
        return Err(Error::PeerSentOversizedRecord);
    }
    Ok(Some(HEADER + len))
}

/// The alert that tells the peer why the connection ends with `err` (None: the peer's own
/// alert ended it, or there is nothing to say).
pub(super) fn alert_for(err: &Error) -> Option<AlertDescription> {
    Some(match err {
        Error::AlertReceived(_) => return None,
        Error::DecryptError => AlertDescription::BadRecordMac,
        Error::PeerSentOversizedRecord => AlertDescription::RecordOverflow,
        Error::InvalidMessage(_) => AlertDescription::DecodeError,
        Error::InappropriateMessage { .. } | Error::InappropriateHandshakeMessage { .. } => {
            AlertDescription::UnexpectedMessage
        }
        Error::PeerMisbehaved(_) => AlertDescription::UnexpectedMessage,
        _ => AlertDescription::InternalError,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn key(seq: u64) -> RecordKey {
        // rustls builds 32-byte keys only outside its key schedule: AES-256-GCM.
        RecordKey::new((
            seq,
            ConnectionTrafficSecrets::Aes256Gcm {
                key: AeadKey::from([7u8; 32]),
                iv: Iv::from([9u8; NONCE_LEN]),
            },
        ))
        .unwrap()
    }

    #[test]
    fn sealed_records_open_with_the_same_key_and_sequence() {
        let (mut tx, mut rx) = (key(0), key(0));
        let mut out = vec![0u8; 2 * (MAX_CONTENT + OVERHEAD)];
        let content: Vec<u8> = (0..MAX_CONTENT).map(|i| i as u8).collect();
        let n = tx
            .seal(ContentType::ApplicationData, &content, &mut out)
            .unwrap();
        assert_eq!(n, MAX_CONTENT + OVERHEAD);
        assert_eq!(record_len(&out[..n]).unwrap(), Some(n));
        // Gathered: the content is put in place first.
        out[n + HEADER..n + HEADER + 3].copy_from_slice(b"abc");
        let m = tx
            .seal_in_place(ContentType::Handshake, 3, &mut out[n..])
            .unwrap();
        assert_eq!(m, 3 + OVERHEAD);
        assert_eq!(tx.seq(), 2);

        let (typ, range) = rx.open(&mut out[..n]).unwrap();
        assert_eq!(typ, ContentType::ApplicationData);
        assert_eq!(&out[range], &content[..]);
        let (typ, range) = rx.open(&mut out[n..n + m]).unwrap();
        assert_eq!(typ, ContentType::Handshake);
        assert_eq!(&out[n..n + m][range], b"abc");
    }

    #[test]
    fn a_changed_byte_or_a_wrong_sequence_number_fails_to_open() {
        let mut out = vec![0u8; 64];
        let n = key(0)
            .seal(ContentType::ApplicationData, b"hello", &mut out)
            .unwrap();
        let mut flipped = out.clone();
        flipped[HEADER + 1] ^= 1;
        assert_eq!(
            key(0).open(&mut flipped[..n]).unwrap_err(),
            Error::DecryptError
        );
        let mut copy = out.clone();
        assert_eq!(
            key(1).open(&mut copy[..n]).unwrap_err(),
            Error::DecryptError
        );
        assert!(key(0).open(&mut out[..n]).is_ok());
    }

    #[test]
    fn padding_after_the_content_type_is_removed() {
        let mut out = vec![0u8; 64];
        // Content "hi", its type, then two bytes of zero padding (a type of 0 adds the last).
        out[HEADER..HEADER + 4].copy_from_slice(&[b'h', b'i', APPLICATION_DATA, 0]);
        let n = key(0)
            .seal_in_place(ContentType::from(0), 4, &mut out)
            .unwrap();
        let (typ, range) = key(0).open(&mut out[..n]).unwrap();
        assert_eq!(typ, ContentType::ApplicationData);
        assert_eq!(&out[range], b"hi");
        // All padding, no type: refused.
        let mut none = vec![0u8; 64];
        let n = key(0)
            .seal_in_place(ContentType::from(0), 3, &mut none)
            .unwrap();
        assert_eq!(
            key(0).open(&mut none[..n]).unwrap_err(),
            Error::PeerMisbehaved(PeerMisbehaved::IllegalTlsInnerPlaintext)
        );
    }

    #[test]
    fn oversized_and_unprotected_records_are_refused() {
        let mut head = [APPLICATION_DATA, 3, 3, 0x41, 0x01];
        assert_eq!(
            record_len(&head).unwrap_err(),
            Error::PeerSentOversizedRecord
        );
        assert_eq!(record_len(&head[..4]).unwrap(), None);
        head[3] = 0x41;
        head[4] = 0x00;
        assert_eq!(record_len(&head).unwrap(), Some(HEADER + MAX_CIPHERTEXT));
        let mut plain = [
            22u8, 3, 3, 0, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert!(matches!(
            key(0).open(&mut plain),
            Err(Error::InappropriateMessage { .. })
        ));
    }
}
