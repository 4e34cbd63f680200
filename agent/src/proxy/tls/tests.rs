//! The agent's record layer against rustls' own (tokio-rustls, as another mesh peer would
//! run it) and against itself, over real TCP sockets: bytes both ways, vectored writes,
//! close_notify, key updates in both directions, a tampered record, failed handshakes.

use std::{
    io::IoSlice,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use rustls::{pki_types::ServerName, ClientConfig, ServerConfig};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{accept, connect, stream::TlsStream};
use crate::identity::{
    client_config, init, server_config, tests::TempDir, CertManager, Identity, IssuerFiles,
    DEFAULT_LEAF_TTL,
};
use crate::proxy::tls::errors as tls_errors;

const TD: &str = "cluster.local";

/// A trust anchor, an issuer and a certificate manager.
struct Pki {
    _dir: TempDir,
    mgr: Arc<CertManager>,
}

fn pki() -> Pki {
    let dir = TempDir::new();
    init(dir.path(), TD, false).expect("identity init");
    let mgr = CertManager::load(&IssuerFiles::in_dir(dir.path()), DEFAULT_LEAF_TTL).expect("load");
    Pki {
        _dir: dir,
        mgr: Arc::new(mgr),
    }
}

fn server_id() -> Identity {
    Identity::new(TD, "ns", "server")
}

fn client_id() -> Identity {
    Identity::new(TD, "ns", "client")
}

fn name() -> ServerName<'static> {
    ServerName::try_from("hbone.meshd.local").expect("name")
}

/// The server's and the client's configurations (the client expects the server).
fn configs(pki: &Pki) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let sc = server_config(pki.mgr.clone(), server_id()).expect("server config");
    let cc = client_config(pki.mgr.clone(), client_id(), server_id()).expect("client config");
    (sc, cc)
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (c, s) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (c.expect("connect"), s.expect("accept").0)
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("timed out")
}

/// Our client against a tokio-rustls server.
async fn ours_to_rustls(pki: &Pki) -> (TlsStream, tokio_rustls::server::TlsStream<TcpStream>) {
    let (c, s) = tcp_pair().await;
    let (sc, cc) = configs(pki);
    let (ours, theirs) = within(async {
        tokio::join!(
            connect(cc, name(), c),
            tokio_rustls::TlsAcceptor::from(sc).accept(s)
        )
    })
    .await;
    (
        ours.expect("our handshake"),
        theirs.expect("rustls handshake"),
    )
}

/// A tokio-rustls client against our server.
async fn rustls_to_ours(pki: &Pki) -> (tokio_rustls::client::TlsStream<TcpStream>, TlsStream) {
    let (c, s) = tcp_pair().await;
    let (sc, cc) = configs(pki);
    let (theirs, ours) = within(async {
        tokio::join!(
            tokio_rustls::TlsConnector::from(cc).connect(name(), c),
            accept(sc, s)
        )
    })
    .await;
    (
        theirs.expect("rustls handshake"),
        ours.expect("our handshake"),
    )
}

/// Deterministic bytes that differ at every position of a record.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Writes `data` in uneven pieces (1 byte up to 70 KiB), flushing now and then.
async fn write_uneven<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) {
    let sizes = [1, 9, 1000, 16 * 1024, 16 * 1024 + 1, 70 * 1024, 3];
    let (mut at, mut i) = (0, 0);
    while at < data.len() {
        let n = sizes[i % sizes.len()].min(data.len() - at);
        w.write_all(&data[at..at + n]).await.expect("write");
        if i % 3 == 0 {
            w.flush().await.expect("flush");
        }
        at += n;
        i += 1;
    }
    w.flush().await.expect("flush");
}

async fn read_n<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await.expect("read");
    buf
}

