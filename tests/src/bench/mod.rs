//! `cargo xtask bench`: what the mesh costs, measured side by side on one machine.
//!
//! [`run`] builds a cluster of namespaces with two nodes, a client pod on node `n1` and a
//! server pod on node `n2`, starts the servers once in the server pod (iperf3, the test
//! app's echo server, its HTTP/1.1 responder, nghttpd for h2c, a connection sink) and then,
//! for each mode, sets the agents up, runs the same clients in the client pod against the
//! server pod's address, and takes the agents down again:
//!
//! - `direct`: no agent: the physical limit of this machine.
//! - `passthrough`: an agent on each node enrolling its pod and listing the other as a
//!   remote workload, no identity: plain TCP through both agents (outbound capture on `n1`,
//!   inbound capture on `n2`).
//! - `mtls`: the same plus an `identity:` section (files from `meshd identity init`):
//!   HBONE between the nodes. Checked: the server pod has a connection on port 15008.
//! - `mtls-http`: `mtls`, checked to parse HTTP (an agent's `/metrics` has `request_total`
//!   after a probe request).
//!
//! A mode the agent cannot do yet is reported as unavailable with the reason, and the run
//! goes on. Every figure is in the [`Report`]; see [`report::METRICS`].

mod report;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

pub use report::{
    compare, fmt_value, metric, Machine, Metric, ModeReport, Report, RunSettings, Target, METRICS,
    MODES,
};

use crate::mesh::{config_yaml, meshd_bin, testapp_bin, Agent, WorkloadSpec};
use crate::{wait_until, Cluster, Node, Pod, ProcHandle};

const ECHO_PORT: u16 = 7000;
const SINK_PORT: u16 = 7001;
const HTTP1_PORT: u16 = 8080;
const HTTP2_PORT: u16 = 8081;
const IPERF_PORT: u16 = 5201;
/// In `relay` mode, the server pod's relay listens on each server port plus this.
const RELAY_OFFSET: u16 = 1000;

/// What to run and how long.
#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    /// Modes to run, a subset of [`MODES`]; `direct` is always run first.
    pub modes: Vec<String>,
    /// Seconds per throughput, latency, connection-rate and HTTP measurement.
    pub duration_secs: u64,
    /// Requests per second of the latency measurement.
    pub rate: u64,
    pub cps_concurrency: u64,
    pub http_concurrency: u64,
    /// Extra pods enrolled on the client's node for the memory measurement.
    pub pods: u64,
    /// Connections held for the memory measurement, and the larger count.
    pub conns: u64,
    pub conns_max: u64,
    /// HTTP/1.1 requests over which the agents' CPU time is measured.
    pub cpu_requests: u64,
    /// Worker threads per agent (`meshd run --workers`); `None` leaves the agent's default.
    pub agent_workers: Option<u16>,
    /// TCP congestion control for the run's namespaces (`net.ipv4.tcp_congestion_control`,
    /// which the apps' and the agents' sockets take); `None` keeps the machine's default.
    pub congestion_control: Option<String>,
    /// Print progress to stderr.
    pub verbose: bool,
}

/// Worker threads per agent by default: the two simulated nodes share this machine's
/// cores (with the clients and servers), so each agent gets the share one node would have,
/// half of the cores, at least one.
pub fn default_agent_workers() -> u16 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u16::try_from((cores / 2).max(1)).unwrap_or(u16::MAX)
}

impl Options {
    /// The full run: 10 s per measurement, 100 pods, 1,000 and 10,000 connections.
    pub fn full() -> Options {
        Options {
            quick: false,
            modes: MODES.iter().map(|m| m.to_string()).collect(),
            duration_secs: 10,
            rate: 1000,
            cps_concurrency: 4,
            http_concurrency: 32,
            pods: 100,
            conns: 1000,
            conns_max: 10_000,
            cpu_requests: 50_000,
            agent_workers: Some(default_agent_workers()),
            congestion_control: None,
            verbose: true,
        }
    }

    /// `--quick`: about a second per measurement, 10 pods, 500 and 1,000 connections.
    pub fn quick() -> Options {
        Options {
            quick: true,
            duration_secs: 1,
            pods: 10,
            conns: 500,
            conns_max: 1000,
            cpu_requests: 5000,
            ..Options::full()
        }
    }

    /// `congestion_control`: the algorithm the run's sockets used (read back from the client
    /// pod).
    fn settings(&self, congestion_control: String) -> RunSettings {
        RunSettings {
            quick: self.quick,
            duration_secs: self.duration_secs,
            rate: self.rate,
            cps_concurrency: self.cps_concurrency,
            http_concurrency: self.http_concurrency,
            pods: self.pods,
            conns: self.conns,
            conns_max: self.conns_max,
            cpu_requests: self.cpu_requests,
            agent_workers: self.agent_workers.map_or(0, u64::from),
            congestion_control,
        }
    }
}

static RUNNING: Mutex<Option<Arc<Cluster>>> = Mutex::new(None);

thread_local! {
    /// Bench clusters [`run`] started to build on this thread.
    static CLUSTERS_STARTED: Cell<u64> = const { Cell::new(0) };
}

/// How many times [`run`] has started building a cluster on the calling thread (for the
/// test that a refused run builds nothing).
pub fn clusters_started_on_this_thread() -> u64 {
    CLUSTERS_STARTED.with(Cell::get)
}

/// Open files the agents may hold: a plain relay holds two sockets per connection, so
/// 10,000 held connections need more than 20,000 (a DaemonSet's container runtime usually
/// gives 1,048,576).
const FD_LIMIT: u64 = 65_536;

