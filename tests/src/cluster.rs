//! The cluster: nodes and pods out of network namespaces, bridges, veths and cgroups.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;

use crate::cleanup::{owner_line, pin_dirs_of};
use crate::error::{CleanupErrors, HarnessError};
use crate::process::{Placement, ProcHandle, DEFAULT_RUN_TIMEOUT};
use crate::util::{ensure_bpffs, ip_in, require_root};
use crate::{cgroup, netns, process};

/// Name prefix of the cluster's cgroup directory under the cgroup2 mount
/// (`<cg2>/meshd-test-<prefix>`) and of its pin roots (`/sys/fs/bpf/meshd-test-<prefix>-<node>`).
pub const CGROUP_DIR_PREFIX: &str = "meshd-test-";
/// Name prefix of the cluster's temporary directory (`/tmp/meshd-test-<prefix>`).
pub const TMP_DIR_PREFIX: &str = "meshd-test-";

const TMP: &str = "/tmp";
const MAX_NAME: usize = 24;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A node: a network namespace with `eth0` on the cluster network and a pod bridge `cbr0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// 1-based; the node's IP is `10.240.0.<index>` and its pod CIDR `10.244.<index>.0/24`.
    pub index: u8,
    /// Network namespace name (`<prefix>-<name>`).
    pub netns: String,
    /// `/run/netns/<netns>`.
    pub netns_path: PathBuf,
    /// `10.240.0.<index>` on `eth0`.
    pub ip: Ipv4Addr,
    /// `10.244.<index>.1` on `cbr0`: the pods' default gateway.
    pub gateway: Ipv4Addr,
    /// `10.244.<index>.0/24`.
    pub pod_cidr: String,
    /// Dual-stack clusters only: `fd00:10:240::<index>` on `eth0` (see [`node_ip6`]).
    pub ip6: Option<Ipv6Addr>,
    /// Dual-stack clusters only: `fd00:10:244:<index>::1` on `cbr0`.
    pub gateway6: Option<Ipv6Addr>,
    /// Dual-stack clusters only: `fd00:10:244:<index>::/64` (see [`pod_cidr6`]).
    pub pod_cidr6: Option<String>,
}

/// A pod: a network namespace plus a cgroup, attached to its node's `cbr0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    /// Name of the node the pod runs on.
    pub node: String,
    /// 2, 3, ... per node: the last octet of the pod's IP.
    pub index: u8,
    /// Network namespace name (`<prefix>-<name>`).
    pub netns: String,
    /// `/run/netns/<netns>`.
    pub netns_path: PathBuf,
    /// `<cg2>/meshd-test-<prefix>/<name>`.
    pub cgroup: PathBuf,
    /// `10.244.<node index>.<index>`.
    pub ip: Ipv4Addr,
    /// Dual-stack clusters only: `fd00:10:244:<node index>::<index>` (see [`pod_ip6`]).
    pub ip6: Option<Ipv6Addr>,
}

struct NodeState {
    node: Node,
    next_pod: u8,
}

#[derive(Default)]
struct State {
    nodes: Vec<NodeState>,
    names: HashSet<String>,
    netns: Vec<String>,
    procs: Vec<ProcHandle>,
    seq: u32,
    cleaned: bool,
    /// Set by [`Cluster::new_dual_stack`]: nodes and pods get IPv6 addresses too.
    dual_stack: bool,
}

/// A test cluster. Everything it creates is removed by [`Cluster::cleanup`] or on drop
/// (also when the test panics).
pub struct Cluster {
    prefix: String,
    test_name: String,
    dir: PathBuf,
    cg_root: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("prefix", &self.prefix)
            .field("test_name", &self.test_name)
            .field("dir", &self.dir)
            .finish()
    }
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn validate_name(kind: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "net"
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if !ok {
        return Err(HarnessError::Invalid(format!(
            "{kind} name {name:?}: use 1-{MAX_NAME} characters of [a-z0-9-], not starting with '-', and not \"net\""
        ))
        .into());
    }
    Ok(())
}

fn program_name(cmd: &Command) -> String {
    let p = Path::new(cmd.get_program());
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "proc".to_string())
}

