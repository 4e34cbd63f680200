//! Outbound: a connection the pod made, redirected by connect4/connect6 to the outbound
//! listener on its loopback. The original destination comes from the kernel's map; the
//! agent resolves services to endpoints and connects from inside the pod's namespace.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::{
    connect::connect_in,
    copy::{relay, reset},
    Direction, PodContext, ProxyContext,
};
use crate::capture::maps::std_ip;

pub async fn handle(ctx: &ProxyContext, pod: &PodContext, client: TcpStream, peer: SocketAddr) {
    let workload = pod.workload.key();
    let Some(dst) = original_destination(ctx, pod, peer).await else {
        tracing::warn!(workload = %workload, %peer, "outbound connection without a recorded original destination, closing");
        reset(&client);
        return;
    };
    let id = ctx
        .connections
        .open(Direction::Outbound, workload.clone(), peer, dst);
    let state = ctx.state.load();
    let (targets, service): (Vec<SocketAddr>, Option<String>) = match state.service(&dst) {
        Some(svc) => (
            svc.endpoints_to_try().collect(),
            Some(format!("{}/{}", svc.namespace, svc.name)),
        ),
        None => (vec![dst], None),
    };
    if targets.is_empty() {
        let msg = format!(
            "service {} has no endpoints",
            service.as_deref().unwrap_or("?")
        );
        tracing::warn!(workload = %workload, %dst, "{msg}");
        ctx.connections.close(id, 0, 0, Some(msg));
        reset(&client);
        return;
    }
    let mut last_error = None;
    for target in targets {
        // A destination in the mesh gets mutual TLS (HBONE); anything else pass-through.
        let peer_workload = state.workload_by_ip(&target.ip());
        if let (Some(mesh), Some(local), Some(dst_workload)) =
            (&ctx.mesh, &pod.identity, peer_workload)
        {
            let expected = mesh.identity_of(dst_workload);
            match mesh.pool.tunnel(pod, local, target, &expected).await {
                Ok(tunnel) => {
                    ctx.connections.routed(id, target, service);
                    ctx.connections.secured(
                        id,
                        Some(local.to_string()),
                        Some(expected.to_string()),
                    );
                    let _slot = tunnel._slot;
                    relay(ctx, id, client, tunnel.io).await;
                    return;
                }
                Err(e) => {
                    if let Some(reason) = e.reject_reason() {
                        ctx.metrics.reject("outbound", reason);
                        tracing::warn!(workload = %workload, %dst, %target, expected = %expected, reason, error = %e, "HBONE: refused the server");
                    } else {
                        tracing::info!(workload = %workload, %dst, %target, error = %e, "HBONE tunnel failed");
                    }
                    last_error = Some(e.to_string());
                }
            }
            continue;
        }
        match connect_in(&pod.netns, target, ctx.connect_timeout).await {
            Ok(server) => {
                ctx.connections.routed(id, target, service);
                relay(ctx, id, client, server).await;
                return;
            }
            Err(e) => {
                tracing::info!(workload = %workload, %dst, %target, error = %e, "outbound connect failed");
                last_error = Some(e.to_string());
            }
        }
    }
    ctx.connections.close(id, 0, 0, last_error);
    reset(&client);
}

/// The recorded original destination. sock_ops records it before the handshake completes,
/// so it is there on accept; the short retry only covers a scheduling hiccup.
async fn original_destination(
    ctx: &ProxyContext,
    pod: &PodContext,
    peer: SocketAddr,
) -> Option<SocketAddr> {
    let v6 = match peer {
        SocketAddr::V4(_) => false,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_none(),
    };
    for _ in 0..3 {
        if let Some(d) = ctx.maps.take_orig_dst(pod.netns.cookie(), peer.port(), v6) {
            return Some(SocketAddr::new(std_ip(&d.ip), d.port));
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    None
}
