//! The agent's life cycle: hot reload of the config file while traffic runs, restart with
//! live pins (after a crash, and after SIGTERM, which leaves the capture for the next
//! agent), the restart gap, bad config files, `uninstall`, and the pre-flight check.

use std::{process::Command, time::Duration};

use meshd_tests::{
    enroll::{enrolled, map_count, sorted, ClientLoop, PROGRAMS},
    mesh::{
        bpftool_json, cgroup_programs, config_yaml, meshd_bin, netns_programs, serve, testapp_json,
        Agent, WorkloadSpec,
    },
    require_root,
    traffic::{app_saw_client_socket, direct_accepts, echo, echo_ok, wait_closed},
    wait_until, Cluster, Pod,
};
use serde_json::Value;

/// `tcp_open_total` of one direction and pod of the agent, over all its label sets.
fn opened(agent: &Agent, direction: &str, pod: &str) -> u64 {
    let (status, text) = agent.get("/metrics").unwrap();
    assert_eq!(status, 200, "{text}");
    let dir = format!("direction=\"{direction}\"");
    let who = format!("namespace=\"default\",pod=\"{pod}\"");
    text.lines()
        .filter(|l| l.starts_with("tcp_open_total{") && l.contains(&dir) && l.contains(&who))
        .map(|l| {
            let v = l.rsplit(' ').next().unwrap_or("");
            v.parse::<f64>()
                .unwrap_or_else(|_| panic!("bad sample {l:?}")) as u64
        })
        .sum()
}

/// The parts of `/config_dump` a config edit changes (not `configError`, not the map
/// entries of connections in flight).
fn applied_state(agent: &Agent) -> Value {
    let d = agent.config_dump().unwrap();
    serde_json::json!({
        "workloads": d["workloads"],
        "services": d["services"],
        "capture.workloads": d["capture"]["workloads"],
        "capture.attached": d["capture"]["attached"],
        "MESHD_PODS": d["capture"]["maps"]["MESHD_PODS"],
        "MESHD_LISTENERS": d["capture"]["maps"]["MESHD_LISTENERS"],
        "MESHD_POD_ADDRS": d["capture"]["maps"]["MESHD_POD_ADDRS"],
    })
}

/// Enrolling and un-enrolling a workload while its client loop runs fails no connection;
/// after un-enrollment nothing of it stays attached or in the maps, and its further
/// connections (the loop still running) are no longer captured. A bad edit that would
/// remove the enrolled client and add a broken workload changes nothing: the client stays
/// enrolled and captured, `/config_dump` is the same, the error is in `configError` and in
/// the log. A clean shutdown removes every program, link and pin.
#[test]
fn hot_reload_enrolls_and_unenrolls_while_traffic_runs() {
    require_root().unwrap();
    let c = Cluster::new("reload").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let server = c.add_pod(&n1, "server").unwrap();
    let extra = c.add_pod(&n1, "extra").unwrap();
    let only_server = config_yaml(&c, &n1, &[WorkloadSpec::new(&server)], &[]);
    let both = config_yaml(
        &c,
        &n1,
        &[WorkloadSpec::new(&server), WorkloadSpec::new(&client)],
        &[],
    );
    let agent = Agent::start(&c, &n1, &only_server).unwrap();
    serve(&c, &server, 8080).unwrap();
    assert!(cgroup_programs(&client.cgroup).unwrap().is_empty());

    // Traffic from the client until the test stops it; not one connection may fail.
    let traffic = ClientLoop::start(&c, &client, &format!("{}:8080", server.ip));
    traffic.wait_more_ok(20, "before enrollment");

    agent.write_config(&both).unwrap();
    assert!(wait_until(Duration::from_secs(10), || enrolled(
        &agent,
        "default/client"
    )));
    assert_eq!(sorted(cgroup_programs(&client.cgroup).unwrap()), PROGRAMS);
    assert_eq!(
        netns_programs(&client.netns_path).unwrap(),
        ["meshd_sk_lookup"]
    );
    // Counted by the agent's tcp_open_total, which (unlike /connections) keeps no cap.
    let outbound = |a: &Agent| opened(a, "outbound", "client");
    assert!(
        wait_until(Duration::from_secs(30), || outbound(&agent) >= 5),
        "client traffic is captured after enrollment"
    );

    agent.write_config(&only_server).unwrap();
    assert!(wait_until(Duration::from_secs(10), || !enrolled(
        &agent,
        "default/client"
    )));
    // Nothing of the client is left attached, and no map entry of it remains.
    assert!(cgroup_programs(&client.cgroup).unwrap().is_empty());
    assert!(netns_programs(&client.netns_path).unwrap().is_empty());
    assert!(!agent.pin_root.join("v3/links/default_client").exists());
    assert_eq!(map_count(&agent, "MESHD_PODS"), 1);
    assert_eq!(map_count(&agent, "MESHD_POD_ADDRS"), 1);
    assert_eq!(map_count(&agent, "MESHD_LISTENERS"), 1);
    assert_eq!(map_count(&agent, "MESHD_ORIG_DST"), 0);
    assert_eq!(map_count(&agent, "MESHD_SOCK_DST"), 0);
    // The loop goes on: 20 more connections, none of them captured.
    let after = outbound(&agent);
    traffic.wait_more_ok(20, "after un-enrollment");
    assert_eq!(outbound(&agent), after, "no capture after un-enrollment");
    assert_eq!(sorted(cgroup_programs(&server.cgroup).unwrap()), PROGRAMS);

    // Enrolled again, then a bad edit: it would remove the client and add `extra`, whose
    // service account is invalid. Nothing of it is applied.
    agent.write_config(&both).unwrap();
    assert!(wait_until(Duration::from_secs(10), || enrolled(
        &agent,
        "default/client"
    )));
    let good = applied_state(&agent);
    let mut bad_extra = WorkloadSpec::new(&extra);
    bad_extra.service_account = "Not_Valid".into();
    let broken = config_yaml(&c, &n1, &[WorkloadSpec::new(&server), bad_extra], &[]);
    agent.write_config(&broken).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        agent.config_dump().unwrap()["configError"]
            .as_str()
            .is_some_and(|e| e.contains("Not_Valid") && e.contains("keeping the last good"))
    }));
    assert_eq!(applied_state(&agent), good, "the bad edit changed nothing");
    assert!(enrolled(&agent, "default/client"));
    assert!(cgroup_programs(&extra.cgroup).unwrap().is_empty());
    assert!(!agent.pin_root.join("v3/links/default_extra").exists());
    // The client is still captured: its loop's next connections go through the agent.
    let before = outbound(&agent);
    traffic.wait_more_ok(10, "after the bad edit");
    assert!(
        wait_until(Duration::from_secs(10), || outbound(&agent) >= before + 10),
        "the client is still captured after the bad edit"
    );
    assert!(
        agent.proc.stderr().contains("Not_Valid"),
        "the error is logged"
    );
    agent.write_config(&both).unwrap();
    assert!(wait_until(Duration::from_secs(10), || agent
        .config_dump()
        .unwrap()["configError"]
        == Value::Null));
    assert_eq!(applied_state(&agent), good);

    // The loop never saw a failure.
    let ok = traffic.ok();
    let summary = traffic.stop();
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(summary["ok"].as_u64().unwrap() >= ok as u64, "{summary}");

    // Stopped and uninstalled: no program, link or pin is left.
    assert!(agent.stop().unwrap().success());
    assert!(cgroup_programs(&server.cgroup).unwrap().is_empty());
    assert!(cgroup_programs(&client.cgroup).unwrap().is_empty());
    assert!(netns_programs(&server.netns_path).unwrap().is_empty());
    assert!(
        !agent.pin_root.exists(),
        "{} removed",
        agent.pin_root.display()
    );
}

