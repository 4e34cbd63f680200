//! What the proxy reports about each HTTP request.

use serde::Serialize;

use super::Direction;

/// A workload on the other side of a request, when the mesh knows it (by address).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PeerWorkload {
    pub namespace: String,
    pub pod: String,
    pub deployment: String,
}

impl From<&crate::state::Workload> for PeerWorkload {
    fn from(w: &crate::state::Workload) -> PeerWorkload {
        PeerWorkload {
            namespace: w.namespace.clone(),
            pod: w.name.clone(),
            deployment: w.deployment.clone(),
        }
    }
}

/// One HTTP request as seen by this agent, on behalf of one enrolled workload.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RequestEvent {
    pub at_unix_ms: u128,
    pub direction: Direction,
    /// The enrolled workload this agent proxied for.
    pub namespace: String,
    pub pod: String,
    pub deployment: String,
    /// Outbound: the destination workload; inbound: the source workload (if known).
    pub peer: Option<PeerWorkload>,
    /// Outbound: the service the destination address belongs to (`namespace/name`).
    pub service: Option<String>,
    /// Mutual TLS on the hop between agents.
    pub tls: bool,
    pub client_id: Option<String>,
    pub server_id: Option<String>,
    pub method: String,
    pub authority: String,
    pub path: String,
    /// HTTP version, e.g. `HTTP/1.1`, `HTTP/2.0`.
    pub version: String,
    /// 0 when the request failed without a response.
    pub status: u16,
    /// gRPC status from the trailers (or headers), when the response is gRPC.
    pub grpc_status: Option<u32>,
    /// Linkerd's classification: not a 5xx, and gRPC status 0 when gRPC.
    pub success: bool,
    /// From the request's start to the end of the response headers, in milliseconds.
    pub latency_ms: f64,
    pub error: Option<String>,
}
