//! The pod's policy enforced through the real HTTP proxy ([`super::l7::http::proxy`]) on one
//! kept-alive connection: the spec's F01 (Server `web-http`, HTTP/1, only `frontend` may
//! call it). Denied requests get Linkerd's answers and never reach the app; a policy
//! published while the connection is open applies to its next request; the counters are
//! exact.

use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, path::Path, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::{
    authorize::InboundAuthz,
    context::PodContext,
    l7::{detect::Protocol, http},
    ProxyContext,
};
use crate::{
    conn::{testing, Direction},
    identity::Identity,
    netns::Netns,
    policy::{compile, document::parse_file, PolicySet, PolicySettings, PolicyWorkload},
    state::StateStore,
    telemetry::TrafficLabels,
};

const F01: &str = include_str!("../policy/testdata/01-server-meshtls-identity.yaml");

fn policy_set(yaml: &str) -> PolicySet {
    let docs = parse_file(Path::new("f01.yaml"), yaml);
    assert!(docs.refused.is_empty(), "{:?}", docs.refused);
    PolicySet {
        resources: docs.resources.into_iter().map(|d| d.resource).collect(),
    }
}

fn publish(ctx: &ProxyContext, set: &PolicySet) {
    let web = PolicyWorkload {
        namespace: "shop".into(),
        name: "web-1".into(),
        labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
        ports: vec![crate::policy::compile::ContainerPort {
            name: Some("http".into()),
            port: 8080,
            protocol: "TCP".into(),
        }],
        ..Default::default()
    };
    let settings = PolicySettings::default();
    let index = compile(set, &[web], &BTreeMap::new(), &settings);
    ctx.policy.publish(index, settings);
}

/// `shop/web-1` (label `app: web`), in this process' own namespace.
fn web_pod(ctx: &ProxyContext) -> PodContext {
    let mut w = (*testing::workload("web-1", "web", "10.0.0.2")).clone();
    w.namespace = "shop".into();
    w.labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
    PodContext {
        workload: Arc::new(w),
        netns: Arc::new(Netns::open(Path::new("/proc/self/ns/net")).expect("netns")),
        identity: None,
        budgets: ctx.budgets.pod(),
        delivery_mark: None,
    }
}

