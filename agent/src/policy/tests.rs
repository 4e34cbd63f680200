//! The fixtures of the spec's §6 with their outcome tables (clients A, B, U, X, K), the
//! malformed documents of F19 with Linkerd's messages, and property tests.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use hyper::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use super::{
    compile::{compile, ContainerPort, HttpProbe, PolicySet, PolicyWorkload},
    decide::{decide_http, decide_tcp, HttpOutcome, TcpOutcome},
    defaults::PolicySettings,
    document::parse_file,
    resources::{Resource, ServerPort},
    routes::RequestHead,
    Client, PortPolicy,
};
use crate::identity::Identity;

fn fixture(name: &str) -> &'static str {
    match name {
        "01" => include_str!("testdata/01-server-meshtls-identity.yaml"),
        "04" => include_str!("testdata/04-any-meshed.yaml"),
        "05" => include_str!("testdata/05-network-except.yaml"),
        "06a" => include_str!("testdata/06a-and-single-policy.yaml"),
        "06b" => include_str!("testdata/06b-or-two-policies.yaml"),
        "07" => include_str!("testdata/07-per-route.yaml"),
        "09" => include_str!("testdata/09-namespace-default-deny.yaml"),
        "11" => include_str!("testdata/11-server-audit.yaml"),
        "13" => include_str!("testdata/13-legacy-serverauthorization.yaml"),
        "17" => include_str!("testdata/17-opaque-tcp.yaml"),
        "19" => include_str!("testdata/19-malformed.yaml"),
        "00" => include_str!("testdata/00-base.yaml"),
        other => panic!("no fixture {other}"),
    }
}

fn resources(name: &str) -> Vec<Resource> {
    let docs = parse_file(Path::new(name), fixture(name));
    assert!(docs.refused.is_empty(), "{name}: {:?}", docs.refused);
    docs.resources.into_iter().map(|l| l.resource).collect()
}

