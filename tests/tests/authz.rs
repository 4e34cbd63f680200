//! Authorization policy enforced by the agent, through the namespaces cluster with real
//! clients: the users' payments / orders / web micro-segmentation, applied verbatim as
//! Linkerd YAML. `order-service` reaches `payment-api` over HTTP/2, `frontend` gets 403 from
//! it, `frontend` reaches `order-api`, an unmeshed client gets 403 (HTTP) or a closed
//! connection (an opaque port); the deny counter and the users' PromQL query on a real
//! Prometheus show the denials of the right deployment. Then a policy change under
//! traffic: the next request on a kept-alive connection is refused and an open opaque
//! connection is terminated, and loosening it lets the same HTTP connection go on.

use std::{process::Command, time::Duration};

use meshd_tests::{
    mesh::{config_yaml, identity_init, with_identity, Agent, WorkloadSpec},
    replace_file, require_root,
    traffic::{curl_output, echo, spawn_listening, start_app},
    wait_until, Cluster, Pod,
};
use serde_json::Value;

const PAYMENTS: &str = "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: payment-api
  namespace: payments
spec:
  podSelector:
    matchLabels:
      app: payment-api
  port: 8080
  proxyProtocol: HTTP/2
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata:
  name: order-service
  namespace: payments
spec:
  identities:
    - order-service.orders.serviceaccount.identity.linkerd.cluster.local
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: payment-api-from-orders
  namespace: payments
spec:
  targetRef:
    group: policy.linkerd.io
    kind: Server
    name: payment-api
  requiredAuthenticationRefs:
    - name: order-service
      kind: MeshTLSAuthentication
      group: policy.linkerd.io
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: payment-db
  namespace: payments
spec:
  podSelector:
    matchLabels:
      app: payment-api
  port: 9090
  proxyProtocol: opaque
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: payment-db-from-orders
  namespace: payments
spec:
  targetRef:
    group: policy.linkerd.io
    kind: Server
    name: payment-db
  requiredAuthenticationRefs:
    - name: order-service
      kind: MeshTLSAuthentication
      group: policy.linkerd.io
";

const ORDERS: &str = "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: order-api
  namespace: orders
spec:
  podSelector:
    matchLabels:
      app: order-api
  port: 8080
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata:
  name: frontend
  namespace: orders
spec:
  identities:
    - frontend.web.serviceaccount.identity.linkerd.cluster.local
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: order-api-from-web
  namespace: orders
spec:
  targetRef:
    group: policy.linkerd.io
    kind: Server
    name: order-api
  requiredAuthenticationRefs:
    - name: frontend
      kind: MeshTLSAuthentication
      group: policy.linkerd.io
";

fn workload(pod: &Pod, namespace: &str, app: &str, opaque: &[u16]) -> WorkloadSpec {
    let mut w = WorkloadSpec::new(pod).label("app", app);
    w.namespace = namespace.into();
    w.service_account = app.into();
    w.opaque_ports = Some(opaque.to_vec());
    w.yaml(&format!("deployment: {app}"))
}

