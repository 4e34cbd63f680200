//! Draining on SIGTERM, two nodes with mutual TLS: a connection open through both agents
//! (HBONE between them) keeps working while the server's agent drains, and the agent exits
//! as soon as it ends; a new connection during the drain is refused; a connection still
//! open at the drain deadline is closed and the agent exits cleanly, leaving the capture in
//! place for the next agent (`meshd uninstall` removes it); a second SIGTERM closes it at once.

use std::{
    fs::File,
    io::Write,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use meshd_tests::{
    mesh::{
        cgroup_programs, config_yaml, identity_init, netns_programs, serve, testapp_json,
        with_identity, Agent, WorkloadSpec,
    },
    require_root,
    two_nodes::remote,
    wait_until, Cluster, Pod, ProcHandle, Signal,
};
use serde_json::Value;

/// A client that holds one connection open and acts on commands written to a FIFO, one per
/// line: `echo TEXT` (sends the line, prints the echo), `wait-close` (prints how the peer
/// closed: `eof` or `reset`), `close`. Each result is a JSON line on stdout.
const HELD_CLIENT: &str = r#"
import json, socket, sys
def say(v):
    print(json.dumps(v), flush=True)
host, port, fifo = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=30)
f = s.makefile("rb")
say({"connected": f.readline().decode().strip()})
for cmd in open(fifo):
    cmd = cmd.strip()
    if cmd.startswith("echo "):
        s.sendall(cmd[5:].encode() + b"\n")
        say({"echo": f.readline().decode().strip()})
    elif cmd == "wait-close":
        s.settimeout(60)
        try:
            say({"closed": "eof" if f.read(1) == b"" else "data"})
        except ConnectionResetError:
            say({"closed": "reset"})
        except socket.timeout:
            say({"closed": "timeout"})
    elif cmd == "close":
        s.close()
        say({"closed": "by client"})
        break
"#;

/// Node 1 runs pod `a`, node 2 pod `b` (serving on 8080); both agents under one trust
/// anchor, node 2's with a drain deadline of `drain_secs`.
fn set_up(name: &str, drain_secs: u64) -> (Cluster, Agent, Agent, Pod, Pod) {
    let c = Cluster::new(name).unwrap();
    let n1 = c.add_node("n1").unwrap();
    let n2 = c.add_node("n2").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let b = c.add_pod(&n2, "b").unwrap();
    let ca = identity_init(&c, "ca").unwrap();
    let anchors = ca.join("ca.crt");
    let y1 = config_yaml(&c, &n1, &[WorkloadSpec::new(&a), remote(&b)], &[]);
    let y2 = config_yaml(&c, &n2, &[remote(&a), WorkloadSpec::new(&b)], &[]).replace(
        "connectTimeoutMs: 2000\n",
        &format!("connectTimeoutMs: 2000\ndrainTimeoutSeconds: {drain_secs}\n"),
    );
    assert!(y2.contains("drainTimeoutSeconds"), "{y2}");
    let agent1 = Agent::start(&c, &n1, &with_identity(&y1, &anchors, &ca, 3600)).unwrap();
    let agent2 = Agent::start(&c, &n2, &with_identity(&y2, &anchors, &ca, 3600)).unwrap();
    serve(&c, &b, 8080).unwrap();
    (c, agent1, agent2, a, b)
}

/// The held client in `from`, connected to `to_ip:8080` (its greeting read); its FIFO.
fn held_client(c: &Cluster, from: &Pod, to_ip: &str) -> (ProcHandle, File) {
    let fifo: PathBuf = c.dir().join(format!("held-{}.fifo", from.name));
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut cmd = Command::new("python3");
    cmd.args(["-c", HELD_CLIENT, to_ip, "8080"]).arg(&fifo);
    let proc = c.spawn_in_pod(from, cmd).unwrap();
    let connected = proc
        .wait_for_output("connected", Duration::from_secs(20))
        .unwrap();
    // Through the agents: the app sees the connection delivered from inside its own pod,
    // from the client pod's address (preserved).
    assert!(
        connected.contains(&format!("peer={}:", from.ip)),
        "{connected}"
    );
    // Opening for writing waits for the client to open it for reading.
    let commands = File::options().write(true).open(&fifo).unwrap();
    (proc, commands)
}

/// Writes `cmd` to the held client and returns the JSON line of its `n`-th result (from 1,
/// counting the `connected` line).
fn command(proc: &ProcHandle, commands: &mut File, cmd: &str, n: usize) -> Value {
    writeln!(commands, "{cmd}").unwrap();
    commands.flush().unwrap();
    let got = wait_until(Duration::from_secs(30), || {
        proc.stdout().lines().count() >= n || !proc.is_running()
    });
    let out = proc.stdout();
    let line = out.lines().nth(n - 1);
    assert!(
        got && line.is_some(),
        "no result of {cmd:?}{}",
        proc.output_tail()
    );
    serde_json::from_str(line.unwrap_or_default()).unwrap()
}