/// Raises this process's open-files limits (soft and hard) to at least `want`, within the
/// kernel's `fs.nr_open`; the agents and apps the bench starts inherit them.
fn raise_fd_limit(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(want);
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let hard = hard.max(want.min(nr_open));
        let soft = soft.max(hard);
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, soft, hard) {
            eprintln!("bench: cannot raise the open-files limit to {hard}: {e}");
        }
    }
}

/// Removes the cluster of a run in progress (for a Ctrl-C handler).
pub fn cleanup_running() {
    let c = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(c) = c {
        if let Err(e) = c.cleanup() {
            eprintln!("bench cleanup: {e}");
        }
    }
}

fn machine() -> Machine {
    let agent = meshd_bin();
    let build = |p: &Path| {
        if p.components().any(|c| c.as_os_str() == "release") {
            "release"
        } else if p.components().any(|c| c.as_os_str() == "debug") {
            "debug"
        } else {
            "unknown"
        }
        .to_string()
    };
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get() as u64),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        agent_build: build(&agent),
        agent_binary: agent.display().to_string(),
        testapp_binary: testapp_bin().display().to_string(),
    }
}

/// Runs the benchmark. Fails only when the cluster or the servers cannot be set up; a
/// mode the agent cannot do is reported unavailable, a measurement that fails is left out
/// and explained in the mode's notes.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    crate::require_root()?;
    for m in &opts.modes {
        if !MODES.contains(&m.as_str()) {
            bail!("unknown mode {m:?} (modes: {})", MODES.join(", "));
        }
    }
    if let Some(cc) = &opts.congestion_control {
        check_congestion_control(cc)?;
    }
    raise_fd_limit(FD_LIMIT);
    CLUSTERS_STARTED.with(|n| n.set(n.get() + 1));
    let cluster = Arc::new(Cluster::new("bench")?);
    *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = Some(cluster.clone());
    let result = run_in(&cluster, opts);
    if result.is_err() {
        cluster.dump_logs();
    }
    RUNNING.lock().unwrap_or_else(|e| e.into_inner()).take();
    let cleanup = cluster.cleanup();
    let report = result?;
    cleanup.map_err(|e| anyhow::anyhow!("cleaning up the bench cluster: {e}"))?;
    Ok(report)
}

struct Ctx<'a> {
    c: &'a Cluster,
    o: &'a Options,
    n1: Node,
    n2: Node,
    client: Pod,
    server: Pod,
    mem_pods: Vec<Pod>,
    identity: Option<Result<PathBuf, String>>,
    /// `relay` mode: clients connect to the relay on their own loopback.
    relay: bool,
}

impl Ctx<'_> {
    fn say(&self, msg: &str) {
        if self.o.verbose {
            eprintln!("bench: {msg}");
        }
    }

    /// The address clients connect to: the server pod's, or in `relay` mode the relay's on
    /// the client pod's loopback.
    fn host(&self) -> String {
        if self.relay {
            "127.0.0.1".to_string()
        } else {
            self.server.ip.to_string()
        }
    }

    fn dst(&self, port: u16) -> String {
        format!("{}:{port}", self.host())
    }
}

fn run_in(c: &Cluster, o: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let n1 = c.add_node("n1")?;
    let n2 = c.add_node("n2")?;
    let client = c.add_pod(&n1, "client")?;
    let server = c.add_pod(&n2, "server")?;
    let mut ctx = Ctx {
        c,
        o,
        n1,
        n2,
        client,
        server,
        mem_pods: Vec::new(),
        identity: None,
        relay: false,
    };
    for ns in [
        &ctx.n1.netns_path,
        &ctx.n2.netns_path,
        &ctx.client.netns_path,
        &ctx.server.netns_path,
    ] {
        tune_netns(c, ns, o.congestion_control.as_deref())?;
    }
    let congestion_control = c
        .in_netns(&ctx.client.netns_path, || {
            std::fs::read_to_string(CONGESTION_CONTROL).map(|s| s.trim().to_string())
        })?
        .context("reading the client pod's TCP congestion control")?;
    start_servers(&ctx)?;
    let mut modes = vec!["direct".to_string()];
    modes.extend(o.modes.iter().filter(|m| *m != "direct").cloned());
    let mut reports = Vec::new();
    for mode in &modes {
        ctx.say(&format!("== {mode}"));
        reports.push(run_mode(&mut ctx, mode));
    }
    let mut report = Report {
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        machine: machine(),
        settings: o.settings(congestion_control),
        modes: reports,
        targets: Vec::new(),
    };
    report.compute_targets();
    ctx.say(&format!("done in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(report)
}

const CONGESTION_CONTROL: &str = "/proc/sys/net/ipv4/tcp_congestion_control";
const AVAILABLE_CONGESTION_CONTROL: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";

/// Fails unless `name` is one of the machine's TCP congestion control algorithms, before
/// anything is built.
fn check_congestion_control(name: &str) -> anyhow::Result<()> {
    let available = std::fs::read_to_string(AVAILABLE_CONGESTION_CONTROL)
        .with_context(|| format!("reading {AVAILABLE_CONGESTION_CONTROL}"))?;
    if !available.split_whitespace().any(|a| a == name) {
        bail!(
            "TCP congestion control {name:?} is not available on this machine (available: {})",
            available.trim()
        );
    }
    Ok(())
}

/// TIME_WAIT reuse and a wide port range, so that the connection-rate measurement does not
/// run out of ports (sysctls of the namespace). The range starts above the agent's ports
/// (15000-15008) and the servers', so that no left-over connection holds one of them. And
/// the congestion control chosen for the run, if any.
fn tune_netns(c: &Cluster, ns: &Path, congestion_control: Option<&str>) -> anyhow::Result<()> {
    c.in_netns(ns, || -> std::io::Result<()> {
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")?;
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "20000 65000")?;
        if let Some(cc) = congestion_control {
            std::fs::write(CONGESTION_CONTROL, cc)?;
        }
        Ok(())
    })?
    .with_context(|| format!("setting sysctls in {}", ns.display()))
}

fn wait_listening(c: &Cluster, pod: &Pod, port: u16, what: &str) -> anyhow::Result<()> {
    let ok = wait_until(Duration::from_secs(10), || {
        c.in_netns(&pod.netns_path, || {
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(200),
            )
            .is_ok()
        })
        .unwrap_or(false)
    });
    if !ok {
        bail!("{what} does not listen on port {port} in pod {}", pod.name);
    }
    Ok(())
}

