//! The label sets of a connection's metrics, derived from its [`ConnContext`]: Linkerd's
//! (`dst_*` and `server_id` on outbound traffic, `client_id` on inbound). Every value is
//! bounded: workload names and identities from the mesh's own state, never anything a
//! client sends.

use prometheus_client::encoding::EncodeLabelSet;

use crate::conn::{ConnContext, Direction};

/// Who a request or connection was for, and with whom.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TrafficLabels {
    pub direction: &'static str,
    pub namespace: String,
    pub pod: String,
    pub deployment: String,
    /// `true` for mutual TLS between agents, else `no_identity`.
    pub tls: &'static str,
    pub client_id: Option<String>,
    pub server_id: Option<String>,
    pub dst_namespace: Option<String>,
    pub dst_deployment: Option<String>,
    pub dst_pod: Option<String>,
    pub dst_service: Option<String>,
}

impl From<&ConnContext> for TrafficLabels {
    fn from(c: &ConnContext) -> TrafficLabels {
        let outbound = c.direction == Direction::Outbound;
        let tls = c.tls();
        let dst = c.peer_workload().filter(|_| outbound);
        TrafficLabels {
            direction: c.direction.as_str(),
            namespace: c.workload.namespace.clone(),
            pod: c.workload.name.clone(),
            deployment: c.workload.deployment.clone(),
            tls: if tls.is_some() { "true" } else { "no_identity" },
            client_id: tls
                .and_then(|t| t.client.as_ref())
                .filter(|_| !outbound)
                .map(ToString::to_string),
            server_id: tls.filter(|_| outbound).map(|t| t.server.to_string()),
            dst_namespace: dst.map(|w| w.namespace.clone()),
            dst_deployment: dst.map(|w| w.deployment.clone()),
            dst_pod: dst.map(|w| w.name.clone()),
            dst_service: c.service().filter(|_| outbound).map(|s| s.key()),
        }
    }
}

/// HTTP requests the proxy refused or failed, per workload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrorLabels {
    pub direction: &'static str,
    pub namespace: String,
    pub pod: String,
    /// `invalid_request` (unparseable or ambiguous framing, e.g. request smuggling),
    /// `upstream_unavailable`.
    pub error: &'static str,
}

impl ErrorLabels {
    pub(crate) fn new(c: &ConnContext, error: &'static str) -> ErrorLabels {
        ErrorLabels {
            direction: c.direction.as_str(),
            namespace: c.workload.namespace.clone(),
            pod: c.workload.name.clone(),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        conn::{testing::*, Tls},
        state::ServicePort,
    };

    fn tls(client: &str, server: &str) -> Tls {
        Tls {
            client: Some(identity(client)),
            server: identity(server),
        }
    }

    /// Outbound: the destination's workload and service, and the server's identity; not
    /// the client's (it is this workload's own).
    #[test]
    fn outbound_labels_name_the_destination_and_the_server() {
        let c = context(Direction::Outbound);
        let plain = TrafficLabels::from(&c);
        assert_eq!(
            (plain.direction, plain.tls, &plain.dst_pod, &plain.server_id),
            ("outbound", "no_identity", &None, &None)
        );
        c.route(
            "10.0.0.3:8080".parse().expect("target"),
            Some(Arc::new(ServicePort {
                name: "db".into(),
                namespace: "default".into(),
                vip: "10.96.0.1".parse().expect("vip"),
                port: 80,
                endpoints: vec![],
            })),
        );
        c.set_peer_workload(workload("db-1", "db", "10.0.0.3"));
        c.secure(tls("web", "db"));
        let l = TrafficLabels::from(&c);
        assert_eq!(
            l,
            TrafficLabels {
                direction: "outbound",
                namespace: "default".into(),
                pod: "web-1".into(),
                deployment: "web".into(),
                tls: "true",
                client_id: None,
                server_id: Some("spiffe://cluster.local/ns/default/sa/db".into()),
                dst_namespace: Some("default".into()),
                dst_deployment: Some("db".into()),
                dst_pod: Some("db-1".into()),
                dst_service: Some("default/db".into()),
            }
        );
    }

    /// Inbound: the client's identity only; no `dst_*` (the destination is this workload).
    #[test]
    fn inbound_labels_name_the_client_identity() {
        let c = context(Direction::Inbound)
            .with_peer_workload(Some(workload("curl-1", "curl", "10.0.0.1")))
            .with_tls(tls("curl", "web"));
        c.route("127.0.0.1:8080".parse().expect("app"), None);
        let l = TrafficLabels::from(&c);
        assert_eq!(
            l,
            TrafficLabels {
                direction: "inbound",
                namespace: "default".into(),
                pod: "web-1".into(),
                deployment: "web".into(),
                tls: "true",
                client_id: Some("spiffe://cluster.local/ns/default/sa/curl".into()),
                server_id: None,
                dst_namespace: None,
                dst_deployment: None,
                dst_pod: None,
                dst_service: None,
            }
        );
        let e = ErrorLabels::new(&c, "invalid_request");
        assert_eq!(
            (e.direction, e.namespace.as_str(), e.pod.as_str()),
            ("inbound", "default", "web-1")
        );
    }
}
