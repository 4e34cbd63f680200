//! Inbound: a connection to one of the pod's addresses, steered by sk_lookup to the inbound
//! listener in the pod's namespace. The original destination is the accepted socket's local
//! address; the agent delivers to the app over the pod's loopback, which sk_lookup skips.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use tokio::net::TcpStream;

use crate::{
    proxy::{
        connect::connect_in,
        context::{PodContext, ProxyContext},
        l7::http::HttpMeta,
        relay::reset,
        session::{self, Session},
    },
    telemetry::{Direction, PeerWorkload},
};

pub(crate) mod hbone;

/// The app's address for a connection to `dst`: the same port on the pod's loopback.
pub(crate) fn app_addr(dst: SocketAddr) -> SocketAddr {
    match dst {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, dst.port())),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, dst.port())),
    }
}

/// What is known about an inbound connection from `peer` to `dst` before it is served.
pub(crate) fn inbound_meta(ctx: &ProxyContext, pod: &PodContext, peer: SocketAddr) -> HttpMeta {
    let w = &pod.workload;
    HttpMeta {
        direction: Direction::Inbound,
        namespace: w.namespace.clone(),
        pod: w.name.clone(),
        deployment: w.deployment.clone(),
        peer: ctx
            .state
            .load()
            .workload_by_ip(&peer.ip())
            .map(|p| PeerWorkload::from(&**p)),
        service: None,
        tls: false,
        client_id: None,
        server_id: None,
    }
}

pub(crate) async fn handle(
    ctx: &Arc<ProxyContext>,
    pod: &PodContext,
    client: TcpStream,
    peer: SocketAddr,
) {
    let workload = pod.workload.key();
    let dst = match client.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(workload = %workload, %peer, error = %e, "inbound connection without a local address");
            return;
        }
    };
    let id = ctx
        .connections
        .open(Direction::Inbound, workload.clone(), peer, dst);
    let target = app_addr(dst);
    match connect_in(&pod.netns, target, ctx.connect_timeout).await {
        Ok(server) => {
            ctx.connections.routed(id, target, None);
            let meta = inbound_meta(ctx, pod, peer);
            let opaque = pod.workload.opaque_ports.contains(&dst.port());
            session::run(ctx, Session { id, meta, opaque }, client, server).await;
        }
        Err(e) => {
            tracing::info!(workload = %workload, %peer, %dst, error = %e, "inbound delivery failed");
            ctx.connections.close(id, 0, 0, Some(e.into()));
            reset(&client);
        }
    }
}