impl Cluster {
    /// Creates the cluster network (netns `<prefix>-net` with bridge `br0`), the cgroup
    /// directory `<cg2>/meshd-test-<prefix>` and the temporary directory; mounts bpffs at
    /// /sys/fs/bpf if needed. Fails when not root.
    pub fn new(test_name: &str) -> anyhow::Result<Cluster> {
        require_root()?;
        ensure_bpffs()?;
        let cg2 = cgroup::cgroup2_mount()?;
        let pid = std::process::id();
        let mut chosen = None;
        for _ in 0..512 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let h = mix((u64::from(pid) << 32) | u64::from(n));
            let prefix = format!("mt{:04x}", h & 0xffff);
            if netns::netns_path(&format!("{prefix}-net")).exists()
                || cg2.join(format!("{CGROUP_DIR_PREFIX}{prefix}")).exists()
            {
                continue;
            }
            let dir = Path::new(TMP).join(format!("{TMP_DIR_PREFIX}{prefix}"));
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    chosen = Some((prefix, dir));
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
            }
        }
        let (prefix, dir) =
            chosen.ok_or_else(|| anyhow::anyhow!("no free cluster prefix found"))?;
        let cluster = Cluster {
            cg_root: cg2.join(format!("{CGROUP_DIR_PREFIX}{prefix}")),
            prefix,
            test_name: test_name.to_string(),
            dir,
            state: Mutex::new(State::default()),
        };
        // From here on, Drop removes whatever was created if a step fails.
        std::fs::write(cluster.dir.join("owner"), owner_line(pid, test_name))
            .context("writing the cluster's owner file")?;
        cgroup::create(&cluster.cg_root)?;
        let net = cluster.net_netns();
        cluster.add_netns(&mut cluster.lock(), &net)?;
        ip_in(&net, &["link", "set", "lo", "up"])?;
        ip_in(&net, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(&net, &["link", "set", "br0", "up"])?;
        Ok(cluster)
    }

    /// [`Cluster::new`] for a dual-stack cluster: every node and pod added afterwards gets
    /// an IPv6 (ULA) address next to its IPv4 one, mirroring the IPv4 plan: node N
    /// `fd00:10:240::N/64` on `eth0`, pod CIDR `fd00:10:244:N::/64` with the gateway
    /// `fd00:10:244:N::1` on `cbr0`, pod M `fd00:10:244:N::M`; IPv6 forwarding on in the
    /// nodes and routes between their pod CIDRs. Addresses skip duplicate address
    /// detection (`nodad`), so they are usable at once.
    pub fn new_dual_stack(test_name: &str) -> anyhow::Result<Cluster> {
        let cluster = Cluster::new(test_name)?;
        cluster.lock().dual_stack = true;
        Ok(cluster)
    }

    /// Whether nodes and pods get IPv6 addresses too ([`Cluster::new_dual_stack`]).
    pub fn is_dual_stack(&self) -> bool {
        self.lock().dual_stack
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add_netns(&self, st: &mut State, name: &str) -> anyhow::Result<()> {
        netns::create(name)?;
        st.netns.push(name.to_string());
        Ok(())
    }

    /// The unique short prefix of all names (`mt` + 4 hex digits).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The name given to [`Cluster::new`].
    pub fn test_name(&self) -> &str {
        &self.test_name
    }

    /// Temporary directory for config files and logs (removed on cleanup).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster's cgroup directory (`<cg2>/meshd-test-<prefix>`).
    pub fn cgroup_root(&self) -> &Path {
        &self.cg_root
    }

    /// Name of the network namespace holding `br0`.
    pub fn net_netns(&self) -> String {
        format!("{}-net", self.prefix)
    }

    /// Path of the network namespace holding `br0`.
    pub fn net_netns_path(&self) -> PathBuf {
        netns::netns_path(&self.net_netns())
    }

    /// Where the agent of `node` should pin its eBPF objects:
    /// `/sys/fs/bpf/meshd-test-<prefix>-<node>`. Not created here; removed on cleanup.
    pub fn pin_root(&self, node: &Node) -> PathBuf {
        Path::new(crate::util::BPFFS)
            .join(format!("{CGROUP_DIR_PREFIX}{}-{}", self.prefix, node.name))
    }

    /// All nodes added so far.
    pub fn nodes(&self) -> Vec<Node> {
        self.lock().nodes.iter().map(|n| n.node.clone()).collect()
    }

    /// Adds node N (1-based): netns `<prefix>-<name>`, `eth0` = 10.240.0.N/24 bridged to
    /// `br0`, `cbr0` = 10.244.N.1/24, IP forwarding on, and routes between every node's
    /// pod CIDRs.
    pub fn add_node(&self, name: &str) -> anyhow::Result<Node> {
        validate_name("node", name)?;
        let mut st = self.lock();
        if st.cleaned {
            anyhow::bail!("cluster {} was already cleaned up", self.prefix);
        }
        if !st.names.insert(name.to_string()) {
            return Err(HarnessError::Invalid(format!(
                "name {name:?} is already used in this cluster"
            ))
            .into());
        }
        let index = u8::try_from(st.nodes.len() + 1)
            .ok()
            .filter(|i| *i <= 250)
            .ok_or_else(|| HarnessError::Invalid("too many nodes".into()))?;
        let ns = format!("{}-{name}", self.prefix);
        let node = Node {
            name: name.to_string(),
            index,
            netns_path: netns::netns_path(&ns),
            netns: ns.clone(),
            ip: Ipv4Addr::new(10, 240, 0, index),
            gateway: Ipv4Addr::new(10, 244, index, 1),
            pod_cidr: format!("10.244.{index}.0/24"),
            ip6: st.dual_stack.then(|| node_ip6(index)),
            gateway6: st.dual_stack.then(|| pod_ip6(index, 1)),
            pod_cidr6: st.dual_stack.then(|| pod_cidr6(index)),
        };
        self.add_netns(&mut st, &ns)?;
        if st.dual_stack {
            no_dad(&node.netns_path, &ns)?;
        }
        let net = self.net_netns();
        let peer = format!("vn{index}");
        let ip_cidr = format!("{}/24", node.ip);
        let gw_cidr = format!("{}/24", node.gateway);
        let steps: [&[&str]; 7] = [
            &["link", "set", "lo", "up"],
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns", &net,
            ],
            &["addr", "add", &ip_cidr, "dev", "eth0"],
            &["link", "set", "eth0", "up"],
            &["link", "add", "cbr0", "type", "bridge"],
            &["addr", "add", &gw_cidr, "dev", "cbr0"],
            &["link", "set", "cbr0", "up"],
        ];
        for s in steps {
            ip_in(&ns, s)?;
        }
        ip_in(&net, &["link", "set", &peer, "master", "br0", "up"])?;
        netns::in_netns(&node.netns_path, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        })?
        .with_context(|| format!("enabling net.ipv4.ip_forward in {ns}"))?;
        if st.dual_stack {
            add_node_ip6(&node, &st.nodes)?;
        }
        for other in &st.nodes {
            let o = &other.node;
            ip_in(
                &ns,
                &["route", "replace", &o.pod_cidr, "via", &o.ip.to_string()],
            )?;
            ip_in(
                &o.netns,
                &[
                    "route",
                    "replace",
                    &node.pod_cidr,
                    "via",
                    &node.ip.to_string(),
                ],
            )?;
        }
        st.nodes.push(NodeState {
            node: node.clone(),
            next_pod: 2,
        });
        Ok(node)
    }

    /// Adds pod M (2, 3, ... per node) on `node`: netns `<prefix>-<name>` with `eth0` =
    /// 10.244.N.M/24 attached to the node's `cbr0`, default route via 10.244.N.1, and the
    /// cgroup `<cg2>/meshd-test-<prefix>/<name>`.
    pub fn add_pod(&self, node: &Node, name: &str) -> anyhow::Result<Pod> {
        validate_name("pod", name)?;
        let mut st = self.lock();
        if st.cleaned {
            anyhow::bail!("cluster {} was already cleaned up", self.prefix);
        }
        let Some(ni) = st.nodes.iter().position(|n| n.node.name == node.name) else {
            return Err(HarnessError::Invalid(format!(
                "node {:?} is not in this cluster",
                node.name
            ))
            .into());
        };
        let index = st.nodes[ni].next_pod;
        if index == u8::MAX {
            return Err(
                HarnessError::Invalid(format!("too many pods on node {}", node.name)).into(),
            );
        }
        if !st.names.insert(name.to_string()) {
            return Err(HarnessError::Invalid(format!(
                "name {name:?} is already used in this cluster"
            ))
            .into());
        }
        st.nodes[ni].next_pod += 1;
        let node = st.nodes[ni].node.clone();
        let ns = format!("{}-{name}", self.prefix);
        let pod = Pod {
            name: name.to_string(),
            node: node.name.clone(),
            index,
            netns_path: netns::netns_path(&ns),
            netns: ns.clone(),
            cgroup: self.cg_root.join(name),
            ip: Ipv4Addr::new(10, 244, node.index, index),
            ip6: st.dual_stack.then(|| pod_ip6(node.index, index)),
        };
        cgroup::create(&pod.cgroup)?;
        self.add_netns(&mut st, &ns)?;
        if st.dual_stack {
            no_dad(&pod.netns_path, &ns)?;
        }
        let peer = format!("vp{index}");
        let ip_cidr = format!("{}/24", pod.ip);
        let gw = node.gateway.to_string();
        let steps: [&[&str]; 5] = [
            &["link", "set", "lo", "up"],
            &[
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                &node.netns,
            ],
            &["addr", "add", &ip_cidr, "dev", "eth0"],
            &["link", "set", "eth0", "up"],
            &["route", "add", "default", "via", &gw],
        ];
        for (i, s) in steps.iter().enumerate() {
            if i == 4 {
                ip_in(&node.netns, &["link", "set", &peer, "master", "cbr0", "up"])?;
            }
            ip_in(&ns, s)?;
        }
        if let (Some(ip6), Some(gw6)) = (pod.ip6, node.gateway6) {
            let cidr = format!("{ip6}/64");
            ip_in(&ns, &["-6", "addr", "add", &cidr, "dev", "eth0", "nodad"])?;
            ip_in(
                &ns,
                &["-6", "route", "add", "default", "via", &gw6.to_string()],
            )?;
        }
        Ok(pod)
    }

    fn next_name(&self, st: &mut State, place: &str, cmd: &Command) -> String {
        st.seq += 1;
        format!("{place}-{}-{}", program_name(cmd), st.seq)
    }

    fn spawn_at(
        &self,
        place: &str,
        cmd: Command,
        at: &Placement<'_>,
    ) -> anyhow::Result<ProcHandle> {
        let mut st = self.lock();
        if st.cleaned {
            anyhow::bail!("cluster {} was already cleaned up", self.prefix);
        }
        let name = self.next_name(&mut st, place, &cmd);
        let h = ProcHandle::spawn(cmd, at, &self.dir, &name)?;
        st.procs.push(h.clone());
        Ok(h)
    }

    /// Starts `cmd` inside the pod's netns and cgroup, in its own process group, with
    /// stdout/stderr captured to `<dir>/<pod>-<program>-<n>.out`/`.err`.
    pub fn spawn_in_pod(&self, pod: &Pod, cmd: Command) -> anyhow::Result<ProcHandle> {
        let at = Placement {
            netns: Some(&pod.netns_path),
            cgroup: Some(&pod.cgroup),
        };
        self.spawn_at(&pod.name, cmd, &at)
    }

    /// Starts `cmd` inside the node's netns (it stays in the test's own cgroup).
    pub fn spawn_in_node(&self, node: &Node, cmd: Command) -> anyhow::Result<ProcHandle> {
        let at = Placement {
            netns: Some(&node.netns_path),
            cgroup: None,
        };
        self.spawn_at(&node.name, cmd, &at)
    }

    /// Runs `cmd` to completion in the pod (netns and cgroup), with the default timeout.
    pub fn run_in_pod(&self, pod: &Pod, cmd: Command) -> anyhow::Result<Output> {
        self.run_in_pod_timeout(pod, cmd, DEFAULT_RUN_TIMEOUT)
    }

    /// [`Cluster::run_in_pod`] with an explicit timeout.
    pub fn run_in_pod_timeout(
        &self,
        pod: &Pod,
        cmd: Command,
        timeout: Duration,
    ) -> anyhow::Result<Output> {
        let at = Placement {
            netns: Some(&pod.netns_path),
            cgroup: Some(&pod.cgroup),
        };
        process::run(cmd, &at, timeout)
    }

    /// Runs `cmd` to completion in the node's netns, with the default timeout.
    pub fn run_in_node(&self, node: &Node, cmd: Command) -> anyhow::Result<Output> {
        self.run_in_node_timeout(node, cmd, DEFAULT_RUN_TIMEOUT)
    }

    /// [`Cluster::run_in_node`] with an explicit timeout.
    pub fn run_in_node_timeout(
        &self,
        node: &Node,
        cmd: Command,
        timeout: Duration,
    ) -> anyhow::Result<Output> {
        let at = Placement {
            netns: Some(&node.netns_path),
            cgroup: None,
        };
        process::run(cmd, &at, timeout)
    }

    /// Starts `cmd` in the cluster network's netns (the one with `br0`), e.g. a capture.
    pub fn spawn_in_net(&self, cmd: Command) -> anyhow::Result<ProcHandle> {
        let path = self.net_netns_path();
        let at = Placement {
            netns: Some(&path),
            cgroup: None,
        };
        self.spawn_at("net", cmd, &at)
    }

    /// Runs `cmd` to completion in the cluster network's netns (the one with `br0`).
    pub fn run_in_net(&self, cmd: Command) -> anyhow::Result<Output> {
        let path = self.net_netns_path();
        let at = Placement {
            netns: Some(&path),
            cgroup: None,
        };
        process::run(cmd, &at, DEFAULT_RUN_TIMEOUT)
    }

    /// Runs `f` on a fresh thread inside the network namespace at `netns_path`.
    pub fn in_netns<T: Send, F: FnOnce() -> T + Send>(
        &self,
        netns_path: &Path,
        f: F,
    ) -> anyhow::Result<T> {
        netns::in_netns(netns_path, f)
    }

    /// All processes spawned so far.
    pub fn processes(&self) -> Vec<ProcHandle> {
        self.lock().procs.clone()
    }

    /// Removes everything the cluster created, in order: processes, pinned eBPF objects,
    /// network namespaces, cgroups, the temporary directory. Every step runs even if an
    /// earlier one failed; all errors are returned. Calling it again does nothing.
    pub fn cleanup(&self) -> Result<(), CleanupErrors> {
        let mut st = self.lock();
        if st.cleaned {
            return Ok(());
        }
        st.cleaned = true;
        let mut errs = CleanupErrors::default();

        // 1. processes (their process groups too), and anything else in the pod cgroups.
        for p in st.procs.drain(..) {
            if let Err(e) = p.kill() {
                errs.push_ctx(&format!("killing {}", p.name()), format!("{e:#}"));
            }
        }
        cgroup::kill_all(&self.cg_root);

        // 2. pinned eBPF objects.
        for d in pin_dirs_of(&self.prefix) {
            if let Err(e) = std::fs::remove_dir_all(&d) {
                errs.push_ctx(&format!("removing {}", d.display()), e);
            }
        }

        // 3. network namespaces, the ones we created plus any other with our prefix.
        let mut names = std::mem::take(&mut st.netns);
        let ours = format!("{}-", self.prefix);
        for n in netns::list() {
            if n.starts_with(&ours) && !names.contains(&n) {
                names.push(n);
            }
        }
        for n in names.iter().rev() {
            if let Err(e) = netns::delete(n) {
                errs.push(format!("{e:#}"));
            }
        }

        // 4. cgroups.
        cgroup::remove_tree(&self.cg_root, &mut errs);

        // 5. the temporary directory.
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errs.push_ctx(&format!("removing {}", self.dir.display()), e);
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// Prints the tail of every process's output to stderr (shown by the test runner
    /// when a test fails).
    pub fn dump_logs(&self) {
        for p in self.lock().procs.iter() {
            eprintln!(
                "--- {} (pid {}): {}{}",
                p.name(),
                p.pid(),
                p.command(),
                p.output_tail()
            );
        }
    }
}

