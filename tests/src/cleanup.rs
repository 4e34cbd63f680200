//! Finding and removing what test clusters left behind (e.g. after a killed test run).

use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cluster::{CGROUP_DIR_PREFIX, TMP_DIR_PREFIX};
use crate::error::CleanupErrors;
use crate::util::BPFFS;
use crate::{cgroup, netns};

const TMP: &str = "/tmp";

/// Process names that must not outlive a test suite (wherever they run).
const PROCESS_NAMES: [&str; 2] = ["meshd", "meshd-testapp"];

/// Name prefix of `meshd check`'s scratch pin dir and cgroup (`meshd-check-<pid>`).
const CHECK_PREFIX: &str = "meshd-check-";

/// Environment variable the harness sets on every process it starts (inherited by their
/// children): the cluster prefix. It identifies a cluster's processes even after the
/// cluster's namespaces are gone or when they run outside its cgroup (node processes).
pub(crate) const CLUSTER_ENV: &str = "MESHD_TEST_CLUSTER";

/// Name prefix of meshd's eBPF programs (`meshd_connect4`, `meshd_sk_lookup`, ...).
const PROGRAM_PREFIX: &str = "meshd_";

/// True for `mt` + 4 hex digits: a cluster prefix.
fn is_prefix(s: &str) -> bool {
    s.len() == 6 && s.starts_with("mt") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The cluster prefix of a netns name `mtXXXX-...`.
pub(crate) fn netns_prefix(name: &str) -> Option<&str> {
    let p = name.get(..6)?;
    (is_prefix(p) && name.as_bytes().get(6) == Some(&b'-')).then_some(p)
}

fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The pin roots of cluster `prefix`: `/sys/fs/bpf/meshd-test-<prefix>-*`.
pub(crate) fn pin_dirs_of(prefix: &str) -> Vec<PathBuf> {
    let start = format!("{CGROUP_DIR_PREFIX}{prefix}-");
    dir_entries(Path::new(BPFFS))
        .into_iter()
        .filter(|n| n.starts_with(&start))
        .map(|n| Path::new(BPFFS).join(n))
        .collect()
}

/// Start time (clock ticks since boot) of a process, to tell a live owner from a reused pid.
fn proc_starttime(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Contents of a cluster's owner file: `<pid> <starttime>\n<test name>\n`.
pub(crate) fn owner_line(pid: u32, test_name: &str) -> String {
    format!("{pid} {}\n{test_name}\n", proc_starttime(pid).unwrap_or(0))
}

/// True if the process that created cluster `prefix` is still running.
fn owner_alive(prefix: &str) -> bool {
    let f = Path::new(TMP)
        .join(format!("{TMP_DIR_PREFIX}{prefix}"))
        .join("owner");
    let Ok(text) = std::fs::read_to_string(f) else {
        return false;
    };
    let mut it = text.split_whitespace();
    let (Some(pid), Some(start)) = (
        it.next().and_then(|s| s.parse::<u32>().ok()),
        it.next().and_then(|s| s.parse::<u64>().ok()),
    ) else {
        return false;
    };
    proc_starttime(pid) == Some(start)
}

#[derive(Debug, Default)]
struct ProcInfo {
    pid: i32,
    comm: String,
    cmdline: String,
    cgroup: String,
    /// Inode of the process's network namespace.
    netns: Option<u64>,
    /// The value of [`CLUSTER_ENV`] in its environment.
    cluster_env: Option<String>,
}

fn processes() -> Vec<ProcInfo> {
    use std::os::unix::fs::MetadataExt;
    let me = std::process::id().to_string();
    dir_entries(Path::new("/proc"))
        .into_iter()
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()) && *n != me)
        .filter_map(|n| {
            let pid: i32 = n.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let state = stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .next()?
                .to_string();
            if state == "Z" || state == "X" {
                return None;
            }
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()?
                .trim()
                .to_string();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .replace('\0', " ")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let netns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .ok()
                .map(|m| m.ino());
            let cluster_env = std::fs::read(format!("/proc/{pid}/environ"))
                .ok()
                .and_then(|b| env_value(&b, CLUSTER_ENV));
            Some(ProcInfo {
                pid,
                comm,
                cmdline,
                cgroup,
                netns,
                cluster_env,
            })
        })
        .collect()
}

