//! The bad-input suite's cases that need the whole path (a pod, its agent, another node's
//! agent, the app): malformed HTTP/1 heads (the review's class F) and a pod's connections
//! to the agent's own ports (class E). Each case asserts the secure outcome (the exact
//! status or reset, nothing of it reaching the app), and after each the agent is alive, its
//! open file descriptors are back near where they were, and another request of the same
//! pod still succeeds. The cases are numbered as in the review (`security-2026-12.md`); the
//! other classes are unit tests (`proxy/tls/bad_input_tests.rs`, `identity/tests.rs`, ...)
//! or live in the file of their feature (docs/security.md lists them all).

use std::{process::Command, time::Duration};

use meshd_tests::{
    mesh::{Agent, ClientServer},
    metrics::{metrics, settle, sum_metric},
    require_root,
    traffic::{curl_output, raw_client, start_app},
    wait_until,
};
use serde_json::Value;

/// The agent's open file descriptors.
fn fds(agent: &Agent) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", agent.proc.pid()))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The first line of a raw reply.
fn status_line(r: &Value) -> &str {
    r["reply"]
        .as_str()
        .unwrap_or_default()
        .split("\r\n")
        .next()
        .unwrap_or_default()
}

/// What every case checks after its own assertions: both agents answer, a normal request
/// from the client pod gets through both agents (so the server's agent counts one more
/// inbound request), and the client's agent holds no more descriptors than it did at the
/// start, give or take the pooled HBONE connection and a few in closing.
struct Afterwards<'a> {
    m: &'a ClientServer,
    baseline_fds: usize,
    served: f64,
}

impl Afterwards<'_> {
    fn check(&mut self, case: &str) {
        let m = self.m;
        for agent in [&m.agent1, &m.agent2] {
            assert!(agent.proc.is_running(), "{case}: an agent exited");
            assert!(
                matches!(agent.get("/ready"), Ok((200, _))),
                "{case}: not ready"
            );
        }
        let ok = "GET /status/200 HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n";
        let r = raw_client(
            &m.cluster,
            &m.client,
            &m.web.ip.to_string(),
            8000,
            ok,
            false,
        );
        assert_eq!(status_line(&r), "HTTP/1.1 200 OK", "{case}: after it: {r}");
        self.served += 1.0;
        settle(
            &m.agent2,
            "request_total",
            &[("direction", "inbound")],
            self.served,
        );
        let bound = self.baseline_fds + 8;
        assert!(
            wait_until(Duration::from_secs(5), || fds(&m.agent1) <= bound),
            "{case}: agent 1 holds {} descriptors, {} before the cases",
            fds(&m.agent1),
            self.baseline_fds
        );
    }
}