/// The stopped agent left `pod` captured (its programs attached, its links pinned) for the
/// next agent; `meshd uninstall` then detaches everything and removes the pins.
fn capture_left_for_the_next_agent(agent: &Agent, pod: &Pod) {
    let mut attached = cgroup_programs(&pod.cgroup).unwrap();
    attached.sort();
    assert_eq!(attached, meshd_tests::enroll::PROGRAMS);
    assert_eq!(
        netns_programs(&pod.netns_path).unwrap(),
        ["meshd_sk_lookup"]
    );
    let links = agent
        .pin_root
        .join(format!("v3/links/default_{}", pod.name));
    assert!(links.is_dir(), "{} kept", links.display());
    agent.uninstall().unwrap();
    assert!(cgroup_programs(&pod.cgroup).unwrap().is_empty());
    assert!(netns_programs(&pod.netns_path).unwrap().is_empty());
    assert!(
        !agent.pin_root.exists(),
        "{} removed",
        agent.pin_root.display()
    );
}

#[test]
fn open_connection_goes_on_while_draining_and_new_ones_are_refused() {
    require_root().unwrap();
    let (c, _agent1, agent2, a, b) = set_up("drain-open", 60);
    let (client, mut commands) = held_client(&c, &a, &b.ip.to_string());
    assert_eq!(
        command(&client, &mut commands, "echo before", 2)["echo"],
        "before"
    );

    agent2.proc.signal(Signal::SIGTERM).unwrap();
    let draining = agent2
        .proc
        .wait_for_output("draining", Duration::from_secs(10))
        .unwrap();
    // Open: the HBONE connection from node 1 and the one tunnel in it.
    assert!(draining.contains("connections=2"), "{draining}");

    // The open connection is still served, through both agents.
    assert_eq!(
        command(&client, &mut commands, "echo during the drain", 3)["echo"],
        "during the drain"
    );
    // A new connection of a pod of the draining node is refused: its capture is still
    // attached (so it is not sent around the mesh in plaintext) and the listener is closed,
    // as it is when ztunnel has stopped accepting.
    let to_a = format!("{}:8080", a.ip);
    let r = testapp_json(
        &c,
        &b,
        &[
            "echo",
            "--connect",
            &to_a,
            "--bytes",
            "10",
            "--timeout-secs",
            "5",
        ],
    )
    .unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("Connection refused"),
        "{r}"
    );
    assert!(agent2.proc.is_running(), "{}", agent2.proc.output_tail());

    // Once the client closes, the agent exits, well before the 60 s deadline.
    let closed_at = Instant::now();
    assert_eq!(
        command(&client, &mut commands, "close", 4)["closed"],
        "by client"
    );
    let status = agent2.proc.wait(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{status}{}", agent2.proc.output_tail());
    assert!(closed_at.elapsed() < Duration::from_secs(20));
    let log = agent2.proc.stderr() + &agent2.proc.stdout();
    assert!(log.contains("drained: every connection has ended"), "{log}");
    capture_left_for_the_next_agent(&agent2, &b);
}

#[test]
fn connection_open_at_the_deadline_is_closed() {
    require_root().unwrap();
    let (c, _agent1, agent2, a, b) = set_up("drain-deadline", 2);
    let (client, mut commands) = held_client(&c, &a, &b.ip.to_string());
    assert_eq!(
        command(&client, &mut commands, "echo before", 2)["echo"],
        "before"
    );

    let signaled = Instant::now();
    agent2.proc.signal(Signal::SIGTERM).unwrap();
    let closed = command(&client, &mut commands, "wait-close", 3);
    let after = signaled.elapsed();
    // Cut, not finished: node 1's agent passes the broken tunnel on as a reset, as it does
    // any tunnel that ends in an error (an orderly close would read as a complete reply).
    assert_eq!(closed["closed"], "reset", "{closed}");
    // Not before the deadline (the agent got the signal after it was sent).
    assert!(after >= Duration::from_secs(2), "closed after {after:?}");
    let status = agent2.proc.wait(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{status}{}", agent2.proc.output_tail());
    let log = agent2.proc.stderr() + &agent2.proc.stdout();
    // The HBONE connection and its tunnel.
    assert!(
        log.lines()
            .any(|l| l.contains("drain over: closed the connections left")
                && l.contains("connections=2")),
        "{log}"
    );
    capture_left_for_the_next_agent(&agent2, &b);
}

#[test]
fn second_signal_closes_at_once() {
    require_root().unwrap();
    let (c, _agent1, agent2, a, b) = set_up("drain-twice", 60);
    let (client, mut commands) = held_client(&c, &a, &b.ip.to_string());
    assert_eq!(
        command(&client, &mut commands, "echo before", 2)["echo"],
        "before"
    );
    agent2.proc.signal(Signal::SIGTERM).unwrap();
    agent2
        .proc
        .wait_for_output("draining", Duration::from_secs(10))
        .unwrap();
    let again = Instant::now();
    agent2.proc.signal(Signal::SIGTERM).unwrap();
    let closed = command(&client, &mut commands, "wait-close", 3);
    assert_eq!(closed["closed"], "reset", "{closed}");
    let status = agent2.proc.wait(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{status}{}", agent2.proc.output_tail());
    // Not the 60 s deadline.
    assert!(
        again.elapsed() < Duration::from_secs(20),
        "{:?}",
        again.elapsed()
    );
    capture_left_for_the_next_agent(&agent2, &b);
}
