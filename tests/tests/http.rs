//! HTTP failure and limit paths through the agents: a failing upstream (502), an absent
//! app (reset), header counts and the 16 KiB head read, hop-by-hop headers end to end,
//! Linkerd's default opaque-port list, plaintext HTTP detected inbound, and clean closes
//! recorded without an error.

use std::{process::Command, time::Duration};

use meshd_tests::{
    mesh::{ClientServer, ServiceSpec},
    metrics::{metrics, settle, sum_metric},
    require_root,
    traffic::{closed_records, curl_output, raw_client, spawn_listening, start_app, wait_closed},
    wait_until, Cluster, Pod, ProcHandle,
};
use serde_json::Value;

/// `apps/http_app.py` on `port` in a pod.
fn http_app(c: &Cluster, pod: &Pod, port: u16) -> ProcHandle {
    start_app(c, pod, "python3", "http_app.py", port)
}

/// `meshd-testapp serve` (echo, the client speaks first) on `port`.
fn echo_app(c: &Cluster, pod: &Pod, port: u16) -> ProcHandle {
    let mut cmd = Command::new(meshd_tests::mesh::testapp_bin());
    cmd.args(["serve", "--listen", &format!("0.0.0.0:{port}")]);
    spawn_listening(c, pod, cmd)
}

