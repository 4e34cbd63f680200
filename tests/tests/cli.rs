//! The agent's command line and its operational surface, as the README describes them:
//! `--workers` / `MESHD_WORKERS`, the open-files limit, `--log-json`, eBPF log records,
//! `SIGINT`, start-up-only settings, `/live` and `/ready`, the `identity` section of
//! `/config_dump` with its metrics, and `meshd identity init`.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use meshd_tests::{
    enroll::PROGRAMS,
    mesh::{
        cgroup_programs, config_yaml, identity_init, meshd_bin, netns_programs, serve,
        testapp_json, with_identity, Agent, WorkloadSpec,
    },
    require_root, wait_until, Cluster, Node, Pod, Signal,
};
use serde_json::Value;

/// Starts `meshd [global] run --config FILE [run_args]` in `node` (behind `wrapper`, e.g.
/// `prlimit ...`, which execs it), with `env`, and waits until `/ready` answers 200.
fn start_agent(
    c: &Cluster,
    node: &Node,
    yaml: &str,
    wrapper: &[&str],
    global: &[&str],
    run_args: &[&str],
    env: &[(&str, &str)],
) -> Agent {
    let config_path = c.dir().join(format!("meshd-{}.yaml", node.name));
    std::fs::write(&config_path, yaml).unwrap();
    let mut cmd = match wrapper.split_first() {
        Some((prog, args)) => {
            let mut cmd = Command::new(prog);
            cmd.args(args).arg(meshd_bin());
            cmd
        }
        None => Command::new(meshd_bin()),
    };
    cmd.args(global)
        .args(["run", "--config"])
        .arg(&config_path)
        .args(run_args)
        .envs(env.iter().copied());
    let proc = c.spawn_in_node(node, cmd).unwrap();
    let agent = Agent {
        node: node.clone(),
        proc,
        config_path,
        pin_root: c.pin_root(node),
    };
    let ready = wait_until(Duration::from_secs(30), || {
        !agent.proc.is_running() || matches!(agent.get("/ready"), Ok((200, _)))
    });
    assert!(
        ready && agent.proc.is_running(),
        "agent did not become ready:{}",
        agent.proc.output_tail()
    );
    agent
}

/// `echo --greet` of `bytes` from `pod` to `to`; asserts every byte came back.
fn echo(c: &Cluster, pod: &Pod, to: &str, bytes: u64) {
    let n = bytes.to_string();
    let r = testapp_json(c, pod, &["echo", "--greet", "--connect", to, "--bytes", &n]).unwrap();
    assert_eq!(r["ok"], true, "echo from {} to {to}: {r}", pod.name);
    assert_eq!(r["bytes_received"].as_u64(), Some(bytes), "{r}");
}

/// Waits until the agent has recorded `n` closed connections to `orig_dst`.
fn wait_closed(agent: &Agent, direction: &str, orig_dst: &str, n: usize) {
    assert!(
        wait_until(Duration::from_secs(10), || {
            agent.closed_to(direction, orig_dst).unwrap().len() == n
        }),
        "{n} closed {direction} connections to {orig_dst}: {:?}",
        agent.connections()
    );
}

/// CPU time in nanoseconds of each thread of a process, by thread id (`schedstat`).
fn thread_cpu_ns(pid: u32) -> std::collections::BTreeMap<u32, (String, u64)> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = entry.unwrap().path();
        let (Ok(stat), Ok(comm)) = (
            std::fs::read_to_string(dir.join("schedstat")),
            std::fs::read_to_string(dir.join("comm")),
        ) else {
            continue; // the thread ended
        };
        let tid = dir.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let ns = stat.split_whitespace().next().unwrap().parse().unwrap();
        out.insert(tid, (comm.trim().to_string(), ns));
    }
    out
}

/// 100 concurrent connections, each echoing 256 KiB, from `client` to `to`; all intact.
fn echo_many(c: &Cluster, client: &Pod, to: &str) {
    let r = testapp_json(
        c,
        client,
        &[
            "echo-many",
            "--connect",
            to,
            "--count",
            "100",
            "--bytes",
            "262144",
        ],
    )
    .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["connections"], 100, "{r}");
    assert_eq!(r["bytes_received"], 100 * 262_144, "{r}");
}

