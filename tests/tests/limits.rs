//! Connection and handshake budgets (review M2), the load case of the bad-input suite
//! (issue 16): 10,000 idle connections to one pod's port 15008 and 10,000 to one of its
//! plaintext ports, while another pod on the same agent keeps answering.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use std::process::Command;

use meshd_tests::{
    in_netns,
    mesh::{config_yaml, identity_init, issue_cert, serve, with_identity, Agent, WorkloadSpec},
    metrics::{metrics, rejected, settle, sum_metric},
    require_root,
    traffic::{apps_dir, echo, last_json_line},
    two_nodes::{remote, spiffe},
    wait_until, Cluster,
};

/// Connections per flood.
const FLOOD: usize = 10_000;
/// The budgets of the test's agent: small, so that the refusals are counted exactly.
const PER_POD: usize = 200;
const HANDSHAKES_PER_POD: usize = 50;
/// The longest a request to the other pod may take while the floods run. Measured on the
/// 2-core test VM, shared with other jobs: the slowest of each run's 25-45 requests was
/// 15-250 ms (median of those about 45 ms); a request without the floods takes 1-5 ms.
const REQUEST_BOUND: Duration = Duration::from_millis(500);

/// Raises this process's soft open-files limit to the hard one (the floods hold up to
/// 10,000 sockets at once here; the hard limit cannot be raised in every container).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= 12_000,
        "the open-files hard limit {hard} is too low for the floods"
    );
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
}

/// Whether the agent kept `s` open: not reset, not closed (a greeting is fine).
fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 256];
    match (&*s).read(&mut b) {
        Ok(n) => n > 0,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// `n` connections to `to`, one after the other, from the network namespace `netns`,
/// each kept open until the agent resets it; with `hello`, each sends it (a trickled
/// ClientHello: a TLS record header and a few bytes of the record, never the rest).
/// Returns the connections the agent kept, and how many it reset.
fn flood(
    netns: &std::path::Path,
    to: SocketAddr,
    n: usize,
    hello: &[u8],
) -> (Vec<TcpStream>, usize) {
    in_netns(netns, || {
        let mut open = Vec::new();
        let mut reset = 0;
        for i in 0..n {
            let mut s = match TcpStream::connect_timeout(&to, Duration::from_secs(10)) {
                Ok(s) => s,
                // Accepted and reset before connect() looked.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    reset += 1;
                    continue;
                }
                Err(e) => panic!("connection {i} to {to}: {e}"),
            };
            if !hello.is_empty() {
                // A refused connection may be reset already: not an error here.
                let _ = s.write_all(hello);
            }
            open.push(s);
            // Let go of the ones reset, so that this process stays within its limit.
            if open.len() >= 1000 || i + 1 == n {
                let before = open.len();
                open.retain(still_open);
                reset += before - open.len();
            }
        }
        (open, reset)
    })
    .unwrap()
}

/// One request to the echo server at `to` from `netns`: connect, send a line, read it
/// back (after the server's greeting). Returns how long it took.
fn request(netns: &std::path::Path, to: SocketAddr) -> Result<Duration, String> {
    in_netns(netns, || {
        let started = Instant::now();
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s.write_all(b"ping\n").map_err(|e| format!("write: {e}"))?;
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.ends_with(b"ping\n") {
            let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!("closed after {:?}", String::from_utf8_lossy(&got)));
            }
            got.extend_from_slice(&buf[..n]);
        }
        Ok(started.elapsed())
    })
    .unwrap()
}

