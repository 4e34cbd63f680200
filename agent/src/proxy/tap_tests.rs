//! `meshd tap` through the real HTTP proxy ([`super::http::proxy`]): which requests a tap
//! shows is decided when a request starts, so a request already in flight when the tap opens
//! is counted but not shown, and one that starts after it is shown.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::{
    l7::{detect::Protocol, http},
    ProxyContext,
};
use crate::{
    conn::{testing, ConnContext, Direction},
    state::StateStore,
    telemetry::{Telemetry, TrafficLabels},
};

fn context() -> Arc<ProxyContext> {
    ProxyContext::for_tests(StateStore::new())
}

/// An inbound connection of `default/web-1` (deployment `web`), plaintext.
fn conn() -> Arc<ConnContext> {
    Arc::new(testing::context(Direction::Inbound))
}

/// The app behind the proxy: tells `arrived` the path of each request as it arrives, and
/// answers `/slow` only once `release` fires; every answer is 200 with the path as body.
async fn app(
    io: tokio::io::DuplexStream,
    arrived: mpsc::UnboundedSender<String>,
    release: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
) {
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (arrived, release) = (arrived.clone(), release.clone());
        async move {
            let path = req.uri().path().to_string();
            let _ = arrived.send(path.clone());
            if path == "/slow" {
                if let Some(rx) = release.lock().await.take() {
                    let _ = rx.await;
                }
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(path))))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Sends one GET through the proxy and reads the whole response body.
async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> String {
    let req = Request::get(path)
        .header("host", "web")
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A tap shows exactly the requests that started after it opened: `/slow` reaches the app
/// before the tap opens and ends after it (counted, not shown); `/after` starts and ends
/// while the tap is open (shown, with its path). Both through the proxy's real request
/// handling, each on its own client connection, as a workload's row counts them.
#[tokio::test]
async fn a_request_in_flight_when_the_tap_opens_is_counted_not_shown() {
    let ctx = context();
    let conn = conn();
    let t: Arc<Telemetry> = ctx.telemetry.clone();
    let reporter = Arc::new(t.requests(TrafficLabels::from(&*conn), t.stats.connection(&conn)));
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = oneshot::channel();
    let release = Arc::new(Mutex::new(Some(release_rx)));

    // One client connection through the proxy to the app.
    let connect = || {
        let (client, proxy_side) = tokio::io::duplex(64 * 1024);
        let (upstream, app_side) = tokio::io::duplex(64 * 1024);
        tokio::spawn(app(app_side, arrived_tx.clone(), release.clone()));
        tokio::spawn(http::proxy(
            ctx.clone(),
            conn.clone(),
            reporter.clone(),
            None,
            Protocol::Http1,
            proxy_side,
            upstream,
        ));
        async move {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
                .await
                .expect("client handshake");
            tokio::spawn(conn);
            sender
        }
    };

    assert!(!reporter.tapped());
    let mut first = connect().await;
    let slow = tokio::spawn(async move { get(&mut first, "/slow").await });
    assert_eq!(
        within("/slow to reach the app", arrived.recv())
            .await
            .as_deref(),
        Some("/slow")
    );

    let mut tap = t.tap.subscribe();
    assert!(reporter.tapped());
    let mut second = connect().await;
    assert_eq!(within("/after", get(&mut second, "/after")).await, "/after");
    let shown = within("the tap event of /after", tap.recv())
        .await
        .expect("event");
    assert_eq!((shown.path.as_str(), shown.status), ("/after", 200));

    release_tx.send(()).expect("release /slow");
    assert_eq!(within("/slow", slow).await.expect("join"), "/slow");
    // Wait until /slow is reported (counted), then nothing more may be on the tap.
    within("/slow to be counted", async {
        while t.stats.rows(60).first().map(|r| r.requests) != Some(2) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let row = &t.stats.rows(60)[0];
    assert_eq!((row.requests, row.successes), (2, 2));
    assert!(
        tap.try_recv().is_err(),
        "the request that started before the tap was shown"
    );
}