fn pinned_prog_id(agent: &Agent, name: &str) -> u64 {
    let path = agent.pin_root.join("v3/progs").join(name);
    bpftool_json(&["prog", "show", "pinned", path.to_str().unwrap()]).unwrap()["id"]
        .as_u64()
        .unwrap()
}

fn attached_ids(cgroup: &std::path::Path) -> Vec<u64> {
    let v = bpftool_json(&["cgroup", "show", cgroup.to_str().unwrap()]).unwrap();
    // bpftool prints nothing when nothing is attached, which `bpftool_json` reads as `[]`;
    // anything but a list is bpftool saying something else.
    let progs = v
        .as_array()
        .unwrap_or_else(|| panic!("bpftool cgroup show {}: {v}", cgroup.display()));
    let mut ids: Vec<u64> = progs.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    ids.sort();
    ids
}

#[test]
fn restarted_agent_adopts_its_pins() {
    require_root().unwrap();
    let c = Cluster::new("restart").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let server = c.add_pod(&n1, "server").unwrap();
    let gone = c.add_pod(&n1, "gone").unwrap();
    let yaml = config_yaml(
        &c,
        &n1,
        &[
            WorkloadSpec::new(&client),
            WorkloadSpec::new(&server),
            WorkloadSpec::new(&gone),
        ],
        &[],
    );
    let agent = Agent::start(&c, &n1, &yaml).unwrap();
    let app = serve(&c, &server, 8080).unwrap();
    serve(&c, &server, 9090).unwrap();
    let dst = format!("{}:8080", server.ip);
    let echo_to = |dst: &str| {
        testapp_json(
            &c,
            &client,
            &["echo", "--greet", "--connect", dst, "--bytes", "100000"],
        )
        .unwrap()
    };
    assert_eq!(echo_to(&dst)["ok"], true);
    // A client loop runs through the crash and the restart.
    let traffic = ClientLoop::start(&c, &client, &dst);
    traffic.wait_more_ok(5, "before the crash");

    // Crash: the programs stay attached through their pinned links, so the client's
    // connections fail closed (refused by the agent's port, nobody listening) instead of
    // going around the agent.
    agent.crash().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || traffic.failures().len() >= 2),
        "the loop's connections fail while no agent runs:\n{}",
        traffic.proc.output_tail()
    );
    let r = echo_to(&dst);
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("Connection refused"),
        "{r}"
    );
    let old_ids = attached_ids(&client.cgroup);
    assert_eq!(old_ids.len(), 4);
    assert!(agent
        .pin_root
        .join("v3/links/default_client/connect4")
        .exists());

    // Restart with a config in which one workload is gone.
    let without_gone = config_yaml(
        &c,
        &n1,
        &[WorkloadSpec::new(&client), WorkloadSpec::new(&server)],
        &[],
    );
    std::fs::write(&agent.config_path, without_gone).unwrap();
    let agent2 = Agent::start_with(&c, &n1, agent.config_path.clone()).unwrap();
    let log = agent2.proc.stderr();
    assert!(
        log.contains("adopted pinned capture links") && log.contains("default/client"),
        "{log}"
    );
    // Each adopted link is still attached to its pod's cgroup or namespace: kept.
    assert!(
        !log.contains("an adopted link is not attached") && !log.contains("cannot be read"),
        "{log}"
    );
    // The adopted links now run the new agent's programs, and nothing else is attached.
    let mut expected: Vec<u64> = PROGRAMS
        .iter()
        .map(|p| pinned_prog_id(&agent2, p))
        .collect();
    expected.sort();
    assert_eq!(attached_ids(&client.cgroup), expected);
    assert_eq!(attached_ids(&server.cgroup), expected);
    assert!(
        attached_ids(&gone.cgroup).is_empty(),
        "links of a removed workload are dropped"
    );
    assert!(!agent2.pin_root.join("v3/links/default_gone").exists());
    assert_eq!(map_count(&agent2, "MESHD_PODS"), 2);
    // /config_dump names what is attached where: the adopted links run the new programs.
    let dump = agent2.config_dump().unwrap();
    let attached = &dump["capture"]["attached"];
    let connect4 = attached["programs"]["meshd_connect4"].as_u64().unwrap();
    let links = attached["links"]["default/client"].as_array().unwrap();
    assert_eq!(links.len(), 5, "{attached:#}");
    let c4 = links.iter().find(|l| l["hook"] == "connect4").unwrap();
    assert_eq!(c4["programId"].as_u64(), Some(connect4));
    assert!(attached["links"].get("default/gone").is_none());
    // The old agent's programs are unloaded: nothing references them any more.
    for id in old_ids {
        assert!(
            bpftool_json(&["prog", "show", "id", &id.to_string()]).is_err(),
            "program {id} still loaded"
        );
    }

    // Captured again after the restart: every connection of the loop that succeeded after
    // its first failure went through the new agent, none around it.
    traffic.wait_more_ok(10, "after the restart");
    let proc = traffic.proc.clone();
    let summary = traffic.stop();
    let rounds: Vec<(u64, bool)> = proc
        .stdout()
        .lines()
        .filter_map(|l| {
            let (n, rest) = l.strip_prefix("round ")?.split_once(' ')?;
            Some((n.parse().ok()?, rest == "ok"))
        })
        .collect();
    let failures: Vec<String> = proc
        .stdout()
        .lines()
        .filter(|l| l.starts_with("round ") && l.contains(" failed: "))
        .map(String::from)
        .collect();
    assert_eq!(summary["failed"].as_u64(), Some(failures.len() as u64));
    let first_failure = rounds.iter().find(|r| !r.1).unwrap().0;
    let ok_since = rounds
        .iter()
        .filter(|(n, ok)| *ok && *n > first_failure)
        .count() as u64;
    assert!(ok_since >= 10, "{summary}");
    let captured = || opened(&agent2, "outbound", "client");
    assert!(
        wait_until(Duration::from_secs(10), || captured() >= ok_since),
        "{} of {ok_since} connections since the crash captured",
        captured()
    );
    assert_eq!(captured(), ok_since, "no connection went around the agent");
    // Each failure is a refusal, but for at most one connection in flight at the crash.
    let refused = failures
        .iter()
        .filter(|f| f.contains("failed: connect: Connection refused"))
        .count();
    assert!(refused + 1 >= failures.len(), "{failures:#?}");
    assert!(
        direct_accepts(&app.stdout()).is_empty(),
        "the server never saw the client directly:\n{}",
        app.stdout()
    );

    let dst = format!("{}:9090", server.ip);
    assert_eq!(echo_to(&dst)["ok"], true);
    let closed = |direction: &str| agent2.closed_to(direction, &dst).unwrap().len();
    assert!(
        wait_until(Duration::from_secs(10), || closed("outbound") >= 1
            && closed("inbound") >= 1),
        "capture works after the restart"
    );
    assert_eq!(closed("outbound"), 1);
    assert_eq!(closed("inbound"), 1);

    assert!(agent2.stop().unwrap().success());
    assert!(attached_ids(&client.cgroup).is_empty());
    assert!(!agent2.pin_root.exists());
}