/// Proves the review's class F cases 86 and 89 to 93 and 96: each malformed head is
/// refused by the client's agent with `400 Bad Request` and the connection closed, counted
/// as an invalid request, and never reaches the server's agent or the app; the odd but
/// valid ones (an absolute-form target, two `Host` headers) reach the original destination
/// and only it; an HTTP/1 `CONNECT` goes to the original destination too (which may be a
/// forward proxy) and its answer comes back at once. After each, both agents serve and descriptors are back.
#[test]
fn malformed_http_heads_are_refused_before_the_app() {
    require_root().unwrap();
    let m = ClientServer::start("bad-input-http").unwrap();
    let c = &m.cluster;
    let _app = start_app(c, &m.web, "python3", "http_app.py", 8000);
    let ip = m.web.ip.to_string();
    // A first request opens the pooled HBONE connection, so that the baseline has it.
    let mut after = Afterwards {
        m: &m,
        baseline_fds: usize::MAX - 8,
        served: 0.0,
    };
    after.check("warm-up");
    after.baseline_fds = fds(&m.agent1);

    let refused = [
        (
            "F86 bare LF, Content-Length with Transfer-Encoding",
            "POST /sha256 HTTP/1.1\\nHost: web\\nContent-Length: 5\\nTransfer-Encoding: chunked\\n\\n0\\r\\n\\r\\n",
        ),
        (
            "F89 a signed Content-Length",
            "POST /sha256 HTTP/1.1\\r\\nHost: web\\r\\nContent-Length: +5\\r\\n\\r\\nhello",
        ),
        (
            "F89 two lengths in one value",
            "POST /sha256 HTTP/1.1\\r\\nHost: web\\r\\nContent-Length: 5, 6\\r\\n\\r\\nhello",
        ),
        (
            "F90 chunked, then identity",
            "POST /sha256 HTTP/1.1\\r\\nHost: web\\r\\nTransfer-Encoding: chunked, identity\\r\\n\\r\\n0\\r\\n\\r\\n",
        ),
        (
            "F90 identity alone",
            "POST /sha256 HTTP/1.1\\r\\nHost: web\\r\\nTransfer-Encoding: identity\\r\\n\\r\\nhello",
        ),
        (
            "F90 xchunked",
            "POST /sha256 HTTP/1.1\\r\\nHost: web\\r\\nTransfer-Encoding: xchunked\\r\\n\\r\\n0\\r\\n\\r\\n",
        ),
        (
            "F91 an obsolete folded header line",
            "GET /headers HTTP/1.1\\r\\nHost: web\\r\\nX-A: a\\r\\n b\\r\\n\\r\\n",
        ),
    ];
    let invalid = [("direction", "outbound"), ("error", "invalid_request")];
    for (i, (case, head)) in refused.iter().enumerate() {
        let r = raw_client(c, &m.client, &ip, 8000, head, false);
        assert_eq!(status_line(&r), "HTTP/1.1 400 Bad Request", "{case}: {r}");
        assert_eq!(r["end"], "eof", "{case}: {r}");
        assert!(r["secs"].as_f64().unwrap_or(99.0) < 5.0, "{case}: {r}");
        settle(&m.agent1, "http_errors_total", &invalid, (i + 1) as f64);
        after.check(case);
    }
    // None of them reached the server's agent: it counted only the checks' requests.
    let t2 = metrics(&m.agent2);
    assert_eq!(
        sum_metric(&t2, "request_total", &[]),
        after.served,
        "a refused request reached the server's agent:\n{t2}"
    );

    // F92: an absolute-form target goes to the original destination, whatever it names.
    let absolute =
        "GET http://evil.example/headers HTTP/1.1\\r\\nHost: evil.example\\r\\nConnection: close\\r\\n\\r\\n";
    let r = raw_client(c, &m.client, &ip, 8000, absolute, false);
    assert_eq!(status_line(&r), "HTTP/1.1 200 OK", "F92: {r}");
    after.served += 1.0;
    let t2 = settle(
        &m.agent2,
        "request_total",
        &[("direction", "inbound")],
        after.served,
    );
    assert!(
        !t2.contains("evil.example"),
        "F92: the name became a label:\n{t2}"
    );
    after.check("F92 absolute-form target");

    // F93: two Host headers are forwarded as they came, in order; the app sees both.
    let two_hosts =
        "GET /headers HTTP/1.1\\r\\nHost: web\\r\\nHost: other\\r\\nConnection: close\\r\\n\\r\\n";
    let r = raw_client(c, &m.client, &ip, 8000, two_hosts, false);
    assert_eq!(status_line(&r), "HTTP/1.1 200 OK", "F93: {r}");
    let body = r["reply"]
        .as_str()
        .unwrap_or_default()
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default();
    let headers: Vec<(String, String)> = serde_json::from_str(body).unwrap_or_default();
    let hosts: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "host")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(hosts, ["web", "other"], "F93: {body}");
    after.served += 1.0;
    after.check("F93 two Host headers");

    // F96: an HTTP/1 CONNECT goes to the original destination like any request (the app
    // may be a forward proxy); this app refuses it, and its answer comes back at once.
    let connect =
        "CONNECT x.example:443 HTTP/1.1\\r\\nHost: x.example:443\\r\\nConnection: close\\r\\n\\r\\n";
    let r = raw_client(c, &m.client, &ip, 8000, connect, false);
    assert_eq!(
        status_line(&r),
        "HTTP/1.1 501 Unsupported method ('CONNECT')",
        "F96: {r}"
    );
    assert_eq!(r["end"], "eof", "F96: {r}");
    assert!(r["secs"].as_f64().unwrap_or(99.0) < 5.0, "F96: {r}");
    after.served += 1.0;
    after.check("F96 HTTP/1 CONNECT");

    m.agent1.stop().unwrap();
    m.agent2.stop().unwrap();
}

