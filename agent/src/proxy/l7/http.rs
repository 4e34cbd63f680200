//! HTTP proxying of one client connection over one upstream connection, with hyper on both
//! sides: HTTP/1.1 (keep-alive, upgrades such as WebSocket) or HTTP/2 (streams, trailers,
//! gRPC). Every HTTP/1 request head is checked before hyper reads it ([`super::heads`]):
//! ambiguous framing (Content-Length with Transfer-Encoding, differing lengths) is answered
//! 400 and nothing of it reaches the upstream; such refusals are counted.
//! Each request is reported to [`crate::telemetry`] when its response ends.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty};
use hyper::{
    body::{Body, Frame, Incoming},
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Request, Response, StatusCode, Version,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    task::JoinSet,
};

use super::{
    detect::Protocol,
    heads::{CheckedHeads, HeadCheck, HeadTimedOut, HEAD_TIMEOUT},
};
use crate::{
    conn::ConnContext,
    policy::decide::Refused,
    proxy::{authorize::InboundAuthz, context::ProxyContext, error::Error},
    telemetry::authz_stats::AuthzKey,
    telemetry::{Finished, RequestEvent, RequestReporter},
};

/// The byte streams of upgraded connections (WebSocket): part of the connection, so the
/// HTTP session lasts until they end, and they stop with it (dropping the set aborts them).
type Upgrades = Arc<std::sync::Mutex<JoinSet<()>>>;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

enum Sender {
    H1(Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Incoming>>>),
    H2(hyper::client::conn::http2::SendRequest<Incoming>),
}

impl Sender {
    async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => {
                let mut s = s.lock().await;
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                let mut s = s.clone();
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

/// Proxies HTTP from `client` to `upstream` until the client connection ends (and the
/// byte streams it was upgraded to, if any).
pub(crate) async fn proxy<C, U>(
    ctx: Arc<ProxyContext>,
    conn: Arc<ConnContext>,
    reporter: Arc<RequestReporter>,
    authz: Option<Arc<InboundAuthz>>,
    protocol: Protocol,
    client: C,
    upstream: U,
) -> Result<(), Error>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let sender = match protocol {
        Protocol::Http2 => {
            let (s, connection) = crate::proxy::hbone::client_builder()
                .handshake(TokioIo::new(upstream))
                .await
                .map_err(|source| Error::UpstreamHandshake {
                    version: "HTTP/2",
                    source,
                })?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Sender::H2(s)
        }
        _ => {
            let (s, connection) = hyper::client::conn::http1::Builder::new()
                .handshake(TokioIo::new(upstream))
                .await
                .map_err(|source| Error::UpstreamHandshake {
                    version: "HTTP/1.1",
                    source,
                })?;
            tokio::spawn(async move {
                let _ = connection.with_upgrades().await;
            });
            Sender::H1(Arc::new(tokio::sync::Mutex::new(s)))
        }
    };
    let sender = Arc::new(sender);
    let upgrades = Upgrades::default();
    let heads = Arc::new(HeadCheck::default());
    let service = {
        let (ctx, conn, upgrades) = (ctx.clone(), conn.clone(), upgrades.clone());
        hyper::service::service_fn(move |req| {
            let (ctx, conn, upgrades) = (ctx.clone(), conn.clone(), upgrades.clone());
            let (reporter, sender) = (reporter.clone(), sender.clone());
            // Decided before anything is sent; a refused request's `forward` is never
            // polled, so nothing of it leaves.
            let (permit, refused) = match authz.as_ref().map(|a| authorize(a, &req)) {
                None => (None, None),
                Some(Ok(key)) => (authz.clone().map(|a| (a, key)), None),
                Some(Err(refused)) => (None, Some(refused)),
            };
            let forwarded = forward(ctx, conn, reporter, sender, upgrades, req, permit);
            async move {
                Ok::<_, Infallible>(match refused {
                    Some(refused) => refusal(&refused),
                    None => forwarded.await,
                })
            }
        })
    };
    let served = match protocol {
        Protocol::Http2 => {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(client), service)
                .await
        }
        _ => {
            let client = CheckedHeads::new(client, HEAD_TIMEOUT, heads.clone());
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(client), service)
                .with_upgrades()
                .await
        }
    };
    let upgraded = std::mem::take(&mut *upgrades.lock().unwrap_or_else(|p| p.into_inner()));
    upgraded.join_all().await;
    let Err(e) = served else {
        return Ok(());
    };
    if let (true, Some(why)) = (e.is_parse(), heads.refused()) {
        ctx.telemetry.metrics.http_error(&conn, "invalid_request");
        tracing::warn!(direction = conn.direction.as_str(), pod = %conn.workload.name, reason = %why, "refused an HTTP request with ambiguous framing (request smuggling?)");
        return Err(Error::RefusedHead(why));
    }
    if head_timed_out(&e) {
        tracing::info!(direction = conn.direction.as_str(), pod = %conn.workload.name, "closed a connection whose request head did not arrive in time");
        return Err(Error::HeadTimeout(HEAD_TIMEOUT));
    }
    if e.is_parse() || e.is_parse_status() {
        ctx.telemetry.metrics.http_error(&conn, "invalid_request");
        tracing::warn!(direction = conn.direction.as_str(), pod = %conn.workload.name, error = %e, "refused an invalid HTTP request");
        return Err(Error::InvalidHttp(e));
    }
    Err(Error::Http(e))
}