/// The HTTP status of one request from `pod` (`--http2-prior-knowledge` for `h2`).
fn status(c: &Cluster, pod: &Pod, url: &str, h2: bool) -> String {
    let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    if h2 {
        args.push("--http2-prior-knowledge");
    }
    args.push(url);
    let out = curl_output(c, pod, 10, &args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Prometheus in a node's namespace, scraping the agent's admin port every second.
struct Prometheus {
    netns: std::path::PathBuf,
}

impl Prometheus {
    fn start(c: &Cluster, node: &meshd_tests::Node) -> Prometheus {
        let dir = c.dir().join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n  - job_name: meshd\n    static_configs: [{targets: ['127.0.0.1:15000']}]\n",
        )
        .unwrap();
        let mut prom = Command::new("prometheus");
        prom.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:9090");
        c.spawn_in_node(node, prom).unwrap();
        let p = Prometheus {
            netns: node.netns_path.clone(),
        };
        assert!(
            wait_until(Duration::from_secs(30), || meshd_tests::http_get(
                &p.netns,
                "http://127.0.0.1:9090/api/v1/targets"
            )
            .is_ok_and(|(_, b)| b.contains("\"health\":\"up\""))),
            "prometheus scrapes the agent"
        );
        p
    }

    /// The samples of an instant query: labels and value; `None` if it failed.
    fn vector(&self, query: &str) -> Option<Vec<(Value, f64)>> {
        let q: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let url = format!("http://127.0.0.1:9090/api/v1/query?query={q}");
        let (code, body) = meshd_tests::http_get(&self.netns, &url).ok()?;
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"]
            .as_array()?
            .iter()
            .map(|r| Some((r["metric"].clone(), r["value"][1].as_str()?.parse().ok()?)))
            .collect()
    }
}

fn metric(agent: &Agent, family: &str, needles: &[&str]) -> u64 {
    let (_, text) = agent.get("/metrics").unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn payments_orders_web_segmentation_as_linkerd_yaml() {
    require_root().unwrap();
    let c = Cluster::new("authz-payments").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let payment = c.add_pod(&n1, "payment-api").unwrap();
    let order_svc = c.add_pod(&n1, "order-service").unwrap();
    let order_api = c.add_pod(&n1, "order-api").unwrap();
    let frontend = c.add_pod(&n1, "frontend").unwrap();
    let outsider = c.add_pod(&n1, "outsider").unwrap();
    let ca = identity_init(&c, "ca").unwrap();
    let policy_dir = c.dir().join("policy");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("payments.yaml"), PAYMENTS).unwrap();
    std::fs::write(policy_dir.join("orders.yaml"), ORDERS).unwrap();
    let yaml = config_yaml(
        &c,
        &n1,
        &[
            workload(&payment, "payments", "payment-api", &[9090]),
            workload(&order_svc, "orders", "order-service", &[]),
            workload(&order_api, "orders", "order-api", &[]),
            workload(&frontend, "web", "frontend", &[]),
        ],
        &[],
    );
    let yaml = format!("{yaml}policy: [{}]\n", policy_dir.display());
    let agent = Agent::start(
        &c,
        &n1,
        &with_identity(&yaml, &ca.join("ca.crt"), &ca, 3600),
    )
    .unwrap();

    // payment-api: HTTP/2 on 8080 (nghttpd), a greeting server on the opaque 9090.
    let docroot = c.dir().join("www");
    std::fs::create_dir_all(&docroot).unwrap();
    std::fs::write(docroot.join("index.html"), "paid\n").unwrap();
    let mut nghttpd = Command::new("nghttpd");
    nghttpd.args(["--no-tls", "-d"]).arg(&docroot).arg("8080");
    c.spawn_in_pod(&payment, nghttpd).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        let mut ss = Command::new("ss");
        ss.args(["-Hltn", "sport", "= :8080"]);
        c.run_in_pod(&payment, ss)
            .is_ok_and(|o| !o.stdout.is_empty())
    }));
    let mut greet = Command::new(meshd_tests::mesh::testapp_bin());
    greet.args(["serve", "--greet", "--listen", "0.0.0.0:9090"]);
    let db_app = spawn_listening(&c, &payment, greet);
    start_app(&c, &order_api, "python3", "http_app.py", 8080);

    let pay = format!("http://{}:8080/", payment.ip);
    let orders = format!("http://{}:8080/", order_api.ip);
    // Prometheus on the node, scraping the agent every second. It must hold a sample of
    // the first denial before the others come, for rate() to see an increase.
    let prom = Prometheus::start(&c, &n1);
    assert_eq!(status(&c, &order_svc, &pay, true), "200");
    assert_eq!(status(&c, &frontend, &pay, true), "403");
    assert!(
        wait_until(Duration::from_secs(30), || prom
            .vector("inbound_http_authz_deny_total")
            .is_some_and(|v| !v.is_empty())),
        "prometheus has the deny series"
    );
    // An increase of that series.
    assert_eq!(status(&c, &frontend, &pay, true), "403");
    assert_eq!(status(&c, &frontend, &orders, false), "200");
    assert_eq!(status(&c, &order_svc, &orders, false), "403");
    assert_eq!(status(&c, &outsider, &pay, true), "403");
    // The opaque port: order-service's connection carries bytes; the outsider's and
    // frontend's are closed before the app sees them.
    let db = format!("{}:9090", payment.ip);
    assert_eq!(echo(&c, &order_svc, &db, 1000)["ok"], true);
    for pod in [&outsider, &frontend] {
        let r = echo(&c, pod, &db, 1000);
        assert_eq!(r["ok"], false, "{}: {r}", pod.name);
    }
    let accepted = db_app
        .stdout()
        .lines()
        .filter(|l| l.starts_with("accepted"))
        .count();
    assert_eq!(
        accepted,
        1,
        "only order-service reached the app:\n{}",
        db_app.stdout()
    );

    // The counters, with Linkerd's labels and the deployment.
    let deny = "inbound_http_authz_deny_total";
    assert_eq!(
        metric(
            &agent,
            deny,
            &[r#"srv_name="payment-api""#, r#"deployment="payment-api""#]
        ),
        3
    );
    assert_eq!(
        metric(
            &agent,
            deny,
            &[
                r#"client_id="frontend.web.serviceaccount.identity.linkerd.cluster.local""#,
                r#"deployment="payment-api""#
            ]
        ),
        2
    );
    assert_eq!(
        metric(
            &agent,
            deny,
            &[r#"tls="no_identity",no_tls_reason="no_tls_from_remote""#]
        ),
        1
    );
    assert_eq!(
        metric(
            &agent,
            deny,
            &[
                r#"deployment="order-api""#,
                r#"client_id="order-service.orders.serviceaccount.identity.linkerd.cluster.local""#
            ]
        ),
        1
    );
    assert_eq!(
        metric(
            &agent,
            "inbound_http_authz_allow_total",
            &[
                r#"authz_name="payment-api-from-orders""#,
                r#"deployment="payment-api""#
            ]
        ),
        1
    );
    assert_eq!(
        metric(
            &agent,
            "inbound_tcp_authz_deny_total",
            &[r#"srv_name="payment-db""#]
        ),
        2
    );
    assert_eq!(
        metric(
            &agent,
            "inbound_tcp_authz_allow_total",
            &[
                r#"srv_name="payment-db""#,
                r#"authz_name="payment-db-from-orders""#
            ]
        ),
        1
    );

    // The users' query, as they run it against their Prometheus.
    let by_deployment = "sum(rate(inbound_http_authz_deny_total[5m])) by (deployment)";
    let mut rates = Vec::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            rates = prom.vector(by_deployment).unwrap_or_default();
            rates
                .iter()
                .any(|(l, v)| l["deployment"] == "payment-api" && *v > 0.0)
        }),
        "{by_deployment}: {rates:?}"
    );
    assert!(
        rates.iter().all(|(l, _)| l
            .as_object()
            .is_some_and(|o| o.len() == 1 && o.contains_key("deployment"))),
        "{rates:?}"
    );

    // `meshd authz` and `meshd diagnostics policy` see the same.
    let (_, rows) = agent.get("/authz?window=60").unwrap();
    let rows: Vec<Value> = serde_json::from_str(&rows).unwrap();
    assert!(
        rows.iter().any(|r| r["deployment"] == "payment-api"
            && r["authorization"] == ""
            && r["unauthorized_rps"].as_f64() > Some(0.0)),
        "{rows:?}"
    );
    let (_, diag) = agent
        .get("/policy?workload=payments/payment-api&port=8080")
        .unwrap();
    let diag: Value = serde_json::from_str(&diag).unwrap();
    assert_eq!(diag["policy"]["server"]["name"], "payment-api", "{diag}");
    agent.stop().unwrap();
}

