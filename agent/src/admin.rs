//! The admin server on a node-local address: liveness, readiness, the agent's view of its
//! configuration and capture, and its account of proxied connections.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::{agent::Agent, sources::file::FileSource};

pub struct Admin {
    pub agent: Arc<Agent>,
    pub source: Arc<FileSource>,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

impl Admin {
    fn route(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        match req.uri().path() {
            "/live" => text(StatusCode::OK, "live\n"),
            "/ready" => {
                if self.agent.ready.load(std::sync::atomic::Ordering::SeqCst) {
                    text(StatusCode::OK, "ready\n")
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
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /live /ready /metrics /config_dump /connections\n",
            ),
        }
    }

    fn metrics(&self) -> String {
        let proxy = &self.agent.proxy;
        if let Some(mesh) = &proxy.mesh {
            for (id, not_after) in mesh.certs.expiries() {
                let secs = not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or_default();
                proxy
                    .telemetry
                    .metrics
                    .cert_expiration
                    .get_or_create(&crate::metrics::IdentityLabels {
                        identity: id.to_string(),
                    })
                    .set(secs);
            }
            proxy
                .telemetry
                .metrics
                .cert_refresh
                .set(mesh.certs.renewals() as i64);
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
        let state = self.agent.state.load();
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
                    "port": s.port, "endpoints": s.endpoints.addrs(),
                })
            })
            .collect();
        let last_error = self
            .source
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        serde_json::json!({
            "node": state.node,
            "configFile": self.source.path,
            "configError": last_error,
            "workloads": workloads,
            "services": services,
            "identity": self.identity_dump(),
            "capture": {
                "pins": self.agent.pins_root(),
                "workloads": self.agent.statuses(),
                "maps": self.agent.map_counts(),
                "attached": self.agent.attachments(),
            },
        })
    }
}

/// Serves the admin API on `listener` until the task is dropped.
pub async fn serve(admin: Arc<Admin>, listener: tokio::net::TcpListener) {
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
                async move { Ok::<_, Infallible>(admin.route(&req)) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
