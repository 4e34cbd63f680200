//! HBONE end to end, two nodes with mutual TLS: agent restarts under traffic, many
//! concurrent tunnels through the pool, keep-alive, and the refusals that need a
//! misbehaving client (no client certificate, not a CONNECT, a silent client) or a server
//! that refuses our certificate.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use meshd_tests::{
    mesh::{
        config_yaml, contains_bytes, echo_payload, identity_init, issue_cert, serve,
        served_certificates, testapp_bin, testapp_json, with_identity, Agent, WireCapture,
        WorkloadSpec,
    },
    metrics::rejected,
    require_root,
    traffic::{echo_with, last_json_line},
    two_nodes::{remote, spiffe, two_nodes},
    wait_until, Cluster, Node, Pod, Signal,
};
use serde_json::Value;

/// Open pooled HBONE connections of an agent (`/config_dump`).
fn pooled(agent: &Agent) -> u64 {
    agent.config_dump().unwrap()["identity"]["hboneConnections"]
        .as_u64()
        .unwrap()
}

/// A greeted echo of `bytes` from `from` to `to` that gives up after 10 s; the report.
fn echo(c: &Cluster, from: &Pod, to: &str, bytes: u64) -> Value {
    echo_with(c, from, to, bytes, &["--timeout-secs", "10"])
}

/// Log lines of an agent containing every one of `parts`.
fn log_lines(agent: &Agent, parts: &[&str]) -> usize {
    agent
        .proc
        .stderr()
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

/// A misbehaving HBONE client (the system python3 with `python3-h2`, as `l7.rs`), run
/// outside any pod.
const CLIENT_PY: &str = r#"
import json, socket, ssl, sys, time
mode, ip = sys.argv[1], sys.argv[2]
out = {}
if mode == "silent":
    # Connects to 15008 and sends nothing: how long until the server closes?
    s = socket.create_connection((ip, 15008), timeout=60)
    t = time.monotonic()
    data = b""
    try:
        while True:
            d = s.recv(4096)
            if not d:
                break
            data += d
        out["end"] = "eof"
    except ConnectionResetError:
        out["end"] = "reset"
    out["closed_after"] = time.monotonic() - t
    out["bytes"] = data.hex()
else:
    import h2.connection, h2.config, h2.events
    cert, key = sys.argv[3], sys.argv[4]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection((ip, 15008), timeout=10))
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8", validate_outbound_headers=False))
    c.initiate_connection()
    if mode == "get":
        c.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", ip + ":8080"), (":path", "/")], end_stream=True)
    else:
        c.send_headers(1, [(":method", "CONNECT"), (":authority", "web.default:8080")])
    s.sendall(c.data_to_send())
    status = None
    while status is None:
        d = s.recv(65536)
        if not d:
            break
        for e in c.receive_data(d):
            if isinstance(e, h2.events.ResponseReceived) and e.stream_id == 1:
                status = int(dict(e.headers)[":status"])
        s.sendall(c.data_to_send())
    out["status"] = status
print(json.dumps(out))
"#;

fn client_py(c: &Cluster, node: &Node, args: &[&str]) -> Value {
    let script = c.dir().join("hbone_client.py");
    std::fs::write(&script, CLIENT_PY).unwrap();
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(&script).args(args);
    let out = c
        .run_in_node_timeout(node, cmd, Duration::from_secs(60))
        .unwrap();
    last_json_line("client", &out)
}