/// Review M2 and the issue's load case. Node 1's agent serves pod `a` (flooded) and pod
/// `c` (probed); the floods come from node 2's namespace (a remote client without a
/// certificate). 10,000 idle connections to `a:15008` (each trickling five bytes of a
/// ClientHello): 50 handshakes are held (the pod's handshake budget), 9,950 are reset and
/// counted `reason="pod_handshakes"`. Then 10,000 idle connections to `a:8080`: the other
/// 150 of the pod's inbound budget of 200 are delivered, 9,850 are reset and counted
/// `reason="pod_connections"`. Meanwhile requests to `c` keep succeeding within
/// [`REQUEST_BOUND`], and pod `b` (node 2) reaches `c` over HBONE afterwards. The agent's
/// descriptors and memory stay bounded, and everything is released when the clients go.
#[test]
fn ten_thousand_idle_connections_to_one_pod_do_not_starve_another() {
    require_root().unwrap();
    raise_fd_limit();
    let c = Cluster::new("limits-load").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let n2 = c.add_node("n2").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let probed = c.add_pod(&n1, "c").unwrap();
    let b = c.add_pod(&n2, "b").unwrap();
    let ca = identity_init(&c, "ca").unwrap();
    let anchors = ca.join("ca.crt");
    let limits = format!(
        "handshakeTimeoutMs: 120000\nlimits:\n  maxSockets: 2000\n  maxConnectionsPerPod: {PER_POD}\n  maxHandshakes: 100\n  maxHandshakesPerPod: {HANDSHAKES_PER_POD}\n"
    );
    let y1 = config_yaml(
        &c,
        &n1,
        &[
            WorkloadSpec::new(&a),
            WorkloadSpec::new(&probed),
            remote(&b),
        ],
        &[],
    )
    .replace(
        "connectTimeoutMs: 2000\n",
        &format!("connectTimeoutMs: 2000\n{limits}"),
    );
    let y2 = config_yaml(
        &c,
        &n2,
        &[remote(&a), remote(&probed), WorkloadSpec::new(&b)],
        &[],
    );
    let agent1 = Agent::start(&c, &n1, &with_identity(&y1, &anchors, &ca, 3600)).unwrap();
    let _agent2 = Agent::start(&c, &n2, &with_identity(&y2, &anchors, &ca, 3600)).unwrap();
    serve(&c, &a, 8080).unwrap();
    serve(&c, &probed, 8080).unwrap();
    let pid = agent1.proc.pid();
    let outside = n2.netns_path.clone();
    let c_dst: SocketAddr = format!("{}:8080", probed.ip).parse().unwrap();
    request(&outside, c_dst).expect("c answers before the floods");
    let (fds_before, rss_before) = (fds(pid), rss_kib(pid));

    // Requests to c for as long as the floods run.
    let flooding = Arc::new(AtomicBool::new(true));
    let prober = std::thread::spawn({
        let (flooding, outside) = (flooding.clone(), outside.clone());
        move || {
            let mut took = Vec::new();
            while flooding.load(Ordering::SeqCst) {
                took.push(request(&outside, c_dst));
                std::thread::sleep(Duration::from_millis(20));
            }
            took
        }
    });

    let started = Instant::now();
    // A TLS handshake record header announcing 512 bytes, and 5 of them.
    let trickle = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
    let hbone: SocketAddr = format!("{}:15008", a.ip).parse().unwrap();
    let (mut held_tls, _) = flood(&outside, hbone, FLOOD, &trickle);
    let tls_secs = started.elapsed().as_secs_f64();
    let refused = |reason: &str, want: usize| {
        settle(
            &agent1,
            "connections_refused_total",
            &[("direction", "inbound"), ("pod", "a"), ("reason", reason)],
            want as f64,
        )
    };
    // The agent may still be accepting the last of them (the listen backlog): the
    // plaintext flood starts when it has refused them all, so the counts are exact.
    refused("pod_handshakes", FLOOD - HANDSHAKES_PER_POD);
    let plain: SocketAddr = format!("{}:8080", a.ip).parse().unwrap();
    let (mut held_plain, _) = flood(&outside, plain, FLOOD, b"");
    let flood_secs = started.elapsed().as_secs_f64();
    let text = refused("pod_connections", FLOOD - (PER_POD - HANDSHAKES_PER_POD));
    assert_eq!(
        sum_metric(&text, "connections_refused_total", &[]),
        (2 * FLOOD - PER_POD) as f64,
        "nothing else refused, nothing of c:\n{text}"
    );
    // The 150 delivered plaintext connections are open.
    let delivered = (PER_POD - HANDSHAKES_PER_POD) as f64;
    settle(
        &agent1,
        "tcp_open_connections",
        &[("direction", "inbound"), ("pod", "a")],
        delivered,
    );
    let (fds_peak, rss_peak) = (fds(pid), rss_kib(pid));
    // What the client saw: exactly the budgets' worth kept open, the rest reset.
    held_tls.retain(still_open);
    held_plain.retain(still_open);
    assert_eq!(
        (held_tls.len(), held_plain.len()),
        (HANDSHAKES_PER_POD, PER_POD - HANDSHAKES_PER_POD)
    );

    // Pod b reaches c over HBONE while a's budgets are full.
    let r = echo(&c, &b, &c_dst.to_string(), 64 * 1024);
    assert_eq!(r["ok"], true, "{r}");
    flooding.store(false, Ordering::SeqCst);
    let took = prober.join().unwrap();
    let failed: Vec<&String> = took.iter().filter_map(|t| t.as_ref().err()).collect();
    assert!(failed.is_empty(), "requests to c failed: {failed:?}");
    let took: Vec<Duration> = took.into_iter().map(Result::unwrap).collect();
    let slowest = took.iter().max().copied().unwrap_or_default();
    let mut sorted = took.clone();
    sorted.sort();
    eprintln!(
        "median request to c {:?}; floods: 15008 in {tls_secs:.1} s, both in {flood_secs:.1} s; {} requests to c, slowest {slowest:?}; agent fds {fds_before} -> {fds_peak}, RSS {rss_before} -> {rss_peak} KiB",
        sorted[sorted.len() / 2],
        took.len()
    );
    assert!(took.len() >= 5, "c was probed {} times", took.len());
    assert!(
        slowest <= REQUEST_BOUND,
        "slowest request to c: {slowest:?}"
    );
    // Held: 50 handshakes (one socket each), 150 deliveries (two each), c's and b's few.
    assert!(
        fds_peak <= fds_before + HANDSHAKES_PER_POD + 2 * 150 + 20,
        "agent fds {fds_before} -> {fds_peak}"
    );
    assert!(
        rss_peak <= rss_before + 48 * 1024,
        "agent RSS {rss_before} -> {rss_peak} KiB"
    );

    // The clients go: every slot comes back, and a's port answers again.
    drop(held_tls);
    drop(held_plain);
    settle(
        &agent1,
        "tcp_open_connections",
        &[("direction", "inbound"), ("pod", "a")],
        0.0,
    );
    assert!(
        wait_until(Duration::from_secs(10), || fds(pid) <= fds_before + 4),
        "agent fds {fds_before} -> {} after the clients left",
        fds(pid)
    );
    request(&outside, plain).expect("a answers again");
    let text = metrics(&agent1);
    assert_eq!(
        sum_metric(&text, "connections_refused_total", &[]),
        (2 * FLOOD - PER_POD) as f64,
        "{text}"
    );
    let log = agent1.proc.stderr() + &agent1.proc.stdout();
    let lines = log
        .lines()
        .filter(|l| l.contains("refused a connection"))
        .count();
    assert!(
        (1..=4).contains(&lines),
        "refusals are logged at most every 10 s per pod: {lines} lines"
    );
    c.cleanup().unwrap();
}