/// Issue 16, "fail closed": while the agent is down (SIGKILL: the pins stay), a plaintext
/// connection from another pod to an enrolled pod's captured port is refused by sk_lookup
/// (the address is in `MESHD_POD_ADDRS`, its listener gone from `MESHD_LISTENERS`) and the
/// app never sees it, while a skipped inbound port still reaches the app directly. After the
/// restart both work again, the captured one through the new agent.
#[test]
fn inbound_fails_closed_while_the_agent_is_down() {
    require_root().unwrap();
    let c = Cluster::new("failclosed").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let server = c.add_pod(&n1, "server").unwrap();
    let plain = c.add_pod(&n1, "plain").unwrap();
    let yaml = config_yaml(
        &c,
        &n1,
        &[WorkloadSpec::new(&server).skip_inbound(&[9091])],
        &[],
    );
    let agent = Agent::start(&c, &n1, &yaml).unwrap();
    let captured_app = serve(&c, &server, 8080).unwrap();
    let skipped_app = serve(&c, &server, 9091).unwrap();
    let (captured, skipped) = (format!("{}:8080", server.ip), format!("{}:9091", server.ip));
    // The apps' own account: who connected to them.
    let accepted = |app: &meshd_tests::ProcHandle| {
        app.stdout()
            .lines()
            .filter(|l| l.starts_with("accepted "))
            .count()
    };
    let from_plain = format!("peer={}:", plain.ip);

    echo_ok(&c, &plain, &captured, 4096);
    wait_closed(&agent, "inbound", &captured, 1);
    assert_eq!(map_count(&agent, "MESHD_POD_ADDRS"), 1);
    assert_eq!(accepted(&captured_app), 1);

    agent.crash().unwrap();
    for _ in 0..3 {
        let r = echo(&c, &plain, &captured, 4096);
        assert_eq!(r["ok"], false, "while the agent is down: {r}");
        assert!(
            r["error"]
                .as_str()
                .is_some_and(|e| e.contains("Connection refused")),
            "refused by the kernel: {r}"
        );
    }
    let r = echo_ok(&c, &plain, &skipped, 4096);
    assert!(
        app_saw_client_socket(&r),
        "the skipped port reaches the app directly: {r}"
    );
    assert_eq!(
        accepted(&captured_app),
        1,
        "the app saw nothing while the agent was down:\n{}",
        captured_app.stdout()
    );

    let agent2 = Agent::start_with(&c, &n1, agent.config_path.clone()).unwrap();
    assert!(wait_until(Duration::from_secs(10), || enrolled(
        &agent2,
        "default/server"
    )));
    let r = echo_ok(&c, &plain, &captured, 4096);
    assert!(
        r["greeting"].as_str().unwrap().contains(&from_plain) && !app_saw_client_socket(&r),
        "delivered by the agent (from the client's address), not directly: {r}"
    );
    wait_closed(&agent2, "inbound", &captured, 1);
    echo_ok(&c, &plain, &skipped, 4096);
    assert_eq!(accepted(&captured_app), 2);
    assert_eq!(accepted(&skipped_app), 2);
    assert!(agent2.stop().unwrap().success());
}

