//! Capture end to end, with real processes in a cluster of namespaces: outbound
//! (connect4 + sockops), inbound (sk_lookup), services, and what must never be captured.

use std::{collections::BTreeMap, process::Command, time::Duration};

use meshd_tests::{
    mesh::{config_yaml, serve, testapp_bin, testapp_json, Agent, ServiceSpec, WorkloadSpec},
    require_root, wait_until, Cluster,
};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

fn echo(cluster: &Cluster, pod: &meshd_tests::Pod, to: &str, bytes: u64) -> Value {
    let n = bytes.to_string();
    let r = testapp_json(
        cluster,
        pod,
        &["echo", "--greet", "--connect", to, "--bytes", &n],
    )
    .unwrap();
    assert_eq!(r["ok"], true, "echo from {} to {to}: {r}", pod.name);
    assert_eq!(r["bytes_received"].as_u64(), Some(bytes), "{r}");
    r
}

/// Waits until the agent reports exactly `n` closed connections matching the filter.
fn wait_closed(agent: &Agent, direction: &str, orig_dst: &str, n: usize) -> Vec<Value> {
    let mut last = Vec::new();
    wait_until(Duration::from_secs(5), || {
        last = agent.closed_to(direction, orig_dst).unwrap();
        last.len() >= n
    });
    assert_eq!(
        last.len(),
        n,
        "{direction} connections to {orig_dst}: {last:#?}"
    );
    last
}

#[test]
fn outbound_and_inbound_capture_carry_bytes_intact() {
    require_root().unwrap();
    let c = Cluster::new("capture-bytes").unwrap();
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
    serve(&c, &server, 8080).unwrap();
    serve(&c, &plain, 8080).unwrap();

    // Enrolled client -> non-enrolled server: outbound capture only. The server sees the
    // client pod's own address, because the agent connects from inside the client's netns.
    let plain_dst = format!("{}:8080", plain.ip);
    let r = echo(&c, &client, &plain_dst, 64 * MIB);
    let greeting = r["greeting"].as_str().unwrap();
    assert!(
        greeting.contains(&format!("peer={}:", client.ip)),
        "{greeting}"
    );
    let out = wait_closed(&agent, "outbound", &plain_dst, 1);
    assert_eq!(out[0]["workload"], "default/client");
    assert_eq!(out[0]["target"], plain_dst.as_str());
    assert_eq!(out[0]["bytes_sent"].as_u64(), Some(64 * MIB));
    assert!(out[0]["bytes_received"].as_u64().unwrap() >= 64 * MIB);
    assert_eq!(out[0]["error"], Value::Null);

    // Non-enrolled client -> enrolled server: inbound capture only; the agent saw the
    // client's address and the original destination, and delivered over loopback.
    let server_dst = format!("{}:8080", server.ip);
    let r = echo(&c, &plain, &server_dst, 16 * MIB);
    assert!(
        r["greeting"].as_str().unwrap().contains("peer=127.0.0.1:"),
        "{r}"
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
    assert_eq!(inb[0]["target"], "127.0.0.1:8080");
    assert_eq!(inb[0]["bytes_sent"].as_u64(), Some(16 * MIB));

    // Enrolled -> enrolled: both sides, exactly one record each (no loops).
    echo(&c, &client, &server_dst, 32 * MIB);
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
    assert_eq!(r["ok"], false, "{r}");
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

#[test]
fn services_spread_over_endpoints_across_nodes() {
    require_root().unwrap();
    let c = Cluster::new("capture-svc").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let n2 = c.add_node("n2").unwrap();
    let client = c.add_pod(&n1, "client").unwrap();
    let web1 = c.add_pod(&n1, "web1").unwrap();
    let web2 = c.add_pod(&n2, "web2").unwrap();
    let svc = ServiceSpec {
        name: "web".into(),
        vip: "10.96.0.10".into(),
        port: 80,
        target_port: 8080,
        selector: BTreeMap::from([("app".to_string(), "web".to_string())]),
        endpoints: vec![],
    };
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
        echo(&c, &client, "10.96.0.10:80", 1024);
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
    // gets no more traffic, and every request still succeeds.
    web2_log.kill().unwrap();
    for _ in 0..6 {
        echo(&c, &client, "10.96.0.10:80", 1024);
    }
    let recs = wait_closed(&agent, "outbound", "10.96.0.10:80", 12);
    assert_eq!(recs.iter().filter(to(web1.ip)).count(), 9, "{recs:#?}");
    let failures = agent
        .proc
        .stderr()
        .lines()
        .filter(|l| {
            l.contains("outbound connect failed") && l.contains(&format!("{}:8080", web2.ip))
        })
        .count();
    assert_eq!(failures, 1, "one attempt at the dead endpoint");

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
    let r = echo(&c, &client, &format!("{}:9090", other2.ip), 4096);
    assert!(
        r["local"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", client.ip)),
        "{r}"
    );
    // Excluded inbound port, from a non-enrolled pod: direct too.
    let r = echo(&c, &other, &format!("{}:9091", server.ip), 4096);
    assert!(
        r["greeting"]
            .as_str()
            .unwrap()
            .contains(&format!("peer={}:", other.ip)),
        "{r}"
    );
    // Loopback inside an enrolled pod.
    echo(&c, &client, "127.0.0.1:7070", 4096);
    // A captured connection, for contrast: the socket is connected to the agent.
    let r = echo(&c, &client, &format!("{}:8080", other2.ip), 4096);
    assert!(
        r["local"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{r}"
    );
    // Non-enrolled pods talking to each other.
    let r = echo(&c, &other, &format!("{}:8080", other2.ip), 4096);
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
    echo(&c, &client, &format!("{}:8080", server.ip), 4096);
    wait_closed(&agent, "inbound", &format!("{}:8080", server.ip), 1);
    let all = agent.connections().unwrap();
    assert_eq!(
        all.len(),
        3,
        "the contrast connection, and the last one once per side: {all:#?}"
    );
    agent.stop().unwrap();
}
