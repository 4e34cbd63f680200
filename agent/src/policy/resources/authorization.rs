//! `AuthorizationPolicy` (policy.linkerd.io v1alpha1) and the legacy `ServerAuthorization`
//! (v1beta1).

use serde::Deserialize;

use super::{
    authentication::RawNetworkEntry, is_core, is_dns_like_identity, is_group, kind_group,
    parse_network, ObjectId, Refusal, IDENTITY_REGEX,
};
use crate::policy::{
    meta::{LabelSelector, GATEWAY_GROUP, POLICY_GROUP},
    net::Network,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawAuthorizationPolicySpec {
    target_ref: RawTargetRef,
    #[serde(default)]
    required_authentication_refs: Option<Vec<RawAuthnRef>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTargetRef {
    #[serde(default)]
    group: Option<String>,
    kind: String,
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawAuthnRef {
    #[serde(default)]
    group: Option<String>,
    kind: String,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// What an AuthorizationPolicy applies to (always in its own namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyTarget {
    Server(String),
    /// An HTTPRoute of `policy.linkerd.io` (`gateway == false`) or
    /// `gateway.networking.k8s.io`.
    HttpRoute {
        gateway: bool,
        name: String,
    },
    GrpcRoute(String),
    /// Every Server of the namespace (never a port without a Server).
    Namespace,
}

/// `namespace/name` of a referenced authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsName {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct AuthorizationPolicy {
    pub id: ObjectId,
    pub target: PolicyTarget,
    pub mesh_tls: Option<NsName>,
    /// A `ServiceAccount` reference: that exact identity.
    pub service_account: Option<NsName>,
    pub network: Option<NsName>,
}

impl RawAuthorizationPolicySpec {
    pub(crate) fn validate(self, id: ObjectId) -> Result<AuthorizationPolicy, Refusal> {
        let t = &self.target_ref;
        let g = t.group.as_deref();
        let target = if t.kind.eq_ignore_ascii_case("Server") && is_group(g, POLICY_GROUP) {
            PolicyTarget::Server(t.name.clone())
        } else if t.kind.eq_ignore_ascii_case("HTTPRoute") && is_group(g, POLICY_GROUP) {
            PolicyTarget::HttpRoute {
                gateway: false,
                name: t.name.clone(),
            }
        } else if t.kind.eq_ignore_ascii_case("HTTPRoute") && is_group(g, GATEWAY_GROUP) {
            PolicyTarget::HttpRoute {
                gateway: true,
                name: t.name.clone(),
            }
        } else if t.kind.eq_ignore_ascii_case("GRPCRoute") && is_group(g, GATEWAY_GROUP) {
            PolicyTarget::GrpcRoute(t.name.clone())
        } else if t.kind.eq_ignore_ascii_case("Namespace") && is_core(g) {
            if t.name != id.namespace {
                return Err(Refusal::new(
                    "spec.targetRef.name",
                    format!("cannot target another namespace: {}", t.name),
                ));
            }
            PolicyTarget::Namespace
        } else {
            return Err(Refusal::new(
                "spec.targetRef",
                format!(
                    "unsupported authorization target type: {}",
                    kind_group(&t.kind, g)
                ),
            ));
        };
        let Some(refs) = self.required_authentication_refs else {
            return Err(Refusal::new(
                "spec.requiredAuthenticationRefs",
                "Required value",
            ));
        };
        let mut mesh_tls = Vec::new();
        let mut service_accounts = Vec::new();
        let mut networks = Vec::new();
        let mut unsupported = Vec::new();
        for r in refs {
            let g = r.group.as_deref();
            let target = NsName {
                namespace: r.namespace.clone().unwrap_or_else(|| id.namespace.clone()),
                name: r.name.clone(),
            };
            if r.kind.eq_ignore_ascii_case("MeshTLSAuthentication") && is_group(g, POLICY_GROUP) {
                mesh_tls.push(target);
            } else if r.kind.eq_ignore_ascii_case("NetworkAuthentication")
                && is_group(g, POLICY_GROUP)
            {
                networks.push(target);
            } else if r.kind.eq_ignore_ascii_case("ServiceAccount") && is_core(g) {
                service_accounts.push(target);
            } else {
                unsupported.push(kind_group(&r.kind, g));
            }
        }
        let field = "spec.requiredAuthenticationRefs";
        if !unsupported.is_empty() {
            return Err(Refusal::new(
                field,
                format!(
                    "unsupported authentication kind(s): {}",
                    unsupported.join(", ")
                ),
            ));
        }
        if mesh_tls.len() > 1 {
            return Err(Refusal::new(
                field,
                "only a single MeshTLSAuthentication may be set",
            ));
        }
        if service_accounts.len() > 1 {
            return Err(Refusal::new(
                field,
                "only a single ServiceAccount may be set",
            ));
        }
        if !mesh_tls.is_empty() && !service_accounts.is_empty() {
            return Err(Refusal::new(
                field,
                "a MeshTLSAuthentication and ServiceAccount may not be set together",
            ));
        }
        if networks.len() > 1 {
            return Err(Refusal::new(
                field,
                "only a single NetworkAuthentication may be set",
            ));
        }
        Ok(AuthorizationPolicy {
            id,
            target,
            mesh_tls: mesh_tls.pop(),
            service_account: service_accounts.pop(),
            network: networks.pop(),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawServerAuthorizationSpec {
    server: RawSazServer,
    client: RawSazClient,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSazServer {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSazClient {
    #[serde(default)]
    networks: Option<Vec<RawNetworkEntry>>,
    #[serde(default)]
    unauthenticated: bool,
    #[serde(default, rename = "meshTLS")]
    mesh_tls: Option<RawSazMeshTls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSazMeshTls {
    #[serde(default, rename = "unauthenticatedTLS")]
    unauthenticated_tls: bool,
    #[serde(default)]
    identities: Vec<String>,
    #[serde(default)]
    service_accounts: Vec<RawSazServiceAccount>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSazServiceAccount {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SazServer {
    Name(String),
    /// Selects Servers by *their* labels.
    Selector(LabelSelector),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SazAuthentication {
    Unauthenticated,
    UnauthenticatedTls,
    MeshTls {
        identities: Vec<String>,
        service_accounts: Vec<NsName>,
    },
    /// Admitted by Linkerd but authorizing nobody (no `unauthenticated`, no identities).
    Nobody,
}

#[derive(Debug, Clone)]
pub struct ServerAuthorization {
    pub id: ObjectId,
    pub server: SazServer,
    /// `None`: the cluster networks.
    pub networks: Option<Vec<Network>>,
    pub authentication: SazAuthentication,
}

impl RawServerAuthorizationSpec {
    pub(crate) fn validate(self, id: ObjectId) -> Result<ServerAuthorization, Refusal> {
        let server = match (self.server.name, self.server.selector) {
            (Some(n), None) => SazServer::Name(n),
            (None, Some(s)) => SazServer::Selector(s),
            _ => {
                return Err(Refusal::new(
                    "spec.server",
                    "exactly one of name or selector must be set",
                ))
            }
        };
        let c = self.client;
        let networks = match &c.networks {
            None => None,
            Some(list) if list.is_empty() => None,
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(i, n)| parse_network(n, &format!("spec.client.networks[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let authentication = match (c.unauthenticated, c.mesh_tls) {
            (true, Some(_)) => {
                return Err(Refusal::new(
                    "spec.client",
                    "`unauthenticated` must be false if `mesh_tls` is specified",
                ))
            }
            (true, None) => SazAuthentication::Unauthenticated,
            (false, None) => SazAuthentication::Nobody,
            (false, Some(m)) => {
                if m.unauthenticated_tls {
                    if !m.identities.is_empty() || !m.service_accounts.is_empty() {
                        return Err(Refusal::new(
                            "spec.client.meshTLS",
                            "`unauthenticatedTLS` be false if any `identities` or `service_accounts` is specified",
                        ));
                    }
                    SazAuthentication::UnauthenticatedTls
                } else if m.identities.is_empty() && m.service_accounts.is_empty() {
                    SazAuthentication::Nobody
                } else {
                    for (i, s) in m.identities.iter().enumerate() {
                        if !is_dns_like_identity(s) {
                            return Err(Refusal::new(
                                format!("spec.client.meshTLS.identities[{i}]"),
                                format!("should match '{IDENTITY_REGEX}'"),
                            ));
                        }
                    }
                    SazAuthentication::MeshTls {
                        identities: m.identities,
                        service_accounts: m
                            .service_accounts
                            .into_iter()
                            .map(|sa| NsName {
                                namespace: sa.namespace.unwrap_or_else(|| id.namespace.clone()),
                                name: sa.name,
                            })
                            .collect(),
                    }
                }
            }
        };
        Ok(ServerAuthorization {
            id,
            server,
            networks,
            authentication,
        })
    }
}
