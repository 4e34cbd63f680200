//! Inbound: a connection to one of the pod's addresses, steered by sk_lookup to the inbound
//! listener in the pod's namespace. The original destination is the accepted socket's local
//! address; the agent delivers to that same address (the pod's address and port) from inside
//! the pod's namespace, never to loopback: a service that listens only on `127.0.0.1` stays
//! unreachable from other pods, as without the mesh (review H1). The delivery comes from
//! the client's own address where the pod's routing allows it, else from the pod's
//! ([`deliver_in`], [`DeliverFrom`]); sk_lookup leaves either alone (no loop). A destination that is not the pod's own address, or is one
//! of the agent's ports, is refused before anything is dialed ([`check_destination`]):
//! delivering it would reach the agent's own listeners again or the pod's outbound listener.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use meshd_common::AGENT_PORTS;

use tokio::net::TcpStream;

use crate::{
    conn::{ConnContext, Direction},
    proxy::{
        connect::{deliver_in, DeliverFrom},
        context::{PodContext, ProxyContext},
        error::Refusal,
        limits,
        relay::reset,
        session::{self, Session},
    },
};

use crate::proxy::authorize::InboundAuthz;

pub(crate) mod hbone;

/// Whether a connection to `dst` may be delivered to the pod whose addresses are `pod_ips`:
/// only to the pod's own addresses (not loopback, not another address of its namespace),
/// and never to an agent port (15001, 15006, 15008).
pub(crate) fn check_destination(pod_ips: &[IpAddr], dst: SocketAddr) -> Result<(), Refusal> {
    if AGENT_PORTS.contains(&dst.port()) {
        return Err(Refusal::AgentPort(dst.port()));
    }
    let ip = dst.ip().to_canonical();
    if !pod_ips.iter().any(|p| p.to_canonical() == ip) {
        return Err(Refusal::NotThePod(ip));
    }
    Ok(())
}

/// Whether an HBONE `CONNECT` to `target` may be delivered: as [`check_destination`], and
/// the authority must name one of the pod's addresses as it is: an IPv4 address written as
/// an IPv4-mapped IPv6 address (`[::ffff:a.b.c.d]`) is a second spelling of it (review D64)
/// and is refused like another address. (A plaintext connection's destination is what the
/// kernel reports, IPv4-mapped on a dual-stack socket; that one is compared canonically.)
pub(crate) fn check_authority(pod_ips: &[IpAddr], target: SocketAddr) -> Result<(), Refusal> {
    check_destination(pod_ips, target)?;
    if !pod_ips.contains(&target.ip()) {
        return Err(Refusal::NotThePod(target.ip()));
    }
    Ok(())
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
    if let Err(why) = check_destination(&pod.workload.ips, dst) {
        tracing::warn!(workload = %workload, %peer, %dst, reason = %why, "refused an inbound connection");
        guard.close(0, 0, Some(why.into()));
        reset(&client);
        return;
    }
    // The socket to the app is the connection's second: the node's budget must allow it.
    let _upstream = match ctx.budgets.socket() {
        Ok(slot) => slot,
        Err(why) => {
            limits::report(
                &ctx.telemetry.metrics,
                &pod.workload,
                &pod.budgets,
                Direction::Inbound,
                why,
                peer,
            );
            guard.close(0, 0, Some(why.into()));
            reset(&client);
            return;
        }
    };
    let authz = InboundAuthz::new(
        ctx.policy.clone(),
        ctx.telemetry.clone(),
        pod,
        dst,
        peer,
        None,
        ctx.telemetry.stats.connection(guard.context()),
    );
    let opaque = pod.workload.opaque_ports.contains(&dst.port()) || authz.is_opaque();
    // Decided per connection: before the app is dialed, so that it sees nothing at all.
    if opaque {
        if let Err(denied) = authz.check_tcp() {
            guard.close(0, 0, Some(denied.into()));
            reset(&client);
            return;
        }
    }
    // The original destination itself, dialed from inside the pod (checked above).
    let from = DeliverFrom::client(peer, dst, pod.delivery_mark, &ctx.maps);
    match deliver_in(&pod.netns, from, dst, ctx.connect_timeout).await {
        Ok(server) => {
            guard.context().route(dst, None);
            let session = Session {
                guard,
                opaque,
                authz: Some(authz),
            };
            session::run(ctx, session, client, server).await;
        }
        Err(e) => {
            tracing::info!(workload = %workload, %peer, %dst, error = %e, "inbound delivery failed");
            guard.close(0, 0, Some(e.into()));
            reset(&client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review H2: the agent's ports and addresses that are not the pod's are refused
    /// (a connection to `podIP:15006` would otherwise be delivered to the agent's own
    /// inbound listener, again and again); the pod's own address and any other port are not.
    #[test]
    fn only_the_pods_own_addresses_and_no_agent_port() {
        let ips: Vec<IpAddr> = vec!["10.244.1.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        for ok in ["10.244.1.2:8080", "[fd00::2]:80", "[::ffff:10.244.1.2]:443"] {
            assert_eq!(check_destination(&ips, at(ok)), Ok(()), "{ok}");
        }
        for port in [15001, 15006, 15008] {
            assert_eq!(
                check_destination(&ips, SocketAddr::new(ips[0], port)),
                Err(Refusal::AgentPort(port))
            );
        }
        for (dst, ip) in [
            ("127.0.0.1:8080", "127.0.0.1"),
            ("[::1]:8080", "::1"),
            ("10.244.1.3:8080", "10.244.1.3"),
        ] {
            assert_eq!(
                check_destination(&ips, at(dst)),
                Err(Refusal::NotThePod(ip.parse().unwrap())),
                "{dst}"
            );
        }
    }

    #[test]
    fn a_connect_authority_names_the_pods_address_as_it_is() {
        let ips: Vec<IpAddr> = vec!["10.244.1.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        for ok in ["10.244.1.2:8080", "[fd00::2]:80"] {
            assert_eq!(check_authority(&ips, at(ok)), Ok(()), "{ok}");
        }
        let mapped = at("[::ffff:10.244.1.2]:443");
        assert_eq!(
            check_authority(&ips, mapped),
            Err(Refusal::NotThePod(mapped.ip()))
        );
        assert_eq!(
            check_authority(&ips, at("10.244.1.2:15006")),
            Err(Refusal::AgentPort(15006))
        );
    }
}
