//! A second source plugs in: a workload and a service published into the state store by a
//! test source (not the file) are what the outbound proxy serves, through its real
//! connection handling (original destination, service lookup, balancer, plain connect).

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{outbound, PodContext, ProxyContext};
use crate::{
    conn::Direction,
    netns::Netns,
    state::{ServicePort, SourceHandle, State, StateStore, Workload},
};

fn workload(name: &str, ip: &str) -> Workload {
    Workload {
        name: name.into(),
        namespace: "default".into(),
        service_account: name.into(),
        node: "n1".into(),
        deployment: name.into(),
        labels: Default::default(),
        ips: vec![ip.parse().expect("ip")],
        opaque_ports: Default::default(),
        local: None,
    }
}

/// What a source other than the file would publish: a server workload behind a service.
fn publish(source: &SourceHandle, server: SocketAddr) {
    let svc = ServicePort {
        name: "server".into(),
        namespace: "default".into(),
        vip: "10.96.0.10".parse().expect("vip"),
        port: 80,
        endpoints: vec![server],
    };
    let server = workload("server", &server.ip().to_string());
    source.publish(State::new("n1", [server], [svc]));
}

/// An echo app that answers each connection's bytes.
async fn echo(listener: TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

#[tokio::test]
async fn the_proxy_serves_a_service_published_by_another_source() {
    let store = StateStore::new();
    let ctx = ProxyContext::for_tests(store.clone());
    let follower = tokio::spawn(ctx.balancers.clone().follow(store.subscribe()));
    let app = TcpListener::bind("127.0.0.1:0").await.expect("app");
    let server = app.local_addr().expect("app address");
    let app = tokio::spawn(echo(app));
    publish(&store.source("test", "memory".into()), server);

    // The pod's side: the outbound listener, and its client, in this namespace.
    let pod = PodContext {
        workload: Arc::new(workload("client", "10.0.0.1")),
        netns: Arc::new(Netns::open(Path::new("/proc/self/ns/net")).expect("netns")),
        identity: None,
        budgets: ctx.budgets.pod(),
        delivery_mark: None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("listener");
    let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (accepted, peer) = listener.accept().await.expect("accept");
    let vip: SocketAddr = "10.96.0.10:80".parse().expect("vip");
    ctx.maps
        .record_orig_dst(pod.netns.cookie(), peer.port(), vip)
        .expect("orig dst");
    let proxy = {
        let ctx = ctx.clone();
        tokio::spawn(async move { outbound::handle(&ctx, &pod, accepted, peer).await })
    };

    client.write_all(b"through the store").await.expect("write");
    client.shutdown().await.expect("shutdown");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    assert_eq!(answer, b"through the store");
    tokio::time::timeout(Duration::from_secs(10), proxy)
        .await
        .expect("the proxy finishes")
        .expect("join");

    let records = ctx.connections.snapshot();
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r.conn.direction, Direction::Outbound);
    assert_eq!(r.conn.orig_dst, vip);
    assert_eq!(r.conn.target(), Some(server));
    assert_eq!(
        r.conn.service().map(|s| s.key()).as_deref(),
        Some("default/server")
    );
    assert!(r.closed());
    follower.abort();
    app.abort();
}
