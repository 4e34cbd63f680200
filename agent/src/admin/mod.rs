//! The admin server on a node-local address: liveness, readiness, metrics, the agent's view
//! of its configuration and capture, its account of proxied connections, and the views
//! behind `meshd stat`, `edges` and `tap`, plus the runtime log level.
//!
//! Before routing, [`guard`] refuses what the API must not serve: a `Host` that is not the
//! admin address (DNS rebinding), a body over its limit, a tap beyond the limit of open
//! taps. An HTTP/1 client has [`guard::HEADER_READ_TIMEOUT`] to send a request head.

mod guard;
pub(crate) mod query;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{
    body::{Body, Frame, Incoming},
    header, Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::mpsc;

use crate::{
    agent::Agent, conn::Direction, policy_feed::PolicyStatus, state::SourceStatus,
    telemetry::tap::TapFilter,
};
use guard::{Refused, TapSlots};

type AdminBody = BoxBody<Bytes, Infallible>;

pub(crate) struct Admin {
    agent: Arc<Agent>,
    /// The address the API listens on (a `Host` naming it is allowed).
    address: SocketAddr,
    taps: TapSlots,
    /// One scrape at a time: a scrape rebuilds the certificate series before encoding.
    scrape: std::sync::Mutex<()>,
}

/// `/ready`'s body once the first state is applied: `ready`, then each local workload that
/// is not enrolled and why. The status stays 200: the agent serves the others, and a pod
/// that takes an agent port first must not hold the node's agent unready (nor stall a
/// rolling update); `workloads_not_enrolled` is the metric to alert on.
fn ready_text(not_enrolled: &[(String, String)]) -> String {
    if not_enrolled.is_empty() {
        return "ready\n".to_string();
    }
    let mut s = format!(
        "ready; {} workload(s) not enrolled (their connections are refused or not captured):\n",
        not_enrolled.len()
    );
    for (workload, why) in not_enrolled {
        s.push_str(&format!("  {workload}: {why}\n"));
    }
    s
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}

fn json(value: &impl serde::Serialize) -> Response<AdminBody> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The query string's parameters.
fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    query::parse(req.uri().query().unwrap_or_default())
}

/// The refusal as a response: its status and what is wrong.
fn refusal(r: &Refused) -> Response<AdminBody> {
    let status = match r {
        Refused::Host { .. } => StatusCode::FORBIDDEN,
        Refused::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Refused::TooManyTaps => StatusCode::TOO_MANY_REQUESTS,
    };
    text(status, format!("{r}\n"))
}

/// The `Host` a request is addressed to (HTTP/1 `Host`, else the HTTP/2 `:authority`).
fn host_of(req: &Request<Incoming>) -> Option<&str> {
    match req.headers().get(header::HOST) {
        // A Host that is not text cannot be a loopback name: check it as it is.
        Some(h) => Some(h.to_str().unwrap_or("<not text>")),
        None => req.uri().authority().map(|a| a.as_str()),
    }
}

/// A streaming response body fed by a channel (for `/tap`).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

