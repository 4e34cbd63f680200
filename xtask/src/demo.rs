//! `cargo xtask demo`: two nodes with a pod each, built from namespaces, cgroups, veths and
//! bridges; meshd in standalone mode on both, with mutual TLS; a real HTTP server in one pod
//! and curl in the other. Shows the agents' own account of the connection, that only TLS 1.3
//! crossed the wire between the nodes, and what bpftool sees; then removes everything, also
//! on failure or Ctrl-C.

use std::{process::Command, sync::Arc, time::Duration};

use anyhow::{bail, Context as _};
use meshd_tests::{
    mesh::{config_yaml, identity_init, with_identity, Agent, WireCapture, WorkloadSpec},
    Cluster,
};

fn section(title: &str) {
    println!("\n\x1b[1m== {title}\x1b[0m");
}

fn show(out: std::process::Output) {
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

pub fn run() -> anyhow::Result<()> {
    meshd_tests::require_root()?;
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
    section("building two nodes and two pods out of namespaces");
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

    section("creating the mesh identity (meshd identity init)");
    let ca = identity_init(c, "identity")?;
    println!("trust anchor and issuer in {}", ca.display());

    section("starting meshd on both nodes, with mutual TLS");
    let remote = |p: &meshd_tests::Pod| {
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
    println!("{y1}");
    let agent1 = Agent::start(c, &node1, &y1)?;
    let agent2 = Agent::start(c, &node2, &y2)?;
    println!("meshd is ready on both nodes (admin on 127.0.0.1:15000 in each node's namespace)");

    section("a real HTTP server in pod web (node2), curl in pod client (node1)");
    let site = c.dir().join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(site.join("index.html"), format!("{MARKER}\n"))?;
    let mut server = Command::new("python3");
    server
        .args([
            "-m",
            "http.server",
            "8000",
            "--bind",
            "0.0.0.0",
            "--directory",
        ])
        .arg(&site);
    c.spawn_in_pod(&web, server)?;
    let listening = meshd_tests::wait_until(Duration::from_secs(10), || {
        let mut ss = Command::new("ss");
        ss.args(["-Hltn", "sport", "= :8000"]);
        c.run_in_pod(&web, ss).is_ok_and(|o| !o.stdout.is_empty())
    });
    if !listening {
        bail!("the HTTP server in pod web did not start");
    }
    let wire = WireCapture::start(c)?;
    let url = format!("http://{}:8000/", web.ip);
    println!("$ curl -sS {url}   (in pod client; tcpdump runs on the bridge between the nodes)");
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "10"]).arg(&url);
    let out = c.run_in_pod(&client, curl)?;
    show(out.clone());
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
                "  {:<9} {:<16} peer {:<20} -> {:<20} tls={} client_id={} server_id={}",
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
    let (_, metrics) = agent2.get("/metrics")?;
    println!("\nnode2 /metrics (excerpt):");
    for line in metrics.lines().filter(|l| {
        l.starts_with("identity_cert_expiration_timestamp_seconds")
            || (l.starts_with("response_total") && l.contains("inbound"))
    }) {
        println!("  {line}");
    }

    section("what crossed the wire between the nodes");
    let fields = [
        "ip.src",
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
    let lines = WireCapture::tshark(&wire_file(c), "tls", &fields)?;
    for l in lines.iter().take(8) {
        println!("  {l}");
    }
    if lines.len() > 8 {
        println!("  ... {} TLS packets in all", lines.len());
    }
    let tls13 = lines.iter().any(|l| l.contains("0x0304"));
    let found = pcap.windows(MARKER.len()).any(|w| w == MARKER.as_bytes());
    println!(
        "TLS 1.3 on port 15008: {}",
        if tls13 { "yes" } else { "NO" }
    );
    println!(
        "the page's text {MARKER:?} in the captured bytes: {}",
        if found {
            "FOUND (not encrypted!)"
        } else {
            "no: encrypted"
        }
    );
    if found || !tls13 {
        bail!("the traffic between the nodes was not encrypted as expected");
    }

    section("what bpftool sees on node1");
    show(bpftool(&[
        "cgroup",
        "tree",
        c.cgroup_root().to_str().unwrap_or_default(),
    ])?);
    let pins = agent1.pin_root.join("v1");
    let link = pins.join("links/default_client/sk_lookup");
    show(bpftool(&[
        "link",
        "show",
        "pinned",
        link.to_str().unwrap_or_default(),
    ])?);
    let pods_map = pins.join("maps/MESHD_PODS");
    show(bpftool(&[
        "map",
        "dump",
        "pinned",
        pods_map.to_str().unwrap_or_default(),
    ])?);

    section("stopping meshd (SIGTERM): programs detached, pins removed");
    for agent in [&agent1, &agent2] {
        let status = agent.stop()?;
        let root = agent.pin_root.join("v1");
        println!(
            "meshd on {} exited with {status}; {} exists: {}",
            agent.node.name,
            root.display(),
            root.exists()
        );
    }
    show(bpftool(&[
        "cgroup",
        "tree",
        c.cgroup_root().to_str().unwrap_or_default(),
    ])?);
    Ok(())
}

const MARKER: &str = "hello from the web pod, through meshd, encrypted between the nodes";

fn wire_file(c: &Cluster) -> std::path::PathBuf {
    c.dir().join("wire.pcap")
}
