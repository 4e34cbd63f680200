//! Feeds the [`PolicyStore`] the proxy enforces: compiles the policy of an applied
//! [`State`] (its policy inputs and its local workloads) and publishes it, whenever either
//! changes. What the compilation reports (inert policies, conflicts) is logged once, when
//! it first appears, and kept for `/config_dump`.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use serde::Serialize;

use crate::{
    policy::{compile, PolicyStore, PolicyWorkload},
    state::{PolicyInputs, State},
};

/// What the last compilation was made of and reported, for `/config_dump`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PolicyStatus {
    /// Valid policy resources compiled.
    pub documents: usize,
    /// Workloads compiled (this node's).
    pub workloads: usize,
    pub default_inbound_policy: String,
    /// Inert policies, conflicts, ...
    pub reports: Vec<String>,
    /// How many compilations were published.
    pub publications: u64,
}

/// What the last publication was compiled from.
struct Fed {
    policy: Arc<PolicyInputs>,
    workloads: Vec<PolicyWorkload>,
    status: PolicyStatus,
}

pub(crate) struct PolicyFeed {
    store: Arc<PolicyStore>,
    /// The agent's trust domain (fixed at start-up).
    trust_domain: String,
    last: Mutex<Option<Fed>>,
}

impl PolicyFeed {
    pub(crate) fn new(store: Arc<PolicyStore>, trust_domain: String) -> PolicyFeed {
        PolicyFeed {
            store,
            trust_domain,
            last: Mutex::new(None),
        }
    }

    /// Compiles and publishes the policy of `state`'s local workloads, unless neither they
    /// nor the policy inputs changed since the last publication. Returns whether it
    /// published.
    pub(crate) fn apply(&self, state: &State) -> bool {
        let workloads: Vec<PolicyWorkload> =
            state.local_workloads().map(|w| w.policy_view()).collect();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fed) = last.as_ref() {
            if Arc::ptr_eq(&fed.policy, &state.policy) && fed.workloads == workloads {
                return false;
            }
        }
        let inputs = &state.policy;
        let settings = inputs.settings(&self.trust_domain);
        let index = compile(&inputs.set, &workloads, &inputs.namespaces, &settings);
        let before: BTreeSet<&String> = last
            .as_ref()
            .map(|f| f.status.reports.iter().collect())
            .unwrap_or_default();
        for report in index.reports.iter().filter(|r| !before.contains(r)) {
            tracing::warn!("policy: {report}");
        }
        let status = PolicyStatus {
            documents: inputs.set.resources.len(),
            workloads: workloads.len(),
            default_inbound_policy: settings.default_policy.name().to_string(),
            reports: index.reports.clone(),
            publications: last.as_ref().map_or(0, |f| f.status.publications) + 1,
        };
        tracing::info!(
            documents = status.documents,
            workloads = status.workloads,
            reports = status.reports.len(),
            "authorization policy compiled"
        );
        self.store.publish(index, settings);
        *last = Some(Fed {
            policy: state.policy.clone(),
            workloads,
            status,
        });
        true
    }

    /// The last compilation's status (empty before the first).
    pub(crate) fn status(&self) -> PolicyStatus {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref().map(|f| f.status.clone()).unwrap_or_default()
    }
}
