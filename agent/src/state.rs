//! The agent's in-memory view of the mesh: workloads and services, whatever source they came
//! from. The proxy reads one immutable [`State`] snapshot per connection.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use crate::{balance::Balancer, config::Config};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: String,
    /// The owning deployment, for metrics.
    pub deployment: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    /// Ports never parsed as HTTP.
    pub opaque_ports: BTreeSet<u16>,
    /// Set for workloads on this node, which the agent captures.
    pub local: Option<LocalWorkload>,
}

/// Where an enrolled workload lives on this node, and what it excludes from capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalWorkload {
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    pub skip_inbound_ports: BTreeSet<u16>,
    pub skip_outbound_ports: BTreeSet<u16>,
}

impl Workload {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn peer(&self) -> crate::telemetry::PeerWorkload {
        crate::telemetry::PeerWorkload {
            namespace: self.namespace.clone(),
            pod: self.name.clone(),
            deployment: self.deployment.clone(),
        }
    }
}

/// One port of a service's virtual IP and the endpoints behind it.
#[derive(Debug)]
pub struct ServicePort {
    pub name: String,
    pub namespace: String,
    pub vip: IpAddr,
    pub port: u16,
    pub endpoints: Balancer,
}

impl ServicePort {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Default)]
pub struct State {
    pub node: String,
    pub workloads: BTreeMap<String, Arc<Workload>>,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    services: HashMap<(IpAddr, u16), Arc<ServicePort>>,
}

impl State {
    pub fn from_config(config: &Config) -> State {
        let mut state = State {
            node: config.node.clone(),
            ..State::default()
        };
        for w in &config.workloads {
            let local = w.is_on(&config.node).then(|| LocalWorkload {
                netns: w.netns.clone().unwrap_or_default(),
                cgroup: w.cgroup.clone().unwrap_or_default(),
                skip_inbound_ports: w.skip_inbound_ports.clone(),
                skip_outbound_ports: w.skip_outbound_ports.clone(),
            });
            let workload = Arc::new(Workload {
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
                node: w.node.clone().unwrap_or_else(|| config.node.clone()),
                deployment: w.deployment(),
                labels: w.labels.clone(),
                ips: w.ips.clone(),
                opaque_ports: w.opaque_ports(),
                local,
            });
            for ip in &workload.ips {
                state.by_ip.insert(*ip, workload.clone());
            }
            state.workloads.insert(workload.key(), workload);
        }
        for s in &config.services {
            for p in &s.ports {
                let target = p.target_port.unwrap_or(p.port);
                let mut endpoints: Vec<SocketAddr> = config
                    .workloads
                    .iter()
                    .filter(|w| {
                        w.namespace == s.namespace
                            && !s.selector.is_empty()
                            && s.selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
                    })
                    .flat_map(|w| w.ips.iter().filter(|ip| ip.is_ipv4() == s.vip.is_ipv4()))
                    .chain(&s.endpoints)
                    .map(|ip| SocketAddr::new(*ip, target))
                    .collect();
                endpoints.dedup();
                state.services.insert(
                    (s.vip, p.port),
                    Arc::new(ServicePort {
                        name: s.name.clone(),
                        namespace: s.namespace.clone(),
                        vip: s.vip,
                        port: p.port,
                        endpoints: Balancer::new(&endpoints),
                    }),
                );
            }
        }
        state
    }

    /// The mesh workload (on any node) that has this address.
    pub fn workload_by_ip(&self, ip: &IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(ip)
    }

    pub fn service(&self, addr: &SocketAddr) -> Option<&Arc<ServicePort>> {
        self.services.get(&(addr.ip(), addr.port()))
    }

    /// The workloads this agent captures.
    pub fn local_workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values().filter(|w| w.local.is_some())
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<ServicePort>> {
        self.services.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn service_endpoints_from_selector_and_addresses() {
        let config = Config::parse(
            Path::new("t.yaml"),
            "node: n1
workloads:
  - {name: a, namespace: d, serviceAccount: s, node: n2, labels: {app: web}, ips: [10.0.0.1]}
  - {name: b, namespace: d, serviceAccount: s, node: n2, labels: {app: db}, ips: [10.0.0.2]}
  - {name: c, namespace: e, serviceAccount: s, node: n2, labels: {app: web}, ips: [10.0.0.3]}
services:
  - {name: web, namespace: d, vip: 10.96.0.1, ports: [{port: 80, targetPort: 8080}], selector: {app: web}, endpoints: [10.1.0.9]}
",
        )
        .unwrap();
        let state = State::from_config(&config);
        let svc = state.service(&"10.96.0.1:80".parse().unwrap()).unwrap();
        let expected: Vec<SocketAddr> = vec![
            "10.0.0.1:8080".parse().unwrap(),
            "10.1.0.9:8080".parse().unwrap(),
        ];
        assert_eq!(svc.endpoints.addrs(), expected);
        assert_eq!(svc.key(), "d/web");
        assert!(state.service(&"10.96.0.1:81".parse().unwrap()).is_none());
        assert_eq!(state.local_workloads().count(), 0);
        assert_eq!(
            state
                .workload_by_ip(&"10.0.0.2".parse().unwrap())
                .unwrap()
                .name,
            "b"
        );
    }
}
