//! meshd on top of the cluster harness: agent configuration files, starting and stopping
//! agents in node namespaces, and reading their admin API.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::{http_get, wait_until, Cluster, Node, Pod, ProcHandle, Signal};

/// The meshd binary: `$MESHD_BIN`, else `target/debug/meshd` of this workspace.
pub fn meshd_bin() -> PathBuf {
    std::env::var_os("MESHD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_target().join("debug/meshd"))
}

/// The test app: `$MESHD_TESTAPP`, else `target/debug/meshd-testapp`.
pub fn testapp_bin() -> PathBuf {
    std::env::var_os("MESHD_TESTAPP")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_target().join("debug/meshd-testapp"))
}

fn workspace_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// One workload of an agent's config file.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    pub pod: Pod,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub skip_inbound_ports: Vec<u16>,
    pub skip_outbound_ports: Vec<u16>,
    /// Set for a workload on another node (listed for identity and services only).
    pub remote: bool,
    /// Ports never parsed as HTTP. `meshd-testapp serve --greet` speaks first, so the ports
    /// the tests greet on are declared opaque, as a user would declare a server-speaks-first
    /// protocol (otherwise each connection waits for protocol detection to time out).
    pub opaque_ports: Option<Vec<u16>>,
    /// More keys of the workload entry, as YAML lines indented under it (`annotations`,
    /// `ports`, `probes`, ...).
    pub extra_yaml: String,
}

/// The ports the tests run greeting (server-speaks-first) test apps on.
pub const GREETING_PORTS: [u16; 4] = [7070, 8080, 9090, 9091];

impl WorkloadSpec {
    pub fn new(pod: &Pod) -> WorkloadSpec {
        WorkloadSpec {
            pod: pod.clone(),
            namespace: "default".into(),
            service_account: pod.name.clone(),
            labels: BTreeMap::new(),
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            remote: false,
            opaque_ports: Some(GREETING_PORTS.to_vec()),
            extra_yaml: String::new(),
        }
    }

    /// Adds keys to the workload's entry: `yaml` is written as it is, each line indented
    /// to the entry's keys (four spaces), e.g. `"ports: [{name: http, containerPort: 8080}]"`.
    pub fn yaml(mut self, yaml: &str) -> Self {
        for line in yaml.lines() {
            self.extra_yaml.push_str("    ");
            self.extra_yaml.push_str(line);
            self.extra_yaml.push('\n');
        }
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    pub fn skip_inbound(mut self, ports: &[u16]) -> Self {
        self.skip_inbound_ports = ports.to_vec();
        self
    }

    pub fn skip_outbound(mut self, ports: &[u16]) -> Self {
        self.skip_outbound_ports = ports.to_vec();
        self
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.pod.name)
    }

    /// Sets the opaque ports (`None`: the agent's default list).
    pub fn opaque(mut self, ports: Option<&[u16]>) -> Self {
        self.opaque_ports = ports.map(<[u16]>::to_vec);
        self
    }
}

/// A service of an agent's config file.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub target_port: u16,
    pub selector: BTreeMap<String, String>,
    pub endpoints: Vec<String>,
}

impl ServiceSpec {
    /// The service `web`: `vip` port 80 to `target_port` of the workloads labelled
    /// `app: web`, no fixed endpoints. `vip` is written into the YAML as it is (an IPv6
    /// address must be quoted).
    pub fn web(vip: &str, target_port: u16) -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            vip: vip.into(),
            port: 80,
            target_port,
            selector: BTreeMap::from([("app".to_string(), "web".to_string())]),
            endpoints: vec![],
        }
    }
}

