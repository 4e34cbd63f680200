//! The identity lifecycle as an operator and a peer see it (review L6, L8, H3): a peer of
//! another trust domain under the same anchors is refused, the issuer's and anchors'
//! remaining validity is in the metrics, a workload that leaves has its certificate
//! forgotten, and `meshd check --config` (and the agent's log) warn about a trust anchor key
//! beside the issuer files.

use std::{path::Path, process::Command, time::Duration};

use meshd_tests::{
    mesh::{config_yaml, identity_init, meshd_bin, serve, with_identity, Agent, WorkloadSpec},
    metrics::{metrics, rejected},
    require_root,
    traffic::last_json_line,
    two_nodes::{spiffe, two_nodes, TwoNodes},
    wait_until, Cluster,
};

/// `meshd diagnostics hbone` from node 2's namespace to `b:8080` through b's agent, as
/// `identity`, with certificates from the test's own issuer.
fn probe(t: &TwoNodes, identity: &str) -> serde_json::Value {
    let mut cmd = Command::new(meshd_bin());
    cmd.args(["diagnostics", "hbone", "--trust-anchors"])
        .arg(t.ca.join("ca.crt"))
        .arg("--issuer-cert")
        .arg(t.ca.join("issuer.crt"))
        .arg("--issuer-key")
        .arg(t.ca.join("issuer.key"))
        .args(["--identity", identity, "--expect-server", &spiffe("b")])
        .args(["--connect", &format!("{}:15008", t.b.ip)])
        .args(["--authority", &format!("{}:8080", t.b.ip), "--send", "ping"]);
    let out = t.c.run_in_node(&t.n2, cmd).unwrap();
    last_json_line("diagnostics", &out)
}

/// Review case C48: the same issuer signs a certificate for `spiffe://other.td/...` (one
/// issuer, or anchors shared by two meshes); b's agent refuses it in the handshake and says
/// why in one log line; the same probe in this trust domain reaches the app.
#[test]
fn a_peer_from_another_trust_domain_is_refused() {
    require_root().unwrap();
    let (t, agent1, agent2) = two_nodes("idtd", &[]);
    serve(&t.c, &t.b, 8080).unwrap();

    let ok = probe(&t, &spiffe("probe"));
    assert_eq!(ok["ok"], true, "{ok}");
    assert!(
        ok["reply"].as_str().unwrap().starts_with("hello peer="),
        "{ok}"
    );

    let r = probe(&t, "spiffe://other.td/ns/default/sa/probe");
    assert_eq!(r["ok"], false, "{r}");
    let line = "client identity spiffe://other.td/ns/default/sa/probe is not in this mesh's trust domain cluster.local";
    assert!(
        wait_until(Duration::from_secs(5), || agent2.proc.stderr().lines().any(
            |l| l.contains("HBONE: rejected TLS handshake") && l.contains(line)
        )),
        "{}",
        agent2.proc.stderr()
    );
    assert!(!agent2.proc.stderr().contains("client=spiffe://other.td"));
    assert_eq!(rejected(&agent2, "inbound", "foreign_trust_domain"), 1);
    assert_eq!(rejected(&agent2, "inbound", "handshake"), 0);
    assert!(agent1.stop().unwrap().success());
    assert!(agent2.stop().unwrap().success());
}

/// The value of the sample of a metrics text whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

const DAY: f64 = 86_400.0;

