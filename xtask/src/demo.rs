//! `cargo xtask demo`: two pods on one node, built from namespaces, cgroups, veths and a
//! bridge; the agent in standalone mode; a real HTTP server in one pod and curl in the
//! other. Shows the agent's own account of the connection and what bpftool sees, then
//! removes everything, also on failure or Ctrl-C.

use std::{process::Command, sync::Arc, time::Duration};

use anyhow::{bail, Context as _};
use meshd_tests::{
    mesh::{config_yaml, Agent, WorkloadSpec},
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
    section("building a node with two pods out of namespaces");
    let node = c.add_node("node1")?;
    let web = c.add_pod(&node, "web")?;
    let client = c.add_pod(&node, "client")?;
    println!("node {}: netns {}, ip {}", node.name, node.netns, node.ip);
    for p in [&web, &client] {
        println!(
            "pod  {}: netns {}, ip {}, cgroup {}",
            p.name,
            p.netns,
            p.ip,
            p.cgroup.display()
        );
    }

    section("starting meshd in standalone mode");
    let yaml = config_yaml(
        c,
        &node,
        &[WorkloadSpec::new(&web), WorkloadSpec::new(&client)],
        &[],
    );
    println!("{yaml}");
    let agent = Agent::start(c, &node, &yaml)?;
    println!("meshd is ready (admin on 127.0.0.1:15000 in the node's namespace)");

    section("a real HTTP server in pod web, curl in pod client");
    let site = c.dir().join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(
        site.join("index.html"),
        "hello from the web pod, through meshd\n",
    )?;
    let mut server = Command::new("python3");
    server
        .args([
            "-m",
            "http.server",
            "8080",
            "--bind",
            "0.0.0.0",
            "--directory",
        ])
        .arg(&site);
    c.spawn_in_pod(&web, server)?;
    let listening = meshd_tests::wait_until(Duration::from_secs(10), || {
        let mut ss = Command::new("ss");
        ss.args(["-Hltn", "sport", "= :8080"]);
        c.run_in_pod(&web, ss).is_ok_and(|o| !o.stdout.is_empty())
    });
    if !listening {
        bail!("the HTTP server in pod web did not start");
    }
    let url = format!("http://{}:8080/", web.ip);
    println!("$ curl -sS {url}   (in pod client)");
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "10"]).arg(&url);
    let out = c.run_in_pod(&client, curl)?;
    show(out.clone());
    if !out.status.success() {
        bail!("curl failed");
    }

    section("the agent's own account (GET /connections on the admin port)");
    std::thread::sleep(Duration::from_millis(200));
    println!(
        "{:<9} {:<16} {:<22} {:<22} {:<22} {:>7} {:>7}",
        "DIRECTION", "WORKLOAD", "PEER", "ORIGINAL DST", "AGENT CONNECTED TO", "SENT", "RECV"
    );
    for r in agent.connections()? {
        println!(
            "{:<9} {:<16} {:<22} {:<22} {:<22} {:>7} {:>7}",
            r["direction"].as_str().unwrap_or(""),
            r["workload"].as_str().unwrap_or(""),
            r["peer"].as_str().unwrap_or(""),
            r["orig_dst"].as_str().unwrap_or(""),
            r["target"].as_str().unwrap_or("-"),
            r["bytes_sent"],
            r["bytes_received"],
        );
    }
    let log = agent.proc.stderr();
    println!("\nagent log lines about it (eBPF logs come through aya-log into tracing):");
    for line in log
        .lines()
        .filter(|l| l.contains("connect4: capture") || l.contains("connection closed"))
    {
        println!("  {line}");
    }

    section("what bpftool sees");
    show(bpftool(&[
        "cgroup",
        "tree",
        c.cgroup_root().to_str().unwrap_or_default(),
    ])?);
    show(bpftool(&["prog", "show", "name", "meshd_sk_lookup"])?);
    let pins = agent.pin_root.join("v1");
    println!("$ find {} (the pins)", pins.display());
    show(Command::new("find").arg(&pins).output()?);
    let pods_map = pins.join("maps/MESHD_PODS");
    show(bpftool(&[
        "map",
        "dump",
        "pinned",
        pods_map.to_str().unwrap_or_default(),
    ])?);
    let link = pins.join("links/default_web/sk_lookup");
    show(bpftool(&[
        "link",
        "show",
        "pinned",
        link.to_str().unwrap_or_default(),
    ])?);

    section("stopping meshd (SIGTERM): programs detached, pins removed");
    let status = agent.stop()?;
    println!(
        "meshd exited with {status}; {} exists: {}",
        pins.display(),
        pins.exists()
    );
    show(bpftool(&[
        "cgroup",
        "tree",
        c.cgroup_root().to_str().unwrap_or_default(),
    ])?);
    Ok(())
}
