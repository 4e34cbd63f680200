//! Why a proxied connection failed: one typed error for the data path, from the dial to the
//! last byte. It becomes text only at the edges (a log line, the `error` of a
//! `/connections` record); the proxy matches on it.

use std::{io, net::IpAddr};

use super::{connect::ConnectError, hbone::pool::TunnelError, limits::Exhausted};

/// Why an inbound destination is refused before anything is dialed
/// ([`super::inbound::check_destination`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("port {0} is one of the agent's own ports")]
    AgentPort(u16),
    #[error("{0} is not an address of this pod")]
    NotThePod(IpAddr),
}

/// A failure of one proxied connection. A connection that ends normally has none: a clean
/// close by either side is not an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A plain connection to the target failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The HBONE tunnel to the target's agent failed (TLS, HTTP/2 or the CONNECT).
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// An inbound destination that must not be delivered (an agent port, not the pod).
    #[error("refused inbound destination: {0}")]
    Destination(#[from] Refusal),
    /// A budget was full (the node's sockets, for the upstream): refused, nothing dialed.
    #[error("refused: {0}")]
    Budget(#[from] Exhausted),
    /// A service address with no endpoints at all.
    #[error("service {service} has no endpoints")]
    NoEndpoints { service: String },
    /// A service whose endpoints all failed recently (passive health).
    #[error(
        "service {service} has no live endpoint ({endpoints} endpoints failed in the last {down_for_secs}s)"
    )]
    NoLiveEndpoint {
        service: String,
        endpoints: usize,
        down_for_secs: u64,
    },
    /// Every endpoint of a service was tried on this connection, and each failed.
    #[error("service {service}: every endpoint failed, last: {last}")]
    EveryEndpointFailed { service: String, last: Box<Error> },
    /// The connection was not authorized by the pod's policy (or no longer is): closed,
    /// nothing of it reached the app.
    #[error("{0}")]
    Unauthorized(#[from] Unauthorized),
    /// The HTTP/1 request head had ambiguous framing; answered 400, nothing forwarded.
    #[error("refused: {0}")]
    AmbiguousFraming(&'static str),
    /// A later HTTP/1 request head was refused (ambiguous framing, too large); answered
    /// 400, nothing of it forwarded.
    #[error("refused: {0}")]
    RefusedHead(HeadRefusal),
    /// A started HTTP/1 request head did not arrive whole in time; the connection was
    /// closed.
    #[error("request head not complete within {}s", .0.as_secs())]
    HeadTimeout(std::time::Duration),
    /// The client's HTTP could not be parsed; answered 400 by the server side.
    #[error("invalid HTTP request: {0}")]
    InvalidHttp(#[source] hyper::Error),
    /// The HTTP client connection to the upstream could not be set up.
    #[error("{version} to upstream: {source}")]
    UpstreamHandshake {
        version: &'static str,
        source: hyper::Error,
    },
    /// The HTTP connection with the client failed.
    #[error(transparent)]
    Http(hyper::Error),
    /// Relaying bytes failed (a reset or an I/O error on either side); both sides were reset.
    #[error(transparent)]
    Relay(io::Error),
    /// The tunnel's answer (`200`) could not be sent back over HBONE.
    #[error("HBONE response: {0}")]
    Respond(#[source] h2::Error),
}

/// A connection the pod's policy denied (or no longer allows), for its record:
/// `unauthorized connection on server/NAME`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Unauthorized(pub String);

/// Why an HTTP/1 request head was refused (`proxy/l7/heads.rs`), reported once hyper has
/// answered `400`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadRefusal {
    /// Content-Length with Transfer-Encoding, or differing lengths.
    #[error("{0}")]
    Ambiguous(&'static str),
    /// Longer than the limit (bytes).
    #[error("request head over {0} bytes")]
    TooLarge(usize),
}