/// IPv6 address of node `index` on the cluster network (`eth0`): `fd00:10:240::<index>`,
/// the twin of `10.240.0.<index>`.
pub fn node_ip6(index: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x240, 0, 0, 0, 0, u16::from(index))
}

/// IPv6 pod CIDR of node `node`: `fd00:10:244:<node>::/64`, the twin of `10.244.<node>.0/24`.
pub fn pod_cidr6(node: u8) -> String {
    format!(
        "{}/64",
        Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(node), 0, 0, 0, 0)
    )
}

/// IPv6 address `index` in node `node`'s pod CIDR: `fd00:10:244:<node>::<index>`, the twin
/// of `10.244.<node>.<index>` (index 1 is the node's gateway on `cbr0`).
pub fn pod_ip6(node: u8, index: u8) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        0x10,
        0x244,
        u16::from(node),
        0,
        0,
        0,
        u16::from(index),
    )
}

/// Turns duplicate address detection off for the interfaces created afterwards in the
/// namespace, link-local addresses included: otherwise they stay tentative for a second
/// or two, and neighbour discovery (so the first connection) waits for them.
fn no_dad(netns_path: &Path, name: &str) -> anyhow::Result<()> {
    netns::in_netns(netns_path, || {
        for conf in ["all", "default"] {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad"), "0")?;
        }
        Ok::<_, std::io::Error>(())
    })?
    .with_context(|| format!("turning IPv6 duplicate address detection off in {name}"))
}

