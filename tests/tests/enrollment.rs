//! Enrollment as the config file changes: a workload whose skip ports, addresses, cgroup or
//! network namespace change is re-enrolled (the old capture gone, the new one in place, its
//! traffic carried); rapid enroll/un-enroll churn while clients run; a workload that cannot
//! be enrolled is reported, held closed (its connections refused), retried, and the others
//! keep working.

use std::{net::Ipv4Addr, path::Path, process::Command, time::Duration};

use meshd_tests::{
    enroll::{enrolled, map_count, sorted, workload_status, ClientLoop, PROGRAMS},
    mesh::{
        bpftool_json, cgroup_programs, config_yaml, netns_programs, serve, testapp_bin,
        testapp_json, Agent, WorkloadSpec,
    },
    metrics::metric,
    require_root,
    traffic::{self, app_saw_client_socket, greeted_peer, spawn_listening},
    wait_until, Cluster, Pod,
};
use serde_json::Value;

/// How many times the agent logged `msg` ("workload enrolled", "workload un-enrolled")
/// for the workload `key`.
fn logged(agent: &Agent, msg: &str, key: &str) -> usize {
    agent
        .proc
        .stderr()
        .lines()
        .filter(|l| {
            l.contains(msg)
                && l.split_whitespace()
                    .any(|w| w.trim_end_matches(',') == format!("workload={key}"))
        })
        .count()
}

/// Writes `yaml` and waits until the workload `key` was un-enrolled and enrolled again.
fn re_enroll(agent: &Agent, yaml: &str, key: &str) {
    let (out, inn) = (
        logged(agent, "workload un-enrolled", key),
        logged(agent, "workload enrolled", key),
    );
    agent.write_config(yaml).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            logged(agent, "workload un-enrolled", key) == out + 1
                && logged(agent, "workload enrolled", key) == inn + 1
        }),
        "{key} re-enrolled:\n{}",
        agent.proc.output_tail()
    );
    assert!(enrolled(agent, key));
}

/// A greeted 1 KiB echo from `pod` to `dst` that must succeed.
fn echo(c: &Cluster, pod: &Pod, dst: &str) -> Value {
    let r = traffic::echo(c, pod, dst, 1024);
    assert_eq!(r["ok"], true, "echo from {} to {dst}: {r}", pod.name);
    r
}

/// Outbound capture, seen by the client: a captured socket is connected to the agent on
/// loopback, an uncaptured one from the pod's own address.
fn outbound_captured(c: &Cluster, pod: &Pod, dst: &str) -> bool {
    let r = echo(c, pod, dst);
    r["local"].as_str().unwrap().starts_with("127.0.0.1:")
}

/// Inbound capture, seen by the server: the agent delivers from inside the server's pod,
/// from the client's address but another port than the client's socket; a direct
/// connection is the client's socket itself.
fn inbound_captured(c: &Cluster, from: &Pod, dst: &str) -> bool {
    let r = echo(c, from, dst);
    assert_eq!(
        greeted_peer(&r).map(|a| a.ip()),
        Some(from.ip.into()),
        "{r}"
    );
    !app_saw_client_socket(&r)
}

/// The capture of one enrolled workload: its cgroup runs the three programs once, its
/// network namespace the sk_lookup program once.
fn assert_captured_at(cgroup: &Path, netns: &Path) {
    assert_eq!(sorted(cgroup_programs(cgroup).unwrap()), PROGRAMS);
    assert_eq!(netns_programs(netns).unwrap(), ["meshd_sk_lookup"]);
}

fn assert_nothing_at(cgroup: &Path, netns: Option<&Path>) {
    assert!(
        cgroup_programs(cgroup).unwrap().is_empty(),
        "{}",
        cgroup.display()
    );
    if let Some(netns) = netns {
        assert!(
            netns_programs(netns).unwrap().is_empty(),
            "{}",
            netns.display()
        );
    }
}

