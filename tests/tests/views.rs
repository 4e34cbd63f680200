//! `meshd stat`, `edges`, `tap` and `log-level` against known traffic.

use std::{path::PathBuf, process::Command, time::Duration};

use meshd_tests::{
    mesh::{meshd_bin, ClientServer},
    require_root, wait_until, Cluster, Node, Pod,
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

fn curl(c: &Cluster, pod: &Pod, urls: &[String]) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "--max-time", "10"])
        .args(urls);
    let out = c.run_in_pod(pod, cmd).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stat_edges_tap_and_log_level_show_known_traffic() {
    require_root().unwrap();
    let m = ClientServer::start("views").unwrap();
    let (c, n1, n2, client, web) = (&m.cluster, &m.n1, &m.n2, &m.client, &m.web);
    let (agent1, agent2) = (&m.agent1, &m.agent2);
    let apps = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("apps");
    let mut app = Command::new("python3");
    app.arg(apps.join("http_app.py")).arg("8000");
    c.spawn_in_pod(web, app)
        .unwrap()
        .wait_for_output("listening", Duration::from_secs(10))
        .unwrap();

    // Taps started before the traffic: everything on node 2 (first 3), and only 500s.
    let mut tap_all = Command::new(meshd_bin());
    tap_all.args(["tap", "--limit", "3", "-o", "json"]);
    let tap_all = c.spawn_in_node(n2, tap_all).unwrap();
    let mut tap_500 = Command::new(meshd_bin());
    tap_500.args([
        "tap",
        "--path",
        "/status/500",
        "--direction",
        "inbound",
        "--limit",
        "2",
    ]);
    let tap_500 = c.spawn_in_node(n2, tap_500).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let base = format!("http://{}:8000", web.ip);
    let mut urls: Vec<String> = (0..8).map(|_| format!("{base}/status/200")).collect();
    urls.extend((0..2).map(|_| format!("{base}/status/500")));
    curl(c, client, &urls);

    // stat, as JSON and as a table.
    let (ok, out, err) = meshd(c, n2, &["stat", "--window", "30s", "-o", "json"]);
    assert!(ok, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    let web_row = rows
        .iter()
        .find(|r| r["deployment"] == "web" && r["direction"] == "inbound")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(web_row["requests"], 10);
    assert_eq!(web_row["success_rate"], 0.8);
    assert!(web_row["latency_ms_p99"].as_f64().unwrap() > 0.0);
    let (_, out1, _) = meshd(c, n1, &["stat", "-o", "json"]);
    let rows: Vec<Value> = serde_json::from_str(&out1).unwrap();
    assert!(
        rows.iter().any(|r| r["deployment"] == "client"
            && r["direction"] == "outbound"
            && r["requests"] == 10),
        "{out1}"
    );
    let (ok, table, _) = meshd(c, n2, &["stat"]);
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

    // tap: exactly the requests made after it started, with the filters applied.
    tap_all.wait(Duration::from_secs(10)).unwrap();
    let events: Vec<Value> = tap_all
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events
        .iter()
        .all(|e| e["method"] == "GET" && e["path"] == "/status/200" && e["status"] == 200));
    tap_500.wait(Duration::from_secs(10)).unwrap();
    let lines = tap_500.stdout();
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
            .filter(|l| l.starts_with("req inbound src=default/client dst=default/web"))
            .count(),
        2,
        "{lines}"
    );

    // The log level changes at runtime; a bad filter is refused.
    let (ok, out, _) = meshd(c, n2, &["log-level", "warn"]);
    assert!(ok && out.trim() == "warn", "{out}");
    let before = agent2.proc.stderr().matches("connection closed").count();
    curl(c, client, &[format!("{base}/status/200")]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        agent2.proc.stderr().matches("connection closed").count(),
        before,
        "no debug lines at warn"
    );
    let (ok, _, _) = meshd(c, n2, &["log-level", "info,meshd=debug"]);
    assert!(ok);
    curl(c, client, &[format!("{base}/status/200")]);
    assert!(wait_until(Duration::from_secs(3), || agent2
        .proc
        .stderr()
        .matches("connection closed")
        .count()
        > before));
    let (ok, _, err) = meshd(c, n2, &["log-level", "meshd=notalevel"]);
    assert!(!ok && err.contains("invalid log filter"), "{err}");
    let (ok, _, err) = meshd(c, n2, &["stat", "--admin", "127.0.0.1:1"]);
    assert!(
        !ok && err.contains("cannot reach the agent's admin API"),
        "{err}"
    );
    agent1.stop().unwrap();
    agent2.stop().unwrap();
}
