//! Inbound: a connection to one of the pod's addresses, steered by sk_lookup to the inbound
//! listener in the pod's namespace. The original destination is the accepted socket's local
//! address; the agent delivers to the app over the pod's loopback, which sk_lookup skips.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use tokio::net::TcpStream;

use crate::{
    conn::{ConnContext, Direction},
    proxy::{
        connect::connect_in,
        context::{PodContext, ProxyContext},
        relay::reset,
        session::{self, Session},
    },
};

pub(crate) mod hbone;

/// The app's address for a connection to `dst`: the same port on the pod's loopback.
pub(crate) fn app_addr(dst: SocketAddr) -> SocketAddr {
    match dst {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, dst.port())),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, dst.port())),
    }
}

/// The context of an inbound connection from `peer` to `dst`, as it is accepted: with the
/// client's workload when the mesh knows its address.
pub(crate) fn inbound_context(
    ctx: &ProxyContext,
    pod: &PodContext,
    peer: SocketAddr,
    dst: SocketAddr,
) -> ConnContext {
    let client = ctx.state.load().workload_by_ip(&peer.ip()).cloned();
    ConnContext::new(Direction::Inbound, pod.workload.clone(), peer, dst).with_peer_workload(client)
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
    let guard = ctx.connections.open(inbound_context(ctx, pod, peer, dst));
    let target = app_addr(dst);
    match connect_in(&pod.netns, target, ctx.connect_timeout).await {
        Ok(server) => {
            guard.context().route(target, None);
            let opaque = pod.workload.opaque_ports.contains(&dst.port());
            session::run(ctx, Session { guard, opaque }, client, server).await;
        }
        Err(e) => {
            tracing::info!(workload = %workload, %peer, %dst, error = %e, "inbound delivery failed");
            guard.close(0, 0, Some(e.into()));
            reset(&client);
        }
    }
}
