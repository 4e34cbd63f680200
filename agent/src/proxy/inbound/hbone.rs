//! Inbound HBONE: the mutual-TLS listener on port 15008 in each enrolled pod's namespace.
//! It verifies the client's certificate chain to the trust anchors, learns the client's
//! identity, accepts CONNECT only to this pod's own addresses (no open relay), and delivers
//! each tunnel to that address and port from inside the pod's namespace (never to loopback:
//! a refused dial is answered `503`). When the agent drains, the client is
//! sent a GOAWAY and the tunnels open go on (see [`crate::drain`]).

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use h2::{server::SendResponse, RecvStream};
use hyper::{Method, Request, Response, StatusCode};
use tokio::{
    net::TcpStream,
    time::{timeout_at, Instant},
};

use super::{check_authority, inbound_context};
use crate::{
    conn::{Direction, Tls},
    drain::{DrainWatcher, Draining},
    proxy::{
        authorize::InboundAuthz,
        connect::{deliver_in, DeliverFrom},
        context::{PodContext, ProxyContext},
        error::{Error, Refusal},
        hbone::{
            self,
            server::{self, Ended, ServeError},
            tunnel::TunnelStream,
        },
        limits::{self, HandshakeSlot},
        session::{self, Session},
        tls::{
            self,
            errors::{self as tls_errors, RejectReason},
        },
    },
};

fn response(status: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = status;
    r
}

/// Answers a CONNECT that is refused: the status, and the stream ends.
fn refuse(mut respond: SendResponse<Bytes>, status: StatusCode) {
    let _ = respond.send_response(response(status), true);
}

/// Serves one accepted TCP connection on the HBONE port; its tunnels are spawned through
/// `tunnels`, and `draining` starts a graceful shutdown of the HTTP/2 connection.
/// `handshake` (its place in the handshake budgets) is given back once the TLS and HTTP/2
/// handshakes are done, which must be within the handshake timeout.
pub(crate) async fn handle(
    ctx: Arc<ProxyContext>,
    pod: Arc<PodContext>,
    tcp: TcpStream,
    peer: SocketAddr,
    tunnels: DrainWatcher,
    draining: Draining,
    handshake: HandshakeSlot,
) {
    let deadline = Instant::now() + ctx.handshake_timeout;
    let workload = pod.workload.key();
    let Some(mesh) = ctx.mesh.as_ref() else {
        return;
    };
    let Some(local) = pod.identity.clone() else {
        return;
    };
    let config = match crate::identity::server_config(mesh.certs.clone(), local.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(workload = %workload, error = %e, "no TLS server configuration");
            return;
        }
    };
    let tls = match timeout_at(deadline, tls::accept(config, tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = tls_errors::reason(&e);
            ctx.telemetry.metrics.reject("inbound", reason.as_str());
            tracing::warn!(workload = %workload, %peer, %reason, error = %e, "HBONE: rejected TLS handshake");
            return;
        }
        Err(_) => {
            ctx.telemetry
                .metrics
                .reject("inbound", RejectReason::Handshake.as_str());
            tracing::warn!(workload = %workload, %peer, "HBONE: TLS handshake timed out");
            return;
        }
    };
    let Some(client_id) = tls.peer_identity().cloned() else {
        ctx.telemetry
            .metrics
            .reject("inbound", RejectReason::NoClientCert.as_str());
        tracing::warn!(workload = %workload, %peer, "HBONE: client certificate has no SPIFFE identity");
        return;
    };
    let who = format!("{workload} from {peer} ({client_id})");
    let tls_of_tunnels = Tls {
        client: Some(client_id.clone()),
        server: local,
    };
    let served = server::serve(
        tls,
        deadline,
        handshake,
        draining,
        &who,
        |req, respond, place| {
            let slot = match ctx.budgets.connection(&pod.budgets, Direction::Inbound) {
                Ok(slot) => slot,
                Err(why) => {
                    let mut respond = respond;
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    limits::report(
                        &ctx.telemetry.metrics,
                        &pod.workload,
                        &pod.budgets,
                        Direction::Inbound,
                        why,
                        peer,
                    );
                    return;
                }
            };
            let (ctx, pod, tls) = (ctx.clone(), pod.clone(), tls_of_tunnels.clone());
            tunnels.spawn(async move {
                connect(ctx, pod, peer, tls, req, respond).await;
                drop((place, slot));
            });
        },
    )
    .await;
    match served {
        Ok(Ended::Closed) => {}
        Ok(Ended::Error(e)) => {
            tracing::debug!(workload = %workload, %peer, client = %client_id, error = %e, "HBONE connection ended")
        }
        Ok(Ended::Keepalive(e)) => {
            tracing::info!(workload = %workload, %peer, client = %client_id, error = %e, "HBONE connection dropped by keep-alive")
        }
        Err(e @ ServeError::HandshakeTimeout) => {
            ctx.telemetry
                .metrics
                .reject("inbound", RejectReason::Handshake.as_str());
            tracing::warn!(workload = %workload, %peer, client = %client_id, "HBONE: {e}");
        }
        Err(e @ ServeError::Handshake(_)) => {
            tracing::debug!(workload = %workload, %peer, client = %client_id, error = %e, "HBONE: no HTTP/2 connection");
        }
    }
}