/// Both sides send `len` bytes at once and check what they received; then each closes its
/// sending side and the other reads the end.
async fn exchange<A, B>(a: &mut A, b: &mut B, len: usize)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (to_b, to_a) = (pattern(len, 1), pattern(len, 2));
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    within(async {
        let (got_b, got_a, (), ()) = tokio::join!(
            read_n(&mut br, len),
            read_n(&mut ar, len),
            write_uneven(&mut aw, &to_b),
            write_uneven(&mut bw, &to_a),
        );
        assert!(got_b == to_b, "bytes from a to b differ");
        assert!(got_a == to_a, "bytes from b to a differ");
        aw.shutdown().await.expect("a shutdown");
        let mut rest = Vec::new();
        br.read_to_end(&mut rest)
            .await
            .expect("b reads the end cleanly");
        assert!(rest.is_empty());
        bw.shutdown().await.expect("b shutdown");
        ar.read_to_end(&mut rest)
            .await
            .expect("a reads the end cleanly");
        assert!(rest.is_empty());
    })
    .await;
}

#[tokio::test]
async fn our_client_and_a_rustls_server_exchange_bytes_and_close_cleanly() {
    let pki = pki();
    let (mut ours, mut theirs) = ours_to_rustls(&pki).await;
    assert_eq!(ours.peer_identity(), Some(&server_id()));
    exchange(&mut ours, &mut theirs, 3 * 1024 * 1024 + 17).await;
}

#[tokio::test]
async fn a_rustls_client_and_our_server_exchange_bytes_and_close_cleanly() {
    let pki = pki();
    let (mut theirs, mut ours) = rustls_to_ours(&pki).await;
    assert_eq!(ours.peer_identity(), Some(&client_id()));
    exchange(&mut theirs, &mut ours, 3 * 1024 * 1024 + 17).await;
}

#[tokio::test]
async fn our_two_sides_exchange_vectored_writes_and_hold_no_buffer_when_idle() {
    let pki = pki();
    let (c, s) = tcp_pair().await;
    let (sc, cc) = configs(&pki);
    let (client, server) =
        within(async { tokio::join!(connect(cc, name(), c), accept(sc, s)) }).await;
    let (mut client, mut server) = (client.expect("client"), server.expect("server"));
    // As h2 writes: a 9-byte frame head, then the payload, in one vectored write.
    let payload = pattern(40_000, 3);
    let mut expected = Vec::new();
    within(async {
        for round in 0..20u8 {
            let head = [round; 9];
            let slices = [
                IoSlice::new(&head),
                IoSlice::new(&payload),
                IoSlice::new(b"end"),
            ];
            let mut sent = 0;
            let total: usize = slices.iter().map(|s| s.len()).sum();
            while sent < total {
                // Skip what was taken, as a caller of write_vectored does.
                let mut rest: Vec<IoSlice<'_>> = Vec::new();
                let mut skip = sent;
                for s in &slices {
                    if skip >= s.len() {
                        skip -= s.len();
                    } else {
                        rest.push(IoSlice::new(&s[skip..]));
                        skip = 0;
                    }
                }
                sent += client.write_vectored(&rest).await.expect("write_vectored");
            }
            expected.extend_from_slice(&head);
            expected.extend_from_slice(&payload);
            expected.extend_from_slice(b"end");
        }
        client.flush().await.expect("flush");
        let got = read_n(&mut server, expected.len()).await;
        assert!(got == expected, "vectored bytes differ");
    })
    .await;
    assert!(client.holds_no_buffers() && server.holds_no_buffers());
    exchange(&mut client, &mut server, 1024 * 1024).await;
}

/// Our sending key is replaced every 3 records: over 200 KeyUpdates for 10 MiB (at least
/// 640 records of at most 16 KiB, so at least 213; typically about 400), counted on our side, and rustls follows every one (each record after a KeyUpdate is sealed with the
/// new key, so a peer that did not follow would fail with bad_record_mac). rustls asked for
/// none of them back, so ours received none.
#[tokio::test]
async fn our_sending_key_is_replaced_every_few_records_and_rustls_follows() {
    let pki = pki();
    let (mut ours, mut theirs) = ours_to_rustls(&pki).await;
    // Every 3 records a KeyUpdate (rustls allows 32 in a row without data between, and each
    // comes after data here).
    ours.rekey_every(3);
    assert_eq!(ours.key_updates(), (0, 0));
    exchange(&mut ours, &mut theirs, 10 * 1024 * 1024).await;
    let (sent, received) = ours.key_updates();
    assert!(sent > 200, "{sent} KeyUpdates sent");
    assert_eq!(received, 0);
}