/// The YAML config of one agent.
pub fn config_yaml(
    cluster: &Cluster,
    node: &Node,
    workloads: &[WorkloadSpec],
    services: &[ServiceSpec],
) -> String {
    let mut y = String::new();
    let _ = writeln!(y, "node: {}", node.name);
    let _ = writeln!(y, "admin: 127.0.0.1:15000");
    let _ = writeln!(y, "bpffs: {}", cluster.pin_root(node).display());
    let _ = writeln!(y, "connectTimeoutMs: 2000");
    // `[]` when empty, so that keys appended after the list stay top-level (serde-saphyr
    // refuses a bare `workloads:` followed by another key).
    let _ = writeln!(
        y,
        "workloads:{}",
        if workloads.is_empty() { " []" } else { "" }
    );
    for w in workloads {
        let _ = writeln!(y, "  - name: {}", w.pod.name);
        let _ = writeln!(y, "    namespace: {}", w.namespace);
        let _ = writeln!(y, "    serviceAccount: {}", w.service_account);
        match w.pod.ip6 {
            None => {
                let _ = writeln!(y, "    ips: [{}]", w.pod.ip);
            }
            Some(ip6) => {
                let _ = writeln!(y, "    ips: [{}, \"{ip6}\"]", w.pod.ip);
            }
        }
        if w.remote {
            let _ = writeln!(y, "    node: {}", w.pod.node);
        } else {
            let _ = writeln!(y, "    netns: {}", w.pod.netns_path.display());
            let _ = writeln!(y, "    cgroup: {}", w.pod.cgroup.display());
        }
        if !w.labels.is_empty() {
            let _ = writeln!(y, "    labels:");
            for (k, v) in &w.labels {
                let _ = writeln!(y, "      {k}: {v}");
            }
        }
        if !w.skip_inbound_ports.is_empty() {
            let _ = writeln!(y, "    skipInboundPorts: {:?}", w.skip_inbound_ports);
        }
        if !w.skip_outbound_ports.is_empty() {
            let _ = writeln!(y, "    skipOutboundPorts: {:?}", w.skip_outbound_ports);
        }
        if let Some(ports) = &w.opaque_ports {
            let _ = writeln!(y, "    opaquePorts: {ports:?}");
        }
        y.push_str(&w.extra_yaml);
    }
    // Likewise `services: []`.
    let _ = writeln!(
        y,
        "services:{}",
        if services.is_empty() { " []" } else { "" }
    );
    for s in services {
        let _ = writeln!(y, "  - name: {}", s.name);
        let _ = writeln!(y, "    namespace: default");
        let _ = writeln!(y, "    vip: {}", s.vip);
        let _ = writeln!(
            y,
            "    ports: [{{port: {}, targetPort: {}}}]",
            s.port, s.target_port
        );
        if !s.selector.is_empty() {
            let sel: Vec<String> = s
                .selector
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(y, "    selector: {{{}}}", sel.join(", "));
        }
        if !s.endpoints.is_empty() {
            let _ = writeln!(y, "    endpoints: [{}]", s.endpoints.join(", "));
        }
    }
    y
}

/// A running agent in a node's network namespace.
pub struct Agent {
    pub node: Node,
    pub proc: ProcHandle,
    pub config_path: PathBuf,
    pub pin_root: PathBuf,
}

impl Agent {
    /// Writes `yaml` and starts `meshd run` in the node; waits until it is ready.
    pub fn start(cluster: &Cluster, node: &Node, yaml: &str) -> anyhow::Result<Agent> {
        let config_path = cluster.dir().join(format!("meshd-{}.yaml", node.name));
        std::fs::write(&config_path, yaml)
            .with_context(|| format!("writing {}", config_path.display()))?;
        Self::start_with(cluster, node, config_path)
    }

    /// Starts an agent on an existing config file (e.g. after a restart).
    pub fn start_with(
        cluster: &Cluster,
        node: &Node,
        config_path: PathBuf,
    ) -> anyhow::Result<Agent> {
        let mut cmd = Command::new(meshd_bin());
        cmd.args([
            "--log",
            "info,meshd=debug,meshd_ebpf=debug",
            "run",
            "--config",
        ])
        .arg(&config_path);
        let proc = cluster.spawn_in_node(node, cmd)?;
        let agent = Agent {
            node: node.clone(),
            proc,
            config_path,
            pin_root: cluster.pin_root(node),
        };
        let ready = wait_until(Duration::from_secs(20), || {
            !agent.proc.is_running() || matches!(agent.get("/ready"), Ok((200, _)))
        });
        if !ready || !agent.proc.is_running() {
            // Not a clean-stop check (see the Drop below): this agent failed already.
            let _ = agent.proc.kill();
            bail!(
                "agent on {} did not become ready:\n{}",
                node.name,
                agent.proc.output_tail()
            );
        }
        Ok(agent)
    }