/// The BPF links (pinned or not) that run one of the agent's programs.
fn links_of_agent(agent: &Agent) -> usize {
    let dump = agent.config_dump().unwrap();
    let ids: Vec<u64> = dump["capture"]["attached"]["programs"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .collect();
    bpftool_json(&["link", "show"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .count()
}

/// The end of a re-enrollment test: the agent runs one set of links (none leaked), stops
/// cleanly and leaves nothing on the workload's last pod (`pod`) and no pin.
fn one_set_of_links_then_clean_stop(agent: &Agent, pod: &Pod) {
    assert_eq!(links_of_agent(agent), 4, "one set of links, none leaked");
    assert!(agent.stop().unwrap().success());
    assert_nothing_at(&pod.cgroup, Some(&pod.netns_path));
    assert!(!agent.pin_root.exists());
}

/// Changing a workload's skip ports, then its addresses, re-enrolls it: the skip maps and
/// listener entries follow the file, the programs stay attached exactly once, and the
/// captured and skipped ports and addresses behave as the new file says.
#[test]
fn changed_skip_ports_or_addresses_re_enroll_the_workload() {
    require_root().unwrap();
    let c = Cluster::new("reenroll-ports").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let peer = c.add_pod(&n1, "peer").unwrap();
    let agent = Agent::start(
        &c,
        &n1,
        &config_yaml(&c, &n1, &[WorkloadSpec::new(&a)], &[]),
    )
    .unwrap();
    for port in [8080, 9090] {
        serve(&c, &peer, port).unwrap();
    }
    for port in [8080, 9091] {
        serve(&c, &a, port).unwrap();
    }
    let key = "default/a";
    let (out8080, out9090) = (format!("{}:8080", peer.ip), format!("{}:9090", peer.ip));
    let (in8080, in9091) = (format!("{}:8080", a.ip), format!("{}:9091", a.ip));
    assert!(outbound_captured(&c, &a, &out9090));
    assert!(inbound_captured(&c, &peer, &in9091));
    assert_eq!(map_count(&agent, "MESHD_SKIP_OUT"), 0);
    assert_eq!(map_count(&agent, "MESHD_SKIP_IN"), 0);

    // Skip ports added: exactly those ports are left alone, the others still captured.
    let skipping = config_yaml(
        &c,
        &n1,
        &[WorkloadSpec::new(&a)
            .skip_outbound(&[9090])
            .skip_inbound(&[9091])],
        &[],
    );
    re_enroll(&agent, &skipping, key);
    assert_eq!(map_count(&agent, "MESHD_SKIP_OUT"), 1);
    assert_eq!(map_count(&agent, "MESHD_SKIP_IN"), 1);
    assert_captured_at(&a.cgroup, &a.netns_path);
    assert!(!outbound_captured(&c, &a, &out9090));
    assert!(outbound_captured(&c, &a, &out8080));
    assert!(!inbound_captured(&c, &peer, &in9091));
    assert!(inbound_captured(&c, &peer, &in8080));

    // Skip ports removed: captured again, no skip entry left.
    re_enroll(
        &agent,
        &config_yaml(&c, &n1, &[WorkloadSpec::new(&a)], &[]),
        key,
    );
    assert_eq!(map_count(&agent, "MESHD_SKIP_OUT"), 0);
    assert_eq!(map_count(&agent, "MESHD_SKIP_IN"), 0);
    assert!(outbound_captured(&c, &a, &out9090));
    assert!(inbound_captured(&c, &peer, &in9091));

    // The address changes (a second one on the pod's interface takes its place in the
    // file): the new address is captured, the old one no longer.
    let new_ip = Ipv4Addr::new(10, 244, n1.index, 200);
    let mut ip = Command::new("ip");
    ip.args([
        "-n",
        &a.netns,
        "addr",
        "add",
        &format!("{new_ip}/24"),
        "dev",
        "eth0",
    ]);
    assert!(ip.status().unwrap().success());
    let mut moved = a.clone();
    moved.ip = new_ip;
    re_enroll(
        &agent,
        &config_yaml(&c, &n1, &[WorkloadSpec::new(&moved)], &[]),
        key,
    );
    assert_eq!(map_count(&agent, "MESHD_LISTENERS"), 1);
    assert_eq!(map_count(&agent, "MESHD_POD_ADDRS"), 1);
    assert_eq!(map_count(&agent, "MESHD_PODS"), 1);
    assert_captured_at(&a.cgroup, &a.netns_path);
    assert!(inbound_captured(&c, &peer, &format!("{new_ip}:8080")));
    assert!(!inbound_captured(&c, &peer, &in8080));
    assert!(outbound_captured(&c, &a, &out8080));
    let inbound_to = |dst: &str| agent.closed_to("inbound", dst).unwrap().len();
    assert!(wait_until(Duration::from_secs(10), || inbound_to(
        &format!("{new_ip}:8080")
    ) == 1));

    one_set_of_links_then_clean_stop(&agent, &a);
}

/// Changing a workload's cgroup, then its network namespace (the pod recreated: new
/// netns, cgroup and address under the same name), re-enrolls it: nothing stays on the
/// old cgroup or namespace, the new ones are captured, and traffic of the new pod is
/// carried and recorded under the workload's name.
#[test]
fn changed_cgroup_or_netns_re_enrolls_the_workload() {
    require_root().unwrap();
    let c = Cluster::new("reenroll-ns").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let b = c.add_pod(&n1, "b").unwrap();
    let peer = c.add_pod(&n1, "peer").unwrap();
    let agent = Agent::start(
        &c,
        &n1,
        &config_yaml(&c, &n1, &[WorkloadSpec::new(&a)], &[]),
    )
    .unwrap();
    serve(&c, &peer, 8080).unwrap();
    serve(&c, &a, 8080).unwrap();
    serve(&c, &b, 8080).unwrap();
    let key = "default/a";
    let to_peer = format!("{}:8080", peer.ip);
    assert_captured_at(&a.cgroup, &a.netns_path);
    let cookie = workload_status(&agent, key)["netns_cookie"]
        .as_u64()
        .unwrap();

    // Another cgroup (the pod's processes moved to a new one): processes in it are
    // captured, those left in the old cgroup no longer.
    let mut a_cg2 = a.clone();
    a_cg2.cgroup = c.cgroup_root().join("a-cg2");
    std::fs::create_dir(&a_cg2.cgroup).unwrap();
    re_enroll(
        &agent,
        &config_yaml(&c, &n1, &[WorkloadSpec::new(&a_cg2)], &[]),
        key,
    );
    assert_captured_at(&a_cg2.cgroup, &a.netns_path);
    assert_nothing_at(&a.cgroup, None);
    assert_eq!(
        workload_status(&agent, key)["netns_cookie"].as_u64(),
        Some(cookie)
    );
    assert!(outbound_captured(&c, &a_cg2, &to_peer));
    assert!(!outbound_captured(&c, &a, &to_peer));
    assert!(inbound_captured(&c, &peer, &format!("{}:8080", a.ip)));

    // The pod recreated: workload `a` is now b's namespace, cgroup and address.
    let mut recreated = b.clone();
    recreated.name = "a".into();
    re_enroll(
        &agent,
        &config_yaml(&c, &n1, &[WorkloadSpec::new(&recreated)], &[]),
        key,
    );
    assert_captured_at(&b.cgroup, &b.netns_path);
    assert_nothing_at(&a_cg2.cgroup, Some(&a.netns_path));
    assert_nothing_at(&a.cgroup, None);
    let new_cookie = workload_status(&agent, key)["netns_cookie"]
        .as_u64()
        .unwrap();
    assert_ne!(new_cookie, cookie);
    assert_eq!(map_count(&agent, "MESHD_PODS"), 1);
    assert_eq!(map_count(&agent, "MESHD_LISTENERS"), 1);
    assert_eq!(map_count(&agent, "MESHD_POD_ADDRS"), 1);
    assert!(outbound_captured(&c, &b, &to_peer));
    assert!(!outbound_captured(&c, &a_cg2, &to_peer));
    assert!(inbound_captured(&c, &peer, &format!("{}:8080", b.ip)));
    assert!(!inbound_captured(&c, &peer, &format!("{}:8080", a.ip)));
    // Recorded under the workload's name: a_cg2's and b's captured connections.
    let of_a = |r: &&Value| {
        r["direction"] == "outbound"
            && r["workload"] == key
            && r["orig_dst"] == to_peer.as_str()
            && r["closed"] == true
    };
    assert!(wait_until(Duration::from_secs(10), || agent
        .connections()
        .unwrap()
        .iter()
        .filter(of_a)
        .count()
        == 2));

    one_set_of_links_then_clean_stop(&agent, &b);
}

/// Rapid enroll/un-enroll churn of one workload (edits waited for, and edits faster than
/// the file is polled) while two clients run: neither the always-enrolled workload's
/// client nor the churned one's ever fails a connection, and at the end nothing of the
/// churned workload is left: no program on its cgroup or namespace, no link (pinned or
/// not), no map entry.
#[test]
fn enroll_unenroll_churn_under_traffic_fails_nothing_and_leaks_nothing() {
    require_root().unwrap();
    let c = Cluster::new("churn").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let steady = c.add_pod(&n1, "steady").unwrap();
    let churn = c.add_pod(&n1, "churn").unwrap();
    let server = c.add_pod(&n1, "server").unwrap();
    let without = config_yaml(
        &c,
        &n1,
        &[WorkloadSpec::new(&steady), WorkloadSpec::new(&server)],
        &[],
    );
    let with = config_yaml(
        &c,
        &n1,
        &[
            WorkloadSpec::new(&steady),
            WorkloadSpec::new(&server),
            WorkloadSpec::new(&churn),
        ],
        &[],
    );
    let agent = Agent::start(&c, &n1, &without).unwrap();
    serve(&c, &server, 8080).unwrap();
    let dst = format!("{}:8080", server.ip);
    let steady_loop = ClientLoop::start(&c, &steady, &dst);
    let churn_loop = ClientLoop::start(&c, &churn, &dst);
    let key = "default/churn";

    // Three full cycles, each edit waited for.
    for _ in 0..3 {
        agent.write_config(&with).unwrap();
        assert!(wait_until(Duration::from_secs(10), || enrolled(
            &agent, key
        )));
        let n = churn_loop.ok() + 5;
        assert!(wait_until(Duration::from_secs(30), || churn_loop.ok() >= n));
        agent.write_config(&without).unwrap();
        assert!(wait_until(Duration::from_secs(10), || workload_status(
            &agent, key
        ) == Value::Null));
    }
    // Ten edits in a row, some faster than the file is polled (every 250 ms): the
    // pauses pace the edits, they synchronise nothing.
    for i in 0..10u64 {
        agent
            .write_config(if i % 2 == 0 { &with } else { &without })
            .unwrap();
        std::thread::sleep(Duration::from_millis(60 * (i % 5)));
    }
    assert!(
        logged(&agent, "workload enrolled", key) >= 4,
        "{}",
        agent.proc.output_tail()
    );
    // The last edit (`without`) is applied: churn is out, the others are in.
    let done = logged(&agent, "workload enrolled", key);
    assert!(wait_until(Duration::from_secs(10), || {
        workload_status(&agent, key) == Value::Null
            && logged(&agent, "workload un-enrolled", key) == done
    }));
    for (p, n) in [(&steady_loop, 20), (&churn_loop, 20)] {
        let target = p.ok() + n;
        assert!(wait_until(Duration::from_secs(30), || p.ok() >= target));
    }

    for p in [steady_loop, churn_loop] {
        let name = p.proc.name().to_string();
        let summary = p.stop();
        assert_eq!(summary["failed"], 0, "{name}: {summary}");
    }

    // Nothing of the churned workload is left; the others are intact.
    assert_nothing_at(&churn.cgroup, Some(&churn.netns_path));
    assert!(!agent.pin_root.join("v3/links/default_churn").exists());
    assert_captured_at(&steady.cgroup, &steady.netns_path);
    assert_captured_at(&server.cgroup, &server.netns_path);
    assert_eq!(
        links_of_agent(&agent),
        8,
        "4 links each for steady and server"
    );
    assert_eq!(map_count(&agent, "MESHD_PODS"), 2);
    assert_eq!(map_count(&agent, "MESHD_LISTENERS"), 2);
    assert_eq!(map_count(&agent, "MESHD_POD_ADDRS"), 2);
    assert!(wait_until(Duration::from_secs(10), || {
        map_count(&agent, "MESHD_ORIG_DST") == 0 && map_count(&agent, "MESHD_SOCK_DST") == 0
    }));
    assert!(agent.stop().unwrap().success());
    assert!(!agent.pin_root.exists());
}

/// Workloads that cannot be enrolled because the pod holds one of the agent's ports first
/// (`busy` listens on the outbound port 127.0.0.1:15001, `busy6` on the inbound port
/// 0.0.0.0:15006) fail closed: each is reported with the reason in `/config_dump`, `/ready`
/// and the metrics, and stays captured without listeners, so that its connections are
/// refused (busy6) or land on the pod's own listener (busy), and nothing reaches another
/// pod around the mesh. The others are enrolled and carry traffic. Once the ports are free,
/// the periodic retry enrolls both without a config edit.
#[test]
fn a_workload_that_cannot_be_enrolled_is_held_closed_and_the_others_work() {
    require_root().unwrap();
    let c = Cluster::new("enrollfail").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let busy = c.add_pod(&n1, "busy").unwrap();
    let busy6 = c.add_pod(&n1, "busy6").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let server = c.add_pod(&n1, "server").unwrap();
    let blocker = |pod: &Pod, listen: &str| {
        let mut cmd = Command::new(testapp_bin());
        cmd.args(["serve", "--listen", listen]);
        spawn_listening(&c, pod, cmd)
    };
    let blocker_out = blocker(&busy, "127.0.0.1:15001");
    let blocker_in = blocker(&busy6, "0.0.0.0:15006");
    let yaml = config_yaml(
        &c,
        &n1,
        &[
            WorkloadSpec::new(&busy),
            WorkloadSpec::new(&busy6),
            WorkloadSpec::new(&client),
            WorkloadSpec::new(&server),
        ],
        &[],
    );
    let agent = Agent::start(&c, &n1, &yaml).unwrap();
    let app = serve(&c, &server, 8080).unwrap();
    let dst = format!("{}:8080", server.ip);

    for (key, addr) in [
        ("default/busy", "127.0.0.1:15001"),
        ("default/busy6", "127.0.0.1:15006"),
    ] {
        let st = workload_status(&agent, key);
        assert_eq!(st["enrolled"], false, "{st}");
        assert_eq!(st["captured"], true, "{st}");
        let err = st["error"].as_str().unwrap();
        assert!(
            err.contains(&format!("cannot listen on {addr}"))
                && err.contains("Address already in use")
                && err.contains("its connections are refused until the agent can listen"),
            "{st}"
        );
    }
    assert!(agent.proc.stderr().contains("cannot enroll workload"));
    let (status, ready) = agent.get("/ready").unwrap();
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready.starts_with("ready; 2 workload(s) not enrolled")
            && ready.contains("default/busy: cannot listen on 127.0.0.1:15001")
            && ready.contains("default/busy6: cannot listen on 127.0.0.1:15006"),
        "{ready}"
    );
    assert_eq!(metric(&agent, "workloads_not_enrolled "), 2);
    assert!(metric(&agent, "workload_enroll_failures_total{reason=\"listen\"}") >= 2);
    // Held closed: captured, with their links pinned, but no listener in the map.
    for pod in [&busy, &busy6] {
        assert_captured_at(&pod.cgroup, &pod.netns_path);
        let links = agent
            .pin_root
            .join(format!("v3/links/default_{}", pod.name));
        assert!(links.is_dir(), "{}", links.display());
    }
    assert_eq!(map_count(&agent, "MESHD_PODS"), 4);
    assert_eq!(map_count(&agent, "MESHD_LISTENERS"), 2);
    // Their addresses are enrolled too: inbound to them fails closed (no listener).
    assert_eq!(map_count(&agent, "MESHD_POD_ADDRS"), 4);
    let held_app = serve(&c, &busy, 8080).unwrap();
    let r = testapp_json(
        &c,
        &server,
        &[
            "echo",
            "--greet",
            "--connect",
            &format!("{}:8080", busy.ip),
            "--bytes",
            "10",
            "--timeout-secs",
            "5",
        ],
    )
    .unwrap();
    assert_eq!(r["ok"], false, "{r}");
    // Refused by sk_lookup, or reset by the server's own agent whose dial was refused.
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains("Connection refused") || error.contains("Connection reset"),
        "inbound to a pod held closed is refused: {r}"
    );
    assert!(
        !held_app.stdout().contains("accepted"),
        "{}",
        held_app.stdout()
    );
    // The others work: client -> server is captured on both sides.
    assert!(enrolled(&agent, "default/client") && enrolled(&agent, "default/server"));
    assert!(outbound_captured(&c, &client, &dst));
    assert!(wait_until(Duration::from_secs(10), || agent
        .closed_to("inbound", &dst)
        .unwrap()
        .len()
        == 1));
    let seen = app.stdout();
    // busy6's connection is refused (nobody listens on 127.0.0.1:15001 in its pod)...
    let r = testapp_json(
        &c,
        &busy6,
        &[
            "echo",
            "--greet",
            "--connect",
            &dst,
            "--bytes",
            "10",
            "--timeout-secs",
            "5",
        ],
    )
    .unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("Connection refused"),
        "{r}"
    );
    // ...and busy's lands on its own listener: the redirect goes where the pod put it.
    let r = testapp_json(
        &c,
        &busy,
        &[
            "echo",
            "--connect",
            &dst,
            "--bytes",
            "10",
            "--timeout-secs",
            "5",
        ],
    )
    .unwrap();
    assert_eq!(
        r["local"].as_str().unwrap().split(':').next(),
        Some("127.0.0.1"),
        "{r}"
    );
    assert!(wait_until(Duration::from_secs(5), || blocker_out
        .stdout()
        .contains("accepted peer=127.0.0.1:")));
    // Nothing of either reached the server.
    assert_eq!(
        app.stdout(),
        seen,
        "the server saw a connection of a pod held closed"
    );
    assert!(agent.closed_to("outbound", &dst).unwrap().len() == 1);

    // The ports freed, the retry (no config edit) enrolls both and clears their errors.
    blocker_out.kill().unwrap();
    blocker_in.kill().unwrap();
    assert!(wait_until(Duration::from_secs(15), || enrolled(
        &agent,
        "default/busy"
    ) && enrolled(
        &agent,
        "default/busy6"
    )));
    for key in ["default/busy", "default/busy6"] {
        assert_eq!(workload_status(&agent, key)["error"], Value::Null);
    }
    assert_eq!(agent.get("/ready").unwrap(), (200, "ready\n".to_string()));
    assert_eq!(metric(&agent, "workloads_not_enrolled "), 0);
    assert_eq!(map_count(&agent, "MESHD_LISTENERS"), 4);
    assert_captured_at(&busy.cgroup, &busy.netns_path);
    assert!(outbound_captured(&c, &busy, &dst));
    assert!(outbound_captured(&c, &busy6, &dst));
    assert!(agent.stop().unwrap().success());
    assert!(!agent.pin_root.exists());
}