fn spawn_server(ctx: &Ctx<'_>, cmd: Command, port: u16, what: &str) -> anyhow::Result<ProcHandle> {
    let h = ctx
        .c
        .spawn_in_pod(&ctx.server, cmd)
        .with_context(|| format!("starting {what}"))?;
    wait_listening(ctx.c, &ctx.server, port, what)
        .map_err(|e| anyhow::anyhow!("{e:#}{}", h.output_tail()))?;
    Ok(h)
}

/// `relay` mode: a `meshd-testapp relay` in the client pod on 127.0.0.1:PORT for each server
/// port, to one in the server pod on PORT + [`RELAY_OFFSET`], to the server on 127.0.0.1:PORT.
fn start_relays(ctx: &Ctx<'_>) -> anyhow::Result<Vec<ProcHandle>> {
    let mut procs = Vec::new();
    let res = (|| -> anyhow::Result<()> {
        for port in [ECHO_PORT, IPERF_PORT, HTTP1_PORT, HTTP2_PORT] {
            let far = port + RELAY_OFFSET;
            let h = ctx.c.spawn_in_pod(
                &ctx.server,
                testapp(&[
                    "relay",
                    "--listen",
                    &format!("0.0.0.0:{far}"),
                    "--connect",
                    &format!("127.0.0.1:{port}"),
                ]),
            )?;
            procs.push(h);
            wait_listening(ctx.c, &ctx.server, far, "relay in the server pod")?;
            let h = ctx.c.spawn_in_pod(
                &ctx.client,
                testapp(&[
                    "relay",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--connect",
                    &format!("{}:{far}", ctx.server.ip),
                ]),
            )?;
            procs.push(h);
            wait_listening(ctx.c, &ctx.client, port, "relay in the client pod")?;
        }
        Ok(())
    })();
    match res {
        Ok(()) => Ok(procs),
        Err(e) => {
            for p in procs {
                let _ = p.kill();
            }
            Err(e)
        }
    }
}

fn testapp(args: &[&str]) -> Command {
    let mut cmd = Command::new(testapp_bin());
    cmd.args(args);
    cmd
}

fn start_servers(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    ctx.say("starting the servers in the server pod");
    let listen = |p: u16| format!("0.0.0.0:{p}");
    spawn_server(
        ctx,
        testapp(&["serve", "--listen", &listen(ECHO_PORT)]),
        ECHO_PORT,
        "echo server",
    )?;
    spawn_server(
        ctx,
        testapp(&["http-serve", "--listen", &listen(HTTP1_PORT)]),
        HTTP1_PORT,
        "HTTP/1.1 server",
    )?;
    let mut iperf = Command::new("iperf3");
    iperf.args(["-s", "-p", &IPERF_PORT.to_string()]);
    spawn_server(ctx, iperf, IPERF_PORT, "iperf3 server")?;
    let docroot = ctx.c.dir().join("htdocs");
    std::fs::create_dir_all(&docroot)?;
    std::fs::write(docroot.join("index.html"), "hello world\n")?;
    let mut nghttpd = Command::new("nghttpd");
    nghttpd
        .args(["--no-tls", "-n", "2", "-d"])
        .arg(&docroot)
        .arg(HTTP2_PORT.to_string());
    if let Err(e) = spawn_server(ctx, nghttpd, HTTP2_PORT, "nghttpd (h2c)") {
        // Measured as an error per mode (noted), not fatal.
        ctx.say(&format!("warning: {e:#}"));
    }
    Ok(())
}

/// A mode's agents, up for the duration of the mode.
struct Agents {
    list: Vec<Agent>,
}

impl Agents {
    fn pids(&self) -> Vec<u32> {
        self.list.iter().map(|a| a.proc.pid()).collect()
    }
}

fn run_mode(ctx: &mut Ctx<'_>, mode: &str) -> ModeReport {
    let description = match mode {
        "direct" => "no agent: client pod on n1 -> server pod on n2, the machine's limit",
        "relay" => "no agent; a minimal user-space relay where each agent's sockets are (client pod loopback -> relay -> server pod -> relay -> server): what any proxy pair costs here",
        "passthrough" => "an agent per node, no identity: plain TCP through both agents (outbound capture on n1, inbound capture on n2)",
        "mtls" => "an agent per node with identity: HBONE (HTTP/2 CONNECT over mutual TLS) between the nodes",
        "mtls-http" => "as mtls, with HTTP parsed and counted by the agents (request_total in /metrics)",
        _ => "?",
    };
    let mut r = ModeReport::new(mode, description);
    if mode == "relay" {
        match start_relays(ctx) {
            Ok(relays) => {
                ctx.relay = true;
                measure_traffic(ctx, &mut r);
                ctx.relay = false;
                for p in relays {
                    let _ = p.kill();
                }
            }
            Err(e) => {
                ctx.say(&format!("relay: unavailable: {e:#}"));
                r.unavailable = Some(format!("{e:#}"));
            }
        }
        return r;
    }
    let agents = if mode == "direct" {
        Agents { list: Vec::new() }
    } else {
        match setup_agents(ctx, mode) {
            Ok(a) => a,
            Err(why) => {
                ctx.say(&format!("{mode}: unavailable: {why}"));
                r.unavailable = Some(why);
                return r;
            }
        }
    };
    if !agents.list.is_empty() {
        std::thread::sleep(Duration::from_secs(1));
        record_rss(&mut r, &agents, "agent_rss_idle_mb", "idle");
        if let Err(why) = probe(ctx, mode, &agents) {
            ctx.say(&format!("{mode}: unavailable: {why}"));
            r.unavailable = Some(why);
            stop_agents(ctx, &agents, &mut r);
            return r;
        }
    }
    measure_traffic(ctx, &mut r);
    if !agents.list.is_empty() {
        measure_cpu(ctx, &agents, &mut r);
        if let Err(e) = measure_memory(ctx, mode, &agents, &mut r) {
            r.notes
                .push(format!("memory with pods and connections: {e:#}"));
        }
        stop_agents(ctx, &agents, &mut r);
    }
    r
}

