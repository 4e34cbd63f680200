//! The decisions (Linkerd §2.11), pure functions of a compiled [`PortPolicy`], the client
//! and, for HTTP, the request head. Their results carry every label the metrics need.

use serde::Serialize;

use super::{
    authz::{Authorization, Client},
    compile::PortPolicy,
    meta::Meta,
    routes::{best_grpc_route, best_http_route, RequestHead},
};

/// The decision for a connection on the TCP path (opaque, TLS, or not HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TcpDecision<'a> {
    /// `srv_group`, `srv_kind`, `srv_name`.
    pub server: &'a Meta,
    pub outcome: TcpOutcome<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TcpOutcome<'a> {
    /// `inbound_tcp_authz_allow_total` with the `authz_*` labels of `authz`; `audit`: the
    /// connection would have been denied (logged at INFO as `Connection allowed` ... audit).
    Allowed { authz: &'a Meta, audit: bool },
    /// Closed before any byte reaches the app; `inbound_tcp_authz_deny_total`.
    Denied(TcpDenial),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TcpDenial {
    /// No authorization matches the client.
    Unauthorized,
    /// The Server is HTTP/1, HTTP/2 or gRPC: it has no TCP authorizations at all.
    NotTcpServer,
}

impl TcpDecision<'_> {
    pub fn is_allowed(&self) -> bool {
        matches!(self.outcome, TcpOutcome::Allowed { .. })
    }

    /// The error a denial is logged with: `unauthorized connection on server/db-tcp`.
    pub fn error(&self) -> Option<String> {
        match self.outcome {
            TcpOutcome::Allowed { .. } => None,
            TcpOutcome::Denied(_) => Some(format!("unauthorized connection on {}", self.server)),
        }
    }
}

fn first_match<'a>(lists: &[&'a [Authorization]], client: &Client) -> Option<&'a Authorization> {
    lists
        .iter()
        .flat_map(|l| l.iter())
        .find(|a| a.matches(client))
}

/// Decides a connection: the first server-level authorization that matches the client
/// (the list ends with localhost).
pub fn decide_tcp<'a>(policy: &'a PortPolicy, client: &Client) -> TcpDecision<'a> {
    let outcome = if !policy.protocol.allows_tcp() {
        TcpOutcome::Denied(TcpDenial::NotTcpServer)
    } else {
        match first_match(&[&policy.authorizations], client) {
            Some(a) => TcpOutcome::Allowed {
                authz: &a.meta,
                audit: a.is_audit(),
            },
            None => TcpOutcome::Denied(TcpDenial::Unauthorized),
        }
    };
    TcpDecision {
        server: &policy.server,
        outcome,
    }
}

/// The decision for one HTTP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HttpDecision<'a> {
    pub server: &'a Meta,
    pub outcome: HttpOutcome<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HttpOutcome<'a> {
    /// Forward to the app; `inbound_http_authz_allow_total` and the `srv_*`, `route_*`,
    /// `authz_*` labels on `request_total` and the other HTTP metrics.
    Allowed {
        route: &'a Meta,
        authz: &'a Meta,
        audit: bool,
    },
    /// 403 / gRPC 7; `inbound_http_authz_deny_total` with the route labels.
    Unauthorized { route: &'a Meta },
    /// 404 / gRPC 5; `inbound_http_route_not_found_total`.
    RouteNotFound,
}

/// What to answer a request that is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The HTTP status: 403 or 404; 200 for gRPC (the status is in `grpc-status`).
    pub http_status: u16,
    /// `grpc-status` for a gRPC request: 7 (PERMISSION_DENIED) or 5 (NOT_FOUND).
    pub grpc_status: Option<u8>,
    /// The text of `l5d-proxy-error` (and `grpc-message`), sent only to meshed clients.
    pub error: &'static str,
    /// Whether to send `l5d-proxy-error` (the client is meshed).
    pub with_error_header: bool,
}

impl HttpDecision<'_> {
    pub fn is_allowed(&self) -> bool {
        matches!(self.outcome, HttpOutcome::Allowed { .. })
    }

    /// The response to synthesize, for a refused request; the connection stays open and
    /// the body is empty.
    pub fn refusal(&self, client: &Client, grpc: bool) -> Option<Refused> {
        let (http, grpc_code, error) = match self.outcome {
            HttpOutcome::Allowed { .. } => return None,
            HttpOutcome::Unauthorized { .. } => (403, 7, "unauthorized request on route"),
            HttpOutcome::RouteNotFound => (404, 5, "no route found for request"),
        };
        Some(Refused {
            http_status: if grpc { 200 } else { http },
            grpc_status: grpc.then_some(grpc_code),
            error,
            with_error_header: client.is_meshed(),
        })
    }
}

/// Decides a request: the best route (none: 404), then the first authorization of the
/// route's own, the server's, localhost (none: 403).
pub fn decide_http<'a>(
    policy: &'a PortPolicy,
    client: &Client,
    request: &RequestHead<'_>,
) -> HttpDecision<'a> {
    let route = if policy.protocol == super::resources::ProxyProtocol::Grpc {
        best_grpc_route(&policy.grpc_routes, request).map(|r| (&r.meta, &r.authorizations[..]))
    } else {
        best_http_route(&policy.http_routes, request).map(|r| (&r.meta, &r.authorizations[..]))
    };
    let outcome = match route {
        None => HttpOutcome::RouteNotFound,
        Some((route, route_authz)) => {
            match first_match(&[route_authz, &policy.authorizations], client) {
                Some(a) => HttpOutcome::Allowed {
                    route,
                    authz: &a.meta,
                    audit: a.is_audit(),
                },
                None => HttpOutcome::Unauthorized { route },
            }
        }
    };
    HttpDecision {
        server: &policy.server,
        outcome,
    }
}
