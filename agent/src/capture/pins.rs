//! Every bpffs path meshd uses, in one place (like bpfman's single module of paths).
//!
//! ```text
//! <root>/v3/maps/MESHD_PODS ...            maps, pinned by name
//! <root>/v3/progs/meshd_connect4 ...       programs
//! <root>/v3/links/<namespace>_<pod>/connect4   one link per workload and program
//! ```
//! `_` cannot appear in Kubernetes names, so a link directory names exactly one workload.

use std::path::{Path, PathBuf};

use meshd_common::PIN_VERSION;

#[derive(Debug, Clone)]
pub struct PinPaths {
    root: PathBuf,
}

impl PinPaths {
    /// `bpffs_root` is the configured root, e.g. `/sys/fs/bpf/meshd`.
    pub fn new(bpffs_root: &Path) -> PinPaths {
        PinPaths {
            root: bpffs_root.join(format!("v{PIN_VERSION}")),
        }
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
}
