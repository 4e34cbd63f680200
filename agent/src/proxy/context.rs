//! What every connection handler shares ([`ProxyContext`]: state, maps, registry, telemetry,
//! the mesh's identities and tunnel pool) and what it knows of one enrolled pod
//! ([`PodContext`]).

use std::{sync::Arc, time::Duration};

use crate::{
    capture::Maps,
    identity::{CertManager, Identity},
    netns::Netns,
    state::{StateStore, Workload},
    telemetry::Telemetry,
};

use super::{
    balance::Balancers,
    connections::Connections,
    hbone::pool::Pool,
    limits::{Budgets, PodBudgets},
};

/// What every connection handler shares.
pub(crate) struct ProxyContext {
    /// The mesh state, read once per connection.
    pub state: Arc<StateStore>,
    /// Load and health of service endpoints, kept across state snapshots.
    pub balancers: Arc<Balancers>,
    pub maps: Arc<Maps>,
    pub connections: Arc<Connections>,
    pub telemetry: Arc<Telemetry>,
    pub connect_timeout: Duration,
    /// How long the TLS and HTTP/2 handshakes on port 15008 may take together.
    pub handshake_timeout: Duration,
    /// The node's connection and handshake budgets.
    pub budgets: Budgets,
    /// Mutual TLS between workloads; `None` runs plain pass-through.
    pub mesh: Option<Mesh>,
}

/// Identities and the HBONE connection pool.
pub(crate) struct Mesh {
    pub trust_domain: String,
    pub certs: Arc<CertManager>,
    pub pool: Pool,
}

impl Mesh {
    /// The identity a workload's certificate carries.
    pub(crate) fn identity_of(&self, w: &Workload) -> Identity {
        Identity::new(&self.trust_domain, &w.namespace, &w.service_account)
    }
}

/// One enrolled pod as the proxy sees it.
pub(crate) struct PodContext {
    pub workload: Arc<Workload>,
    pub netns: Arc<Netns>,
    /// Its identity, when mutual TLS is on.
    pub identity: Option<Identity>,
    /// Its share of the node's connections and handshakes.
    pub budgets: PodBudgets,
    /// The mark of deliveries from the client's own address, when the pod's namespace
    /// routes their answers back to the agent ([`crate::pod_routing`]); `None`: deliveries
    /// come from the pod's own address.
    pub delivery_mark: Option<u32>,
}

#[cfg(test)]
impl ProxyContext {
    /// A context for tests that drive handlers directly: the agent's maps without pins
    /// (needs root), a fresh registry and telemetry, no mutual TLS.
    pub(crate) fn for_tests(state: Arc<StateStore>) -> Arc<ProxyContext> {
        Arc::new(ProxyContext {
            state,
            balancers: Default::default(),
            maps: Arc::new(Maps::standalone().expect("standalone BPF maps (needs root)")),
            connections: Arc::new(super::connections::Connections::default()),
            telemetry: Arc::new(Telemetry::default()),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: crate::settings::DEFAULT_HANDSHAKE_TIMEOUT,
            budgets: Budgets::new(super::limits::Limits {
                max_sockets: 1024,
                max_connections_per_pod: 1024,
                max_handshakes: 16,
                max_handshakes_per_pod: 16,
            }),
            mesh: None,
        })
    }
}