fn note(r: &mut ModeReport, what: &str, res: anyhow::Result<()>) {
    if let Err(e) = res {
        r.notes.push(format!("{what}: {e:#}"));
    }
}

fn measure_traffic(ctx: &Ctx<'_>, r: &mut ModeReport) {
    for streams in [1u32, 8] {
        ctx.say(&format!("{}: bulk throughput, {streams} stream(s)", r.mode));
        let res = throughput(ctx, streams, r);
        note(r, &format!("throughput with {streams} streams"), res);
    }
    ctx.say(&format!("{}: request/response latency", r.mode));
    let res = latency(ctx, r, Cpus::AsTheyAre);
    note(r, "latency", res);
    ctx.say(&format!(
        "{}: request/response latency, CPUs kept out of idle",
        r.mode
    ));
    let res = latency(ctx, r, Cpus::KeptBusy);
    note(r, "latency with the CPUs kept out of idle", res);
    ctx.say(&format!("{}: connections per second", r.mode));
    let res = cps(ctx, r);
    note(r, "connections per second", res);
    for h2 in [false, true] {
        ctx.say(&format!(
            "{}: HTTP/{} requests per second",
            r.mode,
            if h2 { 2 } else { 1 }
        ));
        let res = http_rps(ctx, h2, r);
        note(r, if h2 { "HTTP/2" } else { "HTTP/1.1" }, res);
    }
}

// ------------------------------------------------------------------------- agents

fn identity_dir(ctx: &mut Ctx<'_>) -> Result<PathBuf, String> {
    if let Some(r) = &ctx.identity {
        return r.clone();
    }
    let dir = ctx.c.dir().join("identity");
    let r = (|| {
        let out = Command::new(meshd_bin())
            .args(["identity", "init", "--dir"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("running meshd identity init: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`meshd identity init` failed ({}): {}",
                out.status,
                first_error_line(&String::from_utf8_lossy(&out.stderr))
            ));
        }
        for f in ["ca.crt", "issuer.crt", "issuer.key"] {
            if !dir.join(f).is_file() {
                return Err(format!("`meshd identity init` did not write {f}"));
            }
        }
        Ok(dir)
    })();
    ctx.identity = Some(r.clone());
    r
}

/// The last `n` lines of a log, joined with " / ".
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

fn first_error_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let l = lines
        .iter()
        .find(|l| l.to_ascii_lowercase().contains("error"))
        .or(lines.first())
        .copied()
        .unwrap_or("(no output)");
    l.chars().take(300).collect()
}

/// Ports never parsed as HTTP in `mode`: the raw TCP tools always (the sink speaks first);
/// the HTTP servers too, except in `mtls-http`, where the agents parse HTTP on both sides.
fn opaque_ports(mode: &str) -> Vec<u16> {
    let mut ports = vec![ECHO_PORT, SINK_PORT, IPERF_PORT];
    if mode != "mtls-http" {
        ports.extend([HTTP1_PORT, HTTP2_PORT]);
    }
    ports
}

fn agent_yaml(
    ctx: &Ctx<'_>,
    node: &Node,
    local: &[&Pod],
    remote: &Pod,
    identity: Option<&Path>,
    mode: &str,
) -> String {
    let opaque = opaque_ports(mode);
    let mut w: Vec<WorkloadSpec> = local
        .iter()
        .map(|p| WorkloadSpec::new(p).opaque(Some(&opaque)))
        .collect();
    let mut r = WorkloadSpec::new(remote).opaque(Some(&opaque));
    r.remote = true;
    w.push(r);
    let mut y = config_yaml(ctx.c, node, &w, &[]);
    if let Some(d) = identity {
        y.push_str(&format!(
            "identity:\n  trustAnchors: {}\n  issuerCertificate: {}\n  issuerKey: {}\n",
            d.join("ca.crt").display(),
            d.join("issuer.crt").display(),
            d.join("issuer.key").display()
        ));
    }
    y
}