/// Review M1: a peer with a valid certificate that completes TLS on port 15008 and never
/// sends the HTTP/2 preface is dropped at the handshake timeout (`handshakeTimeoutMs`,
/// here 1 s; TLS and HTTP/2 together), counted as
/// `hbone_rejected_total{reason="handshake"}` and logged.
#[test]
fn a_peer_that_never_sends_the_http2_preface_is_dropped_at_the_handshake_timeout() {
    require_root().unwrap();
    let c = Cluster::new("limits-preface").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let ca = identity_init(&c, "ca").unwrap();
    let y = config_yaml(&c, &n1, &[WorkloadSpec::new(&a)], &[]).replace(
        "connectTimeoutMs: 2000\n",
        "connectTimeoutMs: 2000\nhandshakeTimeoutMs: 1000\n",
    );
    let agent = Agent::start(&c, &n1, &with_identity(&y, &ca.join("ca.crt"), &ca, 3600)).unwrap();
    let (crt, key) = issue_cert(&c, &ca, "peer", Some(&spiffe("peer")));
    let mut cmd = Command::new("python3");
    cmd.arg(apps_dir().join("tls_idle.py"))
        .arg(a.ip.to_string())
        .arg("15008")
        .arg(&crt)
        .arg(&key);
    let out = c.run_in_node(&n1, cmd).unwrap();
    let r = last_json_line("tls_idle.py", &out);
    assert_eq!(r["handshake"], true, "{r}");
    assert!(
        r["end"] == "eof" || r["end"] == "reset",
        "the agent ends the connection: {r}"
    );
    // The deadline runs from the accept; the client's clock starts after TLS.
    let secs = r["secs"].as_f64().unwrap();
    assert!((0.5..3.0).contains(&secs), "dropped after {secs} s: {r}");
    assert!(
        wait_until(Duration::from_secs(10), || rejected(
            &agent,
            "inbound",
            "handshake"
        ) == 1),
        "hbone_rejected_total{{reason=\"handshake\"}}: {}",
        rejected(&agent, "inbound", "handshake")
    );
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .proc
            .stderr()
            .contains("no HTTP/2 preface within the handshake timeout")
            || agent
                .proc
                .stdout()
                .contains("no HTTP/2 preface within the handshake timeout")),
        "the log says why"
    );
    c.cleanup().unwrap();
}

