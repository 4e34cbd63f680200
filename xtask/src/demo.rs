//! `cargo xtask demo`: two nodes with a pod each, built from namespaces, cgroups, veths and
//! bridges; meshd in standalone mode on both, with mutual TLS from `meshd identity init`; a
//! real HTTP server in one pod and curl in the other. Shows the agents' own account of the
//! connection, that only TLS 1.3 to port 15008 crossed the wire between the nodes (and never
//! the page's text), the identity metrics, a certificate the agents refuse, and what bpftool
//! sees; then removes everything, also on failure or Ctrl-C.

use std::{
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};
use meshd_tests::{
    mesh::{config_yaml, meshd_bin, with_identity, Agent, WireCapture, WorkloadSpec},
    Cluster, Node, Pod,
};

use crate::util::target_dir;

/// Flags of `cargo xtask demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Do not run setup first.
    #[arg(long)]
    pub skip_setup: bool,
    /// Do not build; use $MESHD_BIN and $MESHD_TESTAPP (or the debug binaries as they are).
    #[arg(long)]
    pub skip_build: bool,
}

/// Text in the served page, looked for in the captured bytes.
const MARKER: &str = "hello from the web pod, through meshd, encrypted between the nodes";

/// Port of the HTTP server in pod web.
const HTTP_PORT: u16 = 8000;

fn section(title: &str) {
    println!("\n\x1b[1m== {title}\x1b[0m");
}

fn show(out: &std::process::Output) {
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        print!("{err}");
    }
}

fn bpftool(args: &[&str]) -> anyhow::Result<std::process::Output> {
    println!("$ bpftool {}", args.join(" "));
    Command::new("bpftool")
        .args(args)
        .output()
        .context("running bpftool")
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    meshd_tests::require_root()?;
    if !args.skip_setup {
        crate::setup::run()?;
    }
    if !args.skip_build {
        crate::test::build()?;
    }
    // The debug binaries of this workspace, unless the caller chose others.
    let target = target_dir()?;
    for (var, bin) in [("MESHD_BIN", "meshd"), ("MESHD_TESTAPP", "meshd-testapp")] {
        if std::env::var_os(var).is_none() {
            let p = target.join("debug").join(bin);
            if !p.is_file() {
                bail!("{} is missing: build it or set {var}", p.display());
            }
            // Single-threaded here: no other thread reads the environment.
            std::env::set_var(var, &p);
        }
    }

    let cluster = Arc::new(Cluster::new("demo")?);
    let on_signal = cluster.clone();
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: removing the demo's namespaces, cgroups, pins and processes");
        if let Err(e) = on_signal.cleanup() {
            eprintln!("cleanup: {e}");
        }
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;
    let result = demo(&cluster);
    if result.is_err() {
        cluster.dump_logs();
    }
    section("cleaning up");
    let cleanup = cluster.cleanup();
    result?;
    cleanup.map_err(|e| anyhow::anyhow!("cleanup: {e}"))?;
    println!("removed every namespace, cgroup, pin and process the demo created");
    Ok(())
}