/// Starts `meshd run` in a node with warnings-only logging (the tests' debug logging
/// would cost as much as the proxying) and waits until it is ready.
fn start_agent(
    c: &Cluster,
    node: &Node,
    yaml: &str,
    workers: Option<u16>,
) -> Result<Agent, String> {
    let config_path = c.dir().join(format!("meshd-{}.yaml", node.name));
    std::fs::write(&config_path, yaml).map_err(|e| format!("writing the config: {e}"))?;
    let mut cmd = Command::new(meshd_bin());
    cmd.args(["--log", "warn", "run", "--config"])
        .arg(&config_path);
    if let Some(n) = workers {
        cmd.arg("--workers").arg(n.to_string());
    }
    let proc = c
        .spawn_in_node(node, cmd)
        .map_err(|e| format!("starting meshd: {e:#}"))?;
    let agent = Agent {
        node: node.clone(),
        proc,
        config_path,
        pin_root: c.pin_root(node),
    };
    wait_until(Duration::from_secs(20), || {
        !agent.proc.is_running() || matches!(agent.get("/ready"), Ok((200, _)))
    });
    if !agent.proc.is_running() {
        return Err(format!(
            "the agent on {} refused the config: {}",
            node.name,
            first_error_line(&agent.proc.stderr())
        ));
    }
    if !matches!(agent.get("/ready"), Ok((200, _))) {
        let _ = agent.proc.kill();
        return Err(format!(
            "the agent on {} did not become ready in 20 s",
            node.name
        ));
    }
    Ok(agent)
}

fn setup_agents(ctx: &mut Ctx<'_>, mode: &str) -> Result<Agents, String> {
    let identity = if mode.starts_with("mtls") {
        Some(identity_dir(ctx)?)
    } else {
        None
    };
    let y1 = agent_yaml(
        ctx,
        &ctx.n1,
        &[&ctx.client],
        &ctx.server,
        identity.as_deref(),
        mode,
    );
    let y2 = agent_yaml(
        ctx,
        &ctx.n2,
        &[&ctx.server],
        &ctx.client,
        identity.as_deref(),
        mode,
    );
    let a1 = start_agent(ctx.c, &ctx.n1, &y1, ctx.o.agent_workers)?;
    let a2 = match start_agent(ctx.c, &ctx.n2, &y2, ctx.o.agent_workers) {
        Ok(a) => a,
        Err(e) => {
            let _ = a1.stop();
            return Err(e);
        }
    };
    // Ready means configured; wait until each agent has enrolled its pod too.
    for a in [&a1, &a2] {
        if !wait_until(Duration::from_secs(20), || enrolled(a) >= 1) {
            let why = format!(
                "the agent on {} did not enroll its pod in 20 s: {}",
                a.node.name,
                a.config_dump()
                    .map(|v| v["capture"].to_string())
                    .unwrap_or_default()
            );
            let _ = a1.stop();
            let _ = a2.stop();
            return Err(why);
        }
    }
    Ok(Agents { list: vec![a1, a2] })
}

/// How many local workloads the agent reports enrolled.
fn enrolled(a: &Agent) -> usize {
    a.config_dump()
        .ok()
        .and_then(|v| {
            v["capture"]["workloads"]
                .as_array()
                .map(|w| w.iter().filter(|x| x["enrolled"] == true).count())
        })
        .unwrap_or(0)
}

fn stop_agents(ctx: &Ctx<'_>, agents: &Agents, r: &mut ModeReport) {
    for a in &agents.list {
        if !a.proc.is_running() {
            r.notes.push(format!(
                "the agent on {} had exited: {}",
                a.node.name,
                first_error_line(&a.proc.stderr())
            ));
            // Remove what it left pinned, so that the next mode starts clean.
            let mut un = Command::new(meshd_bin());
            un.args(["uninstall", "--bpffs"]).arg(&a.pin_root);
            let _ = ctx.c.run_in_node(&a.node, un);
            continue;
        }
        if let Err(e) = a.stop() {
            r.notes
                .push(format!("stopping the agent on {}: {e:#}", a.node.name));
            let _ = a.proc.kill();
        }
    }
}

/// Checks that the mode really is what it says before measuring it.
fn probe(ctx: &Ctx<'_>, mode: &str, agents: &Agents) -> Result<(), String> {
    let sink = spawn_server(
        ctx,
        testapp(&["sink", "--listen", &format!("0.0.0.0:{SINK_PORT}")]),
        SINK_PORT,
        "connection sink",
    )
    .map_err(|e| format!("{e:#}"))?;
    let res = probe_with_sink(ctx, mode, agents);
    let _ = sink.kill();
    res
}

