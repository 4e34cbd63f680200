//! cgroup v2 helpers: find the mount, create, kill everything inside, remove.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::CleanupErrors;
use crate::util::mounts;

/// The cgroup2 mount point, read from /proc/mounts (e.g. `/sys/fs/cgroup` or
/// `/sys/fs/cgroup/unified` on hybrid systems).
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    mounts()?
        .into_iter()
        .find(|(_, t)| t == "cgroup2")
        .map(|(m, _)| PathBuf::from(m))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no cgroup2 filesystem mounted (see /proc/mounts); meshd needs cgroup v2"
            )
        })
}

/// Pids listed in `<cgroup>/cgroup.procs` (empty if unreadable).
pub fn cgroup_pids(cgroup: &Path) -> Vec<i32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

pub(crate) fn create(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir(path).with_context(|| format!("creating cgroup {}", path.display()))
}

fn child_cgroups(path: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs every process in the cgroup tree (cgroup.kill where the kernel has it, and
/// the listed pids in any case).
pub(crate) fn kill_all(path: &Path) {
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    for child in child_cgroups(path) {
        kill_all(&child);
    }
    for pid in cgroup_pids(path) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Kills all processes in the tree, then removes the child cgroups and `path` itself,
/// retrying on EBUSY for a few seconds (killed processes take a moment to leave).
pub(crate) fn remove_tree(path: &Path, errs: &mut CleanupErrors) {
    if !path.exists() {
        return;
    }
    kill_all(path);
    for child in child_cgroups(path) {
        remove_tree(&child, errs);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == ErrorKind::NotFound => return,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                kill_all(path);
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                errs.push_ctx(
                    &format!(
                        "rmdir cgroup {} (pids still inside: {:?})",
                        path.display(),
                        cgroup_pids(path)
                    ),
                    e,
                );
                return;
            }
        }
    }
}
