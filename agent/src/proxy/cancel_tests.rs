//! HTTP sessions end when their connection is cancelled through the registry: an idle
//! keep-alive connection, and one upgraded to a byte stream (what WebSocket does). Both
//! through the real session ([`super::session::run`]: detection, then the HTTP proxy) over
//! TCP, with an HTTP app behind it. (The opaque relays' own tests are in `relay/`.)

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use super::{
    session::{self, Session},
    ProxyContext,
};
use crate::{
    conn::{testing, Direction},
    state::StateStore,
};

const WITHIN: Duration = Duration::from_secs(20);

fn context() -> Arc<ProxyContext> {
    ProxyContext::for_tests(StateStore::new())
}

/// The app: `GET /upgrade` with `Upgrade: echo` answers 101 and echoes what follows;
/// anything else is 200 `ok`.
async fn app(listener: TcpListener) {
    while let Ok((s, _)) = listener.accept().await {
        let service = hyper::service::service_fn(|mut req: Request<hyper::body::Incoming>| {
            let upgrade = req.uri().path() == "/upgrade";
            let upgraded = upgrade.then(|| hyper::upgrade::on(&mut req));
            async move {
                let Some(upgraded) = upgraded else {
                    return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))));
                };
                tokio::spawn(async move {
                    if let Ok(io) = upgraded.await {
                        let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                });
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let h = resp.headers_mut();
                h.insert(header::UPGRADE, header::HeaderValue::from_static("echo"));
                h.insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("upgrade"),
                );
                Ok(resp)
            }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), service)
                .with_upgrades(),
        );
    }
}

/// A client connection through a session to the app: (the client's end, the session, the
/// connection's id).
async fn through_a_session(
    ctx: &Arc<ProxyContext>,
    app: SocketAddr,
) -> (TcpStream, JoinHandle<()>, u64) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("listener");
    let (client, accepted) = tokio::join!(
        TcpStream::connect(listener.local_addr().expect("addr")),
        listener.accept()
    );
    let (accepted, _) = accepted.expect("accept");
    let upstream = TcpStream::connect(app).await.expect("app");
    let guard = ctx.connections.open(testing::context(Direction::Inbound));
    guard.context().route(app, None);
    let id = guard.context().id;
    let ctx = ctx.clone();
    let session = tokio::spawn(async move {
        let s = Session {
            guard,
            opaque: false,
            authz: None,
        };
        session::run(&ctx, s, accepted, upstream).await;
    });
    (client.expect("connect"), session, id)
}

/// The session ended, and its record says the agent closed it.
async fn ended_by_the_agent(ctx: &ProxyContext, session: JoinHandle<()>, id: u64) {
    tokio::time::timeout(WITHIN, session)
        .await
        .expect("the session ends when cancelled")
        .expect("join");
    let records = ctx.connections.snapshot();
    let r = records.iter().find(|r| r.conn.id == id).expect("record");
    assert!(r.end.as_ref().is_some_and(|e| e.by_agent), "{r:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_http_session_ends_when_cancelled() {
    let ctx = context();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("app");
    let addr = listener.local_addr().expect("app address");
    let app = tokio::spawn(app(listener));
    let (client, session, id) = through_a_session(&ctx, addr).await;

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .expect("client handshake");
    let conn = tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "web")
        .body(Empty::<Bytes>::new());
    let resp = sender
        .send_request(req.expect("request"))
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"ok");
    // Kept alive, idle.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!session.is_finished() && !conn.is_finished());

    assert!(ctx.connections.cancel(id));
    ended_by_the_agent(&ctx, session, id).await;
    // The client's connection is closed.
    let closed = tokio::time::timeout(WITHIN, conn).await;
    assert!(closed.is_ok(), "the client connection is still open");
    app.abort();
}

#[tokio::test]
async fn an_upgraded_http_session_ends_when_cancelled() {
    let ctx = context();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("app");
    let addr = listener.local_addr().expect("app address");
    let app = tokio::spawn(app(listener));
    let (mut client, session, id) = through_a_session(&ctx, addr).await;

    client
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: web\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .expect("request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        client.read_exact(&mut b).await.expect("response head");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    client.write_all(b"hello").await.expect("write");
    let mut echo = [0u8; 5];
    client.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"hello");
    // The upgraded stream is part of the session: still open.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!session.is_finished());
    assert_eq!(ctx.connections.open_count(), 1);

    assert!(ctx.connections.cancel(id));
    ended_by_the_agent(&ctx, session, id).await;
    // The client's stream ends (an end or a reset, not more bytes).
    let read = tokio::time::timeout(WITHIN, client.read(&mut echo)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the upgraded stream is still open: {read:?}"
    );
    app.abort();
}
