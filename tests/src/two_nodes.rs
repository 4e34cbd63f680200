//! The two-node mutual-TLS set-up of the HBONE tests: identities and a cluster whose two
//! agents issue certificates under one trust anchor.

use std::path::PathBuf;

use crate::{
    mesh::{config_yaml, identity_init, with_identity, Agent, WorkloadSpec},
    Cluster, Node, Pod,
};

/// The SPIFFE identity of service account `sa` in namespace `default`.
pub fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
}

/// The workload of `pod` as the agent of another node sees it (`remote: true`).
pub fn remote(pod: &Pod) -> WorkloadSpec {
    let mut w = WorkloadSpec::new(pod);
    w.remote = true;
    w
}

/// Two nodes under one trust anchor: node 1 runs pod `a` and the pods `more`, node 2 runs
/// pod `b`. The agents are returned apart, so a test can stop or restart them.
pub struct TwoNodes {
    pub c: Cluster,
    pub n1: Node,
    pub n2: Node,
    pub a: Pod,
    pub b: Pod,
    /// The further pods of node 1, in the order named.
    pub more: Vec<Pod>,
    /// The `meshd identity init` directory of the trust anchor both agents issue under.
    pub ca: PathBuf,
}

/// Builds [`TwoNodes`] with the pods `more_on_n1` on node 1 besides `a`, and starts both
/// agents (certificates valid for an hour), each with its own pods enrolled and the other
/// node's as remote.
pub fn two_nodes(name: &str, more_on_n1: &[&str]) -> (TwoNodes, Agent, Agent) {
    two_nodes_in(Cluster::new(name).unwrap(), more_on_n1)
}

/// [`two_nodes`] in the cluster `c` (e.g. a dual-stack one), which has no node yet.
pub fn two_nodes_in(c: Cluster, more_on_n1: &[&str]) -> (TwoNodes, Agent, Agent) {
    let n1 = c.add_node("n1").unwrap();
    let n2 = c.add_node("n2").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let more: Vec<Pod> = more_on_n1
        .iter()
        .map(|p| c.add_pod(&n1, p).unwrap())
        .collect();
    let b = c.add_pod(&n2, "b").unwrap();
    let ca = identity_init(&c, "ca").unwrap();
    let anchors = ca.join("ca.crt");
    let mut w1 = vec![WorkloadSpec::new(&a)];
    w1.extend(more.iter().map(WorkloadSpec::new));
    w1.push(remote(&b));
    let mut w2 = vec![remote(&a)];
    w2.extend(more.iter().map(remote));
    w2.push(WorkloadSpec::new(&b));
    let y1 = config_yaml(&c, &n1, &w1, &[]);
    let y2 = config_yaml(&c, &n2, &w2, &[]);
    let agent1 = Agent::start(&c, &n1, &with_identity(&y1, &anchors, &ca, 3600)).unwrap();
    let agent2 = Agent::start(&c, &n2, &with_identity(&y2, &anchors, &ca, 3600)).unwrap();
    (
        TwoNodes {
            c,
            n1,
            n2,
            a,
            b,
            more,
            ca,
        },
        agent1,
        agent2,
    )
}
