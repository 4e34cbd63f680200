//! The policy resources as a user writes them (the CRDs' fields, parsed strictly), and their
//! validation into typed values with Linkerd's admission-webhook messages (§1.10).

mod authentication;
mod authorization;
mod route;
mod server;

pub use authentication::{IdentitySource, MeshTlsAuthentication, NetworkAuthentication};
pub use authorization::{
    AuthorizationPolicy, NsName, PolicyTarget, SazAuthentication, SazServer, ServerAuthorization,
};
pub use route::{GrpcRouteResource, HttpRouteResource, ParentRef, RouteGroup};
pub use server::{ProxyProtocol, Server, ServerPort};

pub(crate) use authentication::{parse_network, RawMeshTlsSpec, RawNetworkSpec};
pub(crate) use authorization::{RawAuthorizationPolicySpec, RawServerAuthorizationSpec};
pub(crate) use route::{RawGrpcRouteSpec, RawHttpRouteSpec};
pub(crate) use server::RawServerSpec;

/// What is wrong with a document: the field (`spec.port`) and Linkerd's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: String,
    pub message: String,
}

impl Refusal {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Refusal {
        Refusal {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Name, namespace, labels and creation time of a validated object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectId {
    pub namespace: String,
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Seconds since the epoch, when the document has a `creationTimestamp`.
    pub created: Option<i64>,
}

/// One validated policy object.
#[derive(Debug, Clone)]
pub enum Resource {
    Server(Server),
    ServerAuthorization(ServerAuthorization),
    AuthorizationPolicy(AuthorizationPolicy),
    MeshTlsAuthentication(MeshTlsAuthentication),
    NetworkAuthentication(NetworkAuthentication),
    HttpRoute(HttpRouteResource),
    GrpcRoute(GrpcRouteResource),
}

impl Resource {
    pub fn id(&self) -> &ObjectId {
        match self {
            Resource::Server(r) => &r.id,
            Resource::ServerAuthorization(r) => &r.id,
            Resource::AuthorizationPolicy(r) => &r.id,
            Resource::MeshTlsAuthentication(r) => &r.id,
            Resource::NetworkAuthentication(r) => &r.id,
            Resource::HttpRoute(r) => &r.id,
            Resource::GrpcRoute(r) => &r.id,
        }
    }

    /// `Kind.group`, which with the namespace and name identifies the object.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Server(_) => "Server",
            Resource::ServerAuthorization(_) => "ServerAuthorization",
            Resource::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Resource::MeshTlsAuthentication(_) => "MeshTLSAuthentication",
            Resource::NetworkAuthentication(_) => "NetworkAuthentication",
            Resource::HttpRoute(r) if r.group == RouteGroup::Gateway => {
                "HTTPRoute.gateway.networking.k8s.io"
            }
            Resource::HttpRoute(_) => "HTTPRoute",
            Resource::GrpcRoute(_) => "GRPCRoute",
        }
    }
}

/// `Kind` or `Kind.group`, as Linkerd's messages write a reference.
pub(crate) fn kind_group(kind: &str, group: Option<&str>) -> String {
    match group {
        Some(g) if !g.is_empty() && !g.eq_ignore_ascii_case("core") => format!("{kind}.{g}"),
        _ => kind.to_string(),
    }
}

pub(crate) fn is_core(group: Option<&str>) -> bool {
    group.is_none_or(|g| g.is_empty() || g.eq_ignore_ascii_case("core"))
}

pub(crate) fn is_group(group: Option<&str>, want: &str) -> bool {
    group.is_some_and(|g| g.eq_ignore_ascii_case(want))
}

/// The DNS-style identity of Linkerd's regex (`*`, or lower-case labels).
pub(crate) const IDENTITY_REGEX: &str =
    r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

pub(crate) fn is_dns_like_identity(s: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(IDENTITY_REGEX).expect("a valid regex"))
        .is_match(s)
}