/// The app: counts the requests that reach it, answers 200.
async fn app(io: tokio::io::DuplexStream, arrived: mpsc::UnboundedSender<String>) {
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let arrived = arrived.clone();
        async move {
            let _ = arrived.send(req.uri().path().to_string());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    arrived: mpsc::UnboundedReceiver<String>,
}

/// One client connection through the proxy as `identity` (meshed) or plaintext.
async fn connect(ctx: &Arc<ProxyContext>, identity: Option<Identity>) -> Conn {
    let pod = web_pod(ctx);
    let target: SocketAddr = "10.0.0.2:8080".parse().expect("target");
    let peer: SocketAddr = "10.0.1.10:40000".parse().expect("peer");
    let authz = InboundAuthz::new(
        ctx.policy.clone(),
        ctx.telemetry.clone(),
        &pod,
        target,
        peer,
        identity,
        ctx.telemetry
            .stats
            .workload("inbound", "shop", "web", "web-1"),
    );
    let conn = Arc::new(testing::context(Direction::Inbound));
    let t = ctx.telemetry.clone();
    let reporter = Arc::new(t.requests(TrafficLabels::from(&*conn), t.stats.connection(&conn)));
    let (client, proxy_side) = tokio::io::duplex(1 << 16);
    let (upstream, app_side) = tokio::io::duplex(1 << 16);
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    tokio::spawn(app(app_side, arrived_tx));
    tokio::spawn(http::proxy(
        ctx.clone(),
        conn,
        reporter,
        Some(authz),
        Protocol::Http1,
        proxy_side,
        upstream,
    ));
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .expect("client handshake");
    tokio::spawn(connection);
    Conn { sender, arrived }
}

/// Status and `l5d-proxy-error` of one GET.
async fn get(c: &mut Conn, path: &str) -> (u16, Option<String>) {
    c.sender.ready().await.expect("connection open");
    let req = Request::get(path)
        .header("host", "web.shop")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = c.sender.send_request(req).await.expect("response");
    let error = resp
        .headers()
        .get("l5d-proxy-error")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    (status, error)
}

fn count(text: &str, family: &str, needle: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn requests_are_decided_one_by_one_against_the_current_policy() {
    let ctx = ProxyContext::for_tests(StateStore::new());
    publish(&ctx, &policy_set(F01));

    // frontend (meshed, in its SPIFFE form too): allowed, reaches the app.
    let spiffe: Identity = "spiffe://cluster.local/ns/shop/sa/frontend"
        .parse()
        .expect("spiffe");
    let mut a = connect(&ctx, Some(spiffe)).await;
    assert_eq!(get(&mut a, "/").await, (200, None));
    assert_eq!(a.arrived.recv().await.as_deref(), Some("/"));

    // Another meshed client: 403 with the diagnostic header; an unmeshed one: 403 without.
    let batch: Identity = "spiffe://cluster.local/ns/jobs/sa/batch"
        .parse()
        .expect("batch");
    let mut b = connect(&ctx, Some(batch)).await;
    assert_eq!(
        get(&mut b, "/x").await,
        (403, Some("unauthorized request on route".into()))
    );
    let mut u = connect(&ctx, None).await;
    assert_eq!(get(&mut u, "/y").await, (403, None));
    // The connection stays open: a second request gets its own answer.
    assert_eq!(get(&mut u, "/y").await, (403, None));

    // Tightened while A's connection is open (the policy is gone: the Server alone denies):
    // A's next request on the same connection is refused.
    publish(
        &ctx,
        &policy_set(F01.split("\n---\n").next().expect("server")),
    );
    assert_eq!(
        get(&mut a, "/after").await,
        (403, Some("unauthorized request on route".into()))
    );
    // Loosened again: the same connection goes on.
    publish(&ctx, &policy_set(F01));
    assert_eq!(get(&mut a, "/again").await, (200, None));
    assert_eq!(a.arrived.recv().await.as_deref(), Some("/again"));

    // Nothing denied reached the app.
    assert!(b.arrived.try_recv().is_err());
    assert!(u.arrived.try_recv().is_err());
    assert!(a.arrived.try_recv().is_err());

    let text = ctx.telemetry.metrics.encode();
    let allow = "inbound_http_authz_allow_total";
    let deny = "inbound_http_authz_deny_total";
    assert_eq!(
        count(
            &text,
            allow,
            r#"authz_kind="authorizationpolicy",authz_name="web-from-frontend",tls="true",client_id="frontend.shop.serviceaccount.identity.linkerd.cluster.local""#
        ),
        2,
        "{text}"
    );
    assert_eq!(
        count(
            &text,
            deny,
            r#"client_id="batch.jobs.serviceaccount.identity.linkerd.cluster.local""#
        ),
        1
    );
    assert_eq!(
        count(&text, deny, r#"no_tls_reason="no_tls_from_remote""#),
        2
    );
    assert_eq!(count(&text, deny, r#"client_id="frontend.shop"#), 1);
    assert_eq!(
        count(
            &text,
            deny,
            r#"srv_name="web-http",route_group="",route_kind="default",route_name="default""#
        ),
        4
    );
    assert_eq!(
        count(
            &text,
            deny,
            r#"namespace="shop",pod="web-1",deployment="web""#
        ),
        4
    );
    // `meshd stat`: the four refusals, per second of a 10 s window.
    let rows = ctx.telemetry.stats.rows(10);
    let row = rows
        .iter()
        .find(|r| r.namespace == "shop" && r.pod == "web-1")
        .expect("row");
    assert!((row.unauthorized_rps - 0.4).abs() < 1e-9, "{row:?}");
    // `meshd authz`: the allowed requests on the policy's row (200s: all successes), the
    // refusals on the server's row without authorization.
    let rows = ctx.telemetry.authz.rows(10);
    let find = |authz: &str| {
        rows.iter()
            .find(|r| r.key.server == "web-http" && r.key.authorization == authz)
            .unwrap_or_else(|| panic!("no row {authz:?}: {rows:?}"))
    };
    let allowed = find("authorizationpolicy/web-from-frontend");
    assert!(
        (allowed.rps - 0.2).abs() < 1e-9 && allowed.success_rate == Some(1.0),
        "{allowed:?}"
    );
    assert!((find("").unauthorized_rps - 0.4).abs() < 1e-9);
}

const DB: &str = r#"
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: db-tcp, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  port: 8080
  proxyProtocol: opaque
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: frontend-only, namespace: shop}
spec:
  identities: ["frontend.shop.serviceaccount.identity.linkerd.cluster.local"]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: db-from-frontend, namespace: shop}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: db-tcp}
  requiredAuthenticationRefs:
    - {name: frontend-only, kind: MeshTLSAuthentication, group: policy.linkerd.io}
"#;

/// The TCP path: decided once per connection (allowed: counted once however often it is
/// asked), and an allowed connection is closed and counted as terminated when a policy
/// change denies it.
#[tokio::test]
async fn tcp_connections_are_decided_once_and_terminated_on_a_policy_change() {
    let ctx = ProxyContext::for_tests(StateStore::new());
    publish(&ctx, &policy_set(DB));
    let pod = web_pod(&ctx);
    let target: SocketAddr = "10.0.0.2:8080".parse().expect("target");
    let peer: SocketAddr = "10.0.1.10:40000".parse().expect("peer");
    let authz = |id: Option<&str>| {
        InboundAuthz::new(
            ctx.policy.clone(),
            ctx.telemetry.clone(),
            &pod,
            target,
            peer,
            id.map(|i| i.parse().expect("identity")),
            ctx.telemetry
                .stats
                .workload("inbound", "shop", "web", "web-1"),
        )
    };
    let a = authz(Some("spiffe://cluster.local/ns/shop/sa/frontend"));
    assert!(a.is_opaque());
    assert!(a.check_tcp().is_ok());
    assert!(
        a.check_tcp().is_ok(),
        "asked again: allowed, not counted again"
    );
    let u = authz(None);
    assert_eq!(
        u.check_tcp().map_err(|e| e.to_string()),
        Err("unauthorized connection on server/db-tcp".to_string())
    );

    let guard = ctx.connections.open(testing::context(Direction::Inbound));
    let id = guard.context().id;
    let watcher = tokio::spawn(crate::proxy::authorize::watch_tcp(
        a.clone(),
        ctx.connections.clone(),
        id,
    ));
    // A change that still allows it: the connection goes on.
    publish(&ctx, &policy_set(DB));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!watcher.is_finished());
    // The policy is removed: the connection is closed.
    publish(
        &ctx,
        &policy_set(DB.split("\n---\n").next().expect("server")),
    );
    tokio::time::timeout(std::time::Duration::from_secs(5), guard.cancelled())
        .await
        .expect("terminated");
    watcher.await.expect("watcher");

    let text = ctx.telemetry.metrics.encode();
    assert_eq!(
        count(
            &text,
            "inbound_tcp_authz_allow_total",
            r#"srv_name="db-tcp",authz_group="policy.linkerd.io",authz_kind="authorizationpolicy",authz_name="db-from-frontend",tls="true""#
        ),
        1,
        "{text}"
    );
    assert_eq!(
        count(
            &text,
            "inbound_tcp_authz_deny_total",
            r#"srv_name="db-tcp",tls="no_identity""#
        ),
        1
    );
    assert_eq!(
        count(
            &text,
            "inbound_tcp_authz_terminate_total",
            r#"srv_name="db-tcp",tls="true",client_id="frontend.shop.serviceaccount.identity.linkerd.cluster.local""#
        ),
        1
    );
}