/// Between our two sides: every KeyUpdate the client sends (update_not_requested) is followed
/// by the server, exactly as many as were sent, and none is answered (not requested).
#[tokio::test]
async fn our_server_follows_each_key_update_of_our_client_without_answering() {
    let pki = pki();
    let (c, s) = tcp_pair().await;
    let (sc, cc) = configs(&pki);
    let (client, server) =
        within(async { tokio::join!(connect(cc, name(), c), accept(sc, s)) }).await;
    let (mut client, mut server) = (client.expect("client"), server.expect("server"));
    client.rekey_every(3);
    exchange(&mut client, &mut server, 2 * 1024 * 1024).await;
    // At least 128 records of at most 16 KiB: at least 42 KeyUpdates.
    let (sent, _) = client.key_updates();
    assert!(sent >= 42, "{sent} KeyUpdates sent");
    assert_eq!(server.key_updates(), (0, sent), "followed, not answered");
}

#[tokio::test]
async fn a_key_update_from_the_peer_is_followed_and_answered() {
    let pki = pki();
    let (mut ours, mut theirs) = ours_to_rustls(&pki).await;
    within(async {
        for round in 0..5u8 {
            // rustls sends KeyUpdate(update_requested): we switch our receiving key, and
            // answer with our own KeyUpdate before our next record.
            theirs.get_mut().1.refresh_traffic_keys().expect("refresh");
            let msg = pattern(100_000, round);
            theirs.write_all(&msg).await.expect("rustls write");
            theirs.flush().await.expect("rustls flush");
            assert!(read_n(&mut ours, msg.len()).await == msg);
            // Followed (our receiving key replaced) and answered at once, on the read, before
            // we write anything: exactly one KeyUpdate of ours per request.
            let n = u64::from(round) + 1;
            assert_eq!(ours.key_updates(), (n, n), "round {round}");
            // rustls reads what follows under our new key.
            ours.write_all(&msg).await.expect("our write");
            ours.flush().await.expect("our flush");
            assert!(read_n(&mut theirs, msg.len()).await == msg);
        }
    })
    .await;
    exchange(&mut ours, &mut theirs, 100_000).await;
    assert_eq!(ours.key_updates(), (5, 5), "no more than asked for");
}

/// Forwards bytes between two sockets; flips one bit of the server's bytes once `tamper` is
/// set.
async fn tampering_relay(a: TcpStream, b: TcpStream, tamper: Arc<AtomicBool>) {
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut ar, &mut bw).await;
        let _ = bw.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match br.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if tamper.swap(false, Ordering::SeqCst) {
                buf[n - 1] ^= 1;
            }
            if aw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = aw.shutdown().await;
    };
    tokio::join!(up, down);
}

#[tokio::test]
async fn a_changed_byte_on_the_wire_ends_the_session_with_bad_record_mac() {
    let pki = pki();
    let (c, r1) = tcp_pair().await;
    let (r2, s) = tcp_pair().await;
    let tamper = Arc::new(AtomicBool::new(false));
    tokio::spawn(tampering_relay(r1, r2, tamper.clone()));
    let (sc, cc) = configs(&pki);
    let (ours, theirs) = within(async {
        tokio::join!(
            connect(cc, name(), c),
            tokio_rustls::TlsAcceptor::from(sc).accept(s)
        )
    })
    .await;
    let (mut ours, mut theirs) = (ours.expect("ours"), theirs.expect("theirs"));
    within(async {
        theirs.write_all(b"clean").await.expect("write");
        theirs.flush().await.expect("flush");
        assert_eq!(read_n(&mut ours, 5).await, b"clean");
        tamper.store(true, Ordering::SeqCst);
        theirs.write_all(b"tampered").await.expect("write");
        theirs.flush().await.expect("flush");
        let mut buf = [0u8; 16];
        let err = ours
            .read(&mut buf)
            .await
            .expect_err("a tampered record must not open");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("decrypt"), "{err}");
        // Later calls fail too, and the peer got a bad_record_mac alert.
        assert!(ours.write_all(b"x").await.is_err());
        let peer = theirs.read(&mut buf).await.expect_err("the peer is told");
        assert!(peer.to_string().contains("BadRecordMac"), "{peer}");
    })
    .await;
}

