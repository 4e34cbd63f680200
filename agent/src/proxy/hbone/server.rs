//! HBONE's HTTP/2 server on one connection (after TLS): the handshake within a deadline,
//! keep-alive, the drain's GOAWAY, and at most [`MAX_STREAMS`] tunnels in flight. h2
//! bounds the streams open at once; a stream the client resets is closed for h2 at once
//! while its tunnel may still be dialing or relaying, so the tunnels are bounded here too
//! (rapid reset): a stream over the bound is reset with `REFUSED_STREAM`.

use std::{fmt::Display, future::Future, sync::Arc};

use bytes::Bytes;
use h2::{server::SendResponse, RecvStream};
use hyper::Request;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{timeout_at, Instant},
};

use super::{h2_server, keepalive, KeepaliveError, MAX_STREAMS};

/// Why a server connection was not set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    #[error("no HTTP/2 preface within the handshake timeout")]
    HandshakeTimeout,
    #[error("HTTP/2 handshake: {0}")]
    Handshake(h2::Error),
}

/// How a served connection ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The client closed it, or it was drained and its last tunnel ended.
    Closed,
    Error(h2::Error),
    Keepalive(KeepaliveError),
}

/// A tunnel's place among the connection's [`MAX_STREAMS`]; held until the tunnel ends.
pub(crate) type InFlight = OwnedSemaphorePermit;

