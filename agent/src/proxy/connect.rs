//! Connecting from inside a pod's network namespace, so that the source address is the
//! pod's own, with a timeout.

use std::{net::SocketAddr, time::Duration};

use socket2::{Domain, Protocol, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::netns::Netns;

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
}

/// Opens a TCP connection to `addr` from a socket created inside `netns`.
pub(crate) async fn connect_in(
    netns: &Netns,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    connect(socket_in(netns, addr)?, addr, timeout).await
}

/// Opens a TCP connection to the pod's own address `addr` from that same address, inside
/// `netns`: inbound delivery. sk_lookup leaves a connection whose source is its
/// destination to the normal lookup (else the delivery would be steered back to the
/// agent); the kernel would pick the pod's primary address as the source of a connection
/// to a secondary one, so the source is bound explicitly.
pub(crate) async fn deliver_in(
    netns: &Netns,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let socket = socket_in(netns, addr)?;
    let from = SocketAddr::new(addr.ip(), 0);
    bind_address_no_port(&socket)
        .and_then(|()| socket.bind(from))
        .map_err(|source| ConnectError::Bind { addr: from, source })?;
    connect(socket, addr, timeout).await
}

/// Leaves the choice of the source port to `connect` (`IP_BIND_ADDRESS_NO_PORT`, Linux
/// 4.2; for IPv6 sockets too): a bind to an address with port 0 would otherwise reserve a
/// port for that address alone, whatever the destination, so every delivery would search
/// the bind table and many short connections (in `TIME_WAIT` after them) would run out of
/// ports; `connect` picks one that is free for the 4-tuple.
fn bind_address_no_port(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let one: libc::c_int = 1;
    // SAFETY: a socket descriptor we own, and an `int` option with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
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
