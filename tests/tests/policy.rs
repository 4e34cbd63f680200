//! Standalone-mode policy inputs through the real agent: the config names a policy
//! directory (relative to the config file); `/config_dump` shows what was compiled; a
//! refused document refuses the reload (the last good policy stays, the error shows); a
//! fix applies. A refused document at start-up stops the agent.

use std::time::Duration;

use meshd_tests::{
    mesh::{config_yaml, Agent, WorkloadSpec},
    replace_file, require_root, wait_until, Cluster,
};
use serde_json::Value;

/// F01 of the spec, in the harness' namespace: a Server on the named port `http` of
/// `app: web`, allowing only `frontend`'s identity.
const SERVER_AND_POLICY: &str = "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: web-http, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  port: http
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: frontend-only, namespace: default}
spec:
  identities: [frontend.default.serviceaccount.identity.linkerd.cluster.local]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-from-frontend, namespace: default}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: web-http}
  requiredAuthenticationRefs:
    - {name: frontend-only, kind: MeshTLSAuthentication, group: policy.linkerd.io}
";

const NETWORK: &str = "apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: cluster, namespace: default}
spec:
  networks: [{cidr: 10.0.0.0/8}]
";

/// A Server whose protocol does not exist: refused by validation.
const BAD: &str = "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: admin, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  port: 9090
  proxyProtocol: HTTP/3
";

/// The fix: a valid Server and a policy whose authentication does not exist (inert, and
/// reported).
const FIXED: &str = "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: admin, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  port: 9090
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: admin-from-ops, namespace: default}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: admin}
  requiredAuthenticationRefs:
    - {name: ops, kind: MeshTLSAuthentication, group: policy.linkerd.io}
";

fn policy(agent: &Agent) -> Value {
    agent.config_dump().unwrap()["policy"].clone()
}

#[test]
fn policy_directory_is_compiled_reloaded_and_a_refused_document_keeps_the_last_good() {
    require_root().unwrap();
    let c = Cluster::new("policy").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let web = c.add_pod(&n1, "web").unwrap();
    let dir = c.dir().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("01-web.yaml"), SERVER_AND_POLICY).unwrap();
    std::fs::write(dir.join("02-network.yml"), NETWORK).unwrap();
    std::fs::write(dir.join("README.md"), "not a policy file").unwrap();
    let workload = WorkloadSpec::new(&web).label("app", "web").yaml(
        "annotations: {example.com/team: payments}\n\
         ports: [{name: http, containerPort: 8080}]\n\
         probes: [{path: /ready, port: http}]",
    );
    // The policy path is relative: the config file is in the cluster's directory.
    let yaml = format!(
        "{}policy: [policies]\ndefaultInboundPolicy: cluster-unauthenticated\n",
        config_yaml(&c, &n1, &[workload], &[])
    );
    let agent = Agent::start(&c, &n1, &yaml).unwrap();

    let p = policy(&agent);
    assert_eq!(p["documents"], 4, "{p}");
    assert_eq!(p["workloads"], 1, "{p}");
    assert_eq!(p["defaultInboundPolicy"], "cluster-unauthenticated", "{p}");
    assert_eq!(p["reports"], serde_json::json!([]), "{p}");
    assert_eq!(p["error"], Value::Null, "{p}");
    let publications = p["publications"].clone();

    // A refused document: the whole reload is refused, the last good policy stays.
    replace_file(&dir.join("02-network.yml"), &format!("{NETWORK}---\n{BAD}"));
    let bad_file = dir.join("02-network.yml").display().to_string();
    assert!(
        wait_until(Duration::from_secs(10), || policy(&agent)["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!(
                "{bad_file}:6: Server default/admin: spec.proxyProtocol:"
            )))),
        "{}",
        policy(&agent)
    );
    let dump = agent.config_dump().unwrap();
    let p = &dump["policy"];
    assert_eq!(p["documents"], 4, "the last good policy stays: {p}");
    assert_eq!(p["publications"], publications, "nothing published: {p}");
    let config_error = dump["configError"].as_str().unwrap_or_default();
    assert!(
        config_error.contains("Server default/admin")
            && config_error.ends_with("keeping the last good configuration and policy"),
        "{config_error}"
    );
    assert!(
        agent.proc.stderr().contains("Server default/admin"),
        "the refusal is logged"
    );

    // Fixed: applied, with its inert policy reported.
    replace_file(
        &dir.join("02-network.yml"),
        &format!("{NETWORK}---\n{FIXED}"),
    );
    assert!(
        wait_until(Duration::from_secs(10), || policy(&agent)["documents"] == 6),
        "{}",
        policy(&agent)
    );
    let p = policy(&agent);
    assert_eq!(p["error"], Value::Null, "{p}");
    assert_eq!(agent.config_dump().unwrap()["configError"], Value::Null);
    let reports = p["reports"].as_array().cloned().unwrap_or_default();
    assert!(
        reports
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains("admin-from-ops"))),
        "{p}"
    );
    assert!(
        agent.proc.stderr().contains("admin-from-ops"),
        "the report is logged"
    );

    // A file removed from the directory is a change too.
    std::fs::remove_file(dir.join("01-web.yaml")).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || policy(&agent)["documents"] == 3),
        "{}",
        policy(&agent)
    );
    agent.stop().unwrap();
}

/// A refused document at start-up: the agent does not start, and says why.
#[test]
fn a_refused_policy_document_stops_the_agent_at_start() {
    require_root().unwrap();
    let c = Cluster::new("policy-start").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let web = c.add_pod(&n1, "web").unwrap();
    let file = c.dir().join("bad.yaml");
    std::fs::write(&file, BAD).unwrap();
    let yaml = format!(
        "{}policy: [{}]\n",
        config_yaml(&c, &n1, &[WorkloadSpec::new(&web)], &[]),
        file.display()
    );
    let e = Agent::start(&c, &n1, &yaml)
        .err()
        .expect("the agent refuses to start")
        .to_string();
    assert!(
        e.contains(&format!(
            "policy: 1 document refused: {}:1: Server default/admin: spec.proxyProtocol:",
            file.display()
        )),
        "{e}"
    );
}