/// A pod's namespace vanishes under an enrolled workload: the next edit is refused as a
/// whole (its netns path does not exist), reported as `configError` in `/config_dump`,
/// and the other workloads keep working on the last good state. Once the namespace is
/// back at the same path (the pod recreated: a new, empty namespace), the next edit
/// re-enrolls the workload into the new namespace: its sk_lookup runs there, the old
/// namespace's map entry is gone, and its connections reach the agent again.
#[test]
fn a_vanished_namespace_is_reported_and_a_recreated_one_is_re_enrolled() {
    require_root().unwrap();
    let c = Cluster::new("vanish").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let x = c.add_pod(&n1, "x").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let server = c.add_pod(&n1, "server").unwrap();
    let config = |label: &str| {
        config_yaml(
            &c,
            &n1,
            &[
                WorkloadSpec::new(&x),
                WorkloadSpec::new(&client).label("edit", label),
                WorkloadSpec::new(&server),
            ],
            &[],
        )
    };
    let agent = Agent::start(&c, &n1, &config("1")).unwrap();
    serve(&c, &server, 8080).unwrap();
    let dst = format!("{}:8080", server.ip);
    let old_cookie = workload_status(&agent, "default/x")["netns_cookie"]
        .as_u64()
        .unwrap();
    let ip_netns = |verb: &str| {
        let st = Command::new("ip")
            .args(["netns", verb, &x.netns])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns {verb} {}", x.netns);
    };

    ip_netns("del");
    agent.write_config(&config("2")).unwrap();
    let expected = format!("netns {}: does not exist", x.netns_path.display());
    assert!(
        wait_until(Duration::from_secs(10), || agent.config_dump().unwrap()
            ["configError"]
            .as_str()
            .is_some_and(|e| e.contains(&expected))),
        "{}",
        agent.config_dump().unwrap()
    );
    assert!(outbound_captured(&c, &client, &dst));
    assert!(enrolled(&agent, "default/client") && enrolled(&agent, "default/server"));

    // Recreated at the same path: a new namespace.
    ip_netns("add");
    agent.write_config(&config("3")).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        let st = workload_status(&agent, "default/x");
        st["enrolled"] == true && st["netns_cookie"].as_u64() != Some(old_cookie)
    }));
    assert_eq!(agent.config_dump().unwrap()["configError"], Value::Null);
    assert_eq!(netns_programs(&x.netns_path).unwrap(), ["meshd_sk_lookup"]);
    assert_eq!(map_count(&agent, "MESHD_PODS"), 3);
    assert_eq!(map_count(&agent, "MESHD_LISTENERS"), 3);
    assert_eq!(map_count(&agent, "MESHD_POD_ADDRS"), 3);
    // A connection from the new namespace is redirected to the agent's listener there
    // (which then cannot reach the server: the new namespace has no network).
    let mut lo = Command::new("ip");
    lo.args(["-n", &x.netns, "link", "set", "lo", "up"]);
    assert!(lo.status().unwrap().success());
    let r = testapp_json(
        &c,
        &x,
        &[
            "echo",
            "--connect",
            &dst,
            "--bytes",
            "10",
            "--timeout-secs",
            "5",
        ],
    )
    .unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .connections()
            .unwrap()
            .iter()
            .any(
                |r| r["workload"] == "default/x" && r["orig_dst"] == dst.as_str()
            )),
        "{r}\n{}",
        agent.proc.output_tail()
    );
    assert!(outbound_captured(&c, &client, &dst));
    assert!(agent.stop().unwrap().success());
    assert!(!agent.pin_root.exists());
}
