//! L7: HTTP/1.1, HTTP/2 and gRPC through two agents with mutual TLS; Linkerd's metrics,
//! checked by exact counts and by a real Prometheus server; upgrades, large bodies, and
//! request smuggling.

use std::{process::Command, time::Duration};

use meshd_tests::{
    mesh::{Agent, ClientServer},
    metrics::{metrics, settle, sum_metric},
    require_root,
    traffic::{apps_dir, curl_output, raw_client, start_app},
    wait_until, Cluster, Pod,
};
use serde_json::Value;

/// Node 1: pod `client`; node 2: pod `web` (deployment `web`); mutual TLS.
fn mesh(name: &str) -> Mesh {
    ClientServer::start(name).unwrap()
}

type Mesh = ClientServer;

/// curl in the client pod; returns stdout.
fn curl(c: &Cluster, pod: &Pod, args: &[&str]) -> String {
    let out = curl_output(c, pod, 20, args);
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The label sets (`name{labels}`, values left out) of every sample in a metrics text.
fn series(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .collect()
}

/// curl in the client pod with `-w` giving, per request, `code size_request size_header
/// size_download`; returns those lines parsed.
fn curl_sizes(c: &Cluster, pod: &Pod, urls: &[String]) -> Vec<[u64; 4]> {
    let mut args: Vec<&str> = vec![
        "-w",
        "%{http_code} %{size_request} %{size_header} %{size_download}\n",
    ];
    // `-o` applies to one URL.
    for u in urls {
        args.extend(["-o", "/dev/null", u.as_str()]);
    }
    curl(c, pod, &args)
        .lines()
        .map(|l| {
            let v: Vec<u64> = l.split(' ').map(|f| f.parse().unwrap()).collect();
            [v[0], v[1], v[2], v[3]]
        })
        .collect()
}

/// Proves the README's "exactly those request_total / response_total / response_latency_ms
/// values on both agents": 4 warm-up + 17 HTTP/1.1 requests of known status through two
/// agents give exact counts by status and class, latency buckets and TCP bytes (equal to
/// what curl sent and received) on the outbound agent as on the inbound one, with the
/// `dst_*` labels outbound; Prometheus scraping agent 2 answers Linkerd's success-rate and
/// p99 queries; requests with odd paths, `Host` values and headers add no label value.
#[test]
fn exact_counts_and_prometheus_queries() {
    require_root().unwrap();
    let m = mesh("l7-counts");
    let c = &m.cluster;
    start_app(c, &m.web, "python3", "http_app.py", 8000);
    let base = format!("http://{}:8000", m.web.ip);
    let status = |s: u16| format!("{base}/status/{s}");

    // Prometheus on node 2, scraping its agent every second.
    let prom_dir = c.dir().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n  - job_name: meshd\n    static_configs: [{targets: ['127.0.0.1:15000']}]\n",
    )
    .unwrap();
    let mut prom = Command::new("prometheus");
    prom.arg(format!(
        "--config.file={}",
        prom_dir.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        prom_dir.join("data").display()
    ))
    .arg("--web.listen-address=127.0.0.1:9090");
    c.spawn_in_node(&m.agent2.node, prom).unwrap();
    let query = |q: &str| -> Value {
        let url = format!("http://127.0.0.1:9090/api/v1/query?query={}", urlencode(q));
        let (code, body) = meshd_tests::http_get(&m.agent2.node.netns_path, &url).unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    // The value Prometheus has for a query giving one sample (None before it has one).
    let scalar = |q: &str| -> Option<f64> {
        query(q)["data"]["result"].as_array()?.first()?["value"][1]
            .as_str()?
            .parse()
            .ok()
    };
    assert!(
        wait_until(Duration::from_secs(30), || {
            meshd_tests::http_get(
                &m.agent2.node.netns_path,
                "http://127.0.0.1:9090/api/v1/targets",
            )
            .is_ok_and(|(_, b)| b.contains("\"health\":\"up\""))
        }),
        "prometheus scrapes the agent"
    );
    let scraped = "sum(response_total{direction=\"inbound\",deployment=\"web\"})";

    // Phase 1 creates every series at once (so that rate() sees all of them from the same
    // first sample), phase 2 is the traffic the queries are checked against. Phase 2
    // starts once Prometheus holds a sample of phase 1.
    let warm = [
        status(200),
        status(404),
        status(503),
        format!("{base}/sleep/1200"),
    ];
    let mut sizes = curl_sizes(c, &m.client, &warm);
    assert!(
        wait_until(Duration::from_secs(30), || scalar(scraped) == Some(4.0)),
        "prometheus scraped phase 1: {}",
        query(scraped)
    );
    let mut phase2: Vec<String> = Vec::new();
    phase2.extend(std::iter::repeat_n(status(200), 7));
    phase2.extend(std::iter::repeat_n(status(404), 3));
    phase2.extend(std::iter::repeat_n(status(503), 5));
    phase2.extend(std::iter::repeat_n(format!("{base}/sleep/1200"), 2));
    let got = curl_sizes(c, &m.client, &phase2);
    assert_eq!(got.iter().filter(|s| s[0] == 503).count(), 5, "{got:?}");
    sizes.extend(got);
    assert_eq!(sizes.len(), 21);

    // Both client connections closed on both agents: then every counter is final.
    let inbound = [("direction", "inbound"), ("deployment", "web")];
    let outbound = [
        ("direction", "outbound"),
        ("deployment", "client"),
        ("dst_namespace", "default"),
        ("dst_deployment", "web"),
        ("dst_pod", "web"),
        ("server_id", "spiffe://cluster.local/ns/default/sa/web"),
        ("tls", "true"),
    ];
    for (agent, labels) in [(&m.agent1, &outbound[..]), (&m.agent2, &inbound[..])] {
        assert!(
            wait_until(Duration::from_secs(10), || sum_metric(
                &metrics(agent),
                "tcp_close_total",
                labels
            ) == 2.0),
            "{}",
            metrics(agent)
        );
    }
    let t1 = metrics(&m.agent1);
    let t2 = metrics(&m.agent2);

    // Exact counts on each agent: by status and class, latency buckets (the three 1.2 s
    // requests between 1 and 2 s, everything else within 1 s: bounds wide enough for a
    // loaded machine).
    for (t, labels) in [(&t1, &outbound[..]), (&t2, &inbound[..])] {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut f = labels.to_vec();
            f.extend_from_slice(extra);
            f
        };
        assert_eq!(sum_metric(t, "request_total", labels), 21.0, "{t}");
        let responses = |code, class| {
            sum_metric(
                t,
                "response_total",
                &with(&[("status_code", code), ("classification", class)]),
            )
        };
        assert_eq!(responses("200", "success"), 11.0, "{t}");
        assert_eq!(responses("404", "success"), 4.0, "{t}");
        assert_eq!(responses("503", "failure"), 6.0, "{t}");
        assert_eq!(sum_metric(t, "response_total", labels), 21.0, "{t}");
        assert_eq!(sum_metric(t, "response_latency_ms_count", labels), 21.0);
        let bucket = |le| sum_metric(t, "response_latency_ms_bucket", &with(&[("le", le)]));
        assert_eq!(bucket("1000.0"), 18.0, "{t}");
        assert_eq!(
            sum_metric(
                t,
                "response_latency_ms_bucket",
                &with(&[("le", "1000.0"), ("status_code", "200")])
            ),
            11.0 - 3.0,
            "the 1.2 s requests are 200s: {t}"
        );
        assert_eq!(bucket("2000.0"), 21.0, "{t}");
        assert_eq!(bucket("+Inf"), 21.0, "{t}");
        assert_eq!(sum_metric(t, "tcp_open_total", labels), 2.0, "{t}");
        assert_eq!(sum_metric(t, "tcp_open_connections", labels), 0.0, "{t}");
        assert_eq!(sum_metric(t, "http_errors_total", &[]), 0.0, "{t}");
    }
    // The inbound side as Linkerd labels it: mutual TLS with the client's identity.
    assert_eq!(
        sum_metric(
            &t2,
            "response_total",
            &[
                ("direction", "inbound"),
                ("deployment", "web"),
                ("tls", "true"),
                ("client_id", "spiffe://cluster.local/ns/default/sa/client")
            ]
        ),
        21.0
    );
    // No service address was used: dst_service is empty outbound, and inbound every
    // dst_* label is empty.
    assert_eq!(
        sum_metric(&t1, "request_total", &[("dst_service", "")]),
        21.0,
        "{t1}"
    );
    let empty_dst = |l: &str| {
        ["dst_namespace", "dst_deployment", "dst_pod", "dst_service"]
            .iter()
            .all(|k| !l.contains(&format!("{k}=")) || l.contains(&format!("{k}=\"\"")))
    };
    assert!(
        t2.lines()
            .filter(|l| l.contains("direction=\"inbound\""))
            .all(empty_dst),
        "{t2}"
    );
    // TCP bytes: outbound, exactly what curl sent (request heads) and received (response
    // heads and bodies); inbound the same byte counts, as each agent writes the heads hyper
    // parsed.
    let sent: u64 = sizes.iter().map(|s| s[1]).sum();
    let received: u64 = sizes.iter().map(|s| s[2] + s[3]).sum();
    assert_eq!(
        sum_metric(&t1, "tcp_read_bytes_total", &outbound),
        sent as f64,
        "{sizes:?}\n{t1}"
    );
    assert_eq!(
        sum_metric(&t1, "tcp_write_bytes_total", &outbound),
        received as f64,
        "{sizes:?}\n{t1}"
    );
    assert_eq!(
        sum_metric(&t2, "tcp_read_bytes_total", &inbound),
        sent as f64,
        "{t2}"
    );
    assert_eq!(
        sum_metric(&t2, "tcp_write_bytes_total", &inbound),
        received as f64,
        "{t2}"
    );

    // Linkerd's PromQL, unchanged, once Prometheus has a sample of phase 2.
    assert!(
        wait_until(Duration::from_secs(30), || scalar(scraped) == Some(21.0)),
        "prometheus scraped phase 2: {}",
        query(scraped)
    );
    let sr = query("sum(rate(response_total{classification=\"success\"}[1m])) by (deployment) / sum(rate(response_total[1m])) by (deployment)");
    let web = sr["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric"]["deployment"] == "web")
        .cloned()
        .unwrap_or_else(|| panic!("{sr}"));
    let v: f64 = web["value"][1].as_str().unwrap().parse().unwrap();
    assert!(
        (v - 12.0 / 17.0).abs() < 0.01,
        "success rate {v}, expected {}",
        12.0 / 17.0
    );
    let p99 = query(
        "histogram_quantile(0.99, sum(rate(response_latency_ms_bucket[1m])) by (le, deployment))",
    );
    let web = p99["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric"]["deployment"] == "web")
        .cloned()
        .unwrap_or_else(|| panic!("{p99}"));
    let v: f64 = web["value"][1].as_str().unwrap().parse().unwrap();
    assert!(
        v > 1000.0 && v <= 2000.0,
        "p99 {v} ms is in the bucket of the 1.2 s requests"
    );

    // Cardinality: what a client sends never becomes a label value. Requests with odd
    // paths, Host values and headers (all answered 200, a status already counted) leave
    // the set of series unchanged on both agents, and none of the values shows up.
    let before = (series(&t1), series(&t2));
    let odd = [
        "-H",
        "Host: evil-host.example",
        "-H",
        "X-Deployment: evil-deployment",
        "-H",
        "l5d-dst-override: evil-override.svc:1234",
        "-H",
        "User-Agent: evil-agent",
    ];
    let mut args: Vec<String> = odd.iter().map(|s| s.to_string()).collect();
    args.extend(["-w", "%{http_code}\n"].map(String::from));
    for u in [
        format!("{base}/status/200/evil-path?evil-query=1"),
        format!("{base}/evil-path-2"),
    ] {
        args.extend(["-o".to_string(), "/dev/null".to_string(), u]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(curl(c, &m.client, &args), "200\n200\n");
    for (agent, labels) in [(&m.agent1, &outbound[..]), (&m.agent2, &inbound[..])] {
        assert!(wait_until(Duration::from_secs(10), || sum_metric(
            &metrics(agent),
            "tcp_close_total",
            labels
        ) == 3.0));
    }
    let (t1, t2) = (metrics(&m.agent1), metrics(&m.agent2));
    assert_eq!(sum_metric(&t1, "request_total", &outbound), 23.0);
    assert_eq!(sum_metric(&t2, "request_total", &inbound), 23.0);
    assert_eq!((series(&t1), series(&t2)), before);
    for t in [&t1, &t2] {
        assert!(!t.contains("evil"), "{t}");
    }

    // tcp_open_connections: one while a client holds a connection, none after it closes.
    let mut hold = Command::new("python3");
    hold.args(["-c", HOLD_CLIENT, &m.web.ip.to_string(), "8000"]);
    let holder = c.spawn_in_pod(&m.client, hold).unwrap();
    holder
        .wait_for_output("answered", Duration::from_secs(20))
        .unwrap();
    let open_now = |agent: &Agent, labels: &[(&str, &str)]| {
        sum_metric(&metrics(agent), "tcp_open_connections", labels)
    };
    for (agent, labels) in [(&m.agent1, &outbound[..]), (&m.agent2, &inbound[..])] {
        assert!(
            wait_until(Duration::from_secs(10), || open_now(agent, labels) == 1.0),
            "{}",
            metrics(agent)
        );
    }
    holder.kill().unwrap();
    for (agent, labels) in [(&m.agent1, &outbound[..]), (&m.agent2, &inbound[..])] {
        assert!(
            wait_until(Duration::from_secs(10), || open_now(agent, labels) == 0.0),
            "{}",
            metrics(agent)
        );
        assert_eq!(sum_metric(&metrics(agent), "tcp_open_total", labels), 4.0);
    }
    m.agent1.stop().unwrap();
    m.agent2.stop().unwrap();
}

/// One keep-alive request, then the connection is held open (until the process is killed).
const HOLD_CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"GET /status/200 HTTP/1.1\r\nHost: web\r\n\r\n")
got = b""
while not got.endswith(b"status 200\n"):
    got += s.recv(65536)