/// Runs `meshd run` on a bad file; it must fail fast (within 20 s: an accepted file would
/// run the agent, which is then killed and the test fails) and say what is wrong.
fn bad_config(c: &Cluster, name: &str, yaml: &str) -> String {
    let path = c.dir().join(name);
    std::fs::write(&path, yaml).unwrap();
    let mut child = Command::new(meshd_bin())
        .args(["run", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        exited,
        "{name} was accepted: the agent ran for 20 s:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{name} must be refused");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains(path.to_str().unwrap()),
        "names the file: {err}"
    );
    err
}

#[test]
fn bad_config_files_give_clear_errors() {
    require_root().unwrap();
    let c = Cluster::new("badcfg").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let b = c.add_pod(&n1, "b").unwrap();
    let good = config_yaml(
        &c,
        &n1,
        &[WorkloadSpec::new(&a), WorkloadSpec::new(&b)],
        &[],
    );

    let e = bad_config(
        &c,
        "missing.yaml",
        &good.replace("    serviceAccount: a\n", ""),
    );
    assert!(
        e.contains("missing field `serviceAccount`") && e.contains("workloads[0]"),
        "{e}"
    );
    let e = bad_config(
        &c,
        "netns.yaml",
        &good.replace(a.netns_path.to_str().unwrap(), "/run/netns/no-such-pod"),
    );
    assert!(
        e.contains("netns /run/netns/no-such-pod: does not exist"),
        "{e}"
    );
    let e = bad_config(
        &c,
        "dupip.yaml",
        &good.replace(&format!("ips: [{}]", b.ip), &format!("ips: [{}]", a.ip)),
    );
    assert!(
        e.contains(&format!(
            "address {} is also used by workload default/a",
            a.ip
        )),
        "{e}"
    );
    let e = bad_config(
        &c,
        "cgroup.yaml",
        &good.replace(a.cgroup.to_str().unwrap(), "/tmp"),
    );
    assert!(e.contains("is not a cgroup v2 directory"), "{e}");
    let e = bad_config(
        &c,
        "typo.yaml",
        &good.replace("node: n1", "node: n1\nworkload: []"),
    );
    assert!(e.contains("unknown field `workload`"), "{e}");
    let e = bad_config(&c, "yaml.yaml", "node: [\n");
    let path = c.dir().join("yaml.yaml");
    assert_eq!(
        e.trim_end(),
        format!(
            "Error: config file {}: at node: expected string scalar (line 1 column 7)",
            path.display()
        ),
    );
    // Nothing was pinned or attached by the refused runs.
    assert!(cgroup_programs(&a.cgroup).unwrap().is_empty());
    assert!(!c.pin_root(&n1).exists());
}

#[test]
fn check_reports_every_feature_and_cleans_up() {
    require_root().unwrap();
    let out = Command::new(meshd_bin()).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        "√ privileges",
        "√ kernel version",
        "√ BTF",
        "√ bpffs",
        "√ cgroup v2",
        "√ meshd_connect4 (connect4): loads and attaches to a cgroup",
        "√ meshd_connect6 (connect6)",
        "√ meshd_sockops (sockops)",
        "√ meshd_sk_lookup (sk_lookup): loads and attaches to a network namespace",
        "√ meshd_release (sock_release): loads and attaches to a cgroup",
        "Status check results are √",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    // The probes leave nothing: no scratch pins, cgroups or programs.
    assert!(!std::fs::read_dir("/sys/fs/bpf")
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("meshd-check")));
    let cg = meshd_tests::cgroup2_mount().unwrap();
    assert!(!std::fs::read_dir(cg)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("meshd-check")));

    // Without privileges it fails and names the fix (run as an unprivileged user).
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(meshd_bin())
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("× privileges") && text.contains("fix: run as root"),
        "{text}"
    );
}

#[test]
fn check_with_config_reports_the_identity_files() {
    require_root().unwrap();
    let c = Cluster::new("checkid").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let ca = meshd_tests::mesh::identity_init(&c, "ca").unwrap();
    let yaml = meshd_tests::mesh::with_identity(
        &config_yaml(&c, &n1, &[], &[]),
        &ca.join("ca.crt"),
        &ca,
        3600,
    );
    let path = c.dir().join("check.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = Command::new(meshd_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("√ trust anchor: CN=root.cluster.local valid for 36"),
        "{text}"
    );
    assert!(
        text.contains("√ issuer: CN=identity.linkerd.cluster.local valid for 36"),
        "{text}"
    );

    // The issuer key replaced by the anchor's: refused, naming the file.
    std::fs::copy(ca.join("ca.key"), ca.join("issuer.key")).unwrap();
    let out = Command::new(meshd_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("× identity") && text.contains("issuer.key"),
        "{text}"
    );
}