/// Whether hyper failed because a started request head did not arrive in time.
fn head_timed_out(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(|io| io.get_ref())
        .is_some_and(|inner| inner.is::<HeadTimedOut>())
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The header names a message's `Connection` header lists (hop by hop for this message).
pub(crate) fn named_in_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// Removes hop-by-hop headers, and those named by `Connection`; an upgrade keeps
/// `Connection: upgrade` and `Upgrade`. `TE: trailers` (gRPC) passes. An HTTP/2 message
/// has none to remove: `h2` refuses a received message with any of them (RFC 9113
/// §8.2.2), so it is not searched.
pub(crate) fn strip_hop_by_hop(version: Version, headers: &mut HeaderMap, upgrade: bool) {
    // Most messages have none: one pass over the names instead of a lookup per name.
    if version == Version::HTTP_2 || !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let named = named_in_connection(headers);
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    for name in named {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        if let Some(v) = upgrade_value {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, v);
        }
    }
}

pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The parts of a request's report known before the response.
struct Pending {
    reporter: Arc<RequestReporter>,
    conn: Arc<ConnContext>,
    /// Kept only while someone taps.
    tapped: Option<TapFields>,
    started: Instant,
    is_grpc: bool,
    /// The authorization that let the request through, and its `meshd authz` row.
    permit: Option<(Arc<InboundAuthz>, AuthzKey)>,
}

/// What a request's tap event shows of the request itself.
struct TapFields {
    method: String,
    authority: String,
    path: String,
    version: String,
}

impl TapFields {
    fn of<B>(req: &Request<B>) -> TapFields {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(String::from)
            })
            .unwrap_or_default();
        TapFields {
            method: req.method().to_string(),
            authority,
            path: req.uri().path().to_string(),
            version: format!("{:?}", req.version()),
        }
    }
}

impl Pending {
    fn finish(&self, status: u16, grpc: Option<u32>, latency_ms: f64, error: Option<String>) {
        let grpc = if self.is_grpc && status == 200 {
            grpc.or(Some(2))
        } else {
            grpc
        };
        let done = Finished {
            status,
            grpc_status: grpc,
            success: status != 0 && status < 500 && grpc.is_none_or(|g| g == 0) && error.is_none(),
            latency_ms,
        };
        if let Some((authz, key)) = &self.permit {
            authz.finished(
                key.clone(),
                done.success,
                (status != 0).then_some(latency_ms),
            );
        }
        self.reporter.finish(&done, || {
            let t = self.tapped.as_ref()?;
            Some(RequestEvent {
                conn: self.conn.clone(),
                at_unix_ms: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or_default(),
                method: t.method.clone(),
                authority: t.authority.clone(),
                path: t.path.clone(),
                version: t.version.clone(),
                status,
                grpc_status: grpc,
                success: done.success,
                latency_ms,
                error,
            })
        });
    }
}

