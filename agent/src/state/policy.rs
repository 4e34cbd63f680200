//! What the authorization policy is compiled from besides the workloads: the validated
//! policy documents, the namespaces' annotations and the policy settings that may change
//! while the agent runs. A source builds it whole; the agent compiles it with the local
//! workloads of the same [`State`](super::State).

use std::collections::BTreeMap;

use crate::policy::{net::Network, DefaultPolicy, PolicySet, PolicySettings};

#[derive(Debug, Clone)]
pub(crate) struct PolicyInputs {
    /// Every valid policy resource.
    pub set: PolicySet,
    /// Each listed namespace's annotations, by namespace name.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// The agent's default inbound policy (`defaultInboundPolicy`).
    pub default_policy: DefaultPolicy,
    /// `clusterNetworks`.
    pub cluster_networks: Vec<Network>,
}

impl Default for PolicyInputs {
    /// No policy documents, Linkerd's defaults.
    fn default() -> PolicyInputs {
        let d = PolicySettings::default();
        PolicyInputs {
            set: PolicySet::default(),
            namespaces: BTreeMap::new(),
            default_policy: d.default_policy,
            cluster_networks: d.cluster_networks,
        }
    }
}

impl PolicyInputs {
    /// The settings to compile with; the trust domain is the agent's (fixed at start-up).
    pub(crate) fn settings(&self, trust_domain: &str) -> PolicySettings {
        PolicySettings {
            default_policy: self.default_policy,
            cluster_networks: self.cluster_networks.clone(),
            trust_domain: trust_domain.to_string(),
            ..PolicySettings::default()
        }
    }
}
