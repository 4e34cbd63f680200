//! Moving bytes between the two halves of a proxied connection, with half-close: when one
//! side finishes sending, the other side's write half is shut down and the opposite
//! direction keeps flowing until it finishes too. When either side fails, both are reset.
//!
//! Three ways, chosen per connection by what its two sides are ([`Reset`]):
//!
//! - TCP to TCP (plain pass-through, inbound delivery of plaintext): [`splice`] moves the
//!   bytes with `splice(2)` through a pipe, so the payload never enters user space. The
//!   pipe is taken from a small pool only while bytes are in flight, so an idle connection
//!   holds neither a pipe nor a buffer. Small messages are copied instead, which takes
//!   fewer system calls.
//! - TCP to an HBONE tunnel ([`tunnel`]): the socket's reads go into the HTTP/2 stream as
//!   whole buffers, and the stream's data is written to the socket from h2's own buffers.
//! - Anything else (a stream with detection bytes in front, TLS): [`buffered`], a copy
//!   whose buffers are likewise taken from a pool only while data flows, so idle
//!   connections cost no buffer memory.
//!
//! Each way stops when the connection is cancelled ([`ConnGuard::cancelled`]): both sides
//! are then reset, as when one of them fails.

mod buffered;
mod splice;
mod tunnel;

use std::sync::atomic::AtomicU64;

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::{cancel::Cancelled, connections::ConnGuard, error::Error, hbone::tunnel::TunnelStream};

/// A side of a relay that can be closed abortively when the other side failed.
pub(crate) trait Reset {
    fn reset(&self);

    /// The plain TCP socket this side is, when its bytes can be moved with `splice(2)`
    /// (nothing buffered in front of it, no framing).
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }

    /// The HBONE tunnel this side is, when whole buffers can be handed to and taken from
    /// its HTTP/2 stream (nothing buffered in front of it).
    fn tunnel(&mut self) -> Option<&mut TunnelStream> {
        None
    }

    /// Bytes read from and written to this side without its `AsyncRead` / `AsyncWrite`
    /// (spliced, or handed to a tunnel), for wrappers that count.
    fn spliced(&self, _read: u64, _written: u64) {}
}

