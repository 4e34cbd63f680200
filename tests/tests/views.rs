//! `meshd stat`, `edges`, `tap` and `log-level` against known traffic.

use std::{process::Command, time::Duration};

use meshd_tests::{
    mesh::{meshd_bin, Agent, ClientServer},
    require_root,
    traffic::{curl_output, start_app},
    wait_until, Cluster, Node, Pod, ProcHandle,
};
use serde_json::Value;

fn meshd(c: &Cluster, node: &Node, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(meshd_bin());
    cmd.args(args);
    let out = c.run_in_node(node, cmd).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn curl(c: &Cluster, pod: &Pod, args: &[String]) {
    let out = curl_output(c, pod, 10, args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// GETs of `urls`, bodies discarded, on one keep-alive connection.
fn get(c: &Cluster, pod: &Pod, urls: &[String]) {
    let mut args = Vec::new();
    for u in urls {
        args.extend(["-o".to_string(), "/dev/null".to_string(), u.clone()]);
    }
    curl(c, pod, &args);
}

fn tap(c: &Cluster, node: &Node, args: &[&str]) -> ProcHandle {
    let mut cmd = Command::new(meshd_bin());
    cmd.arg("tap").args(args);
    c.spawn_in_node(node, cmd).unwrap()
}

/// The JSON events (`-o json`) a tap printed, once it has ended (10 s at most).
fn tap_events(tap: &ProcHandle) -> Vec<Value> {
    tap.wait(Duration::from_secs(10)).unwrap();
    tap.stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Whether exactly `n` clients hold the admin API's streams open and each has been sent
/// the start of its response. The agent sends a tap's response only after subscribing it,
/// so then every tap is live (the CLI prints nothing for the stream's first line).
fn taps_live(c: &Cluster, node: &Node, n: usize) -> bool {
    let mut ss = Command::new("ss");
    ss.args(["-Htni", "state", "established", "( sport = :15000 )"]);
    let Ok(out) = c.run_in_node(node, ss) else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let conns = text.lines().filter(|l| l.contains(":15000")).count();
    let answered = text.lines().filter(|l| l.contains("bytes_sent:")).count();
    conns == n && answered == n
}

/// Closed inbound connection records of agent 2's pod `web`.
fn closed_inbound(agent: &Agent) -> usize {
    agent
        .connections()
        .unwrap()
        .iter()
        .filter(|r| r["direction"] == "inbound" && r["closed"] == true)
        .count()
}

/// Proves the README's views: with 8 successes and 2 × 500 through two agents, `meshd stat`
/// shows 10 requests, 80 % success and a p99 of the one 1.2 s request on both sides
/// (inbound on the server's node, outbound on the client's); `edges` shows the secured
/// edge with both identities; taps started after two requests and before the rest get
/// exactly the requests after them, in order, with the path, direction, method and
/// workload filters applied; `log-level` turns debug lines off and on and refuses a bad
/// filter; an unreachable admin address gives a clear error.
#[test]
fn stat_edges_tap_and_log_level_show_known_traffic() {
    require_root().unwrap();
    let m = ClientServer::start("views").unwrap();
    let (c, n1, n2, client, web) = (&m.cluster, &m.n1, &m.n2, &m.client, &m.web);
    let (agent1, agent2) = (&m.agent1, &m.agent2);
    start_app(c, web, "python3", "http_app.py", 8000);
    let base = format!("http://{}:8000", web.ip);

    // Two requests before any tap: a tap that showed them would start with `/pre` paths.
    get(
        c,
        client,
        &[
            format!("{base}/status/200/pre"),
            format!("{base}/status/200/pre"),
        ],
    );

    // Taps, then (once all four are live) the traffic: everything on node 2 (first 3),
    // only 500s inbound, only POSTs of workload default/web, and a workload that node 2
    // does not proxy for (must stay empty).
    let tap_all = tap(c, n2, &["--limit", "3", "-o", "json"]);
    let tap_500 = tap(
        c,
        n2,
        &[
            "--path",
            "/status/500",
            "--direction",
            "inbound",
            "--limit",
            "2",
        ],
    );
    let tap_post = tap(
        c,
        n2,
        &[
            "--workload",
            "default/web",
            "--method",
            "POST",
            "--limit",
            "1",
            "-o",
            "json",
        ],
    );
    let tap_other = tap(c, n2, &["--workload", "default/client", "-o", "json"]);
    assert!(
        wait_until(Duration::from_secs(20), || taps_live(c, n2, 4)),
        "four taps subscribed"
    );

    let mut urls: Vec<String> = (0..4).map(|_| format!("{base}/status/200")).collect();
    urls.push(format!("{base}/sleep/1200"));
    urls.extend((0..2).map(|_| format!("{base}/status/500")));
    get(c, client, &urls);
    curl(
        c,
        client,
        &[
            "-o".into(),
            "/dev/null".into(),
            "--data-binary".into(),
            "abc".into(),
            format!("{base}/sha256"),
        ],
    );

    // stat, as JSON and as a table, on both agents: 2 + 5 + 1 successes, 2 failures; the
    // p99 of 10 requests is the slowest, the 1.2 s one; the median is a fast one.
    for (node, deployment, direction) in [(n2, "web", "inbound"), (n1, "client", "outbound")] {
        // A request is counted as it ends, which can be just after the client saw it end.
        let mut row = Value::Null;
        wait_until(Duration::from_secs(10), || {
            let (ok, out, err) = meshd(c, node, &["stat", "--window", "60s", "-o", "json"]);
            assert!(ok, "{err}");
            let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
            row = rows
                .into_iter()
                .find(|r| r["deployment"] == deployment && r["direction"] == direction)
                .unwrap_or_else(|| panic!("{out}"));
            row["requests"] == 10
        });
        assert_eq!(row["requests"], 10, "{row}");
        assert_eq!(row["successes"], 8, "{row}");
        assert_eq!(row["success_rate"], 0.8, "{row}");
        assert_eq!(row["meshed"], true, "{row}");
        let p99 = row["latency_ms_p99"].as_f64().unwrap();
        assert!((1200.0..3000.0).contains(&p99), "{row}");
        let p50 = row["latency_ms_p50"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 < 1000.0, "{row}");
    }
    let (ok, table, _) = meshd(c, n2, &["stat", "--window", "60s"]);
    assert!(ok);
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains("inbound") && line.contains("80.00%") && line.contains("1/1"),
        "{line}"
    );
    let (ok, table, _) = meshd(c, n1, &["stat", "--window", "60s"]);
    assert!(ok);
    let line = table
        .lines()
        .find(|l| l.starts_with("client "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains("outbound") && line.contains("80.00%"),
        "{line}"
    );

    // edges: client -> web, both identities, secured.
    let (ok, out, _) = meshd(c, n2, &["edges", "-o", "json"]);
    assert!(ok);
    let edges: Vec<Value> = serde_json::from_str(&out).unwrap();
    let e = edges
        .iter()
        .find(|e| e["src"] == "default/client" && e["dst"] == "default/web")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        e["client_id"],
        "spiffe://cluster.local/ns/default/sa/client"
    );
    assert_eq!(e["server_id"], "spiffe://cluster.local/ns/default/sa/web");
    assert_eq!(e["secured"], true);
    let (_, table, _) = meshd(c, n1, &["edges"]);
    assert!(
        table.lines().any(|l| l.starts_with("default/client")
            && l.contains("default/web")
            && l.contains('√')),
        "{table}"
    );

    // tap: exactly the requests made after it started, in order, filters applied.
    let events = tap_events(&tap_all);
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e["method"] == "GET" && e["path"] == "/status/200" && e["status"] == 200),
        "{events:?}"
    );
    tap_500.wait(Duration::from_secs(10)).unwrap();
    let lines = tap_500.stdout();
    assert_eq!(lines.lines().count(), 4, "{lines}");
    assert_eq!(
        lines
            .lines()
            .filter(|l| l.starts_with("rsp inbound") && l.contains(":status=500"))
            .count(),
        2,
        "{lines}"
    );
    assert_eq!(
        lines
            .lines()
            .filter(
                |l| l.starts_with("req inbound src=default/client dst=default/web")
                    && l.contains(":method=GET")
                    && l.contains(":path=/status/500")
            )
            .count(),
        2,
        "{lines}"
    );
    let events = tap_events(&tap_post);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert!(
        e["method"] == "POST"
            && e["path"] == "/sha256"
            && e["status"] == 200
            && e["namespace"] == "default"
            && e["pod"] == "web"
            && e["direction"] == "inbound",
        "{e}"
    );
    // Every event reached every tap by now (the POST was the last request): the tap of a
    // workload node 2 does not proxy for got none.
    assert!(tap_other.is_running());
    assert_eq!(tap_other.stdout(), "");

    // The log level changes at runtime; a bad filter is refused. At `info` a request's
    // connection closes (its record is there) without a debug line, while an info line
    // (a delivery to a port where nothing listens) still comes.
    let (ok, out, _) = meshd(c, n2, &["log-level", "info"]);
    assert!(ok && out.trim() == "info", "{out}");
    let debug_lines = || agent2.proc.stderr().matches("connection closed").count();
    let info_lines = || {
        agent2
            .proc
            .stderr()
            .matches("HBONE: delivery to the app failed")
            .count()
    };
    let (debug_before, info_before, closed) = (debug_lines(), info_lines(), closed_inbound(agent2));
    get(c, client, &[format!("{base}/status/200")]);
    assert!(wait_until(Duration::from_secs(10), || closed_inbound(
        agent2
    ) > closed));
    let mut refused = Command::new("curl");
    refused.args([
        "-sS",
        "--max-time",
        "10",
        &format!("http://{}:8009/", web.ip),
    ]);
    let out = c.run_in_pod(client, refused).unwrap();
    assert!(!out.status.success());
    assert!(
        wait_until(Duration::from_secs(10), || info_lines() > info_before),
        "info lines still logged"
    );
    assert_eq!(debug_lines(), debug_before, "no debug lines at info");
    let (ok, _, _) = meshd(c, n2, &["log-level", "info,meshd=debug"]);
    assert!(ok);
    get(c, client, &[format!("{base}/status/200")]);
    assert!(wait_until(Duration::from_secs(10), || debug_lines() > debug_before));
    let (ok, _, err) = meshd(c, n2, &["log-level", "meshd=notalevel"]);
    assert!(!ok && err.contains("invalid log filter"), "{err}");
    let (ok, _, err) = meshd(c, n2, &["stat", "--admin", "127.0.0.1:1"]);
    assert!(
        !ok && err.contains("cannot reach the agent's admin API"),
        "{err}"
    );
    tap_other.kill().unwrap();
    agent1.stop().unwrap();
    agent2.stop().unwrap();
}
