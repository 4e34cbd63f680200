//! Mutual TLS between agents (HBONE): identities, encryption on the wire, and every way a
//! peer can be refused.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use meshd_tests::{
    mesh::{
        config_yaml, contains_bytes, echo_payload, identity_init, issue_cert, meshd_bin, serve,
        serve_at, served_certificates, testapp_json, with_identity, Agent, WireCapture,
        WorkloadSpec,
    },
    metrics::{metric, rejected},
    require_root,
    traffic::{closed_records, echo, last_json_line},
    two_nodes::{remote, spiffe, two_nodes, TwoNodes},
    wait_until, Cluster, Pod,
};
use serde_json::Value;

/// The closed records of `direction` to `orig_dst`, once there are `n` of them (a record
/// closes shortly after the client sees the end); fails after 10 s with what is there.
fn closed(agent: &Agent, direction: &str, orig_dst: &str, n: usize) -> Vec<Value> {
    let recs = closed_records(agent, direction, orig_dst, n);
    assert!(
        recs.len() >= n,
        "{n} closed {direction} records to {orig_dst}: {recs:#?}"
    );
    recs
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn pods_talk_over_mutual_tls_and_the_wire_shows_only_tls13() {
    require_root().unwrap();
    let started = unix_now();
    let (t, agent1, agent2) = two_nodes("mtls-wire", &["a2"]);
    let a2 = &t.more[0];
    let ready = unix_now() + 1;
    let c = &t.c;
    serve(c, &t.b, 8080).unwrap();
    serve(c, a2, 8080).unwrap();
    let wire = WireCapture::start(c).unwrap();

    // Across nodes: a -> b.
    let b_dst = format!("{}:8080", t.b.ip);
    for _ in 0..3 {
        let r = echo(c, &t.a, &b_dst, 2 * 1024 * 1024);
        assert_eq!(r["ok"], true, "{r}");
    }
    let pcap = wire.stop().unwrap();

    // The app's plaintext (the server's greeting, the echoed bytes) never crossed the
    // wire; TLS 1.3 did, to port 15008, and only there.
    for marker in [&b"hello peer="[..], &echo_payload(42, 16)] {
        assert!(!contains_bytes(&pcap, marker), "plaintext on the wire");
    }
    let file = c.dir().join("wire.pcap");
    let hellos = WireCapture::tshark(
        &file,
        "tls.handshake.type == 2",
        &["tls.handshake.extensions.supported_version", "tcp.srcport"],
    )
    .unwrap();
    assert!(!hellos.is_empty(), "a ServerHello was captured");
    for h in &hellos {
        assert!(
            h.starts_with("0x0304") && h.ends_with("15008"),
            "TLS 1.3 from port 15008: {h}"
        );
    }
    let app_data =
        WireCapture::tshark(&file, "tls.record.opaque_type == 23", &["tcp.dstport"]).unwrap();
    assert!(
        app_data.len() > 10,
        "encrypted application data records: {}",
        app_data.len()
    );
    let other_ports =
        WireCapture::tshark(&file, "tcp.len > 0 && !(tcp.port == 15008)", &["tcp.port"]).unwrap();
    assert!(
        other_ports.is_empty(),
        "payload outside HBONE: {other_ports:?}"
    );
    // Three connections, one pooled HBONE connection carrying them.
    let syns = WireCapture::tshark(
        &file,
        "tcp.flags.syn == 1 && tcp.flags.ack == 0",
        &["tcp.dstport"],
    )
    .unwrap();
    assert_eq!(
        syns,
        vec!["15008".to_string()],
        "one multiplexed connection"
    );

    // Both agents say who was who.
    let out = closed(&agent1, "outbound", &b_dst, 3);
    assert_eq!(out.len(), 3);
    assert!(
        out.iter()
            .all(|r| r["tls"] == true && r["server_id"] == spiffe("b").as_str()),
        "{out:#?}"
    );
    let inb = closed(&agent2, "inbound", &b_dst, 3);
    assert_eq!(inb.len(), 3);
    for r in &inb {
        assert_eq!(r["tls"], true);
        assert_eq!(r["client_id"], spiffe("a").as_str());
        assert!(
            r["peer"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}:", t.a.ip)),
            "{r}"
        );
    }

    // Same node: a -> a2, also mutual TLS.
    let a2_dst = format!("{}:8080", a2.ip);
    assert_eq!(echo(c, &t.a, &a2_dst, 100_000)["ok"], true);
    let inb = closed(&agent1, "inbound", &a2_dst, 1);
    assert_eq!(inb.len(), 1);
    assert_eq!(inb[0]["client_id"], spiffe("a").as_str());

    // The certificates are exported with their expiry, and shown in /config_dump.
    let expiry = metric(
        &agent1,
        &format!(
            "identity_cert_expiration_timestamp_seconds{{identity=\"{}\"}}",
            spiffe("a")
        ),
    );
    // Issued at start-up for the configured 3600 s.
    assert!(
        (started + 3600..=ready + 3600).contains(&expiry),
        "{expiry}: not issued between {started} and {ready} for 3600 s"
    );
    let dump = agent1.config_dump().unwrap();
    assert_eq!(
        dump["identity"]["certificates"].as_array().unwrap().len(),
        2,
        "{dump:#}"
    );
    assert!(agent1.stop().unwrap().success());
    assert!(agent2.stop().unwrap().success());
}

/// `meshd diagnostics hbone` from node 2's namespace (outside any pod, so not captured).
fn probe(t: &TwoNodes, issuer: &Path, anchors: &Path, identity: &str, extra: &[&str]) -> Value {
    let mut cmd = Command::new(meshd_bin());
    cmd.args(["diagnostics", "hbone", "--trust-anchors"])
        .arg(anchors)
        .arg("--issuer-cert")
        .arg(issuer.join("issuer.crt"))
        .arg("--issuer-key")
        .arg(issuer.join("issuer.key"))
        .args([
            "--identity",
            &spiffe(identity),
            "--expect-server",
            &spiffe("b"),
        ])
        .args(["--connect", &format!("{}:15008", t.b.ip)])
        .args(extra);
    let out = t.c.run_in_node(&t.n2, cmd).unwrap();
    last_json_line("diagnostics", &out)
}

/// A TLS alert record, fatal `decode_error`: all a plaintext client gets back from 15008.
const DECODE_ERROR_ALERT: &str = "15030300020232";

/// What the plaintext client sends to 15008.
const PLAINTEXT: &[u8] = b"GET /plaintext-to-15008 HTTP/1.1\r\nHost: b\r\n\r\n";

/// Sends [`PLAINTEXT`] to b:15008 from node 1's namespace (outside the mesh, across the
/// network) and reads until the end: `{"end": "eof"|"reset"|"refused"|"timeout", "reply": HEX}`.
fn plaintext_to_15008(t: &TwoNodes) -> Value {
    plaintext_to(t, 15008)
}

/// [`plaintext_to_15008`] to another port of b.
fn plaintext_to(t: &TwoNodes, port: u16) -> Value {
    let script = format!(
        r#"
import json, socket, sys
try:
    s = socket.create_connection(("{ip}", {port}), timeout=15)
    s.sendall({payload:?}.encode())
except ConnectionRefusedError:
    print(json.dumps({{"end": "refused", "reply": ""}}))
    sys.exit(0)
except ConnectionResetError:
    print(json.dumps({{"end": "reset", "reply": ""}}))
    sys.exit(0)
reply, end = b"", "timeout"
try:
    while True:
        d = s.recv(4096)
        if not d:
            end = "eof"
            break
        reply += d
except ConnectionResetError:
    end = "reset"
except socket.timeout:
    pass
print(json.dumps({{"end": end, "reply": reply.hex()}}))
"#,
        ip = t.b.ip,
        port = port,
        payload = String::from_utf8_lossy(PLAINTEXT),
    );
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", &script]);
    let out = t.c.run_in_node(&t.n1, cmd).unwrap();
    last_json_line("plaintext client", &out)
}

/// Review H1: a service that listens only on b's loopback (`127.0.0.1:6060`, a debug port
/// say) stays unreachable from other pods, as without the mesh: the agent delivers to the
/// original destination (b's address) from inside b, never to loopback. In plaintext from
/// outside the mesh (node 1's namespace) the client is reset; from the mesh pod a (over
/// HBONE) its connection fails; a tunnel opened by hand (`meshd diagnostics hbone`) gets
/// `503`. Each is one inbound record with the refused dial, and the server accepts only
/// the connection b makes to it over its own loopback.
#[test]
fn loopback_only_services_are_not_exposed() {
    require_root().unwrap();
    let (t, _agent1, agent2) = two_nodes("mtls-h1", &[]);
    let c = &t.c;
    let local_only = serve_at(c, &t.b, "127.0.0.1:6060").unwrap();
    let dst = format!("{}:6060", t.b.ip);

    // Plaintext, from outside the mesh: steered to the agent, whose dial is refused.
    let r = plaintext_to(&t, 6060);
    assert_eq!(r["end"], "reset", "{r}");
    assert_eq!(r["reply"], "", "{r}");
    // From the mesh pod a, over HBONE.
    let r = echo(c, &t.a, &dst, 1000);
    assert_eq!(r["ok"], false, "{r}");
    // A CONNECT by hand.
    let anchors = t.ca.join("ca.crt");
    let r = probe(&t, &t.ca, &anchors, "probe", &["--authority", &dst]);
    assert_eq!(r["status"], 503, "{r}");

    let recs = closed(&agent2, "inbound", &dst, 3);
    assert_eq!(recs.len(), 3, "{recs:#?}");
    // Each dialed b's address (not loopback) and was refused there.
    let refused = format!("connect {dst}: Connection refused");
    for r in &recs {
        assert!(
            r["error"].as_str().is_some_and(|e| e.contains(&refused)),
            "{r}"
        );
    }
    // The server saw none of them: only b's own connection over loopback, afterwards.
    assert!(
        !local_only.stdout().contains("accepted"),
        "{}",
        local_only.stdout()
    );
    let r = echo(c, &t.b, "127.0.0.1:6060", 1000);
    assert_eq!(r["ok"], true, "{r}");
    local_only
        .wait_for_output("accepted", Duration::from_secs(5))
        .unwrap();
    let out = local_only.stdout();
    let accepted = out.lines().filter(|l| l.starts_with("accepted")).count();
    assert_eq!(accepted, 1, "{out}");
}

#[test]
fn peers_are_refused_for_every_kind_of_bad_identity() {
    require_root().unwrap();
    let (t, agent1, agent2) = two_nodes("mtls-reject", &["a2"]);
    let a2 = &t.more[0];
    let c = &t.c;
    serve(c, &t.b, 8080).unwrap();
    let b_dst = format!("{}:8080", t.b.ip);
    let anchors = t.ca.join("ca.crt");
    let authority = ["--authority", &b_dst, "--send", "ping"];

    // The probe works with a good certificate: it reaches the app through the tunnel.
    let ok = probe(&t, &t.ca, &anchors, "probe", &authority);
    assert_eq!(ok["ok"], true, "{ok}");
    assert!(
        ok["reply"]
            .as_str()
            .unwrap()
            .starts_with(&format!("hello peer={}:", t.n2.gateway)),
        "the app sees the probe's own address (node 2 on its pod bridge): {ok}"
    );

    // A client certificate from another trust anchor (the client trusts both anchors, so
    // it is the server that refuses it).
    let other = identity_init(c, "other-ca").unwrap();
    let bundle = c.dir().join("both.crt");
    let both = [
        std::fs::read_to_string(&anchors).unwrap(),
        std::fs::read_to_string(other.join("ca.crt")).unwrap(),
    ]
    .concat();
    std::fs::write(&bundle, both).unwrap();
    let r = probe(&t, &other, &bundle, "intruder", &authority);
    assert_eq!(r["ok"], false, "{r}");
    assert!(wait_until(Duration::from_secs(3), || rejected(
        &agent2,
        "inbound",
        "unknown_ca"
    ) == 1));

    // Expired, and not yet valid.
    let r = probe(
        &t,
        &t.ca,
        &anchors,
        "probe",
        &[
            "--authority",
            &b_dst,
            "--not-before-secs",
            "-7200",
            "--not-after-secs",
            "-3600",
        ],
    );
    assert_eq!(r["ok"], false, "{r}");
    assert!(wait_until(Duration::from_secs(3), || rejected(
        &agent2, "inbound", "expired"
    ) == 1));
    let r = probe(
        &t,
        &t.ca,
        &anchors,
        "probe",
        &[
            "--authority",
            &b_dst,
            "--not-before-secs",
            "3600",
            "--not-after-secs",
            "7200",
        ],
    );
    assert_eq!(r["ok"], false, "{r}");
    assert!(wait_until(Duration::from_secs(3), || rejected(
        &agent2,
        "inbound",
        "not_yet_valid"
    ) == 1));

    // A CONNECT to an address that is not this pod (no open relay): 403.
    let a_dst = format!("{}:8080", t.a.ip);
    let r = probe(&t, &t.ca, &anchors, "probe", &["--authority", &a_dst]);
    assert_eq!(r["status"], 403, "{r}");
    assert_eq!(rejected(&agent2, "inbound", "connect_other_address"), 1);
    // Review D64: this pod's own address written as an IPv4-mapped IPv6 address is not one
    // of its addresses: 403 too (no second spelling of an address gets through).
    let mapped = format!("[::ffff:{}]:8080", t.b.ip);
    let r = probe(&t, &t.ca, &anchors, "probe", &["--authority", &mapped]);
    assert_eq!(r["status"], 403, "{r}");
    assert_eq!(rejected(&agent2, "inbound", "connect_other_address"), 2);

    // Review H2: a CONNECT to one of the agent's ports on this pod's address is refused
    // (15006 would loop into the agent's inbound listener, 15001 reach the pod's outbound
    // listener as the pod): 403, counted apart.
    for port in [15001, 15006, 15008] {
        let dst = format!("{}:{port}", t.b.ip);
        let r = probe(&t, &t.ca, &anchors, "probe", &["--authority", &dst]);
        assert_eq!(r["status"], 403, "{port}: {r}");
    }
    assert_eq!(rejected(&agent2, "inbound", "connect_agent_port"), 3);
    assert_eq!(rejected(&agent2, "inbound", "connect_other_address"), 2);
    // And in plaintext, from outside the mesh: the inbound listener is bound to
    // 127.0.0.1:15006 (only sk_lookup reaches it), so b:15006 is refused by b's kernel: no
    // record, no chain of connections to 127.0.0.1:15006.
    let r = plaintext_to(&t, 15006);
    assert_eq!(r["end"], "refused", "{r}");
    let all = agent2.connections().unwrap();
    let dst = format!("{}:15006", t.b.ip);
    assert!(
        all.iter().all(|r| r["orig_dst"] != dst.as_str()),
        "no record for {dst}: {all:#?}"
    );
    assert!(
        all.iter().all(|r| !r["orig_dst"]
            .as_str()
            .is_some_and(|d| d.starts_with("127.0.0.1:") || d.starts_with("[::1]:"))),
        "nothing was delivered to the agent's own loopback listener: {all:#?}"
    );

    // Plaintext to 15008 from a client outside the mesh, across the network (node 1's
    // namespace, so not captured): refused, and the client gets nothing but a TLS alert and
    // the end (no HTTP/2, no app bytes), on the wire too.
    let wire = WireCapture::start(c).unwrap();
    let r = plaintext_to_15008(&t);
    let pcap = wire.stop().unwrap();
    // One fatal decode_error alert (a plaintext TLS record), then the end.
    assert_eq!(r["reply"], DECODE_ERROR_ALERT, "{r}");
    assert_eq!(r["end"], "eof", "{r}");
    assert!(wait_until(Duration::from_secs(3), || rejected(
        &agent2, "inbound", "not_tls"
    ) == 1));
    assert!(
        contains_bytes(&pcap, PLAINTEXT),
        "the plaintext crossed the wire"
    );
    assert!(!contains_bytes(&pcap, b"hello peer="));
    let back = WireCapture::tshark(
        &c.dir().join("wire.pcap"),
        "tcp.srcport == 15008 && tcp.len > 0",
        &["tcp.payload"],
    )
    .unwrap();
    assert_eq!(back, vec![DECODE_ERROR_ALERT.to_string()], "from 15008");
    let ends = WireCapture::tshark(
        &c.dir().join("wire.pcap"),
        "tcp.srcport == 15008 && (tcp.flags.fin == 1 || tcp.flags.reset == 1)",
        &["tcp.flags"],
    )
    .unwrap();
    assert!(!ends.is_empty(), "closed by 15008");

    // The logs say what happened, each in one line.
    let log = agent2.proc.stderr();
    for reason in ["unknown_ca", "expired", "not_yet_valid", "not_tls"] {
        assert!(
            log.lines()
                .any(|l| l.contains("HBONE: rejected TLS handshake") && l.contains(reason)),
            "{reason}: {log}"
        );
    }
    let not_tls: Vec<_> = log
        .lines()
        .filter(|l| l.contains("HBONE: rejected TLS handshake") && l.contains("not_tls"))
        .collect();
    assert_eq!(not_tls.len(), 1, "{not_tls:?}");
    assert!(
        not_tls[0].contains(&format!("peer={}:", t.n1.ip)),
        "from node 1: {not_tls:?}"
    );
    assert!(log.contains("HBONE: refused CONNECT to an address that is not this pod"));

    // A server whose identity is not the expected one: node 1 believes b runs as `api`.
    let y1 = config_yaml(
        c,
        &t.n1,
        &[WorkloadSpec::new(&t.a), WorkloadSpec::new(a2), {
            let mut w = remote(&t.b);
            w.service_account = "api".into();
            w
        }],
        &[],
    );
    agent1
        .write_config(&with_identity(&y1, &anchors, &t.ca, 3600))
        .unwrap();
    // Applied once /config_dump shows b as `api`.
    assert!(wait_until(Duration::from_secs(10), || {
        agent1.config_dump().unwrap()["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["name"] == "b" && w["serviceAccount"] == "api")
    }));
    let r = echo(c, &t.a, &b_dst, 1000);
    assert_eq!(r["ok"], false, "{r}");
    assert!(wait_until(Duration::from_secs(3), || rejected(
        &agent1,
        "outbound",
        "server_identity_mismatch"
    ) == 1));
    let log = agent1.proc.stderr();
    assert!(
        log.contains("HBONE: refused the server")
            && log.contains(&spiffe("api"))
            && log.contains(&spiffe("b")),
        "{log}"
    );
    assert!(agent1.stop().unwrap().success());
    assert!(agent2.stop().unwrap().success());
    let _ = t.n1;
}

#[test]
fn rotation_two_anchors_and_short_lived_certificates_never_fail_a_request() {
    require_root().unwrap();
    let c = Cluster::new("mtls-rotate").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let n2 = c.add_node("n2").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let b = c.add_pod(&n2, "b").unwrap();
    // Mid-rotation: node 1 still issues under the old anchor, node 2 already under the new
    // one; both trust both.
    let old = identity_init(&c, "old-ca").unwrap();
    let new = identity_init(&c, "new-ca").unwrap();
    let bundle = c.dir().join("bundle.crt");
    let both = [
        std::fs::read_to_string(old.join("ca.crt")).unwrap(),
        std::fs::read_to_string(new.join("ca.crt")).unwrap(),
    ]
    .concat();
    std::fs::write(&bundle, both).unwrap();
    let y1 = config_yaml(&c, &n1, &[WorkloadSpec::new(&a), remote(&b)], &[]);
    let y2 = config_yaml(&c, &n2, &[remote(&a), WorkloadSpec::new(&b)], &[]);
    // Workload certificates live 10 s: renewed every 5 s while the traffic runs.
    let agent1 = Agent::start(&c, &n1, &with_identity(&y1, &bundle, &old, 10)).unwrap();
    let agent2 = Agent::start(&c, &n2, &with_identity(&y2, &bundle, &new, 10)).unwrap();
    serve(&c, &b, 8080).unwrap();
    serve(&c, &a, 8080).unwrap();

    let mut lp = Command::new(meshd_tests::mesh::testapp_bin());
    lp.args([
        "connect-loop",
        "--greet",
        "--connect",
        &format!("{}:8080", b.ip),
    ])
    .args(["--interval-ms", "20", "--duration-secs", "16"]);
    let traffic = c.spawn_in_pod(&a, lp).unwrap();
    // The other direction too, across the anchors.
    assert_eq!(echo(&c, &b, &format!("{}:8080", a.ip), 100_000)["ok"], true);

    // While the traffic runs, real handshakes with both pods' HBONE listeners (as a
    // client with a valid certificate, from the node outside the pod) record every
    // certificate they are served.
    let (crt, key) = issue_cert(&c, &old, "probe", Some(&spiffe("probe")));
    let sides = [(&n1, &a, &old, "a"), (&n2, &b, &new, "b")];
    let mut served: [Vec<(String, String, u64)>; 2] = [vec![], vec![]];
    while traffic.is_running() {
        for (i, (node, pod, _, _)) in sides.iter().enumerate() {
            let chain = served_certificates(&c, node, &pod.ip.to_string(), Some((&crt, &key)));
            assert_eq!(chain.len(), 2, "leaf and issuer: {chain:?}");
            let s = cert_field(&c, &chain[0], "-serial");
            if served[i].last().map(|(last, _, _)| last) != Some(&s) {
                served[i].push((s, chain.concat(), unix_now()));
            }
        }
    }
    traffic.wait(Duration::from_secs(30)).unwrap();
    let summary: Value = serde_json::from_str(traffic.stdout().lines().last().unwrap()).unwrap();
    assert_eq!(summary["failed"], 0, "{summary}");
    let ok = summary["ok"].as_u64().unwrap();
    assert!(ok >= 100, "{summary}");

    // Each listener presented its first certificate and at least two renewed ones, each
    // chaining to its own node's anchor (and not the other's) with the workload's SPIFFE
    // identity (at the time it was served: they live 10 s); each renewal has a new
    // expiry.
    for (i, (_, _, issuer, sa)) in sides.iter().enumerate() {
        let certs = &served[i];
        assert!(
            certs.len() >= 3,
            "{sa}: served {} certificates",
            certs.len()
        );
        let mut last_expiry = String::new();
        for (n, (serial, chain, at)) in certs.iter().enumerate() {
            let file = c.dir().join(format!("served-{sa}-{n}.pem"));
            std::fs::write(&file, chain).unwrap();
            if let Err(e) = verifies(&file, &issuer.join("ca.crt"), *at) {
                panic!("{sa} {serial}: {e}");
            }
            let other = if i == 0 { &new } else { &old };
            assert!(
                verifies(&file, &other.join("ca.crt"), *at).is_err(),
                "{sa} {serial}: the other anchor"
            );
            let san = cert_field(&c, chain, "-ext");
            assert!(
                san.contains(&format!("URI:{}", spiffe(sa))) && !san.contains("DNS:"),
                "{sa}: {san}"
            );
            let expiry = cert_field(&c, chain, "-enddate");
            assert_ne!(expiry, last_expiry, "{sa}: renewed");
            last_expiry = expiry;
        }
    }
    for agent in [&agent1, &agent2] {
        let renewals = agent.config_dump().unwrap()["identity"]["renewals"]
            .as_u64()
            .unwrap();
        assert!(renewals >= 2, "renewed during the traffic: {renewals}");
    }
    let inb = closed(&agent2, "inbound", &format!("{}:8080", b.ip), ok as usize);
    assert_eq!(inb.len() as u64, ok);
    assert!(inb
        .iter()
        .all(|r| r["tls"] == true && r["client_id"] == spiffe("a").as_str()));
    assert!(agent1.stop().unwrap().success());
    assert!(agent2.stop().unwrap().success());
}

/// `openssl x509 -noout OPTION` of the first certificate in `pem` (`-ext` shows the
/// subject alternative names).
fn cert_field(c: &Cluster, pem: &str, option: &str) -> String {
    let file = c.dir().join("field.pem");
    std::fs::write(&file, pem).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.args(["x509", "-noout", "-in"]).arg(&file).arg(option);
    if option == "-ext" {
        cmd.arg("subjectAltName");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether the chain in `file` (leaf, then its issuer) verifies against `anchor` at the
/// Unix time `at` (`Err` with openssl's message if not).
fn verifies(file: &Path, anchor: &Path, at: u64) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(["verify", "-attime", &at.to_string(), "-CAfile"])
        .arg(anchor)
        .arg("-untrusted")
        .arg(file)
        .arg(file)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn service_endpoints_behind_agents_are_balanced_and_dead_ones_skipped() {
    require_root().unwrap();
    let c = Cluster::new("mtls-svc").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let n2 = c.add_node("n2").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let web1 = c.add_pod(&n2, "web1").unwrap();
    let web2 = c.add_pod(&n2, "web2").unwrap();
    let ca = identity_init(&c, "ca").unwrap();
    let anchors = ca.join("ca.crt");
    let svc = meshd_tests::mesh::ServiceSpec::web("10.96.0.20", 8080);
    let y1 = config_yaml(
        &c,
        &n1,
        &[
            WorkloadSpec::new(&client),
            remote(&web1).label("app", "web"),
            remote(&web2).label("app", "web"),
        ],
        &[svc],
    );
    let y2 = config_yaml(
        &c,
        &n2,
        &[
            remote(&client),
            WorkloadSpec::new(&web1).label("app", "web"),
            WorkloadSpec::new(&web2).label("app", "web"),
        ],
        &[],
    );
    let agent1 = Agent::start(&c, &n1, &with_identity(&y1, &anchors, &ca, 3600)).unwrap();
    let agent2 = Agent::start(&c, &n2, &with_identity(&y2, &anchors, &ca, 3600)).unwrap();
    let s1 = serve(&c, &web1, 8080).unwrap();
    let s2 = serve(&c, &web2, 8080).unwrap();
    let vip = "10.96.0.20:80";

    for _ in 0..8 {
        assert_eq!(echo(&c, &client, vip, 1000)["ok"], true);
    }
    let recs = closed(&agent1, "outbound", vip, 8);
    let to = |p: &Pod| {
        recs.iter()
            .filter(|r| r["target"] == format!("{}:8080", p.ip).as_str())
            .count()
    };
    assert_eq!((to(&web1), to(&web2)), (4, 4), "{recs:#?}");
    assert!(recs
        .iter()
        .all(|r| r["tls"] == true && r["service"] == "default/web"));

    // web1's app dies: its agent answers the tunnel with 503, the client's agent marks the
    // endpoint down after that one failure (for 10 s) and sends everything to web2. The
    // echoes stop 8 s after the kill, so that all of them fall in the window even on a
    // slow machine.
    s1.kill().unwrap();
    let killed = Instant::now();
    let mut after_kill = 0;
    while after_kill < 6 && killed.elapsed() < Duration::from_secs(8) {
        assert_eq!(echo(&c, &client, vip, 1000)["ok"], true);
        after_kill += 1;
    }
    assert!(after_kill >= 3, "only {after_kill} echoes in 8 s");
    closed(&agent1, "outbound", vip, 8 + after_kill);
    let attempts = agent1
        .proc
        .stderr()
        .lines()
        .filter(|l| l.contains("HBONE tunnel failed") && l.contains(&format!("{}:8080", web1.ip)))
        .count();
    assert_eq!(attempts, 1, "one attempt at the dead endpoint");

    // No live endpoint: the client is reset within 1 s (the connect timeout is 5 s),
    // with a clear error in the record.
    s2.kill().unwrap();
    for _ in 0..2 {
        let t0 = Instant::now();
        let r = testapp_json(&c, &client, &["echo", "--connect", vip, "--bytes", "10"]).unwrap();
        let took = t0.elapsed();
        assert_eq!(r["ok"], false, "{r}");
        assert!(r["error"].as_str().unwrap().contains("reset"), "reset: {r}");
        assert!(took < Duration::from_secs(1), "failed after {took:?}");
    }
    let recs = closed(&agent1, "outbound", vip, 8 + after_kill + 2);
    let last = recs.last().unwrap()["error"].as_str().unwrap().to_string();
    assert!(
        last.contains("service default/web has no live endpoint"),
        "{last}"
    );
    assert!(agent1.stop().unwrap().success());
    assert!(agent2.stop().unwrap().success());
}
