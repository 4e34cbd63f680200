//! Every bpffs path meshd uses, in one place (like bpfman's single module of paths).
//!
//! ```text
//! <root>/v3/maps/MESHD_PODS ...            maps, pinned by name
//! <root>/v3/progs/meshd_connect4 ...       programs
//! <root>/v3/links/<namespace>_<pod>/connect4   one link per workload and program
//! ```
//! `_` cannot appear in Kubernetes names, so a link directory names exactly one workload.
//!
//! An agent of another pin version (an upgrade, or a downgrade) finds the tree of the
//! agent it replaces next to its own: [`PinPaths::other_versions`].

use std::path::{Path, PathBuf};

use meshd_common::PIN_VERSION;

#[derive(Debug, Clone)]
pub struct PinPaths {
    root: PathBuf,
    version: u32,
}

impl PinPaths {
    /// `bpffs_root` is the configured root, e.g. `/sys/fs/bpf/meshd`.
    pub fn new(bpffs_root: &Path) -> PinPaths {
        PinPaths::of_version(bpffs_root, PIN_VERSION)
    }

    fn of_version(bpffs_root: &Path, version: u32) -> PinPaths {
        PinPaths {
            root: bpffs_root.join(format!("v{version}")),
            version,
        }
    }

    /// The pin version of this tree.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The trees that agents of other pin versions left under the same root (`v2/` next to
    /// `v3/`), by version.
    pub fn other_versions(&self) -> Vec<PinPaths> {
        let Some(bpffs_root) = self.root.parent() else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(bpffs_root) else {
            return Vec::new();
        };
        let mut versions: Vec<u32> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| parse_version(&e.file_name().to_string_lossy()))
            .filter(|v| *v != self.version)
            .collect();
        versions.sort_unstable();
        versions
            .into_iter()
            .map(|v| PinPaths::of_version(bpffs_root, v))
            .collect()
    }

    /// The versioned directory everything lives under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn progs(&self) -> PathBuf {
        self.root.join("progs")
    }

    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs().join(name)
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Directory of one workload's links; `key` is `namespace/name`.
    pub fn workload_links(&self, key: &str) -> PathBuf {
        self.links().join(key.replacen('/', "_", 1))
    }

    /// The workload key (`namespace/name`) of a link directory name.
    pub fn workload_key(dir_name: &str) -> Option<String> {
        dir_name.split_once('_').map(|(ns, n)| format!("{ns}/{n}"))
    }
}

/// `v2` → 2; anything else (another tool's directory) is not a pin tree of meshd's.
fn parse_version(dir_name: &str) -> Option<u32> {
    let digits = dir_name.strip_prefix('v')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let p = PinPaths::new(Path::new("/sys/fs/bpf/meshd"));
        assert_eq!(p.root(), Path::new("/sys/fs/bpf/meshd/v3"));
        assert_eq!(
            p.prog("meshd_connect4"),
            Path::new("/sys/fs/bpf/meshd/v3/progs/meshd_connect4")
        );
        let dir = p.workload_links("default/web-1.a");
        assert_eq!(dir, Path::new("/sys/fs/bpf/meshd/v3/links/default_web-1.a"));
        let name = dir.file_name().unwrap().to_str().unwrap();
        assert_eq!(PinPaths::workload_key(name).unwrap(), "default/web-1.a");
    }

    #[test]
    fn version_directories() {
        assert_eq!(parse_version("v2"), Some(2));
        assert_eq!(parse_version("v10"), Some(10));
        for other in ["v", "v-1", "v2x", "2", "vx", "v+2"] {
            assert_eq!(parse_version(other), None, "{other}");
        }
        let root = std::env::temp_dir().join(format!("meshd-pins-{}", std::process::id()));
        for dir in ["v1", "v2", "v3", "v4", "other", "v2x"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("v5"), b"a file, not a tree").unwrap();
        let p = PinPaths::of_version(&root, 3);
        let others: Vec<u32> = p.other_versions().iter().map(PinPaths::version).collect();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(others, [1, 2, 4]);
    }
}
