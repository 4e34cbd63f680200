//! TCP to an HBONE tunnel: what the socket sends goes into the HTTP/2 stream as the
//! buffers it was read into, and what the stream receives is written to the socket from
//! h2's own buffers, without the copies of a byte-stream adapter.

use std::{
    future::poll_fn,
    io,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use tokio::net::TcpStream;

use super::splice::{read_until_drained, write_all};
use crate::proxy::hbone::tunnel::{
    end_failed, give_back, reset_error, send_failure, take_chunk, to_io, ReadChunk, TunnelStream,
    CHUNK,
};

/// Relays between a TCP socket and a tunnel until both directions end: what the socket
/// sends goes into the stream as the buffers it was read into, and what the stream
/// receives is written to the socket from h2's own buffers. `up` counts bytes from the
/// socket into the tunnel, `down` the other way. Only the stream's end is a FIN to the
/// socket; a reset stream (any reason, `CANCEL` included) fails the relay, which then
/// resets the socket.
pub(super) async fn relay_tcp(
    tcp: &TcpStream,
    tunnel: &mut TunnelStream,
    up: &AtomicU64,
    down: &AtomicU64,
) -> io::Result<()> {
    let TunnelStream {
        send,
        recv,
        pending,
        recv_done,
        sent_end,
        ..
    } = tunnel;
    let to_tcp = async {
        if !pending.is_empty() {
            write_all(tcp, pending, down).await?;
            *pending = Bytes::new();
        }
        if !*recv_done {
            tunnel_to_tcp(recv, tcp, down).await?;
            *recv_done = true;
        }
        socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write)
    };
    tokio::try_join!(tcp_to_tunnel(tcp, send, sent_end, up), to_tcp).map(|_| ())
}

async fn tcp_to_tunnel(
    src: &TcpStream,
    send: &mut SendStream<Bytes>,
    sent_end: &mut bool,
    moved: &AtomicU64,
) -> io::Result<()> {
    loop {
        tokio::task::coop::consume_budget().await;
        src.readable().await?;
        send.reserve_capacity(CHUNK);
        let cap = loop {
            match send.capacity() {
                0 => match poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(to_io(e)),
                    None => return Err(sending_failed(send)),
                },
                cap => break cap.min(CHUNK),
            }
        };
        let mut buf = take_chunk();
        match read_until_drained(src, &mut buf, cap) {
            Ok((0, _)) => {
                give_back(buf);
                if send.send_data(Bytes::new(), true).is_err() {
                    return end_failed(send);
                }
                *sent_end = true;
                return Ok(());
            }
            Ok((n, drained)) => {
                moved.fetch_add(n as u64, Relaxed);
                let data = Bytes::from_owner(ReadChunk(Some(buf)));
                if send.send_data(data, false).is_err() {
                    return Err(sending_failed(send));
                }
                if drained {
                    give_back_capacity(send);
                }
            }
            Err(e) => {
                give_back(buf);
                match e.kind() {
                    io::ErrorKind::WouldBlock => give_back_capacity(send),
                    io::ErrorKind::Interrupted => {}
                    _ => return Err(e),
                }
            }
        }
    }
}

/// The error of a send that failed: the peer's reset, whatever its reason (the socket's
/// bytes cannot be delivered).
fn sending_failed(send: &mut SendStream<Bytes>) -> io::Error {
    match send_failure(send) {
        Ok(reason) => reset_error(reason),
        Err(e) => e,
    }
}

/// Once the socket is drained, the stream keeps send capacity only for what it has queued:
/// the rest goes back to the connection, which its other tunnels share (held by idle
/// tunnels, it would starve them).
fn give_back_capacity(send: &mut SendStream<Bytes>) {
    send.reserve_capacity(0);
}

