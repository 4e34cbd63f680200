//! Linkerd's authorization metrics (`inbound_http_authz_allow_total` and friends), with
//! Linkerd's labels in Linkerd's order, then meshd's own `namespace`, `pod` and
//! `deployment`, so that `sum(rate(inbound_http_authz_deny_total[5m])) by (deployment)`
//! works against the agent directly. Every value comes from the mesh's state and the
//! compiled policy, never from what a client sends.

use std::net::SocketAddr;

use prometheus_client::{
    encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::{identity::Identity, policy::meta::Meta, state::Workload};

/// `target_addr`, `target_ip`, `target_port`: the pod's address and port.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TargetLabels {
    pub target_addr: String,
    pub target_ip: String,
    pub target_port: u16,
}

impl From<SocketAddr> for TargetLabels {
    fn from(a: SocketAddr) -> Self {
        let ip = a.ip().to_canonical();
        TargetLabels {
            target_addr: SocketAddr::new(ip, a.port()).to_string(),
            target_ip: ip.to_string(),
            target_port: a.port(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServerLabels {
    pub srv_group: String,
    pub srv_kind: String,
    pub srv_name: String,
}

impl From<&Meta> for ServerLabels {
    fn from(m: &Meta) -> Self {
        ServerLabels {
            srv_group: m.group.clone(),
            srv_kind: m.kind.clone(),
            srv_name: m.name.clone(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub route_group: String,
    pub route_kind: String,
    pub route_name: String,
}

impl From<&Meta> for RouteLabels {
    fn from(m: &Meta) -> Self {
        RouteLabels {
            route_group: m.group.clone(),
            route_kind: m.kind.clone(),
            route_name: m.name.clone(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AuthzLabels {
    pub authz_group: String,
    pub authz_kind: String,
    pub authz_name: String,
}

impl From<&Meta> for AuthzLabels {
    fn from(m: &Meta) -> Self {
        AuthzLabels {
            authz_group: m.group.clone(),
            authz_kind: m.kind.clone(),
            authz_name: m.name.clone(),
        }
    }
}

/// Linkerd's `TlsAccept` rendering: `tls="true",client_id="<Linkerd-form identity>"` for
/// a meshed client, `tls="no_identity",no_tls_reason="no_tls_from_remote"` for plaintext;
/// the label that does not apply is left out, not written empty.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct ClientTlsLabels {
    pub tls: &'static str,
    pub client_id: Option<String>,
    pub no_tls_reason: Option<&'static str>,
}

impl EncodeLabelSet for ClientTlsLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("tls", self.tls).encode(encoder.encode_label())?;
        if let Some(id) = &self.client_id {
            ("client_id", id.as_str()).encode(encoder.encode_label())?;
        }
        if let Some(reason) = self.no_tls_reason {
            ("no_tls_reason", reason).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

impl ClientTlsLabels {
    pub(crate) fn of(identity: Option<&Identity>) -> Self {
        match identity {
            Some(id) => ClientTlsLabels {
                tls: "true",
                client_id: Some(id.linkerd_name()),
                no_tls_reason: None,
            },
            None => ClientTlsLabels {
                tls: "no_identity",
                client_id: None,
                no_tls_reason: Some("no_tls_from_remote"),
            },
        }
    }
}

/// meshd's own labels: the workload the connection was for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WorkloadLabels {
    pub namespace: String,
    pub pod: String,
    pub deployment: String,
}

impl From<&Workload> for WorkloadLabels {
    fn from(w: &Workload) -> Self {
        WorkloadLabels {
            namespace: w.namespace.clone(),
            pod: w.name.clone(),
            deployment: w.deployment.clone(),
        }
    }
}

/// What every authorization series of one connection shares.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct ConnAuthzLabels {
    pub target: TargetLabels,
    pub tls: ClientTlsLabels,
    pub workload: WorkloadLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpAllowLabels {
    #[prometheus(flatten)]
    pub target: TargetLabels,
    #[prometheus(flatten)]
    pub server: ServerLabels,
    #[prometheus(flatten)]
    pub route: RouteLabels,
    #[prometheus(flatten)]
    pub authz: AuthzLabels,
    #[prometheus(flatten)]
    pub tls: ClientTlsLabels,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpDenyLabels {
    #[prometheus(flatten)]
    pub target: TargetLabels,
    #[prometheus(flatten)]
    pub server: ServerLabels,
    #[prometheus(flatten)]
    pub route: RouteLabels,
    #[prometheus(flatten)]
    pub tls: ClientTlsLabels,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

/// `inbound_http_route_not_found_total`, `inbound_tcp_authz_deny_total` and
/// `inbound_tcp_authz_terminate_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServerOnlyLabels {
    #[prometheus(flatten)]
    pub target: TargetLabels,
    #[prometheus(flatten)]
    pub server: ServerLabels,
    #[prometheus(flatten)]
    pub tls: ClientTlsLabels,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TcpAllowLabels {
    #[prometheus(flatten)]
    pub target: TargetLabels,
    #[prometheus(flatten)]
    pub server: ServerLabels,
    #[prometheus(flatten)]
    pub authz: AuthzLabels,
    #[prometheus(flatten)]
    pub tls: ClientTlsLabels,
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

/// The six families.
#[derive(Default)]
pub(crate) struct AuthzMetrics {
    pub http_allow: Family<HttpAllowLabels, Counter>,
    pub http_deny: Family<HttpDenyLabels, Counter>,
    pub http_route_not_found: Family<ServerOnlyLabels, Counter>,
    pub tcp_allow: Family<TcpAllowLabels, Counter>,
    pub tcp_deny: Family<ServerOnlyLabels, Counter>,
    pub tcp_terminate: Family<ServerOnlyLabels, Counter>,
}

impl AuthzMetrics {
    /// Registers the families under Linkerd's names and HELP texts.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "inbound_http_authz_allow",
            "The total number of inbound HTTP requests that were authorized",
            self.http_allow.clone(),
        );
        registry.register(
            "inbound_http_authz_deny",
            "The total number of inbound HTTP requests that could not be processed due to a proxy error",
            self.http_deny.clone(),
        );
        registry.register(
            "inbound_http_route_not_found",
            "The total number of inbound HTTP requests that could not be associated with a route",
            self.http_route_not_found.clone(),
        );
        registry.register(
            "inbound_tcp_authz_allow",
            "The total number of inbound TCP connections that were authorized",
            self.tcp_allow.clone(),
        );
        registry.register(
            "inbound_tcp_authz_deny",
            "The total number of inbound TCP connections that were denied",
            self.tcp_deny.clone(),
        );
        registry.register(
            "inbound_tcp_authz_terminate",
            "The total number of inbound TCP connections that were terminated due to an authorization change",
            self.tcp_terminate.clone(),
        );
    }

    fn server_only(c: &ConnAuthzLabels, server: &Meta) -> ServerOnlyLabels {
        ServerOnlyLabels {
            target: c.target.clone(),
            server: server.into(),
            tls: c.tls.clone(),
            workload: c.workload.clone(),
        }
    }

    pub(crate) fn http_allowed(
        &self,
        c: &ConnAuthzLabels,
        server: &Meta,
        route: &Meta,
        authz: &Meta,
    ) {
        self.http_allow
            .get_or_create(&HttpAllowLabels {
                target: c.target.clone(),
                server: server.into(),
                route: route.into(),
                authz: authz.into(),
                tls: c.tls.clone(),
                workload: c.workload.clone(),
            })
            .inc();
    }

    pub(crate) fn http_denied(&self, c: &ConnAuthzLabels, server: &Meta, route: &Meta) {
        self.http_deny
            .get_or_create(&HttpDenyLabels {
                target: c.target.clone(),
                server: server.into(),
                route: route.into(),
                tls: c.tls.clone(),
                workload: c.workload.clone(),
            })
            .inc();
    }

    pub(crate) fn route_not_found(&self, c: &ConnAuthzLabels, server: &Meta) {
        self.http_route_not_found
            .get_or_create(&Self::server_only(c, server))
            .inc();
    }

    pub(crate) fn tcp_allowed(&self, c: &ConnAuthzLabels, server: &Meta, authz: &Meta) {
        self.tcp_allow
            .get_or_create(&TcpAllowLabels {
                target: c.target.clone(),
                server: server.into(),
                authz: authz.into(),
                tls: c.tls.clone(),
                workload: c.workload.clone(),
            })
            .inc();
    }

    pub(crate) fn tcp_denied(&self, c: &ConnAuthzLabels, server: &Meta) {
        self.tcp_deny
            .get_or_create(&Self::server_only(c, server))
            .inc();
    }

    pub(crate) fn tcp_terminated(&self, c: &ConnAuthzLabels, server: &Meta) {
        self.tcp_terminate
            .get_or_create(&Self::server_only(c, server))
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact text Linkerd emits for the spec's example (§3), with meshd's own labels
    /// after Linkerd's.
    #[test]
    fn labels_are_linkerds_in_linkerds_order_then_meshds() {
        let m = AuthzMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let client: Identity = "spiffe://cluster.local/ns/shop/sa/frontend"
            .parse()
            .unwrap();
        let base = |id: Option<&Identity>| ConnAuthzLabels {
            target: "10.42.0.50:8080".parse::<SocketAddr>().unwrap().into(),
            tls: ClientTlsLabels::of(id),
            workload: WorkloadLabels {
                namespace: "shop".into(),
                pod: "web-1".into(),
                deployment: "web".into(),
            },
        };
        let server = Meta::new("policy.linkerd.io", "server", "web-http");
        let route = Meta::new("", "default", "default");
        let authz = Meta::new(
            "policy.linkerd.io",
            "authorizationpolicy",
            "web-from-frontend",
        );
        m.http_allowed(&base(Some(&client)), &server, &route, &authz);
        m.http_denied(&base(None), &server, &route);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"inbound_http_authz_allow_total{target_addr="10.42.0.50:8080",target_ip="10.42.0.50",target_port="8080",srv_group="policy.linkerd.io",srv_kind="server",srv_name="web-http",route_group="",route_kind="default",route_name="default",authz_group="policy.linkerd.io",authz_kind="authorizationpolicy",authz_name="web-from-frontend",tls="true",client_id="frontend.shop.serviceaccount.identity.linkerd.cluster.local",namespace="shop",pod="web-1",deployment="web"} 1"#), "{text}");
        assert!(text.contains(r#"inbound_http_authz_deny_total{target_addr="10.42.0.50:8080",target_ip="10.42.0.50",target_port="8080",srv_group="policy.linkerd.io",srv_kind="server",srv_name="web-http",route_group="",route_kind="default",route_name="default",tls="no_identity",no_tls_reason="no_tls_from_remote",namespace="shop",pod="web-1",deployment="web"} 1"#), "{text}");
        assert!(
            !text.contains("inbound_tcp_authz_allow_total{"),
            "families appear once used"
        );
    }
}
