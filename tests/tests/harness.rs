//! Tests of the harness itself (no agent): topology, placement, cleanup. Run as root.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use meshd_tests::mesh::Agent;
use meshd_tests::traffic::spawn_listening;
use meshd_tests::{
    cgroup2_mount, cleanup_stale, http_get, http_get_timeout, leftovers, netns_inode, require_root,
    wait_until, Cluster, Node, ProcHandle,
};

fn testapp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshd-testapp"))
}

fn json(out: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(out);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

#[test]
fn direct_routing_between_nodes_preserves_source_ip() {
    require_root().unwrap();
    let c = Cluster::new("direct_routing").unwrap();
    let n1 = c.add_node("node1").unwrap();
    let n2 = c.add_node("node2").unwrap();
    assert_eq!(n1.ip.to_string(), "10.240.0.1");
    assert_eq!(n2.ip.to_string(), "10.240.0.2");
    let a = c.add_pod(&n1, "pod-a").unwrap();
    let b = c.add_pod(&n2, "pod-b").unwrap();
    assert_eq!(a.ip.to_string(), "10.244.1.2");
    assert_eq!(b.ip.to_string(), "10.244.2.2");

    let mut serve = testapp();
    serve.args(["serve", "--listen", "0.0.0.0:8080", "--greet"]);
    let server = c.spawn_in_pod(&a, serve).unwrap();
    server
        .wait_for_output("listening on", Duration::from_secs(10))
        .unwrap();

    let mut echo = testapp();
    echo.args([
        "echo",
        "--connect",
        "10.244.1.2:8080",
        "--bytes",
        "1048576",
        "--greet",
    ]);
    let out = c.run_in_pod(&b, echo).unwrap();
    assert!(out.status.success(), "echo failed: {out:?}");
    let v = json(&out.stdout);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["bytes_received"], 1048576);
    let greeting = v["greeting"].as_str().unwrap();
    assert!(greeting.starts_with("hello peer=10.244.2.2:"), "{greeting}");
    assert!(greeting.contains("local=10.244.1.2:8080"), "{greeting}");
    assert!(
        v["local"].as_str().unwrap().starts_with("10.244.2.2:"),
        "{v}"
    );
    server
        .wait_for_output("accepted peer=10.244.2.2:", Duration::from_secs(5))
        .unwrap();

    // A second pod on node 1 reaches pod A over the node bridge.
    let a2 = c.add_pod(&n1, "pod-a2").unwrap();
    assert_eq!(a2.ip.to_string(), "10.244.1.3");
    let mut echo = testapp();
    echo.args([
        "echo",
        "--connect",
        "10.244.1.2:8080",
        "--bytes",
        "1000",
        "--greet",
    ]);
    let v = json(&c.run_in_pod(&a2, echo).unwrap().stdout);
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        v["greeting"]
            .as_str()
            .unwrap()
            .starts_with("hello peer=10.244.1.3:"),
        "{v}"
    );

    // A server without greeting, in pod a2; a client without --greet.
    let mut serve = testapp();
    serve.args(["serve", "--listen", "0.0.0.0:9090"]);
    c.spawn_in_pod(&a2, serve)
        .unwrap()
        .wait_for_output("listening on", Duration::from_secs(10))
        .unwrap();
    let mut echo = testapp();
    echo.args([
        "echo",
        "--connect",
        "10.244.1.3:9090",
        "--bytes",
        "100000",
        "--seed",
        "7",
    ]);
    let v = json(&c.run_in_pod(&b, echo).unwrap().stdout);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["greeting"], serde_json::Value::Null, "{v}");
    // A client expecting no greeting from a greeting server sees a mismatch.
    let mut echo = testapp();
    echo.args(["echo", "--connect", "10.244.1.2:8080", "--bytes", "1000"]);
    let out = c.run_in_pod(&b, echo).unwrap();
    assert!(!out.status.success());
    assert_eq!(json(&out.stdout)["ok"], false);

    // UDP and a short connect loop.
    let mut udp = testapp();
    udp.args(["udp-echo", "--listen", "0.0.0.0:5353"]);
    c.spawn_in_pod(&a, udp)
        .unwrap()
        .wait_for_output("listening on udp", Duration::from_secs(10))
        .unwrap();
    let mut ping = testapp();
    ping.args(["udp-ping", "--connect", "10.244.1.2:5353"]);
    let v = json(&c.run_in_pod(&b, ping).unwrap().stdout);
    assert_eq!(v["ok"], true, "{v}");
    let mut lp = testapp();
    lp.args([
        "connect-loop",
        "--connect",
        "10.244.1.2:8080",
        "--greet",
        "--interval-ms",
        "20",
        "--duration-secs",
        "1",
    ]);
    let out = c.run_in_pod(&b, lp).unwrap();
    let v = json(&out.stdout);
    assert_eq!(v["failed"], 0, "{v}");
    assert!(v["ok"].as_u64().unwrap() > 5, "{v}");
    assert!(out.status.success());

    c.cleanup().unwrap();
    assert_eq!(leftovers(c.prefix()), Vec::<String>::new());
}