async fn tunnel_to_tcp(
    recv: &mut RecvStream,
    dst: &TcpStream,
    moved: &AtomicU64,
) -> io::Result<()> {
    loop {
        let data = match poll_fn(|cx| recv.poll_data(cx)).await {
            None => return Ok(()),
            Some(Ok(data)) => data,
            Some(Err(e)) => return Err(to_io(e)),
        };
        let n = data.len();
        write_all(dst, &data, moved).await?;
        // Only what the app's socket took is given back to the sender's window.
        let _ = recv.flow_control().release_capacity(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// `n` CONNECT streams over one in-memory HTTP/2 connection with HBONE's settings:
    /// (client ends, server ends).
    async fn tunnels(n: usize) -> (Vec<TunnelStream>, Vec<TunnelStream>) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut conn = crate::proxy::hbone::h2_server().handshake(b).await.unwrap();
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                let send = respond
                    .send_response(hyper::Response::new(()), false)
                    .unwrap();
                let _ = tx.send(TunnelStream::new(send, req.into_body()));
            }
        });
        let (client, conn) = crate::proxy::hbone::h2_client().handshake(a).await.unwrap();
        tokio::spawn(conn);
        let (mut clients, mut servers) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let mut client = client.clone().ready().await.unwrap();
            let req =
                crate::proxy::hbone::connect_request("10.0.0.1:80".parse().unwrap(), None).unwrap();
            let (resp, send) = client.send_request(req, false).unwrap();
            servers.push(rx.recv().await.unwrap());
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), 200);
            clients.push(TunnelStream::new(send, resp.into_body()));
        }
        (clients, servers)
    }

    /// As many held tunnels as the server allows on one connection, each with a server that
    /// greets (a byte) and then waits: every greeting arrives. Idle tunnels must not keep
    /// the connection's send window.
    #[tokio::test]
    async fn idle_tunnels_do_not_starve_the_others() {
        let n = crate::proxy::hbone::MAX_STREAMS as usize;
        let (mut clients, servers) = tunnels(n).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut apps = Vec::new();
        for mut server in servers {
            let app = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (proxy_side, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
                let _ = relay_tcp(&proxy_side, &mut server, &up, &down).await;
            });
            apps.push(app);
        }
        for app in &mut apps {
            app.write_all(b"!").await.unwrap();
        }
        for (i, client) in clients.iter_mut().enumerate() {
            let mut b = [0u8; 1];
            let got =
                tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut b)).await;
            assert!(
                matches!(got, Ok(Ok(1))),
                "tunnel {i} of {n}: no greeting ({got:?})"
            );
        }
    }

    /// An h2 CONNECT stream over an in-memory pipe: (client end, server end).
    async fn tunnel_pair() -> (TunnelStream, TunnelStream) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(b).await.unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            let send = respond
                .send_response(hyper::Response::new(()), false)
                .unwrap();
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            TunnelStream::new(send, req.into_body())
        });
        let (client, conn) = h2::client::handshake(a).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req =
            crate::proxy::hbone::connect_request("10.0.0.1:80".parse().unwrap(), None).unwrap();
        let (resp, send) = client.send_request(req, false).unwrap();
        let server = server.await.unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        (TunnelStream::new(send, resp.into_body()), server)
    }

    /// Cancelled while live: the relay ends, the socket's peer (the app) is reset, and the
    /// tunnel's other end sees its stream reset with an error (which its agent passes on as a
    /// reset), not an end of stream.
    #[tokio::test]
    async fn a_cancelled_tunnel_relay_resets_both_sides() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut app = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut proxy_side, _) = listener.accept().await.unwrap();
        let (mut client, mut server) = tunnel_pair().await;
        let token = crate::proxy::cancel::CancelToken::default();
        let cancelled = token.cancelled();
        let relay = tokio::spawn(async move {
            let r = super::super::relay_streams(&mut proxy_side, &mut server, cancelled).await;
            drop((proxy_side, server));
            r
        });
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        app.read_exact(&mut got).await.unwrap();
        app.write_all(b"pong").await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");

        assert!(token.cancel());
        let within = std::time::Duration::from_secs(10);
        let ended = tokio::time::timeout(within, relay).await;
        let (sent, received, error) = ended.expect("ends").unwrap();
        assert_eq!((sent, received), (0, 0));
        assert!(error.is_none(), "{error:?}");
        let seen = tokio::time::timeout(within, app.read(&mut got)).await;
        assert_eq!(
            seen.expect("app").map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
        let seen = tokio::time::timeout(within, client.read(&mut got)).await;
        let err = seen.expect("client").expect_err("a reset, not an end");
        let reason = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<h2::Error>())
            .and_then(h2::Error::reason);
        assert_eq!(reason, Some(h2::Reason::CONNECT_ERROR), "{err}");
    }

    /// A TCP pair: (the app's end, the relay's end).
    async fn app_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = TcpStream::connect(listener.local_addr().unwrap());
        let (app, accepted) = tokio::join!(app, listener.accept());
        (app.unwrap(), accepted.unwrap().0)
    }

    /// Relays `tcp` and `tunnel` as a connection task does (never cancelled; both sides
    /// dropped when it returns): bytes each way and the error.
    fn spawn_relay(
        mut tcp: TcpStream,
        mut tunnel: TunnelStream,
    ) -> tokio::task::JoinHandle<(u64, u64, Option<crate::proxy::error::Error>)> {
        tokio::spawn(async move {
            let never = crate::proxy::cancel::CancelToken::default().cancelled();
            let r = super::super::relay_streams(&mut tunnel, &mut tcp, never).await;
            drop((tcp, tunnel));
            r
        })
    }

    /// Reads until the end or an error: the bytes read and how it ended.
    async fn read_to_end_or_error(s: &mut TcpStream) -> (usize, io::Result<()>) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0;
        let within = std::time::Duration::from_secs(20);
        loop {
            match tokio::time::timeout(within, s.read(&mut buf)).await {
                Err(_) => panic!("neither ended nor reset after {n} bytes"),
                Ok(Ok(0)) => return (n, Ok(())),
                Ok(Ok(k)) => n += k,
                Ok(Err(e)) => return (n, Err(e)),
            }
        }
    }

    /// Writes `len` bytes, then resets (`SO_LINGER` 0 and close).
    async fn write_then_reset(mut s: TcpStream, len: usize) {
        s.write_all(&pattern(len, 3)).await.unwrap();
        crate::proxy::relay::reset(&s);
        drop(s);
    }

    /// Across a tunnel, a reset stays a reset (review M3): app A <-> relay <-> tunnel <->
    /// relay <-> app B, as through two agents. The client app writes 1 MiB then resets: the
    /// server app gets ECONNRESET, never a clean end (`Ok(0)`). And the mirror: the server
    /// app resets in the middle of its answer, and the client app gets ECONNRESET. Each
    /// relay reports the error.
    #[tokio::test]
    async fn a_reset_on_either_side_reaches_the_other_app_as_a_reset() {
        for client_resets in [true, false] {
            let case = format!("client_resets={client_resets}");
            let (mut client_app, client_side) = app_pair().await;
            let (mut server_app, server_side) = app_pair().await;
            let (client_tunnel, server_tunnel) = tunnel_pair().await;
            let outbound = spawn_relay(client_side, client_tunnel);
            let inbound = spawn_relay(server_side, server_tunnel);
            let (resetter, other) = if client_resets {
                (client_app, &mut server_app)
            } else {
                client_app.write_all(b"request").await.unwrap();
                let mut got = [0u8; 7];
                server_app.read_exact(&mut got).await.unwrap();
                (server_app, &mut client_app)
            };
            let ((), (read, ended)) = tokio::join!(
                write_then_reset(resetter, 1 << 20),
                read_to_end_or_error(other)
            );
            assert_eq!(
                ended.map_err(|e| e.kind()),
                Err(io::ErrorKind::ConnectionReset),
                "{case}: after {read} bytes"
            );
            for (name, relay) in [("outbound", outbound), ("inbound", inbound)] {
                let (_, _, error) = relay.await.unwrap();
                assert!(
                    error.is_some(),
                    "{case}: the {name} relay reports the error"
                );
            }
        }
    }

    /// A peer that resets its stream with `CANCEL` (what h2 sends for a stream dropped
    /// before its end) in the middle of a transfer: the app gets a reset, not an end of
    /// stream, whichever direction was still open.
    #[tokio::test]
    async fn a_cancelled_stream_is_a_reset_not_an_end() {
        for peer_sent_all in [false, true] {
            let case = format!("peer_sent_all={peer_sent_all}");
            let (mut app, side) = app_pair().await;
            let (mut peer, tunnel) = tunnel_pair().await;
            let relay = spawn_relay(side, tunnel);
            peer.write_all(&pattern(100_000, 5)).await.unwrap();
            if peer_sent_all {
                peer.shutdown().await.unwrap();
            }
            let mut got = vec![0u8; 100_000];
            app.read_exact(&mut got).await.unwrap();
            peer.send.send_reset(h2::Reason::CANCEL);
            let (_, ended) = read_to_end_or_error(&mut app).await;
            if peer_sent_all {
                // The end came first (a FIN); the reset then resets the app's socket.
                assert!(ended.is_ok(), "{case}: {ended:?}");
                let mut buf = [0u8; 8];
                let seen = tokio::time::timeout(std::time::Duration::from_secs(20), async {
                    loop {
                        match app.write(&buf).await {
                            Ok(_) => buf[0] = buf[0].wrapping_add(1),
                            Err(e) => return e.kind(),
                        }
                        tokio::task::yield_now().await;
                    }
                })
                .await
                .expect("the app's socket is reset");
                assert!(
                    matches!(
                        seen,
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ),
                    "{case}: {seen:?}"
                );
            } else {
                assert_eq!(
                    ended.map_err(|e| e.kind()),
                    Err(io::ErrorKind::ConnectionReset),
                    "{case}"
                );
            }
            let (_, _, error) = relay.await.unwrap();
            assert!(error.is_some(), "{case}: the relay reports the reset");
        }
    }

    /// A normal close through two relays is clean on both apps and both relays: the
    /// client app writes and closes, the server app reads to the end, answers and closes.
    /// And a tunnel whose own side ended and is dropped before the peer's end (an HTTP
    /// client connection closing after its last response) does not reset the peer: its
    /// app sees the end, closes, and its relay ends without an error.
    #[tokio::test]
    async fn a_close_through_a_tunnel_is_clean() {
        let (mut client_app, client_side) = app_pair().await;
        let (mut server_app, server_side) = app_pair().await;
        let (client_tunnel, server_tunnel) = tunnel_pair().await;
        let outbound = spawn_relay(client_side, client_tunnel);
        let inbound = spawn_relay(server_side, server_tunnel);
        client_app.write_all(b"request").await.unwrap();
        client_app.shutdown().await.unwrap();
        let mut got = Vec::new();
        server_app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        server_app.write_all(b"answer").await.unwrap();
        drop(server_app);
        let mut back = Vec::new();
        client_app.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"answer");
        for relay in [outbound, inbound] {
            let (_, _, error) = relay.await.unwrap();
            assert!(error.is_none(), "{error:?}");
        }

        let (mut app, side) = app_pair().await;
        let (mut peer, tunnel) = tunnel_pair().await;
        let relay = spawn_relay(side, tunnel);
        peer.write_all(b"last request").await.unwrap();
        peer.shutdown().await.unwrap();
        drop(peer);
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last request");
        drop(app);
        let (_, _, error) = relay.await.unwrap();
        assert!(error.is_none(), "a lingering close is clean: {error:?}");
    }

    #[tokio::test]
    async fn relays_between_a_socket_and_a_tunnel_both_ways_with_half_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut app = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (proxy_side, _) = listener.accept().await.unwrap();
        let (mut client, mut server) = tunnel_pair().await;

        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let relay = async {
            relay_tcp(&proxy_side, &mut server, &up, &down)
                .await
                .unwrap();
        };
        let request = pattern(3 << 20, 1);
        let reply = pattern(700 << 10, 7);
        let peer = async {
            // The client sends 3 MiB and finishes; the app reads it all, then answers.
            client.write_all(&request).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            app.read_to_end(&mut got).await.unwrap();
            assert!(
                got == request,
                "the app got {} bytes, not the request",
                got.len()
            );
            app.write_all(&reply).await.unwrap();
            app.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            assert!(
                back == reply,
                "the client got {} bytes, not the reply",
                back.len()
            );
        };
        tokio::join!(relay, peer);
        assert_eq!(down.load(Relaxed), request.len() as u64, "tunnel -> socket");
        assert_eq!(up.load(Relaxed), reply.len() as u64, "socket -> tunnel");
    }
}
