//! The agent's life cycle: hot reload of the config file while traffic runs, restart with
//! live pins, clean shutdown, bad config files, and the pre-flight check.

use std::{process::Command, time::Duration};

use meshd_tests::{
    mesh::{
        bpftool_json, cgroup_programs, config_yaml, meshd_bin, netns_programs, serve, testapp_bin,
        testapp_json, Agent, WorkloadSpec,
    },
    require_root, wait_until, Cluster,
};
use serde_json::Value;

const PROGRAMS: [&str; 3] = ["meshd_connect4", "meshd_connect6", "meshd_sockops"];

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn map_count(agent: &Agent, map: &str) -> u64 {
    agent.config_dump().unwrap()["capture"]["maps"][map]
        .as_u64()
        .unwrap()
}

fn enrolled(agent: &Agent, key: &str) -> bool {
    let dump = agent.config_dump().unwrap();
    dump["capture"]["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["workload"] == key && w["enrolled"] == true)
}

#[test]
fn hot_reload_enrolls_and_unenrolls_while_traffic_runs() {
    require_root().unwrap();
    let c = Cluster::new("reload").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let server = c.add_pod(&n1, "server").unwrap();
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

    // Traffic from the client for the whole test; not one connection may fail.
    let mut lp = Command::new(testapp_bin());
    lp.args([
        "connect-loop",
        "--greet",
        "--connect",
        &format!("{}:8080", server.ip),
    ])
    .args(["--interval-ms", "20", "--duration-secs", "8"]);
    let traffic = c.spawn_in_pod(&client, lp).unwrap();

    std::thread::sleep(Duration::from_millis(1500));
    agent.write_config(&both).unwrap();
    assert!(wait_until(Duration::from_secs(5), || enrolled(
        &agent,
        "default/client"
    )));
    assert_eq!(sorted(cgroup_programs(&client.cgroup).unwrap()), PROGRAMS);
    assert_eq!(
        netns_programs(&client.netns_path).unwrap(),
        ["meshd_sk_lookup"]
    );
    let outbound = |a: &Agent| {
        a.connections()
            .unwrap()
            .iter()
            .filter(|r| r["direction"] == "outbound" && r["workload"] == "default/client")
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(5), || outbound(&agent) >= 5),
        "client traffic is captured after enrollment"
    );

    std::thread::sleep(Duration::from_millis(1500));
    agent.write_config(&only_server).unwrap();
    assert!(wait_until(Duration::from_secs(5), || !enrolled(
        &agent,
        "default/client"
    )));
    // Nothing of the client is left attached, and no map entry of it remains.
    assert!(cgroup_programs(&client.cgroup).unwrap().is_empty());
    assert!(netns_programs(&client.netns_path).unwrap().is_empty());
    assert!(!agent.pin_root.join("v1/links/default_client").exists());
    assert_eq!(map_count(&agent, "MESHD_PODS"), 1);
    assert_eq!(map_count(&agent, "MESHD_LISTENERS"), 1);
    assert_eq!(map_count(&agent, "MESHD_ORIG_DST"), 0);
    assert_eq!(map_count(&agent, "MESHD_SOCK_DST"), 0);
    let after = outbound(&agent);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(outbound(&agent), after, "no capture after un-enrollment");

    // The server stays enrolled throughout, and the loop never saw a failure.
    traffic.wait(Duration::from_secs(20)).unwrap();
    let summary: Value = serde_json::from_str(traffic.stdout().lines().last().unwrap()).unwrap();
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(summary["ok"].as_u64().unwrap() > 100, "{summary}");
    assert_eq!(sorted(cgroup_programs(&server.cgroup).unwrap()), PROGRAMS);

    // A bad edit is reported and the last good state keeps serving.
    let broken = both.replace("serviceAccount: client", "serviceAccount: Not_Valid");
    agent.write_config(&broken).unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        agent.config_dump().unwrap()["configError"]
            .as_str()
            .is_some_and(|e| e.contains("Not_Valid"))
    }));
    assert!(!enrolled(&agent, "default/client"));
    let r = testapp_json(
        &c,
        &client,
        &[
            "echo",
            "--greet",
            "--connect",
            &format!("{}:8080", server.ip),
            "--bytes",
            "1000",
        ],
    )
    .unwrap();
    assert_eq!(r["ok"], true);
    assert!(
        agent.proc.stderr().contains("Not_Valid"),
        "the error is logged"
    );
    agent.write_config(&both).unwrap();
    assert!(wait_until(Duration::from_secs(5), || enrolled(
        &agent,
        "default/client"
    )));
    assert_eq!(agent.config_dump().unwrap()["configError"], Value::Null);

    // A clean shutdown removes every program, link and pin.
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
    let path = agent.pin_root.join("v1/progs").join(name);
    bpftool_json(&["prog", "show", "pinned", path.to_str().unwrap()]).unwrap()["id"]
        .as_u64()
        .unwrap()
}

fn attached_ids(cgroup: &std::path::Path) -> Vec<u64> {
    let v = bpftool_json(&["cgroup", "show", cgroup.to_str().unwrap()]).unwrap();
    // bpftool prints nothing at all when nothing is attached.
    let progs = v.as_array().cloned().unwrap_or_default();
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
    serve(&c, &server, 8080).unwrap();
    let dst = format!("{}:8080", server.ip);
    let echo = || {
        testapp_json(
            &c,
            &client,
            &["echo", "--greet", "--connect", &dst, "--bytes", "100000"],
        )
        .unwrap()
    };
    assert_eq!(echo()["ok"], true);

    // Crash: the programs stay attached through their pinned links.
    agent.crash().unwrap();
    let old_ids = attached_ids(&client.cgroup);
    assert_eq!(old_ids.len(), 3);
    assert!(agent
        .pin_root
        .join("v1/links/default_client/connect4")
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
    assert!(!agent2.pin_root.join("v1/links/default_gone").exists());
    assert_eq!(map_count(&agent2, "MESHD_PODS"), 2);
    // /config_dump names what is attached where: the adopted links run the new programs.
    let dump = agent2.config_dump().unwrap();
    let attached = &dump["capture"]["attached"];
    let connect4 = attached["programs"]["meshd_connect4"].as_u64().unwrap();
    let links = attached["links"]["default/client"].as_array().unwrap();
    assert_eq!(links.len(), 4, "{attached:#}");
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

    assert_eq!(echo()["ok"], true);
    assert_eq!(
        agent2.closed_to("outbound", &dst).unwrap().len(),
        1,
        "capture works after the restart"
    );
    assert_eq!(agent2.closed_to("inbound", &dst).unwrap().len(), 1);

    assert!(agent2.stop().unwrap().success());
    assert!(attached_ids(&client.cgroup).is_empty());
    assert!(!agent2.pin_root.exists());
}

/// Runs `meshd run` on a bad file; it must fail fast and say what is wrong.
fn bad_config(c: &Cluster, name: &str, yaml: &str) -> String {
    let path = c.dir().join(name);
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(meshd_bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
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
    assert!(e.contains("config file"), "{e}");
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
        3,
        "the crash left the programs attached"
    );
    assert_eq!(netns_programs(&a.netns_path).unwrap(), ["meshd_sk_lookup"]);
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
