//! A pod's listeners: binding them inside its network namespace and the accept loops that
//! hand each accepted connection to the outbound, inbound or HBONE handler. Each
//! connection task is spawned through the [`DrainWatcher`], and the loops stop accepting
//! (closing their listeners) when the drain starts: see [`crate::drain`].

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    time::Duration,
};

use meshd_common::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{drain::DrainWatcher, netns::Netns, telemetry::Direction};

use super::{
    accept_gate::AcceptGate,
    context::{PodContext, ProxyContext},
    inbound,
    limits::{self, Exhausted},
    outbound,
    relay::reset,
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("{0}")]
    Netns(#[from] crate::netns::NetnsError),
    #[error("cannot listen on {addr} in {netns}: {source}")]
    Listen {
        addr: SocketAddr,
        netns: String,
        source: std::io::Error,
    },
}

/// The listeners of one pod and their accept loops; dropping it stops accepting (connections
/// already accepted run to completion).
pub(crate) struct PodProxy {
    /// Inbound listener fds by family, for the sk_lookup socket map.
    pub inbound_v4: Option<RawFd>,
    pub inbound_v6: Option<RawFd>,
    /// Whether the outbound listener also listens on `[::1]`.
    pub outbound_v6: bool,
    tasks: Vec<JoinHandle<()>>,
    drain: DrainWatcher,
    /// What the outbound accept loops wait for (see [`super::accept_gate`]).
    gate: AcceptGate,
}

impl Drop for PodProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn bind_in(netns: &Netns, addr: SocketAddr) -> Result<std::net::TcpListener, ProxyError> {
    let err = |source| ProxyError::Listen {
        addr,
        netns: netns.path().display().to_string(),
        source,
    };
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = netns.socket(domain, socket2::Type::STREAM, None)?;
    let setup = || -> std::io::Result<std::net::TcpListener> {
        s.set_reuse_address(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.bind(&addr.into())?;
        s.listen(1024)?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    };
    setup().map_err(err)
}

impl PodProxy {
    /// Binds the pod's listeners inside its namespace and starts accepting: the inbound and
    /// HBONE ones at once, the outbound ones once `gate` opens.
    pub(crate) fn start(
        ctx: &Arc<ProxyContext>,
        pod: Arc<PodContext>,
        drain: &DrainWatcher,
        gate: &AcceptGate,
    ) -> Result<PodProxy, ProxyError> {
        let has_v6 = pod.workload.ips.iter().any(IpAddr::is_ipv6);
        let mut proxy = PodProxy {
            inbound_v4: None,
            inbound_v6: None,
            outbound_v6: false,
            tasks: Vec::new(),
            drain: drain.clone(),
            gate: gate.clone(),
        };
        let out4 = bind_in(
            &pod.netns,
            SocketAddr::from((Ipv4Addr::LOCALHOST, OUTBOUND_PORT)),
        )?;
        proxy.spawn(ctx, &pod, out4, Direction::Outbound)?;
        match bind_in(
            &pod.netns,
            SocketAddr::from((Ipv6Addr::LOCALHOST, OUTBOUND_PORT)),
        ) {
            Ok(out6) => {
                proxy.spawn(ctx, &pod, out6, Direction::Outbound)?;
                proxy.outbound_v6 = true;
            }
            // No IPv6 in the pod: IPv6 connections are then left alone by connect6.
            Err(e) => {
                tracing::debug!(workload = %pod.workload.key(), error = %e, "no IPv6 outbound listener")
            }
        }
        // The inbound listener is on loopback: sk_lookup assigns it whatever its bound
        // address, and nothing else reaches it (`podIP:15006` is answered with a reset by
        // the kernel, review H2).
        let in4 = bind_in(
            &pod.netns,
            SocketAddr::from((Ipv4Addr::LOCALHOST, INBOUND_PORT)),
        )?;
        proxy.inbound_v4 = Some(proxy.spawn(ctx, &pod, in4, Direction::Inbound)?);
        if has_v6 {
            let in6 = bind_in(
                &pod.netns,
                SocketAddr::from((Ipv6Addr::LOCALHOST, INBOUND_PORT)),
            )?;
            proxy.inbound_v6 = Some(proxy.spawn(ctx, &pod, in6, Direction::Inbound)?);
        }
        if ctx.mesh.is_some() {
            let h4 = bind_in(
                &pod.netns,
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, HBONE_PORT)),
            )?;
            proxy.spawn_listener(ctx, &pod, h4, Listener::Hbone)?;
            if has_v6 {
                let h6 = bind_in(
                    &pod.netns,
                    SocketAddr::from((Ipv6Addr::UNSPECIFIED, HBONE_PORT)),
                )?;
                proxy.spawn_listener(ctx, &pod, h6, Listener::Hbone)?;
            }
        }
        Ok(proxy)
    }

    fn spawn(
        &mut self,
        ctx: &Arc<ProxyContext>,
        pod: &Arc<PodContext>,
        listener: std::net::TcpListener,
        direction: Direction,
    ) -> Result<RawFd, ProxyError> {
        let kind = match direction {
            Direction::Inbound => Listener::Inbound,
            Direction::Outbound => Listener::Outbound,
        };
        self.spawn_listener(ctx, pod, listener, kind)
    }

    fn spawn_listener(
        &mut self,
        ctx: &Arc<ProxyContext>,
        pod: &Arc<PodContext>,
        listener: std::net::TcpListener,
        kind: Listener,
    ) -> Result<RawFd, ProxyError> {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let listener = TcpListener::from_std(listener).map_err(|source| ProxyError::Listen {
            addr,
            netns: pod.netns.path().display().to_string(),
            source,
        })?;
        let fd = listener.as_raw_fd();
        let (ctx, pod, drain) = (ctx.clone(), pod.clone(), self.drain.clone());
        let gate = match kind {
            Listener::Outbound => self.gate.clone(),
            Listener::Inbound | Listener::Hbone => AcceptGate::open(),
        };
        self.tasks.push(tokio::spawn(accept_loop(
            ctx, pod, listener, kind, drain, gate,
        )));
        Ok(fd)
    }
}