print("answered", flush=True)
time.sleep(300)
"#;

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const UPGRADE_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"GET /upgrade HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
assert head.startswith(b"HTTP/1.1 101"), head
msg = b"hello through the upgrade " * 1000
s.sendall(msg)
got = b""
while len(got) < len(msg):
    got += s.recv(65536)
print("echoed" if got == msg else "mismatch")
"#;

#[test]
fn http2_grpc_upgrades_and_large_bodies_pass_through() {
    require_root().unwrap();
    let m = mesh("l7-protocols");
    let c = &m.cluster;
    start_app(c, &m.web, "python3", "http_app.py", 8000);
    start_app(c, &m.web, "/usr/bin/python3", "grpc_app.py", 9000);
    let docroot = c.dir().join("www");
    std::fs::create_dir_all(&docroot).unwrap();
    let page: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(docroot.join("page.txt"), &page).unwrap();
    let mut nghttpd = Command::new("nghttpd");
    nghttpd.args(["--no-tls", "-d"]).arg(&docroot).arg("8001");
    c.spawn_in_pod(&m.web, nghttpd).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        let mut ss = Command::new("ss");
        ss.args(["-Hltn", "sport", "= :8001"]);
        c.run_in_pod(&m.web, ss).is_ok_and(|o| !o.stdout.is_empty())
    }));

    // HTTP/1.1 and HTTP/2 (prior knowledge) through both agents, bodies unchanged.
    assert_eq!(
        curl(c, &m.client, &[&format!("http://{}:8000/", m.web.ip)]),
        "ok\n"
    );
    let got = curl(
        c,
        &m.client,
        &[
            "--http2-prior-knowledge",
            &format!("http://{}:8001/page.txt", m.web.ip),
        ],
    );
    assert_eq!(got, page);
    let code = curl(
        c,
        &m.client,
        &[
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            &format!("http://{}:8001/missing", m.web.ip),
        ],
    );
    assert_eq!(code, "404 2");

    // A large streaming body, hashed by the server.
    let big = c.dir().join("big.bin");
    let data: Vec<u8> = (0..32 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&big, &data).unwrap();
    let digest = Command::new("sha256sum").arg(&big).output().unwrap();
    let want = String::from_utf8_lossy(&digest.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let got = curl(
        c,
        &m.client,
        &[
            "--data-binary",
            &format!("@{}", big.display()),
            &format!("http://{}:8000/sha256", m.web.ip),
        ],
    );
    assert_eq!(got.trim(), want);

    // An HTTP/1.1 upgrade (what WebSocket does): the connection becomes a byte stream.
    let mut py = Command::new("python3");
    py.args(["-c", UPGRADE_CLIENT, &m.web.ip.to_string(), "8000"]);
    let out = c.run_in_pod(&m.client, py).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "echoed",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A real WebSocket echo (HTTP/1.1 upgrade, then frames both ways).
    let mut ws = Command::new("/usr/bin/python3");
    ws.arg(apps_dir().join("ws_app.py")).args(["serve", "8002"]);
    c.spawn_in_pod(&m.web, ws)
        .unwrap()
        .wait_for_output("listening", Duration::from_secs(10))
        .unwrap();
    let mut call = Command::new("/usr/bin/python3");
    call.arg(apps_dir().join("ws_app.py")).args([
        "call",
        &format!("ws://{}:8002/", m.web.ip),
        "20",
    ]);
    let out = c.run_in_pod(&m.client, call).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "echoed 20",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t2 = metrics(&m.agent2);
    assert_eq!(
        sum_metric(
            &t2,
            "response_total",
            &[("direction", "inbound"), ("status_code", "101")]
        ),
        2.0,
        "the echo upgrade and the WebSocket: {t2}"
    );

    // A protocol where the server speaks first: on a port declared opaque it is never
    // parsed; elsewhere detection gives up waiting for the client and relays it too.
    for port in [9090u16, 9191] {
        meshd_tests::mesh::serve(c, &m.web, port).unwrap();
        let r = meshd_tests::mesh::testapp_json(
            c,
            &m.client,
            &[
                "echo",
                "--greet",
                "--connect",
                &format!("{}:{port}", m.web.ip),
                "--bytes",
                "100000",
            ],
        )
        .unwrap();
        assert_eq!(r["ok"], true, "{r}");
        assert!(
            r["greeting"].as_str().unwrap().starts_with("hello peer="),
            "{r}"
        );
    }

    // gRPC: status 0 is a success, status 13 a failure, from the trailers.
    let message = c.dir().join("grpc-message.bin");
    std::fs::write(&message, b"\0\0\0\0\x02hi").unwrap();
    let message_arg = format!("@{}", message.display());
    for (method, n) in [("Status0", 3), ("Status13", 2)] {
        for _ in 0..n {
            curl(
                c,
                &m.client,
                &[
                    "--http2-prior-knowledge",
                    "-o",
                    "/dev/null",
                    "-H",
                    "content-type: application/grpc",
                    "-H",
                    "te: trailers",
                    "--data-binary",
                    &message_arg,
                    &format!("http://{}:9000/grpc.test.Echo/{method}", m.web.ip),
                ],
            );
        }
    }
    let t2 = metrics(&m.agent2);
    let inbound = [("direction", "inbound"), ("deployment", "web")];
    let grpc = |code: &'static str, class: &'static str| {
        let mut f = inbound.to_vec();
        f.extend_from_slice(&[("grpc_status", code), ("classification", class)]);
        sum_metric(&t2, "response_total", &f)
    };
    assert_eq!(grpc("0", "success"), 3.0, "{t2}");
    assert_eq!(grpc("13", "failure"), 2.0, "{t2}");
    m.agent1.stop().unwrap();
    m.agent2.stop().unwrap();
}

