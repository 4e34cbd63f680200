//! Authorization of inbound connections and requests (Linkerd's model, `crate::policy`):
//! one [`InboundAuthz`] per inbound connection holds the policy of its (pod, port), fetched
//! once and fetched again only when a new policy is published, the client (identity from
//! mutual TLS, address), and the labels of the connection's authorization metrics.
//!
//! - TCP path (opaque ports and Servers, and connections that are not HTTP):
//!   [`InboundAuthz::check_tcp`] once, before any byte reaches the app, and again on each
//!   policy change while the connection is open ([`watch_tcp`]): one that is no longer
//!   allowed is closed and counted (`inbound_tcp_authz_terminate_total`).
//! - HTTP: [`InboundAuthz::check_http`] on every request, against the current policy:
//!   refused with 404 (no route) or 403 (no authorization), gRPC status 5 or 7, with
//!   `l5d-proxy-error` only for meshed clients; the connection stays open.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use hyper::{HeaderMap, Method, Uri};

use crate::{
    identity::Identity,
    policy::{
        decide::{Refused, TcpOutcome},
        decide_http, decide_tcp,
        meta::Meta,
        Client, HttpOutcome, PolicyStore, PortPolicy, RequestHead,
    },
    proxy::{connections::Connections, context::PodContext, error::Unauthorized},
    telemetry::{
        authz::{AuthzMetrics, ClientTlsLabels, ConnAuthzLabels, WorkloadLabels},
        authz_stats::AuthzKey,
        stats::WorkloadStats,
        Telemetry,
    },
};

pub(crate) struct InboundAuthz {
    store: Arc<PolicyStore>,
    namespace: String,
    name: String,
    port: u16,
    /// The policy as of a generation of the store.
    current: Mutex<(u64, Arc<PortPolicy>)>,
    pub client: Client,
    client_addr: SocketAddr,
    labels: ConnAuthzLabels,
    telemetry: Arc<Telemetry>,
    /// The workload's `meshd stat` row, for the unauthorized column.
    stats: WorkloadStats,
    /// Set once [`InboundAuthz::check_tcp`] allowed the connection.
    tcp_allowed: AtomicBool,
}

impl InboundAuthz {
    /// The authorization of a connection from `client_addr` (with the client's identity
    /// when it came over mutual TLS) to `target`, the pod's address and port.
    pub(crate) fn new(
        store: Arc<PolicyStore>,
        telemetry: Arc<Telemetry>,
        pod: &PodContext,
        target: SocketAddr,
        client_addr: SocketAddr,
        identity: Option<Identity>,
        stats: WorkloadStats,
    ) -> Arc<InboundAuthz> {
        let w = &pod.workload;
        let generation = store.generation();
        let policy = store.load().port(&w.namespace, &w.name, target.port());
        Arc::new(InboundAuthz {
            labels: ConnAuthzLabels {
                target: target.into(),
                tls: ClientTlsLabels::of(identity.as_ref()),
                workload: WorkloadLabels::from(&**w),
            },
            client: Client {
                identity,
                addr: client_addr.ip().to_canonical(),
            },
            client_addr,
            store,
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            port: target.port(),
            current: Mutex::new((generation, policy)),
            telemetry,
            stats,
            tcp_allowed: AtomicBool::new(false),
        })
    }

    fn authz_metrics(&self) -> &AuthzMetrics {
        &self.telemetry.metrics.authz
    }

    fn key(&self, server: &Meta, route: &Meta, authz: Option<&Meta>) -> AuthzKey {
        let w = &self.labels.workload;
        AuthzKey::new(&w.namespace, &w.deployment, server, route, authz)
    }

    /// An allowed request ended (for `meshd authz`).
    pub(crate) fn finished(&self, key: AuthzKey, success: bool, latency_ms: Option<f64>) {
        self.telemetry.authz.allowed(key, success, latency_ms);
    }

    /// The policy now: the one held, unless a newer one was published.
    pub(crate) fn policy(&self) -> Arc<PortPolicy> {
        let generation = self.store.generation();
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != generation {
            let fresh = self
                .store
                .load()
                .port(&self.namespace, &self.name, self.port);
            *current = (generation, fresh);
        }
        current.1.clone()
    }

    /// Whether the Server speaks a protocol that is decided per connection only (opaque,
    /// TLS): no HTTP detection.
    pub(crate) fn is_opaque(&self) -> bool {
        use crate::policy::resources::ProxyProtocol;
        matches!(
            self.policy().protocol,
            ProxyProtocol::Opaque | ProxyProtocol::Tls
        )
    }