/// One kept-alive HTTP connection sending `GET /status/200` every 20 ms, and one open
/// connection to an opaque port, until a file appears: a JSON line per request (status and
/// the HTTP connection's local port) and one when the opaque connection ends.
const LOOP_CLIENT: &str = r#"
import http.client, json, os, socket, sys, time
host, port, tcp_port, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
conn = http.client.HTTPConnection(host, port, timeout=5)
tcp = socket.create_connection((host, tcp_port), timeout=5)
tcp.recv(200)
tcp.setblocking(False)
print(json.dumps({"tcp": "open"}), flush=True)
tcp_open = True
while not os.path.exists(stop):
    t = time.time()
    try:
        conn.request("GET", "/status/200")
        r = conn.getresponse()
        r.read()
        print(json.dumps({"t": t, "status": r.status, "port": conn.sock.getsockname()[1]}), flush=True)
    except Exception as e:
        print(json.dumps({"t": t, "error": str(e)}), flush=True)
        conn = http.client.HTTPConnection(host, port, timeout=5)
    if tcp_open:
        try:
            if tcp.recv(200) == b"":
                tcp_open = False
                print(json.dumps({"t": t, "tcp": "closed"}), flush=True)
        except BlockingIOError:
            pass
        except OSError as e:
            tcp_open = False
            print(json.dumps({"t": t, "tcp": "reset", "error": str(e)}), flush=True)
    time.sleep(0.02)
