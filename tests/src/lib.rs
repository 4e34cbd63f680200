//! Test harness for meshd: builds a small "cluster" out of network namespaces, cgroups,
//! bridges and veth pairs on one Linux machine, runs real processes as apps and agents
//! inside it, and removes everything it created again when the [`Cluster`] is dropped
//! (also on panic). How the suite uses it: `docs/testing.md`.
//!
//! Topology (kubenet-like), for a cluster with prefix `mtXXXX`:
//!
//! - netns `mtXXXX-net` with bridge `br0`: the network between nodes;
//! - per node N: netns `mtXXXX-<node>`, `eth0` = `10.240.0.N/24` (veth to `br0`), bridge
//!   `cbr0` = `10.244.N.1/24`, IP forwarding on, routes to the other nodes' pod CIDRs;
//! - per pod M on node N: netns `mtXXXX-<pod>`, `eth0` = `10.244.N.M/24` (veth to the
//!   node's `cbr0`), default route via `10.244.N.1`, cgroup
//!   `<cgroup2>/meshd-test-mtXXXX/<pod>`.
//!
//! Every fallible function returns `anyhow::Result`; the typed errors of this crate are
//! [`HarnessError`] values that can be downcast from it.

mod cgroup;
mod cleanup;
mod cluster;
mod error;
mod http;
mod netns;
mod process;
mod util;

pub mod bench;
pub mod enroll;
pub mod mesh;
pub mod metrics;
pub mod traffic;
pub mod two_nodes;

pub use cgroup::{cgroup2_mount, cgroup_pids};
pub use cleanup::clusters_of_process;
pub use cleanup::{cleanup_stale, leftovers};
pub use cluster::{Cluster, Node, Pod, CGROUP_DIR_PREFIX, TMP_DIR_PREFIX};
pub use error::{CleanupErrors, HarnessError};
pub use http::{http_get, http_get_timeout};
pub use netns::{in_netns, netns_inode, netns_path, NETNS_RUN_DIR};
pub use nix::sys::signal::Signal;
pub use process::{ProcHandle, DEFAULT_RUN_TIMEOUT};
pub use util::{ensure_bpffs, replace_file, require_root, wait_until};
