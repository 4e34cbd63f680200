//! The review's bad-input cases D70 and D71 against the HBONE server's HTTP/2 settings
//! ([`super::h2_server`]), with raw frames written by hand: a header block that never ends
//! (`CONTINUATION` frames without end) and a flood of `SETTINGS` frames. Each must cost the
//! server a bounded amount of work and memory, and never reach the accept loop.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;

/// One HTTP/2 frame: the 9-byte header and the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// An HPACK literal header field without indexing, with a new name (RFC 7541 6.2.2).
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x00, u8::try_from(name.len()).expect("short name")];
    b.extend(name.as_bytes());
    b.push(u8::try_from(value.len()).expect("short value"));
    b.extend(value.as_bytes());
    b
}

/// Runs the HBONE server's HTTP/2 over `io`: counts the requests its accept loop gets and
/// returns how the connection ended (`Ok` for a clean end).
fn serve(
    io: DuplexStream,
    accepted: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Result<(), h2::Error>> {
    tokio::spawn(async move {
        let mut conn = h2_server().handshake::<_, bytes::Bytes>(io).await?;
        while let Some(next) = conn.accept().await {
            let (_req, mut respond) = next?;
            accepted.fetch_add(1, Ordering::SeqCst);
            let _ = respond.send_response(hyper::Response::new(()), true);
        }
        Ok(())
    })
}

/// The frame types in what the server wrote, in order (a prefix of it, whole frames only).
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut kinds = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        kinds.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    kinds
}

/// D70: a HEADERS frame without END_HEADERS followed by 10,000 CONTINUATION frames (about
/// 430 KiB of headers decoded, over the 64 KiB header-list limit) ends the connection with
/// an error and a GOAWAY; no request reaches the accept loop.
#[tokio::test]
async fn an_endless_header_block_ends_the_connection() {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let accepted = Arc::new(AtomicUsize::new(0));
    let served = serve(server, accepted.clone());
    let mut block = Vec::new();
    for (name, value) in [(":method", "CONNECT"), (":authority", "10.0.0.2:80")] {
        block.extend(literal(name, value));
    }
    let writer = tokio::spawn(async move {
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out.extend(frame(HEADERS, END_STREAM, 1, &block));
        let piece = literal("x", "aaaaaaaaaa");
        for _ in 0..10_000 {
            out.extend(frame(CONTINUATION, 0, 1, &piece));
        }
        // The server may stop reading (and drop its end) before all of it is written.
        let _ = client.write_all(&out).await;
        let mut seen = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut seen)).await;
        seen
    });
    let ended = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the server ends the connection")
        .expect("server task");
    assert!(
        ended.is_err(),
        "the connection must end with an error: {ended:?}"
    );
    let seen = writer.await.expect("client");
    assert!(
        frame_types(&seen).contains(&GOAWAY),
        "no GOAWAY: {:?}",
        frame_types(&seen)
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

/// D71: 100,000 SETTINGS frames from a client that does not read the acknowledgements: the
/// server acknowledges each before it reads the next, so once the unread acknowledgements
/// fill the transport it stops reading (the client's writes wait) and holds no backlog;
/// when the client reads again every SETTINGS is acknowledged and a CONNECT on the same
/// connection is served.
#[tokio::test]
async fn a_settings_flood_is_paced_by_its_acknowledgements() {
    const N: usize = 100_000;
    let (client, server) = tokio::io::duplex(64 * 1024);
    let accepted = Arc::new(AtomicUsize::new(0));
    let _served = serve(server, accepted.clone());
    let (mut rd, mut wr) = tokio::io::split(client);
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(PREFACE).await.expect("preface");
        let settings = frame(SETTINGS, 0, 0, &[]);
        for _ in 0..N {
            wr.write_all(&settings).await.expect("settings");
            counter.fetch_add(settings.len(), Ordering::SeqCst);
        }
        // Then a CONNECT (an indexed :method would do; literals keep it readable).
        let mut block = Vec::new();
        for (name, value) in [(":method", "CONNECT"), (":authority", "10.0.0.2:80")] {
            block.extend(literal(name, value));
        }
        wr.write_all(&frame(HEADERS, 0x4, 1, &block))
            .await
            .expect("headers");
        wr
    });
    // Not reading: the writer stalls far below the flood's 900 KB, once the two pipes
    // (64 KiB each way) and h2's own read and write buffers are full, and stays stalled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stalled = written.load(Ordering::SeqCst);
    assert!(
        stalled < 2 * 64 * 1024 + 64 * 1024,
        "the server read {stalled} bytes of SETTINGS without their acknowledgements being read"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(written.load(Ordering::SeqCst), stalled, "still reading");
    assert!(!writer.is_finished());
    // Reading again: all acknowledged, then the CONNECT is served.
    let mut acks = 0usize;
    let mut buf = vec![0; 1 << 16];
    let mut pending: Vec<u8> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acks < N || accepted.load(Ordering::SeqCst) == 0 {
        let n = tokio::time::timeout_at(deadline, rd.read(&mut buf))
            .await
            .expect("the flood is acknowledged in time")
            .expect("read");
        assert!(n > 0, "the server closed after {acks} acknowledgements");
        pending.extend(&buf[..n]);
        while pending.len() >= 9 {
            let len = usize::from(pending[0]) << 16
                | usize::from(pending[1]) << 8
                | usize::from(pending[2]);
            if pending.len() < 9 + len {
                break;
            }
            if pending[3] == SETTINGS && pending[4] & 0x1 == 1 {
                acks += 1;
            }
            pending.drain(..9 + len);
        }
    }
    assert_eq!(acks, N, "one acknowledgement per SETTINGS");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    drop(writer.await.expect("writer"));
}