print(json.dumps({"done": True}), flush=True)
"#;

const WEB_SERVERS: &str = "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: web-http, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  port: 8080
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: web-tcp, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  port: 9090
  proxyProtocol: opaque
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: frontend, namespace: shop}
spec:
  identities: [frontend.shop.serviceaccount.identity.linkerd.cluster.local]
";

const WEB_POLICIES: &str = "apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-http-from-frontend, namespace: shop}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: web-http}
  requiredAuthenticationRefs:
    - {name: frontend, kind: MeshTLSAuthentication, group: policy.linkerd.io}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-tcp-from-frontend, namespace: shop}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: web-tcp}
  requiredAuthenticationRefs:
    - {name: frontend, kind: MeshTLSAuthentication, group: policy.linkerd.io}
";

/// Tightening a policy under traffic: the next request on the kept-alive connection gets
/// 403 and every one after it until the policy is loosened (no request reaches the app in
/// between: the app's forwarded count equals the client's 200s), the open opaque
/// connection is terminated and counted; loosened again, the same HTTP connection goes on.
#[test]
fn a_policy_change_applies_to_the_next_request_and_terminates_open_tcp() {
    require_root().unwrap();
    let c = Cluster::new("authz-reload").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let web = c.add_pod(&n1, "web").unwrap();
    let frontend = c.add_pod(&n1, "frontend").unwrap();
    let ca = identity_init(&c, "ca").unwrap();
    let policy_dir = c.dir().join("policy");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("servers.yaml"), WEB_SERVERS).unwrap();
    let policies = policy_dir.join("policies.yaml");
    std::fs::write(&policies, WEB_POLICIES).unwrap();
    let yaml = config_yaml(
        &c,
        &n1,
        &[
            workload(&web, "shop", "web", &[9090]),
            workload(&frontend, "shop", "frontend", &[]),
        ],
        &[],
    );
    let yaml = format!("{yaml}policy: [{}]\n", policy_dir.display());
    let agent = Agent::start(
        &c,
        &n1,
        &with_identity(&yaml, &ca.join("ca.crt"), &ca, 3600),
    )
    .unwrap();
    start_app(&c, &web, "python3", "http_app.py", 8080);
    let mut greet = Command::new(meshd_tests::mesh::testapp_bin());
    greet.args(["serve", "--greet", "--listen", "0.0.0.0:9090"]);
    spawn_listening(&c, &web, greet);

    let stop = c.dir().join("stop-loop");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", LOOP_CLIENT, &web.ip.to_string(), "8080", "9090"])
        .arg(&stop);
    let client = c.spawn_in_pod(&frontend, cmd).unwrap();
    let lines = || -> Vec<Value> {
        client
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let statuses = |want: u64| lines().iter().filter(|l| l["status"] == want).count();
    assert!(
        wait_until(Duration::from_secs(20), || statuses(200) >= 10),
        "{}",
        client.stdout()
    );

    // Tightened: only the Servers, no authorization.
    replace_file(&policies, "");
    assert!(
        wait_until(Duration::from_secs(10), || statuses(403) >= 10),
        "{}",
        client.stdout()
    );
    // Loosened: the same connection carries 200s again.
    replace_file(&policies, WEB_POLICIES);
    let before = statuses(200);
    assert!(
        wait_until(Duration::from_secs(10), || statuses(200) >= before + 10),
        "{}",
        client.stdout()
    );
    std::fs::write(&stop, "").unwrap();
    assert!(wait_until(Duration::from_secs(10), || lines()
        .iter()
        .any(|l| l["done"] == true)));

    let all = lines();
    let requests: Vec<&Value> = all
        .iter()
        .filter(|l| {
            l.get("tcp").is_none() && (l.get("status").is_some() || l.get("error").is_some())
        })
        .collect();
    assert!(
        requests.iter().all(|l| l.get("error").is_none()),
        "no request failed: {all:?}"
    );
    // Phases: 200s, then 403s only, then 200s only.
    let codes: Vec<u64> = requests
        .iter()
        .filter_map(|l| l["status"].as_u64())
        .collect();
    let first_403 = codes.iter().position(|&s| s == 403).unwrap();
    let last_403 = codes.iter().rposition(|&s| s == 403).unwrap();
    assert!(codes[..first_403].iter().all(|&s| s == 200), "{codes:?}");
    assert!(
        codes[first_403..=last_403].iter().all(|&s| s == 403),
        "{codes:?}"
    );
    assert!(codes[last_403 + 1..].iter().all(|&s| s == 200), "{codes:?}");
    // One HTTP connection throughout.
    let ports: std::collections::BTreeSet<u64> =
        requests.iter().filter_map(|l| l["port"].as_u64()).collect();
    assert_eq!(ports.len(), 1, "{ports:?}");
    // The opaque connection was terminated when the policy went, and counted.
    assert!(
        all.iter()
            .any(|l| l["tcp"] == "closed" || l["tcp"] == "reset"),
        "{all:?}"
    );
    assert_eq!(
        metric(
            &agent,
            "inbound_tcp_authz_terminate_total",
            &[r#"srv_name="web-tcp""#]
        ),
        1
    );
    // Nothing refused reached the app: what the agent forwarded is exactly the 200s.
    let served = codes.iter().filter(|&&s| s == 200).count() as u64;
    assert_eq!(
        metric(
            &agent,
            "response_total",
            &[r#"direction="inbound""#, r#"deployment="web""#]
        ),
        served
    );
    assert_eq!(
        metric(
            &agent,
            "inbound_http_authz_deny_total",
            &[r#"srv_name="web-http""#]
        ),
        codes.len() as u64 - served
    );
    agent.stop().unwrap();
}

const AUDIT_AND_NETWORKS: &str = "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: audited, namespace: open}
spec:
  podSelector: {matchLabels: {app: audited}}
  port: 8080
  proxyProtocol: HTTP/1
  accessPolicy: audit
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: subnet, namespace: open}
spec:
  podSelector: {matchLabels: {app: subnet}}
  port: 8080
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: pods-but-one, namespace: open}
spec:
  networks:
    - cidr: 10.244.0.0/16
      except: [EXCEPT/32]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: subnet-from-pods, namespace: open}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: subnet}
  requiredAuthenticationRefs:
    - {name: pods-but-one, kind: NetworkAuthentication, group: policy.linkerd.io}
