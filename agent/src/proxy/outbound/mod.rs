//! Outbound: a connection the pod made, redirected by connect4/connect6 to the outbound
//! listener on its loopback. The original destination comes from the kernel's map; a
//! service address is balanced over its endpoints; a destination in the mesh is reached
//! over mutual TLS (HBONE), anything else by a plain connection from inside the pod's
//! namespace. The decision is [`route`]'s (pure, unit-tested); this module does the I/O.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;

use crate::{
    capture::maps::std_ip,
    conn::{ConnContext, Direction, Tls},
    proxy::{
        connect::connect_in,
        connections::ConnGuard,
        context::{PodContext, ProxyContext},
        error::Error,
        hbone::pool::Tunnel,
        limits::{self, Slot},
        relay::reset,
        session::{self, Session},
    },
    state::{ServicePort, State},
};

mod route;

use route::{Destination, Dial, Plan};

/// The agent's side towards the destination: a plain connection holds a socket of the
/// node's budget (an HBONE tunnel shares the pool's connection).
enum Upstream {
    Plain(TcpStream, Slot),
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
    let conn = ConnContext::new(Direction::Outbound, pod.workload.clone(), peer, dst);
    let guard = ctx.connections.open(conn);
    let state = ctx.state.current();
    match route::destination(&state, dst) {
        Destination::Service(svc) => to_service(ctx, pod, &state, guard, client, svc).await,
        Destination::Address(dst) => {
            match Box::pin(connect_upstream(ctx, pod, &state, dst)).await {
                Ok((up, plan)) => run_session(ctx, pod, guard, client, up, plan, dst, None).await,
                Err(e) => {
                    guard.close(0, 0, Some(e));
                    reset(&client);
                }
            }
        }
    }
}

/// Balances over the service's live endpoints, trying another when one fails.
async fn to_service(
    ctx: &Arc<ProxyContext>,
    pod: &PodContext,
    state: &Arc<State>,
    guard: ConnGuard,
    client: TcpStream,
    svc: Arc<ServicePort>,
) {
    let endpoints = ctx.balancers.get(state, &svc);
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
            guard.close(0, 0, Some(error));
            reset(&client);
            return;
        };
        let target = lease.addr();
        tried.push(target);
        // Boxed (the dial and the TLS handshake are large futures): a connection task keeps
        // only what the relay needs for the connection's life.
        match Box::pin(connect_upstream(ctx, pod, state, target)).await {
            Ok((up, plan)) => {
                run_session(ctx, pod, guard, client, up, plan, target, Some(svc)).await;
                drop(lease);
                return;
            }
            // A full budget says nothing of the endpoint: refused, not tried further.
            Err(e @ Error::Budget(_)) => {
                guard.close(0, 0, Some(e));
                reset(&client);
                return;
            }
            Err(e) => {
                lease.failed();
                last_error = Some(e);
            }
        }
    }
}

/// Connects to `target` as [`route::plan`] says: HBONE when it is a mesh workload and
/// mutual TLS is on, else plain.
async fn connect_upstream(
    ctx: &ProxyContext,
    pod: &PodContext,
    state: &State,
    target: SocketAddr,
) -> Result<(Upstream, Plan), Error> {
    let workload = pod.workload.key();
    let mesh = ctx.mesh.as_ref().zip(pod.identity.as_ref());
    let plan = route::plan(state, mesh.map(|(m, _)| m.trust_domain.as_str()), target);
    if let (Dial::Hbone { expected }, Some((mesh, local))) = (&plan.dial, mesh) {
        return match mesh
            .pool
            .tunnel(&pod.workload, &pod.netns, local, target, expected)
            .await
        {
            Ok(tunnel) => Ok((Upstream::Hbone(tunnel), plan)),
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
    let socket = ctx.budgets.socket().map_err(|why| {
        limits::report(
            &ctx.telemetry.metrics,
            &pod.workload,
            &pod.budgets,
            Direction::Outbound,
            why,
            target,
        );
        Error::from(why)
    })?;
    connect_in(&pod.netns, target, ctx.connect_timeout)
        .await
        .map(|tcp| (Upstream::Plain(tcp, socket), plan))
        .map_err(|e| {
            tracing::info!(workload = %workload, %target, error = %e, "outbound connect failed");
            e.into()
        })
}

/// Detection, HTTP or relay, and metrics, for a connection whose upstream is open: the
/// connection's context learns where it was routed, and with whom.
#[allow(clippy::too_many_arguments)]
async fn run_session(
    ctx: &Arc<ProxyContext>,
    pod: &PodContext,
    guard: ConnGuard,
    client: TcpStream,
    up: Upstream,
    plan: Plan,
    target: SocketAddr,
    service: Option<Arc<ServicePort>>,
) {
    let conn = guard.context();
    conn.route(target, service);
    if let Some(dst) = plan.peer {
        conn.set_peer_workload(dst);
    }
    let opaque = plan.opaque;
    match up {
        Upstream::Plain(server, socket) => {
            session::run(
                ctx,
                Session {
                    guard,
                    opaque,
                    authz: None,
                },
                client,
                server,
            )
            .await;
            drop(socket);
        }
        Upstream::Hbone(tunnel) => {
            let Tunnel {
                io,
                slot,
                server_id,
            } = tunnel;
            conn.secure(Tls {
                client: pod.identity.clone(),
                server: server_id,
            });
            session::run(
                ctx,
                Session {
                    guard,
                    opaque,
                    authz: None,
                },
                client,
                io,
            )
            .await;
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