/// What a listener in the pod is for.
#[derive(Clone, Copy)]
enum Listener {
    /// Where connect4/connect6 send the pod's connections.
    Outbound,
    /// Where sk_lookup steers plaintext connections to the pod.
    Inbound,
    /// Mutual TLS from other agents, port 15008.
    Hbone,
}

async fn accept_loop(
    ctx: Arc<ProxyContext>,
    pod: Arc<PodContext>,
    listener: TcpListener,
    kind: Listener,
    drain: DrainWatcher,
    gate: AcceptGate,
) {
    tokio::select! {
        biased;
        () = drain.signaled() => return,
        () = gate.opened() => {}
    }
    loop {
        let accepted = tokio::select! {
            biased;
            // Returning drops the listener: new connections are refused from here on.
            () = drain.signaled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let direction = match kind {
                    Listener::Outbound => Direction::Outbound,
                    Listener::Inbound | Listener::Hbone => Direction::Inbound,
                };
                // Refused at once when the pod's or the node's budget is full: the pod's
                // listener keeps accepting (and refusing), the other pods' are untouched.
                let slot = match ctx.budgets.connection(&pod.budgets, direction) {
                    Ok(slot) => slot,
                    Err(why) => {
                        refuse(&ctx, &pod, direction, why, peer, &stream);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (ctx, pod) = (ctx.clone(), pod.clone());
                match kind {
                    Listener::Outbound => drain.spawn(async move {
                        outbound::handle(&ctx, &pod, stream, peer).await;
                        drop(slot);
                    }),
                    Listener::Inbound => drain.spawn(async move {
                        inbound::handle(&ctx, &pod, stream, peer).await;
                        drop(slot);
                    }),
                    Listener::Hbone => {
                        let handshake = match ctx.budgets.handshake(&pod.budgets) {
                            Ok(h) => h,
                            Err(why) => {
                                refuse(&ctx, &pod, direction, why, peer, &stream);
                                continue;
                            }
                        };
                        let tunnels = drain.clone();
                        drain.spawn_graceful(move |draining| async move {
                            inbound::hbone::handle(
                                ctx, pod, stream, peer, tunnels, draining, handshake,
                            )
                            .await;
                            drop(slot);
                        })
                    }
                }
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning. The node's socket
                // budget keeps the agent's descriptors below its open-files limit (see
                // `limits::default_max_sockets`), so no pod's connections cause this.
                tracing::warn!(workload = %pod.workload.key(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Refuses an accepted connection: a reset, counted and (rate-limited) logged.
fn refuse(
    ctx: &ProxyContext,
    pod: &PodContext,
    direction: Direction,
    why: Exhausted,
    peer: SocketAddr,
    stream: &tokio::net::TcpStream,
) {
    reset(stream);
    limits::report(
        &ctx.telemetry.metrics,
        &pod.workload,
        &pod.budgets,
        direction,
        why,
        peer,
    );
}

impl PodProxy {
    /// Stops accepting and waits, blocking the calling thread for at most `timeout`, until
    /// every accept loop has ended and so closed its listener. Dropping only aborts the
    /// loops, which close their listeners a moment later on the runtime; a workload
    /// re-enrolled in the same namespace binds the same ports again at once. Call it from
    /// a blocking thread (the runtime must be free to run the cancellations). Returns
    /// whether all listeners were closed in time.
    pub(crate) fn close_blocking(self, timeout: std::time::Duration) -> bool {
        for t in &self.tasks {
            t.abort();
        }
        let deadline = std::time::Instant::now() + timeout;
        while !self.tasks.iter().all(JoinHandle::is_finished) {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        true
    }
}
