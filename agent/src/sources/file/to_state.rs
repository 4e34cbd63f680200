//! The file's workloads and services as typed [`State`]: which workloads are on this node,
//! and each service port's endpoint addresses (selected workloads plus listed addresses).

use std::net::SocketAddr;

use super::schema::FileConfig;
use crate::state::{LocalWorkload, ServicePort, State, Workload};

pub(super) fn to_state(config: &FileConfig) -> State {
    let workloads = config.workloads.iter().map(|w| Workload {
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        service_account: w.service_account.clone(),
        node: w.node.clone().unwrap_or_else(|| config.node.clone()),
        deployment: w.deployment(),
        labels: w.labels.clone(),
        annotations: w.annotations.clone(),
        ports: w.container_ports(),
        probes: w.http_probes(),
        ips: w.ips.clone(),
        opaque_ports: w.opaque_ports(),
        local: w.is_on(&config.node).then(|| LocalWorkload {
            netns: w.netns.clone().unwrap_or_default(),
            cgroup: w.cgroup.clone().unwrap_or_default(),
            skip_inbound_ports: w.skip_inbound_ports.clone(),
            skip_outbound_ports: w.skip_outbound_ports.clone(),
        }),
    });
    let services = config.services.iter().flat_map(|s| {
        s.ports.iter().map(move |p| {
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
            ServicePort {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                vip: s.vip,
                port: p.port,
                endpoints,
            }
        })
    });
    State::new(config.node.clone(), workloads, services)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn service_endpoints_from_selector_and_addresses() {
        let config = FileConfig::parse(
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
        let state = to_state(&config);
        let svc = state.service(&"10.96.0.1:80".parse().unwrap()).unwrap();
        let expected: Vec<SocketAddr> = vec![
            "10.0.0.1:8080".parse().unwrap(),
            "10.1.0.9:8080".parse().unwrap(),
        ];
        assert_eq!(svc.endpoints, expected);
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