    /// Decides the connection on the TCP path, counts and logs it; once allowed, later
    /// calls say so again without deciding or counting twice.
    pub(crate) fn check_tcp(&self) -> Result<(), Unauthorized> {
        if self.tcp_allowed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let policy = self.policy();
        let d = decide_tcp(&policy, &self.client);
        let server = d.server;
        match d.outcome {
            TcpOutcome::Allowed { authz, audit } => {
                self.authz_metrics()
                    .tcp_allowed(&self.labels, server, authz);
                if audit {
                    tracing::info!(server.group = %server.group, server.kind = %server.kind, server.name = %server.name, tls = self.labels.tls.tls, client = %self.client_addr, authz.group = %authz.group, authz.kind = %authz.kind, authz.name = %authz.name, "Connection allowed");
                } else {
                    tracing::debug!(server.name = %server.name, client = %self.client_addr, authz.kind = %authz.kind, authz.name = %authz.name, "Connection authorized");
                }
                self.tcp_allowed.store(true, Ordering::Relaxed);
                Ok(())
            }
            TcpOutcome::Denied(_) => {
                self.authz_metrics().tcp_denied(&self.labels, server);
                self.stats.unauthorized();
                let error = d.error().unwrap_or_default();
                tracing::info!(server.group = %server.group, server.kind = %server.kind, server.name = %server.name, tls = self.labels.tls.tls, client = %self.client_addr, %error, "Connection denied");
                Err(Unauthorized(error))
            }
        }
    }

    /// Decides one request against the current policy: `Ok` with the row of `meshd authz`
    /// it counts in once it ends; `Err` is the response to send instead of forwarding it.
    pub(crate) fn check_http(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        grpc: bool,
    ) -> Result<AuthzKey, Refused> {
        let policy = self.policy();
        let head = RequestHead {
            method,
            uri,
            headers,
        };
        let d = decide_http(&policy, &self.client, &head);
        let server = d.server;
        match d.outcome {
            HttpOutcome::Allowed {
                route,
                authz,
                audit,
            } => {
                self.authz_metrics()
                    .http_allowed(&self.labels, server, route, authz);
                if audit {
                    tracing::info!(server.group = %server.group, server.kind = %server.kind, server.name = %server.name, route.group = %route.group, route.kind = %route.kind, route.name = %route.name, client.tls = self.labels.tls.tls, client.ip = %self.client.addr, authz.group = %authz.group, authz.kind = %authz.kind, authz.name = %authz.name, "Request allowed");
                }
                return Ok(self.key(server, route, Some(authz)));
            }
            HttpOutcome::Unauthorized { route } => {
                self.authz_metrics()
                    .http_denied(&self.labels, server, route);
                self.telemetry
                    .authz
                    .unauthorized(self.key(server, route, None));
                tracing::info!(server.group = %server.group, server.kind = %server.kind, server.name = %server.name, route.group = %route.group, route.kind = %route.kind, route.name = %route.name, client.tls = self.labels.tls.tls, client.ip = %self.client.addr, "Request denied");
            }
            HttpOutcome::RouteNotFound => {
                self.authz_metrics().route_not_found(&self.labels, server);
                tracing::info!(server.group = %server.group, server.kind = %server.kind, server.name = %server.name, client.tls = self.labels.tls.tls, client.ip = %self.client.addr, "Request denied: no route found for request");
            }
        }
        self.stats.unauthorized();
        // A decision that is not an allow always has a refusal; were it not so, refuse
        // with 403 rather than forward.
        Err(d.refusal(&self.client, grpc).unwrap_or(Refused {
            http_status: 403,
            grpc_status: grpc.then_some(7),
            error: "unauthorized request on route",
            with_error_header: self.client.is_meshed(),
        }))
    }
}

/// Re-checks an allowed TCP connection each time a new policy is published, and closes it
/// (through the registry, by `id`) once it is no longer allowed.
pub(crate) async fn watch_tcp(authz: Arc<InboundAuthz>, connections: Arc<Connections>, id: u64) {
    let mut changes = authz.store.subscribe();
    changes.mark_unchanged();
    while changes.changed().await.is_ok() {
        let policy = authz.policy();
        let d = decide_tcp(&policy, &authz.client);
        if !d.is_allowed() {
            let server = d.server;
            authz.authz_metrics().tcp_terminated(&authz.labels, server);
            tracing::info!(server.group = %server.group, server.kind = %server.kind, server.name = %server.name, tls = authz.labels.tls.tls, client = %authz.client_addr, "Connection terminated due to policy change");
            authz.stats.unauthorized();
            connections.cancel(id);
            return;
        }
    }
}