/// Connects from `netns` to the echo server at `to`, sends a line and reads it back: the
/// connection, delivered and open; `Err` when the agent refused it (a reset or an end).
fn delivered(netns: &std::path::Path, to: SocketAddr) -> Result<TcpStream, String> {
    in_netns(netns, || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s.write_all(b"hi\n").map_err(|e| format!("write: {e}"))?;
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.ends_with(b"hi\n") {
            match s.read(&mut buf) {
                Ok(0) => return Err("closed".to_string()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Ok(s)
    })
    .unwrap()
}

/// Review M2: the node's socket budget is shared by every pod. With `maxSockets: 10`, five
/// plaintext connections delivered to pod `a` hold all ten sockets (the client's and the
/// app's); a sixth to `a` and one to pod `c` are reset and each counted once as
/// `connections_refused_total{reason="node_sockets"}`; when one of `a`'s ends, `c` is
/// served again.
#[test]
fn the_nodes_socket_budget_is_shared_by_every_pod() {
    require_root().unwrap();
    let c = Cluster::new("limits-sockets").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let other = c.add_pod(&n1, "c").unwrap();
    let y = config_yaml(
        &c,
        &n1,
        &[WorkloadSpec::new(&a), WorkloadSpec::new(&other)],
        &[],
    )
    .replace(
        "connectTimeoutMs: 2000\n",
        "connectTimeoutMs: 2000\nlimits:\n  maxSockets: 10\n  maxConnectionsPerPod: 10\n",
    );
    let agent = Agent::start(&c, &n1, &y).unwrap();
    serve(&c, &a, 8080).unwrap();
    serve(&c, &other, 8080).unwrap();
    let node = n1.netns_path.clone();
    let to_a: SocketAddr = format!("{}:8080", a.ip).parse().unwrap();
    let to_c: SocketAddr = format!("{}:8080", other.ip).parse().unwrap();
    let mut held: Vec<TcpStream> = (0..5)
        .map(|i| delivered(&node, to_a).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    assert!(delivered(&node, to_a).is_err(), "a sixth to a is refused");
    assert!(delivered(&node, to_c).is_err(), "c is refused too");
    for pod in ["a", "c"] {
        settle(
            &agent,
            "connections_refused_total",
            &[("pod", pod), ("reason", "node_sockets")],
            1.0,
        );
    }
    held.pop();
    settle(
        &agent,
        "tcp_open_connections",
        &[("direction", "inbound"), ("pod", "a")],
        4.0,
    );
    delivered(&node, to_c).expect("c is served again");
    let text = metrics(&agent);
    assert_eq!(
        sum_metric(&text, "connections_refused_total", &[]),
        2.0,
        "{text}"
    );
    drop(held);
    c.cleanup().unwrap();
}