fn probe_with_sink(ctx: &Ctx<'_>, mode: &str, agents: &Agents) -> Result<(), String> {
    let dst = ctx.dst(SINK_PORT);
    let hold = ctx
        .c
        .spawn_in_pod(
            &ctx.client,
            testapp(&[
                "hold",
                "--connect",
                &dst,
                "--count",
                "1",
                "--hold-secs",
                "10",
            ]),
        )
        .map_err(|e| format!("{e:#}"))?;
    let res = (|| {
        let line = hold
            .wait_for_output("\"opened\"", Duration::from_secs(15))
            .map_err(|e| format!("probe connection: {e:#}"))?;
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["opened"] != 1 {
            return Err(format!(
                "a connection from the client pod to {dst} failed: {line}"
            ));
        }
        if mode == "passthrough" {
            let mut last = Vec::new();
            let seen = wait_until(Duration::from_secs(5), || {
                last = agents.list[0].connections().unwrap_or_default();
                last.iter()
                    .any(|c| c["direction"] == "outbound" && c["orig_dst"] == dst.as_str())
            });
            if !seen {
                return Err(format!(
                    "the agent on n1 did not capture the connection to {dst} (its connections: {})",
                    Value::Array(last)
                ));
            }
        } else {
            let mut ss = Command::new("ss");
            ss.args(["-Htn", "state", "established"]);
            let out = ctx
                .c
                .run_in_pod(&ctx.server, ss)
                .map_err(|e| format!("{e:#}"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !text.lines().any(|l| l.contains(":15008 ")) {
                return Err("the agents accepted the identity config but the traffic between the nodes did not use HBONE (no connection on port 15008 in the server pod)".into());
            }
        }
        Ok(())
    })();
    let _ = hold.kill();
    res?;
    if mode == "mtls-http" {
        let mut curl = Command::new("curl");
        curl.args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!("http://{}/", ctx.dst(HTTP1_PORT)));
        let out = ctx
            .c
            .run_in_pod(&ctx.client, curl)
            .map_err(|e| format!("{e:#}"))?;
        let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if code != "200" {
            return Err(format!(
                "an HTTP probe request through the agents got {code:?}"
            ));
        }
        let counted = wait_until(Duration::from_secs(3), || {
            agents.list.iter().any(
                |a| matches!(a.get("/metrics"), Ok((200, body)) if body.contains("request_total")),
            )
        });
        if !counted {
            return Err("the agents do not count HTTP requests (no request_total in /metrics after a probe request)".into());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------- /proc

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU time of every live thread in nanoseconds (schedstat), finer than clock ticks.
fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

fn nofile_limit(pid: u32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let l = s.lines().find(|l| l.starts_with("Max open files"))?;
    let f: Vec<&str> = l.split_whitespace().collect();
    Some(format!("{} soft / {} hard", f.get(3)?, f.get(4)?))
}

fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 100.0).round() / 100.0
}

/// The largest RSS over the agents as `key`; each agent's in the details.
fn record_rss(r: &mut ModeReport, agents: &Agents, key: &str, what: &str) {
    let mut per = serde_json::Map::new();
    let mut max = 0;
    for a in &agents.list {
        match rss_kib(a.proc.pid()) {
            Some(k) => {
                max = max.max(k);
                per.insert(a.node.name.clone(), json!(k));
            }
            None => r
                .notes
                .push(format!("{what}: the agent on {} is gone", a.node.name)),
        }
    }
    if max > 0 {
        r.figures.insert(key.to_string(), mib(max));
    }
    r.details
        .insert(format!("rss_kib_{what}"), Value::Object(per));
}

// ------------------------------------------------------------------ measurements

fn run_client(ctx: &Ctx<'_>, cmd: Command, extra: Duration) -> anyhow::Result<(String, String)> {
    let desc = format!("{cmd:?}");
    let out = ctx.c.run_in_pod_timeout(
        &ctx.client,
        cmd,
        Duration::from_secs(ctx.o.duration_secs) + extra,
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!(
            "{desc} failed ({}): {} {}",
            out.status,
            stdout.lines().last().unwrap_or(""),
            first_error_line(&stderr)
        );
    }
    Ok((stdout, stderr))
}

fn last_json(stdout: &str) -> anyhow::Result<Value> {
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("no JSON result in {stdout:?}"))
}

fn positive(v: Option<f64>, what: &str) -> anyhow::Result<f64> {
    match v {
        Some(x) if x > 0.0 && x.is_finite() => Ok(x),
        _ => bail!("{what}: no positive figure"),
    }
}

fn throughput(ctx: &Ctx<'_>, streams: u32, r: &mut ModeReport) -> anyhow::Result<()> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-J", "-c"])
        .arg(ctx.host())
        .args(["-p", &IPERF_PORT.to_string()])
        .args(["-t", &ctx.o.duration_secs.to_string()])
        .args(["-P", &streams.to_string()])
        .args(["--connect-timeout", "5000"]);
    if !ctx.o.quick {
        cmd.args(["-O", "1"]);
    }
    let out = ctx.c.run_in_pod_timeout(
        &ctx.client,
        cmd,
        Duration::from_secs(ctx.o.duration_secs + 30),
    )?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON: {}",
            first_error_line(&String::from_utf8_lossy(&out.stderr))
        )
    })?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    // In `relay` mode every stream went to the relay. (Captured streams also show the
    // agent's loopback address: `getpeername()` under connect4, see README.)
    if ctx.relay {
        let relay = ctx.host();
        let peers: Vec<&str> = v["start"]["connected"]
            .as_array()
            .map(|c| c.iter().filter_map(|s| s["remote_host"].as_str()).collect())
            .unwrap_or_default();
        if peers.len() != streams as usize || peers.iter().any(|p| *p != relay) {
            bail!(
                "iperf3 streams connected to {peers:?}, expected {streams} to the relay at {relay}"
            );
        }
    }
    let bps = positive(
        v["end"]["sum_received"]["bits_per_second"].as_f64(),
        "iperf3",
    )?;
    let key = if streams == 1 {
        "throughput_1_gbps"
    } else {
        "throughput_8_gbps"
    };
    r.figures
        .insert(key.into(), (bps / 1e9 * 1000.0).round() / 1000.0);
    r.details.insert(
        format!("iperf3_{streams}_retransmits"),
        v["end"]["sum_sent"]["retransmits"].clone(),
    );
    Ok(())
}

/// How the CPUs are while the latency is measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cpus {
    /// As they are: idle between requests.
    AsTheyAre,
    /// Kept out of idle by `meshd-testapp idle-load` (spinning `SCHED_IDLE` threads that
    /// every other thread preempts): what remains is the cost of the proxies' work, without
    /// the cost of waking an idle CPU (on a VM, a halted vCPU).
    KeptBusy,
}

impl Cpus {
    /// The prefix of this measurement's figures and its key in the details.
    fn keys(self) -> (&'static str, &'static str) {
        match self {
            Cpus::AsTheyAre => ("latency", "rr"),
            Cpus::KeptBusy => ("latency_busy", "rr_busy"),
        }
    }
}