/// `curl -sS ARGS` in a pod: (exit status success, stdout).
fn curl(c: &Cluster, pod: &Pod, args: &[&str]) -> (bool, String) {
    let out = curl_output(c, pod, 20, args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The client/server mesh and two pods outside it: `ext` on node 2 (an HTTP app on 8000,
/// as on `web`) and `outsider` on node 1 (a client).
fn with_outsiders(name: &str) -> (ClientServer, Pod, Pod) {
    let m = ClientServer::start(name).unwrap();
    let c = &m.cluster;
    let ext = c.add_pod(&m.n2, "ext").unwrap();
    let outsider = c.add_pod(&m.n1, "outsider").unwrap();
    http_app(c, &m.web, 8000);
    http_app(c, &ext, 8000);
    (m, ext, outsider)
}

/// The first line of a raw reply.
fn status_line(r: &Value) -> &str {
    r["reply"].as_str().unwrap().split("\r\n").next().unwrap()
}

/// Proves "an upstream that fails a request gives the client 502", counted as
/// `http_errors_total{error="upstream_unavailable"}` on the agent whose upstream failed
/// (inbound when the app closes without answering behind two agents, outbound for a
/// destination outside the mesh), with a failure response counted on both agents; and that
/// a port where no app listens resets the client promptly (the server's agent refuses the
/// CONNECT with 503, the client's records it; a plaintext client outside the mesh is reset
/// by the server's agent), with no HTTP error counted.
#[test]
fn failing_upstreams_give_502_and_absent_apps_a_reset() {
    require_root().unwrap();
    let (m, ext, outsider) = with_outsiders("http-502");
    let c = &m.cluster;

    // Behind two agents, agent 2's upstream (the app) fails the request; outbound to a
    // destination outside the mesh, agent 1's upstream fails it.
    for ip in [m.web.ip, ext.ip] {
        let (ok, out) = curl(
            c,
            &m.client,
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{ip}:8000/close"),
            ],
        );
        assert!(ok && out == "502", "{out}");
    }
    let errors = |t: &str, direction| {
        sum_metric(
            t,
            "http_errors_total",
            &[("direction", direction), ("error", "upstream_unavailable")],
        )
    };
    let failed_502 = |t: &str, direction| {
        sum_metric(
            t,
            "response_total",
            &[
                ("direction", direction),
                ("status_code", "502"),
                ("classification", "failure"),
            ],
        )
    };
    let t2 = settle(
        &m.agent2,
        "response_total",
        &[("direction", "inbound"), ("status_code", "502")],
        1.0,
    );
    let t1 = settle(
        &m.agent1,
        "response_total",
        &[("direction", "outbound"), ("status_code", "502")],
        2.0,
    );
    assert_eq!(errors(&t2, "inbound"), 1.0, "{t2}");
    assert_eq!(sum_metric(&t2, "http_errors_total", &[]), 1.0, "{t2}");
    assert_eq!(failed_502(&t2, "inbound"), 1.0, "{t2}");
    assert_eq!(errors(&t1, "outbound"), 1.0, "{t1}");
    assert_eq!(sum_metric(&t1, "http_errors_total", &[]), 1.0, "{t1}");
    assert_eq!(failed_502(&t1, "outbound"), 2.0, "{t1}");

    // No app on the port: over HBONE, agent 2 refuses the CONNECT with 503 and agent 1
    // resets the client; from outside the mesh, agent 2 resets the client.
    let get = "GET / HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n";
    let web_ip = m.web.ip.to_string();
    for (pod, agent_dir) in [(&m.client, "outbound"), (&outsider, "inbound")] {
        let r = raw_client(c, pod, &web_ip, 8009, get, false);
        assert_eq!(r["end"], "reset", "{agent_dir}: {r}");
        assert_eq!(r["reply"], "", "{r}");
        assert!(r["secs"].as_f64().unwrap() < 5.0, "{r}");
    }
    let dst = format!("{}:8009", m.web.ip);
    let rec = closed_records(&m.agent1, "outbound", &dst, 1);
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert!(
        rec[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("503 Service Unavailable")),
        "{rec:?}"
    );
    let recs = closed_records(&m.agent2, "inbound", &dst, 2);
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert!(
        recs.iter()
            .all(|r| r["error"].as_str().is_some_and(|e| e.contains("refused"))),
        "{recs:?}"
    );
    assert_eq!(
        m.agent2
            .proc
            .stderr()
            .matches("HBONE: delivery to the app failed")
            .count(),
        1
    );
    let (t1, t2) = (metrics(&m.agent1), metrics(&m.agent2));
    assert_eq!(sum_metric(&t1, "http_errors_total", &[]), 1.0, "{t1}");
    assert_eq!(sum_metric(&t2, "http_errors_total", &[]), 1.0, "{t2}");
    assert_eq!(sum_metric(&t2, "hbone_rejected_total", &[]), 0.0, "{t2}");
    m.agent1.stop().unwrap();
    m.agent2.stop().unwrap();
}

/// The headers of a raw HTTP/1.1 response (names lowercased) and its body.
fn split_response(reply: &str) -> (Vec<(String, String)>, String) {
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((reply, ""));
    let headers = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (headers, body.to_string())
}

/// Proves "hop-by-hop headers are not forwarded", end to end and both ways: a request with
/// `Connection` (naming `X-Hop`), `X-Hop`, `Keep-Alive`, `TE: trailers, deflate`,
/// `Trailer`, `Upgrade` (not an upgrade) and `Proxy-Connection` reaches the app with none
/// of them but `TE: trailers`; the app's response with the same kinds of headers reaches
/// the client with none of them. Through two agents, through the outbound agent alone (to a
/// server outside the mesh), and through the inbound agent alone (from a client outside).
#[test]
fn hop_by_hop_headers_are_not_forwarded_end_to_end() {
    require_root().unwrap();
    let (m, ext, outsider) = with_outsiders("http-hop");
    let c = &m.cluster;
    let request = "GET /headers HTTP/1.1\\r\\nHost: app\\r\\nConnection: close, X-Hop\\r\\nX-Hop: secret\\r\\nKeep-Alive: timeout=5\\r\\nTE: trailers, deflate\\r\\nTrailer: X-Checksum\\r\\nUpgrade: h2c\\r\\nProxy-Connection: keep-alive\\r\\nX-Kept: yes\\r\\n\\r\\n";
    let cases = [
        ("two agents", &m.client, m.web.ip.to_string()),
        ("outbound agent", &m.client, ext.ip.to_string()),
        ("inbound agent", &outsider, m.web.ip.to_string()),
    ];
    for (what, from, to) in cases {
        let r = raw_client(c, from, &to, 8000, request, false);
        assert_eq!(status_line(&r), "HTTP/1.1 200 OK", "{what}: {r}");
        let (headers, body) = split_response(r["reply"].as_str().unwrap());
        // What the app saw: exactly Host, TE: trailers and X-Kept.
        let seen: Vec<(String, String)> =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
        let mut seen_sorted = seen.clone();
        seen_sorted.sort();
        assert_eq!(
            seen_sorted,
            [("host", "app"), ("te", "trailers"), ("x-kept", "yes")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .to_vec(),
            "{what}: the app saw {seen:?}"
        );
        // What the client saw: none of the response's hop-by-hop headers, X-Resp-Kept.
        let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        for hop in [
            "x-resp-hop",
            "keep-alive",
            "proxy-connection",
            "upgrade",
            "trailer",
        ] {
            assert!(!names.contains(&hop), "{what}: {hop} in {headers:?}");
        }
        assert!(
            headers
                .iter()
                .filter(|(k, _)| k == "connection")
                .all(|(_, v)| !v.to_ascii_lowercase().contains("x-resp-hop")),
            "{what}: {headers:?}"
        );
        assert!(
            headers.contains(&("x-resp-kept".into(), "yes".into())),
            "{what}: {headers:?}"
        );
    }
    m.agent1.stop().unwrap();
    m.agent2.stop().unwrap();
}

/// A `POST /sha256` head (Python escapes): `Host`, the `first` header lines, `pads` lines
/// `X-Pad-N: <pad × 'a'>`, the `last` header lines, and the blank line.
fn head(first: &str, pads: usize, pad: usize, last: &str) -> String {
    let mut h = format!("POST /sha256 HTTP/1.1\\r\\nHost: web\\r\\n{first}");
    for i in 0..pads {
        h.push_str(&format!("X-Pad-{i}: {}\\r\\n", "a".repeat(pad)));
    }
    h.push_str(last);
    h.push_str("\\r\\n");
    h
}

/// Proves the header limits: 100 header lines pass through two agents and 101 are refused
/// by the client's agent with `431` (hyper's limit), counted as an invalid request, nothing
/// reaching the server's agent; the first request's head is read whole up to 16 KiB for
/// the framing check (a `Transfer-Encoding` after 15 KiB of headers, with a
/// `Content-Length` before them, is refused with 400 and the connection closed), and a
/// valid head larger than 16 KiB passes (the agent documents no smaller limit).
#[test]
fn header_counts_and_the_16_kib_head() {
    require_root().unwrap();
    let m = ClientServer::start("http-limits").unwrap();
    let c = &m.cluster;
    http_app(c, &m.web, 8000);
    let ip = m.web.ip.to_string();
    let empty_chunked = "0\\r\\n\\r\\n";
    let sha_empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    // 100 header lines (Host, Content-Length, Connection and 97 more): answered.
    let ok100 = head("Content-Length: 0\\r\\nConnection: close\\r\\n", 97, 8, "");
    let r = raw_client(c, &m.client, &ip, 8000, &ok100, false);
    assert_eq!(status_line(&r), "HTTP/1.1 200 OK", "{r}");
    assert!(r["reply"]
        .as_str()
        .unwrap()
        .ends_with(&format!("{sha_empty}\n")));
    // 101: refused by agent 1 with 431, and the connection closed.
    let bad101 = head("Content-Length: 0\\r\\nConnection: close\\r\\n", 98, 8, "");
    let r = raw_client(c, &m.client, &ip, 8000, &bad101, false);
    assert_eq!(
        status_line(&r),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "{r}"
    );
    assert_eq!(r["end"], "eof", "{r}");
    let invalid = [("direction", "outbound"), ("error", "invalid_request")];
    let t1 = settle(&m.agent1, "http_errors_total", &invalid, 1.0);
    assert_eq!(sum_metric(&t1, "request_total", &[]), 1.0, "{t1}");
    settle(&m.agent2, "request_total", &[], 1.0);

    // About 15 KiB of headers between Content-Length and Transfer-Encoding: the framing
    // check reads past the 1 KiB detection peek and sees both: 400, connection closed.
    let smuggle = format!(
        "{}{empty_chunked}GET /status/500 HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n",
        head(
            "Content-Length: 5\\r\\n",
            15,
            1000,
            "Transfer-Encoding: chunked\\r\\n"
        )
    );
    let r = raw_client(c, &m.client, &ip, 8000, &smuggle, false);
    assert_eq!(status_line(&r), "HTTP/1.1 400 Bad Request", "{r}");
    assert_eq!(r["end"], "eof", "{r}");
    assert!(r["secs"].as_f64().unwrap() < 5.0, "{r}");
    // A valid 20 KiB head passes.
    let big = head(
        "Content-Length: 0\\r\\nConnection: close\\r\\n",
        20,
        1000,
        "",
    );
    let r = raw_client(c, &m.client, &ip, 8000, &big, false);
    assert_eq!(status_line(&r), "HTTP/1.1 200 OK", "{r}");
    assert!(r["reply"]
        .as_str()
        .unwrap()
        .ends_with(&format!("{sha_empty}\n")));
    settle(&m.agent1, "http_errors_total", &invalid, 2.0);
    let t2 = settle(&m.agent2, "request_total", &[], 2.0);
    assert_eq!(sum_metric(&t2, "http_errors_total", &[]), 0.0, "{t2}");
    m.agent1.stop().unwrap();
    m.agent2.stop().unwrap();
}

/// Proves the default opaque-port list and inbound plaintext detection. With no
/// `opaquePorts`, port 3306 (on Linkerd's default list) is never parsed: an HTTP request
/// with ambiguous framing passes as bytes and is echoed intact, through two agents and from
/// a client outside the mesh, with no request counted; port 5000 (not on the list, though
/// the client lists it for itself) is detected and the same bytes are refused with 400 by
/// the first agent that parses them. A client outside the mesh sending plain HTTP to the
/// enrolled server is detected and counted as inbound HTTP without identity.
#[test]
fn default_opaque_ports_and_inbound_plaintext_detection() {
    require_root().unwrap();
    // The client lists 5000 as opaque for itself: for its outbound connections the
    // destination's list (here the default) applies, so 5000 is still detected.
    let m = ClientServer::start_with("http-opaque", Some(&[5000]), None, &[]).unwrap();
    let c = &m.cluster;
    let outsider = c.add_pod(&m.n1, "outsider").unwrap();
    echo_app(c, &m.web, 3306);
    echo_app(c, &m.web, 5000);
    http_app(c, &m.web, 8000);
    let ip = m.web.ip.to_string();
    let ambiguous = "POST / HTTP/1.1\\r\\nHost: web\\r\\nContent-Length: 5\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n";
    let want = ambiguous.replace("\\r", "\r").replace("\\n", "\n");

    // 3306: opaque by default, both ways of reaching it.
    for from in [&m.client, &outsider] {
        let r = raw_client(c, from, &ip, 3306, ambiguous, true);
        assert_eq!(r["reply"], want.as_str(), "{r}");
        assert_eq!(r["end"], "eof", "{r}");
    }
    // Once both connections are closed on both agents, nothing was counted as HTTP.
    let t1 = settle(
        &m.agent1,
        "tcp_close_total",
        &[("direction", "outbound")],
        1.0,
    );
    let t2 = settle(
        &m.agent2,
        "tcp_close_total",
        &[("direction", "inbound")],
        2.0,
    );
    for t in [&t1, &t2] {
        assert_eq!(sum_metric(t, "request_total", &[]), 0.0, "{t}");
        assert_eq!(sum_metric(t, "http_errors_total", &[]), 0.0, "{t}");
    }
    assert_eq!(
        sum_metric(&t1, "tcp_open_total", &[("direction", "outbound")]),
        1.0
    );
    assert_eq!(
        sum_metric(&t2, "tcp_open_total", &[("direction", "inbound")]),
        2.0
    );

    // 5000: detected. Through two agents the client's agent refuses it (outbound); from
    // outside the mesh the server's agent does (inbound).
    for (from, agent, direction) in [
        (&m.client, &m.agent1, "outbound"),
        (&outsider, &m.agent2, "inbound"),
    ] {
        let r = raw_client(c, from, &ip, 5000, ambiguous, false);
        assert_eq!(
            status_line(&r),
            "HTTP/1.1 400 Bad Request",
            "{direction}: {r}"
        );
        assert_eq!(r["end"], "eof", "{r}");
        settle(
            agent,
            "http_errors_total",
            &[("direction", direction), ("error", "invalid_request")],
            1.0,
        );
    }

    // Plain HTTP from outside the mesh to the enrolled server: detected inbound, counted
    // without identity.
    let (ok, codes) = curl(
        c,
        &outsider,
        &[
            "-w",
            "%{http_code}\n",
            "-o",
            "/dev/null",
            &format!("http://{ip}:8000/status/200"),
            "-o",
            "/dev/null",
            &format!("http://{ip}:8000/status/503"),
        ],
    );
    assert!(ok && codes == "200\n503\n", "{codes}");
    let plain = [
        ("direction", "inbound"),
        ("deployment", "web"),
        ("tls", "no_identity"),
        ("client_id", ""),
    ];
    assert!(wait_until(Duration::from_secs(10), || sum_metric(
        &metrics(&m.agent2),
        "request_total",
        &plain
    ) == 2.0));
    let t2 = metrics(&m.agent2);
    let mut failed = plain.to_vec();
    failed.extend([("status_code", "503"), ("classification", "failure")]);
    assert_eq!(sum_metric(&t2, "response_total", &failed), 1.0, "{t2}");
    assert_eq!(sum_metric(&t2, "request_total", &[]), 2.0, "{t2}");
    assert_eq!(sum_metric(&metrics(&m.agent1), "request_total", &[]), 0.0);
    m.agent1.stop().unwrap();
    m.agent2.stop().unwrap();
}

/// Proves the `dst_service` label: requests to a service address are counted outbound with
/// `dst_service="default/web"` besides the endpoint's `dst_*` labels, and requests to the
/// pod address in the same run with an empty `dst_service`.
#[test]
fn service_requests_carry_dst_service() {
    require_root().unwrap();
    let svc = ServiceSpec::web("10.96.0.10", 8000);
    let m = ClientServer::start_with(
        "http-svc",
        Some(&meshd_tests::mesh::GREETING_PORTS),
        Some(&meshd_tests::mesh::GREETING_PORTS),
        &[svc],
    )
    .unwrap();
    let c = &m.cluster;
    http_app(c, &m.web, 8000);
    let mut args = vec!["-w", "%{http_code}\n"];
    let (to_svc, to_pod) = (
        "http://10.96.0.10:80/status/200".to_string(),
        format!("http://{}:8000/status/200", m.web.ip),
    );
    for u in [&to_svc, &to_svc, &to_svc, &to_pod] {
        args.extend(["-o", "/dev/null", u.as_str()]);
    }
    let (ok, codes) = curl(c, &m.client, &args);
    assert!(ok && codes == "200\n200\n200\n200\n", "{codes}");
    let t1 = settle(
        &m.agent1,
        "response_total",
        &[("direction", "outbound")],
        4.0,
    );
    let labels = |service| {
        [
            ("direction", "outbound"),
            ("dst_namespace", "default"),
            ("dst_deployment", "web"),
            ("dst_pod", "web"),
            ("dst_service", service),
        ]
    };
    assert_eq!(
        sum_metric(&t1, "request_total", &labels("default/web")),
        3.0,
        "{t1}"
    );
    assert_eq!(sum_metric(&t1, "request_total", &labels("")), 1.0, "{t1}");
    assert_eq!(
        sum_metric(&t1, "response_total", &labels("default/web")),
        3.0,
        "{t1}"
    );
    m.agent1.stop().unwrap();
    m.agent2.stop().unwrap();
}

/// Proves "a normal close is not an error": an HTTP request that succeeds, over HBONE (the
/// client in the mesh) and in plaintext (a client outside it), leaves connection records
/// without an `error` on both agents, outbound and inbound; while a connection the agent
/// could not complete (no app on the port) still carries one.
#[test]
fn a_clean_close_records_no_error_and_a_failure_does() {
    require_root().unwrap();
    let (m, _ext, outsider) = with_outsiders("http-clean");
    let c = &m.cluster;
    let url = format!("http://{}:8000/", m.web.ip);
    for pod in [&m.client, &outsider] {
        let (ok, out) = curl(c, pod, &["-o", "/dev/null", "-w", "%{http_code}", &url]);
        assert!(ok && out == "200", "{out}");
    }
    let dst = format!("{}:8000", m.web.ip);
    let out = wait_closed(&m.agent1, "outbound", &dst, 1);
    let inb = wait_closed(&m.agent2, "inbound", &dst, 2);
    for r in out.iter().chain(&inb) {
        assert_eq!(r["error"], Value::Null, "{r:#}");
        assert!(r["bytes_sent"].as_u64().unwrap() > 0, "{r:#}");
        assert!(r["bytes_received"].as_u64().unwrap() > 0, "{r:#}");
    }
    assert_eq!(
        inb.iter().filter(|r| r["tls"] == Value::Bool(true)).count(),
        1,
        "one over HBONE, one plaintext: {inb:#?}"
    );

    let get = "GET / HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n";
    let r = raw_client(c, &m.client, &m.web.ip.to_string(), 8009, get, false);
    assert_eq!(r["end"], "reset", "{r}");
    let failed = wait_closed(&m.agent1, "outbound", &format!("{}:8009", m.web.ip), 1);
    assert!(failed[0]["error"].is_string(), "{failed:#?}");
}