#[test]
fn pod_process_is_in_pod_cgroup_and_netns() {
    require_root().unwrap();
    let c = Cluster::new("placement").unwrap();
    let n = c.add_node("node1").unwrap();
    let p = c.add_pod(&n, "pod").unwrap();
    let h = c
        .spawn_in_pod(&p, {
            let mut cmd = Command::new("sleep");
            cmd.arg("60");
            cmd
        })
        .unwrap();
    let pid = h.pid();
    let cg2 = cgroup2_mount().unwrap();
    let rel = Path::new("/").join(p.cgroup.strip_prefix(&cg2).unwrap());
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v2 = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    assert_eq!(Path::new(v2), rel, "{cg}");
    assert!(meshd_tests::cgroup_pids(&p.cgroup).contains(&(pid as i32)));
    let ns = netns_inode(Path::new(&format!("/proc/{pid}/ns/net"))).unwrap();
    assert_eq!(ns, netns_inode(&p.netns_path).unwrap());
    assert_ne!(ns, netns_inode(Path::new("/proc/self/ns/net")).unwrap());

    // A node process is in the node netns but not in the pod cgroup.
    let nh = c
        .spawn_in_node(&n, {
            let mut cmd = Command::new("sleep");
            cmd.arg("60");
            cmd
        })
        .unwrap();
    let ns = netns_inode(Path::new(&format!("/proc/{}/ns/net", nh.pid()))).unwrap();
    assert_eq!(ns, netns_inode(&n.netns_path).unwrap());
    assert!(!meshd_tests::cgroup_pids(&p.cgroup).contains(&(nh.pid() as i32)));

    // run_in_* sees the right addresses and times out cleanly.
    let out = c
        .run_in_pod(&p, {
            let mut cmd = Command::new("ip");
            cmd.args(["-4", "-o", "addr", "show", "dev", "eth0"]);
            cmd
        })
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.244.1.2/24"));
    let err = c
        .run_in_node_timeout(
            &n,
            {
                let mut cmd = Command::new("sleep");
                cmd.arg("30");
                cmd
            },
            Duration::from_millis(300),
        )
        .unwrap_err();
    assert!(format!("{err:#}").contains("sleep 30"), "{err:#}");

    h.kill().unwrap();
    assert!(!h.is_running());
    assert!(nh.is_running());
}

/// `http_get` runs inside the namespace it is given: a listener on a node's address is
/// reached from the node's netns, and not from the cluster network's netns (the connect
/// fails) nor from the test's own netns: those attempts never reach the listener.
#[test]
fn http_get_inside_a_node_netns() {
    require_root().unwrap();
    let c = Cluster::new("http").unwrap();
    let n = c.add_node("node1").unwrap();
    let l = c
        .in_netns(&n.netns_path, || TcpListener::bind("10.240.0.1:15000"))
        .unwrap()
        .unwrap();
    // Serves exactly two requests, then returns them.
    let server = std::thread::spawn(move || {
        let mut reqs = Vec::new();
        for _ in 0..2 {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let n = s.read(&mut req).unwrap();
            reqs.push(String::from_utf8_lossy(&req[..n]).into_owned());
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                .unwrap();
        }
        reqs
    });
    let (status, body) = http_get(&n.netns_path, "http://10.240.0.1:15000/metrics").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello"));
    // Not reachable from the cluster network's netns (no address, no route there): the
    // connect fails.
    let err = http_get_timeout(
        &c.net_netns_path(),
        "http://10.240.0.1:15000/",
        Duration::from_secs(2),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("connecting to 10.240.0.1:15000"), "{msg}");
    // Nor from the test's own netns. What answers there depends on the machine (a default
    // route may lead to a proxy that answers anything), but never the node's listener:
    // the server below sees only the two GETs made in the node's netns.
    let own = http_get_timeout(
        Path::new("/proc/self/ns/net"),
        "http://10.240.0.1:15000/own",
        Duration::from_secs(2),
    );
    assert!(!matches!(&own, Ok((200, b)) if b == "hello"), "{own:?}");
    let (status, body) = http_get(&n.netns_path, "http://10.240.0.1:15000/again").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello"));
    let reqs = server.join().unwrap();
    assert!(reqs[0].starts_with("GET /metrics HTTP/1.1\r\n"), "{reqs:?}");
    assert!(reqs[0].contains("Connection: close"), "{reqs:?}");
    assert!(reqs[1].starts_with("GET /again HTTP/1.1\r\n"), "{reqs:?}");
}

