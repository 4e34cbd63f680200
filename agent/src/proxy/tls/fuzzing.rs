//! The record layer's fuzz entry points (see `crate::fuzzing`): each panics when a
//! property does not hold. The peer's side is [`super::testing`].

use std::{io::IoSlice, sync::atomic::Ordering};

use rustls::{AlertDescription, ContentType, Error, InvalidMessage, PeerMisbehaved};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    record::{record_len, HEADER, MAX_CIPHERTEXT, MAX_CONTENT},
    stream::{on_handshake, MAX_EMPTY_IN_A_ROW, MAX_WARNINGS},
    testing::{key, pair, Bytes, MockSession, Peer, RX},
};

const TAG: usize = 16;

/// `record_len` and `open` on arbitrary bytes: a record opens only if it is exactly what
/// the peer's key seals (so the AEAD verified it).
pub(crate) fn record_open(data: &[u8]) {
    let Ok(Some(len)) = record_len(data) else {
        return;
    };
    assert!(len >= HEADER);
    let Some(record) = data.get(..len) else {
        return;
    };
    let mut opened = record.to_vec();
    if let Ok((typ, range)) = key(RX, 0).open(&mut opened) {
        let content = opened[range].to_vec();
        let padding = len - HEADER - TAG - 1 - content.len();
        let again = Peer::new().seal_padded(u8::from(typ), &content, padding);
        assert_eq!(again, record, "opened a record the key did not seal");
    }
}

/// Sealed records: data, padded data, an alert, a KeyUpdate, an empty record.
pub(crate) fn record_seeds() -> Vec<Vec<u8>> {
    vec![
        Peer::new().seal(ContentType::ApplicationData, b"hello"),
        Peer::new().seal_padded(23, b"padded", 30),
        Peer::new().seal(ContentType::Alert, &[1, 0]),
        Peer::new().seal(ContentType::Handshake, &[24, 0, 0, 1, 1]),
        Peer::new().seal(ContentType::ApplicationData, &[]),
    ]
}

/// Seals (type, padding, content, version flip) and opens: the exact expected outcome.
pub(crate) fn record_inner(data: &[u8]) {
    let mut b = Bytes::new(data);
    let typ = b.u8();
    let padding = usize::from(b.u16() % 600);
    let len = usize::from(b.u16()) % (MAX_CONTENT + 300);
    let flip = b.u8() & 1 == 1;
    let fill = b.rest();
    let content: Vec<u8> = (0..len)
        .map(|i| fill.get(i % fill.len().max(1)).copied().unwrap_or(0))
        .collect();
    let mut record = Peer::new().seal_padded(typ, &content, padding);
    if flip {
        record[1] ^= 1;
    }
    let mut inner = content.clone();
    inner.push(typ);
    inner.resize(inner.len() + padding, 0);
    if inner.len() + TAG > MAX_CIPHERTEXT {
        assert_eq!(record_len(&record), Err(Error::PeerSentOversizedRecord));
        return;
    }
    assert_eq!(record_len(&record), Ok(Some(record.len())));
    let got = key(RX, 0).open(&mut record);
    let expected = if flip {
        Err(Error::DecryptError)
    } else {
        match inner.iter().rposition(|b| *b != 0) {
            None => Err(PeerMisbehaved::IllegalTlsInnerPlaintext.into()),
            Some(at) if at > MAX_CONTENT => Err(Error::PeerSentOversizedRecord),
            Some(at) => Ok((ContentType::from(inner[at]), HEADER..HEADER + at)),
        }
    };
    assert_eq!(got, expected);
    if let Ok((_, range)) = got {
        assert_eq!(record[range.clone()], inner[..range.len()]);
    }
}

/// How a model of the record layer expects a read sequence to end.
#[derive(Debug, PartialEq)]
enum End {
    Clean,
    Failed(Option<Error>),
}