fn latency(ctx: &Ctx<'_>, r: &mut ModeReport, cpus: Cpus) -> anyhow::Result<()> {
    let load = match cpus {
        Cpus::AsTheyAre => None,
        Cpus::KeptBusy => {
            let h = ctx
                .c
                .spawn_in_net(testapp(&["idle-load"]))
                .context("starting meshd-testapp idle-load")?;
            std::thread::sleep(Duration::from_millis(200));
            Some(h)
        }
    };
    let result = measure_rr(ctx);
    let load_alive = load.as_ref().map(|h| (h.is_running(), h.output_tail()));
    if let Some(h) = &load {
        h.kill().context("stopping meshd-testapp idle-load")?;
    }
    if let Some((false, tail)) = load_alive {
        bail!("meshd-testapp idle-load exited during the measurement{tail}");
    }
    let v = result?;
    let (prefix, detail) = cpus.keys();
    for k in ["p50_us", "p99_us", "p999_us"] {
        r.figures
            .insert(format!("{prefix}_{k}"), positive(v[k].as_f64(), k)?);
    }
    r.details.insert(detail.into(), v);
    Ok(())
}

/// One `meshd-testapp rr` run: 1 KiB messages at the run's rate, its JSON result.
fn measure_rr(ctx: &Ctx<'_>) -> anyhow::Result<Value> {
    let cmd = testapp(&[
        "rr",
        "--connect",
        &ctx.dst(ECHO_PORT),
        "--size",
        "1024",
        "--rate",
        &ctx.o.rate.to_string(),
        "--duration-secs",
        &ctx.o.duration_secs.to_string(),
    ]);
    let (stdout, _) = run_client(ctx, cmd, Duration::from_secs(30))?;
    let v = last_json(&stdout)?;
    if v["ok"] != true {
        bail!("rr: {}", v["error"]);
    }
    Ok(v)
}

fn cps(ctx: &Ctx<'_>, r: &mut ModeReport) -> anyhow::Result<()> {
    let cmd = testapp(&[
        "cps",
        "--connect",
        &ctx.dst(ECHO_PORT),
        "--duration-secs",
        &ctx.o.duration_secs.to_string(),
        "--concurrency",
        &ctx.o.cps_concurrency.to_string(),
    ]);
    let (stdout, _) = run_client(ctx, cmd, Duration::from_secs(30))?;
    let v = last_json(&stdout)?;
    let rate = positive(v["cps"].as_f64(), "cps")?;
    r.figures.insert("cps".into(), rate.round());
    if v["failed"].as_u64().unwrap_or(0) > 0 {
        r.notes.push(format!(
            "connections per second: {} of {} connections failed: {}",
            v["failed"],
            v["failed"].as_u64().unwrap_or(0) + v["connections"].as_u64().unwrap_or(0),
            v["errors"]
        ));
    }
    r.details.insert("cps".into(), v);
    Ok(())
}