/// Start time of a live (not zombie) process, to tell it from a reused pid.
fn live_starttime(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    if matches!(after.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    after.get(19)?.parse().ok()
}

/// Starts `sh -c SCRIPT` in a node and waits until it prints `MARKER<pid>` (the pid of a
/// process it started); returns the shell and that pid.
fn sh_saying_pid(c: &Cluster, n: &Node, script: &str, marker: &str) -> (ProcHandle, i32) {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    let sh = c.spawn_in_node(n, cmd).unwrap();
    let line = sh.wait_for_output(marker, Duration::from_secs(10)).unwrap();
    let pid: i32 = line.trim()[marker.len()..].parse().unwrap();
    (sh, pid)
}

/// Dropping a cluster during a panic removes everything: the pod's process, a node
/// process's background grandchild (which runs outside any pod cgroup: the leak check
/// sees it while it runs, and it is gone after the drop), the pins and namespaces. A
/// plain drop too.
#[test]
fn drop_cleans_up_also_after_panic() {
    require_root().unwrap();
    let app = env!("CARGO_BIN_EXE_meshd-testapp");
    let prefix = std::sync::Mutex::new(String::new());
    let grandchild = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(|| {
        let c = Cluster::new("panic").unwrap();
        *prefix.lock().unwrap() = c.prefix().to_string();
        let n = c.add_node("node1").unwrap();
        let p = c.add_pod(&n, "pod").unwrap();
        let mut cmd = Command::new(app);
        cmd.args(["serve", "--listen", "0.0.0.0:8080"]);
        let h = spawn_listening(&c, &p, cmd);
        // A grandchild: `sh` in the node starts a background `sleep` and says its pid.
        let (sh, pid) = sh_saying_pid(
            &c,
            &n,
            "sleep 100 & echo grandchild=$!; wait",
            "grandchild=",
        );
        assert_ne!(pid, sh.pid() as i32);
        let start = live_starttime(pid).expect("the grandchild runs");
        *grandchild.lock().unwrap() = Some((pid, start));
        // The leak check sees the pod's app, the node's sh and its grandchild.
        let seen = leftovers(c.prefix());
        for (pid, comm) in [
            (h.pid() as i32, "meshd-testapp"),
            (sh.pid() as i32, "sh"),
            (pid, "sleep"),
        ] {
            assert!(
                seen.iter()
                    .any(|l| l.starts_with(&format!("process {pid} {comm} "))),
                "process {pid} ({comm}) not in {seen:#?}"
            );
        }
        std::fs::create_dir_all(c.pin_root(&n).join("maps")).unwrap();
        assert!(leftovers(c.prefix())
            .iter()
            .any(|l| l.starts_with("bpffs ") && l.ends_with("-node1/maps")));
        panic!("test panic inside the cluster");
    });
    assert!(r.is_err());
    let prefix = prefix.into_inner().unwrap();
    assert!(prefix.starts_with("mt"));
    let (pid, start) = grandchild
        .into_inner()
        .unwrap()
        .expect("grandchild started");
    // Killed with its process group; reaped by whoever inherited it.
    assert!(
        wait_until(Duration::from_secs(5), || live_starttime(pid)
            != Some(start)),
        "grandchild {pid} survived the cluster"
    );
    assert_eq!(leftovers(&prefix), Vec::<String>::new());

    // Plain drop.
    let c = Cluster::new("drop").unwrap();
    let prefix = c.prefix().to_string();
    let n = c.add_node("n1").unwrap();
    c.add_pod(&n, "p1").unwrap();
    drop(c);
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}

#[test]
fn cleanup_stale_removes_a_forgotten_cluster() {
    require_root().unwrap();
    let c = Cluster::new("stale").unwrap();
    let prefix = c.prefix().to_string();
    let n = c.add_node("n1").unwrap();
    let p = c.add_pod(&n, "p1").unwrap();
    c.spawn_in_pod(&p, {
        let mut cmd = Command::new("sleep");
        cmd.arg("100");
        cmd
    })
    .unwrap();
    std::fs::create_dir_all(c.pin_root(&n)).unwrap();
    std::mem::forget(c); // as if the test process had been killed
    assert!(leftovers(&prefix).len() >= 5, "{:?}", leftovers(&prefix));
    // Its owner (this process) is alive, so a general sweep leaves it alone...
    let cleaned = cleanup_stale("").unwrap();
    assert!(!cleaned.contains(&prefix));
    assert!(!leftovers(&prefix).is_empty());
    // ...but naming it removes it.
    assert_eq!(cleanup_stale(&prefix).unwrap(), vec![prefix.clone()]);
    assert!(
        wait_until(Duration::from_secs(5), || leftovers(&prefix).is_empty()),
        "{:?}",
        leftovers(&prefix)
    );
}

#[test]
fn invalid_names_are_rejected() {
    require_root().unwrap();
    let c = Cluster::new("names").unwrap();
    assert!(c.add_node("Bad_Name").is_err());
    assert!(c.add_node("net").is_err());
    let n = c.add_node("n1").unwrap();
    assert!(c.add_node("n1").is_err());
    assert!(c.add_pod(&n, "n1").is_err());
}

/// A stand-in for an agent in node `n`: `sh` that exits with `code` on SIGTERM.
fn fake_agent(c: &Cluster, n: &Node, code: u8) -> Agent {
    let proc = c
        .spawn_in_node(n, {
            let mut cmd = Command::new("sh");
            cmd.args([
                "-c",
                &format!("trap 'kill $!; exit {code}' TERM; sleep 100 & echo ready; wait"),
            ]);
            cmd
        })
        .unwrap();
    proc.wait_for_output("ready", Duration::from_secs(10))
        .unwrap();
    Agent {
        node: n.clone(),
        proc,
        config_path: c.dir().join("none.yaml"),
        pin_root: c.pin_root(n),
    }
}

/// `Agent::stop` succeeds only for a clean exit on SIGTERM and otherwise fails naming the
/// status; an agent dropped while running is stopped the same way, and the drop panics
/// if it does not exit cleanly.
#[test]
fn agent_stop_and_drop_check_the_exit() {
    require_root().unwrap();
    let c = Cluster::new("agent-stop").unwrap();
    let n = c.add_node("n1").unwrap();
    assert!(fake_agent(&c, &n, 0).stop().unwrap().success());
    let err = format!("{:#}", fake_agent(&c, &n, 3).stop().unwrap_err());
    assert!(
        err.contains("the agent on n1 did not exit cleanly on SIGTERM (exit status: 3)"),
        "{err}"
    );
    // Dropped while running: a clean exit passes, an unclean one panics.
    let clean = fake_agent(&c, &n, 0);
    let pid = clean.proc.pid();
    drop(clean);
    assert!(live_starttime(pid as i32).is_none(), "not stopped on drop");
    let bad = fake_agent(&c, &n, 3);
    let proc = bad.proc.clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(bad)));
    let msg = r.expect_err("dropping an agent that exits with 3 must panic");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("did not exit cleanly on SIGTERM (exit status: 3)"),
        "{msg}"
    );
    assert!(!proc.is_running());
}

