//! Bad input to the record layer (the security review's classes A and B): each case sends
//! a record sequence a peer could send after the handshake, and asserts the exact refusal
//! (the `rustls::Error`, and the alert the stream sent back), or what is delivered.

use std::io;

use rustls::{AlertDescription, ContentType, Error, InvalidMessage, PeerMisbehaved};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::{
    record::{HEADER, MAX_CONTENT},
    stream::{on_alert, TlsStream, MAX_EMPTY_IN_A_ROW, MAX_WARNINGS},
    testing::{key, pair, Peer, RX},
};

const APP: ContentType = ContentType::ApplicationData;
const HS: ContentType = ContentType::Handshake;
const ALERT: ContentType = ContentType::Alert;
const CLOSE_NOTIFY: [u8; 2] = [1, 0];

/// What the stream made of a peer's bytes.
struct Outcome {
    /// Application data delivered, in order.
    data: Vec<u8>,
    /// Clean end (close_notify) or the error that ended the reads.
    end: io::Result<()>,
    /// The records the stream sent back, opened.
    sent: Vec<(ContentType, Vec<u8>)>,
}

impl Outcome {
    /// The `rustls::Error` inside the error that ended the reads.
    fn tls_error(&self) -> Option<&Error> {
        match &self.end {
            Err(e) => e.get_ref()?.downcast_ref::<Error>(),
            Ok(()) => None,
        }
    }

    /// The fatal alert the stream sent, if any.
    fn alert(&self) -> Option<AlertDescription> {
        self.sent.iter().find_map(|(typ, c)| match (typ, &c[..]) {
            (ContentType::Alert, [2, d]) => Some(AlertDescription::from(*d)),
            _ => None,
        })
    }

    /// Asserts that the session failed with `err` and told the peer `alert`.
    #[track_caller]
    fn refused(&self, err: Error, alert: Option<AlertDescription>) {
        assert_eq!(self.tls_error(), Some(&err), "end: {:?}", self.end);
        assert_eq!(self.alert(), alert, "sent: {:?}", self.sent);
    }
}

fn setup(server: bool) -> (TlsStream<DuplexStream>, Peer, DuplexStream) {
    let (stream, peer, theirs, _) = pair(server, 4 << 20, &[], Vec::new()).expect("pair");
    (stream, peer, theirs)
}