    /// GET on the agent's admin API (inside the node's namespace).
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(
            &self.node.netns_path,
            &format!("http://127.0.0.1:15000{path}"),
        )
    }

    fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.get(path)?;
        if status != 200 {
            bail!("GET {path}: status {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
    }

    /// The agent's account of proxied connections.
    pub fn connections(&self) -> anyhow::Result<Vec<Value>> {
        match self.get_json("/connections")? {
            Value::Array(a) => Ok(a),
            other => bail!("/connections is not an array: {other}"),
        }
    }

    /// Closed connection records matching `direction` and `orig_dst`.
    pub fn closed_to(&self, direction: &str, orig_dst: &str) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .connections()?
            .into_iter()
            .filter(|c| {
                c["direction"] == direction && c["orig_dst"] == orig_dst && c["closed"] == true
            })
            .collect())
    }

    pub fn config_dump(&self) -> anyhow::Result<Value> {
        self.get_json("/config_dump")
    }

    /// Replaces the config file atomically (as editors and ConfigMap updates do).
    pub fn write_config(&self, yaml: &str) -> anyhow::Result<()> {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, &self.config_path)?;
        Ok(())
    }

    /// Graceful stop (SIGTERM), then `meshd uninstall` of the agent's pins (a stopped agent
    /// leaves its capture for the next one); returns the agent's exit status. Fails, with
    /// the agent's log tail, unless the agent exits cleanly (status 0, not killed by a
    /// signal) within 15 s, or if it had already exited; fails too when the uninstall does.
    pub fn stop(&self) -> anyhow::Result<std::process::ExitStatus> {
        let status = self.terminate()?;
        self.uninstall()?;
        Ok(status)
    }

    /// SIGTERM and a clean exit within 15 s (else fails with the log tail), leaving the
    /// capture in place as a rolling update does: programs attached, pins kept.
    pub fn terminate(&self) -> anyhow::Result<std::process::ExitStatus> {
        self.proc
            .signal(Signal::SIGTERM)
            .with_context(|| format!("stopping the agent on {}", self.node.name))?;
        let status = self.proc.wait(Duration::from_secs(15))?;
        if !status.success() {
            bail!(
                "the agent on {} did not exit cleanly on SIGTERM ({status}){}",
                self.node.name,
                self.proc.output_tail()
            );
        }
        Ok(status)
    }

    /// `meshd uninstall --bpffs <pin root>`: detaches the programs and removes the pins an
    /// agent left (after [`Agent::terminate`] or a crash).
    pub fn uninstall(&self) -> anyhow::Result<()> {
        uninstall(&self.pin_root)
    }

    /// Crash (SIGKILL): pins stay behind.
    pub fn crash(&self) -> anyhow::Result<()> {
        self.proc.kill()
    }
}

/// An agent still running when it is dropped (the test did not stop it) is stopped here,
/// and must exit cleanly on SIGTERM like one stopped with [`Agent::stop`] (its capture is
/// then uninstalled); otherwise the drop panics with the agent's log tail. Skipped when
/// the test is already panicking (the cluster kills the agent and removes the pins) and
/// for an agent that has exited (crashed, stopped, killed: the test or the cluster's
/// teardown removes what it left).
impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() || !self.proc.is_running() {
            return;
        }
        if let Err(e) = self.stop() {
            panic!("dropping the agent on {}: {e:#}", self.node.name);
        }
    }
}