/// Kills a pid when dropped (for a process a test let escape on purpose).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The leak check sees a process that escaped the cluster's cleanup (its own session, in
/// a node's netns, in no pod cgroup, with a command line naming nothing of the cluster),
/// also after the cluster and its namespaces are gone: per cluster and in the global
/// check of `cargo xtask test`.
#[test]
fn leak_check_sees_a_process_that_escaped_the_cleanup() {
    require_root().unwrap();
    let c = Cluster::new("escape").unwrap();
    let prefix = c.prefix().to_string();
    let n = c.add_node("n1").unwrap();
    let (_sh, pid) = sh_saying_pid(
        &c,
        &n,
        "setsid sh -c 'echo escaped=$$; exec sleep 300' & wait",
        "escaped=",
    );
    let _guard = KillOnDrop(pid);
    assert!(
        wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|s| s.trim() == "sleep")
        }),
        "the escaped process did not start sleeping"
    );
    c.cleanup().unwrap();
    assert!(
        live_starttime(pid).is_some(),
        "the escaped process was killed"
    );
    let entry = format!("process {pid} sleep (sleep 300)");
    assert_eq!(leftovers(&prefix), vec![entry.clone()]);
    assert!(leftovers("").contains(&entry));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || leftovers(&prefix).is_empty()),
        "{:?}",
        leftovers(&prefix)
    );
}

/// Removes a directory (tree) when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The global leak check lists `meshd check`'s scratch pin dir (with what is pinned in it)
/// and cgroup, as `meshd check` names them (`meshd-check-<pid>`).
#[test]
fn leak_check_sees_meshd_check_scratch() {
    require_root().unwrap();
    meshd_tests::ensure_bpffs().unwrap();
    // The pid of this process: no `meshd check` can have it.
    let name = format!("meshd-check-{}", std::process::id());
    let pins = Path::new("/sys/fs/bpf").join(&name);
    let cg = cgroup2_mount().unwrap().join(&name);
    let _p = RemoveOnDrop(pins.clone());
    let _c = RemoveOnDrop(cg.clone());
    std::fs::create_dir(&pins).unwrap();
    std::fs::create_dir(pins.join("maps")).unwrap();
    std::fs::create_dir(&cg).unwrap();
    let all = leftovers("");
    for want in [
        format!("bpffs {}", pins.display()),
        format!("bpffs {}", pins.join("maps").display()),
        format!("cgroup {}", cg.display()),
    ] {
        assert!(all.contains(&want), "{want} not in {all:#?}");
    }
}
