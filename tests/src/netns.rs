//! Network namespaces: create/delete named ones (iproute2) and enter one on a thread.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nix::sched::{setns, CloneFlags};

use crate::util::ip;

/// Where iproute2 keeps named network namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// `/run/netns/<name>`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// The inode number identifying a network namespace file (or `/proc/<pid>/ns/net`).
pub fn netns_inode(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .ino())
}

pub(crate) fn create(name: &str) -> anyhow::Result<()> {
    ip(&["netns", "add", name])?;
    Ok(())
}

pub(crate) fn delete(name: &str) -> anyhow::Result<()> {
    ip(&["netns", "del", name])?;
    Ok(())
}

/// Names of all named network namespaces (the entries of /run/netns).
pub(crate) fn list() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Moves the calling thread into the network namespace at `path`.
pub(crate) fn enter(path: &Path) -> anyhow::Result<()> {
    let f = File::open(path).with_context(|| format!("opening netns {}", path.display()))?;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns into {}", path.display()))?;
    Ok(())
}

/// Runs `f` on a fresh thread that has entered the network namespace at `path` (e.g.
/// `/run/netns/mt1234-node1`), and returns its result. The calling thread is unaffected.
pub fn in_netns<T, F>(path: &Path, f: F) -> anyhow::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|s| {
        let h = s.spawn(move || -> anyhow::Result<T> {
            enter(path)?;
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}