/// The share of the agent's CPU time, over [`echo_many`], spent on its main thread (where
/// `block_on` runs the proxy's runtime when it is single-threaded).
fn main_thread_share(c: &Cluster, agent: &Agent, client: &Pod, to: &str) -> f64 {
    let pid = agent.proc.pid();
    let before = thread_cpu_ns(pid);
    echo_many(c, client, to);
    let after = thread_cpu_ns(pid);
    let used: Vec<(u32, String, u64)> = after
        .iter()
        .map(|(tid, (comm, ns))| {
            let ns0 = before.get(tid).map_or(0, |b| b.1);
            (*tid, comm.clone(), ns - ns0)
        })
        .collect();
    let all: u64 = used.iter().map(|u| u.2).sum();
    let main = used.iter().find(|u| u.0 == pid).map_or(0, |u| u.2);
    assert!(
        all >= 20_000_000,
        "the agent used {all} ns for 100 connections: too little to tell where: {used:?}"
    );
    main as f64 / all as f64
}

/// The soft and hard `Max open files` of a process.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

/// `MESHD_WORKERS=1` runs the proxy on a single-threaded runtime that carries traffic (its
/// main thread does most of the agent's work while 100 concurrent connections echo
/// 256 KiB each), and `--workers 2` on a
/// multi-threaded one (the main thread only waits). Both carry the bytes intact. Started
/// with a soft open-files limit of 256 under a hard one of 4096, the agent runs with 4096
/// for both.
#[test]
fn workers_select_the_runtime_and_the_open_files_limit_is_raised() {
    require_root().unwrap();
    let c = Cluster::new("workers").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let server = c.add_pod(&n1, "server").unwrap();
    // The server is not enrolled: one proxy hop (the client's outbound capture).
    let yaml = config_yaml(&c, &n1, &[WorkloadSpec::new(&client)], &[]);
    let _app = serve(&c, &server, 8080).unwrap();
    let dst = format!("{}:8080", server.ip);

    let single = start_agent(
        &c,
        &n1,
        &yaml,
        &["prlimit", "--nofile=256:4096"],
        &["--log", "info"],
        &[],
        &[("MESHD_WORKERS", "1")],
    );
    assert_eq!(
        open_files_limits(single.proc.pid()),
        ("4096".to_string(), "4096".to_string()),
        "the soft open-files limit is raised to the hard one"
    );
    let share = main_thread_share(&c, &single, &client, &dst);
    wait_closed(&single, "outbound", &dst, 100);
    assert!(
        share > 0.5,
        "one worker: the main thread did {:.0}% of the agent's work",
        share * 100.0
    );
    single.stop().unwrap();

    let multi = start_agent(
        &c,
        &n1,
        &yaml,
        &[],
        &["--log", "info"],
        &["--workers", "2"],
        &[],
    );
    let share = main_thread_share(&c, &multi, &client, &dst);
    wait_closed(&multi, "outbound", &dst, 100);
    assert!(
        share < 0.1,
        "two workers: the main thread did {:.0}% of the agent's work",
        share * 100.0
    );
    multi.stop().unwrap();
}