/// Refusals on the inbound side that need a misbehaving client, each counted exactly once
/// under its reason with its log line: a TLS client without a certificate
/// (`no_client_cert`), a certificate without a SPIFFE identity (`no_client_cert`), an
/// HTTP/2 GET instead of CONNECT (405) and a CONNECT to a host name (400), both
/// `bad_request`, and a client that never starts the handshake (closed after the 10 s
/// handshake timeout, `handshake`). Nothing reaches the app.
#[test]
fn misbehaving_clients_are_refused_with_their_reason() {
    require_root().unwrap();
    let (m, agent1, agent2) = two_nodes("hbone-refuse", &[]);
    let c = &m.c;
    let app = serve(c, &m.b, 8080).unwrap();
    let ip = m.b.ip.to_string();

    // No client certificate: the server presented its own, then refused.
    let served = served_certificates(c, &m.n2, &ip, None);
    assert_eq!(served.len(), 2, "leaf and issuer: {served:?}");
    assert!(wait_until(Duration::from_secs(5), || rejected(
        &agent2,
        "inbound",
        "no_client_cert"
    ) == 1));
    assert_eq!(
        log_lines(
            &agent2,
            &["HBONE: rejected TLS handshake", "no_client_cert"]
        ),
        1
    );

    // A certificate of the right chain but without a SPIFFE identity.
    let (crt, key) = issue_cert(c, &m.ca, "anon", None);
    let r = client_py(
        c,
        &m.n2,
        &["get", &ip, crt.to_str().unwrap(), key.to_str().unwrap()],
    );
    assert_eq!(r["status"], Value::Null, "{r}");
    assert!(wait_until(Duration::from_secs(5), || rejected(
        &agent2,
        "inbound",
        "no_client_cert"
    ) == 2));
    assert_eq!(
        log_lines(
            &agent2,
            &["HBONE: client certificate has no SPIFFE identity"]
        ),
        1
    );

    // Not a CONNECT, and a CONNECT without an ip:port authority.
    let (crt, key) = issue_cert(c, &m.ca, "probe", Some(&spiffe("probe")));
    let (crt, key) = (crt.to_str().unwrap(), key.to_str().unwrap());
    let r = client_py(c, &m.n2, &["get", &ip, crt, key]);
    assert_eq!(r["status"], 405, "{r}");
    assert_eq!(rejected(&agent2, "inbound", "bad_request"), 1);
    assert_eq!(log_lines(&agent2, &["HBONE: request is not a CONNECT"]), 1);
    let r = client_py(c, &m.n2, &["connect-name", &ip, crt, key]);
    assert_eq!(r["status"], 400, "{r}");
    assert_eq!(rejected(&agent2, "inbound", "bad_request"), 2);
    assert_eq!(
        log_lines(&agent2, &["HBONE: CONNECT without an ip:port authority"]),
        1
    );

    // A client that connects and says nothing: closed by the 10 s handshake timeout.
    let r = client_py(c, &m.n2, &["silent", &ip]);
    let after = r["closed_after"].as_f64().unwrap();
    assert!((9.5..15.0).contains(&after), "closed after {after} s: {r}");
    assert_eq!(r["bytes"], "", "{r}");
    assert_eq!(rejected(&agent2, "inbound", "handshake"), 1);
    assert_eq!(log_lines(&agent2, &["HBONE: TLS handshake timed out"]), 1);

    // None of them reached the app, and nothing else was refused.
    assert!(!app.stdout().contains("accepted"), "{}", app.stdout());
    for reason in ["unknown_ca", "expired", "not_yet_valid", "not_tls"] {
        assert_eq!(rejected(&agent2, "inbound", reason), 0, "{reason}");
    }
    assert!(agent1.stop().unwrap().success());
    assert!(agent2.stop().unwrap().success());
}