/// Parses h2load's summary: (requests per second, succeeded, failed + errored).
fn parse_h2load(text: &str) -> anyhow::Result<(f64, u64, u64)> {
    let fin = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .with_context(|| format!("no summary in h2load's output: {}", first_error_line(text)))?;
    let rps = fin
        .split(',')
        .find(|p| p.contains("req/s"))
        .and_then(|p| p.trim().strip_suffix("req/s"))
        .and_then(|p| p.trim().parse::<f64>().ok())
        .with_context(|| format!("cannot read req/s from {fin:?}"))?;
    let req = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .context("no requests: line in h2load's output")?;
    let count = |what: &str| -> u64 {
        req.split(',')
            .find(|p| p.trim().ends_with(what))
            .and_then(|p| p.split_whitespace().rev().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Ok((rps, count("succeeded"), count("failed") + count("errored")))
}

fn http_rps(ctx: &Ctx<'_>, h2: bool, r: &mut ModeReport) -> anyhow::Result<()> {
    let mut cmd = Command::new("h2load");
    let d = ctx.o.duration_secs.to_string();
    cmd.args(["-D", &d]);
    if !ctx.o.quick {
        cmd.args(["--warm-up-time", "1"]);
    }
    let c = ctx.o.http_concurrency;
    if h2 {
        // 4 connections x 8 streams each: the same number of requests in flight.
        let conns = 4.min(c).max(1);
        cmd.args([
            "-c",
            &conns.to_string(),
            "-m",
            &(c / conns).max(1).to_string(),
        ])
        .arg(format!("http://{}/index.html", ctx.dst(HTTP2_PORT)));
    } else {
        cmd.args(["--h1", "-c", &c.to_string(), "-m", "1"])
            .arg(format!("http://{}/", ctx.dst(HTTP1_PORT)));
    }
    let (stdout, _) = run_client(ctx, cmd, Duration::from_secs(30))?;
    let (rps, ok, failed) = parse_h2load(&stdout)?;
    if ok == 0 {
        bail!(
            "h2load: no request succeeded: {}",
            first_error_line(&stdout)
        );
    }
    if failed > 0 {
        r.notes.push(format!(
            "HTTP/{}: {failed} requests failed or errored",
            if h2 { 2 } else { 1 }
        ));
    }
    let key = if h2 { "http2_rps" } else { "http1_rps" };
    r.figures
        .insert(key.into(), positive(Some(rps), "h2load")?.round());
    Ok(())
}

/// Agent CPU seconds (utime + stime of every agent) per 1,000 HTTP/1.1 requests.
fn measure_cpu(ctx: &Ctx<'_>, agents: &Agents, r: &mut ModeReport) {
    ctx.say(&format!(
        "{}: agent CPU over {} HTTP/1.1 requests",
        r.mode, ctx.o.cpu_requests
    ));
    let res = (|| -> anyhow::Result<()> {
        let pids = agents.pids();
        let ticks = || pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).sum::<u64>();
        let ns = || pids.iter().map(|p| cpu_ns(*p).unwrap_or(0)).sum::<u64>();
        let (t0, n0) = (ticks(), ns());
        let mut cmd = Command::new("h2load");
        cmd.args(["--h1", "-n", &ctx.o.cpu_requests.to_string()])
            .args(["-c", &ctx.o.http_concurrency.to_string(), "-m", "1"])
            .arg(format!("http://{}/", ctx.dst(HTTP1_PORT)));
        let (stdout, _) = run_client(ctx, cmd, Duration::from_secs(120))?;
        let (t1, n1) = (ticks(), ns());
        let (_, ok, _) = parse_h2load(&stdout)?;
        if ok == 0 {
            bail!("no request succeeded");
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let dt = t1.saturating_sub(t0);
        // Clock ticks (10 ms) are too coarse for a short run: then use schedstat's ns.
        let secs = if dt >= 20 {
            dt as f64 / hz
        } else {
            n1.saturating_sub(n0) as f64 / 1e9
        };
        let per_1k = secs / (ok as f64 / 1000.0);
        r.figures.insert(
            "agent_cpu_s_per_1k_req".into(),
            positive(Some((per_1k * 1e5).round() / 1e5), "agent CPU")?,
        );
        r.details.insert(
            "cpu".into(),
            json!({"requests": ok, "ticks": dt, "hz": hz, "schedstat_ns": n1.saturating_sub(n0), "cpu_secs": secs}),
        );
        Ok(())
    })();
    note(r, "agent CPU", res);
}

/// Memory with the extra pods enrolled on n1, then while holding connections.
fn measure_memory(
    ctx: &mut Ctx<'_>,
    mode: &str,
    agents: &Agents,
    r: &mut ModeReport,
) -> anyhow::Result<()> {
    while (ctx.mem_pods.len() as u64) < ctx.o.pods {
        if ctx.mem_pods.is_empty() {
            ctx.say(&format!("creating {} pods on n1", ctx.o.pods));
        }
        let p = ctx
            .c
            .add_pod(&ctx.n1, &format!("mem{}", ctx.mem_pods.len() + 1))?;
        ctx.mem_pods.push(p);
    }
    ctx.say(&format!("{mode}: enrolling {} pods", ctx.o.pods));
    let identity = if mode.starts_with("mtls") {
        Some(identity_dir(ctx).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let mut local: Vec<&Pod> = vec![&ctx.client];
    local.extend(ctx.mem_pods.iter());
    let y = agent_yaml(ctx, &ctx.n1, &local, &ctx.server, identity.as_deref(), mode);
    let a1 = &agents.list[0];
    a1.write_config(&y)?;
    let want = local.len();
    if !wait_until(Duration::from_secs(60), || enrolled(a1) >= want) {
        bail!("only {} of {want} pods enrolled after 60 s", enrolled(a1));
    }
    std::thread::sleep(Duration::from_secs(1));
    match rss_kib(a1.proc.pid()) {
        Some(k) => {
            r.figures.insert("agent_rss_pods_mb".into(), mib(k));
        }
        None => bail!("the agent on n1 is gone"),
    }
    for (count, key) in [
        (ctx.o.conns, "agent_rss_conns_mb"),
        (ctx.o.conns_max, "agent_rss_conns_max_mb"),
    ] {
        ctx.say(&format!("{mode}: holding {count} connections"));
        let res = hold_and_measure(ctx, agents, count, key, r);
        note(r, &format!("holding {count} connections"), res);
    }
    Ok(())
}

fn hold_and_measure(
    ctx: &Ctx<'_>,
    agents: &Agents,
    count: u64,
    key: &str,
    r: &mut ModeReport,
) -> anyhow::Result<()> {
    let sink = spawn_server(
        ctx,
        testapp(&["sink", "--listen", &format!("0.0.0.0:{SINK_PORT}")]),
        SINK_PORT,
        "connection sink",
    )?;
    let hold = ctx.c.spawn_in_pod(
        &ctx.client,
        testapp(&[
            "hold",
            "--connect",
            &ctx.dst(SINK_PORT),
            "--count",
            &count.to_string(),
            "--hold-secs",
            "600",
        ]),
    )?;
    let res = (|| -> anyhow::Result<()> {
        let line = hold.wait_for_output("\"opened\"", Duration::from_secs(300))?;
        let v: Value =
            serde_json::from_str(&line).with_context(|| format!("hold printed {line:?}"))?;
        std::thread::sleep(Duration::from_secs(1));
        let what = format!("conns_{count}");
        record_rss(r, agents, key, &what);
        let mut per = serde_json::Map::new();
        for a in &agents.list {
            let pid = a.proc.pid();
            per.insert(
                a.node.name.clone(),
                json!({
                    "running": a.proc.is_running(),
                    "open_fds": open_fds(pid),
                    "nofile_limit": nofile_limit(pid),
                }),
            );
        }
        let opened = v["opened"].as_u64().unwrap_or(0);
        if count == ctx.o.conns_max {
            r.figures.insert("conns_max_opened".into(), opened as f64);
        }
        if opened < count {
            let logs: Vec<String> = agents
                .list
                .iter()
                .map(|a| format!("{}: {}", a.node.name, last_lines(&a.proc.stderr(), 3)))
                .collect();
            r.notes.push(format!(
                "{count} connections: only {opened} opened ({} failed; first errors: {}); agents: {}; their last log lines: {}",
                v["failed"],
                v["errors"],
                Value::Object(per.clone()),
                logs.join(" | ")
            ));
        }
        for a in &agents.list {
            if !a.proc.is_running() {
                r.notes.push(format!(
                    "{count} connections: the agent on {} exited: {}",
                    a.node.name,
                    first_error_line(&a.proc.stderr())
                ));
            }
        }
        r.details
            .insert(format!("hold_{count}"), json!({"client": v, "agents": per}));
        Ok(())
    })();
    let _ = hold.kill();
    let _ = sink.kill();
    res
}
