//! Capture end to end, with real processes in a cluster of namespaces: outbound
//! (connect4 + sockops), inbound (sk_lookup), services, and what must never be captured.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use meshd_tests::{
    enroll::map_count,
    mesh::{config_yaml, serve, testapp_bin, testapp_json, Agent, ServiceSpec, WorkloadSpec},
    require_root,
    traffic::{
        app_saw_client_socket, apps_dir, echo, echo_ok, greeted_peer, spawn_listening, wait_closed,
    },
    wait_until, Cluster, Pod,
};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;
/// How long a failed endpoint is left out (agent/src/proxy/balance.rs `DOWN_FOR`).
const DOWN_FOR: Duration = Duration::from_secs(10);

/// One greeted 1 KiB echo that must succeed; returns the server's greeting.
fn echo_greeted(cluster: &Cluster, pod: &Pod, to: &str) -> String {
    echo_ok(cluster, pod, to, 1024)["greeting"]
        .as_str()
        .unwrap()
        .to_string()
}

/// One node: `client` and `server` enrolled, `plain` not; the agent started.
fn client_server_plain(name: &str) -> (Cluster, Agent, Pod, Pod, Pod) {
    let c = Cluster::new(name).unwrap();
    let n1 = c.add_node("n1").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let server = c.add_pod(&n1, "server").unwrap();
    let plain = c.add_pod(&n1, "plain").unwrap();
    let yaml = config_yaml(
        &c,
        &n1,
        &[WorkloadSpec::new(&client), WorkloadSpec::new(&server)],
        &[],
    );
    let agent = Agent::start(&c, &n1, &yaml).unwrap();
    (c, agent, client, server, plain)
}