/// The client's agent learns that the server refused its certificate: node 1 issues under
/// an anchor node 2 does not trust. Each attempt is one `peer_rejected_us` on node 1 (with
/// its log line) and one `unknown_ca` on node 2; the app is never reached.
#[test]
fn a_server_refusing_our_certificate_is_peer_rejected_us() {
    require_root().unwrap();
    let c = Cluster::new("hbone-peerrej").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let n2 = c.add_node("n2").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let b = c.add_pod(&n2, "b").unwrap();
    let ca = identity_init(&c, "ca").unwrap();
    let other = identity_init(&c, "other").unwrap();
    let bundle = c.dir().join("both.crt");
    let both = [
        std::fs::read_to_string(ca.join("ca.crt")).unwrap(),
        std::fs::read_to_string(other.join("ca.crt")).unwrap(),
    ]
    .concat();
    std::fs::write(&bundle, both).unwrap();
    let y1 = config_yaml(&c, &n1, &[WorkloadSpec::new(&a), remote(&b)], &[]);
    let y2 = config_yaml(&c, &n2, &[remote(&a), WorkloadSpec::new(&b)], &[]);
    let agent1 = Agent::start(&c, &n1, &with_identity(&y1, &bundle, &other, 3600)).unwrap();
    let agent2 = Agent::start(&c, &n2, &with_identity(&y2, &ca.join("ca.crt"), &ca, 3600)).unwrap();
    let app = serve(&c, &b, 8080).unwrap();
    let r = echo(&c, &a, &format!("{}:8080", b.ip), 1000);
    assert_eq!(r["ok"], false, "{r}");
    assert!(wait_until(Duration::from_secs(5), || rejected(
        &agent2,
        "inbound",
        "unknown_ca"
    ) == 1));
    assert!(
        wait_until(Duration::from_secs(5), || rejected(
            &agent1,
            "outbound",
            "peer_rejected_us"
        ) == 1),
        "{}",
        agent1.get("/metrics").unwrap().1
    );
    assert_eq!(
        log_lines(&agent1, &["HBONE: refused the server", "peer_rejected_us"]),
        1
    );
    assert!(!app.stdout().contains("accepted"), "{}", app.stdout());
    assert!(agent1.stop().unwrap().success());
    assert!(agent2.stop().unwrap().success());
}

/// Replaces a stopped or crashed agent by a new one on the same config file.
fn restart(c: &Cluster, node: &Node, old: &Agent) -> Agent {
    Agent::start_with(c, node, old.config_path.clone()).unwrap()
}

/// Whether a `connect-loop` round's error shows wrong bytes: a greeting that is not the
/// server's, or an echo that is not a prefix of what was sent (a connection ended by a
/// crash may be cut short, by a reset or by the kernel's FIN, but never altered).
fn corrupted(error: &str) -> bool {
    let Some((round, e)) = error.split_once(": ") else {
        return true;
    };
    if let Some(g) = e.strip_prefix("bad greeting ") {
        return g != "\"\"";
    }
    if let Some(back) = e.strip_prefix("echo mismatch: ") {
        let sent = format!("ping {}\n", round.trim_start_matches('#'));
        let back: String = serde_json::from_str(back).unwrap_or_else(|_| "?".repeat(99));
        return !sent.starts_with(&back);
    }
    false
}

