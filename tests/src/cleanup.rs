//! Finding and removing what test clusters left behind (e.g. after a killed test run).

use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cluster::{CGROUP_DIR_PREFIX, TMP_DIR_PREFIX};
use crate::error::CleanupErrors;
use crate::util::BPFFS;
use crate::{cgroup, netns};

const TMP: &str = "/tmp";

/// Process names that must not outlive a test suite.
const PROCESS_NAMES: [&str; 2] = ["meshd", "meshd-testapp"];

/// True for `mt` + 4 hex digits: a cluster prefix.
fn is_prefix(s: &str) -> bool {
    s.len() == 6 && s.starts_with("mt") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The cluster prefix of a netns name `mtXXXX-...`.
fn netns_prefix(name: &str) -> Option<&str> {
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

struct ProcInfo {
    pid: i32,
    comm: String,
    cmdline: String,
    cgroup: String,
}

fn processes() -> Vec<ProcInfo> {
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
            Some(ProcInfo {
                pid,
                comm,
                cmdline,
                cgroup,
            })
        })
        .collect()
}

/// Processes that belong to cluster `prefix`: in its cgroup, or naming its directories.
fn processes_of(prefix: &str) -> Vec<ProcInfo> {
    let tag = format!("{CGROUP_DIR_PREFIX}{prefix}");
    processes()
        .into_iter()
        .filter(|p| p.cgroup.contains(&tag) || p.cmdline.contains(&tag))
        .collect()
}

/// Lists what test clusters left on the machine. With `prefix_filter` empty (or `"mt"`),
/// everything: network namespaces `mtXXXX-*`, cgroup dirs `<cg2>/meshd-test-*`, bpffs
/// entries `/sys/fs/bpf/meshd-test-*` and `/sys/fs/bpf/meshd`, temporary dirs
/// `/tmp/meshd-test-*`, and running processes named `meshd` or `meshd-testapp`. With a
/// cluster prefix, only what belongs to that cluster (processes: those in its cgroup or
/// naming its directories). Each entry is one human-readable line.
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
                n.starts_with(CGROUP_DIR_PREFIX)
            } else {
                n == format!("{CGROUP_DIR_PREFIX}{prefix_filter}")
            };
            if hit {
                out.push(format!("cgroup {}", cg2.join(n).display()));
            }
        }
    }
    for n in dir_entries(Path::new(BPFFS)) {
        let hit = if global {
            n.starts_with(CGROUP_DIR_PREFIX) || n == "meshd"
        } else {
            n.starts_with(&format!("{CGROUP_DIR_PREFIX}{prefix_filter}-"))
        };
        if hit {
            out.push(format!("bpffs {}", Path::new(BPFFS).join(n).display()));
        }
    }
    for n in dir_entries(Path::new(TMP)) {
        let hit = if global {
            n.starts_with(TMP_DIR_PREFIX)
        } else {
            n == format!("{TMP_DIR_PREFIX}{prefix_filter}")
        };
        if hit {
            out.push(format!("tmpdir {}", Path::new(TMP).join(n).display()));
        }
    }
    let procs = if global {
        processes()
            .into_iter()
            .filter(|p| PROCESS_NAMES.contains(&p.comm.as_str()))
            .collect()
    } else {
        processes_of(prefix_filter)
    };
    for p in procs {
        out.push(format!("process {} {} ({})", p.pid, p.comm, p.cmdline));
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
}
