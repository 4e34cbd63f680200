//! HBONE, the tunnel protocol of Istio ambient: HTTP/2 CONNECT over mutual TLS 1.3 to port
//! 15008, `:authority` = the original destination (`ip:port`). One TLS connection carries
//! many tunnels (streams), so connections between two pods multiplex. The agent's two sides
//! drive HTTP/2 with `h2` directly (see [`super::tunnel`]).

use std::{net::SocketAddr, time::Duration};

use hyper::{Method, Request, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub(crate) use meshd_common::HBONE_PORT;

#[cfg(test)]
mod flood_tests;
pub(crate) mod pool;
pub(crate) mod server;
pub(crate) mod tunnel;

/// Streams (tunnels) per HBONE connection before the pool opens another connection.
pub(crate) const MAX_STREAMS: u32 = 100;
/// Flow-control windows: large enough for bulk transfers over one stream.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const MAX_FRAME: u32 = 256 * 1024;
/// Bytes h2 may queue per stream before a tunnel's writer waits (hyper's default: 400 KiB).
const MAX_SEND_BUF: usize = 1024 * 1024;
/// The decoded size of a request's or response's header list that a peer may send (RFC
/// 9113 `SETTINGS_MAX_HEADER_LIST_SIZE`): a CONNECT needs a few hundred bytes. 64 KiB, as
/// ztunnel; h2's default of 16 MiB would let a peer's HPACK references (a few bytes each)
/// make the agent decode megabytes per request.
pub(crate) const MAX_HEADER_LIST: u32 = 64 * 1024;
const KEEPALIVE: Duration = Duration::from_secs(30);
/// How long a keep-alive PING may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// HBONE's client side (the pool): HTTP/2 driven directly with `h2`.
pub(crate) fn h2_client() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(MAX_SEND_BUF)
        .max_header_list_size(MAX_HEADER_LIST)
        .enable_push(false);
    b
}

/// HBONE's server side (port 15008).
pub(crate) fn h2_server() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(MAX_SEND_BUF)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(MAX_STREAMS);
    b
}

/// Why a connection's keep-alive gave up on it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeepaliveError {
    #[error("no PING acknowledgement within {0:?}")]
    Timeout(Duration),
    #[error("PING: {0}")]
    H2(#[from] h2::Error),
}

/// Sends a PING every [`KEEPALIVE`] and returns when one goes unanswered for
/// [`KEEPALIVE_TIMEOUT`], so that a connection to a peer that went away is dropped (and the
/// pool opens a new one). Never returns without `ping` (the connection's PING handle was
/// already taken).
pub(crate) async fn keepalive(ping: Option<h2::PingPong>) -> KeepaliveError {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEPALIVE).await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return e.into(),
            Err(_) => return KeepaliveError::Timeout(KEEPALIVE_TIMEOUT),
        }
    }
}

/// A hyper HTTP/2 client with HBONE's settings: `meshd diagnostics hbone`, and HTTP/2 to
/// upstream apps.
pub(crate) fn client_builder() -> hyper::client::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buf_size(MAX_SEND_BUF)
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    b
}

/// The CONNECT request that opens a tunnel to `target` on behalf of `source` (the client
/// pod's address, in a `Forwarded` header as ztunnel sends it).
pub(crate) fn connect_request(
    target: SocketAddr,
    source: Option<std::net::IpAddr>,
) -> Result<Request<()>, hyper::http::Error> {
    let uri = Uri::builder().authority(target.to_string()).build()?;
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .version(Version::HTTP_2);
    if let Some(ip) = source {
        req = req.header("forwarded", format!("for={}", forwarded_ip(ip)));
    }
    req.body(())
}

fn forwarded_ip(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

/// The tunnel target of a CONNECT request: its authority as `ip:port`.
pub(crate) fn target_of<B>(req: &Request<B>) -> Option<SocketAddr> {
    req.uri().authority()?.as_str().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CONNECT whose header list decodes to more than [`MAX_HEADER_LIST`] is refused by
    /// the HBONE server (h2 answers `431` or resets the stream) and the server's accept
    /// loop never sees it; one under the limit is accepted. The connection stays usable.
    #[tokio::test]
    async fn header_lists_over_64_kib_are_refused() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = accepted.clone();
        tokio::spawn(async move {
            let mut conn = h2_server()
                .handshake::<_, bytes::Bytes>(b)
                .await
                .expect("server");
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let ok = hyper::Response::new(());
                let _ = respond.send_response(ok, true);
            }
        });
        let (client, conn) = h2_client()
            .handshake::<_, bytes::Bytes>(a)
            .await
            .expect("client");
        tokio::spawn(conn);
        let send = |pad: usize| {
            let client = client.clone();
            async move {
                let mut req =
                    connect_request("10.0.0.2:80".parse().expect("addr"), None).expect("request");
                req.headers_mut()
                    .insert("x-pad", "a".repeat(pad).parse().expect("value"));
                let mut client = client.ready().await.expect("ready");
                let (resp, _) = client.send_request(req, true).expect("send");
                resp.await.map(|r| r.status())
            }
        };
        assert_eq!(send(60 * 1024).await.expect("under the limit"), 200);
        match send(70 * 1024).await {
            Ok(status) => assert_eq!(status, 431),
            Err(e) => assert!(e.is_reset() || e.is_library(), "{e}"),
        }
        assert_eq!(send(100).await.expect("still usable"), 200);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn connect_request_has_authority_only() {
        let req = connect_request(
            "10.244.1.2:8080".parse().unwrap(),
            Some("10.244.2.3".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(req.method(), Method::CONNECT);
        assert_eq!(req.uri().to_string(), "10.244.1.2:8080");
        assert_eq!(req.headers()["forwarded"], "for=10.244.2.3");
        assert_eq!(target_of(&req), Some("10.244.1.2:8080".parse().unwrap()));
        let v6 = connect_request(
            "[fd00::2]:80".parse().unwrap(),
            Some("fd00::3".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(v6.headers()["forwarded"], "for=\"[fd00::3]\"");
        assert_eq!(target_of(&v6), Some("[fd00::2]:80".parse().unwrap()));
    }
}