/// Writes `wire` in `chunk`-byte pieces and closes; reads the stream to its end.
async fn run(
    mut stream: TlsStream<DuplexStream>,
    mut peer: Peer,
    theirs: DuplexStream,
    wire: Vec<u8>,
    chunk: usize,
) -> Outcome {
    let (mut r, mut w) = tokio::io::split(theirs);
    let writer = async move {
        for piece in wire.chunks(chunk.max(1)) {
            if w.write_all(piece).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    let reader = async move {
        let mut data = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let end = loop {
            match stream.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        drop(stream);
        (data, end)
    };
    let ((), (data, end)) = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("the stream ends");
    let mut back = Vec::new();
    let _ = r.read_to_end(&mut back).await;
    let sent = peer.open_all(&back);
    Outcome { data, end, sent }
}

/// The peer sends `records` (each built with its keys), in one piece.
async fn send(server: bool, records: impl FnOnce(&mut Peer) -> Vec<Vec<u8>>) -> Outcome {
    let (stream, mut peer, theirs) = setup(server);
    let wire = records(&mut peer).concat();
    run(stream, peer, theirs, wire, usize::MAX).await
}

fn kind(o: &Outcome) -> io::ErrorKind {
    o.end
        .as_ref()
        .map_or_else(|e| e.kind(), |()| io::ErrorKind::Other)
}

// --- A. Receive side ---

#[tokio::test]
async fn a01_header_length_over_the_limit_is_record_overflow() {
    let o = send(false, |_| vec![vec![23, 3, 3, 0x41, 0x01]]).await;
    o.refused(
        Error::PeerSentOversizedRecord,
        Some(AlertDescription::RecordOverflow),
    );
}

/// Decided: as rustls, the longest ciphertext (2^14 + 256) is accepted when its content is
/// at most 2^14, whatever the padding (the inner plaintext may be 2^14 + 240 bytes).
#[tokio::test]
async fn a02_full_content_with_maximum_padding_is_accepted_as_rustls_does() {
    let content = vec![7u8; MAX_CONTENT];
    let o = send(false, |p| {
        let r = p.seal_padded(23, &content, 239);
        assert_eq!(r.len(), HEADER + MAX_CONTENT + 256);
        vec![r, p.seal(ALERT, &CLOSE_NOTIFY)]
    })
    .await;
    assert!(o.end.is_ok(), "{:?}", o.end);
    assert!(o.data == content);
}

#[tokio::test]
async fn a03_content_over_2_14_bytes_is_record_overflow() {
    let o = send(false, |p| {
        vec![p.seal_padded(23, &vec![1; MAX_CONTENT + 1], 0)]
    })
    .await;
    o.refused(
        Error::PeerSentOversizedRecord,
        Some(AlertDescription::RecordOverflow),
    );
}

#[tokio::test]
async fn a04_records_shorter_than_the_tag_are_bad_record_mac_and_use_no_nonce() {
    for len in [0u8, 1, 15] {
        let o = send(false, |_| {
            let mut r = vec![23, 3, 3, 0, len];
            r.resize(HEADER + usize::from(len), 0);
            vec![r]
        })
        .await;
        o.refused(Error::DecryptError, Some(AlertDescription::BadRecordMac));
    }
    // No nonce consumed: the next record (sequence 0) still opens with the same key.
    let mut rx = key(RX, 0);
    let mut short = [23, 3, 3, 0, 15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(rx.open(&mut short).unwrap_err(), Error::DecryptError);
    let mut tx = key(RX, 0);
    let mut out = vec![0u8; 64];
    let n = tx.seal(APP, b"ok", &mut out).expect("seal");
    assert!(rx.open(&mut out[..n]).is_ok());
}

#[tokio::test]
async fn a05_an_empty_inner_plaintext_is_unexpected_message() {
    // Length 16: the tag alone, over nothing.
    let o = send(false, |_| vec![empty_inner_record()]).await;
    o.refused(
        PeerMisbehaved::IllegalTlsInnerPlaintext.into(),
        Some(AlertDescription::UnexpectedMessage),
    );
}

/// A record whose inner plaintext is empty (the AEAD over zero bytes), sequence 0.
fn empty_inner_record() -> Vec<u8> {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let rustls::ConnectionTrafficSecrets::Aes256Gcm { key, iv } = secrets_rx0() else {
        unreachable!()
    };
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_ref()).expect("key"));
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(iv.as_ref());
    let header = [23, 3, 3, 0, 16];
    let mut inner = Vec::new();
    let tag = k
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(header),
            &mut inner,
        )
        .expect("seal");
    [&header[..], tag.as_ref()].concat()
}

fn secrets_rx0() -> rustls::ConnectionTrafficSecrets {
    use rustls::crypto::cipher::{AeadKey, Iv};
    // As testing::secrets(RX, 0).
    let mut k = [RX; 32];
    k[..8].copy_from_slice(&0u64.to_le_bytes());
    let mut iv = [RX ^ 0x5a; 12];
    iv[..8].copy_from_slice(&0u64.to_le_bytes());
    rustls::ConnectionTrafficSecrets::Aes256Gcm {
        key: AeadKey::from(k),
        iv: Iv::from(iv),
    }
}

#[tokio::test]
async fn a06_an_inner_plaintext_of_padding_only_is_unexpected_message() {
    let o = send(false, |p| vec![p.seal_padded(0, &[], 40)]).await;
    o.refused(
        PeerMisbehaved::IllegalTlsInnerPlaintext.into(),
        Some(AlertDescription::UnexpectedMessage),
    );
}

#[tokio::test]
async fn a07_a08_inner_types_other_than_data_alert_and_handshake_are_unexpected_message() {
    for typ in [20u8, 24, 0x7f, 0xff] {
        let o = send(false, |p| vec![p.seal_padded(typ, b"x", 0)]).await;
        o.refused(
            Error::InappropriateMessage {
                expect_types: vec![APP],
                got_type: ContentType::from(typ),
            },
            Some(AlertDescription::UnexpectedMessage),
        );
    }
}

#[tokio::test]
async fn a09_a10_a11_unprotected_records_after_the_handshake_are_unexpected_message() {
    let plain: [&[u8]; 3] = [
        &[0x14, 3, 3, 0, 1, 1],
        &[0x15, 3, 3, 0, 2, 2, 0x28],
        &[0x16, 3, 3, 0, 4, 24, 0, 0, 0],
    ];
    for record in plain {
        let o = send(false, |_| vec![record.to_vec()]).await;
        o.refused(
            Error::InappropriateMessage {
                expect_types: vec![APP],
                got_type: ContentType::from(record[0]),
            },
            Some(AlertDescription::UnexpectedMessage),
        );
    }
}

#[tokio::test]
async fn a12_a_changed_legacy_version_is_bad_record_mac() {
    let o = send(false, |p| {
        let mut r = p.seal(APP, b"hello");
        r[2] ^= 1;
        vec![r]
    })
    .await;
    o.refused(Error::DecryptError, Some(AlertDescription::BadRecordMac));
}

#[tokio::test]
async fn a13_a_changed_header_length_is_bad_record_mac() {
    let o = send(false, |p| {
        let mut r = p.seal(APP, b"hello");
        r[4] += 1;
        r.push(0);
        vec![r]
    })
    .await;
    o.refused(Error::DecryptError, Some(AlertDescription::BadRecordMac));
    let o = send(false, |p| {
        let mut r = p.seal(APP, b"hello");
        r[4] -= 1;
        vec![r]
    })
    .await;
    o.refused(Error::DecryptError, Some(AlertDescription::BadRecordMac));
}

#[tokio::test]
async fn a14_a_replayed_record_is_bad_record_mac() {
    let o = send(false, |p| {
        let r = p.seal(APP, b"once");
        vec![r.clone(), r]
    })
    .await;
    assert_eq!(o.data, b"once");
    o.refused(Error::DecryptError, Some(AlertDescription::BadRecordMac));
}

#[tokio::test]
async fn a15_swapped_records_are_bad_record_mac() {
    let o = send(false, |p| {
        let (a, b) = (p.seal(APP, b"first"), p.seal(APP, b"second"));
        vec![b, a]
    })
    .await;
    assert!(o.data.is_empty());
    o.refused(Error::DecryptError, Some(AlertDescription::BadRecordMac));
}

#[tokio::test]
async fn a16_an_end_in_the_middle_of_a_record_is_unexpected_eof() {
    let o = send(false, |p| {
        let whole = p.seal(APP, b"whole");
        let mut r = p.seal(APP, b"truncated");
        r.truncate(r.len() - 3);
        vec![whole, r]
    })
    .await;
    assert_eq!(o.data, b"whole");
    assert_eq!(kind(&o), io::ErrorKind::UnexpectedEof);
    assert_eq!(o.alert(), None);
}

/// L2: only close_notify ends the stream.
#[tokio::test]
async fn a17_an_end_at_a_record_boundary_without_close_notify_is_unexpected_eof() {
    let o = send(false, |p| vec![p.seal(APP, b"all of it?")]).await;
    assert_eq!(o.data, b"all of it?");
    assert_eq!(kind(&o), io::ErrorKind::UnexpectedEof);
    assert!(
        o.end
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("close_notify"),
        "{:?}",
        o.end
    );
    // And with close_notify: a clean end.
    let o = send(false, |p| {
        vec![p.seal(APP, b"all"), p.seal(ALERT, &CLOSE_NOTIFY)]
    })
    .await;
    assert!(o.end.is_ok());
    assert_eq!(o.data, b"all");
}

/// L1: empty records are limited as rustls limits them (32 in a row).
#[tokio::test]
async fn a18_endless_empty_records_fail_after_32() {
    let o = send(false, |p| (0..100_000).map(|_| p.seal(APP, &[])).collect()).await;
    o.refused(
        PeerMisbehaved::TooManyEmptyFragments.into(),
        Some(AlertDescription::UnexpectedMessage),
    );
    // 32 in a row are allowed; data between resets the count.
    let o = send(false, |p| {
        let mut v: Vec<Vec<u8>> = Vec::new();
        for _ in 0..3 {
            v.extend((0..MAX_EMPTY_IN_A_ROW).map(|_| p.seal(APP, &[])));
            v.push(p.seal(APP, b"x"));
        }
        v.push(p.seal(ALERT, &CLOSE_NOTIFY));
        v
    })
    .await;
    assert!(o.end.is_ok(), "{:?}", o.end);
    assert_eq!(o.data, b"xxx");
}

/// L1: warning alerts are limited to 4 on a session, as in rustls and BoringSSL.
#[tokio::test]
async fn a19_user_canceled_warnings_fail_after_4() {
    let o = send(false, |p| {
        let mut v = vec![p.seal(ALERT, &[1, 90]), p.seal(APP, b"between")];
        v.extend((0..10_000).map(|_| p.seal(ALERT, &[1, 90])));
        v
    })
    .await;
    assert_eq!(o.data, b"between");
    o.refused(
        PeerMisbehaved::TooManyWarningAlertsReceived.into(),
        Some(AlertDescription::UnexpectedMessage),
    );
    let o = send(false, |p| {
        let mut v: Vec<Vec<u8>> = (0..MAX_WARNINGS).map(|_| p.seal(ALERT, &[1, 90])).collect();
        v.push(p.seal(ALERT, &CLOSE_NOTIFY));
        v
    })
    .await;
    assert!(o.end.is_ok(), "{:?}", o.end);
}

/// L1: a fatal-level user_canceled ends the session.
#[tokio::test]
async fn a20_a_fatal_user_canceled_is_fatal() {
    let o = send(false, |p| {
        vec![p.seal(ALERT, &[2, 90]), p.seal(APP, b"after")]
    })
    .await;
    assert!(o.data.is_empty());
    o.refused(Error::AlertReceived(AlertDescription::UserCanceled), None);
}

#[tokio::test]
async fn a21_data_after_close_notify_is_never_delivered() {
    let o = send(false, |p| {
        vec![
            p.seal(APP, b"before"),
            p.seal(ALERT, &CLOSE_NOTIFY),
            p.seal(APP, b"after"),
        ]
    })
    .await;
    assert!(o.end.is_ok());
    assert_eq!(o.data, b"before");
}

#[tokio::test]
async fn a22_a23_alerts_of_the_wrong_length_are_decode_error() {
    for content in [&[2u8][..], &[2, 40, 0], &[1, 90, 1, 0]] {
        let o = send(false, |p| vec![p.seal(ALERT, content)]).await;
        o.refused(
            Error::InvalidMessage(InvalidMessage::MessageTooShort),
            Some(AlertDescription::DecodeError),
        );
    }
}

#[tokio::test]
async fn a24_an_unknown_alert_description_ends_the_session() {
    let o = send(false, |p| vec![p.seal(ALERT, &[2, 0xEE])]).await;
    o.refused(Error::AlertReceived(AlertDescription::Unknown(0xEE)), None);
}

#[tokio::test]
async fn alert_levels_as_rustls_reads_them() {
    let mut w = 0;
    // close_notify at either level; an unknown level is fatal; a warning other than
    // user_canceled is fatal in TLS 1.3 (and counts).
    assert_eq!(on_alert(&[1, 0], &mut w), Ok(true));
    assert_eq!(on_alert(&[2, 0], &mut w), Ok(true));
    assert_eq!(
        on_alert(&[3, 0], &mut w),
        Err(Error::AlertReceived(AlertDescription::CloseNotify))
    );
    assert_eq!(
        on_alert(&[1, 40], &mut w),
        Err(Error::AlertReceived(AlertDescription::HandshakeFailure))
    );
    assert_eq!(w, 1);
    assert_eq!(
        on_alert(&[2, 40], &mut w),
        Err(Error::AlertReceived(AlertDescription::HandshakeFailure))
    );
    assert_eq!(w, 1, "fatal alerts are not warnings");
}

fn stream_of(p: &mut Peer, len: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut v: Vec<Vec<u8>> = data.chunks(MAX_CONTENT).map(|c| p.seal(APP, c)).collect();
    v.push(p.seal(ALERT, &CLOSE_NOTIFY));
    (v, data)
}

#[tokio::test]
async fn a25_one_byte_segments_deliver_the_same_bytes() {
    let (stream, mut peer, theirs) = setup(false);
    let (records, data) = stream_of(&mut peer, 40_000);
    let o = run(stream, peer, theirs, records.concat(), 1).await;
    assert!(o.end.is_ok(), "{:?}", o.end);
    assert!(o.data == data);
}

/// 16 full records and 3 bytes of the 17th's header arrive together: the partial header is
/// moved to the front of the buffer (`copy_within`) before the next read.
#[tokio::test]
async fn a26_records_across_the_buffer_boundary_deliver_the_same_bytes() {
    let (stream, mut peer, theirs) = setup(false);
    let (records, data) = stream_of(&mut peer, 20 * MAX_CONTENT + 5);
    let wire = records.concat();
    let first = 16 * records[0].len() + 3;
    let (r, mut w) = tokio::io::split(theirs);
    let mut stream = stream;
    let writer = async move {
        w.write_all(&wire[..first]).await.expect("write");
        tokio::task::yield_now().await;
        w.write_all(&wire[first..]).await.expect("write");
    };
    let reader = async move {
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.expect("clean end");
        got
    };
    let ((), got) = tokio::join!(writer, reader);
    assert!(got == data);
    drop(r);
}

#[tokio::test]
async fn a27_leftover_records_after_the_handshake_follow_the_early_data() {
    // The peer's keys are needed to build the leftover: a first pair for them.
    let (_, mut peer, _, _) = pair(false, 1024, &[], Vec::new()).expect("pair");
    let mut leftover = [peer.seal(APP, b"one "), peer.seal(APP, b"two ")].concat();
    let three = peer.seal(APP, b"three");
    leftover.extend_from_slice(&three[..7]);
    let rest = [&three[7..], &peer.seal(ALERT, &CLOSE_NOTIFY)[..]].concat();
    let (stream, _, theirs, _) = pair(false, 1 << 16, &leftover, b"early ".to_vec()).expect("pair");
    let o = run(stream, peer, theirs, rest, usize::MAX).await;
    assert!(o.end.is_ok(), "{:?}", o.end);
    assert_eq!(o.data, b"early one two three");
}

// --- B. Handshake messages after the handshake ---

#[tokio::test]
async fn b28_b29_a_malformed_key_update_is_decode_error() {
    for body in [
        &[24u8, 0, 0, 1, 2][..],
        &[24, 0, 0, 0],
        &[24, 0, 0, 2, 0, 0],
    ] {
        let o = send(false, |p| vec![p.seal(HS, body)]).await;
        o.refused(
            Error::InvalidMessage(InvalidMessage::InvalidKeyUpdate),
            Some(AlertDescription::DecodeError),
        );
    }
}

#[tokio::test]
async fn b30_a_message_after_a_key_update_in_the_same_record_is_refused() {
    let o = send(false, |p| vec![p.seal(HS, &[24, 0, 0, 1, 0, 4, 0, 0, 0])]).await;
    o.refused(
        PeerMisbehaved::KeyEpochWithPendingFragment.into(),
        Some(AlertDescription::UnexpectedMessage),
    );
}

#[tokio::test]
async fn b31_33_key_updates_in_a_row_are_too_many() {
    let o = send(false, |p| (0..33).map(|_| p.key_update(true)).collect()).await;
    o.refused(
        PeerMisbehaved::TooManyKeyUpdateRequests.into(),
        Some(AlertDescription::UnexpectedMessage),
    );
    let o = send(false, |p| {
        let mut v: Vec<Vec<u8>> = (0..32).map(|_| p.key_update(false)).collect();
        v.push(p.seal(APP, b"data"));
        v.extend((0..32).map(|_| p.key_update(false)));
        v.push(p.seal(ALERT, &CLOSE_NOTIFY));
        v
    })
    .await;
    assert!(o.end.is_ok(), "{:?}", o.end);
    assert_eq!(o.data, b"data");
}

/// L1: an empty record does not reset the KeyUpdate count.
#[tokio::test]
async fn b32_empty_records_between_key_updates_do_not_reset_the_count() {
    let o = send(false, |p| {
        let mut v = Vec::new();
        for _ in 0..1_000 {
            v.extend((0..32).map(|_| p.key_update(false)));
            v.push(p.seal(APP, &[]));
        }
        v
    })
    .await;
    o.refused(
        PeerMisbehaved::TooManyKeyUpdateRequests.into(),
        Some(AlertDescription::UnexpectedMessage),
    );
}

#[tokio::test]
async fn b33_a_record_under_the_old_key_after_a_key_update_is_bad_record_mac() {
    let o = send(false, |p| {
        let ku = p.seal(HS, &[24, 0, 0, 1, 0]);
        let old = p.seal(APP, b"old key");
        vec![ku, old]
    })
    .await;
    o.refused(Error::DecryptError, Some(AlertDescription::BadRecordMac));
}

/// Three requests in a row are answered by one KeyUpdate, before our next data.
#[tokio::test]
async fn b34_requested_key_updates_are_answered_once_before_our_next_data() {
    let (mut stream, mut peer, theirs) = setup(false);
    let wire = [
        peer.key_update(true),
        peer.key_update(true),
        peer.key_update(true),
        peer.seal(APP, b"ping"),
    ]
    .concat();
    let (mut r, mut w) = tokio::io::split(theirs);
    w.write_all(&wire).await.expect("write");
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");
    stream.write_all(b"pong").await.expect("write");
    stream.shutdown().await.expect("shutdown");
    assert_eq!(stream.key_updates(), (1, 3));
    drop(stream);
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.expect("read");
    let sent = peer.open_all(&back);
    let types: Vec<ContentType> = sent.iter().map(|(t, _)| *t).collect();
    assert_eq!(types, [HS, APP, ALERT]);
    assert_eq!(sent[0].1, [24, 0, 0, 1, 0]);
    assert_eq!(sent[1].1, b"pong");
}

#[tokio::test]
async fn b35_a_session_ticket_sent_to_our_server_is_unexpected_message() {
    let o = send(true, |p| vec![p.seal(HS, &[4, 0, 0, 1, 0])]).await;
    o.refused(
        Error::InappropriateHandshakeMessage {
            expect_types: vec![rustls::HandshakeType::KeyUpdate],
            got_type: rustls::HandshakeType::NewSessionTicket,
        },
        Some(AlertDescription::UnexpectedMessage),
    );
}

#[tokio::test]
async fn b37_session_tickets_to_our_client_go_to_the_session() {
    let (stream, mut peer, theirs, calls) = pair(false, 4 << 20, &[], Vec::new()).expect("pair");
    let mut v: Vec<Vec<u8>> = (0..10_000)
        .map(|_| peer.seal(HS, &[4, 0, 0, 3, 1, 2, 3]))
        .collect();
    v.push(peer.seal(ALERT, &CLOSE_NOTIFY));
    let o = run(stream, peer, theirs, v.concat(), usize::MAX).await;
    assert!(o.end.is_ok(), "{:?}", o.end);
    assert_eq!(
        calls.tickets.load(std::sync::atomic::Ordering::Relaxed),
        10_000
    );
}

#[tokio::test]
async fn b38_b39_other_handshake_messages_are_unexpected_message() {
    for typ in [13u8, 1, 20] {
        let o = send(false, |p| vec![p.seal(HS, &[typ, 0, 0, 1, 0])]).await;
        o.refused(
            Error::InappropriateHandshakeMessage {
                expect_types: vec![
                    rustls::HandshakeType::KeyUpdate,
                    rustls::HandshakeType::NewSessionTicket,
                ],
                got_type: rustls::HandshakeType::from(typ),
            },
            Some(AlertDescription::UnexpectedMessage),
        );
    }
}

#[tokio::test]
async fn b40_b41_b42_truncated_split_or_empty_handshake_messages_are_decode_error() {
    let long = [&[4u8, 0xff, 0xff, 0xff][..], &[0; 10]].concat();
    let split = [4u8, 0, 0, 8, 1, 2, 3, 4];
    for records in [
        vec![long.clone()],
        vec![split.to_vec(), vec![5, 6, 7, 8]],
        vec![vec![]],
    ] {
        let o = send(false, |p| records.iter().map(|r| p.seal(HS, r)).collect()).await;
        o.refused(
            Error::InvalidMessage(InvalidMessage::MessageTooShort),
            Some(AlertDescription::DecodeError),
        );
    }
}