impl Reset for TcpStream {
    /// Makes the coming close send a RST instead of a FIN: how a proxy tells a client that
    /// the connection it accepted on behalf of a destination could not be completed.
    fn reset(&self) {
        let _ = socket2::SockRef::from(self).set_linger(Some(std::time::Duration::ZERO));
    }

    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Reset for TunnelStream {
    /// Makes the coming drop reset the HTTP/2 stream with `CONNECT_ERROR`, which the peer's
    /// agent passes on as a TCP reset.
    fn reset(&self) {
        self.reset_on_drop();
    }

    fn tunnel(&mut self) -> Option<&mut TunnelStream> {
        Some(self)
    }
}

pub(crate) fn reset(stream: &TcpStream) {
    stream.reset();
}

/// Copies both ways until both directions are done, then closes the connection's record.
/// When either side fails (a reset), the other side is reset too, as if there were no proxy;
/// so are both when the connection is cancelled.
pub(crate) async fn relay<A, B>(guard: ConnGuard, mut client: A, mut server: B)
where
    A: AsyncRead + AsyncWrite + Unpin + Reset,
    B: AsyncRead + AsyncWrite + Unpin + Reset,
{
    let (sent, received, error) = relay_streams(&mut client, &mut server, guard.cancelled()).await;
    guard.close(sent, received, error);
}

/// The copying part of [`relay`]: bytes each way, or the error after resetting both sides;
/// nothing counted and no error when `cancelled` resolved first (both sides reset). The
/// sides are closed by the caller (dropped after the record is closed).
async fn relay_streams<A, B>(
    client: &mut A,
    server: &mut B,
    cancelled: Cancelled,
) -> (u64, u64, Option<Error>)
where
    A: AsyncRead + AsyncWrite + Unpin + Reset,
    B: AsyncRead + AsyncWrite + Unpin + Reset,
{
    let copied = tokio::select! {
        biased;
        copied = copy(client, server) => Some(copied),
        () = cancelled => None,
    };
    match copied {
        Some(Ok((a, b))) => (a, b, None),
        Some(Err(e)) => {
            client.reset();
            server.reset();
            (0, 0, Some(Error::Relay(e)))
        }
        None => {
            client.reset();
            server.reset();
            (0, 0, None)
        }
    }
}

/// Moves bytes both ways, the fastest way the two sides allow; bytes each way.
async fn copy<A, B>(client: &mut A, server: &mut B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + Reset,
    B: AsyncRead + AsyncWrite + Unpin + Reset,
{
    let sent = AtomicU64::new(0);
    let received = AtomicU64::new(0);
    let moved = if let (Some(c), Some(s)) = (client.tcp(), server.tcp()) {
        Some(splice::splice_bidirectional(c, s, &sent, &received).await)
    } else if let (Some(c), Some(t)) = (client.tcp(), server.tunnel()) {
        Some(tunnel::relay_tcp(c, t, &sent, &received).await)
    } else if let (Some(t), Some(s)) = (client.tunnel(), server.tcp()) {
        Some(tunnel::relay_tcp(s, t, &received, &sent).await)
    } else {
        None
    };
    match moved {
        Some(r) => {
            let (sent, received) = (sent.into_inner(), received.into_inner());
            client.spliced(sent, received);
            server.spliced(received, sent);
            r.map(|()| (sent, received))
        }
        None => buffered::copy_bidirectional(client, server).await,
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::{
        buffered::copy_bidirectional,
        splice::{splice_bidirectional, SMALL},
        *,
    };
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    thread_local! {
        /// Relay buffers taken and not given back (or dropped) on this thread.
        pub(super) static HELD: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
        /// Splice pipes taken and not given back on this thread.
        pub(super) static PIPES_OUT: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
        /// Bytes moved by `splice(2)` (pipe to socket) on this thread.
        pub(super) static SPLICED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// `n` bytes from the client to the server, then `pong` back.
    async fn ping_pong(c: &mut TcpStream, s: &mut TcpStream, n: usize) {
        c.write_all(&pattern(n)).await.unwrap();
        let mut got = vec![0u8; n];
        s.read_exact(&mut got).await.unwrap();
        s.write_all(b"pong").await.unwrap();
        let mut pong = [0u8; 4];
        c.read_exact(&mut pong).await.unwrap();
    }

    /// Lets the other tasks of this (current-thread) runtime run: the relay gives its
    /// buffers and pipes back once it has nothing to move.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// Waits until `cond` holds, checking every 5 ms, `tries` times at most.
    async fn poll_until(cond: impl Fn() -> bool, tries: u32) {
        let mut waited = 0;
        while !cond() && waited < tries {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            waited += 1;
        }
    }

    /// 32 MiB written by the client towards a server that does not read (yet).
    struct UnreadWrite {
        cr: tokio::net::tcp::OwnedReadHalf,
        writer: tokio::task::JoinHandle<tokio::net::tcp::OwnedWriteHalf>,
    }

    impl UnreadWrite {
        fn start(client: TcpStream) -> UnreadWrite {
            let (cr, mut cw) = client.into_split();
            let writer = tokio::spawn(async move {
                let _ = cw.write_all(&pattern(32 * 1024 * 1024)).await;
                cw
            });
            UnreadWrite { cr, writer }
        }

        /// The server reads everything to the end: all 32 MiB arrive and the relay ends
        /// without an error once the client has closed.
        async fn finish(
            mut self,
            mut server: TcpStream,
            relay: tokio::task::JoinHandle<io::Result<(u64, u64)>>,
        ) {
            let reader = tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = server.read_to_end(&mut sink).await;
                sink.len()
            });
            drop(self.writer.await.unwrap());
            drop(self.cr.read(&mut [0u8; 1]).await);
            assert_eq!(reader.await.unwrap(), 32 * 1024 * 1024);
            relay.await.unwrap().unwrap();
        }
    }

    /// Relays between `a` and `b` by splice or by the buffered copy; bytes each way.
    fn spawn_relay(
        a: TcpStream,
        b: TcpStream,
        spliced: bool,
    ) -> tokio::task::JoinHandle<io::Result<(u64, u64)>> {
        tokio::spawn(async move {
            if spliced {
                let (x, y) = (AtomicU64::new(0), AtomicU64::new(0));
                splice_bidirectional(&a, &b, &x, &y)
                    .await
                    .map(|()| (x.into_inner(), y.into_inner()))
            } else {
                let (mut a, mut b) = (a, b);
                copy_bidirectional(&mut a, &mut b).await
            }
        })
    }

    /// client <-> [a relay b] <-> server; both directions with half-close, either way.
    async fn both_ways(spliced: bool) {
        let (client, a) = pair().await;
        let (b, server) = pair().await;
        let relay = spawn_relay(a, b, spliced);
        let up = pattern(3 * 1024 * 1024 + 17);
        let down = pattern(2 * 1024 * 1024 + 5);
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let (u, d) = (up.clone(), down.clone());
        let w1 = tokio::spawn(async move {
            cw.write_all(&u).await.unwrap();
            cw.shutdown().await.unwrap();
        });
        let w2 = tokio::spawn(async move {
            sw.write_all(&d).await.unwrap();
            sw.shutdown().await.unwrap();
        });
        let mut got_up = Vec::new();
        let mut got_down = Vec::new();
        let (r1, r2) = tokio::join!(sr.read_to_end(&mut got_up), cr.read_to_end(&mut got_down));
        r1.unwrap();
        r2.unwrap();
        w1.await.unwrap();
        w2.await.unwrap();
        assert!(got_up == up, "client to server intact");
        assert!(got_down == down, "server to client intact");
        let (n_up, n_down) = relay.await.unwrap().unwrap();
        assert_eq!((n_up, n_down), (up.len() as u64, down.len() as u64));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn splice_relays_both_ways_with_half_close() {
        both_ways(true).await;
    }

    /// Request/response through the TCP relay, then a bulk transfer, then request/response
    /// again: the relay copies the small messages and splices the bulk, and switching
    /// between the two neither loses, reorders nor stalls anything (a read that cleared
    /// the socket's readiness wrongly would leave an exchange waiting forever).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn splice_relay_switches_between_copying_and_splicing() {
        let (client, a) = pair().await;
        let (b, server) = pair().await;
        let relay = spawn_relay(a, b, true);
        let (mut client, mut server) = (client, server);
        async fn exchanges(c: &mut TcpStream, s: &mut TcpStream, sizes: &[usize]) {
            for (i, &n) in sizes.iter().enumerate() {
                let ask = pattern(n + i);
                c.write_all(&ask).await.unwrap();
                let mut got = vec![0; ask.len()];
                s.read_exact(&mut got).await.unwrap();
                assert!(got == ask, "request {i} of {} bytes intact", ask.len());
                let answer = pattern(2 * n + i);
                s.write_all(&answer).await.unwrap();
                let mut got = vec![0; answer.len()];
                c.read_exact(&mut got).await.unwrap();
                assert!(got == answer, "response {i} intact");
            }
        }
        let run = async {
            // Under, at and over the copy size, one at a time.
            let small = [1, 100, 1024, SMALL - 1, SMALL, SMALL + 1, 3 * SMALL, 1, 10];
            exchanges(&mut client, &mut server, &small).await;
            let bulk = pattern(8 * 1024 * 1024 + 3);
            let (mut got, sent) = (vec![0; bulk.len()], bulk.clone());
            let (cw, sr) = (&mut client, &mut server);
            let (w, r) = tokio::join!(cw.write_all(&sent), sr.read_exact(&mut got));
            w.unwrap();
            r.unwrap();
            assert!(got == bulk, "bulk intact");
            exchanges(&mut client, &mut server, &[1, 200, 5, SMALL, 7]).await;
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), run)
            .await
            .expect("an exchange stalled");
        drop((client, server));
        let (up, _) = relay.await.unwrap().unwrap();
        assert!(up > 8 * 1024 * 1024);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn buffered_copy_relays_both_ways_with_half_close() {
        both_ways(false).await;
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_direction() {
        for spliced in [true, false] {
            let (mut client, a) = pair().await;
            let (b, mut server) = pair().await;
            let relay = spawn_relay(a, b, spliced);
            client.write_all(b"request").await.unwrap();
            client.shutdown().await.unwrap();
            let mut req = Vec::new();
            server.read_to_end(&mut req).await.unwrap();
            assert_eq!(req, b"request");
            // After the client's FIN the server can still answer.
            server.write_all(b"answer").await.unwrap();
            drop(server);
            let mut resp = Vec::new();
            client.read_to_end(&mut resp).await.unwrap();
            assert_eq!(resp, b"answer");
            relay.await.unwrap().unwrap();
        }
    }

    /// A TCP side the relay cannot splice: the buffered copy moves its bytes (as for a stream
    /// with detection bytes in front).
    fn buffered(s: TcpStream) -> crate::proxy::l7::detect::Prefixed<TcpStream> {
        crate::proxy::l7::detect::Prefixed::new(bytes::Bytes::new(), s)
    }

    /// Runs [`relay_streams`] as `relay` does (sides dropped when it returns), spliced or
    /// buffered.
    fn spawn_full_relay(
        a: TcpStream,
        b: TcpStream,
        spliced: bool,
    ) -> tokio::task::JoinHandle<(u64, u64, Option<Error>)> {
        tokio::spawn(async move {
            // Never cancelled: its token is gone.
            let never = crate::proxy::cancel::CancelToken::default().cancelled();
            if spliced {
                let (mut a, mut b) = (a, b);
                relay_streams(&mut a, &mut b, never).await
            } else {
                relay_streams(&mut buffered(a), &mut buffered(b), never).await
            }
        })
    }

    /// A connection cancelled through the registry while its relay is live (and idle): the
    /// relay ends, both peers see a reset, and the record is closed as closed by the agent.
    /// For the spliced and the buffered relay.
    #[tokio::test]
    async fn a_cancelled_relay_resets_both_sides_and_closes_its_record() {
        use crate::{
            conn::{testing, Direction},
            proxy::connections::Connections,
        };
        for spliced in [true, false] {
            let registry = Arc::new(Connections::default());
            let guard = registry.open(testing::context(Direction::Outbound));
            let id = guard.context().id;
            let (mut client, a) = pair().await;
            let (b, mut server) = pair().await;
            let relay = tokio::spawn(async move {
                if spliced {
                    relay(guard, a, b).await
                } else {
                    relay(guard, buffered(a), buffered(b)).await
                }
            });
            ping_pong(&mut client, &mut server, 1000).await;
            settle().await;
            assert!(!relay.is_finished(), "spliced={spliced}: open while idle");
            assert!(registry.cancel(id));
            tokio::time::timeout(std::time::Duration::from_secs(20), relay)
                .await
                .expect("the relay ends when cancelled")
                .unwrap();
            for (side, peer) in [("client", &mut client), ("server", &mut server)] {
                let seen = next_read(peer).await;
                assert_eq!(
                    seen.as_ref().map_err(|e| e.kind()),
                    Err(io::ErrorKind::ConnectionReset),
                    "spliced={spliced}: the {side} is reset (got {seen:?})"
                );
            }
            let records = registry.snapshot();
            let end = records[0].end.as_ref().expect("closed");
            assert!(end.by_agent, "spliced={spliced}");
            assert!(end.error.is_none(), "spliced={spliced}: {:?}", end.error);
        }
    }

    /// What the peer that did not reset sees next: it must be a reset, not a clean EOF.
    async fn next_read(s: &mut TcpStream) -> io::Result<usize> {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(std::time::Duration::from_secs(20), s.read(&mut buf));
        read.await
            .expect("the other side was neither reset nor closed")
    }

    /// When either side resets, the relay fails and resets the other side too, as if there
    /// were no proxy: the other peer's next read is ECONNRESET, not an EOF. For the spliced
    /// and the buffered relay, with bytes already through before the reset.
    #[tokio::test]
    async fn a_reset_is_an_error() {
        for spliced in [true, false] {
            for client_resets in [true, false] {
                let case = format!("spliced={spliced} client_resets={client_resets}");
                let (mut client, a) = pair().await;
                let (b, mut server) = pair().await;
                let relay = spawn_full_relay(a, b, spliced);
                client.write_all(b"ping").await.unwrap();
                let mut got = [0u8; 4];
                server.read_exact(&mut got).await.unwrap();
                assert_eq!(&got, b"ping", "{case}");
                let (resetter, mut other) = if client_resets {
                    (client, server)
                } else {
                    (server, client)
                };
                resetter.reset();
                drop(resetter);
                let (_, _, error) = relay.await.unwrap();
                assert!(error.is_some(), "{case}: the relay reports the error");
                let seen = next_read(&mut other).await;
                assert_eq!(
                    seen.as_ref().map_err(|e| e.kind()),
                    Err(io::ErrorKind::ConnectionReset),
                    "{case}: the other side is reset (got {seen:?})"
                );
            }
        }
    }

    /// The counterpart: an orderly close on one side is an orderly close (EOF) on the other,
    /// not a reset, and the relay reports no error.
    #[tokio::test]
    async fn a_close_is_not_a_reset() {
        for spliced in [true, false] {
            let (mut client, a) = pair().await;
            let (b, mut server) = pair().await;
            let relay = spawn_full_relay(a, b, spliced);
            client.write_all(b"ping").await.unwrap();
            drop(client);
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"ping", "spliced={spliced}");
            drop(server);
            let (sent, received, error) = relay.await.unwrap();
            assert_eq!((sent, received), (4, 0), "spliced={spliced}");
            assert!(error.is_none(), "spliced={spliced}: {error:?}");
        }
    }

    /// The TCP relay copies small messages and splices bulk (counted by `splice(2)` calls on
    /// this thread), and an idle spliced relay holds no pipe and no buffer: after request /
    /// response and after 4 MiB of bulk, while the connection stays open. While bytes wait
    /// for a reader that does not read, a pipe is held.
    #[tokio::test(flavor = "current_thread")]
    async fn bulk_is_spliced_and_an_idle_spliced_relay_holds_no_pipe() {
        let pipes = || PIPES_OUT.with(|h| h.get());
        let spliced = || SPLICED.with(|s| s.get());
        let held = || HELD.with(|h| h.get());
        let (mut client, a) = pair().await;
        let (b, mut server) = pair().await;
        let relay = spawn_relay(a, b, true);
        ping_pong(&mut client, &mut server, 1000).await;
        settle().await;
        assert_eq!(spliced(), 0, "small messages are copied");
        assert_eq!((pipes(), held()), (0, 0), "idle after request/response");

        let bulk = pattern(4 * 1024 * 1024);
        let mut got = vec![0u8; bulk.len()];
        let (w, r) = tokio::join!(client.write_all(&bulk), server.read_exact(&mut got));
        w.unwrap();
        r.unwrap();
        assert!(got == bulk, "bulk intact");
        assert!(spliced() > 3 * 1024 * 1024, "bulk spliced: {}", spliced());
        ping_pong(&mut client, &mut server, 1000).await;
        settle().await;
        assert!(!relay.is_finished(), "the connection is still open");
        assert_eq!((pipes(), held()), (0, 0), "idle after bulk");

        // A server that does not read: the relay holds a pipe with the bytes in it.
        let unread = UnreadWrite::start(client);
        poll_until(|| pipes() != 0, 2000).await;
        assert_eq!(pipes(), 1, "a pipe is held while data is in flight");
        unread.finish(server, relay).await;
        assert_eq!(pipes(), 0);
    }

    /// An idle connection holds no buffer: once the bytes are through, both directions have
    /// given their buffers back while the connection stays open.
    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_buffered_relay_holds_no_buffer() {
        let held = || HELD.with(|h| h.get());
        let (mut client, a) = pair().await;
        let (b, mut server) = pair().await;
        let relay = spawn_relay(a, b, false);
        ping_pong(&mut client, &mut server, 200_000).await;
        settle().await;
        assert!(!relay.is_finished(), "the connection is still open");
        assert_eq!(held(), 0, "no buffer held by the idle relay");
        // While bytes wait for a reader that does not read, a buffer is held.
        let unread = UnreadWrite::start(client);
        poll_until(|| held() != 0, 200).await;
        assert!(held() > 0, "a buffer is held while data is in flight");
        unread.finish(server, relay).await;
        assert_eq!(held(), 0);
    }
}