/// Agent restarts with identity and HBONE traffic flowing: node 2's agent stopped with
/// SIGTERM, then killed with SIGKILL, then node 1's agent killed. In every gap the
/// enrolled pod's connections fail and nothing is sent in plaintext (the capture between
/// the nodes has payload only to 15008 and never the app's bytes; the app is only ever
/// reached through its agent, from its own pod address); after each restart the very first request
/// succeeds byte-exact over HBONE (node 1's pool replaced its dead connection to node 2),
/// and no request ever got wrong bytes.
#[test]
fn agent_restarts_under_traffic_refuse_then_resume_over_hbone() {
    require_root().unwrap();
    let (m, agent1, agent2) = two_nodes("hbone-restart", &[]);
    let c = &m.c;
    let app = serve(c, &m.b, 8080).unwrap();
    let dst = format!("{}:8080", m.b.ip);
    let wire = WireCapture::start(c).unwrap();
    let mut agents = [agent1, agent2];
    let nodes = [m.n1.clone(), m.n2.clone()];
    let first = echo(c, &m.a, &dst, 1 << 20);
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(pooled(&agents[0]), 1);

    for (node, crash) in [(1, false), (1, true), (0, true)] {
        // A connection every 20 ms while the agent goes away and comes back.
        let mut lp = Command::new(testapp_bin());
        lp.args(["connect-loop", "--greet", "--connect", &dst])
            .args(["--interval-ms", "20", "--duration-secs", "6"])
            .args(["--timeout-secs", "3"]);
        let before = agents[1].closed_to("inbound", &dst).unwrap().len();
        let traffic = c.spawn_in_pod(&m.a, lp).unwrap();
        assert!(wait_until(Duration::from_secs(10), || agents[1]
            .closed_to("inbound", &dst)
            .unwrap()
            .len()
            >= before + 5));
        if crash {
            agents[node].crash().unwrap();
        } else {
            assert!(agents[node].stop().unwrap().success());
        }
        // The gap: refused, not sent around the mesh.
        for _ in 0..3 {
            let r = echo(c, &m.a, &dst, 1000);
            assert_eq!(r["ok"], false, "during the gap: {r}");
        }
        agents[node] = restart(c, &nodes[node], &agents[node]);
        let r = echo(c, &m.a, &dst, 1 << 20);
        assert_eq!(r["ok"], true, "first request after the restart: {r}");
        assert_eq!(pooled(&agents[0]), 1, "one live pooled connection");
        // Exits 1 (some rounds failed in the gap): the summary says which.
        traffic.wait(Duration::from_secs(30)).unwrap();
        let summary: Value =
            serde_json::from_str(traffic.stdout().lines().last().unwrap()).unwrap();
        assert!(summary["ok"].as_u64().unwrap() >= 5, "{summary}");
        for e in summary["errors"].as_array().unwrap() {
            assert!(!corrupted(e.as_str().unwrap()), "corrupted: {summary}");
        }
    }
    let pcap = wire.stop().unwrap();

    // Nothing but HBONE between the nodes, and never the app's bytes.
    for marker in [&b"hello peer="[..], b"ping 1\n", &echo_payload(42, 16)] {
        assert!(!contains_bytes(&pcap, marker), "plaintext on the wire");
    }
    let other = WireCapture::tshark(
        &c.dir().join("wire.pcap"),
        "tcp.len > 0 && !(tcp.port == 15008)",
        &["tcp.port"],
    )
    .unwrap();
    assert!(other.is_empty(), "payload outside HBONE: {other:?}");
    // The app was only ever reached through its agent.
    let accepted: Vec<_> = app
        .stdout()
        .lines()
        .filter(|l| l.starts_with("accepted"))
        .map(String::from)
        .collect();
    assert!(accepted.len() > 15, "{accepted:?}");
    // `peer=?`: reset before the app asked who it was (a tunnel reset during the restart
    // reaches the app as a reset); every peer the app saw is the client, delivered by the
    // agent from the client's own address.
    let delivered = format!("accepted peer={}:", m.a.ip);
    assert!(
        accepted
            .iter()
            .all(|l| l.starts_with(&delivered) || l.starts_with("accepted peer=? ")),
        "{accepted:?}"
    );
    let inb = agents[1].closed_to("inbound", &dst).unwrap();
    assert!(inb
        .iter()
        .all(|r| r["tls"] == true && r["client_id"] == spiffe("a").as_str()));
    for a in &agents {
        assert!(a.stop().unwrap().success());
    }
}