/// The pod's policy on one request: `Ok` to forward it (with the `meshd authz` row it
/// counts in), else the response that refuses it (nothing of the request is forwarded;
/// the connection stays open).
fn authorize<B>(authz: &InboundAuthz, req: &Request<B>) -> Result<AuthzKey, Refused> {
    let grpc = req.version() == Version::HTTP_2 && is_grpc(req.headers());
    authz.check_http(req.method(), req.uri(), req.headers(), grpc)
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Linkerd's synthesized refusal: an empty body; for gRPC a trailers-only response with
/// `grpc-status`; `l5d-proxy-error` (and `grpc-message`) only for meshed clients.
fn refusal(r: &Refused) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(r.http_status).unwrap_or(StatusCode::FORBIDDEN);
    let mut resp = empty(status);
    let headers = resp.headers_mut();
    if let Some(code) = r.grpc_status {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
        if r.with_error_header {
            headers.insert("grpc-message", HeaderValue::from_static(r.error));
        }
    } else {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    if r.with_error_header {
        headers.insert("l5d-proxy-error", HeaderValue::from_static(r.error));
    }
    resp
}

fn empty(status: StatusCode) -> Response<ProxyBody> {
    let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r
}

async fn forward(
    ctx: Arc<ProxyContext>,
    conn: Arc<ConnContext>,
    reporter: Arc<RequestReporter>,
    sender: Arc<Sender>,
    upgrades: Upgrades,
    mut req: Request<Incoming>,
    permit: Option<(Arc<InboundAuthz>, AuthzKey)>,
) -> Response<ProxyBody> {
    let pending = Pending {
        permit,
        tapped: reporter.tapped().then(|| TapFields::of(&req)),
        reporter,
        conn: conn.clone(),
        started: Instant::now(),
        is_grpc: is_grpc(req.headers()),
    };
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    strip_hop_by_hop(req.version(), req.headers_mut(), upgrade);
    let mut resp = match sender.send(req).await {
        Ok(r) => r,
        Err(e) => {
            let latency = pending.started.elapsed().as_secs_f64() * 1000.0;
            ctx.telemetry
                .metrics
                .http_error(&conn, "upstream_unavailable");
            tracing::info!(direction = conn.direction.as_str(), pod = %conn.workload.name, error = %e, "upstream failed the request");
            pending.finish(502, None, latency, Some(e.to_string()));
            return empty(StatusCode::BAD_GATEWAY);
        }
    };
    let latency = pending.started.elapsed().as_secs_f64() * 1000.0;
    let status = resp.status().as_u16();
    if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) = (client_upgrade, resp.status())
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let copy = async move {
            if let (Ok(c), Ok(u)) = (client_upgrade.await, upstream_upgrade.await) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(u)).await;
            }
        };
        upgrades
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spawn(copy);
        pending.finish(status, None, latency, None);
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, Empty::new().map_err(|never| match never {}).boxed());
    }
    strip_hop_by_hop(resp.version(), resp.headers_mut(), false);
    let header_grpc = grpc_status(resp.headers());
    let (parts, body) = resp.into_parts();
    let observed = Observed {
        inner: body,
        report: Some(Answered {
            pending,
            status,
            header_grpc,
            latency_ms: latency,
        }),
        grpc: None,
    };
    Response::from_parts(parts, observed.boxed())
}

/// A request whose response headers came: reported when the body ends.
struct Answered {
    pending: Pending,
    status: u16,
    header_grpc: Option<u32>,
    latency_ms: f64,
}

impl Answered {
    fn finish(self, trailers_grpc: Option<u32>, error: Option<String>) {
        let grpc = trailers_grpc.or(self.header_grpc);
        self.pending
            .finish(self.status, grpc, self.latency_ms, error);
    }
}

/// A response body that reports the request when it ends (with the gRPC status from the
/// trailers), or when it is dropped before the end.
struct Observed {
    inner: Incoming,
    report: Option<Answered>,
    grpc: Option<u32>,
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(report) = self.report.take() {
            let error =
                (!self.inner.is_end_stream()).then(|| "response body cancelled".to_string());
            report.finish(self.grpc, error);
        }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.grpc = grpc_status(trailers);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(report) = self.report.take() {
                    report.finish(self.grpc, Some(e.to_string()));
                }
            }
            Poll::Ready(None) => {
                if let Some(report) = self.report.take() {
                    report.finish(self.grpc, None);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(Version::HTTP_11, &mut h, false);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "1");

        let mut up = HeaderMap::new();
        up.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        up.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(Version::HTTP_11, &mut up, true);
        assert_eq!(up.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(up.get(header::CONNECTION).unwrap(), "upgrade");

        // Each one alone is found (custom names too), and nothing else is touched.
        for name in &HOP_BY_HOP {
            let mut one = HeaderMap::new();
            one.insert(name.clone(), HeaderValue::from_static("x"));
            one.insert(header::HOST, HeaderValue::from_static("web"));
            strip_hop_by_hop(Version::HTTP_11, &mut one, false);
            assert!(one.get(name).is_none(), "{name} kept");
            assert_eq!(one.len(), 1, "{name}");
        }
        let mut none = HeaderMap::new();
        none.insert(header::HOST, HeaderValue::from_static("web"));
        none.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(Version::HTTP_11, &mut none, false);
        assert_eq!(none.len(), 2);
    }
}