/// The value of `name` in a `/proc/<pid>/environ` block (`K=V\0K=V\0...`).
fn env_value(environ: &[u8], name: &str) -> Option<String> {
    let want = format!("{name}=");
    environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(want.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Inodes of the named network namespaces of cluster `prefix` (of every cluster if
/// `prefix` is `None`).
fn cluster_netns_inodes(prefix: Option<&str>) -> Vec<u64> {
    netns::list()
        .into_iter()
        .filter(|n| match prefix {
            Some(p) => n.starts_with(&format!("{p}-")),
            None => netns_prefix(n).is_some(),
        })
        .filter_map(|n| netns::netns_inode(&netns::netns_path(&n)).ok())
        .collect()
}

/// True if `p` was started for cluster `prefix` (for any cluster if `None`): it carries
/// the harness's [`CLUSTER_ENV`] (set on every process the harness starts and inherited by
/// their children), or it is in the cluster's cgroup tree, or in one of its network
/// namespaces (`netns_inodes`), or its command line names the cluster's directories.
fn belongs(p: &ProcInfo, prefix: Option<&str>, netns_inodes: &[u64]) -> bool {
    let named = |s: &str| match prefix {
        Some(pre) => s == pre,
        None => is_prefix(s),
    };
    if p.cluster_env.as_deref().is_some_and(named) {
        return true;
    }
    if p.netns.is_some_and(|i| netns_inodes.contains(&i)) {
        return true;
    }
    // `0::/meshd-test-mt1234/pod` (cgroup v2), possibly below a parent cgroup.
    let in_cgroup = p.cgroup.lines().any(|l| {
        l.split('/')
            .any(|part| part.strip_prefix(CGROUP_DIR_PREFIX).is_some_and(&named))
    });
    if in_cgroup {
        return true;
    }
    let tag = match prefix {
        Some(pre) => format!("{CGROUP_DIR_PREFIX}{pre}"),
        None => CGROUP_DIR_PREFIX.to_string(),
    };
    p.cmdline.contains(&tag)
}

/// Processes that belong to cluster `prefix` (see [`belongs`]).
fn processes_of(prefix: &str) -> Vec<ProcInfo> {
    let inodes = cluster_netns_inodes(Some(prefix));
    processes()
        .into_iter()
        .filter(|p| belongs(p, Some(prefix), &inodes))
        .collect()
}

/// `dir` and everything below it (directories first), as paths; for bpffs pin trees and
/// cgroup trees, so that a new entry inside a directory that existed before is seen.
fn tree(dir: &Path, dirs_only: bool, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut children: Vec<(PathBuf, bool)> = rd
        .filter_map(|e| e.ok())
        .map(|e| (e.path(), e.file_type().map(|t| t.is_dir()).unwrap_or(false)))
        .collect();
    children.sort();
    for (path, is_dir) in children {
        if is_dir {
            tree(&path, dirs_only, out);
        } else if !dirs_only {
            out.push(path);
        }
    }
}

/// meshd's eBPF programs loaded in the kernel and the BPF links running them, from
/// `bpftool -j prog show` and `bpftool -j link show` (an entry saying why, if they cannot
/// be listed). Pinned or not: a program the agent attached without pinning, or a link a
/// crashed agent left attached, shows here.
fn bpf_objects() -> Vec<String> {
    let run = |args: &[&str]| -> Result<serde_json::Value, String> {
        let out = std::process::Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run bpftool: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "bpftool {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "bpftool {}: not JSON ({e}): {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    };
    let listed = run(&["prog", "show"])
        .and_then(|progs| Ok((progs, run(&["link", "show"])?)))
        .and_then(|(progs, links)| meshd_bpf_objects(&progs, &links));
    match listed {
        Ok(v) => v,
        Err(e) => vec![format!("bpf objects: cannot list them: {e}")],
    }
}

/// The entries of [`bpf_objects`] from bpftool's JSON: `bpf prog <id> <name> (<type>)` for
/// each program named `meshd_*`, `bpf link <id> <type> <attach type> -> prog <id> <name>
/// (<target>)` for each link to one of them.
fn meshd_bpf_objects(
    progs: &serde_json::Value,
    links: &serde_json::Value,
) -> Result<Vec<String>, String> {
    let progs = progs
        .as_array()
        .ok_or_else(|| format!("bpftool prog show: not an array: {progs}"))?;
    let links = links
        .as_array()
        .ok_or_else(|| format!("bpftool link show: not an array: {links}"))?;
    let mut out = Vec::new();
    let mut ours = std::collections::BTreeMap::new();
    for p in progs {
        let id = p["id"]
            .as_u64()
            .ok_or_else(|| format!("bpftool prog show: a program without id: {p}"))?;
        // Programs loaded without a name have none in the JSON.
        let name = p["name"].as_str().unwrap_or_default();
        if name.starts_with(PROGRAM_PREFIX) {
            out.push(format!(
                "bpf prog {id} {name} ({})",
                p["type"].as_str().unwrap_or("?")
            ));
            ours.insert(id, name.to_string());
        }
    }
    for l in links {
        let id = l["id"]
            .as_u64()
            .ok_or_else(|| format!("bpftool link show: a link without id: {l}"))?;
        let Some(name) = l["prog_id"].as_u64().and_then(|p| ours.get(&p)) else {
            continue;
        };
        let target = if let Some(ino) = l["netns_ino"].as_u64() {
            format!("netns inode {ino}")
        } else if let Some(cg) = l["cgroup_id"].as_u64() {
            format!("cgroup id {cg}")
        } else {
            "?".to_string()
        };
        out.push(format!(
            "bpf link {id} {} {} -> prog {} {name} ({target})",
            l["type"].as_str().unwrap_or("?"),
            l["attach_type"].as_str().unwrap_or("?"),
            l["prog_id"],
        ));
    }
    Ok(out)
}

/// Lists what test clusters left on the machine, one human-readable line per thing.
///
/// With `prefix_filter` empty (or `"mt"`), everything:
/// - network namespaces `mtXXXX-*`;
/// - cgroups `<cg2>/meshd-test-*` and `meshd check`'s `<cg2>/meshd-check-*`, with every
///   cgroup below them;
/// - bpffs entries `/sys/fs/bpf/meshd-test-*`, `/sys/fs/bpf/meshd-check-*` and
///   `/sys/fs/bpf/meshd`, each with everything pinned below it (so a new pin inside a
///   directory that existed before is a new line);
/// - temporary dirs `/tmp/meshd-test-*` and `/tmp/meshd-check-*`;
/// - processes: every process the harness started and their children (see [`belongs`]:
///   the harness's environment tag, a cluster cgroup, a cluster network namespace, or a
///   command line naming a cluster directory), and any process named `meshd` or
///   `meshd-testapp` wherever it runs;
/// - meshd's eBPF programs (`meshd_*`) loaded in the kernel and the links running them,
///   pinned or not (from bpftool).
///
/// With a cluster prefix, only what belongs to that cluster (no eBPF objects: they cannot
/// be told apart by cluster once its namespaces and cgroups are gone).
pub fn leftovers(prefix_filter: &str) -> Vec<String> {
    let global = prefix_filter.is_empty() || prefix_filter == "mt";
    let mut out = Vec::new();
    for n in netns::list() {
        let hit = if global {
            netns_prefix(&n).is_some()
        } else {
            n.starts_with(&format!("{prefix_filter}-"))
        };
        if hit {
            out.push(format!("netns {n}"));
        }
    }
    if let Ok(cg2) = cgroup::cgroup2_mount() {
        for n in dir_entries(&cg2) {
            let hit = if global {
                n.starts_with(CGROUP_DIR_PREFIX) || n.starts_with(CHECK_PREFIX)
            } else {
                n == format!("{CGROUP_DIR_PREFIX}{prefix_filter}")
            };
            if hit {
                let mut dirs = Vec::new();
                tree(&cg2.join(n), true, &mut dirs);
                out.extend(dirs.iter().map(|d| format!("cgroup {}", d.display())));
            }
        }
    }
    for n in dir_entries(Path::new(BPFFS)) {
        let hit = if global {
            n.starts_with(CGROUP_DIR_PREFIX) || n.starts_with(CHECK_PREFIX) || n == "meshd"
        } else {
            n.starts_with(&format!("{CGROUP_DIR_PREFIX}{prefix_filter}-"))
        };
        if hit {
            let mut paths = Vec::new();
            tree(&Path::new(BPFFS).join(n), false, &mut paths);
            out.extend(paths.iter().map(|p| format!("bpffs {}", p.display())));
        }
    }
    for n in dir_entries(Path::new(TMP)) {
        let hit = if global {
            n.starts_with(TMP_DIR_PREFIX) || n.starts_with(CHECK_PREFIX)
        } else {
            n == format!("{TMP_DIR_PREFIX}{prefix_filter}")
        };
        if hit {
            out.push(format!("tmpdir {}", Path::new(TMP).join(n).display()));
        }
    }
    let procs = if global {
        let inodes = cluster_netns_inodes(None);
        processes()
            .into_iter()
            .filter(|p| PROCESS_NAMES.contains(&p.comm.as_str()) || belongs(p, None, &inodes))
            .collect()
    } else {
        processes_of(prefix_filter)
    };
    for p in procs {
        out.push(format!("process {} {} ({})", p.pid, p.comm, p.cmdline));
    }
    if global {
        out.extend(bpf_objects());
    }
    out.sort();
    out
}

/// All cluster prefixes that have something on the machine.
fn known_prefixes() -> Vec<String> {
    let mut v: Vec<String> = netns::list()
        .iter()
        .filter_map(|n| netns_prefix(n).map(str::to_string))
        .collect();
    let strip = |n: String| {
        n.strip_prefix(CGROUP_DIR_PREFIX)
            .and_then(|r| r.get(..6))
            .map(str::to_string)
    };
    if let Ok(cg2) = cgroup::cgroup2_mount() {
        v.extend(dir_entries(&cg2).into_iter().filter_map(strip));
    }
    v.extend(dir_entries(Path::new(BPFFS)).into_iter().filter_map(strip));
    v.extend(dir_entries(Path::new(TMP)).into_iter().filter_map(strip));
    v.retain(|p| is_prefix(p));
    v.sort();
    v.dedup();
    v
}

/// The prefixes of the clusters on the machine that process `pid` created (from their
/// owner files), e.g. to check that a test built none.
pub fn clusters_of_process(pid: u32) -> Vec<String> {
    known_prefixes()
        .into_iter()
        .filter(|p| owner_pid(p) == Some(pid))
        .collect()
}

fn owner_pid(prefix: &str) -> Option<u32> {
    let f = Path::new(TMP)
        .join(format!("{TMP_DIR_PREFIX}{prefix}"))
        .join("owner");
    std::fs::read_to_string(f)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Removes the leftovers of killed test runs. With a cluster prefix (`mtXXXX`), removes
/// everything of that cluster, whoever owns it. With `""`, removes every cluster whose
/// creating process is no longer running (clusters of a live test run are left alone).
/// Never touches `/sys/fs/bpf/meshd` or processes that belong to no test cluster.
/// Returns the prefixes it cleaned.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>, CleanupErrors> {
    let prefixes: Vec<String> = if prefix.is_empty() {
        known_prefixes()
            .into_iter()
            .filter(|p| !owner_alive(p))
            .collect()
    } else {
        vec![prefix.to_string()]
    };
    let mut errs = CleanupErrors::default();
    for p in &prefixes {
        clean_prefix(p, &mut errs);
    }
    if errs.is_empty() {
        Ok(prefixes)
    } else {
        Err(errs)
    }
}

fn clean_prefix(prefix: &str, errs: &mut CleanupErrors) {
    let cg_root = cgroup::cgroup2_mount()
        .ok()
        .map(|m| m.join(format!("{CGROUP_DIR_PREFIX}{prefix}")));
    // processes
    if let Some(cg) = &cg_root {
        cgroup::kill_all(cg);
    }
    for p in processes_of(prefix) {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
    // pins
    for d in pin_dirs_of(prefix) {
        if let Err(e) = std::fs::remove_dir_all(&d) {
            errs.push_ctx(&format!("removing {}", d.display()), e);
        }
    }
    // netns
    for n in netns::list() {
        if n.starts_with(&format!("{prefix}-")) {
            if let Err(e) = netns::delete(&n) {
                errs.push(format!("{e:#}"));
            }
        }
    }
    // cgroups
    if let Some(cg) = &cg_root {
        cgroup::remove_tree(cg, errs);
    }
    // temporary dir
    let dir = Path::new(TMP).join(format!("{TMP_DIR_PREFIX}{prefix}"));
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            errs.push_ctx(&format!("removing {}", dir.display()), e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert!(is_prefix("mt0a9f"));
        assert!(!is_prefix("mt0a9g"));
        assert_eq!(netns_prefix("mt0a9f-node1"), Some("mt0a9f"));
        assert_eq!(netns_prefix("mt0a9f"), None);
        assert_eq!(netns_prefix("mtxxxx-a"), None);
    }

    #[test]
    fn environ_values() {
        let env = b"PATH=/bin\0MESHD_TEST_CLUSTER=mt0a9f\0X=1\0";
        assert_eq!(env_value(env, CLUSTER_ENV).as_deref(), Some("mt0a9f"));
        assert_eq!(env_value(env, "MESHD_TEST"), None);
        assert_eq!(env_value(b"", CLUSTER_ENV), None);
    }

    /// A cluster's process is recognised by any one of its marks, for that cluster only;
    /// an unrelated process by none.
    #[test]
    fn processes_belong_by_env_netns_cgroup_or_cmdline() {
        let plain = ProcInfo {
            pid: 10,
            comm: "sleep".into(),
            cmdline: "sleep 100".into(),
            cgroup: "0::/user.slice/session-1.scope\n".into(),
            netns: Some(4026531840),
            cluster_env: None,
        };
        assert!(!belongs(&plain, None, &[77]));
        assert!(!belongs(&plain, Some("mt0a9f"), &[77]));
        // A grandchild in a node's netns: only the inherited environment and the netns.
        let by_env = ProcInfo {
            cluster_env: Some("mt0a9f".into()),
            ..ProcInfo::default()
        };
        assert!(belongs(&by_env, None, &[]));
        assert!(belongs(&by_env, Some("mt0a9f"), &[]));
        assert!(!belongs(&by_env, Some("mt1111"), &[]));
        let by_netns = ProcInfo {
            netns: Some(77),
            ..ProcInfo::default()
        };
        assert!(belongs(&by_netns, None, &[5, 77]));
        assert!(!belongs(&by_netns, None, &[5]));
        let by_cgroup = ProcInfo {
            cgroup: "0::/meshd-test-mt0a9f/pod\n".into(),
            ..ProcInfo::default()
        };
        assert!(belongs(&by_cgroup, None, &[]));
        assert!(belongs(&by_cgroup, Some("mt0a9f"), &[]));
        assert!(!belongs(&by_cgroup, Some("mt0a9"), &[]));
        let by_cmdline = ProcInfo {
            cmdline: "tail -f /tmp/meshd-test-mt0a9f/n1-meshd-3.err".into(),
            ..ProcInfo::default()
        };
        assert!(belongs(&by_cmdline, None, &[]));
        assert!(belongs(&by_cmdline, Some("mt0a9f"), &[]));
        assert!(!belongs(&by_cmdline, Some("mt1111"), &[]));
        // The test crate's own name is not a cluster directory.
        let cargo = ProcInfo {
            cmdline: "cargo test -p meshd-tests".into(),
            ..ProcInfo::default()
        };
        assert!(!belongs(&cargo, None, &[]));
    }

    /// meshd's programs (by name) and the links running them are listed, pinned or not;
    /// other programs and links are not; bpftool output of another shape is an error.
    #[test]
    fn bpf_objects_of_meshd() {
        let progs = serde_json::json!([
            {"id": 7, "type": "cgroup_sock_addr", "name": "meshd_connect4"},
            {"id": 8, "type": "sk_lookup", "name": "meshd_sk_lookup"},
            {"id": 9, "type": "cgroup_skb", "name": "sd_fw_egress"},
            {"id": 10, "type": "kprobe"}
        ]);
        let links = serde_json::json!([
            {"id": 1, "type": "cgroup", "prog_id": 7, "cgroup_id": 1234, "attach_type": "cgroup_inet4_connect"},
            {"id": 2, "type": "netns", "prog_id": 8, "netns_ino": 4026532000u64, "attach_type": "sk_lookup"},
            {"id": 3, "type": "cgroup", "prog_id": 9, "cgroup_id": 1, "attach_type": "cgroup_inet_egress"}
        ]);
        assert_eq!(
            meshd_bpf_objects(&progs, &links).unwrap(),
            [
                "bpf prog 7 meshd_connect4 (cgroup_sock_addr)",
                "bpf prog 8 meshd_sk_lookup (sk_lookup)",
                "bpf link 1 cgroup cgroup_inet4_connect -> prog 7 meshd_connect4 (cgroup id 1234)",
                "bpf link 2 netns sk_lookup -> prog 8 meshd_sk_lookup (netns inode 4026532000)",
            ]
        );
        let empty = serde_json::json!([]);
        assert_eq!(
            meshd_bpf_objects(&empty, &empty).unwrap(),
            Vec::<String>::new()
        );
        assert!(meshd_bpf_objects(&serde_json::Value::Null, &empty).is_err());
        assert!(meshd_bpf_objects(&empty, &serde_json::json!({"links": []})).is_err());
    }

    /// Every entry below a directory is listed, so a pin added inside a directory that
    /// existed before the run is a new line.
    #[test]
    fn trees_list_every_entry() {
        let root = std::env::temp_dir().join(format!("cleanup-tree-{}", std::process::id()));
        std::fs::create_dir_all(root.join("maps")).unwrap();
        std::fs::write(root.join("maps/a"), "").unwrap();
        std::fs::write(root.join("b"), "").unwrap();
        let mut all = Vec::new();
        tree(&root, false, &mut all);
        let mut dirs = Vec::new();
        tree(&root, true, &mut dirs);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            all,
            [
                root.clone(),
                root.join("b"),
                root.join("maps"),
                root.join("maps/a")
            ]
        );
        assert_eq!(dirs, [root.clone(), root.join("maps")]);
    }
}