/// The IPv6 half of [`Cluster::add_node`]: addresses on `eth0` and `cbr0` (no DAD),
/// forwarding on, and routes both ways between `node` and every node in `others`.
fn add_node_ip6(node: &Node, others: &[NodeState]) -> anyhow::Result<()> {
    let (Some(ip6), Some(gw6), Some(cidr6)) = (node.ip6, node.gateway6, &node.pod_cidr6) else {
        return Ok(());
    };
    let ns = &node.netns;
    netns::in_netns(&node.netns_path, || {
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
    })?
    .with_context(|| format!("enabling net.ipv6.conf.all.forwarding in {ns}"))?;
    let eth = format!("{ip6}/64");
    let gw = format!("{gw6}/64");
    ip_in(ns, &["-6", "addr", "add", &eth, "dev", "eth0", "nodad"])?;
    ip_in(ns, &["-6", "addr", "add", &gw, "dev", "cbr0", "nodad"])?;
    for other in others {
        let o = &other.node;
        let (Some(o_ip6), Some(o_cidr6)) = (o.ip6, &o.pod_cidr6) else {
            continue;
        };
        ip_in(
            ns,
            &["-6", "route", "replace", o_cidr6, "via", &o_ip6.to_string()],
        )?;
        ip_in(
            &o.netns,
            &["-6", "route", "replace", cidr6, "via", &ip6.to_string()],
        )?;
    }
    Ok(())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "meshd-tests: cluster {} ({}) torn down after a panic",
                self.prefix, self.test_name
            );
            self.dump_logs();
        }
        if let Err(e) = self.cleanup() {
            eprintln!(
                "meshd-tests: cleanup of cluster {} ({}): {e}",
                self.prefix, self.test_name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn shareable_between_threads() {
        send_sync::<Cluster>();
        send_sync::<ProcHandle>();
        send_sync::<Node>();
        send_sync::<Pod>();
    }

    /// The IPv6 plan mirrors the IPv4 one: the same node and pod numbers in the last
    /// group, every pod inside its node's /64, the gateway `::1`, nodes on one /64 that
    /// overlaps no pod CIDR, and no two addresses equal.
    #[test]
    fn ipv6_address_plan() {
        assert_eq!(node_ip6(1).to_string(), "fd00:10:240::1");
        assert_eq!(node_ip6(2).to_string(), "fd00:10:240::2");
        assert_eq!(pod_cidr6(1), "fd00:10:244:1::/64");
        assert_eq!(pod_cidr6(12), "fd00:10:244:c::/64");
        assert_eq!(pod_ip6(1, 1).to_string(), "fd00:10:244:1::1");
        assert_eq!(pod_ip6(2, 3).to_string(), "fd00:10:244:2::3");
        let prefix64 = |a: Ipv6Addr| a.segments()[..4].to_vec();
        let mut seen = HashSet::new();
        for n in 1..=250u8 {
            let cidr: Ipv6Addr = pod_cidr6(n).trim_end_matches("/64").parse().unwrap();
            assert!(seen.insert(node_ip6(n)), "node {n}");
            assert_ne!(prefix64(node_ip6(n)), prefix64(cidr), "node {n}");
            assert_eq!(prefix64(node_ip6(n)), prefix64(node_ip6(1)));
            for m in 1..=u8::MAX {
                let ip = pod_ip6(n, m);
                assert!(seen.insert(ip), "pod {n}/{m}");
                assert_eq!(prefix64(ip), prefix64(cidr), "pod {n}/{m} in {cidr}");
                assert_eq!(ip.segments()[7], u16::from(m));
                assert!((ip.segments()[0] & 0xfe00) == 0xfc00, "ULA: {ip}");
            }
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("pod", "pod-a2").is_ok());
        assert!(validate_name("pod", "").is_err());
        assert!(validate_name("pod", "-a").is_err());
        assert!(validate_name("pod", "a_b").is_err());
        assert!(validate_name("pod", "net").is_err());
        assert!(validate_name("pod", &"a".repeat(MAX_NAME + 1)).is_err());
    }
}