/// A record sequence from the fuzzer's bytes, read through the stream, against a model.
pub(crate) async fn rx_sequence(data: &[u8]) {
    let mut b = Bytes::new(data);
    let chunk = usize::from(b.u8()).max(1) * 7;
    let (mut stream, mut peer, theirs, calls) = match pair(false, 1 << 22, &[], Vec::new()) {
        Ok(p) => p,
        Err(e) => panic!("pair: {e}"),
    };
    let (mut wire, mut expected) = (Vec::new(), Vec::new());
    let (mut empty, mut updates, mut warnings, mut tickets) = (0u8, 0u8, 0u8, 0u64);
    let mut end: Option<End> = None;
    let mut records = 0;
    while !b.is_empty() && records < 2_000 {
        records += 1;
        let op = b.u8() % 9;
        let model = end.is_none();
        let content_nonempty = |empty: &mut u8| *empty = 0;
        match op {
            0 | 5 => {
                let n = usize::from(b.u8()) + 1;
                let seed = b.u8();
                let content: Vec<u8> = (0..n).map(|i| seed.wrapping_add(i as u8)).collect();
                let padding = if op == 5 { usize::from(b.u8()) } else { 0 };
                wire.extend(peer.seal_padded(23, &content, padding));
                if model {
                    content_nonempty(&mut empty);
                    updates = 0;
                    expected.extend_from_slice(&content);
                }
            }
            1 => {
                wire.extend(peer.seal(ContentType::ApplicationData, &[]));
                if model {
                    empty += 1;
                    if empty > MAX_EMPTY_IN_A_ROW {
                        end = Some(End::Failed(Some(
                            PeerMisbehaved::TooManyEmptyFragments.into(),
                        )));
                    }
                }
            }
            2 => {
                let (level, desc) = (b.u8() % 4, b.u8());
                wire.extend(peer.seal(ContentType::Alert, &[level, desc]));
                if model {
                    content_nonempty(&mut empty);
                    let d = AlertDescription::from(desc);
                    end = if !matches!(level, 1 | 2) {
                        Some(End::Failed(Some(Error::AlertReceived(d))))
                    } else if d == AlertDescription::CloseNotify {
                        Some(End::Clean)
                    } else if level == 1 && warnings >= MAX_WARNINGS {
                        Some(End::Failed(Some(
                            PeerMisbehaved::TooManyWarningAlertsReceived.into(),
                        )))
                    } else if level == 1 && d == AlertDescription::UserCanceled {
                        warnings += 1;
                        None
                    } else {
                        warnings += u8::from(level == 1);
                        Some(End::Failed(Some(Error::AlertReceived(d))))
                    };
                }
            }
            3 => {
                wire.extend(peer.key_update(b.u8() & 1 == 1));
                if model {
                    content_nonempty(&mut empty);
                    updates += 1;
                    if updates > 32 {
                        end = Some(End::Failed(Some(
                            PeerMisbehaved::TooManyKeyUpdateRequests.into(),
                        )));
                    }
                }
            }
            4 => {
                let n = b.u8();
                let mut msg = vec![4, 0, 0, n];
                msg.extend(b.take(usize::from(n)));
                msg.resize(4 + usize::from(n), 0);
                wire.extend(peer.seal(ContentType::Handshake, &msg));
                if model {
                    content_nonempty(&mut empty);
                    tickets += 1;
                }
            }
            6 => {
                wire.extend(peer.seal(ContentType::Alert, &[1, 0]));
                if model {
                    end = Some(End::Clean);
                }
            }
            7 => {
                let n = usize::from(b.u8() % 32) + 1;
                wire.extend(b.take(n));
                if model {
                    end = Some(End::Failed(None));
                }
            }
            _ => {
                wire.extend([23, 3, 3, 0x41, 0x01]);
                if model {
                    end = Some(End::Failed(Some(Error::PeerSentOversizedRecord)));
                }
            }
        }
    }
    let end = end.unwrap_or(End::Failed(None));
    let (r, w) = tokio::io::split(theirs);
    let writer = write_in_chunks(w, &wire, chunk);
    let reader = async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let result = loop {
            match stream.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        drop(stream);
        (got, result)
    };
    let drain = drain(r);
    let ((), (got, result)) = tokio::join!(writer, async {
        let out = reader.await;
        drain.await;
        out
    });
    assert!(got == expected, "delivered data differ from the model's");
    match (&end, &result) {
        (End::Clean, Ok(())) => {
            assert_eq!(calls.tickets.load(Ordering::Relaxed), tickets);
        }
        (End::Failed(None), Err(_)) => {}
        (End::Failed(Some(want)), Err(e)) => {
            let got = e.get_ref().and_then(|i| i.downcast_ref::<Error>());
            assert_eq!(got, Some(want), "{e}");
        }
        (end, result) => panic!("model: {end:?}, stream: {result:?}"),
    }
}