/// 150 connections opened at the same instant from one pod to one destination, all open
/// at once, each echoing 64 KiB of its own stream byte-exact: the pool carries them on
/// exactly two HBONE connections (100 tunnels each at most, opened once each: concurrent
/// openers wait for the connection being opened), as the capture and `/config_dump` show,
/// and both agents record all 150 with the identities.
#[test]
fn more_than_a_hundred_concurrent_tunnels_share_two_connections() {
    require_root().unwrap();
    let (m, agent1, agent2) = two_nodes("hbone-scale", &[]);
    let c = &m.c;
    serve(c, &m.b, 8080).unwrap();
    let dst = format!("{}:8080", m.b.ip);
    let wire = WireCapture::start(c).unwrap();
    let r = testapp_json(
        c,
        &m.a,
        &[
            "echo-many",
            "--connect",
            &dst,
            "--count",
            "150",
            "--bytes",
            "65536",
            "--timeout-secs",
            "40",
        ],
    )
    .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["connections"], 150, "{r}");
    assert_eq!(r["bytes_received"], 150 * 65536, "{r}");
    assert_eq!(pooled(&agent1), 2);
    let pcap = wire.stop().unwrap();
    assert!(!contains_bytes(&pcap, &echo_payload(1, 16)));
    let syns = WireCapture::tshark(
        &c.dir().join("wire.pcap"),
        "tcp.flags.syn == 1 && tcp.flags.ack == 0",
        &["tcp.dstport"],
    )
    .unwrap();
    assert_eq!(syns, vec!["15008".to_string(); 2], "two HBONE connections");
    assert!(wait_until(Duration::from_secs(10), || agent2
        .closed_to("inbound", &dst)
        .unwrap()
        .len()
        == 150));
    assert!(
        agent2
            .closed_to("inbound", &dst)
            .unwrap()
            .iter()
            .all(|r| r["client_id"] == spiffe("a").as_str()
                && r["bytes_sent"].as_u64() == Some(65536))
    );
    assert!(wait_until(Duration::from_secs(10), || agent1
        .closed_to("outbound", &dst)
        .unwrap()
        .len()
        == 150));
    assert!(agent1
        .closed_to("outbound", &dst)
        .unwrap()
        .iter()
        .all(|r| r["tls"] == true && r["bytes_sent"].as_u64() == Some(65536)));
    assert!(agent1.stop().unwrap().success());
    assert!(agent2.stop().unwrap().success());
}

/// A peer that stops answering PINGs (its agent frozen with SIGSTOP) is dropped by the
/// pool within the keep-alive bound (a PING every 30 s, 10 s to answer: at most 40 s,
/// at least 10 s), with its log line; once the peer is back the next request opens a new
/// connection and succeeds. Takes about 40 s.
#[test]
fn keepalive_drops_a_silent_peer_and_the_pool_replaces_it() {
    require_root().unwrap();
    let (m, agent1, agent2) = two_nodes("hbone-keepalive", &[]);
    let c = &m.c;
    serve(c, &m.b, 8080).unwrap();
    let dst = format!("{}:8080", m.b.ip);
    assert_eq!(echo(c, &m.a, &dst, 10_000)["ok"], true);
    assert_eq!(pooled(&agent1), 1);
    let wire = WireCapture::start(c).unwrap();
    agent2.proc.signal(Signal::SIGSTOP).unwrap();
    let frozen = Instant::now();
    let dropped = wait_until(Duration::from_secs(60), || {
        log_lines(&agent1, &["HBONE connection dropped by keep-alive"]) == 1
    });
    let after = frozen.elapsed();
    agent2.proc.signal(Signal::SIGCONT).unwrap();
    assert!(dropped, "{}", agent1.proc.stderr());
    assert!(
        after >= Duration::from_secs(10) && after <= Duration::from_secs(42),
        "dropped after {after:?}"
    );
    assert_eq!(
        log_lines(
            &agent1,
            &[
                "HBONE connection dropped by keep-alive",
                "no PING acknowledgement within 10s"
            ]
        ),
        1
    );
    assert_eq!(pooled(&agent1), 0);
    let r = echo(c, &m.a, &dst, 100_000);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(pooled(&agent1), 1);
    wire.stop().unwrap();
    let syns = WireCapture::tshark(
        &c.dir().join("wire.pcap"),
        "tcp.flags.syn == 1 && tcp.flags.ack == 0",
        &["tcp.dstport"],
    )
    .unwrap();
    assert_eq!(syns, vec!["15008".to_string()], "one new connection");
    assert!(agent1.stop().unwrap().success());
    assert!(agent2.stop().unwrap().success());
}

/// The restart test's corruption check: cut short is not corrupted, altered is.
#[test]
fn corrupted_tells_cut_short_from_altered() {
    assert!(!corrupted("#5: bad greeting \"\""));
    assert!(!corrupted("#6: connect: Connection refused (os error 111)"));
    assert!(!corrupted("#7: echo mismatch: \"pin\""));
    assert!(!corrupted("#7: echo mismatch: \"\""));
    assert!(corrupted("#7: echo mismatch: \"ping 8\\n\""));
    assert!(corrupted("#5: bad greeting \"hullo\""));
}
