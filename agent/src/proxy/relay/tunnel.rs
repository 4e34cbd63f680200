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
    give_back, is_clean_end, take_chunk, to_io, ReadChunk, TunnelStream, CHUNK,
};

/// Relays between a TCP socket and a tunnel until both directions end: what the socket
/// sends goes into the stream as the buffers it was read into, and what the stream
/// receives is written to the socket from h2's own buffers. `up` counts bytes from the
/// socket into the tunnel, `down` the other way.
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
        ..
    } = tunnel;
    let to_tcp = async {
        if !pending.is_empty() {
            write_all(tcp, pending, down).await?;
            *pending = Bytes::new();
        }
        if !*recv_done {
            tunnel_to_tcp(recv, tcp, down).await?;
        }
        socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write)
    };
    tokio::try_join!(tcp_to_tunnel(tcp, send, up), to_tcp).map(|_| ())
}

async fn tcp_to_tunnel(
    src: &TcpStream,
    send: &mut SendStream<Bytes>,
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
                    None => return Err(io::ErrorKind::BrokenPipe.into()),
                },
                cap => break cap.min(CHUNK),
            }
        };
        let mut buf = take_chunk();
        match read_until_drained(src, &mut buf, cap) {
            Ok((0, _)) => {
                give_back(buf);
                send.send_data(Bytes::new(), true).map_err(to_io)?;
                return Ok(());
            }
            Ok((n, drained)) => {
                moved.fetch_add(n as u64, Relaxed);
                let data = Bytes::from_owner(ReadChunk(Some(buf)));
                send.send_data(data, false).map_err(to_io)?;
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
            Some(Err(e)) if is_clean_end(&e) => return Ok(()),
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