/// Serves HBONE's HTTP/2 on `io`: the handshake must be done by `deadline` (`handshake`,
/// e.g. the handshake's budget slot, is dropped once it is); each accepted stream goes to
/// `tunnel` with its [`InFlight`] place, unless [`MAX_STREAMS`] are in flight already.
/// `draining` sends a GOAWAY: no new tunnels, and the connection ends after the open
/// ones. `who` names the connection in log lines.
pub(crate) async fn serve<I, H, D, F>(
    io: I,
    deadline: Instant,
    handshake: H,
    draining: D,
    who: &(dyn Display + Sync),
    mut tunnel: F,
) -> Result<Ended, ServeError>
where
    I: AsyncRead + AsyncWrite + Unpin,
    D: Future<Output = ()>,
    F: FnMut(Request<RecvStream>, SendResponse<Bytes>, InFlight),
{
    let mut conn = match timeout_at(deadline, h2_server().handshake::<_, Bytes>(io)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(ServeError::Handshake(e)),
        Err(_) => return Err(ServeError::HandshakeTimeout),
    };
    drop(handshake);
    let in_flight = Arc::new(Semaphore::new(MAX_STREAMS as usize));
    let keepalive = keepalive(conn.ping_pong());
    tokio::pin!(keepalive, draining);
    let mut drained = false;
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            e = &mut keepalive => return Ok(Ended::Keepalive(e)),
            // GOAWAY: no new tunnels; the open ones go on and `accept` ends after them.
            () = &mut draining, if !drained => {
                drained = true;
                conn.graceful_shutdown();
                continue;
            }
        };
        match next {
            Some(Ok((req, mut respond))) => match in_flight.clone().try_acquire_owned() {
                Ok(place) => tunnel(req, respond, place),
                Err(_) => {
                    tracing::warn!(%who, "HBONE: {MAX_STREAMS} tunnels in flight on one connection, refused a stream");
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            },
            Some(Err(e)) => return Ok(Ended::Error(e)),
            None => return Ok(Ended::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicUsize, Ordering},
            Mutex,
        },
        time::Duration,
    };

    use super::*;
    use crate::proxy::hbone::{connect_request, h2_client};

    /// The tunnels a test server holds (as if still dialing: their place and their stream),
    /// and how many it got.
    #[derive(Default)]
    struct Held {
        places: Mutex<Vec<(InFlight, SendResponse<Bytes>)>>,
        tunnels: AtomicUsize,
    }

    const HANDSHAKE: Duration = Duration::from_secs(10);

    /// Serves `io` with a [`HANDSHAKE`] deadline; each tunnel is kept in `held` (answered
    /// `200` when `answer`) until the test releases it.
    fn spawn_server(
        io: tokio::io::DuplexStream,
        held: Arc<Held>,
        answer: bool,
    ) -> tokio::task::JoinHandle<Result<Ended, ServeError>> {
        tokio::spawn(async move {
            let deadline = Instant::now() + HANDSHAKE;
            serve(
                io,
                deadline,
                (),
                std::future::pending(),
                &"test",
                |_req, mut respond, place| {
                    held.tunnels.fetch_add(1, Ordering::SeqCst);
                    if answer {
                        let _ = respond.send_response(hyper::Response::new(()), false);
                    }
                    held.places.lock().unwrap().push((place, respond));
                },
            )
            .await
        })
    }

    /// Review M1: a client that completed TLS and never sends the HTTP/2 preface is
    /// dropped at the handshake deadline, not held for ever.
    #[tokio::test(start_paused = true)]
    async fn a_client_without_the_http2_preface_is_dropped_at_the_deadline() {
        let (_client, server) = tokio::io::duplex(64 * 1024);
        let started = Instant::now();
        let served = spawn_server(server, Arc::default(), false).await.unwrap();
        assert!(
            matches!(served, Err(ServeError::HandshakeTimeout)),
            "{served:?}"
        );
        assert_eq!(started.elapsed(), HANDSHAKE);
    }

    async fn client(io: tokio::io::DuplexStream) -> h2::client::SendRequest<Bytes> {
        let (client, conn) = h2_client().handshake::<_, Bytes>(io).await.unwrap();
        tokio::spawn(conn);
        client
    }

    /// Sends a CONNECT (its request body stays open while the response is kept).
    async fn open(client: &h2::client::SendRequest<Bytes>) -> h2::client::ResponseFuture {
        let req = connect_request("10.0.0.2:80".parse().unwrap(), None).unwrap();
        let mut c = client.clone().ready().await.unwrap();
        c.send_request(req, false).unwrap().0
    }

    /// Review M1: 100 CONNECTs are served at once on one connection; the 101st waits in
    /// the client (h2's `SETTINGS_MAX_CONCURRENT_STREAMS`); when the client resets one of
    /// the 100 while its tunnel is still in flight, h2 lets the 101st in and it is refused
    /// with `REFUSED_STREAM`; once a tunnel ends, a new stream is served again.
    #[tokio::test]
    async fn at_most_100_tunnels_per_connection_counting_reset_streams() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let held = Arc::new(Held::default());
        let _server = spawn_server(b, held.clone(), true);
        let client = client(a).await;
        let mut open_ones = Vec::new();
        for _ in 0..100 {
            let resp = open(&client).await.await.expect("one of the first 100");
            assert_eq!(resp.status(), 200);
            open_ones.push(resp);
        }
        assert_eq!(held.tunnels.load(Ordering::SeqCst), 100);
        // The 101st is not sent while 100 streams are open.
        let waiting = tokio::spawn({
            let client = client.clone();
            async move { open(&client).await.await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        assert_eq!(held.tunnels.load(Ordering::SeqCst), 100);
        // The client resets one stream (RST_STREAM); its tunnel stays in flight here.
        drop(open_ones.pop());
        let refused = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the 101st is answered")
            .unwrap()
            .expect_err("refused");
        assert_eq!(
            refused.reason(),
            Some(h2::Reason::REFUSED_STREAM),
            "{refused}"
        );
        assert_eq!(held.tunnels.load(Ordering::SeqCst), 100);
        // A tunnel ends: its place is free again.
        drop(held.places.lock().unwrap().pop());
        let resp = open(&client).await.await.expect("served again");
        assert_eq!(resp.status(), 200);
        assert_eq!(held.tunnels.load(Ordering::SeqCst), 101);
    }

    /// Review M1, rapid reset as meshd would see it: each CONNECT is accepted (answered
    /// `200`) and then reset by the client while its tunnel is still in flight. Of 10,000
    /// such pairs on one connection exactly 100 become tunnels; every other stream is
    /// refused with `REFUSED_STREAM`, and the connection is still served.
    #[tokio::test]
    async fn a_rapid_reset_loop_never_exceeds_100_tunnels_in_flight() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let held = Arc::new(Held::default());
        let server = spawn_server(b, held.clone(), true);
        let client = client(a).await;
        let (mut served, mut refused) = (0, 0);
        for _ in 0..10_000 {
            match open(&client).await.await {
                // Dropped at once: h2 resets the stream (RST_STREAM CANCEL).
                Ok(resp) => {
                    assert_eq!(resp.status(), 200);
                    served += 1;
                }
                Err(e) => {
                    assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e}");
                    refused += 1;
                }
            }
        }
        assert_eq!((served, refused), (100, 9_900));
        assert_eq!(held.tunnels.load(Ordering::SeqCst), 100);
        assert!(!server.is_finished(), "the connection is still served");
    }

    /// Rapid reset before the server even accepts the streams (HEADERS and RST_STREAM in
    /// one burst): h2 ends the connection (`GOAWAY` `ENHANCE_YOUR_CALM`) and no more than
    /// 100 tunnels were started.
    #[tokio::test]
    async fn a_burst_of_reset_streams_ends_the_connection() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let held = Arc::new(Held::default());
        let server = spawn_server(b, held.clone(), false);
        let client = client(a).await;
        for _ in 0..10_000 {
            let Ok(ready) = client.clone().ready().await else {
                break;
            };
            let req = connect_request("10.0.0.2:80".parse().unwrap(), None).unwrap();
            let mut ready = ready;
            match ready.send_request(req, false) {
                Ok(sent) => drop(sent),
                Err(_) => break,
            }
        }
        let ended = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server ends the connection")
            .unwrap();
        match ended {
            Ok(Ended::Error(e)) => {
                assert_eq!(e.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert!(held.tunnels.load(Ordering::SeqCst) <= 100);
    }
}
