//! Ambiguous HTTP/1 framing on a later request of a keep-alive connection, through the real
//! HTTP proxy ([`super::l7::http::proxy`]): every request head is checked before hyper
//! reads it ([`super::l7::heads`]), so a later request is refused (`400`) as the first one
//! is, and nothing of it reaches the app. And the head timeout: a trickled head is cut off,
//! an idle connection between requests is not.

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

/// Sends `first` then `second` on one connection through the proxy: the status lines the
/// client gets, the requests the app got, the proxy's result and its metrics.
async fn through_the_proxy(
    first: &str,
    second: &[u8],
) -> (
    Vec<String>,
    Vec<(String, Option<String>, Vec<u8>)>,
    Option<String>,
    String,
) {
    let ctx = ProxyContext::for_tests(StateStore::new());
    let conn = Arc::new(testing::context(Direction::Inbound));
    let t = ctx.telemetry.clone();
    let reporter = Arc::new(t.requests(TrafficLabels::from(&*conn), t.stats.connection(&conn)));
    let (client, proxy_side) = tokio::io::duplex(1 << 20);
    let (upstream, app_side) = tokio::io::duplex(64 * 1024);
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    tokio::spawn(app(app_side, arrived_tx));
    let proxy = tokio::spawn(http::proxy(
        ctx.clone(),
        conn.clone(),
        reporter,
        None,
        Protocol::Http1,
        proxy_side,
        upstream,
    ));
    let mut bytes = first.as_bytes().to_vec();
    bytes.extend_from_slice(second);
    let (mut reader, mut writer) = tokio::io::split(client);
    let (written, read) = tokio::join!(writer.write_all(&bytes), async {
        let mut replies = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut replies))
            .await
            .map(|r| r.map(|_| replies))
    });
    // The proxy may stop reading (a refused head): what it did not read is not an error.
    let _ = written;
    let replies = read
        .expect("the proxy closes the connection")
        .expect("read");
    let replies = String::from_utf8_lossy(&replies).into_owned();
    let statuses = replies
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| replies[at..].lines().next())
        .map(str::to_string)
        .collect();
    let result = tokio::time::timeout(Duration::from_secs(10), proxy)
        .await
        .expect("the proxy ends")
        .expect("join");
    let mut got = Vec::new();
    while let Ok(r) = arrived.try_recv() {
        got.push(r);
    }
    (
        statuses,
        got,
        result.err().map(|e| e.to_string()),
        ctx.telemetry.metrics.encode(),
    )
}

/// The `invalid_request` errors counted.
fn invalid_requests(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| l.contains("invalid_request") && !l.starts_with('#'))
        .collect()
}

/// Review cases F85/F86 (and differing lengths, the review's head over 16 KiB with both
/// headers, and a head over the 64 KiB limit) on the second request of a keep-alive connection: answered `400` after
/// the first request's `200`, nothing of it (nor what follows it) reaches the app, the
/// refusal is counted once as `invalid_request` and is the connection's error.
#[tokio::test]
async fn a_later_request_with_ambiguous_framing_is_refused_and_never_reaches_the_app() {
    let filler = format!("X-Filler: {}\r\n", "a".repeat(17 * 1024));
    let cases = [
        ("length then chunked", "POST /two HTTP/1.1\r\nHost: web\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /three HTTP/1.1\r\nHost: web\r\n\r\n".to_string(), "content-length with transfer-encoding"),
        ("chunked then length", "POST /two HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /three HTTP/1.1\r\nHost: web\r\n\r\n".to_string(), "content-length with transfer-encoding"),
        ("two lengths", "POST /two HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde".to_string(), "conflicting content-length values"),
        ("after 16 KiB", format!("POST /two HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n{filler}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), "content-length with transfer-encoding"),
        ("a head over 64 KiB", format!("GET /two HTTP/1.1\r\nHost: web\r\n{big}\r\n", big = filler.repeat(4)), "request head over 65536 bytes"),
    ];
    for (case, second, why) in cases {
        // The first request has a body by length, so that the check follows the framing.
        let first = "POST /one HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello";
        let (statuses, got, error, metrics) = through_the_proxy(first, second.as_bytes()).await;
        assert_eq!(
            statuses,
            ["HTTP/1.1 200 OK", "HTTP/1.1 400 Bad Request"],
            "{case}"
        );
        assert_eq!(
            got,
            [("/one".to_string(), Some("5".to_string()), b"hello".to_vec())],
            "{case}: only the first request reaches the app"
        );
        assert_eq!(
            error.as_deref(),
            Some(&*format!("refused: {why}")),
            "{case}"
        );
        let counted = invalid_requests(&metrics);
        assert_eq!(counted.len(), 1, "{case}: {counted:?}");
        assert!(counted[0].ends_with(" 1"), "{case}: {counted:?}");
    }
}

/// The counterpart: requests framed by length and by chunks (with an extension and a
/// trailer), one after the other on one connection and in any split, all reach the app
/// intact; the check does not lose its place in the stream.
#[tokio::test]
async fn well_framed_requests_pass_in_order() {
    let second = "POST /two HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\nPOST /three HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\nConnection: close\r\n\r\nfg";
    let first = "POST /one HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello";
    let (statuses, got, error, metrics) = through_the_proxy(first, second.as_bytes()).await;
    assert_eq!(statuses, ["HTTP/1.1 200 OK"; 3]);
    let paths: Vec<(&str, &[u8])> = got
        .iter()
        .map(|(p, _, b)| (p.as_str(), b.as_slice()))
        .collect();
    assert_eq!(
        paths,
        [
            ("/one", &b"hello"[..]),
            ("/two", &b"abcde"[..]),
            ("/three", &b"fg"[..])
        ]
    );
    assert!(error.is_none(), "{error:?}");
    assert!(invalid_requests(&metrics).is_empty());
}

/// The head timeout (review L5): a head trickled a byte at a time is cut off once it has
/// taken longer than the timeout, with the typed error; a connection idle between two
/// requests for longer than the timeout is not (only a started head is timed).
#[tokio::test]
async fn a_trickled_head_is_cut_off_and_an_idle_connection_is_not() {
    use super::l7::heads::{CheckedHeads, HeadCheck};
    let timeout = Duration::from_millis(300);
    let (mut client, proxy_side) = tokio::io::duplex(64 * 1024);
    let mut checked = CheckedHeads::new(proxy_side, timeout, Arc::new(HeadCheck::default()));
    let request = b"GET /one HTTP/1.1\r\nHost: web\r\n\r\n";
    client.write_all(request).await.unwrap();
    let mut got = vec![0u8; request.len()];
    checked.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, request);
    // Idle three times the timeout, then the next request, whole.
    let mut buf = [0u8; 64];
    let idle = tokio::time::timeout(3 * timeout, checked.read(&mut buf)).await;
    assert!(
        idle.is_err(),
        "still waiting for the next request: {idle:?}"
    );
    client.write_all(request).await.unwrap();
    checked.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, request);
    // A trickled head: a byte every 50 ms, forever.
    let started = tokio::time::Instant::now();
    let trickle = async {
        for b in b"GET /slow HTTP/1.1\r\nHost: web\r\nX-A: ".iter().cycle() {
            if client.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let read = async { checked.read(&mut buf).await };
    let result = tokio::select! {
        r = read => r,
        () = trickle => panic!("the trickle ended"),
    };
    let err = result.expect_err("the head is cut off");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(err.to_string(), "request head not complete within 0s");
    let took = started.elapsed();
    assert!(
        took >= timeout && took < 10 * timeout,
        "cut off after {took:?}"
    );
}
