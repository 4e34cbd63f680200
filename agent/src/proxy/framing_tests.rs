//! Ambiguous HTTP/1 framing on a later request of a keep-alive connection, through the real
//! HTTP proxy ([`super::l7::http::proxy`]). The first request's head is checked by the
//! session before hyper parses it (`400`); a later one is parsed by hyper, which (1.12)
//! drops a `Content-Length` that comes with `Transfer-Encoding`, frames the body as chunked
//! and closes the connection after the answer. This test pins that: what the app gets is
//! the chunked body with no `Content-Length`, and nothing can follow on the connection.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};

use super::{
    l7::{detect::Protocol, http},
    ProxyContext,
};
use crate::{
    conn::{testing, Direction},
    state::StateStore,
    telemetry::TrafficLabels,
};

/// The app: reports each request that reaches it (path, `Content-Length`, body), answers
/// 200.
async fn app(
    io: tokio::io::DuplexStream,
    arrived: mpsc::UnboundedSender<(String, Option<String>, Vec<u8>)>,
) {
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let arrived = arrived.clone();
        async move {
            let path = req.uri().path().to_string();
            let length = req
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec());
            let _ = arrived.send((path, length, body.unwrap_or_default()));
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Review cases F85/F86 on the second request of a connection (the review's L3 impact,
/// marked unverified there): `Content-Length` with `Transfer-Encoding`, in either order.
/// The app gets the chunked body (`abc`) with no `Content-Length`, never a body framed by
/// the length; a request smuggled after it in the same bytes never arrives, because the
/// connection is closed after the answer.
#[tokio::test]
async fn a_later_request_with_length_and_chunked_is_framed_by_chunked_and_ends_the_connection() {
    let smuggled = [
        "POST /two HTTP/1.1\r\nHost: web\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /three HTTP/1.1\r\nHost: web\r\n\r\n",
        "POST /two HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /three HTTP/1.1\r\nHost: web\r\n\r\n",
    ];
    for (i, second) in smuggled.iter().enumerate() {
        let ctx = ProxyContext::for_tests(StateStore::new());
        let conn = Arc::new(testing::context(Direction::Inbound));
        let t = ctx.telemetry.clone();
        let reporter = Arc::new(t.requests(TrafficLabels::from(&*conn), t.stats.connection(&conn)));
        let (mut client, proxy_side) = tokio::io::duplex(64 * 1024);
        let (upstream, app_side) = tokio::io::duplex(64 * 1024);
        let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
        tokio::spawn(app(app_side, arrived_tx));
        let proxy = tokio::spawn(http::proxy(
            ctx.clone(),
            conn.clone(),
            reporter,
            Protocol::Http1,
            proxy_side,
            upstream,
        ));
        let first = "GET /one HTTP/1.1\r\nHost: web\r\n\r\n";
        client
            .write_all(format!("{first}{second}").as_bytes())
            .await
            .expect("write");
        let mut replies = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut replies))
            .await
            .expect("the proxy closes the connection")
            .expect("read");
        let replies = String::from_utf8_lossy(&replies);
        let statuses: Vec<&str> = replies
            .match_indices("HTTP/1.1 ")
            .filter_map(|(at, _)| replies[at..].lines().next())
            .collect();
        assert_eq!(
            statuses,
            ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"],
            "case {i}: {replies}"
        );
        let _ = tokio::time::timeout(Duration::from_secs(10), proxy).await;
        let mut got = Vec::new();
        while let Ok(r) = arrived.try_recv() {
            got.push(r);
        }
        assert_eq!(
            got,
            [
                ("/one".to_string(), None, Vec::new()),
                ("/two".to_string(), None, b"abc".to_vec())
            ],
            "case {i}: the chunked body, no length; /three never arrives"
        );
    }
}
