//! What the agent enrolled: its `/config_dump` capture state (workloads, map entries) and
//! the programs it attaches, and a client loop that runs while enrollment changes.

use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::Value;

use crate::{
    mesh::{testapp_bin, Agent},
    wait_until, Cluster, Pod, ProcHandle,
};

/// The cgroup programs of one enrolled workload, sorted (see [`sorted`]).
pub const PROGRAMS: [&str; 4] = [
    "meshd_connect4",
    "meshd_connect6",
    "meshd_release",
    "meshd_sockops",
];

/// `v` sorted, to compare program lists whatever order bpftool lists them in.
pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The number of entries in the agent's BPF map `map` (`/config_dump` `capture.maps`).
pub fn map_count(agent: &Agent, map: &str) -> u64 {
    agent.config_dump().unwrap()["capture"]["maps"][map]
        .as_u64()
        .unwrap()
}

/// The `/config_dump` capture status of one workload (`Null` if the agent has none).
pub fn workload_status(agent: &Agent, key: &str) -> Value {
    agent.config_dump().unwrap()["capture"]["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["workload"] == key)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Whether the agent reports the workload `key` (`namespace/pod`) as enrolled.
pub fn enrolled(agent: &Agent, key: &str) -> bool {
    workload_status(agent, key)["enrolled"] == true
}

/// A client loop of `meshd-testapp connect-until` in a pod: one connection every 20 ms
/// until [`ClientLoop::stop`], each round printed as it ends.
pub struct ClientLoop {
    pub proc: ProcHandle,
    stop_file: PathBuf,
}

impl ClientLoop {
    /// Starts the loop from `pod` to `dst` (`ip:port`).
    pub fn start(c: &Cluster, pod: &Pod, dst: &str) -> ClientLoop {
        let stop_file = c.dir().join(format!("stop-{}", pod.name));
        let mut cmd = Command::new(testapp_bin());
        cmd.args(["connect-until", "--greet", "--connect", dst])
            .args(["--interval-ms", "20", "--stop-file"])
            .arg(&stop_file);
        let proc = c.spawn_in_pod(pod, cmd).unwrap();
        ClientLoop { proc, stop_file }
    }

    /// Rounds that succeeded so far.
    pub fn ok(&self) -> usize {
        self.proc
            .stdout()
            .lines()
            .filter(|l| l.starts_with("round ") && l.ends_with(" ok"))
            .count()
    }

    /// The messages of the rounds that failed so far.
    pub fn failures(&self) -> Vec<String> {
        self.proc
            .stdout()
            .lines()
            .filter(|l| l.starts_with("round ") && l.contains(" failed: "))
            .map(String::from)
            .collect()
    }

    /// Waits until `n` more rounds than now have succeeded.
    pub fn wait_more_ok(&self, n: usize, what: &str) {
        let target = self.ok() + n;
        assert!(
            wait_until(Duration::from_secs(30), || self.ok() >= target),
            "{what}: the client loop did not make {n} more rounds:\n{}",
            self.proc.output_tail()
        );
    }

    /// Ends the loop and returns its summary.
    pub fn stop(self) -> Value {
        std::fs::write(&self.stop_file, "").unwrap();
        self.proc.wait(Duration::from_secs(20)).unwrap();
        serde_json::from_str(self.proc.stdout().lines().last().unwrap()).unwrap()
    }
}