/// Vectored writes, flushes and a key replaced every few records: the peer reads back
/// exactly the bytes written, then close_notify, under as many keys as were sealed.
pub(crate) async fn tx_vectored(data: &[u8]) {
    let mut b = Bytes::new(data);
    let rekey = u64::from(b.u8() % 8);
    let (mut stream, mut peer, theirs, _) = match pair(false, 1 << 22, &[], Vec::new()) {
        Ok(p) => p,
        Err(e) => panic!("pair: {e}"),
    };
    if rekey > 0 {
        stream.rekey_every(rekey);
    }
    let (mut r, w) = tokio::io::split(theirs);
    drop(w);
    let reader = async move {
        let mut back = Vec::new();
        let _ = r.read_to_end(&mut back).await;
        back
    };
    let writer = async {
        let mut written = Vec::new();
        let mut total = 0usize;
        while !b.is_empty() && total < 1 << 20 {
            match b.u8() % 4 {
                0 | 1 => {
                    let n = usize::from(b.u8() % 6);
                    let bufs: Vec<Vec<u8>> = (0..n)
                        .map(|i| {
                            let len = usize::from(b.u16()) % 40_000;
                            vec![i as u8 ^ b.u8(); len]
                        })
                        .collect();
                    let slices: Vec<IoSlice<'_>> = bufs.iter().map(|v| IoSlice::new(v)).collect();
                    let all = bufs.concat();
                    let taken = match stream.write_vectored(&slices).await {
                        Ok(n) => n,
                        Err(e) => panic!("write_vectored: {e}"),
                    };
                    assert!(taken <= all.len());
                    assert!(
                        taken > 0 || all.is_empty(),
                        "nothing taken of {}",
                        all.len()
                    );
                    written.extend_from_slice(&all[..taken]);
                    total += taken;
                }
                2 => {
                    if let Err(e) = stream.flush().await {
                        panic!("flush: {e}");
                    }
                }
                _ => {
                    let byte = [b.u8()];
                    if let Err(e) = stream.write_all(&byte).await {
                        panic!("write: {e}");
                    }
                    written.push(byte[0]);
                }
            }
        }
        if let Err(e) = stream.shutdown().await {
            panic!("shutdown: {e}");
        }
        let sent = stream.key_updates().0;
        assert!(stream.holds_no_buffers(), "buffers held after shutdown");
        drop(stream);
        (written, sent)
    };
    let ((written, key_updates), back) = tokio::join!(writer, reader);
    let records = peer.open_all(&back);
    let mut data = Vec::new();
    let mut updates = 0;
    for (i, (typ, content)) in records.iter().enumerate() {
        match typ {
            ContentType::ApplicationData => data.extend_from_slice(content),
            ContentType::Handshake => {
                assert_eq!(content, &[24, 0, 0, 1, 0], "not a KeyUpdate");
                updates += 1;
            }
            ContentType::Alert => {
                assert_eq!(content, &[1, 0], "not close_notify");
                assert_eq!(i, records.len() - 1, "close_notify is not last");
            }
            other => panic!("sent a {other:?} record"),
        }
    }
    assert!(
        data == written,
        "the peer read other bytes than were written"
    );
    assert_eq!(records.last().map(|r| r.0), Some(ContentType::Alert));
    assert_eq!(updates, key_updates);
}

/// `on_handshake` on arbitrary content: a KeyUpdate only as the last message, tickets
/// before it reach the session (a server's session refuses them).
pub(crate) fn post_handshake(data: &[u8]) {
    let server = data.first().is_some_and(|b| b & 0x80 != 0);
    let msgs = data.get(1..).unwrap_or_default();
    let (mut session, calls) = MockSession::new(server);
    let result = on_handshake(msgs, &mut session);
    // Walk the messages as the protocol frames them.
    let mut walk = msgs;
    let mut nst = 0u64;
    let mut last_ku = None;
    while let [typ, a, b, c, rest @ ..] = walk {
        let len = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
        let Some((body, rest)) = rest.split_at_checked(len) else {
            break;
        };
        match *typ {
            4 if !server => nst += 1,
            24 => {
                last_ku = rest.is_empty().then(|| body.to_vec());
                break;
            }
            _ => break,
        }
        walk = rest;
    }
    match result {
        Ok(Some(requested)) => {
            assert_eq!(last_ku, Some(vec![u8::from(requested)]), "{msgs:?}");
            assert_eq!(calls.tickets.load(Ordering::Relaxed), nst);
        }
        Ok(None) => {
            assert!(!msgs.is_empty() && walk.is_empty(), "{msgs:?}");
            assert_eq!(calls.tickets.load(Ordering::Relaxed), nst);
        }
        Err(Error::InvalidMessage(InvalidMessage::MessageTooShort)) => {}
        Err(_) => assert!(calls.tickets.load(Ordering::Relaxed) <= nst),
    }
}

/// Writes `data` to `w` in pieces of `chunk` bytes (stopping at the first failed write),
/// then shuts `w` down: a peer sending with arbitrary boundaries.
pub(crate) async fn write_in_chunks<W: tokio::io::AsyncWrite + Unpin>(
    mut w: W,
    data: &[u8],
    chunk: usize,
) {
    for piece in data.chunks(chunk) {
        if w.write_all(piece).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Reads `r` to its end and throws the bytes away (keeps the other side's writes flowing).
pub(crate) async fn drain<R: tokio::io::AsyncRead + Unpin>(mut r: R) {
    let mut sink = Vec::new();
    let _ = r.read_to_end(&mut sink).await;
}
