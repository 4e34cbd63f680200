//! Connecting from inside a pod's network namespace, so that the source address is the
//! pod's own (or, for inbound delivery, the client's), with a timeout.

use std::{net::SocketAddr, time::Duration};

use socket2::{Domain, Protocol, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::{capture::Maps, netns::Netns};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("{0}")]
    Netns(#[from] crate::netns::NetnsError),
    #[error("socket: {0}")]
    Socket(std::io::Error),
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect {addr}: timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("transparent socket (IP_TRANSPARENT, SO_MARK): {0}")]
    Transparent(std::io::Error),
    #[error("cannot announce a delivery to sk_lookup (MESHD_DELIVERY): {0}")]
    Announce(String),
}

/// Opens a TCP connection to `addr` from a socket created inside `netns`.
pub(crate) async fn connect_in(
    netns: &Netns,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    connect(socket_in(netns, addr)?, addr, timeout).await
}

/// Where a delivery to the app comes from.
#[derive(Clone, Copy)]
pub(crate) enum DeliverFrom<'a> {
    /// The pod's own address (the destination's): the app sees itself as the client.
    Pod,
    /// The client's own address, through a transparent, marked socket that the pod's
    /// routing answers locally ([`crate::pod_routing`]); sk_lookup is told of its 4-tuple
    /// through `maps` while it connects, so that its SYN is not steered back to the agent.
    Client {
        addr: SocketAddr,
        mark: u32,
        maps: &'a Maps,
    },
}

impl<'a> DeliverFrom<'a> {
    /// From `client` when the pod routes marked deliveries back (`mark`) and the client's
    /// address can be the source of a connection to `dst`: the same family, and not a
    /// loopback, unspecified or multicast address (those go from the pod's address).
    pub(crate) fn client(
        client: SocketAddr,
        dst: SocketAddr,
        mark: Option<u32>,
        maps: &'a Maps,
    ) -> DeliverFrom<'a> {
        let Some(mark) = mark else {
            return DeliverFrom::Pod;
        };
        let ip = client.ip().to_canonical();
        let usable = ip.is_ipv4() == dst.ip().to_canonical().is_ipv4()
            && !ip.is_loopback()
            && !ip.is_unspecified()
            && !ip.is_multicast()
            && ip != dst.ip().to_canonical();
        if usable {
            DeliverFrom::Client {
                addr: SocketAddr::new(ip, client.port()),
                mark,
                maps,
            }
        } else {
            DeliverFrom::Pod
        }
    }
}

/// Opens a TCP connection to the pod's own address `addr` inside `netns`: inbound
/// delivery, from the client's address or the pod's ([`DeliverFrom`]).
///
/// From the pod's address: sk_lookup leaves a connection whose source is its destination
/// to the normal lookup (else the delivery would be steered back to the agent); the kernel
/// would pick the pod's primary address as the source of a connection to a secondary one,
/// so the source is bound explicitly.
pub(crate) async fn deliver_in(
    netns: &Netns,
    from: DeliverFrom<'_>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    if let DeliverFrom::Client {
        addr: client,
        mark,
        maps,
    } = from
    {
        return deliver_transparent(netns, client, mark, maps, addr, timeout).await;
    }
    let socket = socket_in(netns, addr)?;
    let from = SocketAddr::new(addr.ip(), 0);
    bind_address_no_port(&socket)
        .and_then(|()| socket.bind(from))
        .map_err(|source| ConnectError::Bind { addr: from, source })?;
    connect(socket, addr, timeout).await
}

/// How many source ports a transparent delivery tries before it gives up: a port is
/// refused only when it is the client's own (see below), so a second one always differs.
const PORT_ATTEMPTS: usize = 3;

async fn deliver_transparent(
    netns: &Netns,
    client: SocketAddr,
    mark: u32,
    maps: &Maps,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let from = SocketAddr::new(client.ip(), 0);
    for _ in 0..PORT_ATTEMPTS {
        let socket = socket_in(netns, addr)?;
        transparent(&socket, addr.is_ipv6(), mark).map_err(ConnectError::Transparent)?;
        socket
            .bind(from)
            .map_err(|source| ConnectError::Bind { addr: from, source })?;
        let bound = socket.local_addr().map_err(ConnectError::Socket)?;
        // The agent holds the client's own connection in this namespace as
        // `addr <- client`: a delivery from the same port would be the same 4-tuple, and
        // its SYN would land on the agent's socket.
        if bound.port() == client.port() {
            continue;
        }
        let _announced = Announced::new(maps, bound, addr)?;
        return connect(socket, addr, timeout).await;
    }
    Err(ConnectError::Bind {
        addr: from,
        source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
    })
}

/// A delivery's 4-tuple in `MESHD_DELIVERY`, for as long as its connect runs (also when
/// the connecting task is dropped).
struct Announced<'a> {
    maps: &'a Maps,
    from: SocketAddr,
    to: SocketAddr,
}

impl<'a> Announced<'a> {
    fn new(maps: &'a Maps, from: SocketAddr, to: SocketAddr) -> Result<Self, ConnectError> {
        maps.begin_delivery(from, to)
            .map_err(|e| ConnectError::Announce(e.to_string()))?;
        Ok(Announced { maps, from, to })
    }
}

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        self.maps.end_delivery(self.from, self.to);
    }
}

/// `IP_TRANSPARENT` (or `IPV6_TRANSPARENT`: binding to an address that is not local) and
/// `SO_MARK` (the pod's rule routes the answers of marked connections back locally).
fn transparent(socket: &TcpSocket, v6: bool, mark: u32) -> std::io::Result<()> {
    let (level, name) = if v6 {
        (libc::SOL_IPV6, libc::IPV6_TRANSPARENT)
    } else {
        (libc::SOL_IP, libc::IP_TRANSPARENT)
    };
    setsockopt_int(socket, level, name, 1)?;
    setsockopt_int(socket, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)
}

fn setsockopt_int(
    socket: &TcpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a socket descriptor we own, and an `int` option with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Leaves the choice of the source port to `connect` (`IP_BIND_ADDRESS_NO_PORT`, Linux
/// 4.2; for IPv6 sockets too): a bind to an address with port 0 would otherwise reserve a
/// port for that address alone, whatever the destination, so every delivery would search
/// the bind table and many short connections (in `TIME_WAIT` after them) would run out of
/// ports; `connect` picks one that is free for the 4-tuple.
fn bind_address_no_port(socket: &TcpSocket) -> std::io::Result<()> {
    setsockopt_int(socket, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
}

/// A non-blocking TCP socket of `addr`'s family, created inside `netns`.
fn socket_in(netns: &Netns, addr: SocketAddr) -> Result<TcpSocket, ConnectError> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = netns
        .socket(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))
        .map_err(|e| match e {
            crate::netns::NetnsError::Socket { source, .. } => ConnectError::Socket(source),
            e => ConnectError::Netns(e),
        })?;
    Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(
        socket,
    )))
}

async fn connect(
    socket: TcpSocket,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout { addr, timeout })?
        .map_err(|source| ConnectError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