#[tokio::test]
async fn failed_handshakes_are_reported_as_tokio_rustls_reported_them() {
    let ca = pki();
    // The server is not who the client expects.
    let (c, s) = tcp_pair().await;
    let sc = server_config(ca.mgr.clone(), server_id()).expect("server config");
    let wrong = Identity::new(TD, "ns", "someone-else");
    let cc = client_config(ca.mgr.clone(), client_id(), wrong).expect("client config");
    let (ours, theirs) = within(async {
        tokio::join!(
            connect(cc, name(), c),
            tokio_rustls::TlsAcceptor::from(sc).accept(s)
        )
    })
    .await;
    let err = ours.err().expect("the client refuses the server");
    assert_eq!(
        tls_errors::reason(&err),
        tls_errors::RejectReason::ServerIdentityMismatch,
        "{err}"
    );
    // The server heard why (the alert our side sent).
    let theirs = theirs.expect_err("the server is told");
    assert!(
        theirs.to_string().contains("received fatal alert"),
        "{theirs}"
    );

    // A client from another trust domain's CA: our server refuses it; the client hears.
    let other = pki();
    let (c, s) = tcp_pair().await;
    let sc = server_config(ca.mgr.clone(), server_id()).expect("server config");
    let cc = client_config(other.mgr.clone(), client_id(), server_id()).expect("client config");
    let (theirs, ours) = within(async {
        tokio::join!(
            tokio_rustls::TlsConnector::from(cc).connect(name(), c),
            accept(sc, s)
        )
    })
    .await;
    // The client refuses our server's certificate first (signed by a CA it does not trust),
    // and says so.
    let theirs = theirs.expect_err("the client refuses");
    assert!(
        theirs.to_string().contains("invalid peer certificate"),
        "{theirs}"
    );
    let err = ours.err().expect("our server fails");
    assert_eq!(
        err.to_string(),
        "received fatal alert: DecryptError",
        "the client's alert reaches our server"
    );

    // Not TLS at all.
    let (mut c, s) = tcp_pair().await;
    let sc = server_config(ca.mgr.clone(), server_id()).expect("server config");
    c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let err = within(accept(sc, s)).await.err().expect("not TLS");
    assert_eq!(
        tls_errors::reason(&err),
        tls_errors::RejectReason::NotTls,
        "{err}"
    );
}

/// Review M2: the handshake buffer (4 KiB, doubling up to 80 KiB) holds the largest
/// handshake message rustls accepts (64 KiB, in five records), so rustls, not the buffer,
/// judges it: a ClientHello of 65,535 bytes of garbage is refused as undecodable (never as
/// "handshake message too large"), and one announced larger than rustls' limit is refused
/// by rustls at its header, before its body arrives.
#[tokio::test]
async fn the_largest_handshake_message_fits_the_buffer_and_rustls_judges_it() {
    let ca = pki();
    for (len, want) in [
        (0xffff_usize, "InvalidMessage"),
        (0x1_0000, "HandshakePayloadTooLarge"),
    ] {
        let mut message = vec![0x01, (len >> 16) as u8, (len >> 8) as u8, len as u8];
        message.extend(std::iter::repeat_n(0x41, len.min(0xffff)));
        let mut wire = Vec::new();
        for record in message.chunks(16_384) {
            wire.extend_from_slice(&[0x16, 0x03, 0x01]);
            wire.extend_from_slice(&(record.len() as u16).to_be_bytes());
            wire.extend_from_slice(record);
        }
        let (mut c, s) = tcp_pair().await;
        let sc = server_config(ca.mgr.clone(), server_id()).expect("server config");
        // Written while the server reads; the server may stop reading early.
        let writer = tokio::spawn(async move {
            for piece in wire.chunks(1000) {
                if c.write_all(piece).await.is_err() {
                    break;
                }
            }
            c
        });
        let err = within(accept(sc, s)).await.err().expect("refused");
        let text = format!("{err:?}");
        assert!(!text.contains("handshake message too large"), "{text}");
        assert!(text.contains(want), "{len}: {text}");
        drop(writer);
    }
}