fn web() -> PolicyWorkload {
    PolicyWorkload {
        namespace: "shop".into(),
        name: "web".into(),
        labels: [("app", "web"), ("tier", "frontend")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ports: vec![ContainerPort {
            name: Some("http".into()),
            port: 8080,
            protocol: "TCP".into(),
        }],
        probes: ["/ready", "/live"]
            .into_iter()
            .map(|p| HttpProbe {
                path: p.into(),
                port: ServerPort::Name("http".into()),
            })
            .collect(),
        ..PolicyWorkload::default()
    }
}

fn policy_of(
    resources: Vec<Resource>,
    w: &PolicyWorkload,
    ns: &BTreeMap<String, BTreeMap<String, String>>,
    port: u16,
) -> std::sync::Arc<PortPolicy> {
    let index = compile(
        &PolicySet { resources },
        std::slice::from_ref(w),
        ns,
        &PolicySettings::default(),
    );
    index.port(&w.key(), port).expect("the workload is indexed")
}

fn web_8080(resources: Vec<Resource>) -> std::sync::Arc<PortPolicy> {
    policy_of(resources, &web(), &BTreeMap::new(), 8080)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

/// The clients of §6.0.
fn client(c: &str) -> Client {
    match c {
        "A" => Client::meshed(
            id("frontend.shop.serviceaccount.identity.linkerd.cluster.local"),
            ip("10.42.1.10"),
        ),
        // The same workload as A, in the SPIFFE form its certificate carries.
        "A-spiffe" => Client::meshed(
            id("spiffe://cluster.local/ns/shop/sa/frontend"),
            ip("10.42.1.10"),
        ),
        "B" => Client::meshed(
            id("batch.jobs.serviceaccount.identity.linkerd.cluster.local"),
            ip("10.42.2.20"),
        ),
        "U" => Client::plaintext(ip("10.42.3.30")),
        "X" => Client::plaintext(ip("203.0.113.7")),
        "K" => Client::plaintext(ip("10.0.0.5")),
        other => panic!("no client {other}"),
    }
}

/// `200 kind/name`, `403` or `404`, with `route=NAME` for allowed and 403 answers.
fn http(
    policy: &PortPolicy,
    c: &Client,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let method: Method = method.parse().unwrap();
    let uri: Uri = path.parse().unwrap();
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let req = RequestHead {
        method: &method,
        uri: &uri,
        headers: &h,
    };
    let d = decide_http(policy, c, &req);
    match d.outcome {
        HttpOutcome::Allowed { authz, .. } => format!("200 {}", authz),
        HttpOutcome::Unauthorized { .. } => "403".into(),
        HttpOutcome::RouteNotFound => "404".into(),
    }
}

fn get(policy: &PortPolicy, c: &str, path: &str) -> String {
    http(policy, &client(c), "GET", path, &[])
}

#[test]
fn f01_server_meshtls_identity() {
    let p = web_8080(resources("01"));
    assert_eq!(p.server.to_string(), "server/web-http");
    assert_eq!(
        get(&p, "A", "/"),
        "200 authorizationpolicy/web-from-frontend"
    );
    assert_eq!(
        get(&p, "A-spiffe", "/"),
        "200 authorizationpolicy/web-from-frontend"
    );
    for c in ["B", "U", "X", "K"] {
        assert_eq!(get(&p, c, "/"), "403", "{c}");
        assert_eq!(get(&p, c, "/ready"), "200 default/probe", "{c}");
        assert_eq!(get(&p, c, "/ready?verbose=1"), "200 default/probe", "{c}");
        assert_eq!(http(&p, &client(c), "POST", "/ready", &[]), "403", "{c}");
        assert_eq!(http(&p, &client(c), "HEAD", "/ready", &[]), "403", "{c}");
    }
    assert_eq!(get(&p, "A", "/ready"), "200 default/probe");
    assert_eq!(
        http(&p, &client("A"), "POST", "/ready", &[]),
        "200 authorizationpolicy/web-from-frontend"
    );
    // The route labels: `default` for `/`, `probe` for `/ready`.
    let d = decide_http(
        &p,
        &client("B"),
        &RequestHead {
            method: &Method::GET,
            uri: &"/".parse().unwrap(),
            headers: &HeaderMap::new(),
        },
    );
    assert_eq!(
        d.outcome,
        HttpOutcome::Unauthorized {
            route: &super::meta::Meta::default_named("default")
        }
    );
    // Denials: 403 with l5d-proxy-error only for meshed clients; gRPC 7.
    let r = d.refusal(&client("B"), false).unwrap();
    assert_eq!(
        (r.http_status, r.error, r.with_error_header),
        (403, "unauthorized request on route", true)
    );
    assert!(!d.refusal(&client("U"), false).unwrap().with_error_header);
    let g = d.refusal(&client("U"), true).unwrap();
    assert_eq!((g.http_status, g.grpc_status), (200, Some(7)));
}

#[test]
fn f04_any_meshed() {
    let p = web_8080(resources("04"));
    assert_eq!(get(&p, "A", "/"), "200 authorizationpolicy/web-any-meshed");
    assert_eq!(get(&p, "B", "/"), "200 authorizationpolicy/web-any-meshed");
    assert_eq!(get(&p, "U", "/"), "403");
    assert_eq!(get(&p, "X", "/"), "403");
}

#[test]
fn f05_network_except() {
    let p = web_8080(resources("05"));
    assert_eq!(
        get(&p, "A", "/"),
        "200 authorizationpolicy/web-from-pod-network"
    );
    assert_eq!(
        get(&p, "B", "/"),
        "200 authorizationpolicy/web-from-pod-network"
    );
    assert_eq!(get(&p, "U", "/"), "403");
    assert_eq!(get(&p, "X", "/"), "403");
    assert_eq!(get(&p, "K", "/"), "403");
    assert_eq!(get(&p, "K", "/ready"), "200 default/probe");
}

#[test]
fn f06_and_within_a_policy_or_across_policies() {
    let frontend_in_legacy = Client::meshed(
        id("frontend.shop.serviceaccount.identity.linkerd.cluster.local"),
        ip("10.42.3.40"),
    );
    let a = web_8080(resources("06a"));
    for c in ["A", "B", "U", "X"] {
        assert_eq!(get(&a, c, "/"), "403", "06a {c}");
    }
    assert_eq!(
        http(&a, &frontend_in_legacy, "GET", "/", &[]),
        "200 authorizationpolicy/web-frontend-and-legacy-subnet"
    );
    let mut set: Vec<Resource> = resources("06a")
        .into_iter()
        .filter(|r| !matches!(r, Resource::AuthorizationPolicy(_)))
        .collect();
    set.extend(resources("06b"));
    let b = web_8080(set);
    assert_eq!(
        get(&b, "A", "/"),
        "200 authorizationpolicy/web-from-frontend"
    );
    assert_eq!(get(&b, "B", "/"), "403");
    assert_eq!(
        get(&b, "U", "/"),
        "200 authorizationpolicy/web-from-legacy-subnet"
    );
    assert_eq!(get(&b, "X", "/"), "403");
    assert!(http(&b, &frontend_in_legacy, "GET", "/", &[]).starts_with("200 authorizationpolicy/"));
}

#[test]
fn f07_per_route() {
    let p = web_8080(resources("07"));
    let all = ["A", "B", "U", "X", "K"];
    let row = |method: &str, path: &str, headers: &[(&str, &str)], want: [&str; 5]| {
        for (c, w) in all.iter().zip(want) {
            assert_eq!(
                http(&p, &client(c), method, path, headers),
                w,
                "{method} {path} {headers:?} {c}"
            );
        }
    };
    let read = "200 authorizationpolicy/api-read";
    let write = "200 authorizationpolicy/api-write";
    let probes = "200 authorizationpolicy/probes";
    for path in ["/api/items", "/api", "/api/"] {
        row("GET", path, &[], [read, read, "403", "403", "403"]);
    }
    row("GET", "/apiary", &[], ["404"; 5]);
    row(
        "POST",
        "/api/items",
        &[],
        [write, "403", "403", "403", "403"],
    );
    row(
        "DELETE",
        "/api/items/42",
        &[("x-confirm", "yes")],
        [write, "403", "403", "403", "403"],
    );
    row("DELETE", "/api/items/42", &[], ["404"; 5]);
    row(
        "DELETE",
        "/api/items/abc",
        &[("x-confirm", "yes")],
        ["404"; 5],
    );
    row("PATCH", "/api/items", &[], ["404"; 5]);
    row("GET", "/", &[], ["404"; 5]);
    row("GET", "/ready", &[], [probes; 5]);
    row("GET", "/live", &[], [probes; 5]);
    row("HEAD", "/ready", &[], ["404"; 5]);
    // The route labels are the HTTPRoute's.
    let d = decide_http(
        &p,
        &client("A"),
        &RequestHead {
            method: &Method::GET,
            uri: &"/api/items".parse().unwrap(),
            headers: &HeaderMap::new(),
        },
    );
    let HttpOutcome::Allowed { route, .. } = d.outcome else {
        panic!("{d:?}")
    };
    assert_eq!(
        (
            route.group.as_str(),
            route.kind.as_str(),
            route.name.as_str()
        ),
        ("policy.linkerd.io", "HTTPRoute", "web-api-read")
    );
    let nf = decide_http(
        &p,
        &client("A"),
        &RequestHead {
            method: &Method::GET,
            uri: &"/".parse().unwrap(),
            headers: &HeaderMap::new(),
        },
    );
    let r = nf.refusal(&client("A"), true).unwrap();
    assert_eq!(
        (r.grpc_status, r.error),
        (Some(5), "no route found for request")
    );
}

#[test]
fn f09_default_policy_from_namespace_and_workload_annotations() {
    let docs = parse_file(Path::new("09"), fixture("09"));
    assert!(docs.refused.is_empty() && docs.resources.is_empty());
    assert_eq!(
        docs.skipped.len(),
        2,
        "the Namespace and Deployment are not policy"
    );
    let ns: BTreeMap<_, _> = [(
        "shop".to_string(),
        [(
            "config.linkerd.io/default-inbound-policy".to_string(),
            "deny".to_string(),
        )]
        .into(),
    )]
    .into();
    let p = policy_of(Vec::new(), &web(), &ns, 8080);
    assert_eq!(p.server.to_string(), "default/deny");
    for c in ["A", "B", "U", "X", "K"] {
        assert_eq!(get(&p, c, "/"), "403", "{c}");
        assert_eq!(get(&p, c, "/ready"), "200 default/probe", "{c}");
        assert_eq!(get(&p, c, "/live"), "200 default/probe", "{c}");
        assert!(!decide_tcp(&p, &client(c)).is_allowed(), "{c}");
        let other = policy_of(Vec::new(), &web(), &ns, 9000);
        assert_eq!(get(&other, c, "/"), "403", "{c} :9000");
    }
    assert_eq!(
        decide_tcp(&p, &client("A")).error().unwrap(),
        "unauthorized connection on default/deny"
    );
    // web-internal: the workload annotation wins; no probes, so no probe route.
    let mut internal = web();
    internal.name = "web-internal".into();
    internal.probes.clear();
    internal.annotations.insert(
        "config.linkerd.io/default-inbound-policy".into(),
        "all-authenticated".into(),
    );
    let p = policy_of(Vec::new(), &internal, &ns, 8080);
    assert_eq!(get(&p, "A", "/"), "200 default/all-authenticated");
    assert_eq!(get(&p, "B", "/"), "200 default/all-authenticated");
    assert_eq!(get(&p, "U", "/"), "403");
    assert_eq!(get(&p, "X", "/"), "403");
    assert_eq!(get(&p, "U", "/ready"), "403");
    // The agent setting applies without annotations; an invalid annotation denies.
    let p = policy_of(Vec::new(), &web(), &BTreeMap::new(), 8080);
    assert_eq!(get(&p, "X", "/"), "200 default/all-unauthenticated");
    let mut bad = web();
    bad.annotations.insert(
        "config.linkerd.io/default-inbound-policy".into(),
        "allow-all".into(),
    );
    let index = compile(
        &PolicySet::default(),
        &[bad.clone()],
        &BTreeMap::new(),
        &PolicySettings::default(),
    );
    assert_eq!(get(&index.port(&bad.key(), 8080).unwrap(), "A", "/"), "403");
    assert!(
        index
            .reports
            .iter()
            .any(|r| r.contains("invalid mode: \"allow-all\"")),
        "{:?}",
        index.reports
    );
}

#[test]
fn defaults_cluster_networks_and_require_identity() {
    let settings = |d: &str| PolicySettings {
        default_policy: d.parse().unwrap(),
        ..PolicySettings::default()
    };
    let run = |d: &str, w: &PolicyWorkload, c: &str| {
        let index = compile(
            &PolicySet::default(),
            std::slice::from_ref(w),
            &BTreeMap::new(),
            &settings(d),
        );
        get(&index.port(&w.key(), 8080).unwrap(), c, "/")
    };
    let w = web();
    assert_eq!(
        run("cluster-unauthenticated", &w, "U"),
        "200 default/cluster-unauthenticated"
    );
    assert_eq!(run("cluster-unauthenticated", &w, "X"), "403");
    assert_eq!(
        run("cluster-authenticated", &w, "A"),
        "200 default/cluster-authenticated"
    );
    assert_eq!(run("cluster-authenticated", &w, "U"), "403");
    assert_eq!(run("audit", &w, "X"), "200 default/audit");
    let mut strict = web();
    strict.annotations.insert(
        "config.linkerd.io/proxy-require-identity-inbound-ports".into(),
        "8080,9000-9001".into(),
    );
    assert_eq!(run("all-unauthenticated", &strict, "U"), "403");
    assert_eq!(
        run("all-unauthenticated", &strict, "A"),
        "200 default/all-authenticated"
    );
}

#[test]
fn f11_audit() {
    let p = web_8080(resources("11"));
    assert_eq!(
        get(&p, "A", "/"),
        "200 authorizationpolicy/web-from-frontend"
    );
    for c in ["B", "U", "X"] {
        assert_eq!(get(&p, c, "/"), "200 default/audit", "{c}");
        let d = decide_http(
            &p,
            &client(c),
            &RequestHead {
                method: &Method::GET,
                uri: &"/".parse().unwrap(),
                headers: &HeaderMap::new(),
            },
        );
        assert!(matches!(
            d.outcome,
            HttpOutcome::Allowed { audit: true, .. }
        ));
        assert_eq!(get(&p, c, "/ready"), "200 default/probe");
    }
    // accessPolicy deny in place: B/U/X denied on their next request.
    let text = fixture("11").replace("accessPolicy: audit", "accessPolicy: deny");
    let docs = parse_file(Path::new("11"), &text);
    let p = web_8080(docs.resources.into_iter().map(|l| l.resource).collect());
    for c in ["B", "U", "X"] {
        assert_eq!(get(&p, c, "/"), "403", "{c}");
    }
}

#[test]
fn f13_legacy_server_authorization() {
    let p = web_8080(resources("13"));
    assert!(get(&p, "A", "/").starts_with("200 serverauthorization/web-"));
    assert_eq!(get(&p, "B", "/"), "200 serverauthorization/web-in-cluster");
    assert_eq!(get(&p, "U", "/"), "200 serverauthorization/web-in-cluster");
    assert_eq!(get(&p, "X", "/"), "403", "not in the cluster networks");
    assert_eq!(get(&p, "K", "/"), "200 serverauthorization/web-in-cluster");
    let text = fixture("13").replace(
        "    unauthenticated: true",
        "    unauthenticated: true\n    networks: [{cidr: 0.0.0.0/0}, {cidr: ::/0}]",
    );
    let docs = parse_file(Path::new("13"), &text);
    assert!(docs.refused.is_empty(), "{:?}", docs.refused);
    let p = web_8080(docs.resources.into_iter().map(|l| l.resource).collect());
    assert_eq!(get(&p, "X", "/"), "200 serverauthorization/web-in-cluster");
}

fn db() -> PolicyWorkload {
    PolicyWorkload {
        namespace: "shop".into(),
        name: "db".into(),
        labels: [("app".to_string(), "db".to_string())].into(),
        ports: vec![ContainerPort {
            name: Some("pg".into()),
            port: 5432,
            protocol: "TCP".into(),
        }],
        opaque_ports: [5432].into(),
        ..PolicyWorkload::default()
    }
}

#[test]
fn f17_opaque_tcp_and_termination_on_change() {
    let set = resources("17");
    let p = policy_of(set.clone(), &db(), &BTreeMap::new(), 5432);
    let a = decide_tcp(&p, &client("A"));
    assert_eq!(a.server.to_string(), "server/db-tcp");
    assert!(
        matches!(a.outcome, TcpOutcome::Allowed { authz, audit: false } if authz.to_string() == "authorizationpolicy/db-from-frontend")
    );
    assert!(!decide_tcp(&p, &client("B")).is_allowed());
    assert!(!decide_tcp(&p, &client("U")).is_allowed());
    assert_eq!(
        decide_tcp(&p, &client("U")).error().unwrap(),
        "unauthorized connection on server/db-tcp"
    );
    // The policy without the AuthorizationPolicy: A's open connection re-checked, denied.
    let without: Vec<Resource> = set
        .iter()
        .filter(|r| !matches!(r, Resource::AuthorizationPolicy(_)))
        .cloned()
        .collect();
    let p2 = policy_of(without, &db(), &BTreeMap::new(), 5432);
    assert!(!decide_tcp(&p2, &client("A")).is_allowed());
    // An HTTP/1 Server has no TCP authorizations, even in audit.
    let text = fixture("17").replace(
        "proxyProtocol: opaque",
        "proxyProtocol: HTTP/1\n  accessPolicy: audit",
    );
    let docs = parse_file(Path::new("17"), &text);
    assert!(docs.refused.is_empty(), "{:?}", docs.refused);
    let p3 = policy_of(
        docs.resources.into_iter().map(|l| l.resource).collect(),
        &db(),
        &BTreeMap::new(),
        5432,
    );
    for c in ["A", "B", "U"] {
        assert_eq!(
            decide_tcp(&p3, &client(c)).outcome,
            TcpOutcome::Denied(super::decide::TcpDenial::NotTcpServer)
        );
    }
}

#[test]
fn f19_every_malformed_document_is_refused_with_linkerds_message() {
    let docs = parse_file(Path::new("19-malformed.yaml"), fixture("19"));
    assert!(docs.resources.is_empty(), "{:?}", docs.resources);
    let want = [
        ("NetworkAuthentication shop/m1-bad-cidr", "data did not match any variant of untagged enum Cidr"),
        ("NetworkAuthentication shop/m2-except-outside", "cidr '10.1.1.0/24' does not include exception '10.1.2.0/24'"),
        ("NetworkAuthentication shop/m3-except-all", "cidr '10.1.1.0/24' is completely negated by exception '10.1.0.0/16'"),
        ("AuthorizationPolicy shop/m4-target-deployment", "unsupported authorization target type: Deployment.apps"),
        ("AuthorizationPolicy shop/m5-other-namespace", "cannot target another namespace: jobs"),
        ("AuthorizationPolicy shop/m6-two-mtls", "only a single MeshTLSAuthentication may be set"),
        ("AuthorizationPolicy shop/m7-missing-group", "unsupported authentication kind(s): NetworkAuthentication"),
        ("Server shop/m8-no-port", "spec.port: Required value"),
        ("Server shop/m9-bad-access-policy", "Invalid 'accessPolicy' field: invalid mode: \"allow-all\""),
        ("Server shop/m10-bad-protocol", "unknown variant `HTTP/3`, expected one of `unknown`, `HTTP/1`, `HTTP/2`, `gRPC`, `opaque`, `TLS`"),
        ("Server shop/m11-port-zero", "data did not match any variant of untagged enum Port"),
        ("MeshTLSAuthentication shop/m12-bad-identity", "id Frontend_SA.shop.serviceaccount.identity.linkerd.cluster.local is invalid: identity must be a valid SPIFFE id or a DNS SAN, matching the regex: ^(\\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        ("MeshTLSAuthentication shop/m13-namespaced-namespace", "Namespace identity_ref is cluster-scoped and cannot have a namespace"),
        ("ServerAuthorization shop/m14-saz-both", "`unauthenticated` must be false if `mesh_tls` is specified"),
        ("HTTPRoute shop/m15-relative-path", "HttpPathMatch paths must be absolute (begin with `/`); \"api\" is not an absolute path"),
    ];
    assert_eq!(docs.refused.len(), want.len(), "{:#?}", docs.refused);
    for (e, (what, message)) in docs.refused.iter().zip(want) {
        let text = e.to_string();
        assert!(text.starts_with("19-malformed.yaml:"), "{text}");
        assert!(
            text.contains(what) && text.contains(message),
            "want {what}: {message}\n got {text}"
        );
    }
    // Each names its document's line: M1's `cidr` line, M8's document.
    assert_eq!(docs.refused[0].field, "spec.networks[0].cidr");
    assert!(docs.refused[7].line > docs.refused[6].line);
}

#[test]
fn non_policy_kinds_are_skipped_and_unsupported_policy_kinds_refused() {
    let docs = parse_file(Path::new("00"), fixture("00"));
    assert!(docs.refused.is_empty() && docs.resources.is_empty());
    assert_eq!(docs.skipped.len(), 8);
    let docs = parse_file(
        Path::new("x.yaml"),
        "apiVersion: policy.linkerd.io/v1alpha1\nkind: HTTPLocalRateLimitPolicy\nmetadata: {name: r, namespace: shop}\nspec: {}\n",
    );
    assert_eq!(
        docs.refused[0].to_string(),
        "x.yaml:1: HTTPLocalRateLimitPolicy shop/r: unsupported resource type: policy.linkerd.io.v1alpha1.HTTPLocalRateLimitPolicy"
    );
    let docs = parse_file(
        Path::new("x.yaml"),
        "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {name: s, namespace: shop}\nspec:\n  podSelector: {}\n  port: 80\n  prot: HTTP/1\n",
    );
    let e = docs.refused[0].to_string();
    assert!(
        e.starts_with("x.yaml:7: Server shop/s: ") && e.contains("unknown field `prot`"),
        "{e}"
    );
}

#[test]
fn a_missing_authentication_makes_the_policy_inert_and_is_reported() {
    let set: Vec<Resource> = resources("01")
        .into_iter()
        .filter(|r| !matches!(r, Resource::MeshTlsAuthentication(_)))
        .collect();
    let index = compile(
        &PolicySet { resources: set },
        &[web()],
        &BTreeMap::new(),
        &PolicySettings::default(),
    );
    let p = index.port("shop/web", 8080).unwrap();
    assert_eq!(get(&p, "A", "/"), "403");
    assert!(
        index
            .reports
            .iter()
            .any(|r| r
                .contains("could not find MeshTLSAuthentication frontend-only in namespace shop")),
        "{:?}",
        index.reports
    );
}

#[test]
fn identity_wildcards_and_identity_refs() {
    let text = "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: web-http, namespace: shop}
spec: {podSelector: {matchLabels: {app: web}}, port: http}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: shop-sas, namespace: shop}
spec:
  identities: ['*.shop.serviceaccount.identity.linkerd.cluster.local']
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: jobs-ns, namespace: shop}
spec:
  identityRefs: [{kind: Namespace, name: jobs}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: from-shop, namespace: shop}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: web-http}
  requiredAuthenticationRefs: [{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: shop-sas}]
";
    let docs = parse_file(Path::new("w.yaml"), text);
    assert!(docs.refused.is_empty(), "{:?}", docs.refused);
    let set: Vec<Resource> = docs.resources.iter().map(|l| l.resource.clone()).collect();
    let p = web_8080(set.clone());
    assert_eq!(get(&p, "A", "/"), "200 authorizationpolicy/from-shop");
    assert_eq!(
        get(&p, "A-spiffe", "/"),
        "200 authorizationpolicy/from-shop"
    );
    assert_eq!(get(&p, "B", "/"), "403");
    let jobs = parse_file(
        Path::new("w.yaml"),
        &text.replace("name: shop-sas}]", "name: jobs-ns}]"),
    );
    let p = web_8080(jobs.resources.into_iter().map(|l| l.resource).collect());
    assert_eq!(get(&p, "B", "/"), "200 authorizationpolicy/from-shop");
    assert_eq!(get(&p, "A", "/"), "403");
}