/// Review cases H104 (the metric half) and H108: the issuer's and the anchor's remaining
/// seconds are in `/metrics`; a workload removed from the config has its certificate
/// forgotten (gone from `/config_dump` and the expiry metric, no more renewals) while the
/// other one is still renewed; the anchor key beside the issuer files is warned about at
/// start.
#[test]
fn expiry_is_visible_and_a_workload_that_leaves_is_forgotten() {
    require_root().unwrap();
    let c = Cluster::new("idlife").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let a = c.add_pod(&n1, "a").unwrap();
    let gone = c.add_pod(&n1, "gone").unwrap();
    let ca = identity_init(&c, "ca").unwrap();
    let with = |w: &[WorkloadSpec]| {
        with_identity(&config_yaml(&c, &n1, w, &[]), &ca.join("ca.crt"), &ca, 10)
    };
    let agent = Agent::start(
        &c,
        &n1,
        &with(&[WorkloadSpec::new(&a), WorkloadSpec::new(&gone)]),
    )
    .unwrap();
    let log = agent.proc.stderr();
    assert!(
        log.lines().any(|l| l
            .contains("a trust anchor's private key sits beside the issuer files")
            && l.contains(&ca.join("ca.key").display().to_string())),
        "{log}"
    );

    let text = metrics(&agent);
    let issuer = sample(&text, "identity_issuer_expiry_seconds ").expect("issuer metric");
    assert!((364.0 * DAY..=366.0 * DAY).contains(&issuer), "{issuer}");
    let anchor = sample(
        &text,
        "identity_trust_anchor_expiry_seconds{subject=\"CN=root.cluster.local\"} ",
    )
    .expect("anchor metric");
    assert!((3648.0 * DAY..=3653.0 * DAY).contains(&anchor), "{anchor}");
    let series = |text: &str, sa: &str| {
        text.lines().any(|l| {
            l.starts_with("identity_cert_expiration_timestamp_seconds{")
                && l.contains(&format!("\"{}\"", spiffe(sa)))
        })
    };
    assert!(series(&text, "a") && series(&text, "gone"), "{text}");

    agent.write_config(&with(&[WorkloadSpec::new(&a)])).unwrap();
    let certificates = || {
        agent.config_dump().unwrap()["identity"]["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["identity"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(10), || certificates() == [spiffe("a")]),
        "{:?}",
        certificates()
    );
    let log = agent.proc.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("its certificate is forgotten") && l.contains(&spiffe("gone"))),
        "{log}"
    );
    let text = metrics(&agent);
    assert!(series(&text, "a") && !series(&text, "gone"), "{text}");
    // Certificates live 10 s (renewed every 5 s): over 12 s, `a` is renewed, `gone` never.
    let renewed = |sa: &str| {
        agent
            .proc
            .stderr()
            .lines()
            .filter(|l| l.contains("renewed workload certificate") && l.contains(&spiffe(sa)))
            .count()
    };
    let (a_before, gone_before) = (renewed("a"), renewed("gone"));
    std::thread::sleep(Duration::from_secs(12));
    assert!(renewed("a") > a_before, "a was not renewed");
    assert_eq!(
        renewed("gone"),
        gone_before,
        "a forgotten certificate was renewed"
    );
    assert!(agent.stop().unwrap().success());
}

fn check(config: &Path) -> (bool, String) {
    let out = Command::new(meshd_bin())
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// H3: `meshd check --config` warns (`!`, the checks still pass) when the trust anchor's
/// private key sits beside the issuer files, under any name, and not once it is gone.
#[test]
fn check_warns_about_the_anchor_key_beside_the_issuer() {
    require_root().unwrap();
    let c = Cluster::new("idcheck").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let ca = identity_init(&c, "ca").unwrap();
    let path = c.dir().join("check.yaml");
    std::fs::write(
        &path,
        with_identity(
            &config_yaml(&c, &n1, &[], &[]),
            &ca.join("ca.crt"),
            &ca,
            3600,
        ),
    )
    .unwrap();
    let warning = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("! trust anchor key: "))
            .map(str::to_string)
    };
    let (ok, text) = check(&path);
    assert!(ok, "{text}");
    let line = warning(&text).unwrap_or_else(|| panic!("no warning:\n{text}"));
    assert!(
        line.contains(&format!(
            "{} is the private key of trust anchor CN=root.cluster.local",
            ca.join("ca.key").display()
        )),
        "{line}"
    );
    assert!(text.contains("Status check results are √"), "{text}");

    std::fs::rename(ca.join("ca.key"), ca.join("backup")).unwrap();
    let (ok, text) = check(&path);
    assert!(ok, "{text}");
    let line = warning(&text).unwrap_or_else(|| panic!("no warning:\n{text}"));
    assert!(
        line.contains(&ca.join("backup").display().to_string()),
        "{line}"
    );

    std::fs::remove_file(ca.join("backup")).unwrap();
    let (ok, text) = check(&path);
    assert!(ok, "{text}");
    assert_eq!(warning(&text), None, "{text}");
}
