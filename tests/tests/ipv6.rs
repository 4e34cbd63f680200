//! IPv6 and dual-stack pods end to end, in a dual-stack cluster
//! ([`Cluster::new_dual_stack`]): connect6 (outbound), IPv6 sk_lookup (inbound),
//! IPv4-mapped addresses of dual-stack sockets, in-pod `::1`, and HBONE over IPv6.

use std::net::SocketAddr;

use meshd_tests::{
    enroll::map_count,
    mesh::{config_yaml, meshd_bin, serve_at, Agent, ServiceSpec, WireCapture, WorkloadSpec},
    require_root,
    traffic::{app_saw_client_socket, echo_ok, last_json_line, wait_closed},
    two_nodes::{spiffe, two_nodes_in},
    Cluster, Pod,
};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

/// `[ip6]:port` of a dual-stack pod, as the agent prints socket addresses.
fn v6(pod: &Pod, port: u16) -> String {
    let ip = pod.ip6.expect("a dual-stack pod has an IPv6 address");
    SocketAddr::from((ip, port)).to_string()
}

/// The pod's IPv6 address in brackets, as it starts a printed socket address.
fn v6_host(pod: &Pod) -> String {
    format!(
        "[{}]:",
        pod.ip6.expect("a dual-stack pod has an IPv6 address")
    )
}

fn greeting(r: &Value) -> &str {
    r["greeting"].as_str().unwrap_or_default()
}

/// One node, dual-stack: `client` (outbound port 9090 skipped) and `server` (inbound port
/// 9091 skipped) enrolled, `plain` not; each pod serves `[::]:8080` (IPv6 and IPv4), the
/// client also `[::]:7070`, `plain` `[::]:9090` and `server` `[::]:9091`.
fn one_node(name: &str) -> (Cluster, Agent, Pod, Pod, Pod) {
    let c = Cluster::new_dual_stack(name).unwrap();
    let n1 = c.add_node("n1").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let server = c.add_pod(&n1, "server").unwrap();
    let plain = c.add_pod(&n1, "plain").unwrap();
    let yaml = config_yaml(
        &c,
        &n1,
        &[
            WorkloadSpec::new(&client).skip_outbound(&[9090]),
            WorkloadSpec::new(&server).skip_inbound(&[9091]),
        ],
        &[],
    );
    let agent = Agent::start(&c, &n1, &yaml).unwrap();
    for p in [&client, &server, &plain] {
        serve_at(&c, p, "[::]:8080").unwrap();
    }
    serve_at(&c, &client, "[::]:7070").unwrap();
    serve_at(&c, &plain, "[::]:9090").unwrap();
    serve_at(&c, &server, "[::]:9091").unwrap();
    (c, agent, client, server, plain)
}