/// One CONNECT: check the target, reach the app, answer 200 and relay the tunnel. `tls`
/// is the mutual TLS of the connection it came on.
async fn connect(
    ctx: Arc<ProxyContext>,
    pod: Arc<PodContext>,
    peer: SocketAddr,
    tls: Tls,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let workload = pod.workload.key();
    if req.method() != Method::CONNECT {
        ctx.telemetry
            .metrics
            .reject("inbound", RejectReason::BadRequest.as_str());
        tracing::warn!(workload = %workload, %peer, method = %req.method(), "HBONE: request is not a CONNECT");
        return refuse(respond, StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(target) = hbone::target_of(&req) else {
        ctx.telemetry
            .metrics
            .reject("inbound", RejectReason::BadRequest.as_str());
        tracing::warn!(workload = %workload, %peer, uri = %req.uri(), "HBONE: CONNECT without an ip:port authority");
        return refuse(respond, StatusCode::BAD_REQUEST);
    };
    if let Err(why) = check_authority(&pod.workload.ips, target) {
        let reason = match why {
            Refusal::AgentPort(_) => RejectReason::ConnectAgentPort,
            Refusal::NotThePod(_) => RejectReason::ConnectOtherAddress,
        };
        ctx.telemetry.metrics.reject("inbound", reason.as_str());
        let client = tls
            .client
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        tracing::warn!(workload = %workload, %peer, %client, %target, %why, "HBONE: refused CONNECT to an address that is not this pod's, or to an agent port");
        return refuse(respond, StatusCode::FORBIDDEN);
    }
    let client_identity = tls.client.clone();
    let guard = ctx
        .connections
        .open(inbound_context(&ctx, &pod, peer, target).with_tls(tls));
    let authz = InboundAuthz::new(
        ctx.policy.clone(),
        ctx.telemetry.clone(),
        &pod,
        target,
        peer,
        client_identity,
        ctx.telemetry.stats.connection(guard.context()),
    );
    let opaque = pod.workload.opaque_ports.contains(&target.port()) || authz.is_opaque();
    // Decided per connection: before the app is dialed; the tunnel is refused (401, as
    // ztunnel answers an RBAC denial) and the client's agent resets its client.
    if opaque {
        if let Err(denied) = authz.check_tcp() {
            guard.close(0, 0, Some(denied.into()));
            return refuse(respond, StatusCode::UNAUTHORIZED);
        }
    }
    // The pod's own address and port, from inside the pod (never loopback: review H1).
    let from = DeliverFrom::client(peer, target, pod.delivery_mark, &ctx.maps);
    let server = match deliver_in(&pod.netns, from, target, ctx.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(workload = %workload, %peer, %target, error = %e, "HBONE: delivery to the app failed");
            guard.close(0, 0, Some(e.into()));
            return refuse(respond, StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    guard.context().route(target, None);
    let send = match respond.send_response(response(StatusCode::OK), false) {
        Ok(s) => s,
        Err(e) => {
            guard.close(0, 0, Some(Error::Respond(e)));
            return;
        }
    };
    let tunnel = TunnelStream::new(send, req.into_body());
    let session = Session {
        guard,
        opaque,
        authz: Some(authz),
    };
    session::run(&ctx, session, tunnel, server).await;
}
