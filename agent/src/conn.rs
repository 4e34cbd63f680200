//! One proxied connection's context: who and where, typed, written once. The proxy makes a
//! [`ConnContext`] when it accepts a connection and registers it
//! ([`crate::proxy::connections`]); everything reported about the connection is derived from
//! it at the telemetry edge: its metric labels, its `/connections` record, its `meshd stat`
//! row and the tap events of its requests. Authorization reads the same value.
//!
//! What is learned after the accept (the endpoint dialed, the service, the peer's
//! workload for an outbound connection, mutual TLS) is set once, by the handler that learns
//! it, through the small setters below; the value itself is shared (`Arc`) and never copied.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::SystemTime,
};

use serde::Serialize;

use crate::{
    identity::Identity,
    state::{ServicePort, Workload},
};

/// Which way a connection goes, as the enrolled workload sees it: the `direction` label of
/// every traffic metric and a field of every connection record and tap event.
/// `outbound`: the workload is the client; `inbound`: the workload is the server.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Mutual TLS (HBONE) on the hop between agents, with the identities it proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tls {
    /// The client's identity: from its certificate (inbound), or ours (outbound).
    pub client: Option<Identity>,
    /// The server's identity: verified (outbound), or ours (inbound).
    pub server: Identity,
}

/// Where the agent connected the client to.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// The address dialed: an endpoint of `service`, the original destination, or (inbound)
    /// the app on the pod's loopback.
    pub target: SocketAddr,
    /// The service the original destination belongs to (outbound), if any.
    pub service: Option<Arc<ServicePort>>,
}

/// Everything known about one proxied connection.
#[derive(Debug)]
pub(crate) struct ConnContext {
    /// The registry's id (from 1); 0 until the connection is registered.
    pub id: u64,
    pub direction: Direction,
    /// The enrolled workload this connection belongs to (the client outbound, the server
    /// inbound).
    pub workload: Arc<Workload>,
    /// The client, as the agent's listener saw it.
    pub peer: SocketAddr,
    /// Where the client meant to go.
    pub orig_dst: SocketAddr,
    pub opened: SystemTime,
    /// The mesh workload at the other end, when the mesh knows it by address: the
    /// destination (outbound, once routed) or the client (inbound).
    peer_workload: OnceLock<Arc<Workload>>,
    route: OnceLock<Route>,
    tls: OnceLock<Tls>,
}

impl ConnContext {
    /// A connection just accepted: opened now, not routed yet, no TLS.
    pub(crate) fn new(
        direction: Direction,
        workload: Arc<Workload>,
        peer: SocketAddr,
        orig_dst: SocketAddr,
    ) -> ConnContext {
        ConnContext {
            id: 0,
            direction,
            workload,
            peer,
            orig_dst,
            opened: SystemTime::now(),
            peer_workload: OnceLock::new(),
            route: OnceLock::new(),
            tls: OnceLock::new(),
        }
    }

    /// With the workload at the other end (when the mesh knows it).
    pub(crate) fn with_peer_workload(self, peer: Option<Arc<Workload>>) -> ConnContext {
        if let Some(w) = peer {
            self.set_peer_workload(w);
        }
        self
    }

    /// With mutual TLS (known at the accept for an inbound HBONE tunnel).
    pub(crate) fn with_tls(self, tls: Tls) -> ConnContext {
        self.secure(tls);
        self
    }

    /// Records the workload at the other end. Each of the setters keeps the first value.
    pub(crate) fn set_peer_workload(&self, peer: Arc<Workload>) {
        let _ = self.peer_workload.set(peer);
    }

    /// Records where the connection was routed (once the dial succeeded).
    pub(crate) fn route(&self, target: SocketAddr, service: Option<Arc<ServicePort>>) {
        let _ = self.route.set(Route { target, service });
    }

    /// Records that the connection is carried over mutual TLS between these identities.
    pub(crate) fn secure(&self, tls: Tls) {
        let _ = self.tls.set(tls);
    }

    pub(crate) fn peer_workload(&self) -> Option<&Arc<Workload>> {
        self.peer_workload.get()
    }

    /// Where the agent connected, once it has.
    pub(crate) fn target(&self) -> Option<SocketAddr> {
        self.route.get().map(|r| r.target)
    }

    /// The service of the original destination (outbound), once routed.
    pub(crate) fn service(&self) -> Option<&Arc<ServicePort>> {
        self.route.get().and_then(|r| r.service.as_ref())
    }

    /// Mutual TLS on the hop between agents, with its identities.
    pub(crate) fn tls(&self) -> Option<&Tls> {
        self.tls.get()
    }

    /// When the connection was opened, in milliseconds since the Unix epoch.
    pub(crate) fn opened_unix_ms(&self) -> u128 {
        self.opened
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    }
}

/// Workloads and contexts for the unit tests of what is derived from a context.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A workload `default/NAME` of deployment `DEPLOYMENT` with one address.
    pub(crate) fn workload(name: &str, deployment: &str, ip: &str) -> Arc<Workload> {
        Arc::new(Workload {
            name: name.into(),
            namespace: "default".into(),
            service_account: deployment.into(),
            node: "n1".into(),
            deployment: deployment.into(),
            labels: Default::default(),
            annotations: Default::default(),
            ports: Vec::new(),
            probes: Vec::new(),
            ips: vec![ip.parse().expect("ip")],
            opaque_ports: Default::default(),
            local: None,
        })
    }

    /// The identity of a workload's service account in `cluster.local`.
    pub(crate) fn identity(service_account: &str) -> Identity {
        Identity::new("cluster.local", "default", service_account)
    }

    /// A connection of `default/web-1` (deployment `web`, 10.0.0.2): inbound from 10.0.0.1
    /// to 10.0.0.2:8080, or outbound from it to 10.0.0.3:80.
    pub(crate) fn context(direction: Direction) -> ConnContext {
        let web = workload("web-1", "web", "10.0.0.2");
        match direction {
            Direction::Inbound => ConnContext::new(
                direction,
                web,
                "10.0.0.1:40000".parse().expect("peer"),
                "10.0.0.2:8080".parse().expect("dst"),
            ),
            Direction::Outbound => ConnContext::new(
                direction,
                web,
                "10.0.0.2:40000".parse().expect("peer"),
                "10.0.0.3:80".parse().expect("dst"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::*, *};

    #[test]
    fn learned_fields_are_set_once() {
        let c = context(Direction::Outbound);
        assert_eq!(
            (c.target(), c.service().is_some(), c.tls()),
            (None, false, None)
        );
        let target: SocketAddr = "10.0.0.3:8080".parse().expect("target");
        c.route(target, None);
        c.route("10.0.0.9:1".parse().expect("other"), None);
        assert_eq!(c.target(), Some(target), "the first route stays");
        c.set_peer_workload(workload("db-1", "db", "10.0.0.3"));
        c.set_peer_workload(workload("other", "other", "10.0.0.9"));
        assert_eq!(c.peer_workload().map(|w| w.name.as_str()), Some("db-1"));
        let tls = Tls {
            client: Some(identity("web")),
            server: identity("db"),
        };
        c.secure(tls.clone());
        assert_eq!(c.tls(), Some(&tls));
    }
}
