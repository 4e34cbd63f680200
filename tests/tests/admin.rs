//! The admin API's own protections, as a client on the node sees them (review L4, L5:
//! cases G99, G100, G102, G103 and the header-read timeout): a `Host` that is not the admin
//! address is refused (DNS rebinding), a large body is refused before it is read, taps are
//! limited, a slow request head is cut off, a malformed escape does not break anything, and
//! an admin address beyond loopback needs `adminAllowNonLoopback`.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use meshd_tests::{
    mesh::{config_yaml, meshd_bin, Agent},
    require_root, wait_until, Cluster, Node,
};

/// A connection to `addr` from inside the node's namespace.
fn connect(c: &Cluster, node: &Node, addr: &str) -> TcpStream {
    let s = c
        .in_netns(&node.netns_path, || TcpStream::connect(addr))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Sends `raw` and reads until the server closes; the response as text.
fn request(c: &Cluster, node: &Node, addr: &str, raw: &[u8]) -> String {
    let mut s = connect(c, node, addr);
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    // A server that answers before reading the whole body may reset the connection.
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn get(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Opens a tap; returns the connection once the response head and the first line came,
/// or the response when it is not a 200.
fn open_tap(c: &Cluster, node: &Node) -> Result<TcpStream, String> {
    let mut s = connect(c, node, ADMIN);
    s.write_all(&get("127.0.0.1:15000", "/tap")).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains("{\"tap\":\"started\"}") {
            return Ok(s);
        }
        if n == 0 || !text.starts_with("HTTP/1.1 200") && text.contains("\r\n\r\n") {
            return Err(text);
        }
    }
}

const ADMIN: &str = "127.0.0.1:15000";

/// One agent: foreign `Host` 403 (and no change made), loopback names and addresses 200; a
/// 1 MiB `PUT /log-level` 413 whether announced or chunked (the level unchanged); a query
/// with a malformed escape before non-ASCII bytes answered, the agent alive; the 17th
/// open tap 429, and a place freed as soon as a tap's client leaves; a request head
/// trickled byte by byte cut off at the 10 s header-read timeout.
#[test]
fn the_admin_api_refuses_what_it_must_not_serve() {
    require_root().unwrap();
    let c = Cluster::new("admin").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let agent = Agent::start(&c, &n1, &config_yaml(&c, &n1, &[], &[])).unwrap();
    let level = || agent.get("/log-level").unwrap().1;
    let before = level();

    // DNS rebinding: a page on the node reaches the API through a name the attacker controls.
    let r = request(&c, &n1, ADMIN, &get("attacker.example", "/connections"));
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(
        r.contains("Host \"attacker.example\" is not allowed") && r.contains("DNS rebinding"),
        "{r}"
    );
    let r = request(
        &c,
        &n1,
        ADMIN,
        b"PUT /log-level HTTP/1.1\r\nHost: attacker.example:15000\r\nContent-Length: 5\r\nConnection: close\r\n\r\ntrace",
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert_eq!(level(), before, "a refused PUT changed the log level");
    for host in [
        "localhost:15000",
        "127.0.0.1:15000",
        "127.0.0.1",
        "[::1]:15000",
    ] {
        let r = request(&c, &n1, ADMIN, &get(host, "/live"));
        assert!(r.starts_with("HTTP/1.1 200"), "{host}: {r}");
    }

    // A 1 MiB body: refused at the limit, announced or chunked.
    let r = request(
        &c,
        &n1,
        ADMIN,
        format!(
            "PUT /log-level HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\ntrace",
            1 << 20
        )
        .as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert!(r.contains("request body over 16384 bytes"), "{r}");
    let mut chunked =
        b"PUT /log-level HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        chunked.extend_from_slice(&[b'x'; 8192]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = request(&c, &n1, ADMIN, &chunked);
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert_eq!(level(), before, "a refused body changed the log level");

    // Review case G99: `%a` then raw UTF-8 in the query.
    let r = request(
        &c,
        &n1,
        ADMIN,
        b"GET /stat?window=%a\xc3\xa9 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert!(
        r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.1 400"),
        "{r}"
    );
    assert_eq!(agent.get("/live").unwrap().0, 200);

    // At most 16 taps at once; a tap whose client left frees its place.
    let mut taps: Vec<TcpStream> = (0..16)
        .map(|i| open_tap(&c, &n1).unwrap_or_else(|r| panic!("tap {i}: {r}")))
        .collect();
    let r = open_tap(&c, &n1).expect_err("a 17th tap");
    assert!(r.starts_with("HTTP/1.1 429"), "{r}");
    assert!(r.contains("16 taps are open already"), "{r}");
    drop(taps.pop());
    assert!(
        wait_until(Duration::from_secs(5), || open_tap(&c, &n1)
            .map(|s| taps.push(s))
            .is_ok()),
        "no place after a tap's client left"
    );
    drop(taps);

    // A request head trickled a byte a second (slowloris): cut off at 10 s.
    let mut s = connect(&c, &n1, ADMIN);
    s.set_read_timeout(Some(Duration::from_millis(900)))
        .unwrap();
    let start = Instant::now();
    s.write_all(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    let closed_after = loop {
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => break start.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break start.elapsed(),
        }
        if s.write_all(b"a").is_err() {
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never cut off");
    };
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(15)).contains(&closed_after),
        "cut off after {closed_after:?}"
    );
    assert_eq!(agent.get("/live").unwrap().0, 200);
    assert!(
        !agent.proc.stderr().contains("panicked"),
        "{}",
        agent.proc.stderr()
    );
    assert!(agent.stop().unwrap().success());
}

/// Review case G102: `admin: 0.0.0.0:15000` is refused at start, naming the setting that
/// allows it, and nothing listens; with `adminAllowNonLoopback: true` the agent starts,
/// warns, answers on the node's address (`Host` that address) and refuses a name.
#[test]
fn a_non_loopback_admin_address_needs_the_explicit_setting() {
    require_root().unwrap();
    let c = Cluster::new("adminaddr").unwrap();
    let n1 = c.add_node("n1").unwrap();
    let yaml =
        config_yaml(&c, &n1, &[], &[]).replace("admin: 127.0.0.1:15000", "admin: 0.0.0.0:15000");
    let path = c.dir().join("everywhere.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let mut cmd = Command::new(meshd_bin());
    cmd.args(["run", "--config"]).arg(&path);
    let out = c.run_in_node(&n1, cmd).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("admin: 0.0.0.0:15000 is not a loopback address")
            && err.contains("adminAllowNonLoopback: true"),
        "{err}"
    );
    let listening = c
        .in_netns(&n1.netns_path, || TcpStream::connect(ADMIN))
        .unwrap();
    assert!(listening.is_err(), "something listens on {ADMIN}");

    let agent = Agent::start(&c, &n1, &format!("{yaml}adminAllowNonLoopback: true\n")).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .proc
            .stderr()
            .contains("the admin API listens beyond loopback")),
        "{}",
        agent.proc.stderr()
    );
    let node_admin = format!("{}:15000", n1.ip);
    let r = request(&c, &n1, &node_admin, &get(&node_admin, "/live"));
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = request(&c, &n1, &node_admin, &get("node.example:15000", "/live"));
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(agent.stop().unwrap().success());
}