/// Ctrl-C (`SIGINT`) is a clean stop like `SIGTERM`: exit status 0, and the capture stays
/// for the next agent (programs attached to the pod's cgroup and namespace, pins kept).
/// With `--uninstall-on-exit` the same stop detaches every program and removes every pin.
#[test]
fn sigint_is_a_clean_stop_and_uninstall_on_exit_removes_the_capture() {
    require_root().unwrap();
    let c = Cluster::new("sigint").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let yaml = config_yaml(&c, &n1, &[WorkloadSpec::new(&client)], &[]);
    let captured = || {
        let mut attached = cgroup_programs(&client.cgroup).unwrap();
        attached.sort();
        attached == PROGRAMS && netns_programs(&client.netns_path).unwrap() == ["meshd_sk_lookup"]
    };
    let sigint = |agent: &Agent| {
        agent.proc.signal(Signal::SIGINT).unwrap();
        let status = agent.proc.wait(Duration::from_secs(15)).unwrap();
        assert!(
            status.success(),
            "exit on SIGINT: {status}{}",
            agent.proc.output_tail()
        );
    };

    let agent = start_agent(&c, &n1, &yaml, &[], &["--log", "info"], &[], &[]);
    assert!(captured());
    assert!(agent.pin_root.join("v3/links/default_client").is_dir());
    sigint(&agent);
    assert!(agent
        .proc
        .stderr()
        .contains("shutting down: the capture stays in place for the next agent"));
    assert!(captured(), "the capture stays after SIGINT");
    assert!(agent.pin_root.join("v3/links/default_client").is_dir());

    // The next agent adopts it; stopped with --uninstall-on-exit it removes everything.
    let agent = start_agent(
        &c,
        &n1,
        &yaml,
        &[],
        &["--log", "info"],
        &["--uninstall-on-exit"],
        &[],
    );
    assert!(agent.proc.stderr().contains("adopted pinned capture links"));
    assert!(captured());
    sigint(&agent);
    assert!(agent
        .proc
        .stderr()
        .contains("shutting down: detaching programs and removing pins"));
    assert!(cgroup_programs(&client.cgroup).unwrap().is_empty());
    assert!(netns_programs(&client.netns_path).unwrap().is_empty());
    assert!(
        !agent.pin_root.exists(),
        "{} left after SIGINT with --uninstall-on-exit",
        agent.pin_root.display()
    );
}

/// `--log-json` writes only JSON lines, with the event's fields (`meshd running` with its
/// node and admin address); with `meshd_ebpf=debug` the eBPF programs' records are
/// forwarded into that log (connect4's capture line, with the destination, under
/// `meshd_ebpf::connect4`). Without it (`MESHD_LOG=info,meshd::capture=debug,meshd::proxy=debug`:
/// the variable sets the filter), a captured connection logs the agent's debug lines but
/// no line of the program.
#[test]
fn json_logs_and_ebpf_records() {
    require_root().unwrap();
    let c = Cluster::new("logjson").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let server = c.add_pod(&n1, "server").unwrap();
    let yaml = config_yaml(&c, &n1, &[WorkloadSpec::new(&client)], &[]);
    let _app = serve(&c, &server, 8080).unwrap();
    let dst = format!("{}:8080", server.ip);

    let agent = start_agent(
        &c,
        &n1,
        &yaml,
        &[],
        &["--log-json", "--log", "info,meshd_ebpf=debug"],
        &[],
        &[],
    );
    echo(&c, &client, &dst, 1024);
    wait_closed(&agent, "outbound", &dst, 1);
    let capture_line = format!("connect4: capture {dst}");
    let found = wait_until(Duration::from_secs(10), || {
        agent.proc.stderr().contains(&capture_line)
    });
    assert!(found, "no {capture_line:?}:{}", agent.proc.output_tail());
    let lines: Vec<Value> = agent
        .proc
        .stderr()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let running = lines
        .iter()
        .find(|l| l["fields"]["message"] == "meshd running")
        .expect("a `meshd running` line");
    assert_eq!(running["level"], "INFO");
    assert_eq!(running["fields"]["node"], "n1");
    assert_eq!(running["fields"]["admin"], "127.0.0.1:15000");
    let capture = lines
        .iter()
        .find(|l| l["fields"]["message"] == capture_line.as_str())
        .expect("the capture line");
    assert_eq!(capture["target"], "meshd_ebpf::connect4", "{capture}");
    assert_eq!(capture["level"], "DEBUG", "{capture}");
    agent.stop().unwrap();

    // The agent's own debug logging without meshd_ebpf (nor `meshd`, which prefixes it),
    // set by MESHD_LOG: the same connection, captured (its debug lines are there: the
    // variable applies), no line from the program.
    let agent = start_agent(
        &c,
        &n1,
        &yaml,
        &[],
        &[],
        &[],
        &[("MESHD_LOG", "info,meshd::capture=debug,meshd::proxy=debug")],
    );
    echo(&c, &client, &dst, 1024);
    wait_closed(&agent, "outbound", &dst, 1);
    agent.stop().unwrap();
    let log = agent.proc.stderr();
    assert!(log.contains(" DEBUG meshd::proxy"), "{log}");
    assert!(!log.contains("connect4: capture"), "{log}");
    assert!(!log.contains("meshd_ebpf"), "{log}");
}

