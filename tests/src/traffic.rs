//! Traffic of the end-to-end tests: `meshd-testapp echo` from a pod, the agent's closed
//! connection records, and the apps of `tests/apps`.

use std::{
    ffi::OsStr,
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;

use crate::{
    mesh::{testapp_json, Agent},
    wait_until, Cluster, Pod, ProcHandle,
};

/// The folder of the test apps (`tests/apps`: Python HTTP servers and clients).
pub fn apps_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("apps")
}

/// Spawns `cmd` in a pod and waits (10 s at most) until it prints `listening`.
pub fn spawn_listening(c: &Cluster, pod: &Pod, cmd: Command) -> ProcHandle {
    let h = c.spawn_in_pod(pod, cmd).unwrap();
    h.wait_for_output("listening", Duration::from_secs(10))
        .unwrap();
    h
}

/// `meshd-testapp echo --greet` of `bytes` from `pod` to `to`, with `extra` arguments;
/// returns its JSON report whatever it says (it fails only if the testapp cannot run).
pub fn echo_with(c: &Cluster, pod: &Pod, to: &str, bytes: u64, extra: &[&str]) -> Value {
    let n = bytes.to_string();
    let mut args = vec!["echo", "--greet", "--connect", to, "--bytes", &n];
    args.extend_from_slice(extra);
    testapp_json(c, pod, &args).unwrap()
}

/// [`echo_with`] without extra arguments.
pub fn echo(c: &Cluster, pod: &Pod, to: &str, bytes: u64) -> Value {
    echo_with(c, pod, to, bytes, &[])
}

/// Echoes `bytes` from `pod` to `to` through a greeting server; asserts it succeeded and
/// every byte came back. Returns the report.
pub fn echo_ok(c: &Cluster, pod: &Pod, to: &str, bytes: u64) -> Value {
    let r = echo(c, pod, to, bytes);
    assert_eq!(r["ok"], true, "echo from {} to {to}: {r}", pod.name);
    assert_eq!(r["bytes_received"].as_u64(), Some(bytes), "{r}");
    r
}

/// The closed records of `direction` to `orig_dst` on `agent`, once there are at least `n`
/// (a record closes just after the client sees the end), or what there is after 10 s.
pub fn closed_records(agent: &Agent, direction: &str, orig_dst: &str, n: usize) -> Vec<Value> {
    let mut recs = Vec::new();
    wait_until(Duration::from_secs(10), || {
        recs = agent.closed_to(direction, orig_dst).unwrap();
        recs.len() >= n
    });
    recs
}

/// Waits until the agent reports exactly `n` closed connections matching the filter
/// (10 s at most); fails with the records otherwise.
pub fn wait_closed(agent: &Agent, direction: &str, orig_dst: &str, n: usize) -> Vec<Value> {
    let last = closed_records(agent, direction, orig_dst, n);
    assert_eq!(
        last.len(),
        n,
        "{direction} connections to {orig_dst}: {last:#?}"
    );
    last
}

/// Starts `tests/apps/<script> <port>` with the interpreter `python` (`python3`, or
/// `/usr/bin/python3` for apps that need the system's packages) in a pod and waits until
/// it listens.
pub fn start_app(c: &Cluster, pod: &Pod, python: &str, script: &str, port: u16) -> ProcHandle {
    let mut cmd = Command::new(python);
    cmd.arg(apps_dir().join(script)).arg(port.to_string());
    spawn_listening(c, pod, cmd)
}

/// `curl -sS --max-time MAX_TIME_SECS ARGS` in a pod; its output, whatever the exit status.
pub fn curl_output<S: AsRef<OsStr>>(
    c: &Cluster,
    pod: &Pod,
    max_time_secs: u32,
    args: &[S],
) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", &max_time_secs.to_string()])
        .args(args);
    c.run_in_pod(pod, cmd).unwrap()
}

/// Sends `payload` (Python escapes) to `ip:port` from a pod with `apps/raw_client.py`
/// (`shut_write`: then half-closes) and reads the reply to its end:
/// `{"reply", "end": "eof"|"reset"|"timeout", "secs"}`.
pub fn raw_client(
    c: &Cluster,
    pod: &Pod,
    ip: &str,
    port: u16,
    payload: &str,
    shut_write: bool,
) -> Value {
    let mut cmd = Command::new("python3");
    cmd.arg(apps_dir().join("raw_client.py"))
        .args([ip, &port.to_string(), payload]);
    if shut_write {
        cmd.arg("--shut-write");
    }
    let out = c.run_in_pod(pod, cmd).unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "raw_client: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The JSON report a test client prints as its last line of stdout; panics with `what`,
/// its stdout and its stderr if there is none.
pub fn last_json_line(what: &str, out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|_| panic!("{what}: {stdout} {}", String::from_utf8_lossy(&out.stderr)))
}

/// The client address the server app saw, from an echo report's greeting
/// (`hello peer=IP:PORT local=...`); `None` when there is no greeting or no address
/// (`peer=?`).
pub fn greeted_peer(report: &Value) -> Option<std::net::SocketAddr> {
    let greeting = report["greeting"].as_str()?;
    let peer = greeting
        .split_whitespace()
        .find_map(|w| w.strip_prefix("peer="))?;
    peer.parse().ok()
}

/// The client socket's own address in an echo report (`local`).
pub fn client_socket(report: &Value) -> Option<std::net::SocketAddr> {
    report["local"].as_str()?.parse().ok()
}

/// Whether the app was connected to the client's own socket (a connection the agent did
/// not take): the peer it greeted is exactly the client's local address. A delivery by the
/// agent comes from the client's address too (it is preserved), but from another port, or
/// from the pod's own address where the source cannot be kept.
pub fn app_saw_client_socket(report: &Value) -> bool {
    let same = |a: std::net::SocketAddr, b: std::net::SocketAddr| {
        a.ip().to_canonical() == b.ip().to_canonical() && a.port() == b.port()
    };
    matches!((greeted_peer(report), client_socket(report)), (Some(a), Some(b)) if same(a, b))
}

/// The `accepted` lines of a greeting server (`meshd-testapp serve`) whose connection was
/// not delivered by an agent: its socket does not carry the agent's delivery mark
/// (`inbound.deliveryMark`, default 0x3a9e, which the pod's `tcp_fwmark_accept` copies to
/// the app's socket). A connection that went around the mesh shows up here.
pub fn direct_accepts(app_stdout: &str) -> Vec<&str> {
    app_stdout
        .lines()
        .filter(|l| l.starts_with("accepted ") && !l.ends_with(" mark=0x3a9e"))
        .collect()
}
