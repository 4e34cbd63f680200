//! A mesh workload (a pod), wherever it runs, and what the agent needs to capture it when
//! it runs on this node.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
};

use crate::policy::{compile::ContainerPort, compile::HttpProbe, PolicyWorkload};

/// Linkerd's default opaque ports: SMTP, MySQL, Galera, PostgreSQL, Redis, Elasticsearch,
/// memcached. They apply to a workload that names none, and to destinations outside the
/// mesh.
pub(crate) const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// Whether traffic to `port` is never parsed as HTTP: the workload's opaque ports, or the
/// defaults for a destination the mesh does not know.
pub(crate) fn is_opaque(workload: Option<&Workload>, port: u16) -> bool {
    match workload {
        Some(w) => w.opaque_ports.contains(&port),
        None => DEFAULT_OPAQUE_PORTS.contains(&port),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: String,
    /// The owning deployment, for metrics.
    pub deployment: String,
    pub labels: BTreeMap<String, String>,
    /// The pod's annotations (`config.linkerd.io/default-inbound-policy`, ...).
    pub annotations: BTreeMap<String, String>,
    /// The containers' ports, by which a `Server` may select a port by name.
    pub ports: Vec<ContainerPort>,
    /// The HTTP probes, for which the default policies allow the probe route.
    pub probes: Vec<HttpProbe>,
    pub ips: Vec<IpAddr>,
    /// Ports never parsed as HTTP.
    pub opaque_ports: BTreeSet<u16>,
    /// Set for workloads on this node, which the agent captures.
    pub local: Option<LocalWorkload>,
}

/// Where an enrolled workload lives on this node, and what it excludes from capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalWorkload {
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    pub skip_inbound_ports: BTreeSet<u16>,
    pub skip_outbound_ports: BTreeSet<u16>,
}

impl Workload {
    /// `namespace/name`.
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// What the authorization policy is compiled from.
    pub(crate) fn policy_view(&self) -> PolicyWorkload {
        PolicyWorkload {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            ports: self.ports.clone(),
            probes: self.probes.clone(),
            opaque_ports: self.opaque_ports.clone(),
        }
    }
}