/// The running agent's `/live` and `/ready`: ready only once the first configuration is
/// applied (the workload's programs are attached when `/ready` first answers). The
/// start-up-only settings (`admin`, `bpffs`, `trustDomain`, `identity`,
/// `connectTimeoutMs`) changed in the file are each logged as needing a restart and keep
/// their running value (admin still on the old address, nothing on the new one, pins
/// under the old root, certificates in the old trust domain for the old lifetime), while
/// the rest of the same edit (a new workload) applies.
#[test]
fn startup_only_settings_need_a_restart() {
    require_root().unwrap();
    let c = Cluster::new("restartonly").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let extra = c.add_pod(&n1, "extra").unwrap();
    let ca = identity_init(&c, "ca").unwrap();
    let anchors = ca.join("ca.crt");
    let yaml = with_identity(
        &config_yaml(&c, &n1, &[WorkloadSpec::new(&client)], &[]),
        &anchors,
        &ca,
        3600,
    );
    let agent = start_agent(&c, &n1, &yaml, &[], &["--log", "info"], &[], &[]);
    // start_agent returned on the first 200 of /ready: the workload was applied by then.
    let mut attached = cgroup_programs(&client.cgroup).unwrap();
    attached.sort();
    assert_eq!(attached, PROGRAMS);
    assert_eq!(agent.get("/live").unwrap(), (200, "live\n".to_string()));
    assert_eq!(agent.get("/ready").unwrap(), (200, "ready\n".to_string()));

    let old_root = agent.pin_root.clone();
    // Named like the cluster's pin roots, so that the cluster removes it should it appear.
    let new_root = std::path::PathBuf::from(format!("{}-moved", old_root.display()));
    let edited = with_identity(
        &config_yaml(
            &c,
            &n1,
            &[WorkloadSpec::new(&client), WorkloadSpec::new(&extra)],
            &[],
        ),
        &anchors,
        &ca,
        60,
    )
    .replace("admin: 127.0.0.1:15000", "admin: 127.0.0.1:15100")
    .replace(
        &format!("bpffs: {}", old_root.display()),
        &format!("bpffs: {}", new_root.display()),
    )
    .replace("connectTimeoutMs: 2000", "connectTimeoutMs: 900")
        + "trustDomain: example.org\n";
    for field in [
        "admin:",
        "bpffs:",
        "connectTimeoutMs:",
        "certificateTtlSeconds: 60",
    ] {
        assert!(edited.contains(field), "the edit changes {field}: {edited}");
    }
    agent.write_config(&edited).unwrap();

    // The rest of the edit applies: the new workload is enrolled.
    assert!(wait_until(Duration::from_secs(10), || {
        agent.config_dump().unwrap()["capture"]["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["workload"] == "default/extra" && w["enrolled"] == true)
    }));
    let mut attached = cgroup_programs(&extra.cgroup).unwrap();
    attached.sort();
    assert_eq!(attached, PROGRAMS);
    let log = agent.proc.stderr();
    for field in [
        "admin",
        "bpffs",
        "trustDomain",
        "identity",
        "connectTimeoutMs",
    ] {
        let warned = log.lines().any(|l| {
            l.contains("takes effect when the agent restarts")
                && l.contains(&format!("field=\"{field}\""))
        });
        assert!(warned, "no restart warning for {field}:\n{log}");
    }

    // The running values stay.
    assert_eq!(agent.get("/live").unwrap().0, 200);
    let new_admin = c.in_netns(&n1.netns_path, || {
        std::net::TcpStream::connect("127.0.0.1:15100")
    });
    assert!(new_admin.unwrap().is_err(), "something listens on 15100");
    let dump = agent.config_dump().unwrap();
    assert_eq!(
        dump["capture"]["pins"],
        old_root.join("v3").display().to_string().as_str()
    );
    assert!(old_root.join("v3/links/default_extra").is_dir());
    assert!(!new_root.exists(), "{} was created", new_root.display());
    assert_eq!(dump["identity"]["trustDomain"], "cluster.local");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let certs = dump["identity"]["certificates"].as_array().unwrap().clone();
    let extra_cert = certs
        .iter()
        .find(|c| c["identity"] == "spiffe://cluster.local/ns/default/sa/extra")
        .unwrap_or_else(|| panic!("no certificate for extra in the old trust domain: {dump}"));
    let not_after = extra_cert["notAfter"].as_u64().unwrap();
    assert!(
        not_after > now + 3000,
        "extra's certificate lives the running 3600 s, not the new 60 s: {not_after} (now {now})"
    );
    agent.stop().unwrap();
}

/// A Prometheus-text sample's value.
fn metric(agent: &Agent, line_prefix: &str) -> Option<u64> {
    let (_, text) = agent.get("/metrics").unwrap();
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// A certificate file's subject, issuer and notAfter (Unix seconds), from openssl.
fn cert_fields(path: &Path) -> (String, String, u64) {
    let out = Command::new("openssl")
        .args([
            "x509", "-noout", "-subject", "-issuer", "-enddate", "-nameopt", "RFC2253", "-in",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl x509 {}", path.display());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {text}"))
            .trim()
            .to_string()
    };
    let end = field("notAfter=");
    let date = Command::new("date")
        .args(["-u", "-d", &end, "+%s"])
        .output()
        .unwrap();
    let not_after = String::from_utf8_lossy(&date.stdout)
        .trim()
        .parse()
        .unwrap();
    (field("subject="), field("issuer="), not_after)
}

/// `/config_dump`'s `identity` section on a client agent with 10 s certificates: the trust
/// domain, the anchor's and the issuer's subjects and the issuer's expiry exactly as in
/// the files, one certificate for the one local workload whose `notAfter` equals the
/// `identity_cert_expiration_timestamp_seconds` sample and moves forward with each
/// renewal, `renewals` equal to `identity_cert_refresh_count` and to the renewals logged
/// (at least two after 10 s: renewed at half-life), one open pooled HBONE connection
/// after a request to another node.
#[test]
fn identity_section_and_metrics_follow_renewals() {
    require_root().unwrap();
    let c = Cluster::new("iddump").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let n2 = c.add_node("n2").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let web = c.add_pod(&n2, "web").unwrap();
    let ca = identity_init(&c, "ca").unwrap();
    let anchors = ca.join("ca.crt");
    let remote = |p: &Pod| {
        let mut w = WorkloadSpec::new(p);
        w.remote = true;
        w
    };
    let y1 = config_yaml(&c, &n1, &[WorkloadSpec::new(&client), remote(&web)], &[]);
    let y2 = config_yaml(&c, &n2, &[remote(&client), WorkloadSpec::new(&web)], &[]);
    let agent1 = start_agent(
        &c,
        &n1,
        &with_identity(&y1, &anchors, &ca, 10),
        &[],
        &["--log", "info"],
        &[],
        &[],
    );
    let agent2 = start_agent(
        &c,
        &n2,
        &with_identity(&y2, &anchors, &ca, 10),
        &[],
        &["--log", "info"],
        &[],
        &[],
    );
    let _app = serve(&c, &web, 8080).unwrap();

    let client_id = "spiffe://cluster.local/ns/default/sa/client";
    let first = agent1.config_dump().unwrap()["identity"].clone();
    let first_not_after = first["certificates"][0]["notAfter"].as_u64().unwrap();
    let first_renewals = first["renewals"].as_u64().unwrap();
    let dst = format!("{}:8080", web.ip);
    echo(&c, &client, &dst, 4096);
    wait_closed(&agent2, "inbound", &dst, 1);

    let (anchor_subject, _, _) = cert_fields(&anchors);
    let (issuer_subject, issuer_issuer, issuer_not_after) = cert_fields(&ca.join("issuer.crt"));
    assert_eq!(anchor_subject, "CN=root.cluster.local");
    assert_eq!(issuer_subject, "CN=identity.linkerd.cluster.local");
    assert_eq!(issuer_issuer, anchor_subject);

    assert!(
        wait_until(Duration::from_secs(30), || {
            agent1.config_dump().unwrap()["identity"]["renewals"]
                .as_u64()
                .unwrap()
                >= 2
        }),
        "two renewals of 10 s certificates within 30 s:{}",
        agent1.proc.output_tail()
    );
    // A consistent reading: the dump, the metrics and the log agree while no renewal
    // happens in between (one is due every 5 s).
    let mut reading = None;
    for _ in 0..10 {
        let before = agent1.config_dump().unwrap()["identity"].clone();
        let refreshes = metric(&agent1, "identity_cert_refresh_count ");
        let expiry = metric(
            &agent1,
            &format!("identity_cert_expiration_timestamp_seconds{{identity=\"{client_id}\"}}"),
        );
        let logged = agent1
            .proc
            .stderr()
            .lines()
            .filter(|l| l.contains("renewed workload certificate"))
            .count() as u64;
        let after = agent1.config_dump().unwrap()["identity"].clone();
        if before == after {
            reading = Some((after, refreshes, expiry, logged));
            break;
        }
    }
    let (id, refreshes, expiry, logged) = reading.expect("a reading without a renewal in it");
    let renewals = id["renewals"].as_u64().unwrap();
    assert_eq!(refreshes, Some(renewals), "{id}");
    assert_eq!(logged, renewals, "{id}");
    assert_eq!(id["trustDomain"], "cluster.local");
    assert_eq!(id["trustAnchors"], serde_json::json!([anchor_subject]));
    assert_eq!(id["issuer"], issuer_subject.as_str());
    assert_eq!(id["issuerNotAfter"].as_u64(), Some(issuer_not_after));
    let certs = id["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 1, "{id}");
    assert_eq!(certs[0]["identity"], client_id);
    let not_after = certs[0]["notAfter"].as_u64().unwrap();
    assert_eq!(expiry, Some(not_after), "{id}");
    // Renewed at half-life: each renewal moves notAfter on by at least 5 s (1 s for the
    // rounding to whole seconds).
    assert!(
        renewals > first_renewals
            && not_after + 1 >= first_not_after + 5 * (renewals - first_renewals),
        "{} renewals moved notAfter from {first_not_after} to {not_after}",
        renewals - first_renewals
    );
    assert_eq!(id["hboneConnections"], 1, "{id}");
    agent1.stop().unwrap();
    agent2.stop().unwrap();
}

/// `meshd identity init --trust-domain example.org` writes `ca.crt` (`CN=root.example.org`,
/// 10 years), `issuer.crt` (`CN=identity.linkerd.example.org`, signed by the anchor, a
/// CA, 1 year) and their ECDSA P-256 keys, `issuer.key` as PKCS#8 with mode 0600; run again
/// it refuses to overwrite (exit 1, every file unchanged), and with `--force` it replaces
/// them.
#[test]
fn identity_init_writes_the_files_and_refuses_to_overwrite() {
    require_root().unwrap();
    let c = Cluster::new("idinit").unwrap();
    let dir = c.dir().join("identity");
    let init = |force: bool| {
        let mut cmd = Command::new(meshd_bin());
        cmd.args(["identity", "init", "--trust-domain", "example.org", "--dir"])
            .arg(&dir);
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    let out = init(false);
    assert!(out.status.success(), "{out:?}");
    let files = ["ca.crt", "ca.key", "issuer.crt", "issuer.key"];
    let read = || files.map(|f| std::fs::read(dir.join(f)).unwrap());

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let day = 86_400;
    let (ca_subject, ca_issuer, ca_end) = cert_fields(&dir.join("ca.crt"));
    assert_eq!(ca_subject, "CN=root.example.org");
    assert_eq!(ca_issuer, ca_subject);
    assert!((now + 3650 * day - 2 * day..=now + 3653 * day).contains(&ca_end));
    let (issuer_subject, issuer_issuer, issuer_end) = cert_fields(&dir.join("issuer.crt"));
    assert_eq!(issuer_subject, "CN=identity.linkerd.example.org");
    assert_eq!(issuer_issuer, ca_subject);
    assert!((now + 364 * day..=now + 366 * day).contains(&issuer_end));
    let verify = Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(dir.join("ca.crt"))
        .arg(dir.join("issuer.crt"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    for cert in ["ca.crt", "issuer.crt"] {
        let text = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(dir.join(cert))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("ASN1 OID: prime256v1"), "{cert}: {text}");
        assert!(text.contains("CA:TRUE"), "{cert}: {text}");
    }
    let key = std::fs::read_to_string(dir.join("issuer.key")).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    let mode = std::fs::metadata(dir.join("issuer.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "issuer.key mode {mode:o}");

    let before = read();
    let again = init(false);
    assert!(
        !again.status.success(),
        "a second init overwrote: {again:?}"
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(read(), before, "files changed by a refused init");

    let forced = init(true);
    assert!(forced.status.success(), "{forced:?}");
    let after = read();
    for (i, f) in files.iter().enumerate() {
        assert_ne!(after[i], before[i], "{f} not replaced by --force");
    }
}

/// Reads an HTTP/1.1 chunked body's lines (the `/tap` stream), after its head.
struct ChunkedLines {
    r: std::io::BufReader<std::net::TcpStream>,
    pending: Vec<u8>,
}

impl ChunkedLines {
    /// Reads the response head; fails unless it is a `200`.
    fn new(stream: std::net::TcpStream) -> ChunkedLines {
        use std::io::BufRead as _;
        let mut r = std::io::BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        ChunkedLines {
            r,
            pending: Vec::new(),
        }
    }

    /// The next line of the body.
    fn next_line(&mut self) -> String {
        use std::io::{BufRead as _, Read as _};
        loop {
            if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return String::from_utf8_lossy(&line).trim_end().to_string();
            }
            let mut size = String::new();
            self.r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16)
                .unwrap_or_else(|e| panic!("chunk size {size:?}: {e}"));
            assert!(n > 0, "the tap stream ended");
            let mut chunk = vec![0; n + 2];
            self.r.read_exact(&mut chunk).unwrap();
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Sum of a metric's samples whose line starts with `prefix` and contains `part`.
fn metric_sum(agent: &Agent, prefix: &str, part: &str) -> u64 {
    let (_, text) = agent.get("/metrics").unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(part))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A tap whose reader does not read (a 4 KiB receive buffer, nothing read) while 30,000
/// HTTP requests pass does not slow the proxy down (every request completes while it
/// stalls); it misses requests and is told so: once it reads again, the requests it is
/// shown plus the `missed` counts of its `lagged` lines are exactly the 30,000 requests.
#[test]
fn a_slow_tap_misses_requests_and_is_told() {
    use std::io::Write as _;
    require_root().unwrap();
    let c = Cluster::new("slowtap").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let server = c.add_pod(&n1, "server").unwrap();
    let yaml = config_yaml(&c, &n1, &[WorkloadSpec::new(&client)], &[]);
    let agent = start_agent(&c, &n1, &yaml, &[], &["--log", "info"], &[], &[]);
    let mut app = Command::new(meshd_tests::mesh::testapp_bin());
    app.args(["http-serve", "--listen", "0.0.0.0:8000"]);
    let app = c.spawn_in_pod(&server, app).unwrap();
    app.wait_for_output("listening", Duration::from_secs(10))
        .unwrap();

    // The tap's reader, in the node, with a receive buffer too small to hold the stream.
    let stream = c
        .in_netns(
            &n1.netns_path,
            || -> std::io::Result<std::net::TcpStream> {
                use nix::sys::socket::{
                    connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType,
                    SockaddrIn,
                };
                use std::os::fd::AsRawFd as _;
                let fd = socket(
                    AddressFamily::Inet,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )?;
                setsockopt(&fd, sockopt::RcvBuf, &4096)?;
                connect(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 15000))?;
                let mut s = std::net::TcpStream::from(fd);
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                s.write_all(b"GET /tap HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
                Ok(s)
            },
        )
        .unwrap()
        .unwrap();
    let mut tap = ChunkedLines::new(stream);
    // The agent subscribes the tap before this first line: it is live.
    assert_eq!(tap.next_line(), r#"{"tap":"started"}"#);

    // The agent holds 4,096 events and the stream 256; the sockets take about 8,000 more.
    const REQUESTS: u64 = 30_000;
    let mut curl = Command::new("curl");
    curl.args(["-sSf", "--max-time", "120"])
        .arg(format!("http://{}:8000/r/[1-{REQUESTS}]", server.ip));
    let out = c
        .run_in_pod_timeout(&client, curl, Duration::from_secs(150))
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        metric_sum(&agent, "request_total{", "direction=\"outbound\""),
        REQUESTS
    );

    let (mut shown, mut missed, mut lagged) = (0u64, 0u64, 0u64);
    while shown + missed < REQUESTS {
        let line = tap.next_line();
        let ev: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if ev["tap"] == "lagged" {
            lagged += 1;
            missed += ev["missed"].as_u64().unwrap();
        } else {
            assert!(ev.get("tap").is_none(), "{line}");
            shown += 1;
        }
    }
    assert_eq!(shown + missed, REQUESTS);
    assert!(
        lagged >= 1 && missed > 0,
        "shown {shown}, missed {missed} in {lagged} lagged lines"
    );
    agent.stop().unwrap();
}

/// `meshd policy check FILE|DIR...`: a directory of valid policy (read recursively, with a
/// Deployment in the same file skipped) passes with exit status 0; the malformed documents
/// of the spec's F19 are each refused with Linkerd's message, naming file, line, kind,
/// namespace/name and field, and the exit status is 1.
#[test]
fn policy_check_validates_files_offline() {
    let dir = std::env::temp_dir().join(format!("meshd-policy-check-{}", std::process::id()));
    let good = dir.join("good/nested");
    std::fs::create_dir_all(&good).unwrap();
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src/policy/testdata");
    for f in ["01-server-meshtls-identity.yaml", "17-opaque-tcp.yaml"] {
        std::fs::copy(testdata.join(f), good.join(f)).unwrap();
    }
    std::fs::write(dir.join("good/notes.txt"), "not yaml: ignored").unwrap();
    let run = |args: &[&Path]| {
        let out = Command::new(meshd_bin())
            .arg("policy")
            .arg("check")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&[&dir.join("good")]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("2 file(s), 5 policy resource(s) valid, 0 refused, 2 skipped"),
        "{stdout}"
    );
    assert!(
        stdout.contains("apps/v1 Deployment: not a policy resource; skipped"),
        "{stdout}"
    );

    let bad = dir.join("19-malformed.yaml");
    std::fs::copy(testdata.join("19-malformed.yaml"), &bad).unwrap();
    let (code, stdout, stderr) = run(&[&dir.join("good"), &bad]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 15, "{stderr}");
    let file = bad.display().to_string();
    for want in [
        "NetworkAuthentication shop/m1-bad-cidr: spec.networks[0].cidr: data did not match any variant of untagged enum Cidr",
        "AuthorizationPolicy shop/m7-missing-group: spec.requiredAuthenticationRefs: unsupported authentication kind(s): NetworkAuthentication",
        "Server shop/m8-no-port: spec.port: Required value",
        "Server shop/m10-bad-protocol: spec.proxyProtocol: unknown variant `HTTP/3`, expected one of `unknown`, `HTTP/1`, `HTTP/2`, `gRPC`, `opaque`, `TLS`",
        "HTTPRoute shop/m15-relative-path: spec.rules[0].matches[0].path.value: HttpPathMatch paths must be absolute (begin with `/`); \"api\" is not an absolute path",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(&format!("{file}:")) && l.ends_with(want)),
            "missing {want}\n{stderr}"
        );
    }
    let (code, _, stderr) = run(&[&dir.join("does-not-exist")]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot read"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
