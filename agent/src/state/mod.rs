//! The agent's in-memory view of the mesh: workloads, services and policy inputs, whatever source they came
//! from, with the indexes the data path needs. Sources build a [`State`] and publish it into
//! the [`StateStore`]; the enrollment reconciler and the proxy read and watch the store. The
//! proxy reads one immutable snapshot per connection.

mod policy;
mod service;
pub(crate) mod store;
mod workload;

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

pub(crate) use policy::PolicyInputs;
pub(crate) use service::ServicePort;
pub(crate) use store::{SourceHandle, SourceStatus, StateStore};
pub(crate) use workload::{is_opaque, LocalWorkload, Workload, DEFAULT_OPAQUE_PORTS};

#[derive(Debug, Default)]
pub(crate) struct State {
    /// The node the `local` parts of the workloads are relative to.
    pub node: String,
    pub workloads: BTreeMap<String, Arc<Workload>>,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    services: HashMap<SocketAddr, Arc<ServicePort>>,
    /// What the authorization policy is compiled from (shared by snapshots whose policy
    /// did not change).
    pub policy: Arc<PolicyInputs>,
    /// Set by the store when the state is published: later snapshots have higher numbers.
    generation: u64,
}

impl State {
    /// A state of these workloads and service ports, indexed. A later workload or service
    /// port with the same key or address replaces an earlier one (sources validate).
    pub(crate) fn new(
        node: impl Into<String>,
        workloads: impl IntoIterator<Item = Workload>,
        services: impl IntoIterator<Item = ServicePort>,
    ) -> State {
        let mut state = State {
            node: node.into(),
            ..State::default()
        };
        for w in workloads {
            let w = Arc::new(w);
            for ip in &w.ips {
                state.by_ip.insert(*ip, w.clone());
            }
            state.workloads.insert(w.key(), w);
        }
        for s in services {
            state.services.insert(s.addr(), Arc::new(s));
        }
        state
    }

    /// The same state with these policy inputs.
    pub(crate) fn with_policy(mut self, policy: Arc<PolicyInputs>) -> State {
        self.policy = policy;
        self
    }

    /// The mesh workload (on any node) that has this address.
    pub(crate) fn workload_by_ip(&self, ip: &IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(ip)
    }

    /// The service port clients reach at `addr` (`vip:port`).
    pub(crate) fn service(&self, addr: &SocketAddr) -> Option<&Arc<ServicePort>> {
        self.services.get(addr)
    }

    /// The workloads this agent captures.
    pub(crate) fn local_workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values().filter(|w| w.local.is_some())
    }

    pub(crate) fn services(&self) -> impl Iterator<Item = &Arc<ServicePort>> {
        self.services.values()
    }

    /// Which publication of the store this is (0: never published).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }
}