/// Proves "ambiguous framing is refused with 400 and the connection closed, nothing of it
/// reaches the app", counted in `http_errors_total{error="invalid_request"}`: CL+TE and
/// conflicting Content-Lengths, from a mesh client (refused by its own agent, outbound)
/// and from a client outside the mesh (refused by the server's agent, inbound); each
/// client reads the 400 and then the end of the connection at once (not its 10 s
/// timeout). Over HTTP/2, a Content-Length that disagrees with the DATA and the
/// connection-specific headers HTTP/2 forbids end the stream with RST_STREAM
/// PROTOCOL_ERROR; none of them reaches the app or is counted as a request, while a valid
/// request on the same path does. CL+TE in a later request of a connection, or after 16 KiB
/// of the first head, smuggles nothing: the request hidden behind it never reaches the app
/// and the connection ends.
#[test]
fn request_smuggling_is_refused_and_counted() {
    require_root().unwrap();
    let m = mesh("l7-smuggle");
    let c = &m.cluster;
    let outsider = c.add_pod(&m.n1, "outsider").unwrap();
    let _app = start_app(c, &m.web, "python3", "http_app.py", 8000);
    let attempts = [
        // Content-Length and Transfer-Encoding together.
        "POST /sha256 HTTP/1.1\\r\\nHost: web\\r\\nContent-Length: 6\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\nGET /status/500 HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n",
        // Two different Content-Lengths.
        "POST /sha256 HTTP/1.1\\r\\nHost: web\\r\\nContent-Length: 3\\r\\nContent-Length: 30\\r\\n\\r\\nabcGET /status/500 HTTP/1.1\\r\\n\\r\\n",
    ];
    let ip = m.web.ip.to_string();
    for (from, agent, direction) in [
        (&m.client, &m.agent1, "outbound"),
        (&outsider, &m.agent2, "inbound"),
    ] {
        for a in attempts {
            let r = raw_client(c, from, &ip, 8000, a, false);
            let reply = r["reply"].as_str().unwrap();
            assert_eq!(
                reply, "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                "{direction}: {r}"
            );
            assert_eq!(r["end"], "eof", "{direction}: {r}");
            assert!(r["secs"].as_f64().unwrap() < 5.0, "{direction}: {r}");
        }
        let t = metrics(agent);
        assert_eq!(
            sum_metric(
                &t,
                "http_errors_total",
                &[("direction", direction), ("error", "invalid_request")]
            ),
            2.0,
            "{t}"
        );
        assert_eq!(sum_metric(&t, "http_errors_total", &[]), 2.0, "{t}");
    }
    // Nothing reached the app, and the next request (another connection) is fine.
    assert_eq!(
        curl(
            c,
            &m.client,
            &[&format!("http://{}:8000/status/200", m.web.ip)]
        ),
        "status 200\n"
    );
    settle(&m.agent2, "request_total", &[("direction", "inbound")], 1.0);

    // HTTP/2 to an h2c app that prints each request it receives.
    let h2_app = start_app(c, &m.web, "/usr/bin/python3", "grpc_app.py", 9000);
    let h2 = |path: &str, extra: &[&str]| -> Value {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(apps_dir().join("h2_client.py"))
            .args([ip.as_str(), "9000", path, "abc"])
            .args(extra);
        let out = c.run_in_pod(&m.client, cmd).unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "h2_client: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let r = h2("/smuggle", &["content-length:3"]);
    assert!(r["status"] == 200 && r["ended"] == true, "{r}");
    for bad in [
        "content-length:10",
        "content-length:1",
        "transfer-encoding:chunked",
        "connection:keep-alive",
        "te:gzip",
    ] {
        let r = h2("/smuggle", &[bad]);
        assert!(
            r["reset"] == 1 && r["status"].is_null(),
            "{bad}: RST_STREAM PROTOCOL_ERROR expected: {r}"
        );
    }
    // A last valid request: once the app has it, it would have had any of the others.
    let r = h2("/after", &[]);
    assert!(r["status"] == 200 && r["ended"] == true, "{r}");
    h2_app
        .wait_for_output("request /after", Duration::from_secs(10))
        .unwrap();
    assert_eq!(h2_app.stdout().matches("request /smuggle").count(), 1);
    let t1 = settle(&m.agent1, "response_total", &[], 3.0);
    let t2 = settle(&m.agent2, "response_total", &[], 3.0);
    assert_eq!(sum_metric(&t1, "request_total", &[]), 3.0, "{t1}");
    assert_eq!(sum_metric(&t2, "request_total", &[]), 3.0, "{t2}");
    assert_eq!(sum_metric(&t1, "http_errors_total", &[]), 2.0, "{t1}");
    assert_eq!(sum_metric(&t2, "http_errors_total", &[]), 2.0, "{t2}");

    // CL+TE where the agent's own check (the first request's head, up to 16 KiB) does not
    // look: in a second request of a keep-alive connection, and after 16 KiB of the first
    // head. These are not refused with 400 (the README's claim covers only the first
    // head), but nothing is smuggled either: hyper frames the request by
    // Transfer-Encoding, drops Content-Length and closes the connection after it, so the
    // request hidden behind it never reaches the app.
    let hidden = "GET /status/500 HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n";
    let cl_te = "POST /sha256 HTTP/1.1\\r\\nHost: web\\r\\nContent-Length: 5\\r\\n";
    let second = format!(
        "GET /status/200 HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n{cl_te}Transfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n{hidden}"
    );
    let pad: String = (0..18)
        .map(|i| format!("X-Pad-{i}: {}\\r\\n", "a".repeat(1000)))
        .collect();
    let late = format!("{cl_te}{pad}Transfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n{hidden}");
    for payload in [second, late] {
        let r = raw_client(c, &m.client, &ip, 8000, &payload, false);
        let reply = r["reply"].as_str().unwrap();
        assert_eq!(r["end"], "eof", "{r}");
        assert!(!reply.contains("status 500"), "{r}");
    }
    let t2 = metrics(&m.agent2);
    assert_eq!(
        sum_metric(&t2, "response_total", &[("status_code", "500")]),
        0.0,
        "{t2}"
    );
    m.agent1.stop().unwrap();
    m.agent2.stop().unwrap();
}