/// Proves the review's class E cases 75, 76 and 79: a pod that connects straight to the
/// agent's ports on its own loopback (not captured: connect4 leaves 127/8 alone) gets
/// nothing: to the outbound listener (`127.0.0.1:15001`) the connection has no recorded
/// original destination and is reset, to the inbound listener (`127.0.0.1:15006`) the
/// destination is refused and reset; `0.0.0.0:15006` is captured, dialed as a destination
/// outside the mesh and refused the same way when it lands on the inbound listener. At most
/// two records each, no chain of connections; the agent stays bounded and the pod's own
/// traffic still flows.
#[test]
fn a_pod_reaching_the_agents_ports_directly_gets_nothing() {
    require_root().unwrap();
    let m = ClientServer::start("bad-input-ports").unwrap();
    let c = &m.cluster;
    let _app = start_app(c, &m.web, "python3", "http_app.py", 8000);
    let mut after = Afterwards {
        m: &m,
        baseline_fds: usize::MAX - 8,
        served: 0.0,
    };
    after.check("warm-up");
    after.baseline_fds = fds(&m.agent1);
    let records_before = m.agent1.connections().unwrap().len();

    // What the pod gets: nothing but the end; E76 (HTTP to a captured destination that the
    // agent dials and whose far end refuses it) a reset, or a 502 from its own agent when
    // the request was already on its way upstream when the refusal came.
    let cases: [(&str, &str, u16, &[&str]); 3] = [
        ("E79 the outbound listener", "127.0.0.1", 15001, &[""]),
        ("E75 the inbound listener", "127.0.0.1", 15006, &[""]),
        (
            "E76 the inbound port by 0.0.0.0 (captured)",
            "0.0.0.0",
            15006,
            &["", "HTTP/1.1 502 Bad Gateway"],
        ),
    ];
    for (case, ip, port, answers) in cases {
        let r = raw_client(
            c,
            &m.client,
            ip,
            port,
            "GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n",
            false,
        );
        assert!(answers.contains(&status_line(&r)), "{case}: {r}");
        assert_ne!(r["end"], "timeout", "{case}: {r}");
        assert!(r["secs"].as_f64().unwrap_or(99.0) < 5.0, "{case}: {r}");
        after.check(case);
    }
    // At most two records per attempt (the captured one is an outbound and an inbound
    // connection), plus one per check: no loop through 15006.
    let records = m.agent1.connections().unwrap();
    let new = records.len() - records_before;
    assert!(new <= 3 * cases.len(), "{new} new records: {records:#?}");
    assert!(
        !records.iter().any(|r| r["direction"] == "inbound"
            && r["target"].as_str().is_some_and(|t| t.ends_with(":15006"))),
        "an inbound connection was delivered to 15006: {records:#?}"
    );
    m.agent1.stop().unwrap();
    m.agent2.stop().unwrap();
}

/// Proves the review's case G101: with the agents' log level raised to `trace` at run
/// time (`PUT /log-level`), a request carrying a bearer token, a cookie and a body through
/// both agents leaves none of them in either agent's log: header values and bodies are
/// never logged, at any level.
#[test]
fn trace_logs_carry_no_header_values_or_bodies() {
    require_root().unwrap();
    let m = ClientServer::start("bad-input-logs").unwrap();
    let c = &m.cluster;
    let _app = start_app(c, &m.web, "python3", "http_app.py", 8000);
    for (agent, node) in [(&m.agent1, &m.n1), (&m.agent2, &m.n2)] {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "-X", "PUT", "--data", "trace"])
            .arg("http://127.0.0.1:15000/log-level");
        let out = c.run_in_node(node, curl).unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(agent.get("/log-level").unwrap().1.trim(), "trace");
    }
    let url = format!("http://{}:8000/sha256", m.web.ip);
    let out = curl_output(
        c,
        &m.client,
        20,
        &[
            "-sS",
            "-H",
            "Authorization: Bearer tok-9f3a1c-secret",
            "-H",
            "Cookie: session=ck-77d2e0-secret",
            "--data",
            "body-5b8e44-secret",
            &url,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    settle(&m.agent2, "request_total", &[("direction", "inbound")], 1.0);
    for agent in [&m.agent1, &m.agent2] {
        let log = agent.proc.stderr();
        assert!(log.contains("TRACE"), "trace did not apply");
        for secret in ["tok-9f3a1c", "ck-77d2e0", "body-5b8e44"] {
            let line = log.lines().find(|l| l.contains(secret));
            assert!(line.is_none(), "{secret} in the log: {line:?}");
        }
    }
    m.agent1.stop().unwrap();
    m.agent2.stop().unwrap();
}
