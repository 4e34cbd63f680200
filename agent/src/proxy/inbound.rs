//! Inbound: a connection to one of the pod's addresses, steered by sk_lookup to the inbound
//! listener in the pod's namespace. The original destination is the accepted socket's local
//! address; the agent delivers to the app over the pod's loopback, which sk_lookup skips.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpStream;

use super::{
    connect::connect_in,
    copy::{relay, reset},
    Direction, PodContext, ProxyContext,
};

pub async fn handle(ctx: &ProxyContext, pod: &PodContext, client: TcpStream, peer: SocketAddr) {
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
    let target = match dst {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, dst.port())),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, dst.port())),
    };
    match connect_in(&pod.netns, target, ctx.connect_timeout).await {
        Ok(server) => {
            ctx.connections.routed(id, target, None);
            relay(ctx, id, client, server).await;
        }
        Err(e) => {
            tracing::info!(workload = %workload, %peer, %dst, error = %e, "inbound delivery failed");
            reset(&client);
            ctx.connections.close(id, 0, 0, Some(e.to_string()));
        }
    }
}