#[test]
fn outbound_and_inbound_capture_carry_bytes_intact() {
    require_root().unwrap();
    let (c, agent, client, server, plain) = client_server_plain("capture-bytes");
    serve(&c, &server, 8080).unwrap();
    serve(&c, &plain, 8080).unwrap();

    // Enrolled client -> non-enrolled server: outbound capture only. The server sees the
    // client pod's own address, because the agent connects from inside the client's netns.
    let plain_dst = format!("{}:8080", plain.ip);
    let r = echo_ok(&c, &client, &plain_dst, 64 * MIB);
    let greeting = r["greeting"].as_str().unwrap();
    assert!(
        greeting.contains(&format!("peer={}:", client.ip)),
        "{greeting}"
    );
    let out = wait_closed(&agent, "outbound", &plain_dst, 1);
    assert_eq!(out[0]["workload"], "default/client");
    assert_eq!(out[0]["target"], plain_dst.as_str());
    assert_eq!(out[0]["bytes_sent"].as_u64(), Some(64 * MIB));
    // Received from the server: the echo and the greeting line before it.
    let greeting_len = greeting.len() as u64 + 1;
    assert_eq!(
        out[0]["bytes_received"].as_u64(),
        Some(64 * MIB + greeting_len)
    );
    assert_eq!(out[0]["error"], Value::Null);

    // Non-enrolled client -> enrolled server: inbound capture only; the agent saw the
    // client's address and the original destination, and delivered to that destination
    // from inside the server's pod, from the client's own address (review H1): the app
    // sees the real client, on a port of the agent's delivery socket, not the client's.
    let server_dst = format!("{}:8080", server.ip);
    let r = echo_ok(&c, &plain, &server_dst, 16 * MIB);
    assert_eq!(
        greeted_peer(&r).map(|a| a.ip()),
        Some(plain.ip.into()),
        "{r}"
    );
    assert!(
        !app_saw_client_socket(&r),
        "not delivered by the agent: {r}"
    );
    let inb = wait_closed(&agent, "inbound", &server_dst, 1);
    assert_eq!(inb[0]["workload"], "default/server");
    assert!(
        inb[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", plain.ip)),
        "{inb:?}"
    );
    assert_eq!(inb[0]["target"], server_dst.as_str());
    assert_eq!(inb[0]["bytes_sent"].as_u64(), Some(16 * MIB));

    // Enrolled -> enrolled: both sides, exactly one record each (no loops).
    echo_ok(&c, &client, &server_dst, 32 * MIB);
    wait_closed(&agent, "outbound", &server_dst, 1);
    let inb = wait_closed(&agent, "inbound", &server_dst, 2);
    assert!(inb.iter().any(|r| r["peer"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}:", client.ip))));
    // Nothing is captured twice: the agent's own connections and its loopback delivery.
    let all = agent.connections().unwrap();
    assert_eq!(all.len(), 4, "{all:#?}");

    // A port nobody listens on: the client sees its connection reset, as without the agent
    // it would see it refused, never an empty success.
    let closed = format!("{}:8181", server.ip);
    let r = testapp_json(
        &c,
        &client,
        &["echo", "--connect", &closed, "--bytes", "1000"],
    )
    .unwrap();
    // Reset, not an orderly close: a FIN would read as "received 0 of 1000 bytes".
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("Connection reset by peer"),
        "the client sees a reset: {r}"
    );
    let failed = wait_closed(&agent, "inbound", &closed, 1);
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{failed:?}"
    );
    agent.stop().unwrap();
}

/// `ip rule` (or `ip -6 rule`) in a pod's namespace.
fn pod_rules(c: &Cluster, pod: &Pod) -> String {
    let mut cmd = Command::new("ip");
    cmd.arg("rule");
    let out = c.run_in_pod(pod, cmd).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Review H1's "where the kernel allows it": the app sees the real client as the source of
/// a delivered connection (the agent's transparent socket, and the rule it installs in the
/// pod's namespace), or, with `inbound.preserveSourceAddress: false`, the pod's own
/// address and no rule. Leaving the mesh removes the rule.
#[test]
fn the_client_address_is_kept_for_the_app_or_not_as_configured() {
    require_root().unwrap();
    let c = Cluster::new("capture-source").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let server = c.add_pod(&n1, "server").unwrap();
    let plain = c.add_pod(&n1, "plain").unwrap();
    let yaml = config_yaml(&c, &n1, &[WorkloadSpec::new(&server)], &[]);
    let agent = Agent::start(&c, &n1, &yaml).unwrap();
    serve(&c, &server, 8080).unwrap();
    let dst = format!("{}:8080", server.ip);
    let rule = "fwmark 0x3a9e/0x3a9e lookup 15006";
    assert!(
        pod_rules(&c, &server).contains(rule),
        "{}",
        pod_rules(&c, &server)
    );
    assert!(!pod_rules(&c, &plain).contains(rule), "only enrolled pods");
    let r = echo_ok(&c, &plain, &dst, 4096);
    assert_eq!(
        greeted_peer(&r).map(|a| a.ip()),
        Some(plain.ip.into()),
        "{r}"
    );
    assert!(!app_saw_client_socket(&r), "delivered by the agent: {r}");
    // The workload leaves the mesh (the config no longer lists it): its routing goes.
    agent.write_config(&config_yaml(&c, &n1, &[], &[])).unwrap();
    assert!(wait_until(Duration::from_secs(10), || !pod_rules(
        &c, &server
    )
    .contains(rule)));
    agent.stop().unwrap();
    assert!(
        !pod_rules(&c, &server).contains(rule),
        "{}",
        pod_rules(&c, &server)
    );

    let yaml = yaml.replace(
        "connectTimeoutMs: 2000\n",
        "connectTimeoutMs: 2000\ninbound:\n  preserveSourceAddress: false\n",
    );
    let agent = Agent::start(&c, &n1, &yaml).unwrap();
    assert!(!pod_rules(&c, &server).contains(rule));
    let r = echo_ok(&c, &plain, &dst, 4096);
    assert_eq!(
        greeted_peer(&r).map(|a| a.ip()),
        Some(server.ip.into()),
        "{r}"
    );
    agent.stop().unwrap();
}

#[test]
fn services_spread_over_endpoints_across_nodes() {
    require_root().unwrap();
    let c = Cluster::new("capture-svc").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let n2 = c.add_node("n2").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let web1 = c.add_pod(&n1, "web1").unwrap();
    let web2 = c.add_pod(&n2, "web2").unwrap();
    let svc = ServiceSpec::web("10.96.0.10", 8080);
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
    serve(&c, &web1, 8080).unwrap();
    serve(&c, &web2, 8080).unwrap();

    for _ in 0..6 {
        echo_ok(&c, &client, "10.96.0.10:80", 1024);
    }
    // Round robin over the two endpoints, one per node: 3 each.
    let recs = wait_closed(&agent, "outbound", "10.96.0.10:80", 6);
    assert!(
        recs.iter().all(|r| r["service"] == "default/web"),
        "{recs:#?}"
    );
    let to = |ip: std::net::Ipv4Addr| {
        let t = format!("{ip}:8080");
        move |r: &&Value| r["target"] == t.as_str()
    };
    assert_eq!(recs.iter().filter(to(web1.ip)).count(), 3, "{recs:#?}");
    assert_eq!(recs.iter().filter(to(web2.ip)).count(), 3, "{recs:#?}");
    // web2 is on the other node and not enrolled there: it saw the client pod's address.
    let web2_log = c
        .processes()
        .into_iter()
        .find(|p| p.name().starts_with("web2-"))
        .unwrap();
    assert!(web2_log
        .stdout()
        .contains(&format!("accepted peer={}:", client.ip)));

    // A dead endpoint is skipped: stop web2's server; it costs one failed attempt, then it
    // gets no more traffic for DOWN_FOR (10 s), and every request still succeeds. The
    // echoes are counted only while well inside that window, however slow the machine is.
    let to_web2 = format!("{}:8080", web2.ip);
    let failures = || {
        agent
            .proc
            .stderr()
            .lines()
            .filter(|l| l.contains("outbound connect failed") && l.contains(&to_web2))
            .count()
    };
    web2_log.kill().unwrap();
    let killed = Instant::now();
    let mut during = 0;
    while during < 6 && killed.elapsed() < Duration::from_secs(7) {
        echo_ok(&c, &client, "10.96.0.10:80", 1024);
        during += 1;
    }
    // Round robin reaches web2 on the first or second echo: two more show it skipped.
    assert!(during >= 4, "only {during} echoes in 7 s");
    let recs = wait_closed(&agent, "outbound", "10.96.0.10:80", 6 + during);
    assert_eq!(
        recs.iter().filter(to(web1.ip)).count(),
        3 + during,
        "{recs:#?}"
    );
    assert_eq!(recs.iter().filter(to(web2.ip)).count(), 3, "{recs:#?}");
    assert_eq!(failures(), 1, "one attempt at the dead endpoint");

    // The endpoint comes back after its timeout: web2 serves again, and the first
    // connection to reach it is made no earlier than DOWN_FOR after the failure.
    serve(&c, &web2, 8080).unwrap();
    let mut back = None;
    while back.is_none() && killed.elapsed() < DOWN_FOR + Duration::from_secs(30) {
        let r = echo_greeted(&c, &client, "10.96.0.10:80");
        if r.contains(&format!("local={to_web2}")) {
            back = Some(killed.elapsed());
        }
        // Pacing (a connection every 200 ms), not synchronisation.
        std::thread::sleep(Duration::from_millis(200));
    }
    let back = back.expect("web2 never got traffic again");
    assert!(
        back >= DOWN_FOR,
        "web2 back after {back:?}, before DOWN_FOR"
    );
    assert_eq!(failures(), 1, "no further failed attempt");

    agent.stop().unwrap();
}

#[test]
fn never_captured_loopback_udp_excluded_ports_and_unenrolled_pods() {
    require_root().unwrap();
    let c = Cluster::new("capture-skip").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let server = c.add_pod(&n1, "server").unwrap();
    let other = c.add_pod(&n1, "other").unwrap();
    let other2 = c.add_pod(&n1, "other2").unwrap();
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
    for port in [8080, 9090, 9091] {
        serve(&c, &server, port).unwrap();
    }
    serve(&c, &client, 7070).unwrap();
    serve(&c, &other2, 8080).unwrap();
    let mut udp = Command::new(testapp_bin());
    udp.args(["udp-echo", "--listen", "0.0.0.0:5353"]);
    c.spawn_in_pod(&server, udp)
        .unwrap()
        .wait_for_output("listening", Duration::from_secs(5))
        .unwrap();

    serve(&c, &other2, 9090).unwrap();
    // Excluded outbound port: the client's socket really connected to the server (a
    // captured one would be connected to the agent on its loopback).
    let r = echo_ok(&c, &client, &format!("{}:9090", other2.ip), 4096);
    assert!(
        r["local"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", client.ip)),
        "{r}"
    );
    // Excluded inbound port, from a non-enrolled pod: direct too.
    let r = echo_ok(&c, &other, &format!("{}:9091", server.ip), 4096);
    assert!(
        r["greeting"]
            .as_str()
            .unwrap()
            .contains(&format!("peer={}:", other.ip)),
        "{r}"
    );
    // Loopback inside an enrolled pod.
    echo_ok(&c, &client, "127.0.0.1:7070", 4096);
    // A captured connection, for contrast: the socket is connected to the agent.
    let r = echo_ok(&c, &client, &format!("{}:8080", other2.ip), 4096);
    assert!(
        r["local"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{r}"
    );
    // Non-enrolled pods talking to each other.
    let r = echo_ok(&c, &other, &format!("{}:8080", other2.ip), 4096);
    assert!(
        r["greeting"]
            .as_str()
            .unwrap()
            .contains(&format!("peer={}:", other.ip)),
        "{r}"
    );
    // UDP (as DNS would be) from an enrolled pod to an enrolled pod.
    let u = testapp_json(
        &c,
        &client,
        &["udp-ping", "--connect", &format!("{}:5353", server.ip)],
    )
    .unwrap();
    assert_eq!(u["ok"], true, "{u}");

    // None of that went through the agent; a captured connection afterwards does, once.
    echo_ok(&c, &client, &format!("{}:8080", server.ip), 4096);
    wait_closed(&agent, "inbound", &format!("{}:8080", server.ip), 1);
    let all = agent.connections().unwrap();
    assert_eq!(
        all.len(),
        3,
        "the contrast connection, and the last one once per side: {all:#?}"
    );
    agent.stop().unwrap();
}

/// Resets cross the relays both ways, on both plain TCP relay paths: the outbound
/// pass-through (enrolled client -> non-enrolled server, relayed by the agent from inside
/// the client's netns) and the inbound delivery (non-enrolled client -> enrolled server,
/// relayed to the server's address from inside the server's netns). A server that closes with SO_LINGER 0
/// makes the client read ECONNRESET (not a clean end), and a client that does so makes the
/// server read ECONNRESET.
#[test]
fn resets_cross_the_outbound_and_inbound_relays() {
    require_root().unwrap();
    let (c, agent, client, server, plain) = client_server_plain("capture-rst");
    let reset_serve = |pod: &Pod| {
        let mut cmd = Command::new(testapp_bin());
        cmd.args(["reset-serve", "--listen", "0.0.0.0:8080"]);
        spawn_listening(&c, pod, cmd)
    };
    let on_plain = reset_serve(&plain);
    let on_server = reset_serve(&server);

    for (path, from, to, app) in [
        ("outbound pass-through", &client, &plain, &on_plain),
        ("inbound delivery", &plain, &server, &on_server),
    ] {
        let dst = format!("{}:8080", to.ip);
        // The server resets: the client sees the reset.
        let r = testapp_json(
            &c,
            from,
            &["reset-client", "--connect", &dst, "--mode", "server"],
        )
        .unwrap();
        assert_eq!(r["outcome"], "reset", "{path}, server resets: {r}");
        // The client resets: the server sees the reset.
        let r = testapp_json(
            &c,
            from,
            &["reset-client", "--connect", &dst, "--mode", "client"],
        )
        .unwrap();
        assert_eq!(r["ok"], true, "{path}: {r}");
        let ended = app
            .wait_for_output("ended peer=", Duration::from_secs(10))
            .unwrap();
        assert!(
            app.stdout()
                .lines()
                .filter(|l| l.starts_with("ended peer="))
                .all(|l| l.ends_with(" reset")),
            "{path}, client resets: {ended}\n{}",
            app.stdout()
        );
        // Both went through the agent.
        let direction = if from.name == "client" {
            "outbound"
        } else {
            "inbound"
        };
        wait_closed(&agent, direction, &dst, 2);
    }
    agent.stop().unwrap();
}

/// How many connections a greeting server accepted (its `accepted peer=...` lines).
fn accepted(app: &meshd_tests::ProcHandle) -> usize {
    app.stdout()
        .lines()
        .filter(|l| l.starts_with("accepted "))
        .count()
}

/// Review H2: the inbound listener is bound to `127.0.0.1:15006` (sk_lookup assigns it
/// whatever its bound address), so a connection from another pod to `serverIP:15006` is
/// refused by the server's kernel, with no record; a process inside the server's pod that
/// connects to `127.0.0.1:15006` reaches the listener and gets one refused record and a
/// reset (the destination check), never a delivery.
#[test]
fn the_inbound_listener_is_reached_only_through_sk_lookup() {
    require_root().unwrap();
    let (c, agent, _client, server, plain) = client_server_plain("capture-15006");
    let app = serve(&c, &server, 8080).unwrap();
    let direct = format!("{}:15006", server.ip);
    let r = echo(&c, &plain, &direct, 1000);
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("Connection refused")),
        "refused by the kernel: {r}"
    );
    let r = echo(&c, &server, "127.0.0.1:15006", 1000);
    assert_eq!(r["ok"], false, "{r}");
    let refused = wait_closed(&agent, "inbound", "127.0.0.1:15006", 1);
    assert!(
        refused[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("port 15006 is one of the agent's own ports")),
        "{refused:?}"
    );
    // Captured inbound still works (sk_lookup assigns the loopback-bound listener), once.
    let dst = format!("{}:8080", server.ip);
    echo_ok(&c, &plain, &dst, 4096);
    wait_closed(&agent, "inbound", &dst, 1);
    let all = agent.connections().unwrap();
    assert_eq!(all.len(), 2, "no record for {direct}: {all:#?}");
    assert_eq!(accepted(&app), 1);
    agent.stop().unwrap();
}

/// Review M5: pod a (root in its namespace, so NET_ADMIN) puts pod b's address on its own
/// `lo` and connects to it on a port its outbound capture skips, from that address (the
/// kernel's choice) and from its own address (bound first). The SYN is delivered locally
/// in a's namespace, where sk_lookup steers nothing (source = destination, or a
/// destination on `lo`): it must not reach b's listener (keyed by address only). a's
/// connections are refused by its own kernel, b's agent records nothing and b's app sees
/// nothing. Before that, the same connect without the address trick reaches b through b's
/// inbound capture, once.
#[test]
fn a_pod_cannot_steer_into_another_pods_listener() {
    require_root().unwrap();
    let c = Cluster::new("capture-m5").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let b = c.add_pod(&n1, "b").unwrap();
    let yaml = config_yaml(
        &c,
        &n1,
        &[
            WorkloadSpec::new(&a).skip_outbound(&[8080]),
            WorkloadSpec::new(&b),
        ],
        &[],
    );
    let agent = Agent::start(&c, &n1, &yaml).unwrap();
    let app = serve(&c, &b, 8080).unwrap();
    let dst = format!("{}:8080", b.ip);

    // The contrast: not captured by a's agent side, captured inbound by b's.
    let r = echo_ok(&c, &a, &dst, 4096);
    assert!(
        r["local"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", a.ip)),
        "{r}"
    );
    let inb = wait_closed(&agent, "inbound", &dst, 1);
    assert!(
        inb[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", a.ip)),
        "{inb:?}"
    );
    assert_eq!(accepted(&app), 1);

    let mut ip = Command::new("ip");
    ip.args(["addr", "add", &format!("{}/32", b.ip), "dev", "lo"]);
    let out = c.run_in_pod(&a, ip).unwrap();
    assert!(out.status.success(), "{out:?}");
    for _ in 0..3 {
        let r = echo(&c, &a, &dst, 4096);
        assert_eq!(r["ok"], false, "{r}");
        assert!(
            r["error"]
                .as_str()
                .is_some_and(|e| e.contains("Connection refused")),
            "refused in a's own namespace: {r}"
        );
    }
    let script = format!(
        "import socket\ns = socket.socket()\ns.bind(('{}', 0))\ns.settimeout(5)\n\
         try:\n    s.connect(('{}', 8080))\n    print('connected')\n\
         except ConnectionRefusedError:\n    print('refused')\n",
        a.ip, b.ip
    );
    let mut py = Command::new("python3");
    py.args(["-c", &script]);
    let out = c.run_in_pod(&a, py).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "refused",
        "from a's own address: {out:?}"
    );
    // A marker through b's capture afterwards (from the node, not from a): once it is
    // recorded, a steered connection would have been recorded before it.
    let marker = format!("{}:8080", b.ip);
    let out = c
        .run_in_node(&n1, {
            let mut cmd = Command::new(testapp_bin());
            cmd.args(["echo", "--greet", "--connect", &marker, "--bytes", "100"]);
            cmd
        })
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let inb = wait_closed(&agent, "inbound", &dst, 2);
    assert_eq!(inb.len(), 2, "{inb:#?}");
    assert!(
        inb.iter().all(|r| !r["peer"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", b.ip))),
        "nothing from a with b's address reached b's agent: {inb:#?}"
    );
    assert_eq!(accepted(&app), 2, "{}", app.stdout());
    agent.stop().unwrap();
}

/// Review M5's remainder: pod a (root in its namespace) makes a veth pair in its own
/// namespace, puts pod b's address on one end and injects a SYN for `b:8080` through the
/// other (`apps/inject_syn.py`). The SYN is delivered locally in a's namespace, where a's
/// sk_lookup instance runs: it steers only a's own addresses (its namespace cookie is
/// compiled in), so the normal lookup in a's namespace answers it with a reset; b's
/// listener never sees it (no half-open connection in b's namespace), b's agent records
/// nothing and b's app accepts nothing. With one program for every pod (before), the SYN
/// was assigned to b's listener in b's namespace: no reset came back and b's namespace
/// held the half-open connection from 192.0.2.1.
#[test]
fn a_pod_cannot_inject_into_another_pods_listener() {
    require_root().unwrap();
    let c = Cluster::new("capture-m5-inject").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let b = c.add_pod(&n1, "b").unwrap();
    let yaml = config_yaml(
        &c,
        &n1,
        &[WorkloadSpec::new(&a), WorkloadSpec::new(&b)],
        &[],
    );
    let agent = Agent::start(&c, &n1, &yaml).unwrap();
    let app = serve(&c, &b, 8080).unwrap();
    let dst = format!("{}:8080", b.ip);
    // b's inbound capture works, from a too (through a's outbound capture and b's inbound).
    echo_ok(&c, &a, &dst, 4096);
    wait_closed(&agent, "inbound", &dst, 1);
    assert_eq!(accepted(&app), 1);

    let mut py = Command::new("python3");
    py.arg(apps_dir().join("inject_syn.py"))
        .arg(b.ip.to_string())
        .arg("8080");
    let out = c.run_in_pod(&a, py).unwrap();
    assert!(out.status.success(), "{out:?}");
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        reply["reply"], "rst",
        "answered by the normal lookup in a's own namespace: {out:?}"
    );
    let mut ss = Command::new("ss");
    ss.args(["-Htn", "state", "syn-recv"]);
    let out = c.run_in_pod(&b, ss).unwrap();
    let half_open = String::from_utf8_lossy(&out.stdout);
    assert!(
        !half_open.contains("192.0.2.1"),
        "b's listener got the injected SYN: {half_open}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let all = agent.connections().unwrap();
    assert_eq!(all.len(), 2, "only the first echo's two records: {all:#?}");
    assert_eq!(accepted(&app), 1, "{}", app.stdout());
    // One sk_lookup instance per pod, each loaded at its enrollment (the cost is logged).
    let log = agent.proc.stderr();
    let loads: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sk_lookup instance loaded"))
        .collect();
    assert_eq!(loads.len(), 2, "{log}");
    eprintln!("{}", loads.join("\n"));
    agent.stop().unwrap();
}

/// `apps/connect_churn.py MODE N HOST PORT` in `pod`: its outcome counts.
fn churn(c: &Cluster, pod: &Pod, mode: &str, n: u32, dst: &Pod) -> meshd_tests::ProcHandle {
    let mut py = Command::new("python3");
    py.arg(apps_dir().join("connect_churn.py")).args([
        mode,
        &n.to_string(),
        &dst.ip.to_string(),
        "8080",
    ]);
    c.spawn_in_pod(pod, py).unwrap()
}

fn outcomes(p: &meshd_tests::ProcHandle) -> Value {
    assert!(
        p.wait_for_output("}", Duration::from_secs(60)).is_ok(),
        "{}",
        p.output_tail()
    );
    serde_json::from_str(p.stdout().lines().next().unwrap()).unwrap()
}

/// The value of one `/metrics` line that starts with `series`.
fn metric(agent: &Agent, series: &str) -> Option<u64> {
    let (_, text) = agent.get("/metrics").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Review M4 (case 81): pod a makes thousands of captured connect()s that never send a
/// SYN (no ephemeral port left: EADDRNOTAVAIL after connect4 recorded them; binding to
/// eth0 as the review suggests does not do it on 6.18, the SYN leaves) while pod c
/// makes ordinary connections to the same server: c sees no failure, and every entry a's
/// connects recorded is gone with its socket (sock_release): both maps and the pods'
/// in-flight count at 0. Then a holds its failed sockets open: the first
/// `maxPendingConnectsPerPod` (64) count against its quota, every connect after them is
/// refused with EPERM (fail closed, never uncaptured) and counted in
/// `capture_refused_total`, while c still connects; closing them frees the quota.
#[test]
fn original_destinations_never_leak_and_one_pod_cannot_evict_another() {
    require_root().unwrap();
    let c = Cluster::new("capture-m4").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let b = c.add_pod(&n1, "b").unwrap();
    let other = c.add_pod(&n1, "c").unwrap();
    let mut yaml = config_yaml(
        &c,
        &n1,
        &[
            WorkloadSpec::new(&a),
            WorkloadSpec::new(&b),
            WorkloadSpec::new(&other),
        ],
        &[],
    );
    yaml.push_str("limits:\n  maxPendingConnectsPerPod: 64\n");
    let agent = Agent::start(&c, &n1, &yaml).unwrap();
    serve(&c, &b, 8080).unwrap();

    let mut sysctl = Command::new("sysctl");
    sysctl.args(["-qw", "net.ipv4.ip_local_port_range=60000 60000"]);
    let out = c.run_in_pod(&a, sysctl).unwrap();
    assert!(out.status.success(), "{out:?}");
    let noisy = churn(&c, &a, "noport", 5000, &b);
    let normal = churn(&c, &other, "greeted", 10_000, &b);
    let (noisy, normal) = (outcomes(&noisy), outcomes(&normal));
    assert_eq!(normal, serde_json::json!({"ok": 10_000}), "c: {normal}");
    assert_eq!(
        noisy,
        serde_json::json!({"EADDRNOTAVAIL": 5000}),
        "a's connects fail before their SYN, none over its quota"
    );
    let drained = || {
        ["MESHD_SOCK_DST", "MESHD_ORIG_DST", "MESHD_PENDING"]
            .iter()
            .all(|m| map_count(&agent, m) == 0)
    };
    assert!(
        meshd_tests::wait_until(Duration::from_secs(5), drained),
        "{}",
        agent.config_dump().unwrap()["capture"]["maps"]
    );

    let held = outcomes(&churn(&c, &a, "hold", 100, &b));
    assert_eq!(
        held,
        serde_json::json!({"EADDRNOTAVAIL": 64, "EPERM": 36}),
        "64 in flight, the rest refused"
    );
    echo_ok(&c, &other, &format!("{}:8080", b.ip), 1024);
    assert_eq!(
        metric(
            &agent,
            "capture_refused_total{namespace=\"default\",pod=\"a\",reason=\"pending_quota\"}"
        ),
        Some(36)
    );
    assert!(
        meshd_tests::wait_until(Duration::from_secs(5), drained),
        "a's sockets closed: {}",
        agent.config_dump().unwrap()["capture"]["maps"]
    );
    // Its quota is free again.
    let again = outcomes(&churn(&c, &a, "hold", 10, &b));
    assert_eq!(again, serde_json::json!({"EADDRNOTAVAIL": 10}));
    agent.stop().unwrap();
}