#[test]
fn uninstall_removes_what_a_crashed_agent_left() {
    require_root().unwrap();
    let c = Cluster::new("uninstall").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let agent = Agent::start(
        &c,
        &n1,
        &config_yaml(&c, &n1, &[WorkloadSpec::new(&a)], &[]),
    )
    .unwrap();
    agent.crash().unwrap();
    assert_eq!(
        attached_ids(&a.cgroup).len(),
        PROGRAMS.len(),
        "the crash left the programs attached"
    );
    assert_eq!(netns_programs(&a.netns_path).unwrap(), ["meshd_sk_lookup"]);
    // Under another pin version (an upgrade whose new agent never ran) it goes all the same.
    std::fs::rename(agent.pin_root.join("v3"), agent.pin_root.join("v2")).unwrap();
    let out = Command::new(meshd_bin())
        .args(["uninstall", "--bpffs"])
        .arg(&agent.pin_root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("/v2"), "{said}");
    assert!(attached_ids(&a.cgroup).is_empty());
    assert!(netns_programs(&a.netns_path).unwrap().is_empty());
    assert!(!agent.pin_root.exists());
    // A second uninstall has nothing to do and says so without failing.
    let out = Command::new(meshd_bin())
        .args(["uninstall", "--bpffs"])
        .arg(&agent.pin_root)
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// A pod deleted and recreated under the same name while no agent ran (a StatefulSet pod):
/// its new cgroup has nothing attached, and the links pinned for it are attached to the
/// old one, which is gone (the kernel reports them severed). The restarted agent starts
/// (it used to refuse to: `adopting link ...: Link has been severed`, so that every pod of
/// the node stayed without an agent), drops those links and attaches new ones to the pod's
/// cgroup as it is now: the pod's connections are captured again.
#[test]
fn a_pod_recreated_while_no_agent_ran_is_captured_again() {
    require_root().unwrap();
    let c = Cluster::new("recreated").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let b = c.add_pod(&n1, "b").unwrap();
    let yaml = config_yaml(
        &c,
        &n1,
        &[WorkloadSpec::new(&a), WorkloadSpec::new(&b)],
        &[],
    );
    let agent = Agent::start(&c, &n1, &yaml).unwrap();
    serve(&c, &b, 8080).unwrap();
    let dst = format!("{}:8080", b.ip);
    agent.crash().unwrap();
    // The pod's cgroup is deleted and made again (it has no process here).
    std::fs::remove_dir(&a.cgroup).unwrap();
    std::fs::create_dir(&a.cgroup).unwrap();
    assert!(attached_ids(&a.cgroup).is_empty());

    let agent2 = Agent::start_with(&c, &n1, agent.config_path.clone()).unwrap();
    let log = agent2.proc.stderr();
    assert!(
        log.contains("dropping an adopted link whose cgroup is gone"),
        "{log}"
    );
    assert!(enrolled(&agent2, "default/a"), "{log}");
    assert_eq!(sorted(cgroup_programs(&a.cgroup).unwrap()), PROGRAMS);
    echo_ok(&c, &a, &dst, 10_000);
    assert!(
        wait_until(Duration::from_secs(10), || opened(&agent2, "outbound", "a")
            == 1),
        "the recreated pod's connection is captured"
    );
    assert!(agent2.stop().unwrap().success());
}

/// The ids of the programs attached to a pod: its cgroup's and its namespace's.
fn pod_program_ids(pod: &Pod) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(&pod.netns_path).unwrap().ino();
    let links = bpftool_json(&["link", "show"]).unwrap();
    let mut ids = attached_ids(&pod.cgroup);
    ids.extend(
        links
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["type"] == "netns" && l["netns_ino"].as_u64() == Some(ino))
            .map(|l| l["prog_id"].as_u64().unwrap()),
    );
    ids.sort();
    ids
}

/// An upgrade: the agent being replaced pinned its capture under an older pin version
/// (`<root>/v2/`), which this agent does not adopt. Left attached, the older sk_lookup
/// would refuse every connection to an enrolled pod (its listener map is empty) and the
/// older connect4 would redirect with original destinations this agent cannot read. The
/// older tree here is this agent's own, crashed and renamed `v2/`: links attached to the
/// pods and pinned under `v2/links/<namespace>_<pod>/`, programs and maps under `v2/`.
/// Once the new agent has captured the pods, the older links are detached (those of a
/// workload no longer in the config too), the older pins are gone, and traffic flows,
/// inbound included, through the new agent only.
#[test]
fn upgraded_agent_removes_the_capture_of_an_older_pin_version() {
    require_root().unwrap();
    let c = Cluster::new("upgrade").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let server = c.add_pod(&n1, "server").unwrap();
    let gone = c.add_pod(&n1, "gone").unwrap();
    let all = [
        WorkloadSpec::new(&client),
        WorkloadSpec::new(&server),
        WorkloadSpec::new(&gone),
    ];
    let old = Agent::start(&c, &n1, &config_yaml(&c, &n1, &all, &[])).unwrap();
    let app = serve(&c, &server, 8080).unwrap();
    let dst = format!("{}:8080", server.ip);
    echo_ok(&c, &client, &dst, 10_000);
    old.crash().unwrap();
    let v2 = old.pin_root.join("v2");
    std::fs::rename(old.pin_root.join("v3"), &v2).unwrap();
    assert!(v2.join("links/default_client/sk_lookup").exists());
    let older: Vec<(Pod, Vec<u64>)> = [&client, &server, &gone]
        .into_iter()
        .map(|p| (p.clone(), pod_program_ids(p)))
        .collect();
    for (pod, ids) in &older {
        assert_eq!(ids.len(), PROGRAMS.len() + 1, "{}: {ids:?}", pod.name);
    }

    let agent = Agent::start(
        &c,
        &n1,
        &config_yaml(
            &c,
            &n1,
            &[WorkloadSpec::new(&client), WorkloadSpec::new(&server)],
            &[],
        ),
    )
    .unwrap();
    // Traffic flows through the new agent, outbound and inbound (with the older
    // capture attached too, the older sk_lookup would refuse it).
    let accepted_before = accepted(&app);
    echo_ok(&c, &client, &dst, 10_000);
    let closed = |direction: &str| agent.closed_to(direction, &dst).unwrap().len();
    assert!(
        wait_until(Duration::from_secs(10), || closed("outbound") == 1
            && closed("inbound") == 1),
        "the connection went through the new agent"
    );
    assert_eq!(accepted(&app), accepted_before + 1);
    assert!(direct_accepts(&app.stdout()).is_empty(), "{}", app.stdout());
    let log = agent.proc.stderr();
    assert!(
        log.contains("found the capture of an agent of another pin version")
            && log.contains("removed the capture of pin version 2"),
        "{log}"
    );
    // Nothing of the older version is left: no pin, no link, no program.
    assert!(!v2.exists(), "the v2 tree is removed");
    for (pod, ids) in &older {
        let now = pod_program_ids(pod);
        for id in ids {
            assert!(
                !now.contains(id),
                "{}: older program {id} still attached",
                pod.name
            );
            assert!(
                bpftool_json(&["prog", "show", "id", &id.to_string()]).is_err(),
                "older program {id} still loaded"
            );
        }
    }
    // Only the new agent's capture: its programs on the enrolled pods, none on the other.
    assert_eq!(sorted(cgroup_programs(&client.cgroup).unwrap()), PROGRAMS);
    assert_eq!(sorted(cgroup_programs(&server.cgroup).unwrap()), PROGRAMS);
    assert_eq!(
        netns_programs(&server.netns_path).unwrap(),
        ["meshd_sk_lookup"]
    );
    assert!(pod_program_ids(&gone).is_empty());

    assert!(agent.stop().unwrap().success());
    assert!(!agent.pin_root.exists());
}