#[test]
fn server_conflict_oldest_wins_then_name() {
    let server = |name: &str, ts: &str| {
        format!("apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {{name: {name}, namespace: shop, creationTimestamp: '{ts}'}}\nspec: {{podSelector: {{}}, port: 8080, accessPolicy: all-unauthenticated}}\n---\n")
    };
    let text = server("b-new", "2025-01-02T00:00:00Z")
        + &server("c-old", "2024-01-01T00:00:00Z")
        + &server("a-new", "2025-01-02T00:00:00Z");
    let docs = parse_file(Path::new("c.yaml"), &text);
    let index = compile(
        &PolicySet {
            resources: docs.resources.into_iter().map(|l| l.resource).collect(),
        },
        &[web()],
        &BTreeMap::new(),
        &PolicySettings::default(),
    );
    assert_eq!(index.port("shop/web", 8080).unwrap().server.name, "c-old");
    assert!(
        index.reports.iter().any(|r| r.contains("a-new")),
        "{:?}",
        index.reports
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn any_client() -> impl Strategy<Value = Client> {
        let ip = prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u16; 8]>().prop_map(IpAddr::from),
        ]
        .prop_filter("not loopback", |ip| !ip.to_canonical().is_loopback());
        let identity = proptest::option::of(
            ("[a-z]{1,8}", "[a-z]{1,8}")
                .prop_map(|(ns, sa)| Identity::new("cluster.local", ns, sa)),
        );
        (identity, ip).prop_map(|(identity, addr)| Client { identity, addr })
    }

    fn any_request() -> impl Strategy<Value = (Method, String)> {
        (
            prop_oneof![
                Just(Method::GET),
                Just(Method::POST),
                Just(Method::HEAD),
                Just(Method::DELETE)
            ],
            "(/[a-z0-9]{0,6}){1,3}",
        )
    }

    fn no_probes() -> PolicyWorkload {
        let mut w = web();
        w.probes.clear();
        w
    }

    proptest! {
        /// A Server with no authorization (accessPolicy deny) never allows a client that
        /// is not on localhost, whatever it sends.
        #[test]
        fn a_server_without_authorizations_never_allows(client in any_client(), (method, path) in any_request(), proto in prop_oneof![Just("unknown"), Just("HTTP/1"), Just("opaque"), Just("gRPC")]) {
            let text = format!("apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {{name: s, namespace: shop}}\nspec: {{podSelector: {{}}, port: 8080, proxyProtocol: {proto}}}\n");
            let docs = parse_file(Path::new("p.yaml"), &text);
            prop_assert!(docs.refused.is_empty());
            let p = policy_of(docs.resources.into_iter().map(|l| l.resource).collect(), &no_probes(), &BTreeMap::new(), 8080);
            prop_assert!(!decide_tcp(&p, &client).is_allowed());
            let uri: Uri = path.parse().unwrap();
            let d = decide_http(&p, &client, &RequestHead { method: &method, uri: &uri, headers: &HeaderMap::new() });
            prop_assert!(!d.is_allowed());
        }

        /// The `deny` default never allows, from any source of the default.
        #[test]
        fn the_deny_default_never_allows(client in any_client(), (method, path) in any_request(), port in 1u16.., source in 0..3) {
            let mut w = no_probes();
            let mut ns = BTreeMap::new();
            let mut settings = PolicySettings::default();
            match source {
                0 => settings.default_policy = super::super::DefaultPolicy::Deny,
                1 => { ns.insert("shop".to_string(), [("config.linkerd.io/default-inbound-policy".to_string(), "deny".to_string())].into()); }
                _ => { w.annotations.insert("config.linkerd.io/default-inbound-policy".into(), "deny".into()); }
            }
            let index = compile(&PolicySet::default(), std::slice::from_ref(&w), &ns, &settings);
            let p = index.port(&w.key(), port).unwrap();
            prop_assert!(!decide_tcp(&p, &client).is_allowed());
            let uri: Uri = path.parse().unwrap();
            let d = decide_http(&p, &client, &RequestHead { method: &method, uri: &uri, headers: &HeaderMap::new() });
            prop_assert!(!d.is_allowed());
        }
    }
}