impl Admin {
    pub(crate) fn new(agent: Arc<Agent>, address: SocketAddr) -> Admin {
        Admin {
            agent,
            address,
            taps: TapSlots::default(),
            scrape: std::sync::Mutex::new(()),
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<AdminBody> {
        if let Err(r) = guard::check_host(host_of(&req), self.address) {
            tracing::warn!(error = %r, path = req.uri().path(), "admin API: refused a request");
            return refusal(&r);
        }
        match (req.method().clone(), req.uri().path()) {
            (Method::PUT, "/log-level") => {
                let body = match read_body(req.into_body()).await {
                    Ok(b) => b,
                    Err(response) => return response,
                };
                match crate::logging::set(&String::from_utf8_lossy(&body)) {
                    Ok(now) => text(StatusCode::OK, format!("{now}\n")),
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                }
            }
            (Method::GET, "/tap") => self.tap(&req),
            (Method::GET, _) => self.route(&req),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "GET, or PUT /log-level\n"),
        }
    }

    /// Streams matching requests as JSON lines until `limit` events or the client leaves.
    fn tap(&self, req: &Request<Incoming>) -> Response<AdminBody> {
        let slot = match self.taps.take() {
            Ok(slot) => slot,
            Err(r) => return refusal(&r),
        };
        let q = query(req);
        let filter = TapFilter {
            workload: q.get("workload").cloned().filter(|s| !s.is_empty()),
            path_prefix: q.get("path").cloned().filter(|s| !s.is_empty()),
            method: q.get("method").cloned().filter(|s| !s.is_empty()),
            direction: q.get("direction").cloned().filter(|s| !s.is_empty()),
        };
        let limit: Option<u64> = q.get("limit").and_then(|l| l.parse().ok());
        let mut events = self.agent.proxy.telemetry.tap.subscribe();
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        tokio::spawn(async move {
            // The tap holds its place until its stream ends.
            let _slot = slot;
            let mut sent = 0u64;
            // A first line, so that a client knows the tap is live.
            if tx
                .send(Bytes::from_static(b"{\"tap\":\"started\"}\n"))
                .await
                .is_err()
            {
                return;
            }
            loop {
                // A client that left frees its tap's place at once, not at the next event.
                let next = tokio::select! {
                    next = events.recv() => next,
                    () = tx.closed() => return,
                };
                let ev = match next {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let line = format!("{{\"tap\":\"lagged\",\"missed\":{n}}}\n");
                        if tx.send(Bytes::from(line)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(_) => return,
                };
                if !filter.matches(&ev) {
                    continue;
                }
                let mut line = serde_json::to_vec(&*ev).unwrap_or_default();
                line.push(b'\n');
                if tx.send(Bytes::from(line)).await.is_err() {
                    return;
                }
                sent += 1;
                if limit.is_some_and(|l| sent >= l) {
                    return;
                }
            }
        });
        let mut r = Response::new(BodyExt::boxed(ChannelBody(rx)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/x-ndjson"),
        );
        r
    }

    /// Who talks to whom, from the connection records.
    fn edges(&self) -> serde_json::Value {
        let state = self.agent.state.load();
        let name_of = |addr: &SocketAddr| {
            state
                .workload_by_ip(&addr.ip())
                .map(|w| w.key())
                .unwrap_or_else(|| addr.ip().to_string())
        };
        let mut edges: BTreeMap<(String, String, String, String, bool), u64> = BTreeMap::new();
        for r in self.agent.proxy.connections.snapshot() {
            let c = &r.conn;
            let (src, dst) = match c.direction {
                Direction::Outbound => {
                    (c.workload.key(), name_of(&c.target().unwrap_or(c.orig_dst)))
                }
                Direction::Inbound => (name_of(&c.peer), c.workload.key()),
            };
            let key = (
                src,
                dst,
                r.client_id().unwrap_or_default(),
                r.server_id().unwrap_or_default(),
                c.tls().is_some(),
            );
            *edges.entry(key).or_default() += 1;
        }
        serde_json::Value::Array(
            edges
                .into_iter()
                .map(|((src, dst, client_id, server_id, secured), connections)| {
                    serde_json::json!({
                        "src": src, "dst": dst, "client_id": client_id, "server_id": server_id,
                        "secured": secured, "connections": connections,
                    })
                })
                .collect(),
        )
    }

    fn route(&self, req: &Request<Incoming>) -> Response<AdminBody> {
        match req.uri().path() {
            "/stat" => {
                let window = query(req)
                    .get("window")
                    .and_then(|w| w.trim_end_matches('s').parse().ok())
                    .unwrap_or(10);
                json(&self.agent.proxy.telemetry.stats.rows(window))
            }
            "/edges" => json(&self.edges()),
            "/authz" => {
                let window = query(req)
                    .get("window")
                    .and_then(|w| w.trim_end_matches('s').parse().ok())
                    .unwrap_or(60);
                json(&self.agent.proxy.telemetry.authz.rows(window))
            }
            "/log-level" => text(StatusCode::OK, format!("{}\n", crate::logging::current().unwrap_or_default())),
            "/live" => text(StatusCode::OK, "live\n"),
            "/ready" => {
                if self.agent.ready.load(std::sync::atomic::Ordering::SeqCst) {
                    text(StatusCode::OK, ready_text(&self.agent.not_enrolled()))
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            "/connections" => json(&self.agent.proxy.connections.snapshot()),
            "/metrics" => {
                let mut r = text(StatusCode::OK, self.metrics());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            "/config_dump" => json(&self.config_dump()),
            "/policy" => self.policy(req),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /live /ready /metrics /config_dump /connections /stat /authz /edges /tap /log-level /policy\n",
            ),
        }
    }

    /// `/policy?workload=NS/NAME&port=N`: the policy that governs that port as the agent
    /// has compiled it (`meshd diagnostics policy`).
    fn policy(&self, req: &Request<Incoming>) -> Response<AdminBody> {
        let q = query(req);
        let workload = q.get("workload").map(String::as_str).unwrap_or_default();
        let port = q.get("port").and_then(|p| p.parse::<u16>().ok());
        let (Some((namespace, name)), Some(port)) = (workload.split_once('/'), port) else {
            return text(
                StatusCode::BAD_REQUEST,
                "usage: /policy?workload=NAMESPACE/NAME&port=PORT (a port from 1 to 65535)\n",
            );
        };
        let store = &self.agent.proxy.policy;
        let compiled = store.load();
        let known = compiled.index.workload(workload).is_some();
        let policy = compiled.port(namespace, name, port);
        json(&serde_json::json!({
            "workload": workload,
            "port": port,
            "compiled": known,
            "defaultPolicy": compiled
                .index
                .workload(workload)
                .map(|w| w.default_policy.name())
                .unwrap_or(compiled.settings.default_policy.name()),
            "generation": store.generation(),
            "policy": &*policy,
            "reports": compiled
                .index
                .reports
                .iter()
                .filter(|r| r.contains(workload) || !r.starts_with("workload "))
                .collect::<Vec<_>>(),
        }))
    }

    fn metrics(&self) -> String {
        let _scrape = self
            .scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let proxy = &self.agent.proxy;
        self.agent.update_capture_metrics();
        if let Some(mesh) = &proxy.mesh {
            let metrics = &proxy.telemetry.metrics;
            // Only the certificates held now (a forgotten identity's series goes).
            metrics.cert_expiration.clear();
            for (id, not_after) in mesh.certs.expiries() {
                let secs = not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or_default();
                proxy
                    .telemetry
                    .metrics
                    .cert_expiration
                    .get_or_create(&crate::telemetry::metrics::IdentityLabels {
                        identity: id.to_string(),
                    })
                    .set(secs);
            }
            proxy
                .telemetry
                .metrics
                .cert_refresh
                .set(mesh.certs.renewals() as i64);
            let now = std::time::SystemTime::now();
            metrics
                .issuer_expiry
                .set(seconds_until(now, mesh.certs.issuer().1));
            let anchors = mesh.certs.trust_anchors();
            for (subject, not_after) in anchors.subjects().iter().zip(anchors.expiries()) {
                metrics
                    .anchor_expiry
                    .get_or_create(&crate::telemetry::metrics::AnchorLabels {
                        subject: subject.clone(),
                    })
                    .set(seconds_until(now, *not_after));
            }
        }
        proxy.telemetry.metrics.encode()
    }

    fn identity_dump(&self) -> serde_json::Value {
        let Some(mesh) = &self.agent.proxy.mesh else {
            return serde_json::Value::Null;
        };
        let unix = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()
        };
        let (issuer, issuer_expiry) = mesh.certs.issuer();
        let anchors = mesh.certs.trust_anchors();
        let certificates: Vec<_> = mesh
            .certs
            .expiries()
            .into_iter()
            .map(|(id, t)| serde_json::json!({"identity": id.to_string(), "notAfter": unix(t)}))
            .collect();
        serde_json::json!({
            "trustDomain": mesh.trust_domain,
            "issuer": issuer, "issuerNotAfter": unix(issuer_expiry),
            "trustAnchors": anchors.subjects(),
            "certificates": certificates,
            "renewals": mesh.certs.renewals(),
            "hboneConnections": mesh.pool.connection_count(),
        })
    }

    fn config_dump(&self) -> serde_json::Value {
        let state = self.agent.applied();
        let workloads: Vec<_> = state
            .workloads
            .values()
            .map(|w| {
                serde_json::json!({
                    "name": w.name, "namespace": w.namespace,
                    "serviceAccount": w.service_account, "node": w.node,
                    "ips": w.ips, "local": w.local.is_some(),
                })
            })
            .collect();
        let services: Vec<_> = state
            .services()
            .map(|s| {
                serde_json::json!({
                    "name": s.name, "namespace": s.namespace, "vip": s.vip,
                    "port": s.port, "endpoints": s.endpoints,
                })
            })
            .collect();
        let sources = self.agent.state.statuses();
        serde_json::json!({
            "node": state.node,
            "configFile": config_file(&sources),
            "configError": config_error(&sources),
            "sources": sources,
            "workloads": workloads,
            "services": services,
            "identity": self.identity_dump(),
            "policy": policy_dump(self.agent.policy.status(), &sources),
            "capture": {
                "pins": self.agent.pins_root(),
                "workloads": self.agent.statuses(),
                "maps": self.agent.map_counts(),
                "attached": self.agent.attachments(),
            },
        })
    }
}

/// Whole seconds from `now` to `t`, negative when `t` is past.
fn seconds_until(now: std::time::SystemTime, t: std::time::SystemTime) -> i64 {
    match t.duration_since(now) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// The compiled policy (`policy`): what the last good configuration's policy holds and
/// reports, and the refusals of a newer one (`error`), which did not apply.
fn policy_dump(status: PolicyStatus, sources: &[SourceStatus]) -> serde_json::Value {
    let errors: Vec<&str> = sources
        .iter()
        .filter_map(|s| s.policy_error.as_deref())
        .collect();
    serde_json::json!({
        "documents": status.documents,
        "workloads": status.workloads,
        "defaultInboundPolicy": status.default_inbound_policy,
        "reports": status.reports,
        "publications": status.publications,
        "error": (!errors.is_empty()).then(|| errors.join("; ")),
    })
}

/// Where the standalone file is (`configFile`), when the file feeds the state.
fn config_file(sources: &[SourceStatus]) -> Option<&str> {
    sources
        .iter()
        .find(|s| s.name == crate::sources::file::NAME)
        .map(|s| s.location.as_str())
}

/// The sources' last errors (`configError`), `None` when every source is fine.
fn config_error(sources: &[SourceStatus]) -> Option<String> {
    let errors: Vec<&str> = sources
        .iter()
        .filter_map(|s| s.last_error.as_deref())
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// Serves the admin API on `listener` until the task is dropped.
pub(crate) async fn serve(admin: Arc<Admin>, listener: tokio::net::TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // Without a timer hyper silently skips the header-read timeout (slowloris).
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(guard::HEADER_READ_TIMEOUT);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_header_list_size(guard::MAX_BODY as u32);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}

/// A request body of at most [`guard::MAX_BODY`] bytes, or the response refusing it (`413`
/// over the limit, `400` when it could not be read).
async fn read_body(body: Incoming) -> Result<Bytes, Response<AdminBody>> {
    let announced = body.size_hint().exact();
    if announced.is_some_and(|n| n > guard::MAX_BODY as u64) {
        return Err(refusal(&Refused::BodyTooLarge));
    }
    match http_body_util::Limited::new(body, guard::MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(refusal(&Refused::BodyTooLarge))
        }
        Err(e) => Err(text(StatusCode::BAD_REQUEST, format!("{e}\n"))),
    }
}

pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn seconds_until_is_negative_once_past() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(super::seconds_until(now, now + Duration::from_secs(90)), 90);
        assert_eq!(
            super::seconds_until(now, now - Duration::from_secs(90)),
            -90
        );
        assert_eq!(super::seconds_until(now, now), 0);
    }

    #[test]
    fn ready_names_each_workload_not_enrolled() {
        assert_eq!(super::ready_text(&[]), "ready\n");
        let text = super::ready_text(&[("default/busy".into(), "cannot listen".into())]);
        assert_eq!(
            text,
            "ready; 1 workload(s) not enrolled (their connections are refused or not captured):\n  default/busy: cannot listen\n"
        );
    }
}