/// `meshd check --config` on a config whose identity files are broken in other ways than a
/// swapped key: each case fails the check with one `× identity` (or `× config`) line that
/// names the file at fault, and a good config passes with the anchor's and issuer's validity.
#[test]
fn check_with_config_names_the_broken_identity_file() {
    require_root().unwrap();
    let c = Cluster::new("checkbad").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let ca = meshd_tests::mesh::identity_init(&c, "ca").unwrap();
    let other = meshd_tests::mesh::identity_init(&c, "other").unwrap();
    let check = |anchors: &std::path::Path, issuer_dir: &std::path::Path| {
        let yaml = meshd_tests::mesh::with_identity(
            &config_yaml(&c, &n1, &[], &[]),
            anchors,
            issuer_dir,
            600,
        );
        let path = c.dir().join("check.yaml");
        std::fs::write(&path, yaml).unwrap();
        let out = Command::new(meshd_bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // The check fails, and its one failed identity (or config) line names every file given.
    let fails_naming =
        |anchors: &std::path::Path, issuer_dir: &std::path::Path, files: &[&std::path::Path]| {
            let (ok, text) = check(anchors, issuer_dir);
            let line = text
                .lines()
                .find(|l| l.starts_with("× identity") || l.starts_with("× config"))
                .unwrap_or_else(|| panic!("no failed identity or config line in:\n{text}"));
            assert!(!ok, "{text}");
            for f in files {
                assert!(line.contains(&f.display().to_string()), "{line}");
            }
        };

    let (ok, text) = check(&ca.join("ca.crt"), &ca);
    assert!(ok, "{text}");
    assert!(
        text.contains("√ trust anchor: CN=root.cluster.local valid for 36")
            && text.contains("more days"),
        "{text}"
    );
    assert!(
        text.contains("√ issuer: CN=identity.linkerd.cluster.local valid for 36")
            && text.contains("workload certificates live 600s"),
        "{text}"
    );

    // An issuer signed by another trust anchor: names the issuer and the anchors.
    fails_naming(
        &ca.join("ca.crt"),
        &other,
        &[&other.join("issuer.crt"), &ca.join("ca.crt")],
    );

    // A garbage issuer key.
    let broken = c.dir().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(ca.join("issuer.crt"), broken.join("issuer.crt")).unwrap();
    std::fs::write(broken.join("issuer.key"), "not a key\n").unwrap();
    fails_naming(&ca.join("ca.crt"), &broken, &[&broken.join("issuer.key")]);

    // A garbage issuer certificate (with the right key).
    std::fs::copy(ca.join("issuer.key"), broken.join("issuer.key")).unwrap();
    std::fs::write(broken.join("issuer.crt"), "not a certificate\n").unwrap();
    fails_naming(&ca.join("ca.crt"), &broken, &[&broken.join("issuer.crt")]);

    // A trust anchor file that does not exist.
    let missing = c.dir().join("missing.crt");
    fails_naming(&missing, &ca, &[&missing]);
}

/// The names of the programs attached to `pod`'s cgroup, and to its network namespace, are
/// meshd's: the pod is captured.
fn captured(pod: &Pod) -> bool {
    sorted(cgroup_programs(&pod.cgroup).unwrap()) == PROGRAMS
        && netns_programs(&pod.netns_path).unwrap() == ["meshd_sk_lookup"]
}

/// The lines of a `meshd-testapp serve` that record an accepted connection.
fn accepted(app: &meshd_tests::ProcHandle) -> usize {
    app.stdout()
        .lines()
        .filter(|l| l.starts_with("accepted peer="))
        .count()
}

/// A stopped agent (SIGTERM) leaves the capture in place, as a rolling update needs: the
/// programs stay attached through their pinned links, the programs and maps stay pinned,
/// and an enrolled pod's new connection is refused (redirected to the agent's closed port)
/// rather than sent around the mesh in plaintext. The next agent adopts the capture and
/// serves; `meshd uninstall` then removes everything.
#[test]
fn sigterm_leaves_the_capture_for_the_next_agent() {
    require_root().unwrap();
    let c = Cluster::new("keepcap").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let server = c.add_pod(&n1, "server").unwrap();
    let yaml = config_yaml(
        &c,
        &n1,
        &[WorkloadSpec::new(&client), WorkloadSpec::new(&server)],
        &[],
    );
    let agent = Agent::start(&c, &n1, &yaml).unwrap();
    let app = serve(&c, &server, 8080).unwrap();
    let dst = format!("{}:8080", server.ip);
    let echo = || {
        testapp_json(
            &c,
            &client,
            &[
                "echo",
                "--greet",
                "--connect",
                &dst,
                "--bytes",
                "1000",
                "--timeout-secs",
                "5",
            ],
        )
        .unwrap()
    };
    assert_eq!(echo()["ok"], true);
    assert_eq!(accepted(&app), 1);

    agent.terminate().unwrap();
    assert!(
        agent
            .proc
            .stderr()
            .contains("shutting down: the capture stays in place for the next agent"),
        "{}",
        agent.proc.output_tail()
    );
    let pins = agent.pin_root.join("v3");
    for pod in [&client, &server] {
        assert!(captured(pod), "{} still captured", pod.name);
        for hook in [
            "connect4",
            "connect6",
            "sockops",
            "sk_lookup",
            "sock_release",
        ] {
            let link = pins.join(format!("links/default_{}/{hook}", pod.name));
            assert!(link.exists(), "{} kept", link.display());
        }
    }
    for pin in [
        "progs/meshd_connect4",
        "progs/meshd_release",
        "maps/MESHD_PODS",
    ] {
        assert!(pins.join(pin).exists(), "{pin} kept");
    }
    // No agent: the client's connection is refused, and nothing reaches the server.
    let r = echo();
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("Connection refused"),
        "{r}"
    );
    assert_eq!(accepted(&app), 1, "{}", app.stdout());

    // The next agent adopts the links and serves at once.
    let agent2 = Agent::start_with(&c, &n1, agent.config_path.clone()).unwrap();
    let log = agent2.proc.stderr();
    assert!(
        log.contains("adopted pinned capture links") && log.contains("default/client"),
        "{log}"
    );
    assert_eq!(echo()["ok"], true);
    assert!(wait_until(Duration::from_secs(10), || {
        agent2.closed_to("outbound", &dst).unwrap().len() == 1
            && agent2.closed_to("inbound", &dst).unwrap().len() == 1
    }));
    assert_eq!(accepted(&app), 2);
    assert!(
        direct_accepts(&app.stdout()).is_empty(),
        "the server never saw the client directly:\n{}",
        app.stdout()
    );

    // Stopped again, the capture stays; `meshd uninstall` removes all of it.
    agent2.terminate().unwrap();
    assert!(captured(&client) && captured(&server));
    agent2.uninstall().unwrap();
    for pod in [&client, &server] {
        assert!(cgroup_programs(&pod.cgroup).unwrap().is_empty());
        assert!(netns_programs(&pod.netns_path).unwrap().is_empty());
    }
    assert!(!agent2.pin_root.exists(), "{} removed", pins.display());
}

/// A client that connects to `host:port` every 10 ms until the file `stop` exists: reads
/// the greeting, echoes a line, and prints one JSON line per round with its start and end
/// (Unix time, seconds) and whether it succeeded.
const TIMED_LOOP: &str = r#"
import json, os, socket, sys, time
host, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
i = 0
while not os.path.exists(stop):
    start = time.time()
    try:
        # Both closed at the end of the round (a socket with a file open on it is not).
        with socket.create_connection((host, port), timeout=3) as s, s.makefile("rb") as f:
            if not f.readline().startswith(b"hello"):
                raise OSError("no greeting")
            s.sendall(b"round %d\n" % i)
            if f.readline().strip() != b"round %d" % i:
                raise OSError("no echo")
        r = {"ok": True}
    except OSError as e:
        r = {"ok": False, "error": str(e)}
    r.update({"i": i, "start": start, "end": time.time()})
    print(json.dumps(r), flush=True)
    i += 1
    time.sleep(0.01)
"#;

/// One round of [`TIMED_LOOP`].
#[derive(Debug)]
struct Round {
    ok: bool,
    error: String,
    start: f64,
    end: f64,
}

fn rounds(loop_proc: &meshd_tests::ProcHandle) -> Vec<Round> {
    loop_proc
        .stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| Round {
            ok: v["ok"] == true,
            error: v["error"].as_str().unwrap_or_default().to_string(),
            start: v["start"].as_f64().unwrap(),
            end: v["end"].as_f64().unwrap(),
        })
        .collect()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `tcp_open_total` of the agent for `direction` and `pod` over the label sets that
/// contain `label` (e.g. the peer's identity).
fn opened_with(agent: &Agent, direction: &str, pod: &str, label: &str) -> u64 {
    let (status, text) = agent.get("/metrics").unwrap();
    assert_eq!(status, 200, "{text}");
    let dir = format!("direction=\"{direction}\"");
    let who = format!("namespace=\"default\",pod=\"{pod}\"");
    text.lines()
        .filter(|l| {
            l.starts_with("tcp_open_total{")
                && l.contains(&dir)
                && l.contains(&who)
                && l.contains(label)
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

/// The restart gap of a rolling update, measured. Node 1's agent is stopped (SIGTERM) and
/// a new one started while two clients loop through it with mutual TLS: `a` (node 1) to
/// `b` (node 2), outbound through the restarted agent, and `b` to `s` (node 1), inbound
/// through it (HBONE). During the gap the connections are refused; every connection a
/// server accepted came through both agents over HBONE (none went around the mesh); a
/// plaintext client outside the mesh is refused too (fail closed), never delivered to the
/// app directly; traffic flows again soon after the new agent starts. Prints the figures (docs/benchmarks.md).
#[test]
fn restart_gap_refuses_then_flows_again() {
    require_root().unwrap();
    let (t, agent1, agent2) = meshd_tests::two_nodes::two_nodes("restartgap", &["s"]);
    let c = &t.c;
    let s = &t.more[0];
    let app_b = serve(c, &t.b, 8080).unwrap();
    let app_s = serve(c, s, 8080).unwrap();
    // A third loop in plaintext from a pod outside the mesh (node 2) to another port of `s`
    // (9090, opaque like 8080: the server speaks first):
    // while no agent runs on node 1, sk_lookup refuses it (fail closed), never delivering
    // it to the app directly.
    let outsider = c.add_pod(&t.n2, "outsider").unwrap();
    let app_s_plain = serve(c, s, 9090).unwrap();
    let stop = c.dir().join("stop-loops");
    let start_loop = |from: &Pod, to: &Pod, port: &str| {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", TIMED_LOOP, &to.ip.to_string(), port])
            .arg(&stop);
        c.spawn_in_pod(from, cmd).unwrap()
    };
    let out = start_loop(&t.a, &t.b, "8080");
    let inb = start_loop(&t.b, s, "8080");
    let plain = start_loop(&outsider, s, "9090");
    let oks = |p: &meshd_tests::ProcHandle| rounds(p).iter().filter(|r| r.ok).count();
    let fails = |p: &meshd_tests::ProcHandle| rounds(p).iter().filter(|r| !r.ok).count();
    assert!(
        wait_until(Duration::from_secs(30), || oks(&out) >= 20
            && oks(&inb) >= 20
            && oks(&plain) >= 20),
        "{}{}",
        out.output_tail(),
        inb.output_tail()
    );

    let stopped_at = unix_now();
    agent1.terminate().unwrap();
    let exited_at = unix_now();
    // No agent on node 1: both loops fail (refused) while its capture stays.
    assert!(
        wait_until(Duration::from_secs(30), || fails(&out) >= 5
            && fails(&inb) >= 5
            && fails(&plain) >= 5),
        "{}{}",
        out.output_tail(),
        inb.output_tail()
    );
    assert!(captured(&t.a) && captured(s));
    let spawned_at = unix_now();
    let agent1 = Agent::start_with(c, &t.n1, agent1.config_path.clone()).unwrap();
    let ready_at = unix_now();
    let oks_since = |p: &meshd_tests::ProcHandle| {
        rounds(p)
            .iter()
            .filter(|r| r.ok && r.start > spawned_at)
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || oks_since(&out) >= 20
            && oks_since(&inb) >= 20
            && oks_since(&plain) >= 20),
        "traffic flows again after the restart:{}{}",
        out.output_tail(),
        inb.output_tail()
    );
    std::fs::write(&stop, "").unwrap();
    out.wait(Duration::from_secs(20)).unwrap();
    inb.wait(Duration::from_secs(20)).unwrap();
    plain.wait(Duration::from_secs(20)).unwrap();
    // The plaintext client was never delivered to the app around the agent: every
    // connection the app accepted is the agent's delivery (its socket carries the mark).
    assert!(
        accepted(&app_s_plain) >= 40 && direct_accepts(&app_s_plain.stdout()).is_empty(),
        "{}",
        app_s_plain.stdout()
    );
    // The connections refused during the gap left no original destination behind (sockops
    // forgets a redirected socket's destination when it closes without being established).
    assert!(
        wait_until(Duration::from_secs(10), || map_count(
            &agent1,
            "MESHD_SOCK_DST"
        ) == 0
            && map_count(&agent1, "MESHD_ORIG_DST") == 0),
        "SOCK_DST {}, ORIG_DST {}",
        map_count(&agent1, "MESHD_SOCK_DST"),
        map_count(&agent1, "MESHD_ORIG_DST")
    );

    // Every connection a server accepted came through both agents, with mutual TLS.
    let from_a = "client_id=\"spiffe://cluster.local/ns/default/sa/a\"";
    let to_s = "server_id=\"spiffe://cluster.local/ns/default/sa/s\"";
    assert!(
        wait_until(Duration::from_secs(10), || {
            accepted(&app_b) as u64 == opened_with(&agent2, "inbound", "b", from_a)
        }),
        "b accepted {} connections, node 2's agent delivered {} from a over HBONE",
        accepted(&app_b),
        opened_with(&agent2, "inbound", "b", from_a)
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            accepted(&app_s) as u64 == opened_with(&agent2, "outbound", "b", to_s)
        }),
        "s accepted {} connections, node 2's agent tunnelled {} from b to s",
        accepted(&app_s),
        opened_with(&agent2, "outbound", "b", to_s)
    );

    let report = |name: &str, p: &meshd_tests::ProcHandle| {
        let rs = rounds(p);
        let first_failure = rs.iter().position(|r| !r.ok).unwrap();
        let last_ok_before = rs[..first_failure]
            .iter()
            .rev()
            .find(|r| r.ok)
            .map(|r| r.end)
            .unwrap();
        let first_ok_after = rs
            .iter()
            .find(|r| r.ok && r.start > spawned_at)
            .map(|r| r.end)
            .unwrap();
        let failed: Vec<&Round> = rs.iter().filter(|r| !r.ok).collect();
        let refused = failed
            .iter()
            .filter(|r| r.error.contains("Connection refused") || r.error.contains("reset"))
            .count();
        println!(
            "restart gap, {name}: {} connections failed ({refused} refused or reset), \
             no success for {:.0} ms (the old agent exited {:.0} ms after SIGTERM); first \
             success {:.0} ms after the new agent was spawned (ready after {:.0} ms)",
            failed.len(),
            (first_ok_after - last_ok_before) * 1000.0,
            (exited_at - stopped_at) * 1000.0,
            (first_ok_after - spawned_at) * 1000.0,
            (ready_at - spawned_at) * 1000.0,
        );
        // Each failure is a refusal or a reset, never a timeout (nothing hangs).
        assert_eq!(refused, failed.len(), "{failed:#?}");
        first_ok_after - spawned_at
    };
    let out_gap = report("outbound a -> b", &out);
    let in_gap = report("inbound b -> s", &inb);
    let plain_gap = report("inbound plaintext outsider -> s", &plain);
    assert!(
        out_gap < 5.0 && in_gap < 5.0 && plain_gap < 5.0,
        "traffic flows within 5 s of the new agent's start"
    );
}