/// `meshd uninstall --bpffs <pin_root>`; fails with its output unless it succeeds.
pub fn uninstall(pin_root: &Path) -> anyhow::Result<()> {
    let out = Command::new(meshd_bin())
        .args(["uninstall", "--bpffs"])
        .arg(pin_root)
        .output()
        .context("running meshd uninstall")?;
    if !out.status.success() {
        bail!(
            "meshd uninstall --bpffs {}: {}{}",
            pin_root.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `bpftool cgroup show` of a cgroup: the names of attached programs. Fails, naming the
/// command and its output, when bpftool's output is not the list it should be (so that a
/// "nothing attached" check cannot pass on output it did not understand).
pub fn cgroup_programs(cgroup: &Path) -> anyhow::Result<Vec<String>> {
    let path = cgroup
        .to_str()
        .with_context(|| format!("cgroup path {} is not UTF-8", cgroup.display()))?;
    let args = ["cgroup", "show", path];
    let v = bpftool_json(&args)?;
    program_names(&args, &v)
}

/// The `name` of each element of a bpftool JSON array of programs.
fn program_names(args: &[&str], v: &Value) -> anyhow::Result<Vec<String>> {
    let Some(a) = v.as_array() else {
        bail!("bpftool -j {}: not a JSON array: {v}", args.join(" "));
    };
    a.iter()
        .map(|p| {
            p["name"].as_str().map(String::from).with_context(|| {
                format!(
                    "bpftool -j {}: an entry without a name: {p}",
                    args.join(" ")
                )
            })
        })
        .collect()
}

/// Program names attached by BPF links to the network namespace at `netns_path`
/// (sk_lookup), from `bpftool link show`. Fails on output that is not the expected JSON.
pub fn netns_programs(netns_path: &Path) -> anyhow::Result<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(netns_path)
        .with_context(|| format!("stat {}", netns_path.display()))?
        .ino();
    let links: Value = bpftool_json(&["link", "show"])?;
    let progs: Value = bpftool_json(&["prog", "show"])?;
    let (Some(links), Some(progs)) = (links.as_array(), progs.as_array()) else {
        bail!("bpftool -j link show / prog show: not JSON arrays: {links} / {progs}");
    };
    let mut names = Vec::new();
    for l in links {
        if l["type"] != "netns" || l["netns_ino"].as_u64() != Some(ino) {
            continue;
        }
        // A link whose program is not listed (unloaded between the two calls) keeps "?".
        let name = progs
            .iter()
            .find(|p| p["id"] == l["prog_id"])
            .map(|p| {
                p["name"]
                    .as_str()
                    .map(String::from)
                    .with_context(|| format!("bpftool -j prog show: a program without a name: {p}"))
            })
            .transpose()?
            .unwrap_or_else(|| "?".to_string());
        names.push(name);
    }
    Ok(names)
}

/// `bpftool -j ARGS`, parsed. Fails, naming the command and its output, when bpftool fails
/// or prints something that is not JSON. `cgroup show` of a cgroup without programs,
/// for which bpftool prints nothing at all, gives an empty array.
pub fn bpftool_json(args: &[&str]) -> anyhow::Result<Value> {
    let out = bpftool_output(args)?;
    if out.trim().is_empty() && args.starts_with(&["cgroup", "show"]) {
        return Ok(Value::Array(Vec::new()));
    }
    parse_bpftool(args, &out)
}

/// stdout of a successful `bpftool -j ARGS`.
fn bpftool_output(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse_bpftool(args: &[&str], out: &str) -> anyhow::Result<Value> {
    serde_json::from_str(out)
        .with_context(|| format!("bpftool -j {}: output is not JSON: {out:?}", args.join(" ")))
}

/// Runs `meshd-testapp ARGS` in a pod and parses its one-line JSON result.
pub fn testapp_json(cluster: &Cluster, pod: &Pod, args: &[&str]) -> anyhow::Result<Value> {
    let mut cmd = Command::new(testapp_bin());
    cmd.args(args);
    let out = cluster.run_in_pod(pod, cmd)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| {
        format!(
            "testapp {args:?} in {}: no JSON result; stdout: {stdout}; stderr: {}",
            pod.name,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Starts `meshd-testapp serve --greet` on `port` in a pod and waits until it listens.
pub fn serve(cluster: &Cluster, pod: &Pod, port: u16) -> anyhow::Result<ProcHandle> {
    let mut cmd = Command::new(testapp_bin());
    cmd.args(["serve", "--greet", "--listen", &format!("0.0.0.0:{port}")]);
    let h = cluster.spawn_in_pod(pod, cmd)?;
    h.wait_for_output("listening", Duration::from_secs(10))
        .with_context(|| format!("testapp serve in {}", pod.name))?;
    Ok(h)
}

/// `meshd identity init` into `<cluster dir>/<name>`; returns the directory.
pub fn identity_init(cluster: &Cluster, name: &str) -> anyhow::Result<PathBuf> {
    let dir = cluster.dir().join(name);
    let out = Command::new(meshd_bin())
        .args(["identity", "init", "--dir"])
        .arg(&dir)
        .output()
        .context("running meshd identity init")?;
    if !out.status.success() {
        bail!(
            "meshd identity init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(dir)
}

/// Adds mutual TLS to an agent config: trust anchors from `anchors` (a PEM bundle), the
/// issuer from `issuer_dir`, workload certificates living `ttl_secs`.
pub fn with_identity(yaml: &str, anchors: &Path, issuer_dir: &Path, ttl_secs: u64) -> String {
    format!(
        "{yaml}identity:\n  trustAnchors: {}\n  issuerCertificate: {}\n  issuerKey: {}\n  certificateTtlSeconds: {ttl_secs}\n",
        anchors.display(),
        issuer_dir.join("issuer.crt").display(),
        issuer_dir.join("issuer.key").display(),
    )
}

/// A packet capture with tcpdump on the cluster network's bridge (between the nodes).
pub struct WireCapture {
    proc: ProcHandle,
    pub file: PathBuf,
}

impl WireCapture {
    pub fn start(cluster: &Cluster) -> anyhow::Result<WireCapture> {
        let file = cluster.dir().join("wire.pcap");
        let mut cmd = Command::new("tcpdump");
        // A 64 MiB kernel buffer (-B, KiB): with the default 2 MiB, the veths' large
        // (GSO) packets overflow it during a bulk echo on a busy machine, and the kernel
        // drops packets from the capture (which `stop` refuses).
        cmd.args([
            "-i",
            "br0",
            "-U",
            "--immediate-mode",
            "-n",
            "-s",
            "0",
            "-B",
            "65536",
            "-w",
        ])
        .arg(&file)
        .arg("tcp");
        let proc = cluster.spawn_in_net(cmd)?;
        proc.wait_for_output("listening on", Duration::from_secs(10))
            .context("tcpdump did not start")?;
        Ok(WireCapture { proc, file })
    }

    /// Stops the capture and returns the pcap's bytes. First waits (up to 15 s) until
    /// tcpdump has written every packet the kernel passed it: it is asked for its counts
    /// (SIGUSR1) until the packets captured (written, `-U`) equal the packets received by
    /// the filter. Fails if the kernel dropped packets or tcpdump does not catch up: a
    /// capture missing packets would make "nothing else on the wire" checks pass too easily.
    pub fn stop(self) -> anyhow::Result<Vec<u8>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let asked = tcpdump_stats_lines(&self.proc.stderr()).len();
            self.proc.signal(Signal::SIGUSR1)?;
            let mut stats = None;
            wait_until(Duration::from_secs(5), || {
                let lines = tcpdump_stats_lines(&self.proc.stderr());
                stats = lines.get(asked).copied();
                stats.is_some()
            });
            let Some(st) = stats else {
                bail!(
                    "tcpdump did not report its counts after SIGUSR1{}",
                    self.proc.output_tail()
                );
            };
            if st.dropped > 0 {
                bail!(
                    "tcpdump: the kernel dropped {} packets: the capture is incomplete{}",
                    st.dropped,
                    self.proc.output_tail()
                );
            }
            if st.captured == st.received {
                break;
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "tcpdump wrote {} of the {} packets it received in 15 s{}",
                    st.captured,
                    st.received,
                    self.proc.output_tail()
                );
            }
        }
        self.proc.signal(Signal::SIGINT)?;
        let status = self.proc.wait(Duration::from_secs(10))?;
        if !status.success() {
            bail!("tcpdump exited with {status}{}", self.proc.output_tail());
        }
        std::fs::read(&self.file).with_context(|| format!("reading {}", self.file.display()))
    }

    /// `tshark -r FILE -Y FILTER -T fields -e FIELD...`: one line per matching packet.
    pub fn tshark(file: &Path, filter: &str, fields: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut cmd = Command::new("tshark");
        cmd.arg("-r").arg(file).args(["-Y", filter, "-T", "fields"]);
        for f in fields {
            cmd.args(["-e", f]);
        }
        let out = cmd.output().context("running tshark")?;
        if !out.status.success() {
            bail!("tshark: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect())
    }
}

/// The common two-node mesh of the L7 tests: node `n1` runs pod `client`, node `n2` runs
/// pod `web` (deployment `web`); both agents share one trust anchor (mutual TLS on).
pub struct ClientServer {
    pub n1: Node,
    pub n2: Node,
    pub client: Pod,
    pub web: Pod,
    pub agent1: Agent,
    pub agent2: Agent,
    /// Last, so that it is dropped after the agents (fields drop in order): a dropped agent
    /// is stopped and its exit checked while its namespaces still exist.
    pub cluster: Cluster,
}

impl ClientServer {
    /// The mesh with both pods' opaque ports the greeting ports ([`GREETING_PORTS`]) and
    /// no service.
    pub fn start(test_name: &str) -> anyhow::Result<ClientServer> {
        ClientServer::start_with(test_name, Some(&GREETING_PORTS), Some(&GREETING_PORTS), &[])
    }

    /// The mesh with the opaque ports of `client` and `web` (`None`: the agent's default
    /// list) and `services` in agent 1's config.
    pub fn start_with(
        test_name: &str,
        client_opaque: Option<&[u16]>,
        web_opaque: Option<&[u16]>,
        services: &[ServiceSpec],
    ) -> anyhow::Result<ClientServer> {
        let c = Cluster::new(test_name)?;
        let n1 = c.add_node("n1")?;
        let n2 = c.add_node("n2")?;
        let client = c.add_pod(&n1, "client")?;
        let web = c.add_pod(&n2, "web")?;
        let ca = identity_init(&c, "ca")?;
        let anchors = ca.join("ca.crt");
        let client_w = WorkloadSpec::new(&client).opaque(client_opaque);
        let web_w = WorkloadSpec::new(&web)
            .label("app", "web")
            .opaque(web_opaque);
        let remote = |w: &WorkloadSpec| {
            let mut w = w.clone();
            w.remote = true;
            w
        };
        let y1 = config_yaml(&c, &n1, &[client_w.clone(), remote(&web_w)], services);
        let y2 = config_yaml(&c, &n2, &[remote(&client_w), web_w], &[]);
        let agent1 = Agent::start(&c, &n1, &with_identity(&y1, &anchors, &ca, 3600))?;
        let agent2 = Agent::start(&c, &n2, &with_identity(&y2, &anchors, &ca, 3600))?;
        Ok(ClientServer {
            cluster: c,
            n1,
            n2,
            client,
            web,
            agent1,
            agent2,
        })
    }
}

/// Starts `meshd-testapp serve --greet` listening on `listen` (e.g. `[::]:8080`, which
/// serves IPv6 and IPv4 alike) in a pod and waits until it listens.
pub fn serve_at(cluster: &Cluster, pod: &Pod, listen: &str) -> anyhow::Result<ProcHandle> {
    let mut cmd = Command::new(testapp_bin());
    cmd.args(["serve", "--greet", "--listen", listen]);
    let h = cluster.spawn_in_pod(pod, cmd)?;
    h.wait_for_output("listening", Duration::from_secs(10))
        .with_context(|| format!("testapp serve on {listen} in {}", pod.name))?;
    Ok(h)
}

/// The first `len` bytes `meshd-testapp echo --seed SEED` sends (its xorshift64* stream),
/// to look for an app's payload in a capture.
pub fn echo_payload(seed: u64, len: usize) -> Vec<u8> {
    let mut state = (seed ^ 0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Whether `needle` occurs anywhere in `haystack` (e.g. plaintext in a pcap).
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A workload certificate for `uri` (a URI SAN, or none) issued with openssl from the
/// issuer in `issuer` (a `meshd identity init` directory), as a misbehaving or probing
/// client would present it; returns (certificate chain, key). Panics on failure.
pub fn issue_cert(c: &Cluster, issuer: &Path, name: &str, uri: Option<&str>) -> (PathBuf, PathBuf) {
    let dir = c.dir();
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let crt = dir.join(format!("{name}.crt"));
    let ext = dir.join(format!("{name}.ext"));
    let mut e = String::from(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    );
    if let Some(u) = uri {
        e.push_str(&format!("subjectAltName=critical,URI:{u}\n"));
    }
    std::fs::write(&ext, e).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |p: &Path| p.to_str().unwrap().to_string();
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/O=test",
        "-keyout",
        &p(&key),
        "-out",
        &p(&csr),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&issuer.join("issuer.crt")),
        "-CAkey",
        &p(&issuer.join("issuer.key")),
        "-set_serial",
        "4242",
        "-days",
        "1",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&crt),
    ]);
    let chain = [
        std::fs::read_to_string(&crt).unwrap(),
        std::fs::read_to_string(issuer.join("issuer.crt")).unwrap(),
    ]
    .concat();
    std::fs::write(&crt, chain).unwrap();
    (crt, key)
}

/// The certificates (PEM, leaf first) the HBONE listener at `ip:15008` presents to an
/// `openssl s_client` run in `node`'s namespace (outside any pod), with `client` (chain,
/// key) as the client certificate if given.
pub fn served_certificates(
    c: &Cluster,
    node: &Node,
    ip: &str,
    client: Option<(&Path, &Path)>,
) -> Vec<String> {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("{ip}:15008"), "-tls1_3"])
        .args(["-alpn", "h2", "-showcerts"]);
    if let Some((crt, key)) = client {
        cmd.arg("-cert").arg(crt).arg("-key").arg(key);
    }
    let out = c
        .run_in_node_timeout(node, cmd, Duration::from_secs(20))
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut certs = Vec::new();
    let mut rest = text.as_ref();
    while let Some(i) = rest.find("-----BEGIN CERTIFICATE-----") {
        let end = "-----END CERTIFICATE-----";
        let Some(j) = rest[i..].find(end) else { break };
        certs.push(format!("{}\n", &rest[i..i + j + end.len()]));
        rest = &rest[i + j + end.len()..];
    }
    certs
}

/// tcpdump's counts, as printed on SIGUSR1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TcpdumpStats {
    captured: u64,
    received: u64,
    dropped: u64,
}

/// Parses `tcpdump: 8 packets captured, 9 packets received by filter, 0 packets dropped by
/// kernel` (one line per SIGUSR1).
fn parse_tcpdump_stats(line: &str) -> Option<TcpdumpStats> {
    let rest = line.trim().strip_prefix("tcpdump: ")?;
    let mut st = TcpdumpStats {
        captured: 0,
        received: 0,
        dropped: 0,
    };
    let mut seen = 0;
    for part in rest.split(", ") {
        let (n, what) = part.split_once(' ')?;
        let n: u64 = n.parse().ok()?;
        match what {
            "packets captured" | "packet captured" => st.captured = n,
            "packets received by filter" | "packet received by filter" => st.received = n,
            "packets dropped by kernel" | "packet dropped by kernel" => st.dropped = n,
            _ => continue,
        }
        seen += 1;
    }
    (seen == 3).then_some(st)
}

/// Every SIGUSR1 answer in tcpdump's stderr, in order.
fn tcpdump_stats_lines(stderr: &str) -> Vec<TcpdumpStats> {
    stderr.lines().filter_map(parse_tcpdump_stats).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpdump_counts() {
        let err = "tcpdump: listening on br0, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n\
                   tcpdump: 8 packets captured, 9 packets received by filter, 0 packets dropped by kernel\n\
                   tcpdump: 1 packet captured, 1 packet received by filter, 2 packets dropped by kernel\n\
                   8 packets captured\n";
        assert_eq!(
            tcpdump_stats_lines(err),
            [
                TcpdumpStats {
                    captured: 8,
                    received: 9,
                    dropped: 0
                },
                TcpdumpStats {
                    captured: 1,
                    received: 1,
                    dropped: 2
                }
            ]
        );
        assert_eq!(parse_tcpdump_stats("tcpdump: 8 packets captured"), None);
    }

    /// bpftool output that is not the expected list is an error, never an empty list.
    #[test]
    fn bpftool_output_of_another_shape_is_an_error() {
        let args = ["cgroup", "show", "/x"];
        let v = parse_bpftool(&args, r#"[{"id":3,"name":"meshd_connect4"}]"#).unwrap();
        assert_eq!(program_names(&args, &v).unwrap(), ["meshd_connect4"]);
        assert!(parse_bpftool(&args, "Error: something").is_err());
        let v = parse_bpftool(&args, r#"{"error":"can't query"}"#).unwrap();
        let e = program_names(&args, &v).unwrap_err().to_string();
        assert!(
            e.contains("bpftool -j cgroup show /x") && e.contains("can't query"),
            "{e}"
        );
        let v = parse_bpftool(&args, r#"[{"id":3}]"#).unwrap();
        assert!(program_names(&args, &v).is_err());
    }
}