fn demo(c: &Cluster) -> anyhow::Result<()> {
    section("two nodes with a pod each, out of namespaces, veths, bridges and cgroups");
    let node1 = c.add_node("node1")?;
    let node2 = c.add_node("node2")?;
    let client = c.add_pod(&node1, "client")?;
    let web = c.add_pod(&node2, "web")?;
    for n in [&node1, &node2] {
        println!(
            "node {}: netns {}, ip {}, pods {}",
            n.name, n.netns, n.ip, n.pod_cidr
        );
    }
    for p in [&client, &web] {
        println!(
            "pod  {} on {}: netns {}, ip {}, cgroup {}",
            p.name,
            p.node,
            p.netns,
            p.ip,
            p.cgroup.display()
        );
    }

    section("the mesh identity: a trust anchor and an issuer");
    let ca = c.dir().join("identity");
    println!("$ meshd identity init --dir {}", ca.display());
    let out = Command::new(meshd_bin())
        .args(["identity", "init", "--dir"])
        .arg(&ca)
        .output()
        .context("running meshd identity init")?;
    show(&out);
    if !out.status.success() {
        bail!("meshd identity init failed");
    }

    section("meshd on both nodes, with identity: configured");
    let remote = |p: &Pod| {
        let mut w = WorkloadSpec::new(p);
        w.remote = true;
        w
    };
    let anchors = ca.join("ca.crt");
    let y1 = with_identity(
        &config_yaml(c, &node1, &[WorkloadSpec::new(&client), remote(&web)], &[]),
        &anchors,
        &ca,
        86_400,
    );
    let y2 = with_identity(
        &config_yaml(c, &node2, &[remote(&client), WorkloadSpec::new(&web)], &[]),
        &anchors,
        &ca,
        86_400,
    );
    println!("node1's config (node2's is the mirror image: web local, client remote):");
    print!("{y1}");
    let agent1 = Agent::start(c, &node1, &y1)?;
    let agent2 = Agent::start(c, &node2, &y2)?;
    println!("meshd is ready on both nodes (admin on 127.0.0.1:15000 in each node's namespace)");
    println!(
        "$ meshd check --config {} | grep -E 'trust anchor|issuer'",
        agent1.config_path.display()
    );
    let out = Command::new(meshd_bin())
        .args(["check", "--config"])
        .arg(&agent1.config_path)
        .output()
        .context("running meshd check")?;
    for l in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("trust anchor") || l.contains("issuer"))
    {
        println!("{l}");
    }

    section("a real HTTP server in pod web (node2), curl in pod client (node1)");
    let site = c.dir().join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(site.join("index.html"), format!("{MARKER}\n"))?;
    let mut server = Command::new("python3");
    server
        .args(["-m", "http.server", &HTTP_PORT.to_string(), "--bind"])
        .args(["0.0.0.0", "--directory"])
        .arg(&site);
    c.spawn_in_pod(&web, server)?;
    let listening = meshd_tests::wait_until(Duration::from_secs(10), || {
        let mut ss = Command::new("ss");
        ss.args(["-Hltn", "sport", &format!("= :{HTTP_PORT}")]);
        c.run_in_pod(&web, ss).is_ok_and(|o| !o.stdout.is_empty())
    });
    if !listening {
        bail!("the HTTP server in pod web did not start");
    }
    let wire = WireCapture::start(c)?;
    let url = format!("http://{}:{HTTP_PORT}/", web.ip);
    println!("$ curl -sS {url}   (in pod client; tcpdump runs on the bridge between the nodes)");
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "10"]).arg(&url);
    let out = c.run_in_pod(&client, curl)?;
    show(&out);
    let pcap_file = wire.file.clone();
    let pcap = wire.stop()?;
    if !out.status.success() {
        bail!("curl failed");
    }

    section("the agents' own account (GET /connections on each admin port)");
    std::thread::sleep(Duration::from_millis(200));
    for (name, agent) in [("node1", &agent1), ("node2", &agent2)] {
        println!("{name}:");
        for r in agent.connections()? {
            println!(
                "  {:<9} {:<15} peer {:<17} -> {:<16} tls={}\n            client_id={}\n            server_id={}",
                r["direction"].as_str().unwrap_or(""),
                r["workload"].as_str().unwrap_or(""),
                r["peer"].as_str().unwrap_or(""),
                r["orig_dst"].as_str().unwrap_or(""),
                r["tls"],
                r["client_id"].as_str().unwrap_or("-"),
                r["server_id"].as_str().unwrap_or("-"),
            );
        }
    }

    section("what crossed the wire between the nodes");
    wire_report(&pcap_file, &pcap)?;

    section("workload certificates (GET /metrics)");
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    for (name, agent) in [("node1", &agent1), ("node2", &agent2)] {
        let (_, metrics) = agent.get("/metrics")?;
        for line in metrics.lines().filter(|l| l.starts_with("identity_cert_")) {
            let hours = line
                .starts_with("identity_cert_expiration_timestamp_seconds")
                .then(|| line.rsplit(' ').next()?.parse::<f64>().ok())
                .flatten()
                .map(|t| format!("   (in {:.1} h)", (t - now) / 3600.0))
                .unwrap_or_default();
            println!("{name}: {line}{hours}");
        }
    }

    section("meshd diagnostics hbone: a tunnel by hand, then an expired certificate");
    if probe(c, &node1, &ca, &web, &[])?["ok"] != true {
        bail!("a tunnel with a valid certificate was refused");
    }
    let expired = ["--not-before-secs", "-7200", "--not-after-secs", "-3600"];
    if probe(c, &node1, &ca, &web, &expired)?["ok"] != false {
        bail!("a tunnel with an expired certificate was accepted");
    }
    // The refusal is counted by node2's agent (the server side of the handshake).
    let mut metrics = String::new();
    meshd_tests::wait_until(Duration::from_secs(3), || {
        metrics = agent2.get("/metrics").map(|(_, m)| m).unwrap_or_default();
        metrics.contains("reason=\"expired\"")
    });
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("hbone_rejected_total"))
    {
        println!("node2: {line}");
    }

    section("what bpftool sees (both nodes run on this one kernel)");
    let cgroups = c.cgroup_root().to_str().unwrap_or_default();
    show(&bpftool(&["cgroup", "tree", cgroups])?);
    let pins = agent1.pin_root.join("v2");
    let link = pins.join("links/default_client/sk_lookup");
    show(&bpftool(&[
        "link",
        "show",
        "pinned",
        link.to_str().unwrap_or_default(),
    ])?);

    section("stopping meshd (SIGTERM; the capture stays for a next agent), then meshd uninstall: programs detached, pins removed");
    for agent in [&agent1, &agent2] {
        let status = agent.stop()?;
        let root = agent.pin_root.join("v2");
        println!(
            "meshd on {} exited with {status}; {} exists: {}",
            agent.node.name,
            root.display(),
            root.exists()
        );
    }
    show(&bpftool(&["cgroup", "tree", cgroups])?);
    Ok(())
}