";

/// Default policies from each source (the agent's setting < the namespace annotation < the
/// workload annotation), the probe route under a `deny` default, `accessPolicy: audit`
/// (allowed, counted and logged as `audit`), and a NetworkAuthentication with `except`,
/// with plaintext clients from outside the mesh.
#[test]
fn defaults_probes_audit_and_networks_as_linkerd() {
    require_root().unwrap();
    let c = Cluster::new("authz-defaults").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let locked = c.add_pod(&n1, "locked").unwrap();
    let unlocked = c.add_pod(&n1, "unlocked").unwrap();
    let open = c.add_pod(&n1, "open").unwrap();
    let audited = c.add_pod(&n1, "audited").unwrap();
    let subnet = c.add_pod(&n1, "subnet").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let excepted = c.add_pod(&n1, "excepted").unwrap();
    let policy_dir = c.dir().join("policy");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(
        policy_dir.join("open.yaml"),
        AUDIT_AND_NETWORKS.replace("EXCEPT", &excepted.ip.to_string()),
    )
    .unwrap();
    let probed = |w: WorkloadSpec| {
        w.yaml(
            "ports: [{name: http, containerPort: 8080}]\nprobes: [{path: /status/200, port: http}]",
        )
    };
    let yaml = config_yaml(
        &c,
        &n1,
        &[
            probed(workload(&locked, "locked", "locked", &[])),
            workload(&unlocked, "locked", "unlocked", &[]).yaml(
                "annotations: {config.linkerd.io/default-inbound-policy: all-unauthenticated}",
            ),
            workload(&open, "open", "open", &[]),
            workload(&audited, "open", "audited", &[]),
            workload(&subnet, "open", "subnet", &[]),
        ],
        &[],
    );
    let yaml = format!(
        "{yaml}policy: [{}]\ndefaultInboundPolicy: all-unauthenticated\nnamespaces:\n  - name: locked\n    annotations: {{config.linkerd.io/default-inbound-policy: deny}}\n",
        policy_dir.display()
    );
    let agent = Agent::start(&c, &n1, &yaml).unwrap();
    for pod in [&locked, &unlocked, &open, &audited, &subnet] {
        start_app(&c, pod, "python3", "http_app.py", 8080);
    }
    let url = |pod: &Pod, path: &str| format!("http://{}:8080{path}", pod.ip);

    // (client, server, path, status the client gets, why)
    #[rustfmt::skip]
    let cases = [
        (&client, &locked, "/status/201", "403", "namespace `deny` beats the setting"),
        (&client, &locked, "/status/200", "200", "the probe route stays open"),
        (&client, &unlocked, "/status/201", "201", "the workload's annotation beats the namespace's"),
        (&client, &open, "/status/201", "201", "no annotation: the agent's setting"),
        (&client, &audited, "/status/201", "201", "audit: allowed, reported as `audit`"),
        (&client, &subnet, "/status/201", "201", "NetworkAuthentication"),
        (&excepted, &subnet, "/status/201", "403", "NetworkAuthentication's except"),
    ];
    for (from, to, path, want, why) in cases {
        assert_eq!(status(&c, from, &url(to, path), false), want, "{why}");
    }

    let allow = "inbound_http_authz_allow_total";
    assert_eq!(
        metric(
            &agent,
            allow,
            &[
                r#"srv_kind="default",srv_name="deny""#,
                r#"route_name="probe""#,
                r#"authz_kind="default",authz_name="probe""#
            ]
        ),
        1
    );
    assert_eq!(
        metric(
            &agent,
            "inbound_http_authz_deny_total",
            &[
                r#"srv_kind="default",srv_name="deny""#,
                r#"deployment="locked""#
            ]
        ),
        1
    );
    assert_eq!(
        metric(
            &agent,
            allow,
            &[
                r#"srv_name="all-unauthenticated""#,
                r#"deployment="unlocked""#
            ]
        ),
        1
    );
    assert_eq!(
        metric(
            &agent,
            allow,
            &[r#"srv_name="all-unauthenticated""#, r#"deployment="open""#]
        ),
        1
    );
    assert_eq!(
        metric(
            &agent,
            allow,
            &[
                r#"srv_name="audited""#,
                r#"authz_kind="default",authz_name="audit""#
            ]
        ),
        1
    );
    assert_eq!(
        metric(
            &agent,
            allow,
            &[
                r#"srv_name="subnet""#,
                r#"authz_kind="authorizationpolicy",authz_name="subnet-from-pods""#
            ]
        ),
        1
    );
    assert_eq!(
        metric(
            &agent,
            "inbound_http_authz_deny_total",
            &[r#"srv_name="subnet""#]
        ),
        1
    );
    let log = agent.proc.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("Request allowed") && l.contains("authz.name=audit")),
        "the audit line:\n{log}"
    );
    agent.stop().unwrap();
}
