//! Outbound: a connection the pod made, redirected by connect4/connect6 to the outbound
//! listener on its loopback. The original destination comes from the kernel's map; a
//! service address is balanced over its endpoints; a destination in the mesh is reached
//! over mutual TLS (HBONE), anything else by a plain connection from inside the pod's
//! namespace.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;

use crate::{
    capture::maps::std_ip,
    proxy::{
        connect::connect_in,
        context::{PodContext, ProxyContext},
        error::Error,
        hbone::pool::Tunnel,
        l7::http::HttpMeta,
        relay::reset,
        session::{self, Session},
    },
    state::{is_opaque, ServicePort, State},
    telemetry::{Direction, PeerWorkload},
};

/// The agent's side towards the destination.
enum Upstream {
    Plain(TcpStream),
    Hbone(Tunnel),
}

pub(crate) async fn handle(
    ctx: &Arc<ProxyContext>,
    pod: &PodContext,
    client: TcpStream,
    peer: SocketAddr,
) {
    let workload = pod.workload.key();
    let Some(dst) = original_destination(ctx, pod, peer).await else {
        tracing::warn!(workload = %workload, %peer, "outbound connection without a recorded original destination, closing");
        reset(&client);
        return;
    };
    let id = ctx
        .connections
        .open(Direction::Outbound, workload, peer, dst);
    let state = ctx.state.current();
    match state.service(&dst).cloned() {
        Some(svc) => to_service(ctx, pod, &state, id, client, &svc).await,
        None => match connect_upstream(ctx, pod, &state, id, dst).await {
            Ok(up) => {
                ctx.connections.routed(id, dst, None);
                run_session(ctx, pod, &state, id, client, up, dst, None).await;
            }
            Err(e) => {
                ctx.connections.close(id, 0, 0, Some(e));
                reset(&client);
            }
        },
    }
}

/// Balances over the service's live endpoints, trying another when one fails.
async fn to_service(
    ctx: &Arc<ProxyContext>,
    pod: &PodContext,
    state: &Arc<State>,
    id: u64,
    client: TcpStream,
    svc: &ServicePort,
) {
    let endpoints = ctx.balancers.get(state, svc);
    let mut tried = Vec::new();
    let mut last_error = None;
    loop {
        let Some(lease) = endpoints.pick(&tried) else {
            let service = svc.key();
            let error = match last_error {
                None if endpoints.len() == 0 => Error::NoEndpoints { service },
                None => Error::NoLiveEndpoint {
                    service,
                    endpoints: endpoints.len(),
                    down_for_secs: crate::proxy::balance::DOWN_FOR.as_secs(),
                },
                Some(last) => Error::EveryEndpointFailed {
                    service,
                    last: Box::new(last),
                },
            };
            tracing::warn!(workload = %pod.workload.key(), service = %svc.key(), "{error}");
            ctx.connections.close(id, 0, 0, Some(error));
            reset(&client);
            return;
        };
        let target = lease.addr();
        tried.push(target);
        match connect_upstream(ctx, pod, state, id, target).await {
            Ok(up) => {
                ctx.connections.routed(id, target, Some(svc.key()));
                run_session(ctx, pod, state, id, client, up, target, Some(svc.key())).await;
                drop(lease);
                return;
            }
            Err(e) => {
                lease.failed();
                last_error = Some(e);
            }
        }
    }
}

/// Connects to `target`: HBONE when it is a mesh workload and mutual TLS is on, else plain.
async fn connect_upstream(
    ctx: &ProxyContext,
    pod: &PodContext,
    state: &State,
    id: u64,
    target: SocketAddr,
) -> Result<Upstream, Error> {
    let workload = pod.workload.key();
    if let (Some(mesh), Some(local), Some(dst_workload)) =
        (&ctx.mesh, &pod.identity, state.workload_by_ip(&target.ip()))
    {
        let expected = mesh.identity_of(dst_workload);
        return match mesh
            .pool
            .tunnel(&pod.workload, &pod.netns, local, target, &expected)
            .await
        {
            Ok(tunnel) => {
                ctx.connections
                    .secured(id, Some(local.to_string()), Some(expected.to_string()));
                Ok(Upstream::Hbone(tunnel))
            }
            Err(e) => {
                if let Some(reason) = e.reject_reason() {
                    ctx.telemetry.metrics.reject("outbound", reason.as_str());
                    tracing::warn!(workload = %workload, %target, expected = %expected, %reason, error = %e, "HBONE: refused the server");
                } else {
                    tracing::info!(workload = %workload, %target, error = %e, "HBONE tunnel failed");
                }
                Err(e.into())
            }
        };
    }
    connect_in(&pod.netns, target, ctx.connect_timeout)
        .await
        .map(Upstream::Plain)
        .map_err(|e| {
            tracing::info!(workload = %workload, %target, error = %e, "outbound connect failed");
            e.into()
        })
}

/// Detection, HTTP or relay, and metrics, for a connection whose upstream is open.
#[allow(clippy::too_many_arguments)]
async fn run_session(
    ctx: &Arc<ProxyContext>,
    pod: &PodContext,
    state: &State,
    id: u64,
    client: TcpStream,
    up: Upstream,
    target: SocketAddr,
    service: Option<String>,
) {
    let dst = state.workload_by_ip(&target.ip());
    let opaque = is_opaque(dst.map(|w| &**w), target.port());
    let w = &pod.workload;
    let mut meta = HttpMeta {
        direction: Direction::Outbound,
        namespace: w.namespace.clone(),
        pod: w.name.clone(),
        deployment: w.deployment.clone(),
        peer: dst.map(|d| PeerWorkload::from(&**d)),
        service,
        tls: false,
        client_id: None,
        server_id: None,
    };
    match up {
        Upstream::Plain(server) => {
            session::run(ctx, Session { id, meta, opaque }, client, server).await
        }
        Upstream::Hbone(tunnel) => {
            let Tunnel {
                io,
                slot,
                server_id,
            } = tunnel;
            meta.tls = true;
            meta.client_id = pod.identity.as_ref().map(ToString::to_string);
            meta.server_id = Some(server_id);
            session::run(ctx, Session { id, meta, opaque }, client, io).await;
            drop(slot);
        }
    }
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