/// The tshark summary of the capture, and the checks: a TLS 1.3 ServerHello from port
/// 15008, no TCP payload on any other port, and the page's text nowhere in the bytes.
fn wire_report(file: &Path, pcap: &[u8]) -> anyhow::Result<()> {
    let fields = [
        "ip.src",
        "tcp.srcport",
        "ip.dst",
        "tcp.dstport",
        "tls.handshake.type",
        "tls.handshake.extensions.supported_version",
        "tls.record.opaque_type",
    ];
    println!(
        "$ tshark -r wire.pcap -Y tls -T fields -e {}",
        fields.join(" -e ")
    );
    let lines = WireCapture::tshark(file, "tls", &fields)?;
    println!(
        "  {:<40} {:<18} {:<9} record types",
        "", "handshake type", "version"
    );
    let mut server_hello_13 = false;
    for (i, l) in lines.iter().enumerate() {
        let f: Vec<&str> = l.split('\t').collect();
        let get = |n: usize| f.get(n).copied().unwrap_or("");
        let hs = get(4);
        let named = match hs {
            "1" => "1 (ClientHello)",
            "2" => "2 (ServerHello)",
            other => other,
        };
        if get(1) == "15008" && hs.split(',').any(|t| t == "2") && get(5).contains("0x0304") {
            server_hello_13 = true;
        }
        if i < 8 {
            let flow = format!("{}:{} -> {}:{}", get(0), get(1), get(2), get(3));
            println!("  {flow:<40} {named:<18} {:<9} {}", get(5), get(6));
        }
    }
    if lines.len() > 8 {
        println!(
            "  ... {} TLS packets in all (record type 23: application data, encrypted)",
            lines.len()
        );
    }
    let elsewhere = WireCapture::tshark(
        file,
        "tcp.len > 0 && !(tcp.port == 15008)",
        &["frame.number"],
    )?;
    let found = pcap.windows(MARKER.len()).any(|w| w == MARKER.as_bytes());
    println!(
        "TLS 1.3 ServerHello from port 15008 (HBONE): {}",
        if server_hello_13 { "yes" } else { "NO" }
    );
    println!(
        "TCP payload on any port other than 15008: {} packets",
        elsewhere.len()
    );
    println!(
        "the page's text {MARKER:?} in the {} captured bytes: {}",
        pcap.len(),
        if found {
            "FOUND (not encrypted!)"
        } else {
            "not there: the traffic between the nodes is encrypted"
        }
    );
    if found || !server_hello_13 || !elsewhere.is_empty() {
        bail!("the traffic between the nodes was not encrypted as expected");
    }
    Ok(())
}

/// `meshd diagnostics hbone` from node1's namespace (outside any pod, so not captured) to
/// the web pod's port 15008, as `spiffe://cluster.local/ns/default/sa/probe`.
fn probe(
    c: &Cluster,
    node: &Node,
    ca: &Path,
    web: &Pod,
    extra: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let connect = format!("{}:15008", web.ip);
    let authority = format!("{}:{HTTP_PORT}", web.ip);
    let args: Vec<&str> = [
        "diagnostics",
        "hbone",
        "--trust-anchors",
        "ca.crt",
        "--issuer-cert",
        "issuer.crt",
        "--issuer-key",
        "issuer.key",
        "--identity",
        "spiffe://cluster.local/ns/default/sa/probe",
        "--expect-server",
        "spiffe://cluster.local/ns/default/sa/web",
        "--connect",
        &connect,
        "--authority",
        &authority,
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .collect();
    println!(
        "$ cd {} && meshd {}   (in node1's namespace)",
        ca.display(),
        args.join(" ")
    );
    let mut cmd = Command::new(meshd_bin());
    cmd.current_dir(ca).args(&args);
    let out = c.run_in_node(node, cmd)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(line).with_context(|| {
        format!(
            "meshd diagnostics hbone printed no JSON: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    println!("{line}");
    Ok(v)
}