/// connect6 and IPv6 sk_lookup: an enrolled pod's connection to a non-enrolled pod's IPv6
/// address goes through the agent (its record has the original IPv6 destination) and the
/// server sees the client pod's own IPv6 address; a non-enrolled pod's connection to an
/// enrolled pod's IPv6 address is captured by the inbound listener and delivered over
/// `[::1]`. Bytes are echoed intact both ways.
#[test]
fn ipv6_outbound_and_inbound_capture_carry_bytes_intact() {
    require_root().unwrap();
    let (c, agent, client, server, plain) = one_node("ipv6-capture");

    // Outbound (connect6): the client's socket is connected to the agent on [::1], the
    // server sees the client pod's address.
    let plain_dst = v6(&plain, 8080);
    let r = echo_ok(&c, &client, &plain_dst, 16 * MIB);
    assert!(
        r["local"].as_str().unwrap().starts_with("[::1]:"),
        "captured: the socket is connected to the agent's [::1] listener: {r}"
    );
    assert!(
        greeting(&r).contains(&format!("peer={}", v6_host(&client))),
        "{r}"
    );
    let out = wait_closed(&agent, "outbound", &plain_dst, 1);
    assert_eq!(out[0]["workload"], "default/client");
    assert_eq!(out[0]["target"], plain_dst.as_str());
    assert_eq!(out[0]["bytes_sent"].as_u64(), Some(16 * MIB));
    assert_eq!(out[0]["error"], Value::Null);

    // Inbound (sk_lookup on the IPv6 address): delivered to the app's IPv6 address from
    // inside its pod (never to [::1]), from the client's own IPv6 address.
    let server_dst = v6(&server, 8080);
    let r = echo_ok(&c, &plain, &server_dst, 8 * MIB);
    assert!(
        greeting(&r).contains(&format!("peer={}", v6_host(&plain))),
        "{r}"
    );
    assert!(!app_saw_client_socket(&r), "delivered by the agent: {r}");
    assert!(
        r["local"].as_str().unwrap().starts_with(&v6_host(&plain)),
        "not captured on the client side: {r}"
    );
    let inb = wait_closed(&agent, "inbound", &server_dst, 1);
    assert_eq!(inb[0]["workload"], "default/server");
    assert!(
        inb[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with(&v6_host(&plain)),
        "{inb:?}"
    );
    assert_eq!(inb[0]["target"], server_dst.as_str());
    assert_eq!(inb[0]["bytes_sent"].as_u64(), Some(8 * MIB));

    // Enrolled to enrolled over IPv6: once per side, nothing captured twice.
    echo_ok(&c, &client, &server_dst, 4 * MIB);
    wait_closed(&agent, "outbound", &server_dst, 1);
    let inb = wait_closed(&agent, "inbound", &server_dst, 2);
    assert!(
        inb.iter()
            .any(|r| r["peer"].as_str().unwrap().starts_with(&v6_host(&client))),
        "{inb:#?}"
    );
    let all = agent.connections().unwrap();
    assert_eq!(all.len(), 4, "{all:#?}");
    assert!(agent.stop().unwrap().success());
}

/// A dual-stack socket connecting to an IPv4-mapped address (`::ffff:a.b.c.d`) is captured
/// by connect6 as the IPv4 destination (README: connect6 handles "IPv4-mapped addresses of
/// dual-stack sockets"): the record's original destination is `a.b.c.d:port` and the
/// server sees the client pod's IPv4 address. Never captured over IPv6: in-pod loopback
/// (`[::1]`), a skipped outbound port and a skipped inbound port (no record, and the
/// sockets connect directly), while the contrast connections each give exactly one record.
#[test]
fn ipv4_mapped_captured_as_ipv4_loopback_and_skipped_ports_never() {
    require_root().unwrap();
    let (c, agent, client, server, plain) = one_node("ipv6-mapped");

    let mapped = format!("[::ffff:{}]:8080", plain.ip);
    let plain4 = format!("{}:8080", plain.ip);
    let r = echo_ok(&c, &client, &mapped, 4 * MIB);
    assert!(
        r["local"]
            .as_str()
            .unwrap()
            .starts_with("[::ffff:127.0.0.1]:"),
        "captured: the socket is connected to the agent's IPv4 listener: {r}"
    );
    assert!(
        greeting(&r).contains(&format!("peer=[::ffff:{}]:", client.ip)),
        "the server (dual-stack) sees the client pod's IPv4 address: {r}"
    );
    let out = wait_closed(&agent, "outbound", &plain4, 1);
    assert_eq!(out[0]["workload"], "default/client");
    assert_eq!(out[0]["target"], plain4.as_str());
    assert_eq!(out[0]["bytes_sent"].as_u64(), Some(4 * MIB));
    assert_eq!(out[0]["error"], Value::Null);
    // Its original destination was keyed by the destination's family (IPv4, as the agent
    // looks it up), taken on accept: no entry is left in either map (review M4).
    assert_eq!(map_count(&agent, "MESHD_ORIG_DST"), 0);
    assert_eq!(map_count(&agent, "MESHD_SOCK_DST"), 0);

    // In-pod loopback over IPv6, to the pod's own server: direct.
    let r = echo_ok(&c, &client, "[::1]:7070", MIB);
    assert!(greeting(&r).contains("local=[::1]:7070"), "{r}");
    // Skipped outbound port: the client's socket really is connected to the server.
    let r = echo_ok(&c, &client, &v6(&plain, 9090), 4096);
    assert!(
        r["local"].as_str().unwrap().starts_with(&v6_host(&client)),
        "{r}"
    );
    assert!(
        greeting(&r).contains(&format!("peer={}", v6_host(&client))),
        "{r}"
    );
    // Skipped inbound port, from a non-enrolled pod: the app sees the client's own socket
    // (an inbound capture would deliver it from another port).
    let r = echo_ok(&c, &plain, &v6(&server, 9091), 4096);
    assert!(
        greeting(&r).contains(&format!("peer={}", v6_host(&plain))),
        "{r}"
    );
    assert!(app_saw_client_socket(&r), "not captured: {r}");
    // A captured IPv6 connection afterwards, as a marker: once it is recorded, an earlier
    // loopback capture would have been recorded too.
    let plain_dst = v6(&plain, 8080);
    echo_ok(&c, &client, &plain_dst, 4096);
    wait_closed(&agent, "outbound", &plain_dst, 1);
    let all = agent.connections().unwrap();
    assert_eq!(
        all.len(),
        2,
        "the mapped and the marker connection only: {all:#?}"
    );
    assert!(agent.stop().unwrap().success());
}

/// HBONE over IPv6 across two nodes: a pod connects to a pod on the other node by its IPv6
/// address; the agents carry it over mutual TLS (TLS 1.3 to `[b]:15008`, one SYN, no
/// plaintext and no payload outside 15008 on the bridge between the nodes); both agents
/// record both identities and the client's IPv6 address; 6 MiB come back intact. The same
/// dual-stack workload is also reached over mutual TLS on its IPv4 address. A tunnel opened
/// by hand (`meshd diagnostics hbone`, rustls, from node 2 outside any pod) to `[b]:15008`
/// reaches b's app with an IPv6 `:authority`, and a CONNECT to a's IPv6 address is refused
/// with 403 (no open relay over IPv6 either).
#[test]
fn pods_talk_over_hbone_on_ipv6_across_nodes() {
    require_root().unwrap();
    let (t, agent1, agent2) = two_nodes_in(Cluster::new_dual_stack("ipv6-hbone").unwrap(), &[]);
    let (c, n2, a, b, ca) = (&t.c, &t.n2, &t.a, &t.b, &t.ca);
    let anchors = ca.join("ca.crt");
    serve_at(c, b, "[::]:8080").unwrap();
    let wire = WireCapture::start(c).unwrap();

    let b_dst = v6(b, 8080);
    for _ in 0..3 {
        let r = echo_ok(c, a, &b_dst, 2 * MIB);
        assert!(
            greeting(&r).contains(&format!("peer={}", v6_host(a))),
            "{r}"
        );
    }
    let out = wait_closed(&agent1, "outbound", &b_dst, 3);
    let inb = wait_closed(&agent2, "inbound", &b_dst, 3);
    let pcap = wire.stop().unwrap();

    for r in &out {
        assert_eq!(r["tls"], true, "{r}");
        assert_eq!(r["client_id"], spiffe("a").as_str(), "{r}");
        assert_eq!(r["server_id"], spiffe("b").as_str(), "{r}");
        assert_eq!(r["bytes_sent"].as_u64(), Some(2 * MIB), "{r}");
    }
    for r in &inb {
        assert_eq!(r["tls"], true, "{r}");
        assert_eq!(r["client_id"], spiffe("a").as_str(), "{r}");
        assert_eq!(r["server_id"], spiffe("b").as_str(), "{r}");
        assert!(r["peer"].as_str().unwrap().starts_with(&v6_host(a)), "{r}");
        assert_eq!(r["target"], b_dst.as_str(), "{r}");
    }

    // The wire: IPv6 only, TLS 1.3 from [b]:15008, no plaintext, one pooled connection.
    let marker = b"hello peer=";
    assert!(
        !pcap.windows(marker.len()).any(|w| w == marker),
        "plaintext on the wire"
    );
    let file = c.dir().join("wire.pcap");
    let b_ip6 = b.ip6.unwrap().to_string();
    let hellos = WireCapture::tshark(
        &file,
        "tls.handshake.type == 2",
        &[
            "tls.handshake.extensions.supported_version",
            "ipv6.src",
            "tcp.srcport",
        ],
    )
    .unwrap();
    assert!(!hellos.is_empty(), "a ServerHello was captured");
    for h in &hellos {
        assert_eq!(
            h.split('\t').collect::<Vec<_>>(),
            ["0x0304", b_ip6.as_str(), "15008"],
            "TLS 1.3 from [b]:15008 over IPv6: {h}"
        );
    }
    let payload_v4 = WireCapture::tshark(&file, "ip && tcp.len > 0", &["tcp.port"]).unwrap();
    assert!(payload_v4.is_empty(), "IPv4 payload: {payload_v4:?}");
    let other_ports =
        WireCapture::tshark(&file, "tcp.len > 0 && !(tcp.port == 15008)", &["tcp.port"]).unwrap();
    assert!(
        other_ports.is_empty(),
        "payload outside HBONE: {other_ports:?}"
    );
    let app_data =
        WireCapture::tshark(&file, "tls.record.opaque_type == 23", &["ipv6.dst"]).unwrap();
    assert!(app_data.len() > 10, "encrypted records: {}", app_data.len());
    let syns = WireCapture::tshark(
        &file,
        "tcp.flags.syn == 1 && tcp.flags.ack == 0",
        &["ipv6.src", "ipv6.dst", "tcp.dstport"],
    )
    .unwrap();
    assert_eq!(
        syns,
        vec![format!("{}\t{b_ip6}\t15008", a.ip6.unwrap())],
        "one pooled connection, from a's IPv6 address to b's"
    );

    // The other address of the same dual-stack workload: same identities, over IPv4.
    let b4_dst = format!("{}:8080", b.ip);
    let r = echo_ok(c, a, &b4_dst, MIB);
    assert!(
        greeting(&r).contains(&format!("peer=[::ffff:{}]:", a.ip)),
        "{r}"
    );
    let out = wait_closed(&agent1, "outbound", &b4_dst, 1);
    assert_eq!(out[0]["tls"], true, "{out:?}");
    assert_eq!(out[0]["server_id"], spiffe("b").as_str(), "{out:?}");
    let inb = wait_closed(&agent2, "inbound", &b4_dst, 1);
    assert_eq!(inb[0]["tls"], true, "{inb:?}");
    assert_eq!(inb[0]["client_id"], spiffe("a").as_str(), "{inb:?}");
    assert!(
        inb[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", a.ip)),
        "{inb:?}"
    );

    let probe = |authority: &str| -> Value {
        let mut cmd = std::process::Command::new(meshd_bin());
        cmd.args(["diagnostics", "hbone", "--trust-anchors"])
            .arg(&anchors)
            .arg("--issuer-cert")
            .arg(ca.join("issuer.crt"))
            .arg("--issuer-key")
            .arg(ca.join("issuer.key"))
            .args([
                "--identity",
                &spiffe("probe"),
                "--expect-server",
                &spiffe("b"),
            ])
            .args(["--connect", &v6(b, 15008), "--authority", authority])
            .args(["--send", "ping"]);
        let out = c.run_in_node(n2, cmd).unwrap();
        last_json_line("diagnostics", &out)
    };
    let r = probe(&b_dst);
    assert_eq!(
        (&r["ok"], &r["status"]),
        (&Value::from(true), &Value::from(200)),
        "{r}"
    );
    assert!(
        r["reply"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!("hello peer=[{}]:", n2.gateway6.unwrap())),
        "the app sees the probe's own address (node 2 on its pod bridge): {r}"
    );
    let r = probe(&v6(a, 8080));
    assert_eq!(r["status"], 403, "{r}");
    let (_, metrics) = agent2.get("/metrics").unwrap();
    assert!(
        metrics.lines().any(|l| l
            == "hbone_rejected_total{direction=\"inbound\",reason=\"connect_other_address\"} 1"),
        "{metrics}"
    );
    assert!(agent1.stop().unwrap().success());
    assert!(agent2.stop().unwrap().success());
}

/// A service with an IPv6 VIP: connect6 captures the VIP, the agent balances over the
/// IPv6 addresses of the selected workloads (round robin, one endpoint per node: 3 and 3
/// of 6), never their IPv4 ones, and the remote endpoint sees the client pod's IPv6 address.
#[test]
fn ipv6_service_vip_spreads_over_ipv6_endpoints() {
    require_root().unwrap();
    let c = Cluster::new_dual_stack("ipv6-svc").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let n2 = c.add_node("n2").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let web1 = c.add_pod(&n1, "web1").unwrap();
    let web2 = c.add_pod(&n2, "web2").unwrap();
    let vip = "fd00:10:96::10";
    let svc = ServiceSpec::web(&format!("\"{vip}\""), 8080);
    let mut remote = WorkloadSpec::new(&web2).label("app", "web");
    remote.remote = true;
    let yaml = config_yaml(
        &c,
        &n1,
        &[
            WorkloadSpec::new(&client),
            WorkloadSpec::new(&web1).label("app", "web"),
            remote,
        ],
        &[svc],
    );
    let agent = Agent::start(&c, &n1, &yaml).unwrap();
    serve_at(&c, &web1, "[::]:8080").unwrap();
    let web2_app = serve_at(&c, &web2, "[::]:8080").unwrap();

    let vip_dst = format!("[{vip}]:80");
    for _ in 0..6 {
        echo_ok(&c, &client, &vip_dst, 64 * 1024);
    }
    let recs = wait_closed(&agent, "outbound", &vip_dst, 6);
    assert!(
        recs.iter().all(|r| r["service"] == "default/web"),
        "{recs:#?}"
    );
    let to = |pod: &Pod| {
        let t = v6(pod, 8080);
        recs.iter().filter(|r| r["target"] == t.as_str()).count()
    };
    assert_eq!((to(&web1), to(&web2)), (3, 3), "{recs:#?}");
    assert_eq!(
        web2_app
            .stdout()
            .matches(&format!("accepted peer={}", v6_host(&client)))
            .count(),
        3,
        "{}",
        web2_app.stdout()
    );
    assert!(agent.stop().unwrap().success());
}

/// The harness itself, no agent: a dual-stack cluster routes IPv6 between pods on two
/// nodes with the source address preserved (and IPv4 as before), while a cluster made with
/// `Cluster::new` stays IPv4-only (no IPv6 address beyond link-local in its pods).
#[test]
fn dual_stack_cluster_routes_ipv6_between_nodes() {
    require_root().unwrap();
    let c = Cluster::new_dual_stack("ipv6-harness").unwrap();
    assert!(c.is_dual_stack());
    let n1 = c.add_node("n1").unwrap();
    let n2 = c.add_node("n2").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let b = c.add_pod(&n2, "b").unwrap();
    assert_eq!(a.ip6.unwrap().to_string(), "fd00:10:244:1::2");
    assert_eq!(b.ip6.unwrap().to_string(), "fd00:10:244:2::2");
    assert_eq!(n2.ip6.unwrap().to_string(), "fd00:10:240::2");
    serve_at(&c, &b, "[::]:8080").unwrap();
    let r = echo_ok(&c, &a, &v6(&b, 8080), MIB);
    assert!(
        greeting(&r).contains(&format!("peer={}", v6_host(&a))),
        "{r}"
    );
    let r = echo_ok(&c, &a, &format!("{}:8080", b.ip), MIB);
    assert!(
        greeting(&r).contains(&format!("peer=[::ffff:{}]:", a.ip)),
        "{r}"
    );

    let v4 = Cluster::new("ipv4-only").unwrap();
    assert!(!v4.is_dual_stack());
    let n = v4.add_node("n1").unwrap();
    let p = v4.add_pod(&n, "p").unwrap();
    assert_eq!((n.ip6, p.ip6), (None, None));
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["-6", "addr", "show", "scope", "global"]);
    let out = v4.run_in_pod(&p, cmd).unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}
